"""A fleet: two Envoy replicas with the same configuration (one ECDS file both watch) in front of
one stateful MCP server (official Python SDK). Sessions are sealed for their caller, so any
replica serves them, a restart loses nothing, and no replica lets another caller use them."""

import base64
import json
import secrets
import threading
import time

import httpx2
import pytest

import harness
import keys

ISSUER = "https://idp.example"
RESOURCE = "https://mcp.fleet.example/mcp"
ACCEPT = "application/json, text/event-stream"
LEGACY = "2025-11-25"
POLICY = harness.load_policy(harness.ROOT / "policies" / "demo.yaml")


def new_key():
    return base64.b64encode(secrets.token_bytes(32)).decode()


KEY_1 = new_key()
KEY_2 = new_key()

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": LEGACY, "capabilities": {},
                   "clientInfo": {"name": "fleet-test", "version": "1"}}}
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}


def echo(text, id=2):
    return {"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": text}}}


def messages(text):
    return [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")] or \
        ([json.loads(text)] if text.strip().startswith("{") else [])


def echoed(response):
    [message] = [m for m in messages(response.text) if "result" in m or "error" in m]
    assert "result" in message, message
    return message["result"]["content"][0]["text"]


class Fleet:
    def __init__(self, workdir):
        self.workdir = workdir
        self.dir = workdir / "ecds"
        self.dir.mkdir(mode=0o700)
        self.file = self.dir / "mcp-guard.yaml"
        self.issuer = keys.Issuer(ISSUER, RESOURCE, algs=("RS256",))
        self.server = harness.McpServer(workdir)
        self.version = 0
        self.publish({"key": KEY_1})
        self.replicas = {}
        try:
            for name in ("a", "b"):
                self.replicas[name] = self.start(name)
        except Exception:
            self.stop()
            raise

    def config(self, sessions):
        config = harness.plugin_config(
            [{"issuer": ISSUER, "audiences": [RESOURCE], "algorithms": ["RS256"],
              "jwks": self.issuer.jwks()}], POLICY, RESOURCE, sessions=sessions)
        # A second protected server on the same Envoy, for handles presented at the wrong one.
        other = json.loads(json.dumps(config["servers"][0]))
        other.update(name="hr", path="/hr/mcp", resource="https://mcp.fleet.example/hr/mcp",
                     audiences=[RESOURCE])
        config["servers"].append(other)
        return config

    def publish(self, sessions):
        """Both replicas read this one file: the same configuration everywhere."""
        self.version += 1
        harness.write_ecds_filter(self.file, self.config(sessions), version=str(self.version))
        return str(self.version)

    def wait_version(self, version, timeout=20.0):
        deadline = time.monotonic() + timeout
        for envoy in self.replicas.values():
            while harness.ecds_stats(envoy).get("version_text") != version:
                assert time.monotonic() < deadline, harness.ecds_stats(envoy)
                time.sleep(0.05)

    def start(self, name, port=None):
        work = self.workdir / name
        work.mkdir(exist_ok=True)
        return harness.Envoy(work, "", self.server.port, template="mcp-guard-ecds.yaml", port=port,
                             values={"ECDS_FILE": str(self.file), "ECDS_DIR": str(self.dir)})

    def restart(self, name):
        old = self.replicas[name]
        old.stop()
        self.replicas[name] = self.start(name, port=old.port)
        return self.replicas[name]

    def token(self, sub, **claims):
        return self.issuer.token(sub, **claims)

    def post(self, replica, token, body, session=None, path="/mcp", client=None, method="POST"):
        envoy = self.replicas[replica]
        h = {"content-type": "application/json", "accept": ACCEPT, "mcp-protocol-version": LEGACY,
             "authorization": f"Bearer {token}"}
        if session is not None:
            h["mcp-session-id"] = session
        content = json.dumps(body) if body is not None else None
        return (client or httpx2).request(method, f"http://127.0.0.1:{envoy.port}{path}",
                                          content=content, headers=h, timeout=10)

    def initialize(self, replica, token, client=None):
        r = self.post(replica, token, INIT, client=client)
        assert r.status_code == 200, r.text
        handle = r.headers["mcp-session-id"]
        r = self.post(replica, token, INITIALIZED, handle, client=client)
        assert r.status_code == 202, r.text
        return handle

    def upstream_requests(self):
        return self.server.requests()

    def stop(self):
        for envoy in self.replicas.values():
            envoy.stop()
        self.server.stop()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    f = Fleet(tmp_path_factory.mktemp("fleet"))
    yield f
    f.stop()


def upstream_session_ids(fleet, since=0):
    return [v for r in fleet.upstream_requests()[since:] for k, v in r["headers"]
            if k == "mcp-session-id"]


def same_session(audited, sent):
    """The audit keeps the handle the client sent (strings past 256 characters are cut)."""
    if audited is None:
        return False
    return audited == sent or (len(sent) > 256 and sent.startswith(audited[:200]))


def audit_reason(envoy, sub, reason, session, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [r for r in envoy.audit() if r.get("sub") == sub and r.get("reason") == reason
                 and same_session(r.get("session_id"), session)]
        if found:
            return found[-1]
        time.sleep(0.1)
    raise AssertionError(f"no audit record of {sub} with reason {reason}")


def refused(fleet, replica, token, handle, reason, sub, method="POST", path="/mcp"):
    """The request is answered 404 -32001 by the filter, audited with `reason`, and the upstream
    receives nothing."""
    before = len(fleet.upstream_requests())
    body = echo("stolen") if method == "POST" else None
    r = fleet.post(replica, token, body, handle, path=path, method=method)
    assert r.status_code == 404, (r.status_code, r.text)
    error = r.json()["error"]
    assert (error["code"], error["message"]) == (-32001, "Session not found")
    # Audited with the handle the client sent, never the upstream's id.
    record = audit_reason(fleet.replicas[replica], sub, reason, handle)
    assert record["status"] == 404 and record["decision"] == "deny"
    time.sleep(0.2)
    assert len(fleet.upstream_requests()) == before, "the upstream saw the refused request"


def test_a_session_opened_on_one_replica_is_served_by_the_other(fleet):
    alice = fleet.token("alice", groups=["sales"])
    mark = len(fleet.upstream_requests())
    handle = fleet.initialize("a", alice)
    assert handle.startswith("mg1.") and handle.isascii() and len(handle) < 200
    for i, replica in enumerate("babab"):
        r = fleet.post(replica, alice, echo(f"hello {i}", id=10 + i), handle)
        assert r.status_code == 200 and echoed(r) == f"hello {i}"
    # One upstream session throughout, under its own id; the handle never reached it.
    ids = set(upstream_session_ids(fleet, mark))
    assert len(ids) == 1 and handle not in ids
    [upstream_id] = ids
    assert upstream_id not in handle
    # The client only ever saw the handle; every answer carries the same one.
    r = fleet.post("b", alice, echo("again", id=20), handle)
    assert r.headers["mcp-session-id"] == handle


def test_get_streams_and_delete_work_with_handles(fleet):
    alice = fleet.token("alice-2", groups=["sales"])
    handle = fleet.initialize("a", alice)
    mark = len(fleet.upstream_requests())
    h = {"accept": "text/event-stream", "mcp-protocol-version": LEGACY,
         "authorization": f"Bearer {alice}", "mcp-session-id": handle}
    with httpx2.stream("GET", fleet.replicas["b"].url, headers=h, timeout=10) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
    mallory = fleet.token("mallory", groups=["sales"])
    refused(fleet, "b", mallory, handle, "session_of_another_caller", "mallory", method="GET")
    refused(fleet, "a", mallory, handle, "session_of_another_caller", "mallory", method="DELETE")
    r = fleet.post("b", alice, None, handle, method="DELETE")
    assert r.status_code == 200, r.text
    [get, delete] = [r for r in fleet.upstream_requests()[mark:] if r["method"] in ("GET", "DELETE")]
    upstream = dict(get["headers"])["mcp-session-id"]
    assert upstream != handle and dict(delete["headers"])["mcp-session-id"] == upstream
    # Ended upstream: the upstream itself now answers 404 on the other replica.
    r = fleet.post("a", alice, echo("after the end"), handle)
    assert r.status_code == 404


def test_another_caller_gets_404_on_either_replica_before_and_after_the_owner(fleet):
    alice = fleet.token("alice-3", groups=["sales"])
    bob = fleet.token("bob", groups=["sales"])
    handle = fleet.initialize("a", alice)
    # Before alice ever used replica b, and on the replica that issued it.
    refused(fleet, "b", bob, handle, "session_of_another_caller", "bob")
    refused(fleet, "a", bob, handle, "session_of_another_caller", "bob")
    # Alice's session is untouched, on both replicas.
    for replica in "ba":
        r = fleet.post(replica, alice, echo(f"mine on {replica}"), handle)
        assert r.status_code == 200 and echoed(r) == f"mine on {replica}"
    # After she used them: still refused to bob.
    refused(fleet, "b", bob, handle, "session_of_another_caller", "bob")
    refused(fleet, "a", bob, handle, "session_of_another_caller", "bob")
    # Bob's own session is his alone.
    bobs = fleet.initialize("b", bob)
    assert bobs != handle
    refused(fleet, "a", alice, bobs, "session_of_another_caller", "alice-3")


def test_a_restarted_replica_keeps_serving_the_session(fleet):
    alice = fleet.token("alice-4", groups=["sales"])
    handle = fleet.initialize("a", alice)
    assert echoed(fleet.post("b", alice, echo("before"), handle)) == "before"
    for replica in "ba":
        fleet.restart(replica)
        r = fleet.post(replica, alice, echo(f"after restarting {replica}"), handle)
        assert r.status_code == 200 and echoed(r) == f"after restarting {replica}"
    refused(fleet, "b", fleet.token("eve", groups=["sales"]), handle,
            "session_of_another_caller", "eve")


def test_tampered_or_unsealed_ids_are_refused(fleet):
    alice = fleet.token("alice-5", groups=["sales"])
    mark = len(fleet.upstream_requests())
    handle = fleet.initialize("a", alice)
    [upstream_id] = set(upstream_session_ids(fleet, mark))
    middle = len(handle) // 2
    flipped = "B" if handle[middle] != "B" else "C"
    tampered = handle[:middle] + flipped + handle[middle + 1:]
    refused(fleet, "b", alice, tampered, "session_tampered", "alice-5")
    # Knowing the upstream's own id gets nobody anywhere, not even its owner.
    refused(fleet, "a", alice, upstream_id, "session_not_sealed", "alice-5")
    refused(fleet, "a", alice, "mg1." + "A" * 2000, "session_not_sealed", "alice-5")
    assert echoed(fleet.post("b", alice, echo("intact"), handle)) == "intact"


def test_a_handle_for_one_server_is_refused_on_another(fleet):
    alice = fleet.token("alice-6", groups=["sales"])
    handle = fleet.initialize("a", alice)
    refused(fleet, "b", alice, handle, "session_of_another_server", "alice-6", path="/hr/mcp")


def test_a_token_naming_no_caller_gets_no_session(fleet):
    # client_id stands in for a missing sub: the session is bound to the client.
    app = fleet.token(None, client_id="batch-app", groups=["sales"])
    handle = fleet.initialize("a", app)
    assert echoed(fleet.post("b", app, echo("app"), handle)) == "app"
    other_app = fleet.token(None, client_id="other-app", groups=["sales"])
    before = len(fleet.upstream_requests())
    r = fleet.post("b", other_app, echo("x"), handle)
    assert r.status_code == 404
    assert len(fleet.upstream_requests()) == before
    # Neither sub nor client_id nor azp: no session is handed out, and the audit says why.
    nobody = fleet.token(None, groups=["sales"])
    r = fleet.post("a", nobody, INIT)
    assert r.status_code == 403 and "mcp-session-id" not in r.headers
    assert "neither a subject" in r.json()["error"]["message"]
    deadline = time.monotonic() + 10
    while not [x for x in fleet.replicas["a"].audit() if x.get("reason") == "session_unbindable"]:
        assert time.monotonic() < deadline, "no session_unbindable record"
        time.sleep(0.1)
    r = fleet.post("b", nobody, echo("x"), handle)
    assert r.status_code == 404


class Load:
    """Callers each with their own session, posting echo through the replicas in turn; some
    open a new session on one replica and go on with it on the other."""

    def __init__(self, fleet, callers=4):
        self.fleet = fleet
        self.results = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(n,), daemon=True)
                        for n in range(callers)]

    def run(self, n):
        token = self.fleet.token(f"load-{n}", groups=["sales"])
        i = 0
        with httpx2.Client(timeout=10) as client:
            handle = None
            while not self.stopping.is_set():
                i += 1
                replica = "ab"[(i + n) % 2]
                try:
                    if handle is None or (n % 2 and i % 25 == 0):
                        handle = self.fleet.initialize(replica, token, client=client)
                        replica = "ba"[(i + n) % 2]
                    text = f"load {n}-{i}"
                    r = self.fleet.post(replica, token, echo(text, id=i), handle, client=client)
                    ok = r.status_code == 200 and echoed(r) == text
                    detail = "" if ok else f"{replica} {r.status_code} {r.text[:200]}"
                except Exception as e:  # noqa: BLE001 — any failure is a failed request
                    ok, detail = False, f"{replica} {e!r}"
                with self.lock:
                    self.results.append((time.time(), ok, detail))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=30)


