"""MCP 2026-07-28 through real Envoy + mcp-guard, with the official Python SDK on both sides in
2026-07-28 mode: discovery, a filtered list made private for shared caches, a subscription
(allowed and refused), a multi round-trip tool call, `Mcp-Param-*` headers checked against the
body, declared protocol versions that disagree, the tasks extension's methods, and trace ids in
the audit trail."""

import asyncio
import json
import subprocess
import time

import anyio
import httpx2
import pytest

import harness
import keys
from stack import PROTOCOL, Upstream2026, modern
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp_types import ElicitResult

ISSUER = "https://idp.example"
POLICY_DENIED = -31403
HEADER_MISMATCH = -32020

POLICY = {
    "name": "crm-2026",
    "version": "1",
    "default": "deny",
    "rules": [
        {"name": "discover", "allow": "mcp.method in ['server/discover', 'tools/list', 'prompts/list', "
                                      "'resources/list', 'resources/templates/list']"},
        # Clients on earlier revisions (the TypeScript SDK's newest is 2025-11-25) still connect.
        {"name": "connect", "allow": "mcp.method in ['initialize', 'notifications/initialized', 'ping']"},
        {"name": "read", "allow": "mcp.method == 'resources/read' && mcp.resource.uri.startsWith('crm://')"},
        {"name": "tools", "allow": "mcp.tool.name in ['search_customers', 'get_customer', 'echo', "
                                   "'regional_report', 'confirm_delete', 'touch_customer']"},
        {"name": "admins-delete", "allow": "mcp.tool.name == 'delete_customer' && 'admins' in jwt.groups"},
        # A multi round-trip retry is decided as the call it retries, and the policy reads what it
        # answers: confirming a deletion is only forwarded when the user accepted.
        {"name": "confirmed-only",
         "deny": "mcp.tool.name == 'confirm_delete' && mcp.input.retry"
                 " && !(has(mcp.input.responses.confirm) && mcp.input.responses.confirm.action == 'accept')"},
        {"name": "listen-crm-only",
         "allow": "mcp.method == 'subscriptions/listen'"
                  " && mcp.subscription.resources.all(u, u.startsWith('crm://'))"
                  " && !('taskIds' in mcp.subscription.notifications)"},
        {"name": "own-tasks", "allow": "mcp.method in ['tasks/get', 'tasks/update', 'tasks/cancel']"
                                       " && mcp.task.id.startsWith(jwt.sub + '-')"},
    ],
}


class Stack2026:
    def __init__(self, workdir):
        self.port = harness.free_port()
        self.resource = f"http://127.0.0.1:{self.port}/mcp"
        self.issuer = keys.Issuer(ISSUER, self.resource, algs=("RS256",))
        self.server = Upstream2026(workdir)
        issuers = [{"issuer": ISSUER, "audiences": [self.resource], "algorithms": ["RS256"],
                    "jwks": self.issuer.jwks()}]
        config = harness.plugin_config(issuers, POLICY, self.resource)
        try:
            self.envoy = harness.Envoy(workdir, config, self.server.port, port=self.port)
        except Exception:
            self.server.stop()
            raise

    def stop(self):
        self.envoy.stop()
        self.server.stop()

    def token(self, sub, groups=()):
        return self.issuer.token(sub, groups=list(groups))

    def post(self, body, token, headers=None, raw_headers=False):
        h = {"content-type": "application/json", "accept": "application/json, text/event-stream",
             "authorization": f"Bearer {token}"}
        if not raw_headers:
            body, envelope = modern(body)
            h.update(envelope)
        h.update(headers or {})
        return httpx2.post(self.envoy.url, content=json.dumps(body), headers=h, timeout=10)

    def audit(self, sub, count=1, timeout=10.0, **match):
        """Audit records of `sub` (and other exact field matches), waiting for `count`."""
        end = time.monotonic() + timeout
        while True:
            found = [r for r in self.envoy.audit() if r.get("sub") == sub
                     and all(r.get(k) == v for k, v in match.items())]
            if len(found) >= count or time.monotonic() > end:
                return found
            time.sleep(0.1)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack2026(tmp_path_factory.mktemp("proto2026"))
    yield s
    s.stop()


