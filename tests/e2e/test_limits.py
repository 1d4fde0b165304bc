"""Rate limits and budgets through real Envoy: local token buckets shared exactly by Envoy's two
worker threads, a global limit shared by two Envoy replicas through a rate limit service built
on Kuadrant's limitador with a real Redis, the service stopped mid-test (failure modes), and a
key that reads a claim the token lacks."""

import json
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import httpx2
import pytest
import yaml

import harness
import keys
from mcp import MCPError
from stack import Stack, mcp_client, modern, run

RATE_LIMITED = -31429
RLS_BINARY = harness.ROOT / "target" / "rls" / "release" / "mcp-guard-test-rls"

LOCAL_POLICY = {
    "name": "limited", "version": "1", "default": "deny",
    "rules": [{"name": "all", "allow": "true"}],
    "limits": [
        {"name": "echo-per-user", "when": 'mcp.tool.name == "echo"', "key": "jwt.sub",
         "rate": "20/hour"},
        {"name": "team-budget", "when": 'mcp.tool.name == "get_customer"', "key": "jwt.team",
         "rate": "100/hour"},
    ],
}


def call(tool, arguments, id=1):
    return {"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": tool, "arguments": arguments}}


def post(url, token, body):
    body, headers = modern(body)
    headers.update({"content-type": "application/json",
                    "accept": "application/json, text/event-stream",
                    "authorization": f"Bearer {token}"})
    # A new connection per request: Envoy spreads connections over its worker threads.
    return httpx2.post(url, content=json.dumps(body), headers=headers, timeout=10)


def answer(response):
    """The JSON-RPC message of a response (JSON or one SSE event)."""
    text = response.text
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        text = "".join(line[5:] for line in text.splitlines() if line.startswith("data:"))
    return json.loads(text)


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("limits")
    policy = workdir / "policy.yaml"
    policy.write_text(yaml.safe_dump(LOCAL_POLICY))
    s = Stack(workdir, policy=str(policy))
    yield s
    s.stop()


def test_local_limit_is_counted_exactly_across_both_workers(local):
    """60 calls at once, on 60 connections over Envoy's two worker threads: exactly 20 pass."""
    token = local.token("eve")
    with ThreadPoolExecutor(max_workers=12) as pool:
        responses = list(pool.map(
            lambda i: post(local.envoy.url, token, call("echo", {"text": f"m{i}"}, id=i)),
            range(60)))
    assert all(r.status_code == 200 for r in responses)
    limited = [r for r in responses if "error" in answer(r)]
    passed = [r for r in responses if "result" in answer(r)]
    assert (len(passed), len(limited)) == (20, 40)
    for r in limited:
        error = answer(r)["error"]
        assert error["code"] == RATE_LIMITED
        assert error["data"]["limit"] == "echo-per-user"
        # 20/hour: one call refills every 180 s.
        assert 0 < error["data"]["retry_after_ms"] <= 180_000
        assert 1 <= int(r.headers["retry-after"]) <= 180
    # Exactly the 20 allowed calls reached the MCP server.
    echoed = [r for r in local.upstream_requests() if ["mcp-name", "echo"] in r["headers"]]
    assert len(echoed) == 20
    records = local.audit_for("eve", count=60, method="tools/call")
    assert sorted(r["decision"] for r in records) == ["allow"] * 20 + ["deny"] * 40
    denied = [r for r in records if r["decision"] == "deny"]
    assert {r["rule"] for r in denied} == {"limit:echo-per-user"}
    assert {r["limit_remaining"] for r in denied} == {0}
    assert sorted(r["limit_remaining"] for r in records if r["decision"] == "allow") == list(range(20))
    assert "mcp_guard.limits.name=echo-per-user.outcome=limited: 40" in local.envoy.stats()
    assert "mcp_guard.limits.name=echo-per-user.outcome=allowed: 20" in local.envoy.stats()
    # Both worker threads took connections (each runs its own VM): the bucket is shared.
    workers = [line for line in local.envoy.stats().splitlines()
               if re.search(r"\.worker_[0-9]+\.downstream_cx_total: [1-9]", line)]
    assert len(workers) == 2, workers


def test_sdk_client_sees_the_limit_and_its_session_goes_on(local):
    """The official Python SDK raises MCPError for the limited call; the same session keeps
    working for calls within other budgets."""
    token = local.token("frank")

    async def session():
        async with mcp_client(local.envoy.url, token) as client:
            for i in range(20):
                await client.call_tool("echo", {"text": str(i)})
            with pytest.raises(MCPError) as limited:
                await client.call_tool("echo", {"text": "one too many"})
            assert limited.value.code == RATE_LIMITED
            assert limited.value.data["limit"] == "echo-per-user"
            assert limited.value.data["retry_after_ms"] > 0
            again = await client.call_tool("search_customers", {"query": "grace"})
            assert "Grace Hopper" in again.content[0].text

    run(session())


