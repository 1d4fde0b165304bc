"""List answers: what the upstream answers to `tools/list`, `prompts/list`, `resources/list` and
`resources/templates/list` reaches the caller filtered by the policy, or not at all (502, a cut
stream). The upstream here is scripted (`harness.ScriptedUpstream`), so every answer a careless
or hostile MCP server could give is sent through real Envoy and the built filter."""

import asyncio
import http.client
import json
import uuid

import harness
import pytest
from harness import Answer
from hostile import SecStack, body_headers, raw, send, wait_record
from stack import mcp_client, modern

TOOL_NAMES = ["search_customers", "get_customer", "delete_customer", "push_branch", "echo"]
TOOLS = [{"name": n, "description": f"the {n} tool", "inputSchema": {"type": "object"}} for n in TOOL_NAMES]
# What the demo policy lets a sales user (alice) call, so see.
VISIBLE = ["search_customers", "get_customer", "echo"]


@pytest.fixture(scope="module")
def upstream():
    u = harness.ScriptedUpstream()
    yield u
    u.stop()


@pytest.fixture(scope="module")
def lists(tmp_path_factory, upstream):
    s = SecStack(tmp_path_factory.mktemp("lists"), upstream=upstream)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def alice(lists):
    return lists.token("alice", groups=["sales"])


def list_request(stack, token, method="tools/list", id=5, extra=()):
    body, _ = modern({"jsonrpc": "2.0", "id": id, "method": method, "params": {}})
    return send(stack, body=json.dumps(body), headers=body_headers(token, method=method, extra=extra))


def tools_result(id_text):
    """A tools/list answer with every tool, its id written as given (`"5"`, `5.0`, …)."""
    return '{"jsonrpc":"2.0","id":%s,"result":{"tools":%s}}' % (id_text, json.dumps(TOOLS))


def names(result, key="tools"):
    return [t.get("name") for t in result["result"][key]]


def event_messages(body):
    """The JSON messages of an event stream's data lines."""
    return [json.loads(line[5:]) for line in body.decode().splitlines() if line.startswith("data:")]


def the_record(stack, tag):
    records = wait_record(stack, tag)
    assert len(records) == 1, records
    return records[0]


def assert_refused(stack, reply, tag, why, upstream_status=200):
    """The one right outcome for an answer that cannot be read as the list: 502, a JSON-RPC
    error for the request's id, no tool name, an error record saying why."""
    assert reply.status == 502, reply
    body = reply.json()
    assert body["id"] == 5 and body["error"]["code"] == -32603, body
    assert not any(n.encode() in reply.body for n in TOOL_NAMES)
    record = the_record(stack, tag)
    assert record["decision"] == "error", record
    assert record["reason"] == "unreadable_list_answer" and record["detail"] == why, record
    assert record["status"] == 502 and record.get("upstream_status") == upstream_status, record
    assert record["method"] == "tools/list" and record["jsonrpc_id"] == 5, record


@pytest.mark.parametrize("content_type,why", [
    ("application/json-rpc", 'content-type "application/json-rpc"'),
    ("text/plain", 'content-type "text/plain"'),
    (None, "no content-type"),
    ("application/problem+json", 'content-type "application/problem+json"'),
    ("application/jsonl", 'content-type "application/jsonl"'),
], ids=["json_rpc", "text_plain", "none", "problem_json", "jsonl"])
def test_a_list_answer_of_another_content_type_gets_502(lists, upstream, alice, content_type, why):
    headers = [("content-type", content_type)] if content_type else []
    upstream.script(lambda r: Answer(200, headers, tools_result("5")))
    reply, tag = list_request(lists, alice)
    assert_refused(lists, reply, tag, why)


@pytest.mark.parametrize("status", [201, 202, 204])
def test_a_list_answer_with_another_2xx_gets_502(lists, upstream, alice, status):
    body = b"" if status == 204 else tools_result("5").encode()
    upstream.script(lambda r: Answer(status, [("content-type", "application/json")], body))
    reply, tag = list_request(lists, alice)
    assert_refused(lists, reply, tag, f"status {status}", upstream_status=status)


TWICE_OR_CASE = "a member the filter reads appears twice or in another case"


