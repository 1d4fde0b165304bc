"""Fixtures for the hostile-input security suite: real Envoy, the built filter, the real demo MCP
server (tests/security/hostile.py has the helpers; SECURITY.md maps each guarantee to a test)."""

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
# tests/ and tests/peers come from tests/conftest.py; the e2e stack and our helpers from here.
for path in (TESTS, TESTS / "peers", TESTS / "e2e", HERE):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from hostile import MAX_BODY, SecStack  # noqa: E402


@pytest.fixture(scope="module")
def sec(tmp_path_factory):
    """One stack per test module: demo policy, two trusted issuers, SSE-answering upstream."""
    s = SecStack(tmp_path_factory.mktemp("security"), max_body_bytes=MAX_BODY)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def alice(sec):
    """A valid token of a sales user (may read the CRM, may not delete)."""
    return sec.token("alice", groups=["sales"])
