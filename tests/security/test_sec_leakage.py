"""Leakage: the service key the filter adds upstream never comes back to the client, and neither
bearer tokens nor the key are ever written to the audit trail or Envoy's log."""

import base64
import http.client
import json
import re
import string
import uuid

import harness
import keys
import pytest
import yaml
from hostile import SecStack, body_headers, call, forwarded, raw, send, wait_record

KEY = harness.SERVICE_KEY
KEY_FORMS = [KEY, base64.b64encode(KEY.encode()).decode(), base64.urlsafe_b64encode(KEY.encode()).decode().rstrip("=")]


def b64(text, urlsafe=False, pad=True):
    encoded = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(text.encode()).decode()
    return encoded if pad else encoded.rstrip("=")


# The key inside HTTP Basic credentials: base64 at byte offsets 1 and 2 (and 0), both alphabets.
BASIC = [f"Basic {b64('svc:' + KEY)}", f"Basic {b64('user:' + KEY)}", f"Basic {b64('gateway:' + KEY + ':x')}",
         f"Basic {b64('svc:' + KEY, urlsafe=True, pad=False)}", f"Basic {b64('ab' + KEY, urlsafe=True)}"]
BASIC_IDS = ["offset1", "offset2", "offset0_suffix", "offset1_urlsafe_unpadded", "offset2_urlsafe"]


