"""Revocation within seconds, through real Envoy against the real IdP (npm oidc-provider): a
revocation feed fetched through an Envoy cluster, two Envoy replicas both refusing a marked
subject within the refresh interval (the time is measured and printed), the last good copy
kept while the feed is down, and 503 (never 401) before the first copy arrived."""

import base64
import http.server
import json
import threading
import time

import harness
import httpx2
import jsonschema

SCHEMA = json.loads((harness.ROOT / "docs" / "revocation-feed.schema.json").read_text())

POLICY = {"name": "open", "version": "1", "default": "allow"}


class FeedServer:
    """A revocation feed document, served over plain HTTP; `publish` replaces it."""

    def __init__(self, port=None):
        self.port = port or harness.free_port()
        self.doc = {"revoked_jti": [], "not_before": {}}
        self.hits = 0
        feed = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                feed.hits += 1
                body = json.dumps(feed.doc).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def publish(self, doc):
        jsonschema.validate(doc, SCHEMA)  # every feed the tests publish follows the documented format
        self.doc = doc

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_the_schema_matches_what_the_filter_refuses():
    """Documents the filter refuses as a whole (filter/src/revocation.rs) are invalid by the schema."""
    jsonschema.validate(SCHEMA["examples"][0], SCHEMA)
    for bad in ({"revoked": []}, {"revoked_jti": [""]}, {"not_before": {"a": -1}},
                {"not_before": {"a": "soon"}}, []):
        try:
            jsonschema.validate(bad, SCHEMA)
        except jsonschema.ValidationError:
            continue
        raise AssertionError(f"the schema accepts {bad}")


def claims_of(token):
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def call(url, token, id=1):
    return httpx2.post(url, timeout=15,
                       json={"jsonrpc": "2.0", "id": id, "method": "tools/call",
                             "params": {"name": "echo", "arguments": {"text": "x"}}},
                       headers={"authorization": f"Bearer {token}", "mcp-protocol-version": "2025-11-25",
                                "accept": "application/json, text/event-stream"})


class Replicas:
    """The IdP, one MCP server and two Envoy replicas (one public resource), each fetching
    the revocation feed through its own `feeds` cluster."""

    def __init__(self, tmp_path, feed_port, refresh_seconds=1, key_wait_ms=3000, **feed):
        """`feed_port`: one port for both replicas, or a list, one per replica (each replica's
        `feeds` cluster is its own, so one can lose its source while the other keeps it)."""
        feed_ports = feed_port if isinstance(feed_port, list) else [feed_port, feed_port]
        feed_port = feed_ports[0]
        self.idp = harness.Idp(tmp_path)
        self.server = harness.McpServer(tmp_path, stateless=True)
        ports = [harness.free_port(), harness.free_port()]
        self.resource = f"http://127.0.0.1:{ports[0]}/mcp"
        issuer = {"issuer": self.idp.url, "audiences": [self.resource], "algorithms": ["RS256"],
                  "discovery": True, "cluster": "idp", "typ": "at+jwt",
                  "revocation": {"uri": f"http://127.0.0.1:{feed_port}/revoked.json",
                                 "cluster": "feeds", "refresh_seconds": refresh_seconds,
                                 "fetch_timeout_ms": 1000, **feed}}
        config = harness.plugin_config([issuer], POLICY, self.resource, key_wait_ms=key_wait_ms)
        self.envoys = []
        try:
            for i, port in enumerate(ports):
                workdir = tmp_path / f"replica-{i}"
                workdir.mkdir()
                clusters = (harness.cluster_yaml("idp", self.idp.port)
                            + harness.cluster_yaml("feeds", feed_ports[i]))
                self.envoys.append(harness.Envoy(workdir, config, self.server.port, port=port,
                                                 values={"EXTRA_CLUSTERS": clusters}))
        except Exception:
            self.stop()
            raise

    def token(self, client="sales-agent"):
        return self.idp.token(client, self.resource, "mcp:tools")

    def stop(self):
        for e in self.envoys:
            e.stop()
        self.server.stop()
        self.idp.stop()


