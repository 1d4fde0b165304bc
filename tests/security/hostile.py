"""What the hostile-input tests share: a stack with two trusted issuers, raw HTTP requests (bytes
and paths exactly as given, no client-side normalization), and `refused()`, which checks the
exact outcome of an attack: HTTP status, JSON-RPC code, the audit record written for that very
request (matched by x-request-id), and that nothing reached the upstream."""

import http.client
import json
import re
import time
import uuid

import harness
import keys
from stack import ISSUER, PROTOCOL, Stack, modern

PARTNER = "https://partner.example"
# The stacks' max_body_bytes: small enough that the filter's own limit, not Envoy's 1 MiB
# buffer limit, is met first.
MAX_BODY = 256 * 1024
ACCEPT = "application/json, text/event-stream"


class SecStack(Stack):
    """Envoy + mcp-guard (demo policy) + the demo MCP server, trusting two issuers: the demo IdP
    and a partner IdP with keys of its own (for kid confusion across issuers)."""

    def __init__(self, workdir, *, json_response=False, policy="policies/demo.yaml",
                 values=None, options=None, server=None, upstream=None, template="mcp-guard.yaml",
                 algs=("RS256", "ES256"), **config):
        """`upstream`: another upstream than the demo MCP server (e.g. a
        `harness.ScriptedUpstream`); `template`: an Envoy template (a path outside envoy/ too);
        `algs`: the demo issuer's algorithms, one key each."""
        self.port = harness.free_port()
        self.resource = f"http://127.0.0.1:{self.port}/mcp"
        # The demo issuer: one key per algorithm in `algs`, each allowed.
        self.issuer = keys.Issuer(ISSUER, self.resource, algs=algs)
        self.partner = keys.Issuer(PARTNER, self.resource, algs=("RS256", "ES256"))
        self.server = upstream or harness.McpServer(workdir, json_response=json_response)
        issuers = [
            {"issuer": ISSUER, "audiences": [self.resource], "algorithms": list(algs),
             "jwks": self.issuer.jwks()},
            {"issuer": PARTNER, "audiences": [self.resource], "algorithms": ["RS256", "ES256"],
             "jwks": self.partner.jwks()},
        ]
        self.config = harness.plugin_config(issuers, harness.load_policy(harness.ROOT / policy),
                                            self.resource, **config)
        self.config["servers"][0].update(server or {})  # per-server options, e.g. key_leak
        self.minted = []
        try:
            # Audit lines reach the file within 50 ms (Envoy's default is 10 s).
            self.envoy = harness.EnvoyWithArgs(
                workdir, self.config, self.server.port, port=self.port, values=values,
                template=template,
                options={"--file-flush-interval-msec": 50, **(options or {})})
        except Exception:
            self.server.stop()
            raise

    def token(self, sub, **kw):
        """A valid token of the demo issuer (remembered, so leak checks can look for it)."""
        t = self.issuer.token(sub, **kw)
        self.minted.append(t)
        return t

    def remember(self, token):
        self.minted.append(token)
        return token


class Reply:
    def __init__(self, status, headers, body, local_port=None):
        self.status = status
        self.headers = headers
        self.body = body
        self.local_port = local_port

    def header(self, name):
        return next((v for k, v in self.headers if k.lower() == name), None)

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<Reply {self.status} {self.body[:300]!r}>"


