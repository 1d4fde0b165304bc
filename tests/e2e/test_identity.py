"""Identity against a real IdP (npm oidc-provider): keys fetched through an Envoy cluster,
discovery, rotation, outages, unknown-kid storms, scopes and the MCP authorization spec."""

import http.server
import json
import threading
import time

import harness
import httpx2
import keys
import pytest
from stack import mcp_client, run

READ_POLICY = {
    "name": "idp", "version": "7", "default": "deny",
    "rules": [
        {"name": "discover", "allow": 'mcp.method in ["initialize", "notifications/initialized", "tools/list", "ping", "server/discover"]'},
        {"name": "tools-scope", "allow": 'mcp.method == "tools/call" && mcp.tool.name in ["echo", "get_customer"] && "mcp:tools" in jwt.scopes'},
        {"name": "delete-needs-admin-scope", "allow": 'mcp.tool.name == "delete_customer"', "scopes": ["mcp:admin"]},
    ],
}


class IdpStack:
    """Envoy + mcp-guard trusting the oidc-provider IdP (keys via discovery through a cluster)."""

    def __init__(self, workdir, idp_port=None, start_idp=True, key_wait_ms=3000, **issuer_extra):
        self.workdir = workdir
        self.idp_port = idp_port or harness.free_port()
        self.idp = harness.Idp(workdir, self.idp_port) if start_idp else None
        self.port = harness.free_port()
        self.resource = f"http://127.0.0.1:{self.port}/mcp"
        self.server = harness.McpServer(workdir, stateless=True)
        issuer = {"issuer": f"http://127.0.0.1:{self.idp_port}", "audiences": [self.resource],
                  "algorithms": ["RS256", "ES256"], "discovery": True, "cluster": "idp",
                  "typ": "at+jwt", "min_refetch_seconds": 2}
        issuer.update(issuer_extra)
        config = harness.plugin_config([issuer], READ_POLICY, self.resource, key_wait_ms=key_wait_ms)
        config["servers"][0]["scopes_supported"] = ["mcp:tools", "mcp:read", "mcp:admin"]
        self.envoy = harness.Envoy(workdir, config, self.server.port, port=self.port,
                                   values={"EXTRA_CLUSTERS": harness.cluster_yaml("idp", self.idp_port)})

    def token(self, client="sales-agent", scope="mcp:tools mcp:read", **extra):
        return self.idp.token(client, self.resource, scope, **extra)

    def call(self, token, name="echo", arguments=None, id=1):
        body = {"jsonrpc": "2.0", "id": id, "method": "tools/call",
                "params": {"name": name, "arguments": arguments or {"text": "hi"}}}
        headers = {"content-type": "application/json", "accept": "application/json, text/event-stream",
                   "mcp-protocol-version": "2025-11-25", "authorization": f"Bearer {token}"}
        return httpx2.post(self.envoy.url, json=body, headers=headers, timeout=15)

    def stop(self):
        self.envoy.stop()
        self.server.stop()
        if self.idp:
            self.idp.stop()


@pytest.fixture
def idp_stack(tmp_path):
    s = IdpStack(tmp_path)
    yield s
    s.stop()


def test_real_idp_token_through_a_real_mcp_client(idp_stack):
    token = idp_stack.token()

    async def session():
        async with mcp_client(idp_stack.envoy.url, token) as client:
            assert "echo" in [t.name for t in (await client.list_tools()).tools]
            assert (await client.call_tool("echo", {"text": "from the IdP"})).content[0].text == "from the IdP"

    run(session())
    record = idp_stack.envoy.wait_audit(3)[-1]
    assert record["sub"] == "sales-agent" and record["client_id"] == "sales-agent"
    assert record["groups"] == ["sales"]


def test_jwks_fetched_once_for_all_workers(idp_stack):
    """Two worker VMs, one fetch: the first keys came from one JWKS request."""
    assert idp_stack.call(idp_stack.token()).status_code == 200
    assert idp_stack.idp.jwks_hits() == 1


def test_signatures_are_checked_by_envoy_once_for_all_workers(idp_stack):
    """RS256 signatures go to Envoy's crypto (the verify_signature foreign function; each VM
    says so in the log on its first check), and a token one worker verified is served to the
    other from the shared token cache: one check, one line, whichever worker took which
    connection."""
    token = idp_stack.token()
    for _ in range(6):  # a new connection each: both workers take some
        assert idp_stack.call(token).status_code == 200
    log = idp_stack.envoy.log.read_text()
    assert log.count("signatures are checked by Envoy's crypto") == 1, log[-2000:]
    assert "such signatures are checked in Wasm" not in log
    # Another token's signature on this token's claims is refused.
    head, _ = token.rsplit(".", 1)
    _, signature = idp_stack.token("readonly-agent", scope="mcp:read").rsplit(".", 1)
    r = idp_stack.call(f"{head}.{signature}")
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]


