"""The audit trail and the metrics, end to end through real Envoy (docs/audit.md).

Records are told apart by request id (Envoy keeps a client's x-request-id): every request a test
sends carries one of its own, so a test counts exactly its records in a log the module shares.
"""

import datetime
import json
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import harness
import httpx2
import keys
import pytest
import yaml
from stack import ISSUER, Stack, modern

POLICY_DENIED = -31403
HEADER_MISMATCH = -32020
UPSTREAM_CREDENTIAL = -31502
MAX_RECORD_BYTES = 8 * 1024
DOC = harness.ROOT / "docs" / "audit.md"
ABSENT = object()  # an expected field that must not be in the record
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


class AuditStack(Stack):
    """The demo stack, with server options (audit_arguments, …), another envoy/ template and
    extra template values."""

    def __init__(self, workdir, *, template="mcp-guard.yaml", values=None, server=None,
                 policy="policies/demo.yaml", issuers=None):
        self.port = harness.free_port()
        self.resource = f"http://127.0.0.1:{self.port}/mcp"
        self.issuer = keys.Issuer(ISSUER, self.resource, algs=("RS256", "ES256"))
        self.server = harness.McpServer(workdir)
        trusted = [{"issuer": ISSUER, "audiences": [self.resource],
                    "algorithms": ["RS256", "ES256"], "jwks": self.issuer.jwks()}]
        trusted += [dict(i, audiences=[self.resource]) for i in issuers or []]
        self.config = harness.plugin_config(trusted, harness.load_policy(harness.ROOT / policy),
                                            self.resource)
        self.config["servers"][0].update(server or {})
        try:
            self.envoy = harness.Envoy(workdir, self.config, self.server.port, port=self.port,
                                       template=template, values=values)
        except Exception:
            self.server.stop()
            raise


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = AuditStack(tmp_path_factory.mktemp("audit"), server={"audit_arguments": "full"})
    yield s
    s.stop()


# ---- helpers --------------------------------------------------------------------------------------


def send(stack, request_id, body=None, *, token=None, raw=None, headers=None, method="POST",
         content_type="application/json", path="/mcp"):
    """One HTTP request with its own x-request-id. A dict body is sent as a 2026-07-28 message
    (envelope and Mcp-Method/Mcp-Name added); `raw` bytes are sent as they are."""
    h = {"accept": "application/json, text/event-stream", "x-request-id": request_id}
    if content_type:
        h["content-type"] = content_type
    content = raw
    if body is not None:
        body, envelope = modern(body)
        h.update(envelope)
        content = json.dumps(body)
    if token:
        h["authorization"] = f"Bearer {token}"
    h.update(headers or {})
    url = f"http://127.0.0.1:{stack.port}{path}"
    return httpx2.request(method, url, content=content, headers=h, timeout=15)


def tool_call(name, arguments, id=1):
    return {"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": name, "arguments": arguments}}


def read_records(path, predicate, count, timeout=30.0):
    """The JSON records in `path` (non-JSON lines skipped) matching `predicate`, once `count` are
    there. Envoy buffers access-log files and writes them every 10 s by default
    (--file-flush-interval-msec), or at 64 KiB."""
    deadline = time.monotonic() + timeout
    while True:
        found = []
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                if predicate(record):
                    found.append(record)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def records_for(stack, prefix, count, timeout=30.0):
    return read_records(stack.envoy.access_log,
                        lambda r: str(r.get("request_id", "")).startswith(prefix), count, timeout)


def all_records_for(stack, prefix, path=None):
    """Every record of `prefix`, for certain: sends a marker request after them and waits for
    its record, which the log writes after theirs. The marker's record is not returned."""
    marker = f"{prefix}~marker"
    assert send(stack, marker, raw=b"{}").status_code == 401
    path = path or stack.envoy.access_log
    found = read_records(path, lambda r: r.get("request_id") == marker, 1)
    assert found, "the marker record never arrived"
    return [r for r in read_records(path, lambda r: str(r.get("request_id", "")).startswith(prefix), 0)
            if r.get("request_id") != marker]


def counters(envoy):
    """mcp-guard's counters from /stats, by their full (unlabelled) name."""
    out = {}
    for line in envoy.stats().splitlines():
        name, _, value = line.partition(": ")
        if name.startswith("wasmcustom.mcp_guard."):
            out[name[len("wasmcustom."):]] = int(value)
    return out


