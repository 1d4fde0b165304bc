"""The foundation slice, end to end: a real MCP client and server through real Envoy + mcp-guard."""

import json
import time

import harness
import pytest
from stack import Stack, mcp_client, run
from mcp import MCPError

POLICY_DENIED = -31403


def header_values(request, name):
    return [v for k, v in request["headers"] if k.lower() == name]


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_session_with_allowed_and_denied_calls(stack, mode):
    """initialize (or discover), tools/list, an allowed call, a denied call, and the session lives on."""
    sub = f"alice-{mode}"
    token = stack.token(sub, groups=["sales"])

    async def session():
        async with mcp_client(stack.envoy.url, token, mode=mode) as client:
            tools = await client.list_tools()
            assert "get_customer" in [t.name for t in tools.tools]

            ok = await client.call_tool("get_customer", {"customer_id": "c-100"})
            assert not ok.is_error
            assert "Ada Lovelace" in ok.content[0].text

            with pytest.raises(MCPError) as denied:
                await client.call_tool("delete_customer", {"customer_id": "c-100"})
            assert denied.value.code == POLICY_DENIED
            assert "no-destructive" in denied.value.message
            assert "demo-crm" in denied.value.message
            assert denied.value.data["rule"] == "no-destructive"
            assert denied.value.data["policy"] == "demo-crm"

            # The denial did not end the session: the next call goes through.
            again = await client.call_tool("search_customers", {"query": "grace"})
            assert "Grace Hopper" in again.content[0].text

    run(session())

    calls = stack.audit_for(sub, count=3, method="tools/call")
    by_tool = {r["tool"]: r for r in calls}
    assert by_tool["get_customer"]["decision"] == "allow"
    assert by_tool["get_customer"]["rule"] == "read-only-tools"
    assert by_tool["get_customer"]["upstream_status"] == 200
    assert by_tool["delete_customer"]["decision"] == "deny"
    assert by_tool["delete_customer"]["rule"] == "no-destructive"
    assert by_tool["delete_customer"]["error_code"] == POLICY_DENIED
    assert by_tool["search_customers"]["decision"] == "allow"
    for record in calls:
        assert record["sub"] == sub
        assert record["iss"] == "https://idp.example"
        assert record["policy"] == "demo-crm"
    if mode == "legacy":
        assert stack.audit_for(sub, method="initialize")[0]["decision"] == "allow"
    assert stack.audit_for(sub, method="tools/list")[0]["rule"] == "connect-and-discover"


def test_upstream_sees_service_key_never_the_client_token(stack):
    token = stack.token("carol", groups=["sales"])
    before = len(stack.upstream_requests())
    r = stack.post({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                    "params": {"name": "echo", "arguments": {"text": "hi"}}},
                   token=token, headers={"x-api-key": "client-forged-key"})
    assert r.status_code == 200
    seen = stack.upstream_requests()[before:]
    assert len(seen) == 1
    assert header_values(seen[0], "x-api-key") == [harness.SERVICE_KEY]
    assert header_values(seen[0], "authorization") == []
    # And across everything the upstream ever received in this module:
    for request in stack.upstream_requests():
        assert header_values(request, "x-api-key") == [harness.SERVICE_KEY]
        assert not header_values(request, "authorization")
        assert all(token not in v for _, v in request["headers"])


def expected_challenge(stack, error=None):
    meta = f"http://127.0.0.1:{stack.port}/.well-known/oauth-protected-resource/mcp"
    prefix = f'error="{error}", ' if error else ""
    return f'Bearer {prefix}resource_metadata="{meta}"'


CALL = {"jsonrpc": "2.0", "id": 9, "method": "tools/call",
        "params": {"name": "get_customer", "arguments": {"customer_id": "c-100"}}}


def test_no_token_gets_401_with_resource_metadata(stack):
    before = len(stack.upstream_requests())
    r = stack.post(CALL)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == expected_challenge(stack)
    assert len(stack.upstream_requests()) == before
    assert stack.audit_for(reason="missing_token")[0]["status"] == 401


@pytest.mark.parametrize("case,reason", [
    ("expired", "expired"),
    ("wrong_audience", "wrong_audience"),
    ("unknown_key", "unknown_key"),
    ("forged_signature", "bad_signature"),
    ("wrong_issuer", "unknown_issuer"),
    ("not_yet_valid", "not_yet_valid"),
    ("garbage", "malformed"),
])
def test_bad_tokens_get_401_invalid_token(stack, case, reason):
    import keys
    sub = f"mallory-{case}"
    if case == "expired":
        token = stack.token(sub, ttl=-3600)
    elif case == "wrong_audience":
        token = stack.token(sub, aud="http://127.0.0.1:1/other")
    elif case == "unknown_key":
        token = keys.SigningKey("RS256").sign(stack.issuer.claims(sub))
    elif case == "forged_signature":
        # Same kid as a trusted key, signed by another key.
        token = keys.SigningKey("RS256", kid=stack.issuer.key("RS256").kid).sign(stack.issuer.claims(sub))
    elif case == "wrong_issuer":
        token = stack.token(sub, iss="https://evil.example")
    elif case == "not_yet_valid":
        token = stack.token(sub, nbf=2**31)
    else:
        token = "not.a.jwt"
    before = len(stack.upstream_requests())
    r = stack.post(CALL, token=token)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == expected_challenge(stack, "invalid_token")
    assert len(stack.upstream_requests()) == before
    records = stack.audit_for(reason=reason)
    assert records and records[-1]["decision"] == "deny" and records[-1]["status"] == 401


