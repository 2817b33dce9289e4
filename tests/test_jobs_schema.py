"""schemathesis against the job API's OpenAPI document: generated requests never get a 5xx,
and every answer keeps the document's promises (status codes, content types, body schemas,
auth enforced, invalid input refused)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import positive_data_acceptance

from imgsrv.config import Settings
from imgsrv.jobs.config import JobConfig
from imgsrv.jobs.openapi import openapi_document
from tests.conftest import LiveServer
from tests.job_fixtures import ADMIN_KEY, KEY_A, job_settings
from tests.origin import shared_origin
from tests.servers import RedisProcess


def schema_settings(redis_url: str) -> Settings:
    # Relative sources resolve against the test origin, so that generated jobs can be accepted.
    return job_settings(redis_url, source_base_url=shared_origin().url("files/"))


# The document the server serves for these settings (the Redis URL does not change it).
DOCUMENT = openapi_document(JobConfig.from_settings(schema_settings("redis://unused")))
# Authenticated the way the document says, so that schemathesis also knows when it leaves the
# key out on purpose (and then expects a 401).
AUTH = SchemathesisConfig.from_dict(
    {"auth": {"openapi": {"tenantKey": {"bearer": KEY_A}, "adminKey": {"bearer": ADMIN_KEY}}}}
)
schema = schemathesis.openapi.from_dict(DOCUMENT, config=AUTH)


@pytest.fixture(scope="module")
def live_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    redis = RedisProcess(tmp_path_factory.mktemp("jobs-schema") / "redis").start()
    try:
        with LiveServer(schema_settings(redis.url)) as server:
            served = httpx.get(server.url + "/v1/openapi.json").json()
            assert served == DOCUMENT
            yield server.url
    finally:
        redis.stop()


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_the_job_api_keeps_its_openapi_promises(case: Case[Any], live_api: str) -> None:
    # Left out: "every schema-valid request is accepted". A variant's option arguments have the
    # URL grammar ("cover:300:200", "fp:0.3:0.6"), which JSON Schema does not capture, so a
    # schema-valid {"w": "wide"} is refused with a documented 400. Everything else is checked,
    # including that schema-invalid requests are refused.
    case.call_and_validate(base_url=live_api, excluded_checks=[positive_data_acceptance])
