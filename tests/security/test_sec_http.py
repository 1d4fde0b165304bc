"""HTTP-level games: content types and encodings, path variants that might reach the upstream
around the filter's exact path match, and methods the MCP transport does not use."""

import gzip
import json

import pytest
from hostile import body_headers, call, forwarded, refused, send, upstream_header

BODY = json.dumps(call("get_customer", {"customer_id": "c-100"})[0])


def hdrs(token, **kw):
    return body_headers(token, method="tools/call", name="get_customer", **kw)


# ---- content type and encoding --------------------------------------------------------------------

@pytest.mark.parametrize("content_type", [
    "text/plain", None, "application/json-seq", "application/jsonx", "application/json+x",
    "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/json",
    "application/json, text/plain", "", "application/*",
])
def test_content_types_other_than_application_json_get_415(sec, alice, content_type):
    reply, _ = refused(sec, status=415, reason="unsupported_media_type", body=BODY,
                       headers=hdrs(alice, content_type=content_type))
    assert reply.json()["error"]["code"] == -32600


@pytest.mark.parametrize("content_type", ["Application/JSON; charset=utf-8", "application/json;charset=UTF-8",
                                          "APPLICATION/JSON", " application/json "])
def test_application_json_in_any_case_with_parameters_is_accepted(sec, alice, content_type):
    reply, _, upstream = forwarded(sec, body=BODY, headers=hdrs(alice, content_type=content_type))
    assert reply.status == 200 and b"Ada Lovelace" in reply.body
    assert upstream_header(upstream, "content-type") == [content_type.strip()]


@pytest.mark.parametrize("encoding", ["gzip", "GZIP", "deflate", "br", "identity, gzip", "x-gzip"])
def test_compressed_request_bodies_get_415(sec, alice, encoding):
    """The filter must read what the server will read: compressed bodies are refused."""
    reply, _ = refused(sec, status=415, reason="content_encoding", body=gzip.compress(BODY.encode()),
                       headers=hdrs(alice, extra=[("content-encoding", encoding)]))
    assert reply.json()["error"]["code"] == -32600


def test_identity_content_encoding_is_accepted(sec, alice):
    forwarded(sec, body=BODY, headers=hdrs(alice, extra=[("content-encoding", "identity")]))


def test_accept_encoding_is_removed_upstream(sec, alice):
    """Responses must stay inspectable (list filtering, key redaction): the upstream is never
    told it may compress."""
    reply, _, upstream = forwarded(sec, body=BODY, headers=hdrs(alice, extra=[
        ("accept-encoding", "gzip, br, zstd"), ("accept-encoding", "deflate")]))
    assert upstream_header(upstream, "accept-encoding") == []
    assert reply.header("content-encoding") is None and b"Ada Lovelace" in reply.body


# ---- method overrides ---------------------------------------------------------------------------------
# Express method-override, Rack, Symfony, Laravel, ASP.NET, OData and Google APIs read a header as
# the HTTP method (a POST the filter authorized could become a DELETE that ends the session);
# nginx auth_request and Traefik ForwardAuth conventions add x-original-method /
# x-forwarded-method. They are removed before the upstream, and a _method query parameter
# (Symfony, Laravel) is refused.

OVERRIDES = ["X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override", "X-Original-Method",
             "X-Forwarded-Method"]


def test_method_override_headers_never_reach_the_upstream(sec, alice):
    extra = [(name, "DELETE") for name in OVERRIDES] + [("x-http-method-override", "PUT")]
    reply, record, upstream = forwarded(sec, body=BODY, headers=hdrs(alice, extra=extra))
    assert reply.status == 200 and b"Ada Lovelace" in reply.body
    assert upstream["method"] == "POST"
    for name in OVERRIDES:
        assert upstream_header(upstream, name.lower()) == [], name
    assert record["tool"] == "get_customer"


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_method_override_headers_are_removed_from_get_and_delete_too(sec, alice, method):
    extra = [("accept", "application/json, text/event-stream"), ("mcp-protocol-version", "2025-06-18"),
             ("authorization", f"Bearer {alice}")] + [(name, "POST") for name in OVERRIDES]
    before = len(sec.upstream_requests())
    reply, tag = send(sec, method=method, headers=extra)
    seen = sec.upstream_requests()[before:]
    assert len(seen) == 1, (reply, seen)
    assert seen[0]["method"] == method
    for name in OVERRIDES:
        assert upstream_header(seen[0], name.lower()) == [], name