def delta(before, after):
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def prometheus(envoy):
    with urllib.request.urlopen(f"http://127.0.0.1:{envoy.admin_port}/stats/prometheus", timeout=5) as r:
        return r.read().decode()


def check(record, expected):
    for key, value in expected.items():
        if value is ABSENT:
            assert key not in record, f"{key} in {record}"
        elif callable(value):
            assert key in record and value(record[key]), f"{key}={record.get(key)!r} in {record}"
        else:
            assert record.get(key) == value, f"{key}: {record.get(key)!r} != {value!r} in {record}"


def common(record, http_method="POST"):
    """What every record the filter writes for the demo server carries."""
    check(record, {
        "schema": "mcp-guard.audit.v2", "ts": TS.match, "http_method": http_method,
        "source": lambda s: s.startswith("127.0.0.1:"), "route": "mcp-demo",
        "upstream": "mcp_upstream", "server": "demo", "policy": "demo-crm", "policy_version": "1",
        "filter_us": lambda v: isinstance(v, int) and v >= 0,
        "total_ms": lambda v: isinstance(v, int) and v >= 0,
    })
    assert record["filter_us"] <= (record["total_ms"] + 1) * 1000, record
    assert record["decision"] in ("allow", "deny", "error")


# ---- one run, every kind of outcome ---------------------------------------------------------------