@pytest.mark.parametrize("body,why", [
    ('{"jsonrpc":"2.0","id":6,"result":{"tools":%s}}' % json.dumps(TOOLS), "a response to no request of this exchange"),
    ('{"jsonrpc":"2.0","result":{"tools":%s}}' % json.dumps(TOOLS), "a response to no request of this exchange"),
    ('{"jsonrpc":"2.0","id":5,"result":{"prompts":[]}}', "a list result without its list"),
    ('{"jsonrpc":"2.0","method":"notifications/message","params":{}}', "a request or notification where a response was due"),
    ('{"jsonrpc":"2.0","id":5,"result":{"tools":[]},"error":{"code":1,"message":"x"}}', "both a result and an error"),
    ('{"jsonrpc":"2.0","id":5,"result":{"tools":%s}} ' % json.dumps(TOOLS) * 2, "not JSON"),
    ("", "no body"),
    # Go's encoding/json matches member names in any case (Unicode folds too), the last one
    # winning: a Go client would read the second, unfiltered list, result, name or id.
    ('{"jsonrpc":"2.0","id":5,"result":{"tools":[],"Tools":%s}}' % json.dumps(TOOLS), TWICE_OR_CASE),
    ('{"jsonrpc":"2.0","id":5,"result":{"tools":[],"tool\u017f":%s}}' % json.dumps(TOOLS), TWICE_OR_CASE),
    ('{"jsonrpc":"2.0","id":5,"result":{"tools":[]},"Result":{"tools":%s}}' % json.dumps(TOOLS), TWICE_OR_CASE),
    ('{"jsonrpc":"2.0","id":5,"result":{"tools":[{"name":"search","Name":"delete_customer"}]}}', TWICE_OR_CASE),
    ('{"jsonrpc":"2.0","id":5,"ID":6,"result":{"tools":[]}}', TWICE_OR_CASE),
], ids=["other_id", "no_id", "other_list", "notification", "result_and_error", "two_messages", "empty",
        "list_in_another_case", "list_with_a_folding_character", "result_in_another_case",
        "name_in_another_case", "id_in_another_case"])
def test_a_json_list_answer_that_is_not_one_response_carrying_the_list_gets_502(lists, upstream, alice, body, why):
    upstream.script(lambda r: Answer(200, [("content-type", "application/json")], body.encode()))
    reply, tag = list_request(lists, alice)
    assert_refused(lists, reply, tag, why)


@pytest.mark.parametrize("wire_id", ['"5"', "5.0", "5e0", '"05"'], ids=["string", "float", "exponent", "leading_zero"])
def test_a_coerced_id_is_filtered_in_json(lists, upstream, alice, wire_id):
    upstream.script(lambda r: Answer(200, [("content-type", "application/json")], tools_result(wire_id).encode()))
    reply, tag = list_request(lists, alice)
    assert reply.status == 200, reply
    assert names(reply.json()) == VISIBLE
    record = the_record(lists, tag)
    assert record["decision"] == "allow" and record["hidden"] == 2, record


@pytest.mark.parametrize("wire_id", ['"5"', "5.0"], ids=["string", "float"])
def test_a_coerced_id_is_filtered_in_an_event_stream(lists, upstream, alice, wire_id):
    progress = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 5, "progress": 1}}
    upstream.script(lambda r: Answer.events(progress, tools_result(wire_id)))
    reply, tag = list_request(lists, alice)
    assert reply.status == 200 and reply.header("content-type") == "text/event-stream", reply
    messages = event_messages(reply.body)
    assert messages[0] == progress
    assert names(messages[1]) == VISIBLE and len(messages) == 2
    assert the_record(lists, tag)["hidden"] == 2


def read_cut_stream(stack, token, method="tools/list"):
    """Sends a list request whose event stream the filter must cut: the 200 and the events before
    the cut arrive, then the connection ends before the stream's end (http.client raises)."""
    body, _ = modern({"jsonrpc": "2.0", "id": 5, "method": method, "params": {}})
    conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=10)
    try:
        # Unique per request: an object id() may be reused by the next test, and two records
        # under one request id would be ambiguous.
        rid = f"cut-{uuid.uuid4().hex[:16]}"
        conn.putrequest("POST", "/mcp", skip_accept_encoding=True)
        for k, v in body_headers(token, method=method) + [("x-request-id", rid)]:
            conn.putheader(k, v)
        data = json.dumps(body).encode()
        conn.putheader("content-length", str(len(data)))
        conn.endheaders(data)
        resp = conn.getresponse()
        assert resp.status == 200
        with pytest.raises(http.client.IncompleteRead) as cut:
            resp.read()
        return cut.value.partial, rid
    finally:
        conn.close()


