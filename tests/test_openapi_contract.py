"""Schemathesis over the OpenAPI schema: every public and admin operation, generated
valid and invalid requests, a bounded number of examples each. Zero 5xx and zero
contract failures (undocumented status codes, responses off their schema).

Runs on its own copy of the sample catalog (the admin operations upsert, delete,
promote and roll back).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from pydantic import SecretStr
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from shopsearch.api.app import create_app
from shopsearch.api.cli import sample_catalog_path
from shopsearch.api.service import SearchService
from shopsearch.api.settings import Settings
from shopsearch.indexer.catalog import load_catalog
from shopsearch.indexer.snapshot_build import BuildOptions, build_snapshot
from shopsearch.retrieval.encoders import Encoder

pytestmark = pytest.mark.slow

TOKEN = "contract-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: 422s a schema-valid request may get: the catalog's own facet and filter fields (they
#: differ per catalog), page * size past the result window, an inverted price range, an
#: event time before 2000 or in the future (a date-time string's range is not in JSON Schema).
CROSS_FIELD_RULES = (
    "unknown facet field",
    "unknown filter field",
    "reaches past the deepest result",
    "is greater than max",
    "is before 2000-01-01",
    "in the future",
)


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory, encoder: Encoder) -> Iterator[Any]:
    index_dir: Path = tmp_path_factory.mktemp("contract-index")
    products, report = load_catalog(sample_catalog_path())
    build_snapshot(products, report, index_dir, encoder, BuildOptions(probe_count=20))
    cfg = Settings(
        index_dir=index_dir,
        reload_interval_s=0,
        admin_token=SecretStr(TOKEN),
        user_key=SecretStr("contract-user-key-0123456789"),
        events_db=index_dir / "events.db",
    )
    service = SearchService(cfg, encoder=encoder)
    service.load()
    app = create_app(cfg, service=service)
    with TestClient(app):  # runs the lifespan: the event store is open, as in `serve`
        yield schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_api_contract(api_schema: Any, mode: GenerationMode) -> None:
    """Every operation, valid (positive) and invalid (negative) requests: each response
    passes all of schemathesis's checks (no 5xx, documented status, conforming body)."""
    failures: list[str] = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=20,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def check(case: Any) -> None:
            if mode is GenerationMode.NEGATIVE:
                case.call_and_validate(headers=AUTH)
                return
            # Schema-valid requests may still break the rules OpenAPI cannot state; those
            # must be 422s that say which rule, and nothing else may be refused.
            response = case.call_and_validate(
                headers=AUTH, excluded_checks=[positive_data_acceptance]
            )
            if response.status_code == 422:
                for error in response.json()["detail"]:
                    assert any(rule in error["msg"] for rule in CROSS_FIELD_RULES), error

        try:
            check()
        except Unsatisfiable:
            # An operation without parameters has no invalid request to generate.
            assert mode is GenerationMode.NEGATIVE, operation.label
        except Exception as exc:  # collect every operation's failure, then report all
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)
