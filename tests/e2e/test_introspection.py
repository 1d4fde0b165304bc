"""Opaque access tokens by RFC 7662 introspection, through real Envoy against the real IdP (npm
oidc-provider with its introspection and revocation endpoints): allowed, cached (the IdP counts
its calls), concurrent requests sharing one call across worker VMs, a token revoked at the IdP
refused within the cache TTL (the time is measured and printed), and the IdP down: 503, never
401, unless a fresh cached answer exists."""

import asyncio
import base64
import concurrent.futures
import json
import time
import urllib.parse
import urllib.request

import anyio
import harness
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from stack import PROTOCOL, Upstream2026

POLICY = {"name": "sales-only", "version": "1", "default": "deny",
          "rules": [{"name": "sales", "allow": '"sales" in jwt.groups && "mcp:tools" in jwt.scopes'}]}
SECRET_ENV = "MCP_GUARD_INTROSPECTION_SECRET"


def envoy_template(tmp_path, env):
    """envoy/mcp-guard.yaml with `vm_config.environment_variables` (the client secret)."""
    text = (harness.ROOT / "envoy" / "mcp-guard.yaml").read_text()
    marker = "                  code: { local: { filename: ${WASM} } }\n"
    assert marker in text
    text = text.replace(marker, marker + f"                  environment_variables: {json.dumps({'key_values': env})}\n")
    path = tmp_path / "envoy-with-env.yaml"
    path.write_text(text)
    return str(path)


