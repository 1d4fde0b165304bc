"""Where Envoy and the peers could read a message otherwise than the filter: trailers, which end a
request or an answer without a last body chunk (HTTP/2 from any client: the listener accepts h2c);
charsets and content types a peer decodes by; responses delivered on another request's answer.
Each case through real Envoy, with the exact outcome and nothing unchecked forwarded."""

import json
import socket
import threading

import h2.config
import h2.connection
import h2.events
import harness
import pytest
from hostile import SecStack, body_headers, call, forwarded, refused, send, wait_record
from stack import modern

DENIED = call("delete_customer", {"customer_id": "c-100"})  # sales may not delete
ALLOWED = call("get_customer", {"customer_id": "c-100"})


def h2_request(port, headers, body, trailers=None, timeout=10.0, received=None):
    """One HTTP/2 (h2c, prior knowledge) request: the headers, one DATA frame, then `trailers`
    as the stream's end (or END_STREAM on the data). Returns (status, headers, body); the
    answer's trailers are added to `received` (a list) when given."""
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(":method", "POST"), (":path", "/mcp"), (":scheme", "http"),
                                (":authority", f"127.0.0.1:{port}"), *headers])
        conn.send_data(sid, body, end_stream=trailers is None)
        if trailers is not None:
            conn.send_headers(sid, trailers, end_stream=True)
        sock.sendall(conn.data_to_send())
        status, answer, data = None, [], b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            ended = False
            for event in conn.receive_data(chunk):
                if isinstance(event, h2.events.ResponseReceived):
                    answer = list(event.headers)
                    status = int(dict(answer)[":status"])
                elif isinstance(event, h2.events.TrailersReceived) and received is not None:
                    received.extend(event.headers)
                elif isinstance(event, h2.events.DataReceived):
                    data += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, sid)
                elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    ended = True
            sock.sendall(conn.data_to_send())
            if ended:
                break
        return status, answer, data
    finally:
        sock.close()


def h2_headers(token, message, rid):
    body, envelope = message
    return [("x-request-id", rid), *body_headers(token, method=envelope["mcp-method"],
                                                 name=envelope.get("mcp-name"))]


@pytest.fixture(scope="module")
def alice(sec):
    return sec.token("alice", groups=["sales"])


def test_http2_is_checked_like_http1(sec, alice):
    """The control: over HTTP/2 without trailers, an allowed call goes on, a denied one is
    answered in-band."""
    before = len(sec.upstream_requests())
    status, _, body = h2_request(sec.port, h2_headers(alice, ALLOWED, "h2-allowed"),
                                 json.dumps(ALLOWED[0]).encode())
    assert status == 200 and len(sec.upstream_requests()) == before + 1
    status, _, body = h2_request(sec.port, h2_headers(alice, DENIED, "h2-denied"),
                                 json.dumps(DENIED[0]).encode())
    assert status == 200 and json.loads(body)["error"]["code"] == -31403, body
    assert len(sec.upstream_requests()) == before + 1
    assert wait_record(sec, "h2-denied")[0]["decision"] == "deny"


def test_request_trailers_do_not_carry_an_undecided_request_upstream(sec, alice):
    """HTTP/2 trailers end the request without a last DATA frame: Envoy would forward the held
    headers (the service key already in them) and body the moment the filter let the trailers
    go on. A request not yet decided is refused; nothing reaches the upstream."""
    before = len(sec.upstream_requests())
    for message, rid in [(DENIED, "h2-trailers-denied"), (ALLOWED, "h2-trailers-allowed")]:
        status, _, body = h2_request(sec.port, h2_headers(alice, message, rid),
                                     json.dumps(message[0]).encode(), trailers=[("x-end", "1")])
        assert status == 400, (status, body)
        assert json.loads(body) == {"error": "invalid_request",
                                    "error_description": "MCP requests carry no trailers"}
        records = wait_record(sec, rid)
        assert [(r["decision"], r["reason"], r["status"]) for r in records] == [
            ("deny", "request_trailers", 400)], records
    # An unauthenticated one too (it never reaches the body step).
    status, _, _ = h2_request(sec.port, [("x-request-id", "h2-trailers-anon"),
                                         *body_headers(None, method="tools/call")],
                              json.dumps(ALLOWED[0]).encode(), trailers=[("x-end", "1")])
    assert status == 401
    assert len(sec.upstream_requests()) == before, "a request reached the upstream"