def test_scope_claim_reaches_cel_and_missing_scope_is_a_step_up(idp_stack):
    readonly = idp_stack.token("readonly-agent", scope="mcp:read")
    r = idp_stack.call(readonly)
    # No rule allows echo without mcp:tools: a policy denial (200 + JSON-RPC error), not a 403.
    assert r.status_code == 200 and r.json()["error"]["code"] == -31403

    r = idp_stack.call(idp_stack.token(), name="delete_customer", arguments={"customer_id": "c-1"})
    assert r.status_code == 403
    meta = f"http://127.0.0.1:{idp_stack.port}/.well-known/oauth-protected-resource/mcp"
    assert r.headers["www-authenticate"] == (
        f'Bearer error="insufficient_scope", scope="mcp:admin", resource_metadata="{meta}"')
    admin = idp_stack.token("admin-agent", scope="mcp:tools mcp:admin")
    assert idp_stack.call(admin, name="delete_customer", arguments={"customer_id": "c-1"}).status_code == 200


def test_401_challenge_carries_scope_and_metadata_lists_the_idp(idp_stack):
    r = httpx2.post(idp_stack.envoy.url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                    headers={"accept": "application/json, text/event-stream"})
    assert r.status_code == 401
    challenge = r.headers["www-authenticate"]
    assert 'scope="mcp:tools mcp:read mcp:admin"' in challenge and "error=" not in challenge
    doc = httpx2.get(f"http://127.0.0.1:{idp_stack.port}/.well-known/oauth-protected-resource/mcp").json()
    assert doc["authorization_servers"] == [idp_stack.idp.url]
    assert doc["scopes_supported"] == ["mcp:tools", "mcp:read", "mcp:admin"]
    assert doc["resource"] == idp_stack.resource


def test_key_rotation_is_followed_without_restart(idp_stack):
    assert idp_stack.call(idp_stack.token()).status_code == 200
    hits = idp_stack.idp.jwks_hits()
    time.sleep(2.1)  # past min_refetch_seconds, so the unknown kid may trigger one fetch
    idp_stack.idp.rotate()
    fresh = idp_stack.token()
    r = idp_stack.call(fresh)
    assert r.status_code == 200, r.text
    assert idp_stack.idp.jwks_hits() == hits + 1


def test_cached_keys_keep_serving_while_the_idp_is_down(idp_stack):
    token = idp_stack.token()
    assert idp_stack.call(token).status_code == 200
    idp_stack.idp.stop()
    time.sleep(0.5)
    for i in range(5):
        assert idp_stack.call(token, id=i).status_code == 200


def test_unknown_kid_storm_causes_a_bounded_number_of_fetches(idp_stack):
    assert idp_stack.call(idp_stack.token()).status_code == 200
    idp_stack.idp.reset_hits()
    attacker = keys.SigningKey("RS256")
    claims = {"iss": idp_stack.idp.url, "aud": idp_stack.resource, "sub": "mallory",
              "exp": int(time.time()) + 600}
    started = time.monotonic()
    statuses = []
    for i in range(60):
        forged = keys.SigningKey("RS256", kid=f"unknown-{i}")
        forged.private = attacker.private
        statuses.append(idp_stack.call(forged.sign(claims, {"typ": "at+jwt"}), id=i).status_code)
    elapsed = time.monotonic() - started
    assert set(statuses) == {401}
    # At most one re-fetch per min_refetch_seconds (2 s), plus one.
    assert idp_stack.idp.jwks_hits() <= int(elapsed / 2) + 1


def test_wrong_typ_is_refused(idp_stack):
    """The issuer requires typ at+jwt: an ID-token-like JWT signed by a trusted key is refused.
    (Tokens from oidc-provider are at+jwt; a token minted with another typ cannot be obtained
    from it, so this checks the header rule with an otherwise unknown-key token.)"""
    r = idp_stack.call(keys.SigningKey("RS256").sign({"iss": idp_stack.idp.url}, {"typ": "JWT"}))
    assert r.status_code == 401
    assert idp_stack.envoy.wait_audit(1)[-1]["reason"] == "wrong_typ"