@pytest.mark.parametrize("query", ["_method=DELETE", "x=1&_METHOD=delete", "%5Fmethod=DELETE", ".method=PUT"])
def test_a_method_override_query_parameter_is_refused(sec, alice, query):
    reply, _ = refused(sec, status=400, code=-32600, reason="method_override", path=f"/mcp?{query}",
                       body=BODY, headers=hdrs(alice))
    assert "_method" in reply.json()["error"]["message"]


# ---- path variants ------------------------------------------------------------------------------------
# Envoy normalizes first (normalize_path, merge_slashes, path_with_escaped_slashes_action:
# REJECT_REQUEST), then the filter matches the path exactly: whatever Envoy turns into "/mcp" is
# authenticated like "/mcp"; everything else is 404 from the filter or 400 from Envoy. No variant
# reaches the upstream without a token.

PATHS = [
    ("/mcp/", 404, "unknown_path"),
    ("/mcp/.", 404, "unknown_path"),
    ("/MCP", 404, "unknown_path"),
    ("/Mcp", 404, "unknown_path"),
    ("/mcp;x", 404, "unknown_path"),
    ("/mcp%3B", 404, "unknown_path"),
    ("/mcp%20", 404, "unknown_path"),
    ("/mcp.json", 404, "unknown_path"),
    ("/mcp/sse", 404, "unknown_path"),
    ("/", 404, "unknown_path"),
    ("/admin", 404, "unknown_path"),
    ("//mcp", 401, "missing_token"),
    ("///mcp", 401, "missing_token"),
    ("/./mcp", 401, "missing_token"),
    ("/a/../mcp", 401, "missing_token"),
    ("/%2e/mcp", 401, "missing_token"),
    ("/%6Dcp", 401, "missing_token"),
    ("/%6d%63%70", 401, "missing_token"),
    ("/mcp?x=1", 401, "missing_token"),
    ("http://evil.example/mcp", 401, "missing_token"),
    ("/.well-known/oauth-protected-resource/../../mcp", 401, "missing_token"),
    ("/mcp%2F", 400, "path_normalization_failed"),
    ("/mcp%2f", 400, "path_normalization_failed"),
    ("/%2Fmcp", 400, "path_normalization_failed"),
    ("/mcp%5C", 400, "path_normalization_failed"),
    ("/mcp%00", 400, "path_normalization_failed"),
    ("/..%2Fmcp", 400, "path_normalization_failed"),
]


@pytest.mark.parametrize("path,status,reason", PATHS, ids=[p[0] for p in PATHS])
@pytest.mark.parametrize("method", ["POST", "GET", "DELETE"])
def test_path_variants_never_reach_the_upstream_unauthenticated(sec, path, status, reason, method):
    """404 from the filter, 401 once Envoy normalized the path to /mcp, or 400 from Envoy itself
    (escaped slashes, backslashes and NUL are rejected before any filter runs: Envoy's access log
    writes that audit record)."""
    body = BODY if method == "POST" else b""
    by_envoy = reason == "path_normalization_failed"
    reply, _ = refused(sec, status=status, reason=reason, method=method, path=path, body=body,
                       headers=hdrs(None), origin="envoy" if by_envoy else None)
    if status == 401:
        meta = f"http://127.0.0.1:{sec.port}/.well-known/oauth-protected-resource/mcp"
        assert reply.header("www-authenticate") == f'Bearer resource_metadata="{meta}"'
    else:
        assert reply.header("www-authenticate") is None


@pytest.mark.parametrize("path", ["/mcp/", "/MCP", "/mcp;x", "/admin", "/"])
def test_a_valid_token_does_not_open_other_upstream_paths(sec, alice, path):
    refused(sec, status=404, reason="unknown_path", path=path, body=BODY, headers=hdrs(alice))


