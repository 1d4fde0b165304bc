"""Policy through real Envoy: discovery filtered per caller (SSE and JSON), argument rules,
every MCP method governed, and denials that keep the session alive."""

import httpx2
import pytest
from mcp import MCPError
from stack import Stack, mcp_client, run

SALES_SEES = {"search_customers", "get_customer", "echo"}
ADMIN_SEES = SALES_SEES | {"delete_customer", "push_branch"}


@pytest.fixture(scope="module", params=["sse", "json"])
def any_stack(request, tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp(f"policy-{request.param}"), json_response=request.param == "json")
    yield s
    s.stop()


def listed(stack, token):
    async def session():
        async with mcp_client(stack.envoy.url, token) as client:
            return {t.name for t in (await client.list_tools()).tools}

    return run(session())


def test_tools_list_shows_each_caller_only_what_it_may_call(any_stack):
    alice = any_stack.token("list-alice", groups=["sales"])
    bob = any_stack.token("list-bob", groups=["engineering", "admins"])
    assert listed(any_stack, alice) == SALES_SEES
    assert listed(any_stack, bob) == ADMIN_SEES
    record = any_stack.audit_for("list-alice", method="tools/list")[0]
    assert record["hidden"] == 2
    assert "hidden" not in any_stack.audit_for("list-bob", method="tools/list")[0]


def test_raw_list_response_keeps_its_shape(any_stack):
    """What a client gets is the server's own response minus hidden entries: ids, annotations and
    schemas untouched, and valid for the content type it came in."""
    token = any_stack.token("raw-lister", groups=["sales"])
    r = any_stack.post({"jsonrpc": "2.0", "id": "list-1", "method": "tools/list"}, token=token)
    assert r.status_code == 200
    if r.headers["content-type"].startswith("text/event-stream"):
        data = [line[5:].strip() for line in r.text.splitlines() if line.startswith("data:")]
        import json
        message = json.loads(data[-1])
    else:
        assert "content-length" not in r.headers or int(r.headers["content-length"]) == len(r.content)
        message = r.json()
    assert message["id"] == "list-1"
    tools = {t["name"]: t for t in message["result"]["tools"]}
    assert set(tools) == SALES_SEES
    assert tools["get_customer"]["annotations"]["readOnlyHint"] is True
    assert "customer_id" in tools["get_customer"]["inputSchema"]["properties"]


def test_argument_rules(any_stack):
    eng = any_stack.token("arg-eng", groups=["engineering"])

    async def session():
        async with mcp_client(any_stack.envoy.url, eng) as client:
            ok = await client.call_tool("push_branch", {"owner": "acme", "repo": "api", "branch": "main"})
            assert "pushed acme/api@main" in ok.content[0].text
            with pytest.raises(MCPError) as forced:
                await client.call_tool("push_branch", {"owner": "acme", "repo": "api", "branch": "main",
                                                       "force": True})
            assert forced.value.code == -31403
            # The session is still usable after the denial.
            assert (await client.call_tool("echo", {"text": "still here"})).content[0].text == "still here"

    run(session())
    calls = any_stack.audit_for("arg-eng", count=3, method="tools/call")
    assert [r["decision"] for r in calls] == ["allow", "deny", "allow"]


def test_a_force_flag_the_server_would_read_as_true_is_not_a_plain_push(any_stack):
    """The Python SDK's server validates arguments leniently (pydantic): `"true"`, `1`, `"yes"`
    are `force=True` to it. The policy must not see those as "not forced" and let a force-push
    through; a value the server reads as false (`false`, absent) is an ordinary push."""
    eng = any_stack.token("arg-eng-forced", groups=["engineering"])
    base = {"owner": "acme", "repo": "api", "branch": "main"}

    async def session():
        async with mcp_client(any_stack.envoy.url, eng) as client:
            for force in ["true", 1, "yes", "on", "1", "True"]:
                with pytest.raises(MCPError) as forced:
                    result = await client.call_tool("push_branch", {**base, "force": force})
                    # Reached only if the filter let it through: show what the server did.
                    pytest.fail(f"force={force!r} was forwarded: {result.content[0].text}")
                assert forced.value.code == -31403, force
            ok = await client.call_tool("push_branch", {**base, "force": False})
            assert ok.content[0].text == "pushed acme/api@main"

    run(session())


def test_unknown_and_server_only_methods_are_denied(any_stack):
    token = any_stack.token("methods", groups=["admins"])
    for method in ("tools/delete_everything", "sampling/createMessage", "roots/list"):
        r = any_stack.post({"jsonrpc": "2.0", "id": 5, "method": method, "params": {}}, token=token)
        assert r.status_code == 200, method
        assert r.json()["error"]["code"] == -31403, method


def test_a_denied_notification_is_refused_over_http(any_stack):
    token = any_stack.token("notifier", groups=["sales"])
    r = any_stack.post({"jsonrpc": "2.0", "method": "notifications/made_up"}, token=token)
    assert r.status_code == 403
    assert r.json()["error"]["code"] == -31403