def shipped_template(workdir, name, marker, replacement):
    """envoy/mcp-guard.yaml with its one `marker` replaced, written as `name`."""
    text = (harness.ROOT / "envoy" / "mcp-guard.yaml").read_text()
    assert text.count(marker) == 1, marker
    path = workdir / name
    path.write_text(text.replace(marker, replacement))
    return str(path)


# The upstream's protocol in the shipped template (the cluster's HttpProtocolOptions, which also
# close idle connections): the tests change only this line of it.
UPSTREAM_PROTOCOL = "        explicit_http_config: { http_protocol_options: {} }\n"


def trailers_template(workdir):
    """HTTP/1.1 trailers passed on from the upstream (as an HTTP/2 upstream always does)."""
    return shipped_template(
        workdir, "trailers.yaml", UPSTREAM_PROTOCOL,
        "        explicit_http_config: { http_protocol_options: { enable_trailers: true } }\n")


TOOLS = [{"name": n, "inputSchema": {"type": "object"}}
         for n in ("search_customers", "get_customer", "delete_customer")]


@pytest.fixture
def scripted(tmp_path):
    """A stack whose upstream answers as each test scripts, trailers passed on."""
    upstream = harness.ScriptedUpstream()
    s = SecStack(tmp_path, upstream=upstream, template=trailers_template(tmp_path))
    s.scripted = upstream
    yield s
    s.stop()


def test_answer_trailers_do_not_release_a_held_answer_unchecked(scripted):
    """A JSON answer is held whole and checked at its end; trailers end it without a last body
    chunk. It is checked then: the list filtered for the caller, the record written once."""
    answer = json.dumps({"jsonrpc": "2.0", "id": 5, "result": {"tools": TOOLS}}).encode()
    scripted.scripted.script(lambda r: harness.Answer(
        200, [("content-type", "application/json")], [answer[:40], answer[40:]],
        trailers=[("x-checksum", "1")]))
    alice = scripted.token("alice", groups=["sales"])
    body = json.dumps(modern({"jsonrpc": "2.0", "id": 5, "method": "tools/list", "params": {}})[0])
    reply, tag = send(scripted, body=body, headers=body_headers(alice, method="tools/list"))
    assert reply.status == 200, reply
    assert [t["name"] for t in reply.json()["result"]["tools"]] == [
        "search_customers", "get_customer"]
    records = wait_record(scripted, tag)
    assert len(records) == 1 and records[0]["decision"] == "allow", records
    assert records[0]["hidden"] == 1 and records[0]["upstream_status"] == 200, records


KEY = harness.SERVICE_KEY
ECHOING_TRAILERS = [("x-echo", f"used {KEY}"), (KEY, "1"), ("x-checksum", "1")]


@pytest.mark.parametrize("rid", ["\u0668", "\uff18", "\u0968"])
def test_an_id_of_non_ascii_digits_answers_no_request(scripted, rid):
    """The Python SDK client reads "٨" (or fullwidth, Devanagari digits) as a number and would
    resolve the request it sent on another POST with it: such an id answers no request here."""
    alice = scripted.token("alice", groups=["sales"])
    smuggled = {"jsonrpc": "2.0", "id": rid, "result": {"tools": TOOLS}}
    body, envelope = ALLOWED
    headers = body_headers(alice, method="tools/call", name=envelope["mcp-name"])
    scripted.scripted.script(lambda r: harness.Answer.json(smuggled))
    reply, tag = send(scripted, body=json.dumps(body), headers=headers)
    assert reply.status == 502 and b"delete_customer" not in reply.body, reply
    record = wait_record(scripted, tag)[-1]
    assert (record["decision"], record["reason"]) == ("error", "unreadable_list_answer"), record


