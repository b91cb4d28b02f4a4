"""``personalize-campaign`` and ``personalize-recommender``: Amazon Personalize runtime.

recommend-items and related-items call GetRecommendations (``userId``; ``itemId`` for
related-items, ``userId`` too when given; ``numResults`` at most 500), rerank-items calls
GetPersonalizedRanking (``userId``, ``inputList``; campaigns only, which the botocore model
requires, so a domain recommender on a rerank-items recommender is a ``ConfigError``). The ARN's
resource type picks ``campaignArn`` or ``recommenderArn``. Every call carries the query's
``context`` when it has one, and ``metadataColumns`` ``{"ITEMS": itemColumns}`` when the
variation's ``inferenceItemMetadata`` is of type ``personalize``.

Filters, first match wins:

1. a filter in the query (``filter``): a filter ARN is used as it is; a filter *name* becomes
   ``arn:PARTITION:personalize:REGION:ACCOUNT:filter/NAME``, with its ``filterValues`` the
   caller's (anything else is 400 ``InvalidFilterParameter``); region and account are the variation ARN's when they are real values (not
   documented placeholders), else the ``region``/``accountId`` options, else the client's region
   and the caller's account (STS GetCallerIdentity, asked once per resolver);
2. else the first of the variation's ``filters`` whose ``condition`` the request meets
   (``user-required``: the query names a user), with ``filterValues`` its
   ``autoDynamicFilterValues`` resolved from the request headers, overridden by the caller's.

Filter values go as Personalize expects them: strings quoted and ``,``-separated
(``"\\"a\\",\\"b\\""``), numbers plain; the caller's are passed as they were given.

The runtime client: region = the ARN's when real, else ``region``, else the standard AWS
settings; ``endpointUrl`` if set; read timeout = ``timeoutMs``; adaptive retries.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from query.base import MAX_RESULTS, Query, Recommendations
from query.resolvers import ResolverContext
from query.resolvers.remote import aws_client, boto_error, recommendations
from query.settings import option, read_settings
from schemas.autocontext import AutoContext
from schemas.config import Variation
from schemas.errors import ConfigError, InvalidRequest, P13nError

USER_REQUIRED = "user-required"
_REAL_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-[0-9]+$")
_REAL_ACCOUNT = re.compile(r"^[0-9]{12}$")
# Personalize's own constraint on filter names; anything else could reshape the ARN.
_FILTER_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_-]{0,62}$")
_FILTER_ARN = re.compile(
    r"^arn:aws(-[a-z]+)*:personalize:[a-z0-9-]+:[0-9]{12}:filter/[a-zA-Z0-9][a-zA-Z0-9_-]{0,62}$"
)


@dataclass(frozen=True)
class _Filter:
    arn: str
    user_required: bool
    auto_values: AutoContext

    def applies(self, query: Query) -> bool:
        return not self.user_required or query.user_id is not None


@dataclass(frozen=True)
class PersonalizeSettings:
    """A ``personalize-campaign`` / ``personalize-recommender`` variation's own settings."""

    arn: str = option("arn")
    region: str | None = option("region", None)  # when the ARN's region is a placeholder
    account_id: str | None = option("accountId", None)  # likewise for the account
    endpoint_url: str | None = option("endpointUrl", None)