def test_metadata_and_initialize_need_no_tool_rules(any_stack):
    token = any_stack.token("init-only", groups=[])

    async def session():
        async with mcp_client(any_stack.envoy.url, token) as client:
            return {t.name for t in (await client.list_tools()).tools}

    # A caller in no group connects fine and simply sees no tools it may not call.
    assert run(session()) == SALES_SEES
    r = httpx2.get(f"http://127.0.0.1:{any_stack.port}/.well-known/oauth-protected-resource/mcp")
    assert r.status_code == 200


def test_hide_mode_answers_unknown_tool_and_audits_a_denial(tmp_path):
    """`on_deny: hide`: the caller cannot tell a forbidden tool from a missing one, while the
    audit still records the denial and its rule."""
    import yaml
    import harness
    policy = yaml.safe_load((harness.ROOT / "policies" / "demo.yaml").read_text())
    policy["on_deny"] = "hide"
    path = tmp_path / "hidden.yaml"
    path.write_text(yaml.safe_dump(policy))
    s = Stack(tmp_path, policy=str(path))
    try:
        token = s.token("hider", groups=["sales"])
        r = s.post({"jsonrpc": "2.0", "id": 4, "method": "tools/call",
                    "params": {"name": "delete_customer", "arguments": {"customer_id": "c-1"}}}, token=token)
        assert r.status_code == 200
        error = r.json()["error"]
        assert error["code"] == -32602
        assert error["message"] == "Unknown tool: delete_customer"
        assert "data" not in error
        record = s.audit_for("hider", method="tools/call")[0]
        assert record["decision"] == "deny" and record["rule"] == "no-destructive"
    finally:
        s.stop()


def test_a_completion_is_decided_on_the_prompt_it_completes(tmp_path):
    """`completion/complete` draws values from the server's data for one prompt's (or resource
    template's) argument: a rule on that prompt holds for its completions too (official SDK
    client and server, real Envoy)."""
    import yaml
    import harness
    from mcp.types import PromptReference, ResourceTemplateReference
    policy = yaml.safe_load((harness.ROOT / "policies" / "demo.yaml").read_text())
    policy["rules"] += [
        {"name": "accounts-for-managers", "deny": 'mcp.prompt.name == "summarize_account" && !("managers" in jwt.groups)'},
        {"name": "complete", "allow": 'mcp.method == "completion/complete"'},
    ]
    path = tmp_path / "completions.yaml"
    path.write_text(yaml.safe_dump(policy))
    s = Stack(tmp_path, policy=str(path))
    try:
        async def complete(token, ref):
            async with mcp_client(s.envoy.url, token) as client:
                try:
                    result = await client.complete(ref, {"name": "customer_id", "value": "c-"})
                    return sorted(result.completion.values)
                except MCPError as e:
                    return e
        prompt = PromptReference(type="ref/prompt", name="summarize_account")
        manager = s.token("completing-manager", groups=["sales", "managers"])
        values = run(complete(manager, prompt))
        assert isinstance(values, list) and values and all(v.startswith("c-") for v in values), values
        seller = s.token("completing-seller", groups=["sales"])
        refused = run(complete(seller, prompt))
        assert isinstance(refused, MCPError) and refused.code == -31403, refused
        assert "accounts-for-managers" in str(refused)
        record = s.audit_for("completing-seller", method="completion/complete")[0]
        assert (record["decision"], record["prompt"]) == ("deny", "summarize_account")
        # The resource template's completions are not under that rule.
        template = ResourceTemplateReference(type="ref/resource", uri="crm://customers/{customer_id}")
        assert run(complete(seller, template)) == values
    finally:
        s.stop()


def test_a_resource_uri_cannot_dodge_a_rule_by_percent_encoding(tmp_path):
    """The Python SDK server decodes a template value (`crm://customers/%63-100` reads customer
    `c-100`); a rule compares the URI as text. A URI percent-encoding an unreserved character is
    refused before policy (-32602), so a deny on `crm://customers/c-100` holds."""
    import yaml
    import harness
    policy = yaml.safe_load((harness.ROOT / "policies" / "demo.yaml").read_text())
    policy["rules"] += [
        {"name": "read-customers", "allow": 'mcp.method == "resources/read" && mcp.resource.uri.startsWith("crm://customers/")'},
        {"name": "not-ada", "deny": 'mcp.resource.uri == "crm://customers/c-100"'},
    ]
    path = tmp_path / "resources.yaml"
    path.write_text(yaml.safe_dump(policy))
    s = Stack(tmp_path, policy=str(path))
    try:
        token = s.token("uri-reader", groups=["sales"])

        async def session():
            async with mcp_client(s.envoy.url, token) as client:
                ok = await client.read_resource("crm://customers/c-200")
                assert "Grace Hopper" in ok.contents[0].text
                with pytest.raises(MCPError) as denied:
                    await client.read_resource("crm://customers/c-100")
                assert denied.value.code == -31403
                for spelling in ["crm://customers/%63-100", "crm://customers/c%2D100", "crm://%63ustomers/c-100"]:
                    with pytest.raises(MCPError) as refused:
                        result = await client.read_resource(spelling)
                        pytest.fail(f"{spelling} was forwarded: {result.contents[0].text}")
                    assert refused.value.code == -32602, spelling
                # The session goes on.
                assert "Grace Hopper" in (await client.read_resource("crm://customers/c-200")).contents[0].text

        run(session())
    finally:
        s.stop()