@pytest.mark.parametrize("path", ["//mcp", "/./mcp", "/%6Dcp", "/a/../mcp"])
def test_normalized_variants_reach_the_upstream_as_the_path_the_filter_checked(sec, alice, path):
    _, record, upstream = forwarded(sec, path=path, body=BODY, headers=hdrs(alice))
    assert upstream["path"] == "/mcp"
    assert record["rule"] == "read-only-tools"


# ---- methods --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["PUT", "PATCH", "OPTIONS", "TRACE", "HEAD", "PROPFIND"])
def test_methods_the_transport_does_not_use_get_405(sec, alice, method):
    body = BODY if method in ("PUT", "PATCH", "PROPFIND") else b""
    reply, _ = refused(sec, status=405, reason="method_not_allowed", method=method, body=body,
                       headers=hdrs(alice))
    assert reply.header("allow") == "GET, POST, DELETE"


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
def test_unauthenticated_unexpected_methods_get_401_first(sec, method):
    refused(sec, status=401, reason="missing_token", method=method, body=BODY, headers=hdrs(None))


# ---- bodies where none belongs, framing ----------------------------------------------------------------

DELETE_CALL = json.dumps(call("delete_customer", {"customer_id": "c-100"})[0])


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_get_and_delete_with_a_body_get_400(sec, alice, method):
    """A body on a GET or DELETE is never decided on, so it is refused before anything (even
    the headers) reaches the upstream — an upstream that read JSON-RPC from it would otherwise
    execute an unchecked call. (Before the fix such requests hung with the body paused.)"""
    reply, _ = refused(sec, status=400, reason="body_not_allowed", method=method, body=DELETE_CALL,
                       headers=hdrs(alice))
    assert reply.json()["error"] == "invalid_request"


def test_get_with_an_empty_body_is_a_get(sec, alice):
    """The control: Content-Length: 0 (or an empty final DATA frame) is no body."""
    reply, record, upstream = forwarded(sec, method="GET", headers=[
        ("accept", "text/event-stream"), ("authorization", f"Bearer {alice}"), ("content-length", "0")])
    assert upstream["method"] == "GET" and record["http_method"] == "GET"


@pytest.mark.parametrize("framing,status,decision,reason", [
    ([("transfer-encoding", "chunked"), ("content-length", "5")], 400, "deny",
     "http1.content_length_and_chunked_not_allowed"),
    ([("transfer-encoding", "gzip, chunked")], 501, "error", "http1.invalid_transfer_encoding"),
    ([("transfer-encoding", "chunked, chunked")], 501, "error", "http1.invalid_transfer_encoding"),
], ids=["te_and_cl", "te_gzip", "te_twice"])
def test_ambiguous_framing_is_refused_by_envoy(sec, alice, framing, status, decision, reason):
    """Request smuggling needs two parsers to disagree on where a body ends; Envoy's codec refuses
    the ambiguous framings before any filter. Envoy's access log audits them (no request id is
    parsed that far: the record is the one from this request's client address)."""
    refused(sec, status=status, decision=decision, reason=reason, origin="envoy",
            body=b"5\r\nhello\r\n0\r\n\r\n", headers=hdrs(alice) + framing)


def test_header_values_cannot_forge_audit_lines(sec, alice):
    """Client-controlled header values copied into the record (here MCP-Protocol-Version) with
    quotes, a JSON fragment and U+2028 stay inside one JSON string on one line."""
    hostile = '2026-07-28"}\u2028{"decision":"allow","sub":"admin'
    h = [(k, v) for k, v in body_headers(alice, method="tools/call", name="delete_customer")
         if k != "mcp-protocol-version"]
    h.append(("mcp-protocol-version", hostile.encode("utf-8")))
    # The header disagrees with the body's `_meta` version: refused before policy (-32020).
    reply, record = refused(sec, status=400, code=-32020, reason=lambda r: "does not match" in r,
                            body=DELETE_CALL, headers=h)
    assert record["protocol_version"] == hostile and record["sub"] == "alice"
    text = sec.envoy.access_log.read_bytes()
    assert "\u2028".encode() not in text
    lines = [json.loads(line) for line in text.decode().split("\n") if line]  # every line is JSON
    mine = [r for r in lines if r.get("source") == record["source"] and r.get("ts") == record["ts"]]
    assert len(mine) == 1
    assert not any(r.get("sub") == "admin" for r in lines)