@pytest.mark.parametrize("data,why", [
    ("tools: delete_customer", "not JSON"),
    ('{"jsonrpc":"2.0","id":6,"result":{"tools":%s}}' % json.dumps(TOOLS), "a response to no request of this exchange"),
    ('{"tools":%s}' % json.dumps(TOOLS), "not a JSON-RPC message"),
    ('{"jsonrpc":"2.0","id":5,"method":"x","result":{"tools":%s}}' % json.dumps(TOOLS), "both a request and a response"),
], ids=["not_json", "other_id", "not_jsonrpc", "request_and_response"])
def test_an_event_that_is_not_the_list_answer_cuts_the_stream(lists, upstream, alice, data, why):
    # The progress event first, on its own; then the event that is not the answer, then the list.
    progress = b'event: message\ndata: {"jsonrpc":"2.0","method":"notifications/progress","params":{}}\n\n'
    rest = Answer.events(data, tools_result("5")).body
    upstream.script(lambda r: Answer(200, [("content-type", "text/event-stream")], [progress, *rest], delay=0.3))
    partial, rid = read_cut_stream(lists, alice)
    assert partial == progress
    record = the_record(lists, rid)
    assert record["decision"] == "error" and record["reason"] == "unreadable_list_answer", record
    assert record["detail"] == why, record


def test_a_batch_answer_after_2025_03_26_is_refused(lists, upstream, alice):
    """Batches are 2025-03-26's. The TypeScript SDK client still reads a JSON array answer: a
    2026-07-28 list inside one kept the server's `cacheScope: "public"` (the filter marks the
    lists it tailors private), so a shared cache could hand one caller's list to another. Such
    an answer is refused: 502, or the stream is cut."""
    listed = {"jsonrpc": "2.0", "id": 5, "result": {"tools": TOOLS, "resultType": "complete",
                                                    "cacheScope": "public", "ttlMs": 60000}}
    upstream.script(lambda r: Answer.json([listed]))
    reply, tag = list_request(lists, alice)
    assert_refused(lists, reply, tag, "a batch, after protocol 2025-03-26")
    progress = b'data: {"jsonrpc":"2.0","method":"notifications/progress","params":{}}\n\n'
    upstream.script(lambda r: Answer(200, [("content-type", "text/event-stream")],
                                     [progress, b"data: " + json.dumps([listed]).encode() + b"\n\n"],
                                     delay=0.3))
    partial, rid = read_cut_stream(lists, alice)
    assert partial == progress
    assert the_record(lists, rid)["detail"] == "a batch, after protocol 2025-03-26"
    # The control: the same answer alone is filtered and made private.
    upstream.script(lambda r: Answer.json(listed))
    reply, _ = list_request(lists, alice)
    assert names(reply.json()) == VISIBLE and reply.json()["result"]["cacheScope"] == "private"


def test_an_error_answer_to_a_list_request_passes(lists, upstream, alice):
    error = {"jsonrpc": "2.0", "id": 5, "error": {"code": -32601, "message": "Method not found"}}
    upstream.script(lambda r: Answer.json(error))
    reply, tag = list_request(lists, alice)
    assert reply.status == 200 and reply.json() == error
    assert the_record(lists, tag)["decision"] == "allow"


def test_a_list_under_an_error_status_is_still_filtered(lists, upstream, alice):
    """Clients read no result at a 4xx/5xx, but one that did must not see a hidden tool: the
    answer passes with its status, every list in it filtered whatever its id."""
    upstream.script(lambda r: Answer(500, [("content-type", "application/json")], tools_result('"x"').encode()))
    reply, tag = list_request(lists, alice)
    assert reply.status == 500 and names(reply.json()) == VISIBLE
    record = the_record(lists, tag)
    assert record["upstream_status"] == 500 and record["hidden"] == 2, record
    # A plain-text 404 (an expired session) passes as it is.
    upstream.script(lambda r: Answer(404, [("content-type", "text/plain")], b"Not Found"))
    reply, _ = list_request(lists, alice)
    assert (reply.status, reply.body) == (404, b"Not Found")


