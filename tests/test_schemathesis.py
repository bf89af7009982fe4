"""schemathesis against a real ``cloudsession serve``: requests generated from the OpenAPI document
(valid ones and deliberately invalid ones) never get a 5xx, and every answer has a documented
status code, content type, headers and body shape.

Each operation is fuzzed twice over: against share ids the generator makes up (mostly unknown
shares) and against a real share of the operation's own, with its real secret and the admin key
put in, so that valid bodies get past authentication and reach the merge, the store and the
answers. Bounded (30 examples per operation, derandomized) so the run is the same every time.
"""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis import checks
from servers import ServerProcess

from cloudsession.web.openapi import build_document

ADMIN_KEY = "schemathesis-admin-key"
# The registered checks, by their public names.
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]
EXAMPLES_PER_OPERATION = 30

schema = schemathesis.openapi.from_dict(build_document())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # Rate limits off: hundreds of made-up share ids would otherwise turn every later request
    # into a 429 and the fuzzing would test the limiter (tests/test_ratelimit.py does that).
    env = {"SESSIONS_RPC_SHARED_KEY": ADMIN_KEY, "CLOUDSESSION_RATE_LIMITS": "false"}
    proc = ServerProcess(tmp_path_factory.mktemp("fuzz") / "data", env).start()
    try:
        yield proc
    finally:
        proc.stop()


class OwnedShares:
    """One real share per operation (rotate and delete change it for that operation only)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.shares: dict[str, dict[str, Any]] = {}

    def for_operation(self, label: str) -> dict[str, Any]:
        if label not in self.shares:
            body = json.dumps({"sessionID": f"ses_fuzz{uuid.uuid4().hex}"}).encode()
            request = urllib.request.Request(self.url + "/api/share", data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=10) as resp:
                self.shares[label] = json.load(resp)
        return self.shares[label]


@pytest.fixture(scope="module")
def owned(server: ServerProcess) -> OwnedShares:
    return OwnedShares(server.url)


def _aim_at_owned_share(case: Any, share: dict[str, Any]) -> None:
    if "id" in (case.path_parameters or {}):
        case.path_parameters["id"] = share["id"]
    if isinstance(case.body, dict) and "secret" in case.body:
        case.body["secret"] = share["secret"]
    if case.operation.path == "/api/sessions":
        case.headers = {**(case.headers or {}), "x-opencode-share-key": ADMIN_KEY}


@schema.parametrize()
@schema.given(aim_at_owned_share=st.booleans())
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_errors_and_only_documented_answers(case: Any, aim_at_owned_share: bool, server: ServerProcess, owned: OwnedShares) -> None:
    share = None
    if aim_at_owned_share:
        share = owned.for_operation(case.operation.label)
        _aim_at_owned_share(case, share)
    response = case.call_and_validate(base_url=server.url, checks=CHECKS, timeout=15)
    if share is not None and case.operation.path.endswith("/rotate") and response.status_code == 200:
        share["secret"] = response.json()["secret"]  # keep the share usable for later examples