def wait_record(envoy, reason, timeout=10.0):
    """The last audit record with this reason (the access log is flushed every 0.5 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [r for r in envoy.audit() if r.get("reason") == reason]
        if found:
            return found[-1]
        time.sleep(0.1)
    raise AssertionError(f"no audit record with reason {reason}")


def wait_until_refused(replicas, token, timeout=10.0):
    """Seconds until every replica refuses `token` (polled every 50 ms)."""
    started = time.monotonic()
    pending = set(range(len(replicas.envoys)))
    while pending and time.monotonic() - started < timeout:
        for i in list(pending):
            if call(replicas.envoys[i].url, token).status_code == 401:
                pending.discard(i)
        time.sleep(0.05)
    assert not pending, f"replicas {pending} still accept the token after {timeout}s"
    return time.monotonic() - started


def test_two_replicas_refuse_a_marked_subject_within_the_refresh_interval(tmp_path):
    feed = FeedServer()
    replicas = Replicas(tmp_path, feed.port, refresh_seconds=1)
    try:
        sales, eng = replicas.token("sales-agent"), replicas.token("eng-agent")
        for envoy in replicas.envoys:
            assert call(envoy.url, sales).status_code == 200
            assert call(envoy.url, eng).status_code == 200

        # IT marks the subject: every token issued to it until now is refused.
        feed.publish({"not_before": {"sales-agent": int(time.time()) + 1}})
        elapsed = wait_until_refused(replicas, sales)
        print(f"\nrevocation feed (refresh 1 s): both replicas refused the subject after {elapsed:.2f} s")
        assert elapsed < 1.0 + 1.0  # the refresh interval, plus a tick and a fetch

        for envoy in replicas.envoys:
            r = call(envoy.url, sales)
            assert r.status_code == 401
            assert r.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
            assert "revoked" in r.json()["error_description"]
            assert call(envoy.url, eng).status_code == 200, "other subjects are not affected"
            record = wait_record(envoy, "token_revoked")
            assert record["decision"] == "deny" and record["status"] == 401
            assert "wasmcustom.mcp_guard.auth_failures.reason=token_revoked: " in envoy.stats()
        forwarded = len(replicas.server.requests())
        assert all(call(e.url, sales).status_code == 401 for e in replicas.envoys)
        assert len(replicas.server.requests()) == forwarded, "nothing reaches the upstream"

        # A token issued after the not-before time works again.
        time.sleep(max(0.0, feed.doc["not_before"]["sales-agent"] - time.time()) + 1.1)
        fresh = replicas.token("sales-agent")
        assert all(call(e.url, fresh).status_code == 200 for e in replicas.envoys)

        # One token id revoked (a stolen token): that token only.
        feed.publish({"revoked_jti": [claims_of(eng)["jti"]]})
        elapsed = wait_until_refused(replicas, eng)
        print(f"revocation feed (refresh 1 s): both replicas refused the jti after {elapsed:.2f} s")
        assert elapsed < 2.0
        other = replicas.token("eng-agent")
        assert all(call(e.url, other).status_code == 200 for e in replicas.envoys)

        # The feed goes down: the last good copy stays in use.
        feed.stop()
        time.sleep(2.5)
        for envoy in replicas.envoys:
            assert call(envoy.url, eng).status_code == 401
            assert call(envoy.url, other).status_code == 200
    finally:
        replicas.stop()
        feed.stop()


def test_a_replica_that_cannot_fetch_the_feed_stops_accepting_after_max_stale_seconds(tmp_path):
    """Two replicas, each fetching the feed through its own cluster; one loses its source. The
    other refuses a newly revoked subject within the refresh interval; a client retrying until
    the load balancer sends it to the replica that still holds the old copy must not get
    through for longer than `max_stale_seconds`: past it that replica answers 503
    (`revocations_unavailable`), nothing forwarded, until it can fetch again."""
    feeds = [FeedServer(), FeedServer()]
    replicas = Replicas(tmp_path, [f.port for f in feeds], refresh_seconds=1, key_wait_ms=500,
                        max_stale_seconds=3)
    try:
        sales = replicas.token("sales-agent")
        for envoy in replicas.envoys:
            assert call(envoy.url, sales).status_code == 200
        feeds[1].stop()  # replica 1's source is gone; its last good copy lists nothing
        lost = time.monotonic()
        feeds[0].publish({"not_before": {"sales-agent": int(time.time()) + 1}})
        fresh, stale = replicas.envoys
        deadline = time.monotonic() + 3.0
        while call(fresh.url, sales).status_code != 401:
            assert time.monotonic() < deadline, "the replica that can fetch never refused"
            time.sleep(0.05)

        # The replica that cannot fetch: within max_stale_seconds (3 s) of its last good fetch
        # it may still use its copy, never after.
        while time.monotonic() - lost < 6.0:
            r = call(stale.url, sales)
            if r.status_code != 200:
                break
            time.sleep(0.1)
        elapsed = time.monotonic() - lost
        print(f"\nthe replica without its feed stopped accepting after {elapsed:.2f} s")
        assert r.status_code == 503, (elapsed, r.status_code, r.text)
        assert elapsed < 3.0 + 1.5  # max_stale_seconds, plus the refresh, a tick and the wait
        assert r.json()["error"] == "temporarily_unavailable"
        record = wait_record(stale, "revocations_unavailable")
        assert record["decision"] == "error" and record["status"] == 503
        forwarded = len(replicas.server.requests())
        assert call(stale.url, sales).status_code == 503
        assert call(stale.url, replicas.token("eng-agent")).status_code == 503
        assert len(replicas.server.requests()) == forwarded, "nothing reaches the upstream"

        # Its source is back: it fetches, and refuses the revoked subject like the other.
        feeds[1] = FeedServer(port=feeds[1].port)
        feeds[1].publish(feeds[0].doc)
        deadline = time.monotonic() + 5.0
        while call(stale.url, sales).status_code != 401:
            assert time.monotonic() < deadline, "the replica did not recover with its source"
            time.sleep(0.1)
        assert call(stale.url, replicas.token("eng-agent")).status_code == 200
    finally:
        replicas.stop()
        for f in feeds:
            f.stop()


def test_without_a_first_copy_of_the_feed_requests_get_503(tmp_path):
    """Fail closed: no feed yet means no way to know whether the token is revoked."""
    replicas = Replicas(tmp_path, harness.free_port(), key_wait_ms=1500)
    try:
        envoy = replicas.envoys[0]
        started = time.monotonic()
        r = call(envoy.url, replicas.token())
        assert r.status_code == 503, r.text
        assert time.monotonic() - started >= 1.4
        assert r.json()["error"] == "temporarily_unavailable"
        assert "www-authenticate" not in r.headers
        record = wait_record(envoy, "revocations_unavailable")
        assert record["decision"] == "error" and record["status"] == 503
        assert replicas.server.requests() == []
        assert "wasmcustom.mcp_guard.revocation_fetches.outcome=http_error: " in envoy.stats()
    finally:
        replicas.stop()
