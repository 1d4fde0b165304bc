"""Shared service credentials, end to end through real Envoy (docs/credentials.md):

- each upstream gets its own key, header and prefix, one of them from the VM environment;
- nothing of the client's that could authenticate reaches an upstream; verified claims do;
- the key rotates without a restart (ECDS from a watched file) under continuous load, and a
  rotation to an invalid configuration is rejected while the old one keeps serving;
- the key never goes back downstream (redacted or blocked), and an upstream refusing the key
  becomes a 502 that does not relay the upstream's challenge;
- neither the keys nor the client tokens reach any log.
"""

import base64
import json
import secrets
import threading
import time

import harness
import httpx2
import keys
import pytest
from stack import modern

ISSUER = "https://idp.example"
UPSTREAM_CREDENTIAL = -31502
POLICY = harness.load_policy(harness.ROOT / "policies" / "demo.yaml")
ACCEPT = "application/json, text/event-stream"


def new_key(label):
    """A fresh random service key: greps for it can only find what this run leaked."""
    return f"{label}-{secrets.token_urlsafe(18)}"


CRM_KEY = new_key("crm-sk")
GIT_KEY = new_key("git-sk")


def encodings(secret):
    """The secret as mcp-guard recognises it in a response: raw and base64 (std, no pad, url)."""
    raw = secret.encode()
    return {secret, base64.b64encode(raw).decode(), base64.b64encode(raw).decode().rstrip("="),
            base64.urlsafe_b64encode(raw).decode().rstrip("=")}


def header_values(request, name):
    return [v for k, v in request["headers"] if k.lower() == name]


def all_header_text(request):
    return "\n".join(f"{k}: {v}" for k, v in request["headers"])


def messages(response_text):
    """The JSON-RPC messages of a response body, JSON or SSE."""
    text = response_text.strip()
    if text.startswith("{"):
        return [json.loads(text)]
    out = []
    for line in text.splitlines():
        if line.startswith("data:") and line[5:].strip():
            out.append(json.loads(line[5:].strip()))
    return out


def echoed(response):
    """The text the echo tool returned."""
    [message] = [m for m in messages(response.text) if "result" in m or "error" in m]
    assert "result" in message, message
    return message["result"]["content"][0]["text"]


def audit_where(envoy, predicate, count, timeout=10.0):
    """The audit records matching `predicate`, once there are `count` of them (or the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in envoy.audit() if predicate(r)]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def echo_body(text, id=1):
    return {"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": text}}}


# ---- two upstreams behind one Envoy ----------------------------------------------------------


class Pair:
    """envoy/two-upstreams.yaml: crm.internal → the CRM (`Authorization: Bearer <key>`, inline
    in the configuration, answers SSE); git.internal → the Git server (`X-API-Key: <key>`, from
    the VM environment, answers JSON). Both at /mcp; the filter tells them apart by route name."""

    def __init__(self, workdir, *, key_leak=None, crm_accepts=None, git_accepts=None,
                 refuse_status=401, echo_key_header=None, git_env=None, policies=None,
                 matches=None, template="two-upstreams.yaml"):
        self.port = harness.free_port()
        self.resources = {name: f"http://{name}.internal:{self.port}/mcp" for name in ("crm", "git")}
        self.issuer = keys.Issuer(ISSUER, self.resources["crm"], algs=("RS256",))
        self.upstreams = {}
        self.upstreams["crm"] = harness.Upstream(
            workdir, "crm", key_header="authorization", echo_key_header=echo_key_header, stateless=True,
            expect_keys=crm_accepts or [f"Bearer {CRM_KEY}"], refuse_status=refuse_status)
        self.upstreams["git"] = harness.Upstream(
            workdir, "git", key_header="x-api-key", json_response=True, echo_key_header=echo_key_header,
            stateless=True,
            expect_keys=git_accepts or [GIT_KEY], refuse_status=refuse_status)

        def server(name, credential, **extra):
            entry = {"name": name, "path": "/mcp", "resource": self.resources[name],
                     "authorization_servers": [ISSUER],
                     "match": (matches or {}).get(name, {"route_name": name}),
                     "credential": credential, "forward_claims": {"email": "x-mcp-user"},
                     "policy": (policies or {}).get(name, POLICY)}
            if key_leak:
                entry["key_leak"] = key_leak
            entry.update(extra)
            return entry

        self.config = {
            "issuers": [{"issuer": ISSUER, "audiences": list(self.resources.values()),
                         "jwks": self.issuer.jwks()}],
            "servers": [
                # A list of its own, which replaces the default list (cookie,
                # proxy-authorization, x-api-key) and leaves out cookie and
                # proxy-authorization: they are stripped anyway, as are the client's token,
                # any copy of the key header and of the forwarded-claim headers.
                server("crm", {"header": "Authorization", "prefix": "Bearer ", "value": CRM_KEY},
                       strip_headers=["x-api-key", "x-crm-session"]),
                server("git", {"header": "X-API-Key", "value_from_env": "GIT_API_KEY"}),
            ],
            "sessions": {"key": harness.SESSION_KEY},
        }
        environment = git_env or {"key_values": {"GIT_API_KEY": GIT_KEY}}
        try:
            self.envoy = harness.Envoy(workdir, self.config, self.upstreams["crm"].port,
                                       template=template, port=self.port,
                                       values={"CRM_PORT": self.upstreams["crm"].port,
                                               "GIT_PORT": self.upstreams["git"].port,
                                               "VM_ENVIRONMENT": json.dumps(environment)})
        except Exception:
            self.stop_upstreams()
            raise

    def token(self, which, sub, **claims):
        return self.issuer.token(sub, aud=self.resources[which], **claims)

    def headers(self, which, token):
        # Sessionless 2025-11-25 requests to stateless servers: answered as the server is set
        # to answer (the SDK answers 2026-07-28 requests in JSON whatever its setting).
        return [("host", f"{which}.internal:{self.port}"), ("content-type", "application/json"),
                ("accept", ACCEPT), ("authorization", f"Bearer {token}"),
                ("mcp-protocol-version", "2025-11-25")]

    def post(self, which, body, token, headers=None):
        """POSTs one message to crm.internal or git.internal (a list of pairs in `headers` may
        repeat a name)."""
        h = self.headers(which, token)
        h += list(headers.items()) if isinstance(headers, dict) else list(headers or [])
        return httpx2.post(f"http://127.0.0.1:{self.port}/mcp", content=json.dumps(body),
                           headers=h, timeout=10)

    def seen(self, which):
        return self.upstreams[which].requests()

    def stop_upstreams(self):
        for upstream in self.upstreams.values():
            upstream.stop()

    def stop(self):
        self.envoy.stop()
        self.stop_upstreams()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Redacting pair whose upstreams echo the key they received in a response header."""
    p = Pair(tmp_path_factory.mktemp("pair"), echo_key_header="x-echoed-key")
    yield p
    p.stop()