def client(stack, token, **kw):
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    return Client(streamable_http_client(stack.envoy.url, http_client=http), mode=PROTOCOL, **kw)


def sse_result(response):
    """The JSON-RPC message of a JSON or single-event SSE answer."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        data = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
        return json.loads(data[-1])
    return response.json()


def test_an_sdk_client_in_2026_mode_gets_its_filtered_list_as_private(stack):
    """Discovery and tools/list with the SDK: the list is filtered for the caller, and its
    cacheScope is private although the server said public; ttlMs is kept."""
    token = stack.token("alice", groups=["sales"])

    async def session():
        async with client(stack, token) as c:
            tools = await c.list_tools(cache_mode="bypass")
            names = [t.name for t in tools.tools]
            assert "get_customer" in names and "delete_customer" not in names
            assert tools.cache_scope == "private"
            assert tools.ttl_ms == 60000
            ok = await c.call_tool("get_customer", {"customer_id": "c-100"})
            assert "Ada Lovelace" in ok.content[0].text

    asyncio.run(session())
    listing = stack.audit("alice", method="tools/list")[0]
    assert listing["decision"] == "allow" and listing["hidden"] == 1
    assert listing["protocol_version"] == PROTOCOL


def test_a_shared_cache_never_sees_a_public_filtered_list(stack):
    """Two callers behind one shared cache: each one's list is marked private (even the admin's,
    from which nothing was hidden), so a cache that honours cacheScope never hands one caller's
    list to the other."""
    seen = {}
    for sub, groups in (("alice", ["sales"]), ("root", ["admins"])):
        r = stack.post({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, stack.token(sub, groups))
        assert r.status_code == 200
        result = sse_result(r)["result"]
        assert result["cacheScope"] == "private", sub
        assert result["ttlMs"] == 60000
        seen[sub] = {t["name"] for t in result["tools"]}
    assert "delete_customer" in seen["root"] and "delete_customer" not in seen["alice"]


def test_a_subscription_is_governed_by_its_resources(stack):
    """subscriptions/listen: allowed for crm:// resources (notifications arrive through the
    filter), refused for others with a JSON-RPC error and no stream."""
    token = stack.token("sam", groups=["sales"])
    got = []

    async def session():
        async with client(stack, token) as listener, client(stack, token) as actor:
            async with listener.listen(resource_subscriptions=["crm://customers/c-100"]) as sub:
                await actor.call_tool("touch_customer", {"customer_id": "c-100"})
                with anyio.fail_after(10):
                    async for event in sub:
                        got.append(event)
                        break
            with pytest.raises(MCPError) as refused:
                async with listener.listen(resource_subscriptions=["file:///etc/passwd"]):
                    pass
            assert refused.value.code == POLICY_DENIED
            assert "subscriptions/listen" in refused.value.message

    asyncio.run(session())
    assert got and "crm://customers/c-100" in str(got[0])
    records = stack.audit("sam", count=2, method="subscriptions/listen")
    assert sorted(r["decision"] for r in records) == ["allow", "deny"]
    denied = [r for r in records if r["decision"] == "deny"][0]
    assert "rule" not in denied and denied["reason"] == "policy_denied"
    assert "no rule matched" in denied["detail"]


def test_a_subscription_ends_when_its_token_expires(stack):
    """A stream outlives nothing that let it start: once the token that opened a subscription
    has expired (here: `exp` already past, accepted for a few seconds more within the 60 s
    clock skew), the next event does not reach the caller; the stream is cut and audited."""
    token = stack.issuer.token("tess", ttl=-54, groups=["sales"])
    actor = stack.token("bob", groups=["sales"])
    got, refused = [], {}

    async def session():
        async with client(stack, actor) as other:
            try:
                async with client(stack, token) as listener:
                    async with listener.listen(
                            resource_subscriptions=["crm://customers/c-200"]) as sub:
                        await anyio.sleep(8)
                        refused["status"] = stack.post(
                            {"jsonrpc": "2.0", "id": 9, "method": "tools/list"}, token).status_code
                        await other.call_tool("touch_customer", {"customer_id": "c-200"})
                        with anyio.move_on_after(5):
                            async for event in sub:
                                got.append(event)
                                break
            except Exception:  # the cut stream (and the expired token) end the client's session
                pass

    asyncio.run(session())
    assert refused["status"] == 401, "the token has expired for new requests"
    assert not got, f"an event reached the caller after its token expired: {got}"
    cut = stack.audit("tess", reason="token_ended_mid_stream")
    assert cut and cut[0]["decision"] == "error", stack.audit("tess", count=9, timeout=0)
    assert "token expired" in cut[0]["detail"]


def test_a_multi_round_trip_call_is_decided_as_the_call_it_retries(stack):
    """confirm_delete answers input_required; the SDK client asks the user and retries with
    inputResponses and the requestState it got (a handle for this caller), and the server gets
    its own state back (its tool says "deleted" only then). A retry that declines is denied by
    the policy, which reads the answer."""
    token = stack.token("mia", groups=["sales"])

    def answering(action):
        async def elicit(_ctx, _params):
            return ElicitResult(action=action, content={"sure": action == "accept"})
        return elicit

    async def session():
        async with client(stack, token, elicitation_callback=answering("accept")) as c:
            done = await c.call_tool("confirm_delete", {"customer_id": "c-200"})
            assert done.content[0].text == "deleted c-200"
        async with client(stack, token, elicitation_callback=answering("decline")) as c:
            with pytest.raises(MCPError) as denied:
                await c.call_tool("confirm_delete", {"customer_id": "c-200"})
            assert denied.value.code == POLICY_DENIED
            assert "confirmed-only" in denied.value.message

    asyncio.run(session())
    calls = stack.audit("mia", count=4, tool="confirm_delete")
    assert [r["decision"] for r in calls] == ["allow", "allow", "allow", "deny"]
    assert calls[-1]["rule"] == "confirmed-only"


def test_a_request_state_is_usable_by_its_caller_only(stack):
    """The server cannot bind a requestState to the principal (it sees one service key), so the
    filter does: the client gets a handle bound to its caller, server and call. Another caller
    replaying it, the same caller retrying another tool with it, or the server's raw state are
    refused -32602 and never reach the server."""
    mia, eve = stack.token("mia", groups=["sales"]), stack.token("eve", groups=["sales"])
    call = {"jsonrpc": "2.0", "id": 31, "method": "tools/call",
            "params": {"name": "confirm_delete", "arguments": {"customer_id": "c-300"}}}
    first = sse_result(stack.post(call, mia))
    assert first["result"]["resultType"] == "input_required", first
    sealed = first["result"]["requestState"]
    # The gateway's handle, then what the server wrote (the SDK server protects its own state).
    handle, raw = sealed.split("~", 1)
    assert handle.startswith("mg1.") and raw, sealed

    def retry(token, state, name="confirm_delete", id=32):
        body = json.loads(json.dumps(call))
        body["id"] = id
        body["params"]["name"] = name
        body["params"]["inputResponses"] = {"confirm": {"action": "accept"}}
        body["params"]["requestState"] = state
        return stack.post(body, token)

    before = len(stack.server.requests())
    for token, state, name, sub in [(eve, sealed, "confirm_delete", "eve"),
                                    (mia, sealed, "echo", "mia"),
                                    (mia, raw, "confirm_delete", "mia")]:
        r = retry(token, state, name)
        assert r.status_code == 200, r.text
        assert r.json()["error"]["code"] == -32602, r.text
        assert "requestState" in r.json()["error"]["message"]
    assert len(stack.server.requests()) == before, "no refused retry reached the server"
    refused = stack.audit("eve", reason="request_state_refused")
    assert refused and refused[0]["detail"] == "request_state_of_another_caller", refused
    assert len(stack.audit("mia", count=2, reason="request_state_refused")) == 2

    # The server's tool answers "deleted" only when its own state came back.
    done = sse_result(retry(mia, sealed, id=33))
    assert done["result"]["content"][0]["text"] == "deleted c-300", done


def test_parameter_headers_must_match_the_body(stack):
    """Mcp-Param-Region (x-mcp-header) mirrors `region`: the SDK client's call passes; a header
    that says another region than the body is refused 400 -32020, audited, and not forwarded."""
    token = stack.token("pat", groups=["sales"])

    async def session():
        async with client(stack, token) as c:
            r = await c.call_tool("regional_report", {"region": "us-west1", "query": "q"})
            assert r.content[0].text == "report for 'q' in us-west1"

    asyncio.run(session())
    before = len(stack.server.requests())
    body = {"jsonrpc": "2.0", "id": 9, "method": "tools/call",
            "params": {"name": "regional_report", "arguments": {"region": "us-west1", "query": "q"}}}
    r = stack.post(body, token, headers={"mcp-param-region": "eu-west1"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == HEADER_MISMATCH
    missing = stack.post(body, token)
    assert missing.status_code == 400 and missing.json()["error"]["code"] == HEADER_MISMATCH
    encoded = stack.post(body, token, headers={"mcp-param-region": "=?base64?dXMtd2VzdDE=?="})
    assert encoded.status_code == 200
    assert len(stack.server.requests()) == before + 1, "only the matching call was forwarded"
    # (The SDK client's own first call may have been refused too, and retried after listing the
    # tools again, when an earlier test had already shown this tool's declarations to the filter.)
    refused = stack.audit("pat", count=2, tool="regional_report", decision="deny", jsonrpc_id=9)
    assert len(refused) == 2
    assert all(x["error_code"] == HEADER_MISMATCH and x["status"] == 400 for x in refused)
    assert refused[0]["reason"] == "header_mismatch"
    assert "Mcp-Param-region" in refused[0]["detail"]

    # An integer is taken as the clients write it (the SDK client's call passes), not as any
    # text that parses to it: a router reading Mcp-Param-Shard as text would see `007` and `7`.
    async def sharded():
        async with client(stack, token) as c:
            r = await c.call_tool("regional_report", {"region": "us-west1", "query": "q", "shard": 7})
            assert r.content[0].text == "report for 'q' in us-west1"

    asyncio.run(sharded())
    body["id"] = 10
    body["params"]["arguments"]["shard"] = 7
    before = len(stack.server.requests())
    for spelling in ["007", "+7", "7e0", "7.0"]:
        r = stack.post(body, token, headers={"mcp-param-region": "us-west1", "mcp-param-shard": spelling})
        assert r.status_code == 400 and r.json()["error"]["code"] == HEADER_MISMATCH, spelling
    r = stack.post(body, token, headers={"mcp-param-region": "us-west1", "mcp-param-shard": "7"})
    assert r.status_code == 200, r.text
    assert len(stack.server.requests()) == before + 1


def test_declared_versions_that_disagree_are_refused(stack):
    token = stack.token("vic", groups=["sales"])
    before = len(stack.server.requests())
    r = stack.post({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}, token,
                   headers={"mcp-protocol-version": "2025-11-25"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == HEADER_MISMATCH
    assert len(stack.server.requests()) == before
    record = stack.audit("vic", method="tools/list")[0]
    assert record["decision"] == "deny" and record["status"] == 400
    assert record["reason"] == "header_mismatch" and "does not match" in record["detail"]


def test_task_requests_are_governed_by_their_task_id(stack):
    """tasks/get of the tasks extension: Mcp-Name must mirror params.taskId, and a task id the
    filter did not seal for this caller (here, ids this server never issued, sent raw) is the
    spec's unknown task: nothing forwarded (tests/e2e/test_tasks.py has tasks that exist)."""
    token = stack.token("tom", groups=["sales"])
    before = len(stack.server.requests())
    mine = stack.post({"jsonrpc": "2.0", "id": 4, "method": "tasks/get", "params": {"taskId": "tom-1"}},
                      token, headers={"mcp-name": "tom-1"})
    assert mine.status_code == 200 and mine.json()["error"]["code"] == -32602
    assert mine.json()["error"]["message"] == "Failed to retrieve task: Task not found"
    theirs = stack.post({"jsonrpc": "2.0", "id": 5, "method": "tasks/get", "params": {"taskId": "ann-1"}},
                        token, headers={"mcp-name": "ann-1"})
    assert theirs.status_code == 200 and theirs.json()["error"]["code"] == -32602
    wrong = stack.post({"jsonrpc": "2.0", "id": 6, "method": "tasks/get", "params": {"taskId": "tom-1"}},
                       token, headers={"mcp-name": "tom-2"})
    assert wrong.status_code == 400 and wrong.json()["error"]["code"] == HEADER_MISMATCH
    assert len(stack.server.requests()) == before
    records = stack.audit("tom", count=3, method="tasks/get")
    assert [r["task_id"] for r in records] == ["tom-1", "ann-1", "tom-1"]
    assert [r["decision"] for r in records] == ["deny", "deny", "deny"]
    assert [r["reason"] for r in records][:2] == ["task_not_found"] * 2
    assert [r["detail"] for r in records][:2] == ["task_not_sealed"] * 2