def test_key_rotation_under_load_breaks_no_session(fleet):
    """docs/fleet.md's procedure: (1) the new key is added for opening (previous_key) on every
    replica, (2) it becomes the key new handles are sealed with, the old one kept for opening.
    Under continuous load through both replicas for more than 20 s, no request fails."""
    alice = fleet.token("alice-7", groups=["sales"])
    old_handle = fleet.initialize("a", alice)
    start = time.monotonic()
    with Load(fleet) as load:
        time.sleep(4)
        fleet.wait_version(fleet.publish({"key": KEY_1, "previous_key": KEY_2}))
        time.sleep(4)
        fleet.wait_version(fleet.publish({"key": KEY_2, "previous_key": KEY_1}))
        while time.monotonic() - start < 22:
            time.sleep(0.5)
    failures = [r for r in load.results if not r[1]]
    assert len(load.results) > 200, len(load.results)
    assert failures == [], failures[:5]
    # Sessions from before the rotation still open (the old key is the previous one now) ...
    assert echoed(fleet.post("b", alice, echo("old handle"), old_handle)) == "old handle"
    # ... new ones are sealed with the new key, and the answers to old handles resealed with it.
    new_handle = fleet.initialize("b", alice)
    assert new_handle[4:9] != old_handle[4:9]  # another key id
    r = fleet.post("a", alice, echo("resealed"), old_handle)
    assert r.headers["mcp-session-id"] != old_handle
    assert echoed(fleet.post("b", alice, echo("resealed works"), r.headers["mcp-session-id"])) \
        == "resealed works"
    # (3) once the old key is dropped, its handles no longer open: the client starts anew.
    fleet.wait_version(fleet.publish({"key": KEY_2}))
    refused(fleet, "a", alice, old_handle, "session_key_unknown", "alice-7")
    assert echoed(fleet.post("a", alice, echo("new key"), new_handle)) == "new key"