@pytest.fixture(scope="module")
def blocking_pair(tmp_path_factory):
    p = Pair(tmp_path_factory.mktemp("blocking"), key_leak="block")
    yield p
    p.stop()


def test_each_upstream_sees_only_its_own_key(pair):
    tokens = {which: pair.token(which, f"ann-{which}", email="ann@example.com") for which in ("crm", "git")}
    before = {which: len(pair.seen(which)) for which in ("crm", "git")}
    for _ in range(3):
        for which in ("crm", "git"):
            r = pair.post(which, echo_body(f"to {which}"), tokens[which])
            assert r.status_code == 200, r.text
            assert echoed(r) == f"to {which}"
            # The upstream echoed its key in a header: the client got it redacted.
            expected = "Bearer [REDACTED]" if which == "crm" else "[REDACTED]"
            assert r.headers["x-echoed-key"] == expected

    crm, git = pair.seen("crm")[before["crm"]:], pair.seen("git")[before["git"]:]
    assert len(crm) == 3 and len(git) == 3
    for request in crm:
        assert header_values(request, "authorization") == [f"Bearer {CRM_KEY}"]
        assert header_values(request, "x-api-key") == []
    for request in git:
        assert header_values(request, "x-api-key") == [GIT_KEY]
        assert header_values(request, "authorization") == []
    # Over everything either upstream ever received: never the other's key, never a token.
    for request in pair.seen("crm"):
        assert GIT_KEY not in all_header_text(request)
    for request in pair.seen("git"):
        assert CRM_KEY not in all_header_text(request)
    for request in pair.seen("crm") + pair.seen("git"):
        assert all(t not in all_header_text(request) for t in tokens.values())

    # The audit names the server each call went to, as selected by the route.
    for which in ("crm", "git"):
        records = audit_where(pair.envoy, lambda r, w=which: r.get("sub") == f"ann-{w}", 3)
        assert len(records) == 3
        assert {(r["server"], r["route"], r["upstream"]) for r in records} == {(which, which, f"{which}_upstream")}