def test_trace_ids_are_recorded(stack):
    token = stack.token("tia", groups=["sales"])
    body, headers = modern({"jsonrpc": "2.0", "id": 7, "method": "tools/list"})
    body["params"]["_meta"]["traceparent"] = "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"
    headers["traceparent"] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    r = stack.post(body, token, headers=headers, raw_headers=True)
    assert r.status_code == 200
    record = stack.audit("tia", method="tools/list")[0]
    assert record["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert record["span_id"] == "00f067aa0ba902b7"
    assert "header_trace_id" not in record
    # The header alone, and a malformed one ignored.
    stack.post({"jsonrpc": "2.0", "id": 8, "method": "tools/list"}, token,
               headers={"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"})
    stack.post({"jsonrpc": "2.0", "id": 9, "method": "tools/list"}, token,
               headers={"traceparent": "00-XYZ-00f067aa0ba902b7-01"})
    records = stack.audit("tia", count=3, method="tools/list")
    assert records[1]["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert "trace_id" not in records[2]


def test_the_typescript_sdk_client_on_its_newest_protocol(stack):
    """The official TypeScript SDK client (pinned; its newest protocol is 2025-11-25) against the
    same dual-era server: it connects, sees its filtered list, is allowed and denied as the
    policy says; its list keeps the shape of its revision (no cacheScope is invented)."""
    token = stack.token("ted", groups=["sales"])
    script = harness.PEERS / "ts-client" / "client.mjs"
    done = subprocess.run(["node", str(script), stack.envoy.url, token], capture_output=True,
                          text=True, timeout=60, cwd=script.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["protocol"] == "2025-11-25"
    assert "get_customer" in seen["tools"] and "delete_customer" not in seen["tools"]
    assert seen["allowed"] and "Ada Lovelace" in seen["allowed"]
    assert seen["denied"]["code"] == POLICY_DENIED
    assert stack.audit("ted", method="initialize")[0]["decision"] == "allow"
    calls = stack.audit("ted", count=2, method="tools/call")
    # Access log lines come as streams end: the refused call's may come first.
    assert sorted((r["tool"], r["decision"]) for r in calls) == [("delete_customer", "deny"),
                                                                 ("get_customer", "allow")]
    assert all(r["protocol_version"] == "2025-11-25" for r in calls)


def test_a_replica_that_never_saw_the_listing_asks_the_server_once(tmp_path):
    """Mcp-Param-* headers are checked against the tool's x-mcp-header declarations, learned from
    tools/list answers. A replica that has not seen the listing (another one served it, or this
    one just started) asks the server itself, with the service key, before deciding: the call
    gets the answer any replica gives. At most once per ten seconds: a tool the server does not
    list cannot make it ask again and again."""
    fresh = Stack2026(tmp_path)
    try:
        token = fresh.token("ria", groups=["sales"])
        body = {"jsonrpc": "2.0", "id": 11, "method": "tools/call",
                "params": {"name": "regional_report", "arguments": {"region": "us-west1", "query": "q"}}}
        r = fresh.post(body, token, headers={"mcp-param-region": "us-west1"})
        assert r.status_code == 200, r.text
        assert "report for 'q' in us-west1" in json.dumps(sse_result(r))
        def listings():
            return [q for q in fresh.server.requests()
                    if ("mcp-method", "tools/list") in [(k.lower(), v) for k, v in q["headers"]]]


        assert len(listings()) == 1, fresh.server.requests()
        assert ["x-api-key", harness.SERVICE_KEY] in listings()[0]["headers"], "with the service key"

        # Now known here: a header that disagrees with the body is refused without asking again.
        wrong = fresh.post(body, token, headers={"mcp-param-region": "eu-west1"})
        assert wrong.status_code == 400 and wrong.json()["error"]["code"] == HEADER_MISMATCH
        unknown = dict(body, params={"name": "no_such_tool", "arguments": {"region": "x"}})
        r = fresh.post(unknown, token, headers={"mcp-param-region": "x"})
        assert r.status_code == 400 and "not seen listed" in r.json()["error"]["message"]
        assert len(listings()) == 1, "asked once"
    finally:
        fresh.stop()


def test_a_pinned_tool_is_not_called_blind_when_the_server_will_not_list(tmp_path):
    """Pins under 2026-07-28: a replica with no view of the server's tools asks the server for
    them before a pinned tool's call. When that request fails, the call is refused (503
    pins_unverified), not forwarded unchecked; a second later the next call asks again, and a
    listing showing a changed definition refuses the call as a drift."""
    definition = {"name": "get_customer", "description": "Get a customer.",
                  "inputSchema": {"type": "object", "properties": {"id": {"type": "string"}}}}
    listing = {"answer": harness.Answer(503, [("content-type", "text/plain")], b"busy")}
    calls = []

    def answer(request):
        message = request["json"] or {}
        if message.get("method") == "tools/list":
            return listing["answer"]
        calls.append(message)
        return harness.Answer(200, [("content-type", "application/json")],
                              {"jsonrpc": "2.0", "id": message.get("id"), "result": {"content": []}})

    upstream = harness.ScriptedUpstream(answer)
    port = harness.free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    issuer = keys.Issuer(ISSUER, resource, algs=("RS256",))
    config = harness.plugin_config(
        [{"issuer": ISSUER, "audiences": [resource], "algorithms": ["RS256"], "jwks": issuer.jwks()}],
        POLICY, resource)
    config["servers"][0]["pins"] = {"mode": "enforce", "tools": {"get_customer": "sha256:" + "0" * 64}}
    envoy = harness.Envoy(tmp_path, config, upstream.port, port=port)
    try:
        body, envelope = modern({"jsonrpc": "2.0", "id": 21, "method": "tools/call",
                                 "params": {"name": "get_customer", "arguments": {"id": "c-1"}}})
        headers = {"content-type": "application/json", "accept": "application/json, text/event-stream",
                   "authorization": f"Bearer {issuer.token('ria', groups=['sales'])}", **envelope}

        def call():
            return httpx2.post(envoy.url, content=json.dumps(body), headers=headers, timeout=10)

        r = call()
        assert r.status_code == 503, r.text
        assert "could not be read" in r.json()["error"]["message"]
        assert calls == [], "never forwarded"
        time.sleep(1.2)
        listing["answer"] = harness.Answer(
            200, [("content-type", "application/json")],
            {"jsonrpc": "2.0", "id": "mcp-guard-declarations", "result": {"tools": [definition]}})
        r = call()
        assert r.status_code == 200 and r.json()["error"]["code"] == POLICY_DENIED, r.text
        assert "changed since it was approved" in r.json()["error"]["message"]
        assert calls == []
        deadline = time.time() + 10
        while True:
            reasons = [r.get("reason") for r in envoy.audit() if r.get("tool") == "get_customer"]
            if len(reasons) >= 2 or time.time() > deadline:
                break
            time.sleep(0.2)
        assert reasons == ["pins_unverified", "pin_drift"], envoy.audit()
    finally:
        envoy.stop()
        upstream.stop()