def test_known_mix_leaves_one_record_per_message_and_exact_counters(stack):
    tag = f"mix-{uuid.uuid4().hex[:8]}"
    alice, bob = f"alice-{tag}", f"bob-{tag}"
    t_alice = stack.token(alice, groups=["sales"], azp="sales-agent")
    t_bob = stack.token(bob, groups=["admins"], email=f"{bob}@example.com")
    before = counters(stack.envoy)
    expected = {}  # request id -> expected fields of each of its records, in order

    def go(name, status, records, **kw):
        request_id = f"{tag}-{name}"
        r = send(stack, request_id, **kw)
        assert r.status_code == status, (name, r.status_code, r.text[:300])
        expected[request_id] = records if isinstance(records, list) else [records]
        return r

    who_alice = {"sub": alice, "iss": ISSUER, "groups": ["sales"], "client_id": "sales-agent",
                 "user": ABSENT}
    allowed = {"decision": "allow", "status": ABSENT, "reason": ABSENT, "error_code": ABSENT}
    anonymous = {"decision": "deny", "status": 401, "sub": ABSENT, "iss": ABSENT, "method": ABSENT,
                 "upstream_status": ABSENT}

    # Allowed.
    go("get", 200, {**who_alice, **allowed, "method": "tools/call", "jsonrpc_id": 1,
                    "tool": "get_customer", "arguments": {"customer_id": "c-100"},
                    "rule": "read-only-tools", "upstream_status": 200},
       body=tool_call("get_customer", {"customer_id": "c-100"}), token=t_alice)
    go("search", 200, {**who_alice, **allowed, "tool": "search_customers", "jsonrpc_id": "s-1",
                       "arguments": {"query": "grace"}, "upstream_status": 200},
       body=tool_call("search_customers", {"query": "grace"}, id="s-1"), token=t_alice)
    listed = go("list", 200, {**who_alice, **allowed, "method": "tools/list", "jsonrpc_id": 3,
                              "rule": "connect-and-discover", "hidden": 2, "tool": ABSENT,
                              "upstream_status": 200},
                body={"jsonrpc": "2.0", "id": 3, "method": "tools/list"}, token=t_alice)
    assert "delete_customer" not in listed.text and "get_customer" in listed.text
    go("initialized", 202, {**who_alice, **allowed, "method": "notifications/initialized",
                            "jsonrpc_id": ABSENT, "rule": "connect-and-discover",
                            "upstream_status": 202},
       body={"jsonrpc": "2.0", "method": "notifications/initialized"}, token=t_alice)
    go("admin-delete", 200, {"sub": bob, "user": f"{bob}@example.com", "groups": ["admins"],
                             "client_id": ABSENT, **allowed, "tool": "delete_customer",
                             "rule": "admins-delete", "upstream_status": 200},
       body=tool_call("delete_customer", {"customer_id": "c-200"}), token=t_bob)

    # Denied by the policy: answered in-band (200 + JSON-RPC error), or 403 for a notification.
    denied = {"decision": "deny", "error_code": POLICY_DENIED, "upstream_status": ABSENT,
              "reason": lambda s: isinstance(s, str) and s != ""}
    go("delete", 200, {**who_alice, **denied, "status": 200, "tool": "delete_customer",
                       "rule": "no-destructive", "arguments": {"customer_id": "c-100"}},
       body=tool_call("delete_customer", {"customer_id": "c-100"}), token=t_alice)
    go("push", 200, {**who_alice, **denied, "status": 200, "tool": "push_branch", "rule": ABSENT},
       body=tool_call("push_branch", {"owner": "o", "repo": "r", "branch": "main"}), token=t_alice)
    go("cancelled", 403, {**who_alice, **denied, "status": 403, "method": "notifications/cancelled",
                          "jsonrpc_id": ABSENT},
       body={"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}},
       token=t_alice)

    # Not authenticated.
    call = tool_call("get_customer", {"customer_id": "c-100"})
    go("no-token", 401, {**anonymous, "reason": "missing_token"}, body=call)
    go("expired", 401, {**anonymous, "reason": "expired"}, body=call,
       token=stack.token(alice, ttl=-3600))
    go("audience", 401, {**anonymous, "reason": "wrong_audience"}, body=call,
       token=stack.token(alice, aud="http://127.0.0.1:1/other"))
    go("unknown-key", 401, {**anonymous, "reason": "unknown_key"}, body=call,
       token=keys.SigningKey("RS256").sign(stack.issuer.claims(alice)))

    # Malformed or refused by HTTP checks (after authentication: the caller is known).
    bad = {**who_alice, "decision": "deny", "upstream_status": ABSENT}
    legacy = {"mcp-protocol-version": "2025-06-18"}
    go("not-json", 400, {**bad, "status": 400, "error_code": -32700, "method": ABSENT},
       raw=b'{"jsonrpc": "2.0", "id": 1, "method": ', token=t_alice, headers=legacy)
    go("not-jsonrpc", 400, {**bad, "status": 400, "error_code": -32600, "method": ABSENT},
       raw=b'{"id": 1, "method": "tools/list"}', token=t_alice, headers=legacy)
    go("text-plain", 415, {**bad, "status": 415, "reason": "unsupported_media_type"},
       raw=b'{"jsonrpc":"2.0","id":1,"method":"ping"}', content_type="text/plain", token=t_alice,
       headers=legacy)
    go("gzip", 415, {**bad, "status": 415, "reason": "content_encoding"},
       raw=b"\x1f\x8b\x08\x00", token=t_alice, headers={**legacy, "content-encoding": "gzip"})
    go("too-large", 413, {**bad, "status": 413, "reason": "body_too_large", "method": ABSENT},
       raw=json.dumps(tool_call("echo", {"text": "x" * (1536 * 1024)})).encode(), token=t_alice,
       headers=legacy)
    go("mismatch", 400, {**bad, "status": 400, "error_code": HEADER_MISMATCH,
                         "method": "tools/call", "tool": "get_customer"},
       body=call, token=t_alice, headers={"mcp-name": "delete_customer"})
    go("put", 405, {**bad, "status": 405, "reason": "method_not_allowed", "http_method": "PUT"},
       method="PUT", raw=b"{}", token=t_alice)

    # Batches (2025-03-26 only): one record per message.
    batch = {"mcp-protocol-version": "2025-03-26"}
    go("batch-ok", 400, [
        {**who_alice, **allowed, "method": "ping", "jsonrpc_id": 7, "upstream_status": 400},
        {**who_alice, **allowed, "method": "notifications/initialized", "jsonrpc_id": ABSENT,
         "upstream_status": 400},
    ], raw=json.dumps([{"jsonrpc": "2.0", "id": 7, "method": "ping"},
                       {"jsonrpc": "2.0", "method": "notifications/initialized"}]).encode(),
       token=t_alice, headers=batch)
    go("batch-denied", 200, [
        {**who_alice, **denied, "status": 200, "tool": "get_customer", "rule": ABSENT,
         "reason": "batch_denied", "detail": "another message in the batch was denied"},
        {**who_alice, **denied, "status": 200, "tool": "delete_customer", "rule": "no-destructive"},
    ], raw=json.dumps([tool_call("get_customer", {"customer_id": "c-1"}, id=8),
                       tool_call("delete_customer", {"customer_id": "c-1"}, id=9)]).encode(),
       token=t_alice, headers=batch)

    # A session bound to bob is not alice's.
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "audit-test", "version": "1"}}}
    r = go("bob-initialize", 200, {"sub": bob, **allowed, "method": "initialize",
                                   "upstream_status": 200,
                                   "session_id": lambda s: s.startswith("mg1.")},
           raw=json.dumps(init).encode(), token=t_bob)
    session = r.headers["mcp-session-id"]
    go("session-theft", 404, {**bad, "status": 404, "reason": "session_of_another_caller",
                              "session_id": session},
       raw=b'{"jsonrpc":"2.0","id":2,"method":"tools/list"}', token=t_alice,
       headers={**legacy, "mcp-session-id": session})

    # Exactly one record per message, each as expected, nothing else with this tag.
    moved = delta(before, counters(stack.envoy))
    records = all_records_for(stack, tag)
    assert len(records) == sum(len(v) for v in expected.values()), [r["request_id"] for r in records]
    for request_id, fields in expected.items():
        mine = [r for r in records if r["request_id"] == request_id]
        assert len(mine) == len(fields), (request_id, mine)
        for record, wanted in zip(mine, fields):
            common(record, wanted.get("http_method", "POST"))
            check(record, wanted)

    # The counters moved by exactly this run.
    assert moved == {
        "mcp_guard.requests.method=tools_call.decision=allow": 3,      # get, search, admin-delete
        "mcp_guard.requests.method=tools_list.decision=allow": 1,
        "mcp_guard.requests.method=notifications_initialized.decision=allow": 2,  # + batch
        "mcp_guard.requests.method=ping.decision=allow": 1,            # batch
        "mcp_guard.requests.method=initialize.decision=allow": 1,
        "mcp_guard.requests.method=tools_call.decision=deny": 5,       # delete, push, mismatch, batch x2
        "mcp_guard.requests.method=notifications_cancelled.decision=deny": 1,
        # No method known: 4 unauthenticated, not-json, not-jsonrpc, 2 x 415, 413, 405, session.
        "mcp_guard.requests.method=none.decision=deny": 11,
        "mcp_guard.denials.rule=no-destructive": 2,                    # delete, batch
        "mcp_guard.auth_failures.reason=missing_token": 1,
        "mcp_guard.auth_failures.reason=expired": 1,
        "mcp_guard.auth_failures.reason=wrong_audience": 1,
        "mcp_guard.auth_failures.reason=unknown_key": 1,
        "mcp_guard.hidden_entries": 2,
    }