def key_revealed(text):
    """Whether `text` holds the key, raw or base64-decodable from any of its base64 runs at any
    alignment (what a reader of the response could recover)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if KEY in text:
        return True
    for run in re.findall(r"[A-Za-z0-9+/_-]{8,}", text):
        run = run.replace("-", "+").replace("_", "/")
        for skip in range(4):
            chunk = run[skip:]
            chunk += "A" * (-len(chunk) % 4)
            try:
                if KEY.encode() in base64.b64decode(chunk):
                    return True
            except ValueError:
                pass
            # The key's first/last bytes may share a character with their neighbours: look for
            # its middle.
            try:
                if KEY[1:-1].encode() in base64.b64decode(chunk):
                    return True
            except ValueError:
                pass
    return False


def sse_echo(request):
    """An upstream that answers every tools/call of echo in an event stream, the text echoed."""
    message = request["json"] or {}
    if message.get("method") != "tools/call":
        return harness.Answer(405)
    text = message["params"]["arguments"]["text"]
    return harness.Answer.events({"jsonrpc": "2.0", "id": message["id"], "result": {
        "content": [{"type": "text", "text": text}], "isError": False}})


@pytest.fixture(scope="module")
def sse_stack(tmp_path_factory):
    """The demo policy in front of an upstream that answers in SSE (the demo server answers
    2026-07-28 requests in JSON)."""
    upstream = harness.ScriptedUpstream(sse_echo)
    s = SecStack(tmp_path_factory.mktemp("sse"), upstream=upstream)
    yield s
    s.stop()


def echo(text, id=1):
    body, _ = call("echo", {"text": text}, id=id)
    return json.dumps(body)


def hdrs(token):
    return body_headers(token, method="tools/call", name="echo")


def key_leaks_redacted(stack):
    for line in stack.envoy.stats().splitlines():
        if line.startswith("wasmcustom.mcp_guard.key_leaks_redacted:"):
            return int(line.split(":")[1])
    return 0


ECHOES = [KEY, f"prefix-{KEY}-suffix", f"{KEY}{KEY}", KEY_FORMS[1], KEY_FORMS[2], f"Bearer {KEY}", *BASIC]
ECHO_IDS = ["raw", "embedded", "twice", "base64", "base64url", "bearer", *BASIC_IDS]


@pytest.mark.parametrize("text", ECHOES, ids=ECHO_IDS)
def test_an_echoed_service_key_is_redacted_from_an_event_stream(sse_stack, text):
    alice = sse_stack.token("alice", groups=["sales"])
    assert key_revealed(text)  # the check below can fail
    before = key_leaks_redacted(sse_stack)
    reply, record, _ = forwarded(sse_stack, body=echo(text), headers=hdrs(alice))
    assert reply.status == 200 and reply.header("content-type") == "text/event-stream"
    assert b"[REDACTED]" in reply.body and not key_revealed(reply.body), reply.body
    [line] = [line for line in reply.body.decode().splitlines() if line.startswith("data: ")]
    json.loads(line[6:])  # still one JSON message
    assert key_leaks_redacted(sse_stack) > before


@pytest.fixture(scope="module")
def json_stack(tmp_path_factory):
    s = SecStack(tmp_path_factory.mktemp("json"), json_response=True)
    yield s
    s.stop()


@pytest.mark.parametrize("text", ECHOES, ids=ECHO_IDS)
def test_an_echoed_service_key_is_redacted_from_a_json_response(json_stack, text):
    alice = json_stack.token("alice", groups=["sales"])
    reply, _, _ = forwarded(json_stack, body=echo(text), headers=hdrs(alice))
    assert reply.status == 200 and reply.header("content-type").startswith("application/json")
    assert not key_revealed(reply.body) and b"[REDACTED]" in reply.body, reply.body
    reply.json()  # still valid JSON after the rewrite


# Keys with characters JSON encoders escape beyond what they must, as those encoders spell them
# in a server's answer: Gson (`=`, `'` and `<>&` as lower-case \u escapes), .NET (`+` and more,
# upper case), and `+` in lower case.
SPELLED = [
    ("c2VjcmV0LWtleS0xMjM0NTY3OA==", "c2VjcmV0LWtleS0xMjM0NTY3OA\\u003d\\u003d"),
    ("svc-key-it's-0001<&>", "svc-key-it\\u0027s-0001\\u003c\\u0026\\u003e"),
    ("sk+live+key+0001", "sk\\u002Blive\\u002Bkey\\u002B0001"),
    ("sk+live+key+0001", "sk\\u002blive\\u002bkey\\u002b0001"),
]


@pytest.mark.parametrize("key,spelled", SPELLED, ids=["gson_padding", "gson_quote", "dotnet_plus", "lower_plus"])
def test_a_key_as_other_json_encoders_spell_it_is_redacted(tmp_path, key, spelled):
    """A server whose JSON encoder escapes more than it must (Gson, .NET) echoes the key it was
    given: a JSON client decodes the escapes, so the filter finds the key spelled so."""
    body = '{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"%s"}],"isError":false}}' % spelled
    assert json.loads(body)["result"]["content"][0]["text"] == key  # what a client would read

    def answer(request):
        if (request["json"] or {}).get("method") != "tools/call":
            return harness.Answer(405)
        assert [v for k, v in request["headers"] if k.lower() == "x-api-key"] == [key]
        return harness.Answer(200, [("content-type", "application/json")], body.encode())

    s = SecStack(tmp_path, server={"credential": {"header": "x-api-key", "value": key}},
                 upstream=harness.ScriptedUpstream(answer))
    try:
        alice = s.token("alice", groups=["sales"])
        reply, _, _ = forwarded(s, body=echo("hello"), headers=hdrs(alice))
        assert reply.status == 200, reply.body
        text = reply.json()["result"]["content"][0]["text"]
        assert key not in text and "[REDACTED]" in text, text
    finally:
        s.stop()


def test_a_rewritten_json_answer_says_its_new_length_and_the_connection_goes_on(tmp_path):
    """A JSON answer is held whole with its headers: when the key is redacted from it, its
    Content-Length is set to the rewritten body's (a stale one would cut the body, or leave its
    rest on the keep-alive connection to be read as the next answer). The next request on the
    same connection gets its own answer."""
    def answer(request):
        message = request["json"] or {}
        if message.get("method") != "tools/call":
            return harness.Answer(405)
        text = message["params"]["arguments"]["text"]
        body = json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": {
            "content": [{"type": "text", "text": text}], "isError": False}}).encode()
        # The upstream says its length (harness.Answer adds Content-Length).
        return harness.Answer(200, [("content-type", "application/json")], body)

    s = SecStack(tmp_path, upstream=harness.ScriptedUpstream(answer))
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
    try:
        alice = s.token("alice", groups=["sales"])
        for id, text, redacted in [(1, f"key={KEY}", True), (2, "plain", False), (3, KEY * 3, True)]:
            conn.request("POST", "/mcp", body=echo(text, id=id), headers=dict(hdrs(alice)))
            reply = conn.getresponse()
            body = reply.read()
            assert reply.status == 200, body
            assert reply.getheader("content-length") == str(len(body)), reply.getheaders()
            message = json.loads(body)
            assert message["id"] == id
            text_out = message["result"]["content"][0]["text"]
            assert ("[REDACTED]" in text_out) == redacted and KEY not in text_out, text_out
    finally:
        conn.close()
        s.stop()


@pytest.fixture(scope="module")
def blocking(tmp_path_factory):
    s = SecStack(tmp_path_factory.mktemp("block"), json_response=True, server={"key_leak": "block"})
    yield s
    s.stop()


def test_key_leak_block_answers_502_and_audits_an_error(blocking):
    """With key_leak: block, a JSON response carrying the key is replaced by a 502."""
    alice = blocking.token("alice", groups=["sales"])
    reply, rid = send(blocking, body=echo(KEY), headers=hdrs(alice))
    assert reply.status == 502 and KEY.encode() not in reply.body
    records = wait_record(blocking, rid)
    assert records and records[-1]["decision"] == "error"
    assert records[-1]["reason"] == "service_key_in_response"
    assert records[-1]["detail"] == "response carried the service key"


@pytest.mark.parametrize("text", [KEY, BASIC[0]], ids=["raw", "basic_offset1"])
def test_key_leak_block_cuts_an_event_stream(tmp_path, text):
    """The stream's headers (200) went downstream already: the stream is cut at the event that
    carries the key, which never arrives."""
    s = SecStack(tmp_path, server={"key_leak": "block"}, upstream=harness.ScriptedUpstream(sse_echo))
    try:
        alice = s.token("alice", groups=["sales"])
        # Not 36 characters: Envoy would take it for a UUID and rewrite a digit (trace status).
        rid = f"cut-{uuid.uuid4().hex[:20]}"
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
        data = echo(text).encode()
        conn.putrequest("POST", "/mcp", skip_accept_encoding=True)
        for k, v in hdrs(alice) + [("x-request-id", rid), ("content-length", str(len(data)))]:
            conn.putheader(k, v)
        conn.endheaders(data)
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("content-type") == "text/event-stream"
        with pytest.raises(http.client.IncompleteRead) as cut:
            resp.read()
        assert cut.value.partial == b""
        conn.close()
        [record] = wait_record(s, rid)
        assert record["decision"] == "error" and record["tool"] == "echo", record
        assert record["reason"] == "service_key_in_response"
        assert record["detail"] == "response carried the service key"
    finally:
        s.stop()


def test_a_key_echoed_in_a_response_header_is_redacted(tmp_path):
    """An upstream that copies the key it received into a response header."""
    upstream = harness.Upstream(tmp_path, "echoing", expect_keys=[KEY], echo_key_header="x-echo-key")
    port = harness.free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    issuer = keys.Issuer("https://idp.example", resource)
    config = harness.plugin_config([{"issuer": issuer.issuer, "audiences": [resource], "jwks": issuer.jwks()}],
                                   harness.load_policy(harness.ROOT / "policies" / "demo.yaml"), resource)
    envoy = harness.EnvoyWithArgs(tmp_path, config, upstream.port, port=port,
                                  options={"--file-flush-interval-msec": 50})
    try:
        token = issuer.token("alice", groups=["sales"])
        reply = raw(port, "POST", "/mcp", echo("hi").encode(), hdrs(token))
        assert reply.status == 200
        assert reply.header("x-echo-key") == "[REDACTED]"
        assert all(KEY not in v for _, v in reply.headers)
    finally:
        envoy.stop()
        upstream.stop()


@pytest.mark.parametrize("value", BASIC, ids=BASIC_IDS)
def test_a_basic_credential_echoed_in_a_response_header_is_redacted(tmp_path, value):
    """An upstream that sends the key back inside Basic credentials, at any byte offset."""
    def answer(request):
        a = sse_echo(request)
        a.headers.append(("x-upstream-auth", value))
        return a
    s = SecStack(tmp_path, upstream=harness.ScriptedUpstream(answer))
    try:
        alice = s.token("alice", groups=["sales"])
        reply, _, _ = forwarded(s, body=echo("hi"), headers=hdrs(alice))
        assert reply.status == 200
        # What is left are the characters of the user name alone.
        assert re.fullmatch(r"Basic [A-Za-z0-9+/_-]{0,12}\[REDACTED\][A-Za-z0-9+/_=-]{0,6}",
                            reply.header("x-upstream-auth")), reply.headers
        assert not any(key_revealed(v) for _, v in reply.headers)
    finally:
        s.stop()


def test_a_key_echoed_as_a_response_header_name_is_removed(sse_stack):
    """A header name is a token, and the key may be one: an upstream that echoes it as a name
    (Envoy passes it on lowercased) must not hand it to the client. The header goes, the answer
    passes, the leak is counted."""
    def answer(request):
        a = sse_echo(request)
        a.headers += [(KEY, "1"), (f"x-{KEY.upper()}-y", "2"), ("x-kept", "3")]
        return a
    sse_stack.server.script(answer)
    alice = sse_stack.token("alice", groups=["sales"])
    before = key_leaks_redacted(sse_stack)
    try:
        reply, _, _ = forwarded(sse_stack, body=echo("hi"), headers=hdrs(alice))
    finally:
        sse_stack.server.script(sse_echo)
    assert reply.status == 200 and reply.header("x-kept") == "3", reply.headers
    assert not any(KEY.lower() in k.lower() for k, _ in reply.headers), reply.headers
    assert b'"text": "hi"' in reply.body or b'"text":"hi"' in reply.body, reply.body
    assert key_leaks_redacted(sse_stack) == before + 2


def test_tokens_and_keys_never_reach_the_audit_log_or_envoys_log(sec, alice):
    """Every kind of request with a token — allowed, denied, refused for each token fault,
    in the query string, duplicated, oversized — then neither log holds any token (nor its
    signature), the service key, or an Authorization header."""
    calls = [("get_customer", {"customer_id": "c-100"}), ("delete_customer", {"customer_id": "c-1"}),
             ("echo", {"text": KEY})]
    for name, args in calls:
        body, _ = call(name, args)
        send(sec, body=json.dumps(body), headers=body_headers(alice, method="tools/call", name=name))
    claims = sec.issuer.claims("mallory")
    bad = [
        sec.remember(sec.issuer.token("mallory", ttl=-10)),
        sec.remember(sec.issuer.token("mallory", aud="https://other.example")),
        sec.remember(keys.unsigned(claims, {"alg": "none"})),
        sec.remember(keys.SigningKey("RS256").sign(claims)),
        sec.remember(sec.issuer.token("mallory", padding="p" * 20000)),
        sec.remember(sec.issuer.key("RS256").sign(claims, {"crit": ["exp"]})),
        sec.remember("not.a.jwt.at-all-" + "A" * 40),
    ]
    body = echo("hi")
    for token in bad:
        send(sec, body=body, headers=hdrs(token))
    send(sec, path=f"/mcp?access_token={alice}", body=body, headers=hdrs(None))
    send(sec, body=body, headers=hdrs(alice) + [("authorization", f"Bearer {bad[0]}")])
    send(sec, body=body, headers=hdrs(alice) + [("x-api-key", "client-forged-key-123456")])
    forwarded(sec, body=echo("flush"), headers=hdrs(alice))  # a final record: the log caught up

    audit = sec.envoy.access_log.read_text()
    envoy_log = sec.envoy.output()
    assert audit.count("\n") >= len(bad) + 5
    secrets = {KEY, *KEY_FORMS}
    for token in sec.minted:
        secrets.add(token)
        parts = token.split(".")
        if len(parts) == 3 and len(parts[2]) >= 16:
            secrets.add(parts[2])  # the signature alone
    for text, where in ((audit, "audit log"), (envoy_log, "Envoy's log")):
        for secret in secrets:
            assert secret not in text, f"a secret ({secret[:12]}…) is in the {where}"
        assert not re.search(r"(?i)bearer\s+[A-Za-z0-9_-]{8,}", text), where
        assert not re.search(r"(?i)authorization\W{1,4}(bearer|basic|[a-z0-9_-]{16,})", text), where
    # And the upstream never saw a client token, only the service key.
    for request in sec.upstream_requests():
        values = [v for _, v in request["headers"]]
        assert not any(t in v for t in sec.minted for v in values)
        assert [v for k, v in request["headers"] if k == "x-api-key"] == [KEY]


def test_the_admin_interface_is_bound_to_loopback():
    """/config_dump shows the plugin configuration, service key included: the shipped template
    keeps the admin listener on 127.0.0.1 (SECURITY.md: deployment checklist)."""
    template = string.Template((harness.ROOT / "envoy" / "mcp-guard.yaml").read_text())
    fill = {name: "1" for name in ("LISTEN_PORT", "ADMIN_PORT", "UPSTREAM_PORT")}
    fill.update(UPSTREAM_HOST="127.0.0.1", WASM="x.wasm", PLUGIN_CONFIG='"{}"', ACCESS_LOG="/dev/null",
                EXTRA_CLUSTERS="")
    config = yaml.safe_load(template.safe_substitute(fill))
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    for listener in config["static_resources"]["listeners"]:
        assert listener["address"]["socket_address"]["address"] == "127.0.0.1"
