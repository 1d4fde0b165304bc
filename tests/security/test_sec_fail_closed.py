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

import gzip
import http.client
import json
import time

import harness
import pytest
from hostile import SecStack, body_headers, call, forwarded, refused, send, wait_record
from stack import modern

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


# ---- responses the filter cannot inspect ----------------------------------------------------------

TOOLS_CALL = json.dumps(call("echo", {"text": "hi"})[0])


def echo_hdrs(token, extra=()):
    return body_headers(token, method="tools/call", name="echo", extra=extra)


def post_call(stack, token, rid):
    """The echo tools/call sent on a connection of its own, left open for the test to read or
    drop (no Accept-Encoding added)."""
    conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=20)
    conn.putrequest("POST", "/mcp", skip_accept_encoding=True)
    for k, v in echo_hdrs(token) + [("x-request-id", rid), ("content-length", str(len(TOOLS_CALL)))]:
        conn.putheader(k, v)
    conn.endheaders(TOOLS_CALL.encode())
    return conn


def big_json(size):
    """A tools/call result of about `size` bytes."""
    return json.dumps({"jsonrpc": "2.0", "id": 1, "result": {
        "content": [{"type": "text", "text": "x" * size}]}}).encode()


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    upstream = harness.ScriptedUpstream()
    s = SecStack(tmp_path_factory.mktemp("scripted"), upstream=upstream)
    s.upstream = upstream
    yield s
    s.stop()


def only_record(stack, tag):
    records = wait_record(stack, tag)
    assert len(records) == 1, records
    return records[0]


@pytest.mark.parametrize("encoding", ["gzip", "br", "identity, gzip"])
def test_a_compressed_response_gets_502(scripted, encoding):
    """The upstream compresses although the filter removed Accept-Encoding: the filter cannot
    read it, so it does not pass."""
    alice = scripted.token("alice", groups=["sales"])
    scripted.upstream.script(lambda r: harness.Answer(
        200, [("content-type", "application/json"), ("content-encoding", encoding)], gzip.compress(big_json(10))))
    reply, tag = send(scripted, body=TOOLS_CALL, headers=echo_hdrs(alice))
    assert reply.status == 502, reply
    assert reply.json() == {"error": "bad_gateway", "error_description": "the MCP server sent a compressed response"}
    record = only_record(scripted, tag)
    assert (record["decision"], record["reason"]) == ("error", "uninspectable_response")
    assert record["detail"] == f"content-encoding {encoding}"


def test_an_oversized_event_cuts_the_stream(scripted):
    """An event over 4 MiB (response::MAX_EVENT) cannot be inspected: the stream is cut there."""
    alice = scripted.token("alice", groups=["sales"])
    first = b'event: message\ndata: {"jsonrpc":"2.0","method":"notifications/progress","params":{}}\n\n'
    huge = b"data: " + b"x" * (256 * 1024)
    chunks = [first] + [huge] + [b"x" * (256 * 1024)] * 20 + [b"\n\n"]
    scripted.upstream.script(lambda r: harness.Answer(200, [("content-type", "text/event-stream")], chunks))
    rid = "oversized-event-1"
    conn = post_call(scripted, alice, rid)
    try:
        resp = conn.getresponse()
        assert resp.status == 200
        with pytest.raises(http.client.IncompleteRead) as cut:
            resp.read()
        assert cut.value.partial == first
    finally:
        conn.close()
    record = only_record(scripted, rid)
    assert (record["decision"], record["reason"]) == ("error", "response_uninspectable")
    assert record["detail"] == "server-sent event larger than the limit"


def test_a_call_the_client_abandons_before_the_answer_is_still_audited(scripted):
    """The caller goes away while the server is still working on an allowed call: the call was
    forwarded (the tool may have run), so it has its record, `allow`, written when the exchange
    ends."""
    alice = scripted.token("alice", groups=["sales"])
    rid = "abandoned-call-1"

    def slow(request):
        time.sleep(1.5)
        return harness.Answer.json({"jsonrpc": "2.0", "id": 1, "result": {"content": []}})
    scripted.upstream.script(slow)
    conn = post_call(scripted, alice, rid)
    try:
        deadline = time.monotonic() + 10
        while not any(("x-request-id", rid) in r["headers"] for r in scripted.upstream.requests()):
            assert time.monotonic() < deadline, "the call never reached the server"
            time.sleep(0.05)
    finally:
        conn.close()
    record = only_record(scripted, rid)
    assert (record["decision"], record["method"], record["tool"]) == ("allow", "tools/call", "echo"), record
    assert "status" not in record, record