def test_a_key_reading_a_missing_claim_fails_closed(local):
    r = post(local.envoy.url, local.token("gina"), call("get_customer", {"customer_id": "c-100"}))
    assert r.status_code == 200
    error = answer(r)["error"]
    assert error["code"] == RATE_LIMITED
    assert error["data"]["limit"] == "team-budget"
    [record] = local.audit_for("gina", tool="get_customer")
    assert (record["decision"], record["rule"]) == ("deny", "limit:team-budget")
    assert record["reason"] == "limit_error" and "failing closed" in record["detail"]
    # With the claim, the same call goes through.
    r = post(local.envoy.url, local.token("gina", team="crm"), call("get_customer", {"customer_id": "c-100"}))
    assert "result" in answer(r)


# ---- global limits: two Envoys, one rate limit service (limitador on Redis) ----------------------

GLOBAL_POLICY = {
    "name": "fleet", "version": "1", "default": "deny",
    "rules": [{"name": "all", "allow": "true"}],
    "limits": [
        {"name": "company-echo", "when": 'mcp.tool.name == "echo"', "key": '"acme"',
         "rate": "10/hour", "scope": "global", "failure_mode": "closed"},
        {"name": "company-search", "when": 'mcp.tool.name == "search_customers"',
         "key": '"acme"', "rate": "1000/hour", "scope": "global", "failure_mode": "open"},
        # A second global limit on the same calls: each message spends from both.
        {"name": "per-caller-search", "when": 'mcp.tool.name == "search_customers"',
         "key": "jwt.sub", "rate": "2/hour", "scope": "global", "failure_mode": "open"},
    ],
}


def rls_cluster(port):
    return f"""  - name: rls
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: rls
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
"""