def test_a_list_under_the_calls_own_id_is_filtered(scripted):
    """Two POSTs with one id (a tools/list and a tools/call): the Python SDK's server routes
    answers by id, so the list can come back on the call's stream. It reaches the caller
    filtered, as on its own request."""
    alice = scripted.token("alice", groups=["sales"])
    body, envelope = ALLOWED
    listed = {"jsonrpc": "2.0", "id": str(body["id"]), "result": {"tools": TOOLS}}
    headers = body_headers(alice, method="tools/call", name=envelope["mcp-name"])
    scripted.scripted.script(lambda r: harness.Answer.json(listed))
    reply, _ = send(scripted, body=json.dumps(body), headers=headers)
    assert reply.status == 200, reply
    names = [t["name"] for t in reply.json()["result"]["tools"]]
    assert "delete_customer" not in names and "get_customer" in names, names


@pytest.mark.parametrize("content_type", ["application/json", "text/event-stream"])
def test_the_service_key_never_reaches_the_client_in_answer_trailers(scripted, content_type):
    """HTTP/2 clients receive the answer's trailers (from an HTTP/2 upstream, or one whose
    cluster passes HTTP/1.1 trailers): a key the upstream echoes there, as a value or a name,
    is redacted as in the headers, whether the answer was held whole or streamed."""
    answer = json.dumps({"jsonrpc": "2.0", "id": 5, "result": {"tools": TOOLS}}).encode()
    if content_type == "text/event-stream":
        answer = b"data: " + answer + b"\n\n"
    scripted.scripted.script(lambda r: harness.Answer(
        200, [("content-type", content_type)], [answer], trailers=ECHOING_TRAILERS))
    alice = scripted.token("alice", groups=["sales"])
    message = modern({"jsonrpc": "2.0", "id": 5, "method": "tools/list", "params": {}})
    trailers = []
    status, _, data = h2_request(scripted.port, h2_headers(alice, message, f"tr-{content_type[:4]}"),
                                 json.dumps(message[0]).encode(), received=trailers)
    assert status == 200 and b"delete_customer" not in data and b"get_customer" in data, data
    assert ("x-checksum", "1") in trailers, trailers
    assert ("x-echo", "used [REDACTED]") in trailers, trailers
    assert not any(KEY.lower() in f"{k}: {v}".lower() for k, v in trailers), trailers


@pytest.mark.parametrize("content_type", ["application/json", "text/event-stream"])
def test_with_key_leak_block_answer_trailers_carrying_the_key_stop_the_answer(tmp_path, content_type):
    """With `key_leak: block` the key in the trailers stops the answer: a held JSON answer is a
    502 (its headers were still held), a stream is cut before its end; audited as an error."""
    upstream = harness.ScriptedUpstream()
    s = SecStack(tmp_path, upstream=upstream, template=trailers_template(tmp_path),
                 server={"key_leak": "block"})
    try:
        answer = json.dumps({"jsonrpc": "2.0", "id": 5, "result": {"tools": TOOLS}}).encode()
        if content_type == "text/event-stream":
            answer = b"data: " + answer + b"\n\n"
        upstream.script(lambda r: harness.Answer(
            200, [("content-type", content_type)], [answer], trailers=[("x-echo", KEY)]))
        alice = s.token("alice", groups=["sales"])
        message = modern({"jsonrpc": "2.0", "id": 5, "method": "tools/list", "params": {}})
        trailers, rid = [], f"block-{content_type[:4]}"
        status, _, data = h2_request(s.port, h2_headers(alice, message, rid),
                                     json.dumps(message[0]).encode(), received=trailers)
        assert not any(KEY in v for _, v in trailers), trailers
        if content_type == "application/json":
            assert status == 502 and b"get_customer" not in data, (status, data)
        else:
            assert status == 200 and trailers == [], (status, data, trailers)
        [record] = wait_record(s, rid)
        assert record["decision"] == "error" and record["reason"] == "service_key_in_response", record
    finally:
        s.stop()
        upstream.stop()


