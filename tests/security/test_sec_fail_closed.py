"""Fail closed: a Wasm VM that traps (a bug, a resource limit) never lets traffic through
unchecked. target/mcp_guard_faults.wasm is the filter built with a test-only hook: the request
header `x-mcp-guard-fault: trap` makes the VM panic in on_request_headers.

What Envoy 1.40 does (envoy/mcp-guard.yaml: failure_policy FAIL_CLOSED): the trapped request
gets a 503 (response code details `wasm_fail_stream`), and the worker's VM stays failed: every
later request on that worker gets a 503 too, until Envoy restarts. (FAIL_RELOAD would answer 503
during a backoff, then start a fresh VM.) Each worker thread has its own VM, so with several
workers the others keep checking traffic normally. The trapped VM cannot write audit records;
Envoy's access log writes them instead (origin "envoy", reason "wasm_fail_stream"), and Envoy's
log has the panic."""

import json

import harness
import pytest
from hostile import SecStack, body_headers, call, forwarded, refused, send, wait_record

FAULTS = harness.ROOT / "target" / "mcp_guard_faults.wasm"
BODY = json.dumps(call("get_customer", {"customer_id": "c-100"})[0])
TRAP = [("x-mcp-guard-fault", "trap")]


def hdrs(token, extra=()):
    return body_headers(token, method="tools/call", name="get_customer", extra=extra)


@pytest.fixture
def faulty(tmp_path):
    """The fault-injection build, one worker (so one VM: the trap kills the only one)."""
    if not FAULTS.exists():
        pytest.fail(f"{FAULTS} is missing: run `make wasm-faults`")
    s = SecStack(tmp_path, values={"WASM": str(FAULTS)}, options={"--concurrency": 1})
    yield s
    s.stop()


def test_a_trap_answers_503_and_every_later_request_too(faulty):
    alice = faulty.token("alice", groups=["sales"])
    forwarded(faulty, body=BODY, headers=hdrs(alice))  # the control: this build works
    before = len(faulty.upstream_requests())

    reply, _ = refused(faulty, status=503, decision="error", reason="wasm_fail_stream", origin="envoy",
                       body=BODY, headers=hdrs(alice, TRAP))
    assert reply.body == b""
    log = faulty.envoy.output()
    assert "mcp-guard: injected fault" in log
    assert "proxy_on_request_headers failed" in log

    later = [
        ("POST", "/mcp", BODY, hdrs(alice)),                        # valid token
        ("POST", "/mcp", BODY, hdrs(None)),                         # no token
        ("POST", "/mcp", json.dumps(call("delete_customer")[0]), hdrs(alice)),
        ("GET", "/mcp", b"", [("accept", "text/event-stream"), ("authorization", f"Bearer {alice}")]),
        ("DELETE", "/mcp", b"", [("authorization", f"Bearer {alice}")]),
        ("GET", "/.well-known/oauth-protected-resource/mcp", b"", []),
        ("POST", "/admin", BODY, hdrs(alice)),
    ] * 2
    for method, path, body, h in later:
        refused(faulty, status=503, decision="error", reason="wasm_fail_stream", origin="envoy",
                method=method, path=path, body=body, headers=h)
    assert len(faulty.upstream_requests()) == before, "traffic went through a failed VM"


def test_with_several_workers_the_others_keep_checking(tmp_path):
    """Two workers, one VM trapped: every later request is either refused by the dead VM (503)
    or fully checked by the live one (401 without a token, 200 with an allow record) — never
    forwarded unchecked."""
    s = SecStack(tmp_path, values={"WASM": str(FAULTS)}, options={"--concurrency": 2})
    try:
        alice = s.token("alice", groups=["sales"])
        reply, _ = send(s, body=BODY, headers=hdrs(alice, TRAP))
        assert reply.status == 503
        statuses = set()
        for _ in range(20):
            before = len(s.upstream_requests())
            reply, rid = send(s, body=BODY, headers=hdrs(None))
            assert reply.status in (401, 503), reply
            assert len(s.upstream_requests()) == before
            statuses.add(reply.status)
            reply, rid = send(s, body=BODY, headers=hdrs(alice))
            assert reply.status in (200, 503), reply
            if reply.status == 200:
                records = wait_record(s, rid)
                assert records and records[0]["decision"] == "allow" and records[0]["sub"] == "alice"
                assert len(s.upstream_requests()) == before + 1
            else:
                assert len(s.upstream_requests()) == before
            statuses.add(reply.status)
        # 40 fresh connections spread over both workers: both behaviours were seen.
        assert statuses == {200, 401, 503}
    finally:
        s.stop()


def test_the_release_build_has_no_fault_hook(sec, alice):
    """The header means nothing to target/mcp_guard.wasm: the request is checked and served."""
    reply, record, _ = forwarded(sec, body=BODY, headers=hdrs(alice, TRAP))
    assert reply.status == 200 and record["rule"] == "read-only-tools"


@pytest.mark.parametrize("name,value,status,reason", [
    ("x-anything", b"caf\xe9", 401, "missing_token"),
    ("user-agent", b"\xff\xfe\xfd", 401, "missing_token"),
    ("authorization", b"Bearer \xff\xfeabc", 401, "malformed"),
    ("mcp-session-id", b"ab\xffcd", 401, "missing_token"),
], ids=["custom", "user_agent", "authorization", "session_id"])
def test_header_values_that_are_not_utf8_do_not_kill_the_vm(tmp_path, name, value, status, reason):
    """Envoy passes header values with bytes >= 0x80 (obs-text) to the filter. proxy-wasm's text
    accessors panic on them: before the fix one such header, sent by anyone before any
    authentication, trapped the worker's VM and FAIL_CLOSED then refused all traffic with 503
    until a restart. Now the value reads as U+FFFD: the request is checked like any other, and
    the one worker keeps serving."""
    s = SecStack(tmp_path, options={"--concurrency": 1})
    try:
        refused(s, status=status, reason=reason, body=BODY, headers=hdrs(None) + [(name, value)])
        alice = s.token("alice", groups=["sales"])
        h = hdrs(alice) + [(name, value)] if name != "authorization" else hdrs(alice)
        if name == "mcp-session-id":
            refused(s, status=400, reason="invalid_session_id", body=BODY, headers=h)
        else:
            forwarded(s, body=BODY, headers=h)
        forwarded(s, body=BODY, headers=hdrs(alice))
    finally:
        s.stop()