def test_switching_the_cipher_under_load_breaks_no_session(fleet):
    """docs/fleet.md: once every replica runs a version that opens both, `sessions.cipher`
    switches to XChaCha20-Poly1305. Under continuous load through both replicas, no request
    fails; handles sealed before the switch keep opening, and the answers to them name the
    session in the new cipher, which opens everywhere."""
    fleet.wait_version(fleet.publish({"key": KEY_1}))
    alice = fleet.token("alice-8", groups=["sales"])
    old_handle = fleet.initialize("a", alice)
    assert old_handle.startswith("mg1."), old_handle
    start = time.monotonic()
    with Load(fleet) as load:
        time.sleep(4)
        fleet.wait_version(fleet.publish({"key": KEY_1, "cipher": "xchacha20-poly1305"}))
        while time.monotonic() - start < 14:
            time.sleep(0.5)
    failures = [r for r in load.results if not r[1]]
    assert len(load.results) > 100, len(load.results)
    assert failures == [], failures[:5]
    new_handle = fleet.initialize("b", alice)
    assert new_handle.startswith("mg2.") and new_handle.isascii() and len(new_handle) < 200
    r = fleet.post("a", alice, echo("old handle"), old_handle)
    assert echoed(r) == "old handle" and r.headers["mcp-session-id"].startswith("mg2.")
    assert echoed(fleet.post("b", alice, echo("resealed"), r.headers["mcp-session-id"])) \
        == "resealed"
    # Sealed in the new cipher, a handle is still its caller's and server's only.
    bob = fleet.token("bob-8", groups=["sales"])
    refused(fleet, "b", bob, new_handle, "session_of_another_caller", "bob-8")
    refused(fleet, "a", alice, new_handle, "session_of_another_server", "alice-8", path="/hr/mcp")
    middle = len(new_handle) // 2
    tampered = new_handle[:middle] + ("B" if new_handle[middle] != "B" else "C") \
        + new_handle[middle + 1:]
    refused(fleet, "b", alice, tampered, "session_tampered", "alice-8")