def test_a_list_on_another_requests_answer_does_not_reach_the_client(scripted):
    """Clients take a response by its id, whichever POST it came on: a tools/list answer (id 8,
    as if the client had listed on another POST) inside a tools/call's answer would reach the
    client unfiltered. It does not pass: 502 for a JSON answer, the stream cut for events."""
    alice = scripted.token("alice", groups=["sales"])
    smuggled = {"jsonrpc": "2.0", "id": 8, "result": {"tools": TOOLS}}
    own = {"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": "ok"}]}}
    body, envelope = ALLOWED
    headers = body_headers(alice, method="tools/call", name=envelope["mcp-name"])
    scripted.scripted.script(lambda r: harness.Answer.json(smuggled))
    reply, tag = send(scripted, body=json.dumps(body), headers=headers)
    assert reply.status == 502 and b"delete_customer" not in reply.body, reply
    record = wait_record(scripted, tag)[-1]
    assert (record["decision"], record["reason"]) == ("error", "unreadable_list_answer"), record
    assert record["detail"] == "a response to no request of this exchange", record
    events = [f"data: {json.dumps(m)}\n\n".encode() for m in (smuggled, own)]
    scripted.scripted.script(lambda r: harness.Answer(
        200, [("content-type", "text/event-stream")], events))
    try:
        reply, tag = send(scripted, body=json.dumps(body), headers=headers)
        received = reply.body
    except Exception as cut:  # the stream is reset mid-body
        received = str(cut).encode()
    assert b"delete_customer" not in received
    # The control: the call's own answer passes.
    scripted.scripted.script(lambda r: harness.Answer.json(own))
    reply, _ = send(scripted, body=json.dumps(body), headers=headers)
    assert reply.status == 200 and reply.json() == own


@pytest.mark.parametrize("content_type", [
    "application/json; charset=utf-7",
    "text/event-stream; charset=utf-16le",
    "text/event-stream; charset*=''utf-7",
    "application/json-seq",
    "application/json; x=text/event-stream",
])
def test_an_answer_its_client_could_decode_otherwise_is_refused(scripted, content_type):
    """The Python SDK's client decodes event streams by their charset, the TypeScript one
    classifies answers by substrings: what the filter reads as UTF-8 JSON or events must be
    exactly that, or the answer does not go on."""
    alice = scripted.token("alice", groups=["sales"])
    scripted.scripted.script(lambda r: harness.Answer(
        200, [("content-type", content_type)],
        json.dumps({"jsonrpc": "2.0", "id": 5, "result": {"tools": TOOLS}}).encode()))
    body = json.dumps(modern({"jsonrpc": "2.0", "id": 5, "method": "tools/list", "params": {}})[0])
    reply, tag = send(scripted, body=body, headers=body_headers(alice, method="tools/list"))
    assert reply.status == 502 and b"delete_customer" not in reply.body, reply
    record = wait_record(scripted, tag)[-1]
    assert record["decision"] == "error", record
    assert record["reason"] in ("uninspectable_response", "unreadable_list_answer"), record


@pytest.mark.parametrize("charset", ["utf-7", "UTF-16LE", "utf-8; charset=utf-7"])
def test_a_request_in_another_charset_is_415(sec, alice, charset):
    """Express's JSON parser (under the TypeScript SDK's server) decodes by the charset, UTF-7
    included, where `+ACI-` is a quote: the same bytes would be another message there."""
    body, envelope = ALLOWED
    refused(sec, status=415, reason="unsupported_media_type", code=-32600,
            body=json.dumps(body),
            headers=body_headers(alice, method="tools/call", name=envelope["mcp-name"],
                                 content_type=f"application/json; charset={charset}"))
    forwarded(sec, body=json.dumps(body),
              headers=body_headers(alice, method="tools/call", name=envelope["mcp-name"],
                                   content_type="application/json; charset=UTF-8"))