@pytest.mark.parametrize("which", ["crm", "git"])
def test_nothing_of_the_clients_that_authenticates_reaches_the_upstream(pair, which):
    token = pair.token(which, f"bob-{which}", email="bob@example.com")
    before = len(pair.seen(which))
    forged = [
        ("cookie", "session=client-session-cookie"),
        ("proxy-authorization", "Basic Y2xpZW50OnByb3h5LXNlY3JldA=="),
        ("x-api-key", "client-forged-api-key"),
        ("x-api-key", "client-forged-api-key-2"),
        ("x-mcp-user", "ceo@example.com"),
        ("x-mcp-user", "root@example.com"),
        ("x-crm-session", "client-crm-session"),
        ("x-trace-note", "kept"),
    ]
    r = pair.post(which, echo_body("hello"), token, headers=forged)
    assert r.status_code == 200, r.text
    [request] = pair.seen(which)[before:]
    text = all_header_text(request)
    for name in ("cookie", "proxy-authorization"):
        assert header_values(request, name) == [], name
    for value in ("client-session-cookie", "Y2xpZW50OnByb3h5LXNlY3JldA", "client-forged-api-key",
                  "ceo@example.com", "root@example.com", token):
        assert value not in text, value
    if which == "crm":
        assert header_values(request, "authorization") == [f"Bearer {CRM_KEY}"]
        assert header_values(request, "x-api-key") == []
        assert header_values(request, "x-crm-session") == []
    else:
        assert header_values(request, "x-api-key") == [GIT_KEY]
        assert header_values(request, "authorization") == []
    # The verified claim replaces the client's copies, once.
    assert header_values(request, "x-mcp-user") == ["bob@example.com"]
    # Headers that authenticate nothing go through.
    assert header_values(request, "x-trace-note") == ["kept"]


def test_a_forwarded_claim_header_is_removed_when_the_token_lacks_the_claim(pair):
    token = pair.token("git", "no-email")  # no email claim
    before = len(pair.seen("git"))
    r = pair.post("git", echo_body("x"), token, headers={"x-mcp-user": "ceo@example.com"})
    assert r.status_code == 200
    [request] = pair.seen("git")[before:]
    assert header_values(request, "x-mcp-user") == []


# ---- where the key is visible: /config_dump and the environment -------------------------------


def test_config_dump_shows_inline_and_key_values_keys_but_not_host_env_keys(pair, tmp_path, monkeypatch):
    """What docs/credentials.md says about the admin interface, checked: an inline key and a
    key_values key are in /config_dump; a host_env_keys key is not (only its name is)."""
    dump = harness.config_dump(pair.envoy)
    assert CRM_KEY in dump and GIT_KEY in dump

    host_key = new_key("git-host-env")
    monkeypatch.setenv("GIT_API_KEY", host_key)  # Envoy's own environment, inherited at start
    p = Pair(tmp_path, git_accepts=[host_key], git_env={"host_env_keys": ["GIT_API_KEY"]})
    try:
        token = p.token("git", "carol")
        r = p.post("git", echo_body("via host env"), token)
        assert r.status_code == 200, r.text
        assert header_values(p.seen("git")[-1], "x-api-key") == [host_key]
        dump = harness.config_dump(p.envoy)
        assert host_key not in dump
        assert "GIT_API_KEY" in dump
        assert CRM_KEY in dump  # the CRM's key is still inline in this configuration
    finally:
        p.stop()


# ---- the key never goes back downstream --------------------------------------------------------


@pytest.mark.parametrize("which", ["crm", "git"])  # crm answers SSE, git JSON
def test_key_echoed_by_the_upstream_is_redacted(pair, which):
    secret = CRM_KEY if which == "crm" else GIT_KEY
    token = pair.token(which, f"dan-{which}")
    for i, variant in enumerate(sorted(encodings(secret))):
        r = pair.post(which, echo_body(f"key is <{variant}> ok", id=10 + i), token)
        assert r.status_code == 200, r.text
        assert echoed(r) == "key is <[REDACTED]> ok"
        body = r.text
        assert "[REDACTED]" in body
        for form in encodings(secret):
            assert form not in body
            assert all(form not in v for v in r.headers.values())
    if which == "crm":
        assert r.headers["content-type"].startswith("text/event-stream")
    else:
        assert r.headers["content-type"].startswith("application/json")
    stats = pair.envoy.stats()
    assert "wasmcustom.mcp_guard.key_leaks_redacted" in stats


def test_json_response_carrying_the_key_is_refused_with_block(blocking_pair):
    token = blocking_pair.token("git", "erin")
    ok = blocking_pair.post("git", echo_body("harmless"), token)
    assert ok.status_code == 200 and echoed(ok) == "harmless"
    for variant in encodings(GIT_KEY):
        r = blocking_pair.post("git", echo_body(f"leak {variant}", id=21), token)
        assert r.status_code == 502
        assert r.json()["error"] == "bad_gateway"
        assert all(form not in r.text for form in encodings(GIT_KEY))
    n = len(encodings(GIT_KEY))
    records = audit_where(blocking_pair.envoy, lambda a: a.get("sub") == "erin" and a["decision"] == "error", n)
    assert len(records) == n and all(a["reason"] == "service_key_in_response" for a in records)
    assert all(a["detail"] == "response carried the service key" for a in records)