def test_a_2025_03_26_batch_s_list_answers_are_filtered_by_id(lists, upstream, alice):
    """Each list request of a batch is answered filtered, matched by id (coerced too)."""
    prompts = [{"name": "summarize_account"}]
    answer = [
        {"jsonrpc": "2.0", "id": 3, "result": {}},
        {"jsonrpc": "2.0", "id": "1", "result": {"tools": TOOLS}},
        {"jsonrpc": "2.0", "id": 2.0, "result": {"prompts": prompts}},
    ]
    upstream.script(lambda r: Answer.json(answer))
    batch = [{"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
             {"jsonrpc": "2.0", "id": 2, "method": "prompts/list"},
             {"jsonrpc": "2.0", "id": 3, "method": "ping"}]
    headers = body_headers(alice, protocol="2025-03-26")
    reply, tag = send(lists, body=json.dumps(batch), headers=headers)
    assert reply.status == 200, reply
    out = reply.json()
    assert out[0] == answer[0]
    assert names(out[1]) == VISIBLE
    assert out[2]["result"]["prompts"] == []  # the demo policy allows no prompts/get
    # A batch answer that leaves a list request's answer without its list: 502.
    upstream.script(lambda r: Answer.json([{"jsonrpc": "2.0", "id": 1, "result": {}}]))
    reply, tag = send(lists, body=json.dumps(batch), headers=headers)
    assert reply.status == 502 and reply.json()["error"]["code"] == -32603


def event_ids(body):
    return [line[4:] for line in body.decode().splitlines() if line.startswith("id: ")]


def an_event_id_of(stack, upstream, token, upstream_id="e1"):
    """The event id the caller sees for an upstream event id: its stream's first event's."""
    event = b"id: " + upstream_id.encode() + b"\nevent: message\ndata: {}\n\n"
    upstream.script(lambda r: Answer(200, [("content-type", "text/event-stream")], [event]))
    h = [("accept", "text/event-stream"), ("authorization", f"Bearer {token}")]
    reply, _ = send(stack, method="GET", headers=h)
    assert reply.status == 200, reply
    [seen] = event_ids(reply.body)
    assert seen != upstream_id and upstream_id not in reply.body.decode(), reply.body
    return seen


def test_a_list_replayed_on_a_get_stream_is_filtered(lists, upstream, alice):
    """A GET stream resumed with Last-Event-ID may replay earlier answers, lists included:
    every list in it is filtered whatever its id; an event that is not JSON-RPC cuts it."""
    last = an_event_id_of(lists, upstream, alice)
    replay = {"jsonrpc": "2.0", "id": "77", "result": {"tools": TOOLS}}
    upstream.script(lambda r: Answer.events(replay))
    h = [("accept", "text/event-stream"), ("authorization", f"Bearer {alice}"), ("last-event-id", last)]
    before = len(upstream.requests())
    reply, _ = send(lists, method="GET", headers=h)
    assert reply.status == 200
    assert [names(m) for m in event_messages(reply.body)] == [VISIBLE]
    # The upstream resumed from its own id.
    [request] = upstream.requests()[before:]
    assert [v for k, v in request["headers"] if k.lower() == "last-event-id"] == ["e1"]
    # Not an event stream: nothing readable, 502.
    upstream.script(lambda r: Answer(200, [("content-type", "text/plain")], json.dumps(replay).encode()))
    reply, tag = send(lists, method="GET", headers=h)
    assert reply.status == 502 and b"delete_customer" not in reply.body
    record = the_record(lists, tag)
    assert record["reason"] == "unreadable_list_answer"
    # Refused from its headers (the content type), or — seen once in a full run, under load —
    # from its body, which is not JSON: refused either way, nothing of it forwarded.
    assert record["detail"] in ('content-type "text/plain"', "not JSON"), record


# ---- a real SDK client ---------------------------------------------------------------------------


def legacy_server(list_answer):
    """A minimal Streamable HTTP server for the SDK client's handshake, answering tools/list with
    `list_answer(request_id)` (an `Answer`)."""
    def answer(request):
        if request["method"] != "POST":
            return Answer(405)
        message = request["json"] or {}
        method = message.get("method")
        if method == "initialize":
            return Answer.json({"jsonrpc": "2.0", "id": message["id"], "result": {
                "protocolVersion": message["params"]["protocolVersion"],
                "capabilities": {"tools": {"listChanged": False}},
                "serverInfo": {"name": "scripted", "version": "1"}}})
        if "id" not in message:
            return Answer(202)
        if method == "tools/list":
            return list_answer(message["id"])
        return Answer.json({"jsonrpc": "2.0", "id": message["id"], "error": {"code": -32601, "message": "no"}})
    return answer


async def sdk_list_tools(url, token):
    async with mcp_client(url, token, mode="legacy") as client:
        return [t.name for t in (await client.list_tools()).tools]


def leaves(error):
    """The exceptions inside (nested) exception groups."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for e in error.exceptions for leaf in leaves(e)]
    return [error]


@pytest.mark.parametrize("wire", ["string_id", "string_id_sse"])
def test_the_python_sdk_client_sees_only_allowed_tools_with_a_coerced_id(lists, upstream, alice, wire):
    """The official Python SDK client takes `"id": "5"` for its request 5: it sees only what
    the policy allows."""
    def list_answer(request_id):
        text = tools_result(json.dumps(str(request_id)))
        return Answer.events(text) if wire.endswith("sse") else Answer(200, [("content-type", "application/json")], text.encode())
    upstream.script(legacy_server(list_answer))
    assert asyncio.run(sdk_list_tools(lists.envoy.url, alice)) == VISIBLE


def test_the_python_sdk_client_gets_a_clean_error_for_an_unreadable_list(lists, upstream, alice):
    """`application/json-rpc`, which the SDK client would parse: the client gets an error,
    never the list."""
    from mcp import MCPError

    upstream.script(legacy_server(lambda request_id: Answer(
        200, [("content-type", "application/json-rpc")], tools_result(json.dumps(request_id)).encode())))
    with pytest.raises(BaseException) as error:
        asyncio.run(sdk_list_tools(lists.envoy.url, alice))
    [leaf] = leaves(error.value)
    assert isinstance(leaf, MCPError) and leaf.code == -32603, leaf
    assert "could not be checked" in leaf.message


# ---- prompts and resources, end to end with the demo MCP server ------------------------------------

LIST_POLICY = """
name: lists-e2e
version: "1"
default: deny
rules:
  - name: discover
    allow: mcp.method in ["ping", "tools/list", "prompts/list", "resources/list", "resources/templates/list"]
  - name: admins-prompts
    allow: mcp.method == "prompts/get" && mcp.prompt.name == "summarize_account" && "admins" in jwt.groups
  - name: admins-customers
    allow: >
      mcp.method == "resources/read" && mcp.resource.uri.startsWith("crm://customers/")
      && "admins" in jwt.groups
"""


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo-lists")
    policy = workdir / "lists.yaml"
    policy.write_text(LIST_POLICY)
    s = SecStack(workdir, policy=str(policy))
    yield s
    s.stop()


@pytest.mark.parametrize("method,key,entry,expected", [
    ("prompts/list", "prompts", "name", "summarize_account"),
    ("resources/templates/list", "resourceTemplates", "uriTemplate", "crm://customers/{customer_id}"),
], ids=["prompts", "resource_templates"])
def test_prompts_and_resource_templates_are_filtered_per_caller(demo, method, key, entry, expected):
    """The demo MCP server's own listings, through Envoy: an admin sees what the policy lets
    admins get or read; a sales user sees nothing of it."""
    for sub, groups, seen, hidden in (("root", ["admins"], [expected], None), ("alice", ["sales"], [], 1)):
        reply, tag = list_request(demo, demo.token(sub, groups=groups), method=method)
        assert reply.status == 200, reply
        messages = event_messages(reply.body) if reply.body.startswith(b"event") else [reply.json()]
        assert [e[entry] for e in messages[-1]["result"][key]] == seen
        assert the_record(demo, tag).get("hidden") == hidden


def test_a_stream_resumes_only_from_the_callers_own_event_ids(lists, upstream, alice):
    """An upstream event id is a handle to its stream (a server may replay events by id alone,
    and it sees every caller through one key): the ids callers see are sealed for them, and
    another caller's id, or the upstream's raw one, resumes nothing."""
    bob = lists.token("bob", groups=["sales"])
    alices = an_event_id_of(lists, upstream, alice, "stream-7f3a_2")
    upstream.script(lambda r: Answer.events({"jsonrpc": "2.0", "method": "notifications/message",
                                             "params": {"level": "info", "data": "secret"}}))
    for presented, reason in [(alices, "event_id_of_another_caller"),
                              ("stream-7f3a_2", "event_id_not_sealed")]:
        h = [("accept", "text/event-stream"), ("authorization", f"Bearer {bob}"),
             ("last-event-id", presented)]
        before = len(upstream.requests())
        reply, tag = send(lists, method="GET", headers=h)
        assert reply.status == 400 and b"secret" not in reply.body, reply
        assert len(upstream.requests()) == before, "the request reached the upstream"
        assert the_record(lists, tag)["reason"] == reason


# ---- differential: what the official clients' event-stream parsers read from Envoy's output ----

HIDDEN = sorted(set(TOOL_NAMES) - set(VISIBLE))
LIST = json.dumps({"jsonrpc": "2.0", "id": 5, "result": {"tools": TOOLS}})
# Stream openings, field spellings, line ends, event names and stray lines on which event-stream
# parsers are known to differ (BOMs, `ï»¿` — a BOM decoded as Latin-1 —, case, spaces, NUL,
# characters Python's str.splitlines() would split on, lines without a colon, no final blank).
OPENINGS = ["", "\ufeff", "\ufeff\ufeff", "\u00ef\u00bb\u00bf", "\ufeff\u00ef\u00bb\u00bf", "\r", "\n",
            ": c\n", "\r\n"]
DATA_FIELDS = ["data: ", "data:", "Data: ", "data :", " data: ", "data\t: ", "\ufeffdata: ",
               "dat\u0430: ", "data:  ", "\u0000data: "]
LINE_ENDS = ["\n", "\r\n", "\r"]
EVENTS = ["", "event: message{e}", "event: Message{e}", "event:{e}", "event: foo{e}", "event{e}"]
STRAY = ["", "id: 1{e}", "id: a\u0000b{e}", "retry: x{e}", "retry{e}", "data{e}", ":{e}", "id{e}",
         "\u0085{e}", "\u2028{e}", "\u000b{e}", "\u000c{e}"]
ENDS = ["{e}", "", "\r\r", "\n\r\n", "{e}{e}", "\r"]


def a_hostile_stream(rng):
    """One event stream carrying the unfiltered tools/list answer, spelled one way or another."""
    e = rng.choice(LINE_ENDS)
    if rng.random() < 0.3:  # the answer over two data lines (valid JSON joined by \n)
        first, second = LIST.split('"result": ', 1)
        data = rng.choice(DATA_FIELDS) + first + '"result":' + rng.choice(LINE_ENDS) + rng.choice(DATA_FIELDS) + second
    else:
        data = rng.choice(DATA_FIELDS) + LIST
    lines = [rng.choice(EVENTS).format(e=e), rng.choice(STRAY).format(e=e), data + e]
    if rng.random() < 0.5:
        lines.reverse()
    text = rng.choice(OPENINGS) + "".join(lines) + rng.choice(ENDS).format(e=e)
    if rng.random() < 0.3:
        text = '{"x":1}'.join(["data: ", e + e]) + text
    raw_bytes = text.encode()
    if rng.random() < 0.5:
        return [raw_bytes]
    cuts = sorted(rng.sample(range(1, len(raw_bytes)), 4))
    return [raw_bytes[i:j] for i, j in zip([0, *cuts], [*cuts, len(raw_bytes)])]


def python_sdk_events(body, bytewise):
    """The data of the events the Python SDK client takes as messages (its HTTP client's
    EventSource over the body, whole or one byte per chunk)."""
    import httpx2
    chunks = [body[i:i + 1] for i in range(len(body))] if bytewise else [body]
    response = httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=iter(chunks),
                               request=httpx2.Request("POST", "http://mcp.example/mcp"))
    return [e.data for e in httpx2.EventSource(response) if e.event == "message" and e.data]


def python_mcp1_events(body, bytewise):
    """The same for the Python SDK's 1.x client, which reads streams with `httpx-sse` (0.4.0 and
    0.4.1 split lines as `str.splitlines` does: also at LS, PS, NEL, VT, FF, FS, GS, RS)."""
    import httpx
    import httpx_sse
    chunks = [body[i:i + 1] for i in range(len(body))] if bytewise else [body]
    response = httpx.Response(200, headers={"content-type": "text/event-stream"}, content=iter(chunks),
                              request=httpx.Request("POST", "http://mcp.example/mcp"))
    return [e.data for e in httpx_sse.EventSource(response).iter_sse() if e.event == "message" and e.data]


# A line end only some clients see, inside a comment or an `event`/`id` value: what follows is
# a data line for `httpx-sse` before 0.4.2 (the Python SDK 1.x client), and was not one for the
# filter.
SPLITLINES = ["\u2028", "\u2029", "\u0085", "\u000b", "\u000c", "\u001c", "\u001d", "\u001e"]
SMUGGLED = [f"{line}{sep}data: {LIST}\n\n" for sep in SPLITLINES
            for line in (": keep-alive", "event: message", "id: 1")]


def typescript_sdk_events(bodies):
    """The same for the TypeScript SDK client (TextDecoderStream, then eventsource-parser)."""
    import base64
    import subprocess
    script = harness.PEERS / "ts-client" / "sse_parse.mjs"
    request = [[base64.b64encode(b).decode(), bytewise] for b in bodies for bytewise in (False, True)]
    done = subprocess.run(["node", str(script)], input=json.dumps(request), capture_output=True,
                          text=True, check=True, timeout=60)
    return json.loads(done.stdout)


def test_no_official_client_parser_reads_an_unfiltered_list_from_any_stream(lists, upstream, alice):
    """Hostile event streams answering tools/list, through Envoy; what Envoy sent on (filtered,
    re-encoded, or cut) is read by the Python and TypeScript SDK clients' own parsers, whole and
    one byte at a time: no message either reads names a hidden tool."""
    import random
    rng = random.Random(20261204)
    bodies = []
    known = [[f"{opening}data: {LIST}\n\n".encode()] for opening in ("\u00ef\u00bb\u00bf", "\ufeff", "")]
    known += [[text.encode()] for text in SMUGGLED]
    for chunks in known + [a_hostile_stream(rng) for _ in range(60)]:
        upstream.script(lambda r, chunks=chunks: Answer(
            200, [("content-type", "text/event-stream")], chunks))
        body, _ = modern({"jsonrpc": "2.0", "id": 5, "method": "tools/list", "params": {}})
        conn = http.client.HTTPConnection("127.0.0.1", lists.port, timeout=10)
        try:
            data = json.dumps(body).encode()
            conn.putrequest("POST", "/mcp", skip_accept_encoding=True)
            for k, v in body_headers(alice, method="tools/list") + [("content-length", str(len(data)))]:
                conn.putheader(k, v)
            conn.endheaders(data)
            resp = conn.getresponse()
            try:
                got = resp.read()
            except http.client.IncompleteRead as cut:
                got = cut.partial
        finally:
            conn.close()
        bodies.append((b"".join(chunks), got))
    typescript = typescript_sdk_events([got for _, got in bodies] + [sent for sent, _ in bodies])
    # The control: read straight from the upstream, these streams do hand both clients the
    # hidden tools (the TypeScript one through `ï»¿data:` too).
    for client, raw_reads in (("python", [python_sdk_events(sent, False) for sent, _ in bodies]),
                              ("python-1.x", [python_mcp1_events(sent, False) for sent, _ in bodies]),
                              ("typescript", typescript[2 * len(bodies)::2])):
        assert any(HIDDEN[0] in e for events in raw_reads for e in events), client
    # Each smuggling stream hands the 1.x client the hidden tools when read unfiltered.
    smuggling = [sent for sent, _ in bodies if sent.decode(errors="replace") in SMUGGLED]
    assert len(smuggling) == len(SMUGGLED)
    assert all(any(HIDDEN[0] in e for e in python_mcp1_events(sent, False)) for sent in smuggling)
    assert any(sent.startswith("\u00ef\u00bb\u00bf".encode()) and any(HIDDEN[0] in e for e in events)
               for (sent, _), events in zip(bodies, typescript[2 * len(bodies)::2]))
    read = 0
    for k, (sent, got) in enumerate(bodies):
        for bytewise in (False, True):
            for client, events in (("python", python_sdk_events(got, bytewise)),
                                   ("python-1.x", python_mcp1_events(got, bytewise)),
                                   ("typescript", typescript[2 * k + bytewise])):
                for event in events:
                    assert not any(n in event for n in HIDDEN), (client, bytewise, sent, got)
                    read += "get_customer" in event
    assert read > 0  # the control: some spellings are read, filtered