def test_an_event_line_the_filter_does_not_read_as_data_reaches_no_client(scripted):
    """`ï»¿data:` (a BOM decoded as Latin-1) is an unknown field to the standard and to the
    filter, but the TypeScript SDK's parser strips those three characters from a stream's first
    line and reads the rest as data. Such lines are dropped: the unfiltered list never leaves."""
    alice = scripted.token("alice", groups=["sales"])
    answer = json.dumps({"jsonrpc": "2.0", "id": 5, "result": {"tools": TOOLS}})
    stream = "\u00ef\u00bb\u00bfdata: ".encode() + answer.encode() + b"\n\n"
    scripted.scripted.script(lambda r: harness.Answer(
        200, [("content-type", "text/event-stream")], [stream]))
    body = json.dumps(modern({"jsonrpc": "2.0", "id": 5, "method": "tools/list", "params": {}})[0])
    reply, _ = send(scripted, body=body, headers=body_headers(alice, method="tools/list"))
    assert b"delete_customer" not in reply.body and b"data" not in reply.body, reply
    # The control: the same list as a proper event is filtered, not dropped.
    scripted.scripted.script(lambda r: harness.Answer(
        200, [("content-type", "text/event-stream")], [b"data: " + answer.encode() + b"\n\n"]))
    reply, _ = send(scripted, body=body, headers=body_headers(alice, method="tools/list"))
    assert b"get_customer" in reply.body and b"delete_customer" not in reply.body, reply


def rerouting_template(workdir):
    """A route before the demo's that matches on `x-mcp-user`, a header the filter sets from the
    token (forward_claims): a route no deployment should have."""
    return shipped_template(
        workdir, "rerouting.yaml", "              routes:\n",
        "              routes:\n"
        "              - name: by-user\n"
        "                match: { prefix: \"/\", headers: [{ name: x-mcp-user, present_match: true }] }\n"
        "                route: { cluster: mcp_upstream, timeout: 0s }\n")


def test_an_answer_that_came_by_another_route_than_the_checked_one_is_refused(tmp_path):
    """Envoy matches the route again after the filter changed the request's headers. A route
    on a header the filter sets sends the request elsewhere than where it was checked: that
    answer does not come back (502), and the record says what happened."""
    s = SecStack(tmp_path, template=rerouting_template(tmp_path),
                 server={"forward_claims": {"email": "x-mcp-user"}})
    try:
        alice = s.token("alice", groups=["sales"], email="alice@example.com")
        body, envelope = ALLOWED
        headers = body_headers(alice, method="tools/call", name=envelope["mcp-name"])
        reply, tag = send(s, body=json.dumps(body), headers=headers)
        assert reply.status == 502 and b"c-100" not in reply.body, reply
        record = wait_record(s, tag)[-1]
        assert (record["decision"], record["reason"]) == ("error", "rerouted"), record
        assert record["route"] == "mcp-demo" and '"by-user"' in record["detail"], record
        # A token without the claim: the header is not set, the route stays, the call passes.
        bob = s.token("bob", groups=["sales"])
        reply, _ = send(s, body=json.dumps(body),
                        headers=body_headers(bob, method="tools/call", name=envelope["mcp-name"]))
        assert reply.status == 200 and b"c-100" in reply.body, reply
    finally:
        s.stop()


def test_header_names_with_underscores_never_reach_the_upstream(sec, alice):
    """CGI and WSGI servers read `-` and `_` in header names alike: `mcp_session_id` would be the
    Mcp-Session-Id the filter checks, `x_api_key` the service key's header. The shipped
    listeners drop such headers (headers_with_underscores_action: DROP_HEADER)."""
    body, envelope = ALLOWED
    headers = body_headers(alice, method="tools/call", name=envelope["mcp-name"],
                           extra=[("mcp_session_id", "forged"), ("x_api_key", "mine"),
                                  ("mcp_method", "tools/list")])
    _, _, seen = forwarded(sec, body=json.dumps(body), headers=headers)
    names = {k.lower() for k, _ in seen["headers"]}
    assert not names & {"mcp_session_id", "x_api_key", "mcp_method"}, names