# ---- record hygiene ---------------------------------------------------------------------------------


NASTY = 'line one\nline two\r\n\t"quoted" \\backslash\\ \x00\x1b[31m\x7f \u0085\u2028\u2029 é 漢字 😀'


def test_arguments_with_newlines_quotes_unicode_stay_one_valid_line(stack):
    tag = f"nasty-{uuid.uuid4().hex[:8]}"
    token = stack.token(f"u-{tag}", groups=["sales"])
    small = NASTY
    big = NASTY + "y" * (200 * 1024)
    for name, text in (("small", small), ("big", big)):
        r = send(stack, f"{tag}-{name}", tool_call("echo", {"text": text}), token=token)
        assert r.status_code == 200
    records = all_records_for(stack, tag)
    assert len(records) == 2
    raw = [line for line in stack.envoy.access_log.read_bytes().split(b"\n")
           if tag.encode() in line and b"~marker" not in line]
    assert len(raw) == 2, "each record is exactly one line"
    for line in raw:
        assert len(line) <= MAX_RECORD_BYTES
        text = line.decode()
        assert not any(c < " " or c in "\x7f\u0085\u2028\u2029" for c in text)
        json.loads(text)
    by_name = {r["request_id"].rsplit("-", 1)[1]: r for r in records}
    assert by_name["small"]["arguments"] == {"text": small}   # round trip, byte for byte
    cut = by_name["big"]["arguments"]["text"]
    assert cut.endswith(f"…[truncated from {len(big.encode())} bytes]")
    assert big.startswith(cut[: -len(f"…[truncated from {len(big.encode())} bytes]")])
    assert by_name["big"]["tool"] == "echo" and by_name["big"]["decision"] == "allow"


# ---- requests refused before the filter wrote a record --------------------------------------------