# ---- identity headers a client might forge ------------------------------------------------------------

def test_the_audited_source_is_the_peer_not_x_forwarded_for(sec, alice):
    """Policy (`source.address`) and audit use the TCP peer Envoy saw, never a client header."""
    _, record, upstream = forwarded(sec, body=BODY, headers=hdrs(alice, extra=[
        ("x-forwarded-for", "10.9.8.7"), ("x-real-ip", "10.9.8.7"), ("forwarded", "for=10.9.8.7")]))
    assert record["source"].startswith("127.0.0.1:")


@pytest.fixture(scope="module")
def claims_stack(tmp_path_factory):
    from hostile import SecStack
    s = SecStack(tmp_path_factory.mktemp("claims"),
                 server={"forward_claims": {"email": "x-mcp-user", "groups": "x-mcp-groups"}})
    yield s
    s.stop()


def test_forged_claim_headers_are_replaced_or_removed(claims_stack):
    """The upstream may trust x-mcp-user / x-mcp-groups because only the filter sets them: a
    client's copies are stripped, and a claim the token lacks leaves no header at all."""
    s = claims_stack
    forged = [("x-mcp-user", "admin@corp.example"), ("X-MCP-Groups", '["admins"]'),
              ("x-api-key", "client-forged-key-0001")]
    with_email = s.token("dora", groups=["sales"], email="dora@corp.example")
    _, _, upstream = forwarded(s, body=BODY, headers=hdrs(with_email, extra=forged))
    assert upstream_header(upstream, "x-mcp-user") == ["dora@corp.example"]
    assert upstream_header(upstream, "x-mcp-groups") == ['["sales"]']
    assert upstream_header(upstream, "x-api-key") == [s.config["servers"][0]["credential"]["value"]]
    without = s.token("eve", groups=["sales"])  # no email claim
    _, _, upstream = forwarded(s, body=BODY, headers=hdrs(without, extra=forged))
    assert upstream_header(upstream, "x-mcp-user") == []


# ---- path overrides -------------------------------------------------------------------------------
# IIS URL Rewrite and older Symfony/Zend take x-original-url / x-rewrite-url for the path; nginx
# auth_request and Traefik ForwardAuth setups add x-original-uri / x-forwarded-uri; Spring and
# ASP.NET take x-forwarded-prefix for the path base. The filter decided on /mcp.

PATH_OVERRIDES = ["X-Original-URL", "X-Rewrite-URL", "X-Original-URI", "X-Forwarded-URI",
                  "X-Forwarded-Prefix"]


def test_path_override_headers_never_reach_the_upstream(sec, alice):
    extra = [(name, "/admin/delete_all") for name in PATH_OVERRIDES]
    reply, record, upstream = forwarded(sec, body=BODY, headers=hdrs(alice, extra=extra))
    assert reply.status == 200 and b"Ada Lovelace" in reply.body
    assert upstream["path"] == "/mcp"
    for name in PATH_OVERRIDES:
        assert upstream_header(upstream, name.lower()) == [], name



# Forwarding headers Envoy does not rewrite: a framework that trusts its proxy (Express `trust
# proxy`, uvicorn --forwarded-allow-ips, Spring's ForwardedHeaderFilter) takes them for the
# caller's address or the host it was called by. Envoy is the edge here, so from a client they
# are forged; X-Forwarded-For is Envoy's: it appends the peer it saw (rightmost).
FORWARDING = [("Forwarded", "for=10.0.0.1;host=admin.internal;proto=https"),
              ("X-Forwarded-Host", "admin.internal"), ("X-Real-IP", "10.0.0.1")]


def test_forged_forwarding_headers_never_reach_the_upstream(sec, alice):
    extra = FORWARDING + [("X-Forwarded-For", "10.0.0.1")]
    reply, record, upstream = forwarded(sec, body=BODY, headers=hdrs(alice, extra=extra))
    assert reply.status == 200 and b"Ada Lovelace" in reply.body
    for name, _ in FORWARDING:
        assert upstream_header(upstream, name.lower()) == [], name
    # Envoy appends the peer (for a loopback peer, its own local address) after the client's.
    [xff] = upstream_header(upstream, "x-forwarded-for")
    assert xff.replace(" ", "").split(",")[0] == "10.0.0.1" and xff.count(",") == 1, xff