class H2Upstream:
    """An HTTP/2 (h2c) upstream: `answer(request)` gives (headers, body, trailers); a request is
    {"headers", "body", "json"}. HTTP/2 answers may carry a `content-length` and trailers both."""

    def __init__(self, answer):
        self.answer = answer
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, sock):
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        streams = {}
        with sock:
            while data := sock.recv(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        streams[event.stream_id] = (dict(event.headers), bytearray())
                    elif isinstance(event, h2.events.DataReceived):
                        streams[event.stream_id][1].extend(event.data)
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.StreamEnded):
                        headers, body = streams.pop(event.stream_id)
                        request = {"headers": headers, "body": bytes(body), "json": json.loads(body)}
                        answer_headers, answer, trailers = self.answer(request)
                        conn.send_headers(event.stream_id, answer_headers)
                        conn.send_data(event.stream_id, answer)
                        conn.send_headers(event.stream_id, trailers, end_stream=True)
                sock.sendall(conn.data_to_send())

    def stop(self):
        self.sock.close()


def http1_with_trailers(port, headers, body):
    """One HTTP/1.1 request; the answer read as a chunked one with its trailers:
    (status, headers, body, trailers), header names lower-case."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        head = [f"POST /mcp HTTP/1.1", f"host: 127.0.0.1:{port}", "te: trailers",
                f"content-length: {len(body)}", *(f"{k}: {v}" for k, v in headers)]
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        reader = sock.makefile("rb")
        status = int(reader.readline().split()[1])
        answer = []
        while (line := reader.readline().rstrip(b"\r\n")):
            name, _, value = line.decode().partition(":")
            answer.append((name.lower(), value.strip()))
        assert ("transfer-encoding", "chunked") in answer, answer
        data = b""
        while (size := int(reader.readline().strip(), 16)):
            data += reader.read(size)
            reader.readline()
        trailers = []
        while (line := reader.readline().rstrip(b"\r\n")):
            name, _, value = line.decode().partition(":")
            trailers.append((name.lower(), value.strip()))
        return status, answer, data, trailers


def test_an_answer_that_ends_in_trailers_reaches_an_http1_client_with_them(tmp_path):
    """An HTTP/2 upstream's answer with a `content-length` and trailers, to an HTTP/1.1 client
    whose listener passes trailers on: trailers travel only in a chunked answer, so the held
    answer goes without its length (and its body, rewritten or not, with the trailers)."""
    def answer(request):
        message = request["json"]
        text = message["params"]["arguments"]["text"]
        body = json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": {
            "content": [{"type": "text", "text": text}], "isError": False}}).encode()
        headers = [(":status", "200"), ("content-type", "application/json"),
                   ("content-length", str(len(body)))]
        return headers, body, [("x-checksum", "1")]

    text = (harness.ROOT / "envoy" / "mcp-guard.yaml").read_text()
    for marker, replacement in [
        (UPSTREAM_PROTOCOL, "        explicit_http_config: { http2_protocol_options: {} }\n"),
        ("          common_http_protocol_options: { headers_with_underscores_action: DROP_HEADER }\n",
         "          common_http_protocol_options: { headers_with_underscores_action: DROP_HEADER }\n"
         "          http_protocol_options: { enable_trailers: true }\n"),
    ]:
        assert text.count(marker) == 1, marker
        text = text.replace(marker, replacement)
    template = tmp_path / "h2-upstream-h1-trailers.yaml"
    template.write_text(text)
    s = SecStack(tmp_path, upstream=H2Upstream(answer), template=str(template))
    try:
        alice = s.token("alice", groups=["sales"])
        for id, said, redacted in [(1, "plain", False), (2, f"key={KEY}", True)]:
            body, _ = call("echo", {"text": said}, id=id)
            status, headers, data, trailers = http1_with_trailers(
                s.port, body_headers(alice, method="tools/call", name="echo"),
                json.dumps(body).encode())
            assert status == 200, data
            assert "content-length" not in dict(headers), headers
            assert ("x-checksum", "1") in trailers, trailers
            out = json.loads(data)["result"]["content"][0]["text"]
            assert ("[REDACTED]" in out) == redacted and KEY not in out, out
    finally:
        s.stop()
