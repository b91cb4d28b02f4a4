"""boto3 clients built one way: explicit timeouts and retry budget, so botocore's retries and
ours don't multiply. Every room that calls AWS builds its clients here, at start-up."""

from __future__ import annotations

import os
from typing import Any

import boto3
from botocore.config import Config

DEFAULT_REGION = "us-east-1"


def client(
    service: str,
    *,
    region: str | None = None,
    endpoint_url: str | None = None,
    max_attempts: int = 2,
    connect_timeout: float = 2.0,
    read_timeout: float = 5.0,
    retry_mode: str = "standard",
) -> Any:
    """A boto3 client with explicit timeouts and retries.

    ``max_attempts`` counts every attempt including the first (botocore's
    ``total_max_attempts``). The endpoint, when not given, is resolved the standard way
    (``AWS_ENDPOINT_URL_<SERVICE>``, ``AWS_ENDPOINT_URL``, the config file); the region
    falls back from the argument to the environment/config to ``us-east-1``.
    """
    session = boto3.session.Session()
    config = Config(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"total_max_attempts": max_attempts, "mode": retry_mode},
    )
    return session.client(
        service,
        region_name=region or session.region_name or os.environ.get("AWS_REGION") or DEFAULT_REGION,
        endpoint_url=endpoint_url,
        config=config,
    )