class JwksHost:
    """A static JWKS document server, for the start-up cases (it can start late or never)."""

    def __init__(self, port, jwks):
        body = json.dumps(jwks).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def static_stack(tmp_path, key_wait_ms):
    """Envoy trusting an issuer whose JWKS lives at a port where nothing listens yet."""
    port = harness.free_port()
    jwks_port = harness.free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    idp = keys.Issuer("https://late-idp.example", resource, algs=("RS256",))
    server = harness.McpServer(tmp_path, stateless=True)
    issuer = {"issuer": idp.issuer, "audiences": [resource], "algorithms": ["RS256"],
              "jwks_uri": f"http://127.0.0.1:{jwks_port}/jwks.json", "cluster": "jwks"}
    policy = {"name": "open", "default": "allow"}
    envoy = harness.Envoy(tmp_path, harness.plugin_config([issuer], policy, resource, key_wait_ms=key_wait_ms),
                          server.port, port=port,
                          values={"EXTRA_CLUSTERS": harness.cluster_yaml("jwks", jwks_port)})
    return envoy, server, idp, jwks_port


def post_echo(envoy, token):
    return httpx2.post(envoy.url, timeout=15, json={"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                                    "params": {"name": "echo", "arguments": {"text": "x"}}},
                       headers={"authorization": f"Bearer {token}", "mcp-protocol-version": "2025-11-25",
                                "accept": "application/json, text/event-stream"})


def test_before_the_first_keys_a_request_waits_then_gets_503(tmp_path):
    envoy, server, idp, _ = static_stack(tmp_path, key_wait_ms=1500)
    try:
        started = time.monotonic()
        r = post_echo(envoy, idp.token("early"))
        waited = time.monotonic() - started
        assert r.status_code == 503
        assert r.json()["error"] == "temporarily_unavailable"
        assert "www-authenticate" not in r.headers
        assert 1.4 <= waited < 5
        record = envoy.wait_audit(1)[-1]
        assert record["decision"] == "error" and record["reason"] == "keys_unavailable"
        assert server.requests() == []
    finally:
        envoy.stop()
        server.stop()


def test_a_waiting_request_proceeds_when_the_keys_arrive(tmp_path):
    envoy, server, idp, jwks_port = static_stack(tmp_path, key_wait_ms=8000)
    host = None
    try:
        result = {}
        t = threading.Thread(target=lambda: result.update(r=post_echo(envoy, idp.token("patient"))))
        t.start()
        time.sleep(1.0)
        host = JwksHost(jwks_port, idp.jwks())
        t.join(timeout=15)
        assert result["r"].status_code == 200, result["r"].text
    finally:
        envoy.stop()
        server.stop()
        if host:
            host.stop()


def test_keys_are_refreshed_periodically_without_any_unknown_kid(tmp_path):
    """refresh_seconds: the filter re-fetches on its own, so a rotated key is already known
    when the first token signed with it arrives (no wait, no unknown-kid re-fetch)."""
    s = IdpStack(tmp_path, refresh_seconds=2, min_refetch_seconds=3600)
    try:
        assert s.call(s.token()).status_code == 200
        first = s.idp.jwks_hits()
        s.idp.rotate()
        time.sleep(3.5)
        assert s.idp.jwks_hits() >= first + 1
        # min_refetch_seconds is an hour: only the periodic refresh can know the new key.
        assert s.call(s.token()).status_code == 200
    finally:
        s.stop()


def test_keys_no_fetch_renewed_for_max_stale_seconds_are_no_longer_trusted(tmp_path):
    """A replica that cannot reach its IdP keeps its last good keys for at most
    `max_stale_seconds`, then refuses their tokens with 503 (never 401) until a fetch succeeds:
    a key the IdP withdrew does not go on verifying there while other replicas refuse it."""
    s = IdpStack(tmp_path, refresh_seconds=1, max_stale_seconds=3, key_wait_ms=500)
    try:
        token = s.token()
        assert s.call(token).status_code == 200
        s.idp.stop()
        stopped = time.monotonic()
        while (r := s.call(token)).status_code == 200:
            assert time.monotonic() - stopped < 8, "still trusted 8 s after the IdP went away"
            time.sleep(0.2)
        elapsed = time.monotonic() - stopped
        assert r.status_code == 503, r.text
        assert r.json()["error"] == "temporarily_unavailable"
        assert 2 <= elapsed <= 5, elapsed
        time.sleep(1)  # the access log is flushed every 0.5 s
        record = [a for a in s.envoy.audit() if a.get("status") == 503]
        assert record and record[-1]["reason"] == "keys_unavailable", s.envoy.audit()[-3:]
        assert "max_stale_seconds" in s.envoy.output()
        # The IdP back (same port): a fetch succeeds and its tokens are accepted again.
        s.idp = harness.Idp(s.workdir, s.idp_port)
        token = s.token()
        deadline = time.monotonic() + 10
        while s.call(token).status_code != 200:
            assert time.monotonic() < deadline, "not trusted again after the IdP came back"
            time.sleep(0.3)
    finally:
        s.stop()
