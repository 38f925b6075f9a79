"""Property-based fuzz of the API from its own OpenAPI schema: whatever schemathesis
generates (valid and invalid bodies, odd strings, huge numbers), the service never
answers 5xx, and its 2xx bodies match the documented response schemas."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.app.conftest import make_client

EXAMPLES = 25  # per operation and mode


@pytest.fixture(scope="module")
def fuzzed_app(gallery):
    with make_client(gallery, api_key=None) as client:
        yield client.app


@pytest.fixture(scope="module")
def api_schema(fuzzed_app):
    return schemathesis.openapi.from_asgi("/openapi.json", fuzzed_app)


def _operations(api_schema):
    return [result.ok() for result in api_schema.get_all_operations()]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_errors(api_schema, mode):
    operations = _operations(api_schema)
    assert len(operations) >= 8  # every route of the API is fuzzed
    fuzzed = 0
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None)  # fmt: skip
        def call(case):
            case.call_and_validate(checks=[not_a_server_error, response_schema_conformance])

        try:
            call()
            fuzzed += 1
        except Unsatisfiable:  # nothing to break (e.g. /healthz has no inputs)
            assert mode is GenerationMode.NEGATIVE
    assert fuzzed >= 5
