"""A request's plan: what a GET's path and query string decide, whatever its headers.

The recommender (unknown → 404 ``RecommenderNotConfigured``), the validated query
(``query.params``), the variation chosen for its user and feature (``query.variations``), the
caching policy (``query.caching``) and the cache-key form of the parameters. A cacheable GET's
plan is remembered per config by action, path and query string, so a repeated request skips
validation; requests that fail validation raise and leave nothing behind.
"""

from __future__ import annotations

from dataclasses import dataclass

from query import params as query_params
from query.base import Query
from query.caching import Policy, url_tag
from query.exchange import Request
from query.variations import Choice, choose
from schemas.config import Config, Namespace, Recommender
from schemas.errors import NotFound

# Plans remembered per config (by action, path and query string); emptied when full.
PLAN_MEMO_SIZE = 4096


@dataclass(frozen=True)
class Plan:
    """The recommender, the validated query (with the headers of the request it was made
    for), the variation chosen, the caching policy and the cache-key form of the parameters."""

    ns: Namespace
    rec: Recommender
    query: Query
    choice: Choice
    policy: Policy
    params_key: str
    url_tag: str  # what binds this URL's ETags to it


PlanKey = tuple[str, str, bytes]  # action, URL path, query string


def plan(config: Config, memo: dict[PlanKey, Plan], request: Request) -> Plan:
    """The request's plan: remembered in ``memo`` (the config's) for a cacheable GET with its
    query string, else made anew."""
    key = None
    if request.query_string is not None and request.body is None:
        key = (request.action, request.url_path, request.query_string)
        known = memo.get(key)
        if known is not None:
            return known
    ns, rec = recommender(config, request)
    query = query_params.parse(
        request.action,
        ns.key,
        rec.name,
        request.path,
        request.params,
        request.headers,
        request.body,
    )
    choice = choose(rec, query.user_id, query.feature)
    policy = Policy.for_query(
        choice.variation.cache_control, query, no_store=request.body is not None
    )
    params_key = query_params.normalised(request.params)
    made = Plan(ns, rec, query, choice, policy, params_key, url_tag(request.url_path, params_key))
    # Only a cacheable answer is asked for again cheaply enough for the plan to matter; the
    # plans of uncached misses (a user each) would only pile up for the collector.
    if key is not None and policy.cacheable:
        if len(memo) >= PLAN_MEMO_SIZE:
            memo.clear()
        memo[key] = made
    return made


def recommender(config: Config, request: Request) -> tuple[Namespace, Recommender]:
    """The namespace and recommender ``request`` names, or ``NotFound``."""
    ns = config.namespaces.get(request.namespace)
    rec = ns.recommenders.get(request.action, {}).get(request.recommender) if ns else None
    if ns is None or rec is None:
        raise NotFound(
            f"No '{request.action}' recommender '{request.recommender}' is configured "
            f"in namespace '{request.namespace}'",
            code="RecommenderNotConfigured",
        )
    return ns, rec
