"""Caller-bound task ids through two real Envoy replicas (one configuration, one sealing key) in
front of one task-running MCP server. The server issues its own task ids (2025-11-25 tasks and
the 2026-07-28 tasks extension, in JSON and in SSE answers); clients only ever see them sealed for
themselves, any replica opens a caller's handle, and another caller presenting it is told the
task does not exist while the server sees nothing."""

import itertools
import json
import threading
import time

import httpx2
import pytest

import harness
import keys

ISSUER = "https://idp.example"
RESOURCE = "https://mcp.tasks.example/mcp"
LEGACY = "2025-11-25"
MODERN = "2026-07-28"
RELATED = "io.modelcontextprotocol/related-task"

POLICY = {
    "name": "tasks",
    "version": "1",
    "default": "deny",
    "rules": [
        {"name": "tools", "allow": "mcp.method == 'tools/call'"},
        {"name": "tasks", "allow": "mcp.method in ['tasks/get', 'tasks/update', 'tasks/cancel', 'tasks/list',"
                                   " 'tasks/result', 'subscriptions/listen']"},
    ],
}


class TaskServer:
    """An MCP server that runs every `slow` tool call as a task, on a scripted upstream. It trusts
    whoever calls it with the service key: it cannot tell the callers apart."""

    def __init__(self):
        self.tasks = {}
        self.ids = itertools.count(1)
        self.lock = threading.Lock()
        self.upstream = harness.ScriptedUpstream(self.answer)

    def create(self):
        with self.lock:
            task_id = f"upstream-task-{next(self.ids)}"
            self.tasks[task_id] = "working"
        return task_id

    def latest(self):
        with self.lock:
            return max(self.tasks, key=lambda t: int(t.rsplit("-", 1)[1]))

    def answer(self, request):
        message = request["json"] or {}
        method, params, mid = message.get("method"), message.get("params") or {}, message.get("id")
        reply = lambda result: {"jsonrpc": "2.0", "id": mid, "result": result}  # noqa: E731
        if method == "tools/call" and params.get("name") == "slow":
            # 2025-11-25: CreateTaskResult { task }.
            return harness.Answer.json(reply({"task": {"taskId": self.create(), "status": "working",
                                                      "ttl": 60000, "pollInterval": 100}}))
        if method == "tools/call" and params.get("name") == "slow_events":
            # 2026-07-28 over SSE: an unsolicited status notification, then the CreateTaskResult.
            task_id = self.create()
            return harness.Answer.events(
                {"jsonrpc": "2.0", "method": "notifications/tasks/status",
                 "params": {"taskId": task_id, "status": "working"}},
                reply({"resultType": "task", "taskId": task_id, "status": "working",
                       "_meta": {RELATED: {"taskId": task_id}}}))
        if method in ("tasks/get", "tasks/cancel"):
            status = self.tasks.get(params.get("taskId"))
            if status is None:
                return harness.Answer.json({"jsonrpc": "2.0", "id": mid, "error": {
                    "code": -32602, "message": "Failed to retrieve task: Task not found"}})
            return harness.Answer.json(reply({"taskId": params["taskId"], "status": status}))
        if method == "tasks/update":
            return harness.Answer.json(reply({"resultType": "complete"}))
        if method == "subscriptions/listen":
            # The status of each task asked for, as a stream.
            return harness.Answer.events(*[
                {"jsonrpc": "2.0", "method": "notifications/tasks",
                 "params": {"taskId": t, "status": self.tasks.get(t, "unknown")}}
                for t in params["notifications"].get("taskIds", [])])
        if method == "tasks/list":
            return harness.Answer.json(reply({"tasks": [{"taskId": t, "status": s}
                                                        for t, s in sorted(self.tasks.items())]}))
        return harness.Answer.json({"jsonrpc": "2.0", "id": mid, "error": {"code": -32601, "message": "?"}})

    def received(self, method=None):
        return [r["json"] for r in self.upstream.requests()
                if r["json"] and (method is None or r["json"].get("method") == method)]

    def request_headers(self, method):
        return [dict(r["headers"]) for r in self.upstream.requests()
                if r["json"] and r["json"].get("method") == method]


