"""Schemathesis against the app's OpenAPI document (/api/v1/openapi.json): requests generated from the
schema for every operation, valid (positive) and invalid (negative), each sent with a finance, a tenant
and an operator key, never get a server error, and every answer is what the document says (content
type; body schema where the status is documented).

Schemathesis's pytest loader (`schemathesis.pytest.from_fixture`) does not run under pytest 9, so
each operation's Hypothesis strategy (`APIOperation.as_strategy`) is driven here directly; the
examples are bounded (and derandomized) to keep the whole run to seconds.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from tests.support.web_support import World, build_world

ROLES = ("finance", "acme", "operator")
EXAMPLES = {schemathesis.GenerationMode.POSITIVE: 15, schemathesis.GenerationMode.NEGATIVE: 10}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("web-schemathesis")
    built = build_world(f"sqlite:///{root}/billing.db", root / "usage")
    yield built
    built.ledger.dispose()


CHECKS = [not_a_server_error, content_type_conformance, response_schema_conformance]


def exercise(world: World, operation: schemathesis.APIOperation, mode: schemathesis.GenerationMode) -> None:
    @settings(
        max_examples=EXAMPLES[mode],
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        for role in ROLES:
            response = case.call(headers=world.auth(role))
            assert response.status_code < 500, (operation.label, role, case.as_curl_command(), response.text)
            case.validate_response(response, checks=CHECKS)

    run()


@pytest.mark.parametrize("mode", list(EXAMPLES), ids=str)
def test_no_server_error_for_any_generated_request(world: World, mode: schemathesis.GenerationMode) -> None:
    schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", world.app())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8, [op.label for op in operations]
    for operation in operations:
        exercise(world, operation, mode)