def test_sse_stream_carrying_the_key_is_cut_with_block(blocking_pair):
    token = blocking_pair.token("crm", "fay")
    ok = blocking_pair.post("crm", echo_body("harmless"), token)
    assert ok.status_code == 200 and echoed(ok) == "harmless"
    body = echo_body(f"leak {CRM_KEY}", id=22)
    headers = blocking_pair.headers("crm", token)
    received = b""
    cut = False
    with httpx2.Client(timeout=10) as client:
        try:
            with client.stream("POST", f"http://127.0.0.1:{blocking_pair.port}/mcp",
                               content=json.dumps(body), headers=headers) as r:
                assert r.status_code == 200
                assert r.headers["content-type"].startswith("text/event-stream")
                for chunk in r.iter_raw():
                    received += chunk
        except httpx2.HTTPError:
            cut = True
    # The event that carried the key never arrived: the stream was reset instead.
    assert cut, received
    assert b'"result"' not in received
    assert all(form.encode() not in received for form in encodings(CRM_KEY))
    assert b"leak" not in received
    [record] = audit_where(blocking_pair.envoy, lambda a: a.get("sub") == "fay" and a["decision"] == "error", 1)
    assert record["reason"] == "service_key_in_response"
    assert record["detail"] == "response carried the service key"


def test_key_in_a_response_header_is_refused_with_block(tmp_path):
    p = Pair(tmp_path, key_leak="block", echo_key_header="x-echoed-key")
    try:
        for which in ("crm", "git"):  # SSE and JSON alike: refused before the body
            r = p.post(which, echo_body("harmless"), p.token(which, f"hugo-{which}"))
            assert r.status_code == 502
            assert r.json()["error"] == "bad_gateway"
            assert "x-echoed-key" not in r.headers
            assert all(form not in r.text + str(r.headers)
                       for secret in (CRM_KEY, GIT_KEY) for form in encodings(secret))
    finally:
        p.stop()


@pytest.mark.parametrize("status", [401, 403])
def test_upstream_refusing_the_key_becomes_502_without_its_challenge(tmp_path, status):
    wrong = new_key("rotated-elsewhere")
    p = Pair(tmp_path, crm_accepts=[f"Bearer {wrong}"], git_accepts=[wrong], refuse_status=status)
    try:
        for which in ("crm", "git"):
            token = p.token(which, f"gil-{which}")
            r = p.post(which, echo_body("x", id=31), token)
            assert r.status_code == 502, r.text
            assert "www-authenticate" not in r.headers
            assert 'realm="upstream"' not in str(r.headers)
            error = r.json()
            assert error["id"] == 31
            assert error["error"]["code"] == UPSTREAM_CREDENTIAL
            assert "refused the gateway's service credential" in error["error"]["message"]
            # The upstream did answer (it saw this server's key, and refused it).
            assert header_values(p.seen(which)[-1], "x-api-key" if which == "git" else "authorization")
        refused = audit_where(p.envoy, lambda a: a.get("reason") == "upstream_refused_service_credential", 2)
        assert len(refused) == 2
        assert {a["upstream_status"] for a in refused} == {status}
        assert all(a["status"] == 502 and a["decision"] == "error" for a in refused)
    finally:
        p.stop()


# ---- rotation without restart: ECDS from a watched file -----------------------------------------


class EcdsStack:
    """envoy/mcp-guard-ecds.yaml: the filter's configuration is the resource in a watched file
    (envoy/mcp-guard-filter.yaml), republished by an atomic rename to rotate the key."""

    def __init__(self, workdir, key, *, accepts, environment=None, credential=None):
        self.workdir = workdir
        self.dir = workdir / "ecds"
        self.dir.mkdir(mode=0o700)
        self.file = self.dir / "mcp-guard.yaml"
        self.port = harness.free_port()
        self.resource = f"http://127.0.0.1:{self.port}/mcp"
        self.issuer = keys.Issuer(ISSUER, self.resource, algs=("RS256",))
        self.upstream = harness.Upstream(workdir, "upstream", expect_keys=accepts)
        self.version = 0
        self.publish(key, environment=environment, credential=credential)
        try:
            self.envoy = harness.Envoy(workdir, "", self.upstream.port, template="mcp-guard-ecds.yaml",
                                       port=self.port, values={"ECDS_FILE": str(self.file),
                                                               "ECDS_DIR": str(self.dir)})
        except Exception:
            self.upstream.stop()
            raise
        assert self.stats()["version_text"] == "1"

    def config(self, key, policy=None, credential=None):
        config = harness.plugin_config(
            [{"issuer": ISSUER, "audiences": [self.resource], "jwks": self.issuer.jwks()}],
            policy or POLICY, self.resource, key=key)
        if credential is not None:
            config["servers"][0]["credential"] = credential
        return config

    def publish(self, key, policy=None, environment=None, credential=None):
        """Writes the next version of the resource (atomically); returns its version label."""
        self.version += 1
        harness.write_ecds_filter(self.file, self.config(key, policy, credential),
                                  version=str(self.version), environment=environment)
        return str(self.version)

    def stats(self):
        return harness.ecds_stats(self.envoy)

    def wait_stat(self, check, timeout=15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stats = self.stats()
            if check(stats):
                return stats
            time.sleep(0.02)
        raise AssertionError(f"ECDS stats never got there: {self.stats()}")

    def token(self, sub, **claims):
        return self.issuer.token(sub, **claims)

    def headers(self, token, body):
        body, envelope = modern(body)
        return body, {"content-type": "application/json", "accept": ACCEPT,
                      "authorization": f"Bearer {token}", **envelope}

    def call(self, token, text="x", id=1, client=None, extra=None):
        body, headers = self.headers(token, echo_body(text, id))
        headers.update(extra or {})
        return (client or httpx2).post(self.envoy.url, content=json.dumps(body), headers=headers, timeout=10)

    def stop(self):
        self.envoy.stop()
        self.upstream.stop()


class Load:
    """Threads posting tools/call (echo) back to back, each request tagged `x-load-seq` so
    what the upstream received can be matched to when the client sent it."""

    def __init__(self, stack, threads=6):
        self.stack = stack
        self.token = stack.token("load-agent")
        self.results = []  # (seq, sent, done, ok, detail)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(n,), daemon=True) for n in range(threads)]

    def run(self, n):
        i = 0
        with httpx2.Client(timeout=10) as client:
            while not self.stopping.is_set():
                i += 1
                seq = f"{n}-{i}"
                sent = time.time()
                try:
                    r = self.stack.call(self.token, f"load {seq}", id=i, client=client,
                                        extra={"x-load-seq": seq})
                    ok = r.status_code == 200 and echoed(r) == f"load {seq}"
                    detail = "" if ok else f"{r.status_code} {r.text[:300]}"
                except Exception as e:  # noqa: BLE001 — any failure is a failed request
                    ok, detail = False, repr(e)
                with self.lock:
                    self.results.append((seq, sent, time.time(), ok, detail))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=30)

    def failures(self):
        return [r for r in self.results if not r[3]]