class Fleet:
    def __init__(self, tmp_path_factory):
        self.issuer = keys.Issuer(ISSUER, RESOURCE, algs=("RS256",))
        self.server = TaskServer()
        self.config = harness.plugin_config(
            [{"issuer": ISSUER, "audiences": [RESOURCE], "algorithms": ["RS256"],
              "jwks": self.issuer.jwks()}], POLICY, RESOURCE)
        self.replicas = []
        try:
            for name in ("a", "b"):
                self.replicas.append(harness.Envoy(tmp_path_factory.mktemp(f"tasks-{name}"), self.config,
                                                   self.server.upstream.port))
        except Exception:
            self.stop()
            raise

    def stop(self):
        for r in self.replicas:
            r.stop()
        self.server.upstream.stop()

    def post(self, replica, sub, message, version=LEGACY, headers=None):
        h = {"content-type": "application/json", "accept": "application/json, text/event-stream",
             "authorization": f"Bearer {self.issuer.token(sub)}", "mcp-protocol-version": version}
        h.update(headers or {})
        return httpx2.post(self.replicas[replica].url, content=json.dumps(message), headers=h, timeout=10)

    def audit(self, **match):
        return [r for envoy in self.replicas for r in envoy.audit()
                if all(r.get(k) == v for k, v in match.items())]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    f = Fleet(tmp_path_factory)
    yield f
    f.stop()


def call(name, id=1):
    return {"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": name, "arguments": {}, "task": {"ttl": 60000}}}


def task_request(method, task_id, id=2):
    return {"jsonrpc": "2.0", "id": id, "method": method, "params": {"taskId": task_id}}


def events(text):
    return [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]


def wait_for(fleet, count, **match):
    end = time.monotonic() + 10
    while True:
        found = fleet.audit(**match)
        if len(found) >= count or time.monotonic() > end:
            return found
        time.sleep(0.1)


def test_a_task_is_polled_by_its_caller_through_any_replica_and_by_nobody_else(fleet):
    created = fleet.post(0, "alice", call("slow"))
    assert created.status_code == 200, created.text
    handle = created.json()["result"]["task"]["taskId"]
    upstream_id = fleet.server.latest()
    # The client sees a sealed handle, never the server's id.
    assert handle.startswith("mg1.") and upstream_id not in created.text

    # Alice polls through the other replica: the server gets its own id, body and Mcp-Name.
    polled = fleet.post(1, "alice", task_request("tasks/get", handle), version=MODERN,
                        headers={"mcp-method": "tasks/get", "mcp-name": handle})
    assert polled.status_code == 200, polled.text
    assert polled.json()["result"] == {"taskId": handle, "status": "working"}
    assert fleet.server.received("tasks/get")[-1]["params"]["taskId"] == upstream_id
    assert fleet.server.request_headers("tasks/get")[-1]["mcp-name"] == upstream_id

    # Bob presents alice's handle on either replica: no such task, and the server sees nothing.
    before = len(fleet.server.received())
    for replica in (0, 1):
        for method in ("tasks/get", "tasks/cancel"):
            refused = fleet.post(replica, "bob", task_request(method, handle, id=7))
            assert refused.status_code == 200
            assert refused.json() == {"jsonrpc": "2.0", "id": 7, "error": {
                "code": -32602, "message": "Failed to retrieve task: Task not found"}}
    # The server's own id sent raw is no task either.
    raw = fleet.post(0, "alice", task_request("tasks/get", upstream_id, id=8))
    assert raw.json()["error"]["code"] == -32602
    assert len(fleet.server.received()) == before
    assert fleet.server.tasks[upstream_id] == "working"

    denied = wait_for(fleet, 4, sub="bob", reason="task_not_found", detail="task_of_another_caller")
    assert len(denied) == 4 and all(r["decision"] == "deny" for r in denied)
    assert wait_for(fleet, 1, sub="alice", reason="task_not_found", detail="task_not_sealed")