class Fleet:
    """Redis, the rate limit service, one MCP server and two Envoy replicas."""

    def __init__(self, workdir):
        self.procs = []
        self.redis_port = harness.free_port()
        self.redis = harness.Process(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no"], workdir / "redis.log")
        self.procs.append(self.redis)
        harness.wait_port(self.redis_port, self.redis.proc)
        self.rls_port = harness.free_port()
        self.rls = self.start_rls(workdir)
        self.server = harness.McpServer(workdir)
        self.procs.append(self.server)
        resource = "https://mcp.fleet.example/mcp"
        self.issuer = keys.Issuer("https://idp.example", resource, algs=("ES256",))
        issuers = [{"issuer": "https://idp.example", "audiences": [resource],
                    "algorithms": ["ES256"], "jwks": self.issuer.jwks()}]
        config = harness.plugin_config(
            issuers, GLOBAL_POLICY, resource,
            rate_limit_service={"cluster": "rls", "domain": "mcp-fleet", "timeout_ms": 500})
        self.envoys = []
        for i in range(2):
            d = workdir / f"envoy{i}"
            d.mkdir()
            e = harness.Envoy(d, config, self.server.port,
                              values={"EXTRA_CLUSTERS": rls_cluster(self.rls_port)})
            self.envoys.append(e)
            self.procs.append(e)

    def start_rls(self, workdir):
        limits = json.dumps([
            {"domain": "mcp-fleet", "limit": "company-echo", "max": 10, "seconds": 3600},
            {"domain": "mcp-fleet", "limit": "company-search", "max": 1000, "seconds": 3600},
            {"domain": "mcp-fleet", "limit": "per-caller-search", "max": 2, "seconds": 3600},
        ])
        p = harness.Process([str(RLS_BINARY), f"127.0.0.1:{self.rls_port}",
                             f"redis://127.0.0.1:{self.redis_port}/", limits],
                            workdir / f"rls-{time.monotonic_ns()}.log")
        harness.wait_port(self.rls_port, p.proc)
        self.procs.append(p)
        return p

    def token(self, sub):
        return self.issuer.token(sub, alg="ES256")

    def stop(self):
        for p in reversed(self.procs):
            p.stop()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    if not RLS_BINARY.exists():
        pytest.fail(f"{RLS_BINARY} is missing: `make test` builds it (tests/peers/rls)")
    f = Fleet(tmp_path_factory.mktemp("fleet"))
    yield f
    f.stop()


def redis_keys(fleet):
    out = subprocess.run(["redis-cli", "-p", str(fleet.redis_port), "--scan"],
                         capture_output=True, text=True, timeout=10)
    return [k for k in out.stdout.splitlines() if k]


def test_global_limit_is_shared_by_two_envoys(fleet):
    """10 echo calls an hour for the whole company, whichever Envoy they go through."""
    outcomes = []
    for i in range(14):
        envoy = fleet.envoys[i % 2]
        r = post(envoy.url, fleet.token(f"user{i}"), call("echo", {"text": str(i)}, id=i))
        assert r.status_code == 200
        outcomes.append(("result" in answer(r), envoy))
    assert [ok for ok, _ in outcomes] == [True] * 10 + [False] * 4
    # Both replicas forwarded some and refused some: one budget.
    assert {e.port for ok, e in outcomes if ok} == {e.port for e in fleet.envoys}
    assert {e.port for ok, e in outcomes if not ok} == {e.port for e in fleet.envoys}
    r = post(fleet.envoys[0].url, fleet.token("late"), call("echo", {"text": "x"}))
    error = answer(r)["error"]
    assert error["code"] == RATE_LIMITED
    assert error["data"]["limit"] == "company-echo"
    assert int(r.headers["retry-after"]) >= 1
    records = fleet.envoys[1].wait_audit(7)
    refused = [r for r in records if r.get("decision") == "deny"]
    assert {r["rule"] for r in refused} == {"limit:company-echo"}
    # The counter lives in Redis, written by limitador.
    assert redis_keys(fleet), "limitador keeps its counters in Redis"


def test_a_message_spends_from_every_global_limit_it_names(fleet):
    """search_customers counts against the company's budget and the caller's own: each limit is
    asked in a request of its own (one descriptor each), the message waits for both, and the
    caller's third search of the hour is refused by its own limit on either replica."""
    for i in range(2):
        r = post(fleet.envoys[i].url, fleet.token("sam"), call("search_customers", {"query": "grace"}, id=i))
        assert "Grace Hopper" in json.dumps(answer(r))
    r = post(fleet.envoys[0].url, fleet.token("sam"), call("search_customers", {"query": "grace"}, id=3))
    error = answer(r)["error"]
    assert error["code"] == RATE_LIMITED
    assert error["data"]["limit"] == "per-caller-search"
    # Another caller is within both limits.
    r = post(fleet.envoys[1].url, fleet.token("tess"), call("search_customers", {"query": "grace"}))
    assert "Grace Hopper" in json.dumps(answer(r))
    allowed = [r for r in fleet.envoys[1].wait_audit(100, timeout=2)
               if r.get("sub") == "tess" and r.get("tool") == "search_customers"]
    # The least budget left of the two: the caller's own (2 per hour, one spent).
    assert allowed and allowed[-1]["limit_remaining"] == 1, allowed


def test_failure_modes_when_the_service_stops(fleet):
    """With the service gone: the closed limit refuses (audited as an error), the open one lets
    the call through (audited with the reason); both counted. Back up, counting resumes."""
    fleet.rls.stop()
    time.sleep(0.3)
    envoy = fleet.envoys[0]
    r = post(envoy.url, fleet.token("ivy"), call("echo", {"text": "x"}))
    error = answer(r)["error"]
    assert error["code"] == RATE_LIMITED
    assert error["data"]["limit"] == "company-echo"
    r = post(envoy.url, fleet.token("ivy"), call("search_customers", {"query": "grace"}))
    assert "Grace Hopper" in json.dumps(answer(r))
    records = [r for r in envoy.wait_audit(100, timeout=2) if r.get("sub") == "ivy"]
    by_tool = {r["tool"]: r for r in records}
    assert by_tool["echo"]["decision"] == "error"
    assert by_tool["echo"]["rule"] == "limit:company-echo"
    assert by_tool["echo"]["reason"] == "rate_limit_service_unavailable"
    assert "fails closed" in by_tool["echo"]["detail"]
    assert by_tool["search_customers"]["decision"] == "allow"
    assert by_tool["search_customers"]["reason"] == "rate_limit_service_unavailable"
    assert "fail open" in by_tool["search_customers"]["detail"]
    stats = envoy.stats()
    assert "mcp_guard.limits.name=company-echo.outcome=failure_closed: 1" in stats
    assert "mcp_guard.limits.name=company-search.outcome=failure_open: 1" in stats

    # The service comes back with the same Redis: the company's echo budget is still spent.
    fleet.rls = fleet.start_rls(envoy.log.parent)
    r = post(envoy.url, fleet.token("ivy"), call("echo", {"text": "y"}))
    deadline = time.monotonic() + 10
    while "rate_limit_service_unavailable" in json.dumps(answer(r)) and time.monotonic() < deadline:
        time.sleep(0.2)
        r = post(envoy.url, fleet.token("ivy"), call("echo", {"text": "y"}))
    assert answer(r)["error"]["message"].count("budget spent") == 1