def wait_record(envoy, reason, timeout=10.0):
    """The last audit record with this reason (the access log is flushed every 0.5 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [r for r in envoy.audit() if r.get("reason") == reason]
        if found:
            return found[-1]
        time.sleep(0.1)
    raise AssertionError(f"no audit record with reason {reason}")


class IntrospectionStack:
    def __init__(self, tmp_path, *, cache_ttl=2, auth="client_secret_basic", client="mcp-guard",
                 secret="test-only-mcp-guard-secret", server=None):
        self.idp = harness.Idp(tmp_path)
        self.server = server(tmp_path) if server else harness.McpServer(tmp_path, stateless=True)
        self.port = harness.free_port()
        self.resource = f"http://127.0.0.1:{self.port}/mcp"
        issuer = {"issuer": self.idp.url, "audiences": [self.resource], "algorithms": ["RS256"],
                  "discovery": True, "cluster": "idp", "typ": "at+jwt",
                  "introspect": "opaque",
                  "introspection": {"endpoint": f"{self.idp.url}/token/introspection",
                                    "client_id": client, "client_secret_from_env": SECRET_ENV,
                                    "auth": auth, "cache_ttl_seconds": cache_ttl,
                                    "negative_ttl_seconds": 1, "timeout_ms": 1000}}
        config = harness.plugin_config([issuer], POLICY, self.resource)
        try:
            self.envoy = harness.Envoy(tmp_path, config, self.server.port, port=self.port,
                                       template=envoy_template(tmp_path, {SECRET_ENV: secret}),
                                       values={"EXTRA_CLUSTERS": harness.cluster_yaml("idp", self.idp.port)})
        except Exception:
            self.server.stop()
            self.idp.stop()
            raise

    def opaque(self, client="sales-agent"):
        token = self.idp.token(client, self.resource, "mcp:tools", token_format="opaque")
        assert token.count(".") != 2, "an opaque token"
        return token

    def hits(self):
        return self.idp._call("GET", "/_test/introspection-hits")["count"]

    def revoke(self, token, client="sales-agent"):
        data = urllib.parse.urlencode({"token": token, "token_type_hint": "access_token"}).encode()
        req = urllib.request.Request(f"{self.idp.url}/token/revocation", data=data)
        basic = base64.b64encode(f"{client}:test-only-{client}-secret".encode()).decode()
        req.add_header("authorization", f"Basic {basic}")
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200

    def call(self, token, id=1):
        return httpx2.post(self.envoy.url, timeout=15,
                           json={"jsonrpc": "2.0", "id": id, "method": "tools/call",
                                 "params": {"name": "echo", "arguments": {"text": "x"}}},
                           headers={"authorization": f"Bearer {token}", "mcp-protocol-version": "2025-11-25",
                                    "accept": "application/json, text/event-stream"})

    def stop(self):
        self.envoy.stop()
        self.server.stop()
        self.idp.stop()


def test_opaque_token_is_introspected_cached_and_refused_soon_after_revocation(tmp_path):
    s = IntrospectionStack(tmp_path, cache_ttl=2)
    try:
        token = s.opaque()
        r = s.call(token)
        assert r.status_code == 200, r.text
        assert s.hits() == 1
        record = s.envoy.wait_audit(1)[-1]
        assert record["decision"] == "allow" and record["client_id"] == "sales-agent"
        assert record["groups"] == ["sales"]  # the answer's claims reach CEL and the audit

        # Cached: the IdP is not asked again.
        for i in range(5):
            assert s.call(token, id=i).status_code == 200
        assert s.hits() == 1
        # Served from this worker's cache, or from the answer a worker VM shared: which one
        # depends on the worker thread Envoy gives each connection. The first request, resumed
        # once the answer arrived, read it from shared data too: 1 + 5.
        stats = dict(line.split(": ", 1) for line in s.envoy.stats().splitlines() if ": " in line)
        hits = sum(int(stats.get(f"wasmcustom.mcp_guard.introspections.outcome={o}", "0"))
                   for o in ("cache_hit", "shared_hit"))
        assert hits == 6, {k: v for k, v in stats.items() if "introspections" in k}

        # Revoked at the IdP: refused once the cached answer is older than cache_ttl_seconds.
        s.revoke(token)
        revoked_at = time.monotonic()
        while s.call(token).status_code == 200:
            assert time.monotonic() - revoked_at < 5, "still accepted 5 s after the revocation"
            time.sleep(0.05)
        elapsed = time.monotonic() - revoked_at
        print(f"\nintrospection (cache_ttl_seconds 2): refused {elapsed:.2f} s after the revocation at the IdP")
        assert elapsed <= 2.5
        r = s.call(token)
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
        assert r.json()["error_description"] == "token is not active"
        assert wait_record(s.envoy, "token_inactive")["status"] == 401
        audit = s.envoy.audit()
        assert not any(token in json.dumps(a) for a in audit), "the token is never logged"
        assert token not in s.envoy.output()
        # Negative answers are cached too (negative_ttl_seconds 1).
        hits = s.hits()
        assert s.call(token).status_code == 401
        assert s.hits() == hits

        # A JWT still verifies locally (introspect: opaque), and a junk opaque token is inactive.
        jwt = s.idp.token("sales-agent", s.resource, "mcp:tools")
        assert s.call(jwt).status_code == 200
        assert s.call("not-a-token-the-idp-issued").status_code == 401
    finally:
        s.stop()


def test_concurrent_requests_with_one_token_make_one_call(tmp_path):
    s = IntrospectionStack(tmp_path, cache_ttl=30, auth="client_secret_post", client="mcp-guard-post",
                           secret="test-only-mcp-guard-post-secret")
    try:
        token = s.opaque()
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            statuses = list(pool.map(lambda i: s.call(token, id=i).status_code, range(12)))
        assert statuses == [200] * 12
        assert s.hits() == 1, "one introspection for every worker VM"
    finally:
        s.stop()


def test_idp_down_gives_503_unless_a_fresh_answer_is_cached(tmp_path):
    s = IntrospectionStack(tmp_path, cache_ttl=30)
    try:
        cached, unseen = s.opaque(), s.opaque()
        assert s.call(cached).status_code == 200
        s.idp.stop()
        assert s.call(cached).status_code == 200, "a fresh cached answer keeps serving"
        r = s.call(unseen)
        assert r.status_code == 503
        assert r.json()["error"] == "temporarily_unavailable"
        assert "www-authenticate" not in r.headers
        record = wait_record(s.envoy, "introspection_unavailable")
        assert record["decision"] == "error" and record["status"] == 503
        assert "wasmcustom.mcp_guard.introspections.outcome=http_error: " in s.envoy.stats()
        assert len(s.server.requests()) == 2
    finally:
        s.stop()


def test_wrong_client_secret_is_refused_with_503(tmp_path):
    """The IdP refuses the filter's own credentials: an error on our side, not the caller's."""
    s = IntrospectionStack(tmp_path, secret="wrong")
    try:
        r = s.call(s.opaque())
        assert r.status_code == 503
        assert wait_record(s.envoy, "introspection_unavailable")["status"] == 503
        assert "wasmcustom.mcp_guard.introspections.outcome=http_error: " in s.envoy.stats()
    finally:
        s.stop()


def sdk(s, token):
    """The official Python SDK client, through the stack's Envoy, with this bearer token."""
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    return Client(streamable_http_client(s.envoy.url, http_client=http), mode=PROTOCOL)