def raw(port, method, path, body=b"", headers=(), timeout=10.0):
    """One HTTP/1.1 request on a fresh connection, path and headers sent verbatim (repeated
    names stay repeated). A Content-Length is added when a body is given and none is."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        names = {k.lower() for k, _ in headers}
        if "host" not in names:
            conn.putheader("host", f"127.0.0.1:{port}")
        for k, v in headers:
            conn.putheader(k, v)
        if body and "content-length" not in names and "transfer-encoding" not in names:
            conn.putheader("content-length", str(len(body)))
        conn.endheaders(body if body else None)
        local_port = conn.sock.getsockname()[1]
        resp = conn.getresponse()
        return Reply(resp.status, resp.getheaders(), resp.read(), local_port)
    finally:
        conn.close()


def request_id():
    # Not 36 characters: Envoy rewrites one character of a UUID-long request id (it packs the
    # trace decision into it), and the audit record would name another id than the one sent.
    return f"sec-{uuid.uuid4().hex}-r"


def body_headers(token=None, *, method=None, name=None, protocol=PROTOCOL,
                 content_type="application/json", extra=()):
    """The headers of a 2026-07-28 POST (Mcp-Method / Mcp-Name when given)."""
    h = [("accept", ACCEPT)]
    if content_type is not None:
        h.append(("content-type", content_type))
    if protocol:
        h.append(("mcp-protocol-version", protocol))
    if method:
        h.append(("mcp-method", method))
    if name:
        h.append(("mcp-name", name))
    if token:
        h.append(("authorization", f"Bearer {token}"))
    return h + list(extra)


def call(name, arguments=None, id=1, method="tools/call"):
    """A tools/call message with the 2026-07-28 envelope, and its Mcp-* headers."""
    body, envelope = modern({"jsonrpc": "2.0", "id": id, "method": method,
                             "params": {"name": name, "arguments": arguments or {}}})
    return body, envelope


def audit(stack):
    """The audit records on disk, leaving out a last line Envoy is still writing."""
    text = stack.envoy.access_log.read_text()
    complete = text[:text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


class Tag:
    """What identifies one request's audit records: the x-request-id it sent, or else the
    client port of its connection (every raw request has a connection of its own). The port
    keeps matching when Envoy does not trust client request ids (use_remote_address: true)."""

    def __init__(self, request_id, port=None):
        self.request_id = request_id
        self.source = f"127.0.0.1:{port}" if port else None

    def matches(self, record):
        # A record that carries one of these tests' ids is this request's only if the id is
        # its own: the kernel reuses client ports, so an earlier request's record may name the
        # same port.
        rid = record.get("request_id") or ""
        if rid == self.request_id or rid.startswith("sec-"):
            return rid == self.request_id
        return self.source is not None and record.get("source") == self.source


def wait_record(stack, tag, timeout=10.0):
    """The audit records written for one request (a `Tag`, or an x-request-id)."""
    if not isinstance(tag, Tag):
        tag = Tag(tag)
    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in audit(stack) if tag.matches(r)]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def send(stack, method="POST", path="/mcp", body=b"", headers=(), rid=None):
    """A raw request to the stack's Envoy, tagged with an x-request-id: (reply, Tag)."""
    rid = rid or request_id()
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    elif isinstance(body, str):
        body = body.encode()
    reply = raw(stack.port, method, path, body, [("x-request-id", rid), *headers])
    return reply, Tag(rid, reply.local_port)


def refused(stack, *, status, reason, code=None, decision="deny", method="POST", path="/mcp",
            body=b"", headers=(), audited=True, origin=None, detail=None):
    """Sends one hostile request and checks its exact outcome:

    - the HTTP `status`, and the JSON-RPC error `code` when one is expected;
    - nothing reached the upstream;
    - one audit record for this request, with `decision` and `reason` (`reason` may be a
      callable predicate on the record's `detail`, the prose, for refusals that carry a parser
      message; `reason` is then checked to be a stable code) and the same status, written
      by the filter — or, with `origin="envoy"`, by Envoy's access log for requests refused
      before the filter could write one (envoy/mcp-guard.yaml).

    Returns (reply, record)."""
    before = len(stack.upstream_requests())
    reply, rid = send(stack, method, path, body, headers)
    assert reply.status == status, reply
    if code is not None:
        error = reply.json()["error"]
        assert error["code"] == code, reply
    records = wait_record(stack, rid) if audited else []
    assert len(stack.upstream_requests()) == before, "the request reached the upstream"
    if not audited:
        return reply, None
    assert len(records) == 1, records
    record = records[0]
    assert record["decision"] == decision, record
    if callable(reason):
        # The prose is the record's `detail`; `reason` is its stable code.
        assert re.fullmatch(r"[a-z][a-z0-9_]*", record.get("reason") or ""), record
        assert reason(record.get("detail") or ""), record
    else:
        assert record.get("reason") == reason, record
    if detail is not None:
        assert record.get("detail") == detail, record
    assert record.get("status") == status, record
    assert record.get("origin") == origin, record
    if code is not None and origin is None:
        assert record.get("error_code") == code, record
    return reply, record


def forwarded(stack, *, body=b"", headers=(), method="POST", path="/mcp"):
    """Sends one request that must be allowed: returns (reply, record, upstream requests)."""
    before = len(stack.upstream_requests())
    reply, tag = send(stack, method, path, body, headers)
    records = wait_record(stack, tag)
    seen = stack.upstream_requests()[before:]
    assert records and records[0]["decision"] == "allow", (reply, records)
    assert len(seen) == 1, seen
    return reply, records[0], seen[0]


def upstream_header(request, name):
    return [v for k, v in request["headers"] if k.lower() == name]