OLD_KEY = new_key("rot-old")
NEW_KEY = new_key("rot-new")


@pytest.fixture(scope="module")
def ecds(tmp_path_factory):
    # During a rotation the upstream accepts both keys: the old until every gateway has the
    # new one, the new from before the first gateway sends it (docs/credentials.md).
    s = EcdsStack(tmp_path_factory.mktemp("ecds"), OLD_KEY, accepts=[OLD_KEY, NEW_KEY])
    yield s
    s.stop()


def keys_by_seq(upstream):
    out = {}
    for request in upstream.requests():
        seq = header_values(request, "x-load-seq")
        if seq:
            out[seq[0]] = (header_values(request, "x-api-key"), request["time"])
    return out


def test_rotation_under_load_without_restart(ecds):
    duration, rotate_at = 24.0, 10.0
    before = ecds.stats()
    reloads = int(before["config_reload"])
    pid = ecds.envoy.proc.pid
    with Load(ecds) as load:
        start = time.time()
        time.sleep(rotate_at)
        rotated_at = time.time()
        version = ecds.publish(NEW_KEY)
        stats = ecds.wait_stat(lambda s: s["version_text"] == version and int(s["config_reload"]) > reloads)
        live_at = time.time()
        time.sleep(max(0.0, start + duration - time.time()))
    assert stats["config_fail"] == before["config_fail"]
    assert ecds.envoy.proc.poll() is None and ecds.envoy.proc.pid == pid  # never restarted

    results = load.results
    assert load.failures() == [], load.failures()[:5]
    assert len(results) > 200, len(results)
    # Served continuously: no pause (in practice the longest gap is a few milliseconds).
    done = sorted(r[2] for r in results)
    assert done[0] - start < 2.0 and start + duration - done[-1] < 2.0
    assert max(b - a for a, b in zip(done, done[1:])) < 2.0

    seen = keys_by_seq(ecds.upstream)
    assert set(seen) == {r[0] for r in results}
    assert all(k in ([OLD_KEY], [NEW_KEY]) for k, _ in seen.values())
    sent = {r[0]: r[1] for r in results}
    old = [s for s, (k, _) in seen.items() if k == [OLD_KEY]]
    new = [s for s, (k, _) in seen.items() if k == [NEW_KEY]]
    # The old key until the rotation (never sent once the new configuration was live), …
    assert old and all(sent[s] < live_at for s in old)
    assert all(seen[s][0] == [OLD_KEY] for s in sent if sent[s] < rotated_at)
    # … and every request sent once the new configuration is live carries the new key.
    after = [s for s in sent if sent[s] > live_at]
    assert len(after) > 100 and len(new) >= len(after)
    assert all(seen[s][0] == [NEW_KEY] for s in after)
    print(f"\nrotation: {len(results)} requests, {len(old)} with the old key, {len(new)} with the new; "
          f"live {live_at - rotated_at:.3f} s after the rename; {len(after)} sent after that")
    # No request was audited as an error.
    assert not [a for a in ecds.envoy.audit() if a.get("decision") == "error"]