def upstream_idle_closes(stack) -> int:
    for line in stack.envoy.stats().splitlines():
        name, _, value = line.partition(": ")
        if name == "cluster.mcp_upstream.upstream_cx_idle_timeout":
            return int(value)
    return 0


def test_a_call_after_a_quiet_spell_reaches_the_server(stack):
    """The demo server (the Python SDK on uvicorn) closes an idle connection after 5 s. Envoy
    closes its idle connections to the server first (3 s, envoy/mcp-guard.yaml), so a call after
    a quiet spell goes out on a new connection rather than on one the server is closing, which
    came back as a 503 that never reached the server (once in the e2e run, after 4 s of quiet)."""
    token = stack.token("quiet", groups=["sales"])
    assert stack.post(CALL, token=token).status_code == 200
    closed = upstream_idle_closes(stack)
    time.sleep(3.5)
    assert upstream_idle_closes(stack) > closed
    r = stack.post(CALL, token=token)
    assert r.status_code == 200 and "Ada Lovelace" in r.text


def test_es256_tokens_are_accepted(stack):
    token = stack.token("dave", alg="ES256", groups=["sales"])
    r = stack.post(CALL, token=token)
    assert r.status_code == 200
    assert "Ada Lovelace" in r.text


def test_audience_may_be_a_list(stack):
    token = stack.token("erin", aud=["https://other.example", stack.resource])
    assert stack.post(CALL, token=token).status_code == 200


def test_protected_resource_metadata(stack):
    import httpx2
    for path in ("/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource"):
        r = httpx2.get(f"http://127.0.0.1:{stack.port}{path}")
        assert r.status_code == 200
        doc = r.json()
        assert doc["resource"] == stack.resource
        assert doc["authorization_servers"] == ["https://idp.example"]
        assert doc["bearer_methods_supported"] == ["header"]


@pytest.mark.parametrize("field,config_change", [
    ("issuers[0].audiences", lambda c: c["issuers"][0].pop("audiences")),
    ("servers[0].policy.rules[1].allow", lambda c: c["servers"][0]["policy"]["rules"][1].update(allow="mcp.method ==")),
    ("servers[0].policy.rules[0].allow", lambda c: c["servers"][0]["policy"]["rules"][0].update(allow="user.name == 'x'")),
    ("servers[0].credential.header", lambda c: c["servers"][0]["credential"].update(header="bad header")),
    ("issuers[0].jwks", lambda c: c["issuers"][0].update(jwks={"keys": []})),
])
def test_envoy_refuses_to_start_with_an_invalid_config(tmp_path, field, config_change):
    stack_config = json.loads(json.dumps(_valid_config()))
    config_change(stack_config)
    envoy = harness.Envoy(tmp_path, stack_config, upstream_port=9, wait=False)
    try:
        assert envoy.exit_code() != 0
        log = envoy.output()
        assert f"mcp-guard: rejected configuration: {field}" in log
    finally:
        envoy.stop()


def _valid_config():
    import keys
    issuer = keys.Issuer("https://idp.example", "http://127.0.0.1:1/mcp", algs=("RS256",))
    return harness.plugin_config(
        [{"issuer": issuer.issuer, "audiences": [issuer.audience], "jwks": issuer.jwks()}],
        harness.load_policy(harness.ROOT / "policies" / "demo.yaml"), issuer.audience)


def test_valid_config_starts(tmp_path):
    """The control for the refusal tests: the same config unchanged starts."""
    envoy = harness.Envoy(tmp_path, _valid_config(), upstream_port=9)
    envoy.stop()


def test_client_keeps_working_when_json_responses(tmp_path):
    """The same session through a server answering application/json instead of SSE."""
    s = Stack(tmp_path, json_response=True)
    try:
        token = s.token("frank", groups=["sales"])

        async def session():
            async with mcp_client(s.envoy.url, token) as client:
                assert (await client.call_tool("echo", {"text": "x"})).content[0].text == "x"
                with pytest.raises(MCPError):
                    await client.call_tool("delete_customer", {"customer_id": "c-1"})
                assert (await client.call_tool("echo", {"text": "y"})).content[0].text == "y"

        run(session())
    finally:
        s.stop()