def test_envoy_writes_the_record_when_the_filter_could_not(stack):
    tag = f"envoy-{uuid.uuid4().hex[:8]}"
    r = httpx2.get(f"http://127.0.0.1:{stack.port}/mcp%2F..%2Fadmin", headers={"x-request-id": tag})
    assert r.status_code == 400
    # The metadata document is not an MCP message: no record.
    ok = httpx2.get(f"http://127.0.0.1:{stack.port}/.well-known/oauth-protected-resource/mcp",
                    headers={"x-request-id": f"{tag}-metadata"})
    assert ok.status_code == 200
    records = all_records_for(stack, tag)
    assert len(records) == 1, records
    check(records[0], {"schema": "mcp-guard.audit.v2", "origin": "envoy", "ts": TS.match,
                       "decision": "deny", "status": 400, "reason": "path_normalization_failed",
                       "http_method": "GET", "source": lambda s: s.startswith("127.0.0.1:"),
                       "total_ms": lambda v: isinstance(v, int)})
    # The audit logger has no filter: an exchange without a filter record (these two) prints
    # an empty string, and Envoy writes nothing for it: no "-", no blank line.
    lines = stack.envoy.access_log.read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(line.startswith(b"{") for line in lines[:-1]), \
        [line for line in lines[:-1] if not line.startswith(b"{")][:3]


def test_internal_errors_leave_one_error_record(tmp_path):
    faults = harness.ROOT / "target" / "mcp_guard_faults.wasm"
    if not faults.exists():
        pytest.skip("needs `make wasm-faults`")
    # A VM that traps: Envoy fails closed (503) and writes the record.
    (tmp_path / "trap").mkdir()
    (tmp_path / "key").mkdir()
    s = AuditStack(tmp_path / "trap", values={"WASM": str(faults)})
    try:
        token = s.token("trap-victim", groups=["sales"])
        r = send(s, "trap-1", tool_call("echo", {"text": "x"}), token=token,
                 headers={"x-mcp-guard-fault": "trap"})
        assert r.status_code >= 500
        records = records_for(s, "trap-", 1)
        assert len(records) == 1
        check(records[0], {"origin": "envoy", "decision": "error", "status": r.status_code,
                           "reason": lambda s: s != ""})
    finally:
        s.stop()
    # The MCP server refuses the service credential: the filter answers 502 and says why.
    s = AuditStack(tmp_path / "key", server={"credential": {"header": "x-api-key", "value": "not-the-service-key-0002"}})
    try:
        token = s.token("key-victim", groups=["sales"])
        r = send(s, "key-1", tool_call("echo", {"text": "x"}), token=token)
        assert r.status_code == 502
        records = records_for(s, "key-", 1)
        assert len(records) == 1
        common(records[0])
        check(records[0], {"decision": "error", "status": 502, "upstream_status": 401,
                           "reason": "upstream_refused_service_credential",
                           "error_code": UPSTREAM_CREDENTIAL, "sub": "key-victim"})
    finally:
        s.stop()


# ---- metrics ----------------------------------------------------------------------------------------


class JwksServer:
    """Serves a JWKS at /jwks and 404 elsewhere, counting hits."""

    def __init__(self, jwks):
        body = json.dumps(jwks).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == "/jwks":
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                else:
                    self.send_response(404)
                    self.send_header("content-length", "0")
                    self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()


PROM_LINE = re.compile(r"^(mcp_guard_\w+)\{([^}]*)\} (\d+)$")