def test_a_json_response_over_envoys_buffer_limit_is_audited_as_an_error(scripted):
    """A held JSON response over Envoy's buffer limit (per_connection_buffer_limit_bytes, 1 MiB
    by default): Envoy answers 500 itself; the filter learns it when the exchange ends and the
    record says so (it used to stay `allow`)."""
    alice = scripted.token("alice", groups=["sales"])
    scripted.upstream.script(lambda r: harness.Answer(
        200, [("content-type", "application/json")], big_json(2 * 1024 * 1024)))
    reply, tag = send(scripted, body=TOOLS_CALL, headers=echo_hdrs(alice))
    assert (reply.status, reply.body) == (500, b"Internal Server Error")
    record = only_record(scripted, tag)
    assert record["decision"] == "error" and record["status"] == 500, record
    assert record["upstream_status"] == 200 and record["tool"] == "echo", record
    assert record["reason"] == "response_payload_too_large", record
    assert "per_connection_buffer_limit_bytes" in record["detail"]


def big_buffer_template(workdir):
    """envoy/mcp-guard.yaml with Envoy's buffer limits raised to 32 MiB (listener, cluster), so
    that the filter's own limit on held responses (8 MiB) is met first."""
    text = (harness.ROOT / "envoy" / "mcp-guard.yaml").read_text()
    limit = "    per_connection_buffer_limit_bytes: 33554432\n"
    listener = "  listeners:\n  - name: mcp\n"
    cluster = "  clusters:\n  - name: mcp_upstream\n"
    assert text.count(listener) == 1 and text.count(cluster) == 1
    text = text.replace(listener, listener + limit).replace(cluster, cluster + limit)
    path = workdir / "big-buffers.yaml"
    path.write_text(text)
    return str(path)


def test_a_response_too_large_to_inspect_gets_502(tmp_path):
    """Over 8 MiB (response::MAX_BUFFERED_RESPONSE) the filter stops holding a JSON body: 502."""
    upstream = harness.ScriptedUpstream(lambda r: harness.Answer(
        200, [("content-type", "application/json")], big_json(9 * 1024 * 1024)))
    s = SecStack(tmp_path, upstream=upstream, template=big_buffer_template(tmp_path))
    try:
        alice = s.token("alice", groups=["sales"])
        reply, tag = send(s, body=TOOLS_CALL, headers=echo_hdrs(alice))
        assert reply.status == 502, reply
        assert reply.json() == {"error": "bad_gateway", "error_description": "upstream response refused"}
        record = only_record(s, tag)
        assert (record["decision"], record["reason"]) == ("error", "response_too_large"), record
        assert record["detail"] == "response too large to inspect", record
    finally:
        s.stop()


TOOLS = [{"name": n, "inputSchema": {"type": "object"}}
         for n in ("search_customers", "get_customer", "delete_customer")]


@pytest.mark.parametrize("fault,reason", [
    ("response-body-unavailable", "response_body_unavailable"),
    ("response-body-write", "response_body_write_failed"),
], ids=["body_unavailable", "write_failed"])
def test_a_response_body_the_filter_cannot_read_or_rewrite_gets_502(tmp_path, fault, reason):
    """The fault build: Envoy cannot hand the body over (get_buffer fails), or the filtered
    list cannot be written back (set_buffer fails). Nothing unchecked goes on: 502, audited."""
    if not FAULTS.exists():
        pytest.fail(f"{FAULTS} is missing: run `make wasm-faults`")
    answer = {"jsonrpc": "2.0", "id": 5, "result": {"tools": TOOLS}}
    upstream = harness.ScriptedUpstream(lambda r: harness.Answer.json(answer))
    s = SecStack(tmp_path, upstream=upstream, values={"WASM": str(FAULTS)})
    try:
        alice = s.token("alice", groups=["sales"])
        body = json.dumps(modern({"jsonrpc": "2.0", "id": 5, "method": "tools/list", "params": {}})[0])
        headers = body_headers(alice, method="tools/list", extra=[("x-mcp-guard-fault", fault)])
        reply, tag = send(s, body=body, headers=headers)
        assert reply.status == 502, reply
        assert reply.json()["id"] == 5 and b"delete_customer" not in reply.body
        record = only_record(s, tag)
        assert (record["decision"], record["reason"]) == ("error", reason), record
        # The control: without the fault, the list is filtered.
        reply, _ = send(s, body=body, headers=body_headers(alice, method="tools/list"))
        assert [t["name"] for t in reply.json()["result"]["tools"]] == ["search_customers", "get_customer"]
    finally:
        s.stop()