def test_invalid_rotation_is_rejected_and_the_old_key_keeps_serving(ecds):
    token = ecds.token("jay")
    assert ecds.call(token).status_code == 200
    # NEW_KEY after the rotation test; OLD_KEY when this test runs alone.
    [current] = header_values(ecds.upstream.requests()[-1], "x-api-key")
    before = ecds.stats()
    rejected_key = new_key("rot-rejected")
    bad_policy = json.loads(json.dumps(POLICY))
    bad_policy["rules"][1]["allow"] = "mcp.method =="
    ecds.publish(rejected_key, policy=bad_policy)
    stats = ecds.wait_stat(lambda s: int(s["config_fail"]) > int(before["config_fail"]))
    assert stats["version_text"] == before["version_text"]
    assert "rejected configuration: servers[0].policy.rules[1].allow" in ecds.envoy.output()

    mark = len(ecds.upstream.requests())
    with Load(ecds, threads=3) as load:
        time.sleep(3)
    assert load.failures() == [], load.failures()[:5]
    assert len(load.results) > 20
    after = ecds.upstream.requests()[mark:]
    assert after and all(header_values(r, "x-api-key") == [current] for r in after)
    assert all(rejected_key not in all_header_text(r) for r in ecds.upstream.requests())


def test_an_invalid_first_resource_lets_nothing_through(tmp_path):
    """No default_config: with only an invalid resource, Envoy starts, but the filter chain
    refuses every request (nothing reaches the upstream) until a valid one is published."""
    key = new_key("first")
    bad_policy = json.loads(json.dumps(POLICY))
    bad_policy["rules"][1]["allow"] = "mcp.method =="
    dir = tmp_path / "ecds"
    dir.mkdir(mode=0o700)
    file = dir / "mcp-guard.yaml"
    port = harness.free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    issuer = keys.Issuer(ISSUER, resource, algs=("RS256",))

    def config(policy):
        return harness.plugin_config([{"issuer": ISSUER, "audiences": [resource], "jwks": issuer.jwks()}],
                                     policy, resource, key=key)

    harness.write_ecds_filter(file, config(bad_policy), version="broken")
    upstream = harness.Upstream(tmp_path, "upstream", expect_keys=[key])
    envoy = None
    try:
        envoy = harness.Envoy(tmp_path, "", upstream.port, template="mcp-guard-ecds.yaml", port=port,
                              values={"ECDS_FILE": str(file), "ECDS_DIR": str(dir)})
        stats = harness.ecds_stats(envoy)
        assert stats["config_fail"] == "1" and stats["version_text"] == ""
        body, headers = modern(echo_body("x"))
        headers.update({"content-type": "application/json", "accept": ACCEPT,
                        "authorization": f"Bearer {issuer.token('kim')}"})
        for _ in range(4):
            r = httpx2.post(envoy.url, content=json.dumps(body), headers=headers, timeout=10)
            assert r.status_code == 500
        assert upstream.requests() == []
        harness.write_ecds_filter(file, config(POLICY), version="fixed")
        deadline = time.monotonic() + 15
        while harness.ecds_stats(envoy)["version_text"] != "fixed":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        r = httpx2.post(envoy.url, content=json.dumps(body), headers=headers, timeout=10)
        assert r.status_code == 200 and echoed(r) == "x"
        assert [header_values(q, "x-api-key") for q in upstream.requests()] == [[key]]
    finally:
        if envoy:
            envoy.stop()
        upstream.stop()


def test_rotating_a_key_from_the_vm_environment(tmp_path):
    """value_from_env with the key in the resource's vm_config.environment_variables.key_values:
    republishing the resource with new key_values rotates it too."""
    first, second = new_key("env-first"), new_key("env-second")
    credential = {"header": "x-api-key", "value_from_env": "CRM_API_KEY"}
    s = EcdsStack(tmp_path, "unused-inline-key", accepts=[first, second], credential=credential,
                  environment={"key_values": {"CRM_API_KEY": first}})
    try:
        token = s.token("hal")
        assert s.call(token).status_code == 200
        assert header_values(s.upstream.requests()[-1], "x-api-key") == [first]
        version = s.publish("unused-inline-key", credential=credential,
                            environment={"key_values": {"CRM_API_KEY": second}})
        s.wait_stat(lambda st: st["version_text"] == version)
        for _ in range(6):  # both workers
            assert s.call(token).status_code == 200
            assert header_values(s.upstream.requests()[-1], "x-api-key") == [second]
    finally:
        s.stop()


# ---- neither keys nor tokens in any log ----------------------------------------------------------