def prometheus_series(envoy):
    series = {}
    for line in prometheus(envoy).splitlines():
        m = PROM_LINE.match(line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            series[(m.group(1), tuple(sorted(labels.items())))] = int(m.group(3))
    return series


def test_prometheus_series_are_labelled(tmp_path):
    """Every counter mcp-guard keeps, as /stats/prometheus shows it: the stats_tags of the
    template turn the name-encoded labels into Prometheus labels."""
    remote = keys.Issuer("https://remote.example", "unused", algs=("RS256",))
    jwks = JwksServer(remote.jwks())
    issuers = [
        {"issuer": "https://remote.example", "algorithms": ["RS256"], "cluster": "jwks",
         "jwks_uri": f"http://127.0.0.1:{jwks.port}/jwks"},
        {"issuer": "https://broken.example", "algorithms": ["RS256"], "cluster": "jwks",
         "jwks_uri": f"http://127.0.0.1:{jwks.port}/missing"},
    ]
    s = AuditStack(tmp_path, issuers=issuers,
                   values={"EXTRA_CLUSTERS": harness.cluster_yaml("jwks", jwks.port)})
    try:
        remote.audience = s.resource
        token = remote.token("prom-remote", groups=["sales"])
        assert send(s, "prom-1", tool_call("get_customer", {"customer_id": "c-100"}), token=token).status_code == 200
        alice = s.token("prom-alice", groups=["sales"])
        assert send(s, "prom-2", tool_call("delete_customer", {"customer_id": "c-1"}), token=alice).status_code == 200
        assert send(s, "prom-3", {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, token=alice).status_code == 200
        assert send(s, "prom-4", tool_call("get_customer", {"customer_id": "c-1"}),
                    token=s.token("x", ttl=-3600)).status_code == 401
        # The echo tool sends the service key back: redacted, and counted.
        leak = send(s, "prom-5", tool_call("echo", {"text": harness.SERVICE_KEY}), token=alice)
        assert leak.status_code == 200 and harness.SERVICE_KEY not in leak.text

        deadline = time.monotonic() + 10
        while True:
            series = prometheus_series(s.envoy)
            if any(name == "mcp_guard_jwks_fetches" and dict(labels).get("mcp_outcome") == "http_error"
                   for name, labels in series) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        get = lambda name, **labels: series.get((name, tuple(sorted(labels.items()))))  # noqa: E731
        assert get("mcp_guard_requests", mcp_method="tools_call", mcp_decision="allow") == 2
        assert get("mcp_guard_requests", mcp_method="tools_call", mcp_decision="deny") == 1
        assert get("mcp_guard_requests", mcp_method="tools_list", mcp_decision="allow") == 1
        assert get("mcp_guard_requests", mcp_method="none", mcp_decision="deny") == 1
        assert get("mcp_guard_denials", mcp_rule="no-destructive") == 1
        assert get("mcp_guard_auth_failures", mcp_reason="expired") == 1
        assert get("mcp_guard_hidden_entries") == 2
        # The echo answer carries the text twice (content and structuredContent).
        assert get("mcp_guard_key_leaks_redacted") == 2
        assert get("mcp_guard_jwks_fetches", mcp_outcome="ok") >= 1
        assert get("mcp_guard_jwks_fetches", mcp_outcome="http_error") >= 1
        # Nothing left unlabelled: every mcp_guard series is one of these names, and a label
        # never stayed in a name.
        names = {name for name, _ in series}
        assert names == {"mcp_guard_requests", "mcp_guard_denials", "mcp_guard_auth_failures",
                         "mcp_guard_hidden_entries", "mcp_guard_key_leaks_redacted",
                         "mcp_guard_jwks_fetches"}, names
        # The alerts in docs/audit.md use these names and labels only.
        labels_of = {}
        for name, labels in series:
            labels_of.setdefault(name, set()).update(k for k, _ in labels)
        for metric, label_text in re.findall(r"(mcp_guard_\w+?)(?:_total)?\{([^}]*)\}", alert_rules()):
            assert metric in labels_of, metric
            for label in re.findall(r"(\w+)\s*[=!~]", label_text):
                assert label in labels_of[metric], (metric, label)
    finally:
        s.stop()
        jwks.stop()


def alert_rules():
    text = DOC.read_text()
    block = re.search(r"```yaml\n(groups:.*?)```", text, re.S)
    assert block, "docs/audit.md has a Prometheus rules block"
    rules = yaml.safe_load(block.group(1))
    return "\n".join(r["expr"] for g in rules["groups"] for r in g["rules"])


# ---- the example bootstraps -------------------------------------------------------------------------


EXAMPLES = ["audit-json.yaml", "audit-stdout.yaml", "audit-otel.yaml"]


def rendered(template):
    fill = {k: "1" for k in ("LISTEN_PORT", "ADMIN_PORT", "UPSTREAM_PORT", "OTEL_PORT")}
    fill.update(UPSTREAM_HOST="127.0.0.1", OTEL_HOST="127.0.0.1", WASM="/x.wasm",
                PLUGIN_CONFIG='"{}"', ACCESS_LOG="/x.log", EXTRA_CLUSTERS="")
    config = yaml.safe_load(harness.render_template(template, **fill))
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    logs = hcm.pop("access_log")
    clusters = config["static_resources"]["clusters"]
    config["static_resources"]["clusters"] = [c for c in clusters if c["name"] != "otel_collector"]
    return config, logs


@pytest.mark.parametrize("example", EXAMPLES)
def test_examples_differ_from_the_template_only_in_the_access_log(example):
    main, _ = rendered("mcp-guard.yaml")
    config, logs = rendered(example)
    assert config == main
    assert logs


def test_json_example_has_one_column_per_field(tmp_path):
    s = AuditStack(tmp_path, template="audit-json.yaml")
    try:
        alice = s.token("col-alice", groups=["sales"], email="alice@example.com", azp="agent-1")
        assert send(s, "col-1", tool_call("get_customer", {"customer_id": "c-100"}), token=alice).status_code == 200
        assert send(s, "col-2", tool_call("delete_customer", {"customer_id": "c-1"}), token=alice).status_code == 200
        assert send(s, "col-3", tool_call("get_customer", {"customer_id": "c-1"}),
                    token=s.token("col-late", ttl=-60)).status_code == 401
        assert httpx2.get(f"http://127.0.0.1:{s.port}/mcp%2Fx",
                          headers={"x-request-id": "col-4"}).status_code == 400
        rows = {r["request_id"]: r for r in read_records(
            s.envoy.access_log, lambda r: str(r.get("request_id")).startswith("col-"), 4)}
        assert len(rows) == 4
        allow, deny, late, envoy_only = (rows[f"col-{i}"] for i in range(1, 5))
        check(allow, {"decision": "allow", "rule": "read-only-tools", "sub": "col-alice",
                      "user": "alice@example.com", "client_id": "agent-1", "method": "tools/call",
                      "tool": "get_customer", "reason": None, "response_code": 200,
                      "response_code_details": "via_upstream", "http_method": "POST",
                      "ts": TS.match, "upstream_cluster": "mcp_upstream"})
        check(deny, {"decision": "deny", "rule": "no-destructive", "tool": "delete_customer",
                     "reason": lambda s: s != "", "response_code": 200})
        check(late, {"decision": "deny", "reason": "expired", "sub": None, "tool": None,
                     "response_code": 401})
        check(envoy_only, {"decision": None, "record": None, "response_code": 400})
        for row in (allow, deny, late):
            record = json.loads(row["record"])
            assert record["request_id"] == row["request_id"]
            assert record["decision"] == row["decision"]
            assert record.get("sub") == row["sub"] and record.get("tool") == row["tool"]
            # The filter's total_ms ends where it last saw the exchange; Envoy's duration
            # includes the last bytes to the client.
            assert record["total_ms"] <= row["duration_ms"] + 1, (record, row)
    finally:
        s.stop()


def test_stdout_example(tmp_path):
    s = AuditStack(tmp_path, template="audit-stdout.yaml")
    try:
        alice = s.token("out-alice", groups=["sales"])
        assert send(s, "out-1", tool_call("get_customer", {"customer_id": "c-100"}), token=alice).status_code == 200
        assert send(s, "out-2", tool_call("delete_customer", {"customer_id": "c-1"}), token=alice).status_code == 200
        assert httpx2.get(f"http://127.0.0.1:{s.port}/mcp%2Fx",
                          headers={"x-request-id": "out-3"}).status_code == 400
        # Envoy's stdout (its own log is stderr; the harness keeps both in one file).
        records = all_records_for(s, "out-", path=s.envoy.log)
        by_id = {r["request_id"]: r for r in records}
        assert len(records) == 3 and len(by_id) == 3
        common(by_id["out-1"])
        check(by_id["out-1"], {"decision": "allow", "sub": "out-alice", "tool": "get_customer"})
        check(by_id["out-2"], {"decision": "deny", "rule": "no-destructive"})
        check(by_id["out-3"], {"origin": "envoy", "status": 400})
        assert s.envoy.access_log.read_text() == ""
    finally:
        s.stop()


class Collector(harness.Process):
    """tests/peers/otel_collector.py: OTLP/gRPC logs in, one JSON line per log record out."""

    def __init__(self, workdir):
        self.port = harness.free_port()
        self.out = workdir / "otel.jsonl"
        self.out.touch()
        super().__init__([sys.executable, str(harness.PEERS / "otel_collector.py"),
                          "--port", str(self.port), "--out", str(self.out)],
                         workdir / "otel-collector.log")
        harness.wait_port(self.port, self.proc)


def test_otel_example_sends_records_to_a_collector(tmp_path):
    pytest.importorskip("grpc")
    collector = Collector(tmp_path)
    s = None
    try:
        s = AuditStack(tmp_path, template="audit-otel.yaml",
                       values={"OTEL_HOST": "127.0.0.1", "OTEL_PORT": collector.port})
        alice = s.token("otel-alice", groups=["sales"])
        assert send(s, "otel-1", tool_call("get_customer", {"customer_id": "c-100"}), token=alice).status_code == 200
        assert send(s, "otel-2", tool_call("delete_customer", {"customer_id": "c-1"}), token=alice).status_code == 200
        logs = read_records(collector.out, lambda r: True, 2)
        assert len(logs) == 2, collector.output()
        by_id = {}
        for log in logs:
            record = json.loads(log["body"])
            by_id[record["request_id"]] = (record, log)
        record, log = by_id["otel-1"]
        common(record)
        check(record, {"decision": "allow", "sub": "otel-alice", "tool": "get_customer"})
        assert log["attributes"]["mcp.decision"] == "allow"
        assert log["attributes"]["mcp.sub"] == "otel-alice"
        assert log["attributes"]["mcp.tool"] == "get_customer"
        assert log["attributes"]["http.response.status_code"] == "200"
        assert log["resource"]["service.name"] == "mcp-guard"
        record, log = by_id["otel-2"]
        assert log["attributes"]["mcp.decision"] == "deny"
        assert log["attributes"]["mcp.rule"] == "no-destructive"
        assert s.envoy.access_log.read_text() == ""
    finally:
        if s:
            s.stop()
        collector.stop()


# ---- the documented jq query ------------------------------------------------------------------------


def documented_jq():
    """The command under "Who called delete_customer last Tuesday" in docs/audit.md."""
    text = DOC.read_text()
    section = text[text.index("Who called delete_customer last Tuesday"):]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block
    return block.group(1).strip()


def last_tuesday(today):
    return today - datetime.timedelta(days=(today.weekday() - 1) % 7 or 7)


@pytest.mark.skipif(not shutil.which("jq"), reason="needs jq")
def test_documented_jq_answers_who_called_delete_customer_last_tuesday(stack, tmp_path):
    tag = f"jq-{uuid.uuid4().hex[:8]}"
    admin = stack.token(f"admin-{tag}", groups=["admins"], email=f"admin-{tag}@example.com")
    seller = stack.token(f"seller-{tag}", groups=["sales"])
    assert send(stack, f"{tag}-1", tool_call("delete_customer", {"customer_id": "c-200"}), token=admin).status_code == 200
    assert send(stack, f"{tag}-2", tool_call("delete_customer", {"customer_id": "c-100"}), token=seller).status_code == 200
    assert send(stack, f"{tag}-3", tool_call("get_customer", {"customer_id": "c-100"}), token=seller).status_code == 200
    real = records_for(stack, tag, 3)
    assert len(real) == 3

    # The date window: the command's `date` expression must mean what the question means.
    today = datetime.datetime.now(datetime.timezone.utc).date()
    tuesday = last_tuesday(today)
    shown = subprocess.run(["bash", "-c", "date -u -d 'last tuesday' +%F"], capture_output=True,
                           text=True, check=True).stdout.strip()
    assert shown == tuesday.isoformat()

    # A log with this module's real records (today), and the same records moved to last
    # Tuesday, to the Tuesday before and to the day after last Tuesday.
    def moved(record, day):
        return dict(record, ts=day.isoformat() + record["ts"][10:],
                    request_id=f"{record['request_id']}@{day.isoformat()}")

    week = datetime.timedelta(days=7)
    day = datetime.timedelta(days=1)
    log = tmp_path / "audit.log"
    lines = stack.envoy.access_log.read_text().splitlines()
    for when in (tuesday, tuesday - week, tuesday + day):
        if when != today:
            lines += [json.dumps(moved(r, when)) for r in real]
    log.write_text("\n".join(lines) + "\n")

    command = documented_jq()
    assert " audit.log" in command
    out = subprocess.run(["bash", "-c", command.replace(" audit.log", f" {log}")],
                         capture_output=True, text=True, check=True).stdout
    answers = [json.loads(line) for line in out.splitlines()]
    mine = [a for a in answers if tag in (a.get("sub") or "")]
    if tuesday == today:  # impossible: "last Tuesday" is never today
        pytest.fail("last Tuesday is today")
    assert [(a["who"], a["decision"], a["rule"]) for a in mine] == [
        (f"admin-{tag}@example.com", "allow", "admins-delete"),
        (f"seller-{tag}", "deny", "no-destructive"),
    ]
    assert all(a["ts"].startswith(tuesday.isoformat()) for a in answers)
    # And the same query for today finds the real records themselves.
    today_out = subprocess.run(
        ["bash", "-c", command.replace("$(date -u -d 'last tuesday' +%F)", today.isoformat())
         .replace(" audit.log", f" {stack.envoy.access_log}")],
        capture_output=True, text=True, check=True).stdout
    today_mine = [json.loads(l) for l in today_out.splitlines() if tag in l]
    assert [(a["sub"], a["decision"]) for a in today_mine] == [
        (f"admin-{tag}", "allow"), (f"seller-{tag}", "deny")]