# ---- Envoy's own request headers --------------------------------------------------------------------
# Envoy's router retries, hedges and re-times a request as x-envoy-retry-on, x-envoy-max-retries,
# x-envoy-upstream-rq-timeout-ms… say, when they come from a client it counts as internal
# (`internal_address_config`; on Envoy 1.40 no address is internal unless listed, so the shipped
# templates strip them before the filter). A deployment that lists its clients' network (a pod
# or VPC range) lets them through: one allowed tools/call would run several times for one
# decision, one audit record and one rate-limit hit. The filter removes them whatever Envoy
# decided.

INTERNAL = "          internal_address_config: { cidr_ranges: [{ address_prefix: 127.0.0.0, prefix_len: 8 }] }\n"


@pytest.fixture(scope="module")
def internal(tmp_path_factory):
    """The shipped template with loopback clients counted as internal, in front of an upstream
    that answers the first tools/call of each request id 503, every later one 200."""
    import harness
    from hostile import SecStack
    workdir = tmp_path_factory.mktemp("internal")
    text = (harness.ROOT / "envoy" / "mcp-guard.yaml").read_text()
    anchor = "          use_remote_address: true\n"
    assert text.count(anchor) == 1
    template = workdir / "internal.yaml"
    template.write_text(text.replace(anchor, anchor + INTERNAL))
    tried = set()

    def answer(request):
        if (request["json"] or {}).get("method") != "tools/call":
            return harness.Answer(404)
        rid = dict(request["headers"]).get("x-request-id")
        if rid not in tried:
            tried.add(rid)
            return harness.Answer(503, [("content-type", "text/plain")], b"busy")
        return harness.Answer(200, [("content-type", "application/json")], json.dumps(
            {"jsonrpc": "2.0", "id": 1,
             "result": {"content": [{"type": "text", "text": "done"}], "isError": False}}))

    s = SecStack(workdir, upstream=harness.ScriptedUpstream(answer), template=str(template))
    yield s
    s.stop()


@pytest.mark.parametrize("retry", [
    [("x-envoy-retry-on", "5xx"), ("x-envoy-max-retries", "3")],
    [("X-Envoy-Retry-On", "retriable-status-codes"), ("x-envoy-retriable-status-codes", "503")],
    [("x-envoy-retry-on", "gateway-error,reset"), ("x-envoy-hedge-on-per-try-timeout", "true"),
     ("x-envoy-upstream-rq-per-try-timeout-ms", "1")],
], ids=["5xx", "status_codes", "hedged"])
def test_a_client_cannot_make_envoy_retry_an_allowed_call(internal, retry):
    from hostile import wait_record
    alice = internal.token("alice", groups=["sales"])
    before = len(internal.upstream_requests())
    reply, tag = send(internal, body=BODY, headers=hdrs(alice, extra=retry))
    records = wait_record(internal, tag)
    seen = internal.upstream_requests()[before:]
    assert len(seen) == 1, f"the upstream ran the call {len(seen)} times for one decision"
    assert reply.status == 503, reply
    assert len(records) == 1 and records[0]["decision"] == "allow", records


def test_no_client_x_envoy_header_reaches_the_upstream(internal):
    alice = internal.token("alice", groups=["sales"])
    sent = [("x-envoy-original-path", "/admin"), ("x-envoy-internal", "true"),
            ("x-envoy-upstream-alt-stat-name", "forged"), ("x-envoy-force-trace", "1"),
            ("x-envoy-downstream-service-cluster", "billing"), ("x-envoy-ip-tags", "trusted"),
            ("x-envoy-upstream-rq-timeout-ms", "60000")]
    before = len(internal.upstream_requests())
    send(internal, body=BODY, headers=hdrs(alice, extra=sent))
    seen = internal.upstream_requests()[before:]
    assert len(seen) == 1, seen
    assert [(k, v) for k, v in seen[0]["headers"] if k.startswith("x-envoy-")] == []