def test_keys_and_tokens_never_reach_a_log(tmp_path):
    """A run with successes and every kind of failure, then a grep of the audit log, Envoy's
    log and the upstream's log for every key and every token used."""
    good = new_key("log-good")
    refused = new_key("log-refused")  # a key the upstream does not accept
    s = EcdsStack(tmp_path, good, accepts=[good])
    secrets_used = {good, refused}
    tokens = []
    try:
        token = s.token("ivy", email="ivy@example.com")
        tokens.append(token)
        assert s.call(token, "fine").status_code == 200
        # The key echoed back (redacted on the way out).
        for variant in encodings(good):
            r = s.call(token, f"echo {variant}")
            assert r.status_code == 200 and good not in r.text
        # Bad tokens: expired, wrong audience, forged signature, not a JWT at all.
        bad = [s.token("ivy", ttl=-3600), s.token("ivy", aud="https://elsewhere.example/mcp"),
               keys.SigningKey("RS256", kid=s.issuer.key("RS256").kid).sign(s.issuer.claims("ivy")),
               "not-a-jwt-" + secrets.token_urlsafe(24)]
        tokens += bad
        for t in bad:
            assert s.call(t).status_code == 401
        # A denied call, and a malformed body, with a good token.
        denied = s.headers(token, {"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                                   "params": {"name": "delete_customer", "arguments": {"customer_id": "c-1"}}})
        assert httpx2.post(s.envoy.url, content=json.dumps(denied[0]), headers=denied[1]).status_code == 200
        assert httpx2.post(s.envoy.url, content=b"{not json", headers=denied[1]).status_code == 400

        # Rotations that fail: a key the upstream refuses (→ 502), then configurations the filter
        # refuses, one of them with the secret where a string object was expected.
        version = s.publish(refused)
        s.wait_stat(lambda st: st["version_text"] == version)
        r = s.call(token)
        assert r.status_code == 502 and r.json()["error"]["code"] == UPSTREAM_CREDENTIAL
        bad_policy = json.loads(json.dumps(POLICY))
        bad_policy["rules"][0]["allow"] = "mcp.method in"
        invalid = [
            dict(key=new_key("log-bad-policy"), policy=bad_policy),
            dict(key="x", credential={"header": "x-api-key", "value": 98765432109876543}),
            dict(key="x", credential="sk-" + secrets.token_urlsafe(18)),
            dict(key="x", credential={"header": "x-api-key", "value": "Q" + secrets.token_hex(3)}),
            dict(key="x", credential={"header": "x-api-key", "value": "bad\nkey-" + secrets.token_urlsafe(9)}),
        ]
        fails = int(s.stats()["config_fail"])
        for change in invalid:
            credential = change.get("credential")
            if isinstance(credential, str):
                secrets_used.add(credential)
            elif credential:
                secrets_used.add(str(credential["value"]))
                secrets_used.add(str(credential["value"]).split("\n")[-1])
            else:
                secrets_used.add(change["key"])
            s.publish(change["key"], policy=change.get("policy"), credential=credential)
            fails += 1
            s.wait_stat(lambda st, n=fails: int(st["config_fail"]) >= n)
        assert s.stats()["version_text"] == version  # the 502 configuration still serves
        assert s.call(token).status_code == 502
    finally:
        s.stop()

    logs = {
        "audit": s.envoy.access_log.read_text(),
        "envoy": s.envoy.log.read_text(),
        "upstream": s.upstream.log.read_text(),
    }
    # The logs are not empty: the failures above were recorded.
    assert logs["envoy"].count("mcp-guard: rejected configuration") == len(invalid)
    assert len(logs["audit"].splitlines()) >= 10
    assert "upstream_refused_service_credential" in logs["audit"]
    for name, text in logs.items():
        for secret in secrets_used:
            for form in encodings(secret):
                assert form not in text, f"{name} log contains a service key"
        for t in tokens:
            assert t not in text, f"{name} log contains a client token"
            # Nor a token's signature part alone.
            if t.count(".") == 2:
                assert t.rsplit(".", 1)[1] not in text, f"{name} log contains a token signature"


# ---- one Envoy, two MCP servers, two policies ------------------------------------------------

CRM_POLICY = {"name": "crm-readers", "version": "2", "default": "deny", "rules": [
    {"name": "discover", "allow": 'mcp.method in ["tools/list", "ping"]'},
    {"name": "read", "allow": 'mcp.tool.name in ["get_customer", "search_customers", "echo"]'},
]}
GIT_POLICY = {"name": "git-writers", "version": "5", "default": "deny", "rules": [
    {"name": "discover", "allow": 'mcp.method in ["tools/list", "ping"]'},
    {"name": "push", "allow": 'mcp.tool.name in ["push_branch", "echo"] && mcp.tool.arguments.owner == "acme"'},
    {"name": "echo", "allow": 'mcp.tool.name == "echo"'},
]}


@pytest.fixture(scope="module")
def two_policies(tmp_path_factory):
    p = Pair(tmp_path_factory.mktemp("policies"), policies={"crm": CRM_POLICY, "git": GIT_POLICY})
    yield p
    p.stop()


def call(name, arguments, id=1):
    return {"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": name, "arguments": arguments}}


def test_each_server_enforces_its_own_policy(two_policies):
    p = two_policies
    crm, git = p.token("crm", "pol-crm"), p.token("git", "pol-git")
    assert echoed(p.post("crm", call("get_customer", {"customer_id": "c-100"}), crm)).startswith("{")
    denied = messages(p.post("crm", call("push_branch", {"owner": "acme", "repo": "r", "branch": "b"}), crm).text)[0]
    assert denied["error"]["data"] == {"rule": None, "policy": "crm-readers", "policy_version": "2"}
    assert "pushed acme/r@b" in echoed(p.post("git", call("push_branch", {"owner": "acme", "repo": "r", "branch": "b"}), git))
    denied = messages(p.post("git", call("get_customer", {"customer_id": "c-100"}), git).text)[0]
    assert denied["error"]["data"]["policy"] == "git-writers"
    other_owner = messages(p.post("git", call("push_branch", {"owner": "evil", "repo": "r", "branch": "b"}), git).text)[0]
    assert other_owner["error"]["code"] == -31403

    listed = {t["name"] for t in messages(p.post("git", {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, git).text)[0]["result"]["tools"]}
    assert listed == {"push_branch", "echo"}
    listed = {t["name"] for t in messages(p.post("crm", {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, crm).text)[0]["result"]["tools"]}
    assert listed == {"get_customer", "search_customers", "echo"}
    records = audit_where(p.envoy, lambda r: r.get("sub") in ("pol-crm", "pol-git") and r.get("method") == "tools/call", 5)
    assert {(r["sub"], r["policy"], r["policy_version"]) for r in records} == {
        ("pol-crm", "crm-readers", "2"), ("pol-git", "git-writers", "5")}


def test_a_token_for_one_server_is_refused_by_the_other(two_policies):
    p = two_policies
    crm_token = p.token("crm", "cross-aud")
    before = len(p.seen("git"))
    r = p.post("git", call("echo", {"text": "x"}), crm_token)
    assert r.status_code == 401
    assert 'error="invalid_token"' in r.headers["www-authenticate"]
    assert f'resource_metadata="http://git.internal:{p.port}/.well-known/oauth-protected-resource/mcp"' in r.headers["www-authenticate"]
    assert len(p.seen("git")) == before
    assert audit_where(p.envoy, lambda r: r.get("reason") == "wrong_audience", 1)


def test_a_host_envoy_routes_by_another_virtual_host_does_not_get_this_servers_key(tmp_path_factory):
    """Servers told apart by `match.host`: crm.internal is CRM's virtual host, every other
    host (`*`) goes to Git. `crm.internal:<port>` is not a domain of CRM's virtual host, so
    Envoy routes it to Git; the filter must not take it for CRM and inject CRM's key into a
    request to Git. It compares the host as Envoy does, port included."""
    workdir = tmp_path_factory.mktemp("host-match")
    text = (harness.ROOT / "envoy" / "two-upstreams.yaml").read_text()
    routed = (text.replace('domains: ["crm.internal", "crm.internal:*"]', 'domains: ["crm.internal"]')
                  .replace('domains: ["git.internal", "git.internal:*"]', 'domains: ["*"]'))
    assert routed.count("domains:") == 2 and '["*"]' in routed and '["crm.internal"]' in routed
    template = workdir / "host-match.yaml"
    template.write_text(routed)
    p = Pair(workdir, matches={"crm": {"host": "crm.internal"}, "git": {}}, template=str(template))
    try:
        token = p.token("crm", "host-ann")
        seen = {which: len(p.seen(which)) for which in ("crm", "git")}
        # With its port: Envoy routes to Git, the filter decides as Git (the token is CRM's).
        r = p.post("crm", echo_body("ported"), token)
        assert r.status_code == 401, r.text
        assert audit_where(p.envoy, lambda r: r.get("reason") == "wrong_audience"
                           and r.get("server") == "git", 1)
        assert len(p.seen("git")) == seen["git"] and len(p.seen("crm")) == seen["crm"]
        # Without: CRM's virtual host, CRM's server and key.
        h = [(k, v) for k, v in p.headers("crm", token) if k != "host"] + [("host", "crm.internal")]
        r = httpx2.post(f"http://127.0.0.1:{p.port}/mcp", content=json.dumps(echo_body("bare")),
                        headers=h, timeout=10)
        assert r.status_code == 200, r.text
        assert echoed(r) == "bare"
        assert len(p.seen("crm")) == seen["crm"] + 1 and len(p.seen("git")) == seen["git"]
    finally:
        p.stop()


def test_each_server_serves_its_own_metadata(two_policies):
    p = two_policies
    for which in ("crm", "git"):
        r = httpx2.get(f"http://127.0.0.1:{p.port}/.well-known/oauth-protected-resource/mcp",
                       headers={"host": f"{which}.internal:{p.port}"})
        assert r.status_code == 200
        assert r.json()["resource"] == p.resources[which]