def test_sse_answers_carry_only_sealed_task_ids(fleet):
    answer = fleet.post(1, "carol", call("slow_events"), version=MODERN,
                        headers={"mcp-method": "tools/call", "mcp-name": "slow_events"})
    assert answer.status_code == 200, answer.text
    notification, created = events(answer.text)
    upstream_id = fleet.server.latest()
    assert upstream_id not in answer.text
    handle = created["result"]["taskId"]
    assert handle.startswith("mg1.")
    assert notification["params"]["taskId"] == handle
    assert created["result"]["_meta"][RELATED]["taskId"] == handle
    # The handle from the stream works on the other replica.
    polled = fleet.post(0, "carol", task_request("tasks/get", handle))
    assert polled.json()["result"]["taskId"] == handle


def test_a_task_listing_shows_no_other_callers_task(fleet):
    fleet.post(0, "dave", call("slow"))
    fleet.post(1, "erin", call("slow"))
    assert len(fleet.server.tasks) >= 2
    for replica, sub in ((0, "dave"), (1, "erin")):
        listed = fleet.post(replica, sub, {"jsonrpc": "2.0", "id": 3, "method": "tasks/list"})
        assert listed.status_code == 200
        # The server lists every caller's tasks by its own ids; none of them can be shown to be
        # this caller's, so none goes out (and no upstream id ever does).
        assert listed.json()["result"]["tasks"] == []
        assert "upstream-task" not in listed.text
    records = wait_for(fleet, 1, sub="erin", method="tasks/list")
    assert records[0]["hidden"] == len(fleet.server.tasks)


def test_a_restarted_replica_still_opens_the_callers_handles(fleet, tmp_path_factory):
    created = fleet.post(0, "fred", call("slow"))
    handle = created.json()["result"]["task"]["taskId"]
    fleet.replicas[1].stop()
    fleet.replicas[1] = harness.Envoy(tmp_path_factory.mktemp("tasks-b2"), fleet.config,
                                      fleet.server.upstream.port)
    polled = fleet.post(1, "fred", task_request("tasks/get", handle))
    assert polled.json()["result"] == {"taskId": handle, "status": "working"}
    assert fleet.post(1, "gina", task_request("tasks/get", handle)).json()["error"]["code"] == -32602


def test_subscriptions_and_updates_name_only_the_callers_own_tasks(fleet):
    handle = fleet.post(0, "hana", call("slow")).json()["result"]["task"]["taskId"]
    upstream_id = fleet.server.latest()
    modern = lambda method: {"mcp-method": method}  # noqa: E731
    listen = {"jsonrpc": "2.0", "id": 5, "method": "subscriptions/listen",
              "params": {"notifications": {"taskIds": [handle]}}}
    stream = fleet.post(1, "hana", listen, version=MODERN, headers=modern("subscriptions/listen"))
    assert stream.status_code == 200, stream.text
    [status] = events(stream.text)
    assert status["params"] == {"taskId": handle, "status": "working"}
    assert fleet.server.received("subscriptions/listen")[-1]["params"]["notifications"]["taskIds"] == [upstream_id]
    update = {"jsonrpc": "2.0", "id": 6, "method": "tasks/update",
              "params": {"taskId": handle, "inputResponses": {"confirm": {"action": "accept"}},
                         "_meta": {RELATED: {"taskId": handle}}}}
    ok = fleet.post(0, "hana", update, version=MODERN,
                    headers={"mcp-method": "tasks/update", "mcp-name": handle})
    assert ok.json()["result"] == {"resultType": "complete"}
    forwarded = fleet.server.received("tasks/update")[-1]["params"]
    assert forwarded["taskId"] == upstream_id and forwarded["_meta"][RELATED]["taskId"] == upstream_id

    before = len(fleet.server.received())
    for message, method in ((listen, "subscriptions/listen"), (update, "tasks/update")):
        refused = fleet.post(1, "ivan", message, version=MODERN,
                             headers={"mcp-method": method, "mcp-name": handle} if method == "tasks/update"
                             else modern(method))
        assert refused.json()["error"] == {"code": -32602, "message": "Failed to retrieve task: Task not found"}
    assert len(fleet.server.received()) == before