class PersonalizeResolver:
    def __init__(self, variation: Variation, context: ResolverContext) -> None:
        self.name = variation.name
        settings = read_settings(
            PersonalizeSettings, variation.options, f"variation '{variation.name}'"
        )
        self._arn = settings.arn
        _, partition, _, arn_region, arn_account, resource = self._arn.split(":", 5)
        self._partition = partition
        self._arn_key = "recommenderArn" if resource.startswith("recommender/") else "campaignArn"
        if self._arn_key == "recommenderArn" and context.recommender.action == "rerank-items":
            raise ConfigError(
                f"variation '{variation.name}': Personalize reranks with campaigns only, "
                f"not with the recommender {self._arn}"
            )
        self._region: str | None = arn_region if _REAL_REGION.match(arn_region) else settings.region
        self._account: str | None = (
            arn_account if _REAL_ACCOUNT.match(arn_account) else settings.account_id
        )
        self._filters = tuple(
            _Filter(
                arn=spec["arn"],
                user_required=spec.get("condition") == USER_REQUIRED,
                auto_values=AutoContext.from_config(spec.get("autoDynamicFilterValues")),
            )
            for spec in variation.filters
        )
        metadata = variation.inference_item_metadata or {}
        columns = metadata.get("itemColumns") if metadata.get("type") == "personalize" else None
        self._metadata_columns = {"ITEMS": list(columns)} if columns else None
        self._what = f"personalize {self._arn}"
        self._runtime = aws_client(
            "personalize-runtime",
            region=self._region,
            endpoint_url=settings.endpoint_url,
            timeout_ms=variation.timeout_ms,
        )
        self._sts = aws_client(
            "sts", region=self._region, endpoint_url=None, timeout_ms=variation.timeout_ms
        )

    async def resolve(self, query: Query) -> Recommendations:
        return await asyncio.to_thread(self._resolve, query)

    async def close(self) -> None:
        self._runtime.close()
        self._sts.close()

    # -- in a worker thread ---------------------------------------------------------------------

    def _resolve(self, query: Query) -> Recommendations:
        request = self._request(query)
        try:
            runtime = self._runtime.get()
            if query.action == "rerank-items":
                answer = runtime.get_personalized_ranking(**request)
            else:
                answer = runtime.get_recommendations(**request)
        except P13nError:
            raise
        except Exception as exc:
            raise boto_error(exc, self._what) from exc
        answer.pop("ResponseMetadata", None)  # boto's, not the backend's answer
        return recommendations(answer, query, self._what)

    def _request(self, query: Query) -> dict[str, Any]:
        request: dict[str, Any] = {self._arn_key: self._arn}
        if query.user_id is not None:
            request["userId"] = query.user_id
        if query.action == "rerank-items":
            request["inputList"] = list(query.item_ids)
        else:
            request["numResults"] = max(0, min(query.num_results, MAX_RESULTS))
            if query.action == "related-items" and query.item_id is not None:
                request["itemId"] = query.item_id
        if query.context:
            request["context"] = dict(query.context)
        filter_arn, filter_values = self._filter(query)
        if filter_arn is not None:
            request["filterArn"] = filter_arn
            if filter_values:
                request["filterValues"] = filter_values
        if self._metadata_columns is not None:
            request["metadataColumns"] = self._metadata_columns
        return request

    def _filter(self, query: Query) -> tuple[str | None, dict[str, str]]:
        if query.filter is not None:
            return self._named_filter_arn(query.filter), dict(query.filter_values)
        chosen = next((f for f in self._filters if f.applies(query)), None)
        if chosen is None:
            return None, {}
        auto: Mapping[str, str] = chosen.auto_values.for_filter_values(
            query.headers, datetime.now(UTC)
        )
        return chosen.arn, {**auto, **query.filter_values}

    def _named_filter_arn(self, name: str) -> str:
        if _FILTER_ARN.match(name):
            return name
        if not _FILTER_NAME.match(name):
            raise InvalidRequest(
                f"'{name}' is neither a Personalize filter name nor a filter ARN",
                code="InvalidFilterParameter",
            )
        region = self._region or self._runtime.get().meta.region_name
        return f"arn:{self._partition}:personalize:{region}:{self._account_id()}:filter/{name}"

    def _account_id(self) -> str:
        if self._account is None:
            try:
                account = self._sts.get().get_caller_identity()["Account"]
            except Exception as exc:
                raise boto_error(exc, "sts GetCallerIdentity") from exc
            # a race here asks STS twice and stores the same answer twice: harmless
            self._account = str(account)
        return self._account