def test_a_subscription_ends_soon_after_its_opaque_token_is_revoked(tmp_path):
    """A 2026-07-28 `subscriptions/listen` stream opened with an opaque token (the official
    Python SDK on both sides) outlives the introspection answer that admitted it: once that is
    older than cache_ttl_seconds, its next event is held while the IdP is asked again. Still
    active: the event arrives. Revoked at the IdP: the stream is cut at its first event after
    the TTL, as soon as a new request with the token is refused (the time is measured and
    printed), and nothing after the revocation's effect reaches the caller."""
    s = IntrospectionStack(tmp_path, cache_ttl=2, server=Upstream2026)
    listener_token, actor_token = s.opaque(), s.opaque()
    seen = {"events": 0}

    async def session():
        async with sdk(s, actor_token) as actor:
            try:
                async with sdk(s, listener_token) as listener:
                    async with listener.listen(resource_subscriptions=["crm://customers/c-200"]) as sub:
                        for pause in (0, 2.5):
                            # Within the TTL, then past it: the IdP still vouches for the token.
                            hits = s.hits()
                            await anyio.sleep(pause)
                            await actor.call_tool("touch_customer", {"customer_id": "c-200"})
                            with anyio.fail_after(10):
                                await anext(sub)
                            seen["events"] += 1
                            # Past the TTL the IdP is asked about both tokens again: the
                            # actor's call, and the listener's stream (between its events, or
                            # at this one).
                            seen["asked"] = s.hits() - hits
                        s.revoke(listener_token)
                        seen["revoked_at"] = time.monotonic()
                        while time.monotonic() - seen["revoked_at"] < 6:
                            await actor.call_tool("touch_customer", {"customer_id": "c-200"})
                            with anyio.move_on_after(1.5):
                                await anext(sub)
                                seen["events"] += 1
                                seen["last_event_at"] = time.monotonic()
                                continue
                            break
            except Exception:  # the cut stream ends the listener's session
                pass
            seen["cut_at"] = time.monotonic()

    try:
        asyncio.run(session())
        assert seen["events"] >= 2, seen
        assert seen["asked"] == 2, "past the TTL the IdP was asked about the listener again"
        cut = wait_record(s.envoy, "token_ended_mid_stream")
        assert cut["decision"] == "error" and "not active" in cut["detail"], cut
        last = seen.get("last_event_at", seen["revoked_at"]) - seen["revoked_at"]
        print(f"\nsubscription (cache_ttl_seconds 2): last event {last:.2f} s after the revocation at the IdP")
        assert last <= 2.5, "an event reached the caller after the revoked token's answer ran out"
        r = s.call(listener_token)
        assert r.status_code == 401 and r.json()["error_description"] == "token is not active"
        assert not any(listener_token in json.dumps(a) for a in s.envoy.audit())
    finally:
        s.stop()


def test_a_quiet_subscription_ends_soon_after_its_opaque_token_is_revoked(tmp_path):
    """The same subscription with nothing more to say after the revocation: it does not wait
    for its next event (which may come hours later, or never) to end. Between events the filter
    looks at each standing stream about once a second; once the IdP's answer that admitted it
    is older than cache_ttl_seconds the IdP is asked again, and the stream is cut when it says
    the token is not active (the time from the revocation to the end is measured and printed)."""
    s = IntrospectionStack(tmp_path, cache_ttl=2, server=Upstream2026)
    listener_token, actor_token = s.opaque(), s.opaque()
    seen = {}

    async def session():
        async with sdk(s, actor_token) as actor:
            try:
                async with sdk(s, listener_token) as listener:
                    async with listener.listen(resource_subscriptions=["crm://customers/c-300"]) as sub:
                        await actor.call_tool("touch_customer", {"customer_id": "c-300"})
                        with anyio.fail_after(10):
                            await anext(sub)
                        seen["event"] = True
                        s.revoke(listener_token)
                        seen["revoked_at"] = time.monotonic()
                        # Nobody touches the resource again: no event comes.
                        with anyio.move_on_after(15):
                            try:
                                await anext(sub)
                                seen["late_event"] = True
                            except Exception:  # the cut stream
                                pass
                            seen["ended_at"] = time.monotonic()
            except Exception:  # the cut stream ends the listener's session
                seen.setdefault("ended_at", time.monotonic())

    try:
        asyncio.run(session())
        assert seen.get("event"), seen
        assert "late_event" not in seen, "no event was sent after the revocation"
        assert "ended_at" in seen, "the quiet stream stayed open 15 s after the revocation"
        took = seen["ended_at"] - seen["revoked_at"]
        print(f"\nquiet subscription (cache_ttl_seconds 2): ended {took:.2f} s after the revocation at the IdP")
        # The TTL (2 s), the next look (at most 1 s later), the IdP's answer, and the SDK's own
        # attempt to resume the cut stream (refused: 401) before it gives up.
        assert took <= 6.0, took
        cut = wait_record(s.envoy, "token_ended_mid_stream")
        assert cut["decision"] == "error" and "not active" in cut["detail"], cut
    finally:
        s.stop()
