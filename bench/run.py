"""`make bench`: mcp-guard against plain Envoy and Envoy's native filters, side by side, in one run.

Setups, all behind the same listener settings and in front of the same upstream:
  (a) plain   Envoy, router only                                        bench/envoy-plain.yaml
  (w) floor   an empty Wasm filter (bench/empty-filter), loaded as (c)   envoy/mcp-guard.yaml
  (b) native  jwt_authn + mcp + rbac, the same policy                   bench/envoy-native.yaml
      (b-cache) the same with jwt_authn's JWT cache on (tools/call only)
  (c) guard   mcp-guard (target/mcp_guard.wasm), bench/policy.yaml      envoy/mcp-guard.yaml
The upstream is a second Envoy answering from canned bodies (bench/envoy-upstream.yaml); the load
is wrk (bench/load.lua), which checks every answer. Measurements are interleaved: each round runs
every setup once, in a rotated order, so drift on a shared machine hits all setups alike.

Also: further cases for mcp-guard (500-tool SSE tools/list, 100 KiB arguments, 100 rules), memory
per worker and versus the number of distinct callers and of sessions, the .wasm size, and the native
micro-benchmarks (filter/benches/core.rs). Results: bench/RESULTS.md and stdout.

Only the standard library, the repository's test helpers (tests/harness.py, tests/peers/keys.py)
and the packages of tests/requirements.txt are used.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import hashlib
import json
import math
import os
import platform
import re
import shutil
import statistics
import string
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(BENCH), str(ROOT / "tests"), str(ROOT / "tests" / "peers")]

import jwt as pyjwt  # noqa: E402

import harness  # noqa: E402
import keys  # noqa: E402
import workload  # noqa: E402
from workload import ISSUER, RESOURCE, SERVICE_KEY, SERVICE_KEY_HEADER  # noqa: E402

# Session handles sealed as docs/fleet.md recommends once every replica runs this version.
SESSIONS = {"key": harness.SESSION_KEY, "cipher": "xchacha20-poly1305"}
SEALED_PREFIX = "mg2."
# More live sessions than a worker's memo keeps (seal.rs: 1,024).
LIVE_SESSIONS = 4000

# The on side of the DPoP case: a DPoP-bound token and a new proof per request (`measure_dpop`).
# One local limit on every call, its budget large enough never to refuse: what is measured is
# the counting (the features part and the limits part).
LOCAL_LIMIT = [{"name": "per-user", "key": "jwt.sub", "rate": "1000000000/second"}]
LOCAL_LIMIT_FEATURE = "a local limit (token bucket in shared data)"
DPOP = "dpop"

SETUPS = {
    "a": "plain Envoy (router only)",
    "w": "an empty Wasm filter (no hostcall)",
    "b": "native: jwt_authn + mcp + rbac",
    "b-cache": "native, jwt_authn with its JWT cache",
    "c": "mcp-guard",
}
# Setup (w): built by `make bench` (Makefile, WASM_EMPTY) as the filter is.
EMPTY_WASM = ROOT / "target" / "empty_filter.wasm"
WASM_UNOPTIMIZED = ROOT / "target" / "wasm" / "wasm32-wasip1" / "release" / "mcp_guard.wasm"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(msg, flush=True)


def rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


# ---- processes --------------------------------------------------------------------------------

class Envoy(harness.Process):
    """An Envoy from a template in bench/ or envoy/, optionally pinned to CPUs."""

    def __init__(self, work: Path, name: str, template: Path, fill: dict, *, concurrency: int,
                 cpus: list[int] | None):
        self.name = name
        self.port = fill.get("LISTEN_PORT")
        self.admin_port = harness.free_port()
        fill = {"ADMIN_PORT": self.admin_port, **fill}
        try:
            rendered = string.Template(template.read_text()).substitute(fill)
        except KeyError as e:
            raise SystemExit(f"{rel(template)} has a placeholder bench/run.py does not fill: {e}")
        self.config_path = work / f"{name}.envoy.yaml"
        self.config_path.write_text(rendered)
        args = [harness.envoy_binary(), "-c", str(self.config_path), "--disable-hot-restart",
                "--concurrency", str(concurrency), "--log-level", "warn",
                "--component-log-level", "wasm:warn"]
        if cpus:
            args = ["taskset", "-c", ",".join(map(str, cpus))] + args
        super().__init__(args, work / f"{name}.envoy.log")
        self.wait_ready()

    @property
    def pid(self) -> int:
        return self.proc.pid  # taskset execs Envoy: same process

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name}: envoy exited with {self.proc.returncode}:\n"
                                 f"{self.output()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/ready",
                                            timeout=1) as r:
                    if r.status == 200:
                        if self.port:
                            harness.wait_port(int(self.port), self.proc)
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"{self.name}: envoy not ready after {timeout}s:\n{self.output()[-3000:]}")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the whole process (all threads) so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def memory(self) -> dict:
        """RSS (kernel) and tcmalloc's view (admin /memory), in bytes."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        rss = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/memory", timeout=5) as r:
            mem = json.loads(r.read())
        return {"rss": rss, "allocated": int(mem.get("allocated", 0)),
                "heap_size": int(mem.get("heap_size", 0)),
                "pageheap_free": int(mem.get("pageheap_free", 0))}

    def settled_memory(self, timeout: float = 20.0) -> dict:
        """`memory()` once RSS has stopped falling: the allocator returns freed heap in the
        background (`memory_allocator_manager`, 16 MiB a second), so a reading right after the
        start or a load would count heap that is on its way back."""
        last, deadline = self.memory(), time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(1.0)
            now = self.memory()
            if last["rss"] - now["rss"] < 1 << 20:
                return now
            last = now
        return last

    def workers_used(self) -> int:
        """How many workers accepted connections (so a per-worker figure covers them all)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/stats?filter="
                                    "worker_[0-9]+.downstream_cx_total", timeout=5) as r:
            return sum(1 for line in r.read().decode().splitlines()
                       if not line.rstrip().endswith(": 0"))


# ---- the bench --------------------------------------------------------------------------------

class Bench:
    def __init__(self, args):
        self.args = args
        self.work = ROOT / "target" / "bench"
        if self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        self.procs: list[Envoy] = []
        self.results: dict = {"runs": [], "extra": [], "checks": {}}
        cpus = sorted(os.sched_getaffinity(0))
        self.cpus = cpus
        if args.pin and len(cpus) >= 2:
            n = max(1, min(args.concurrency, len(cpus) - 1))
            self.proxy_cpus, self.other_cpus = cpus[:n], cpus[n:]
        else:
            self.proxy_cpus = self.other_cpus = None

    # -- inputs --

    def write_inputs(self) -> None:
        w = self.work
        (w / "call-answer.json").write_bytes(workload.call_answer())
        (w / "tools-list.sse").write_bytes(workload.tools_list_sse(500))
        (w / "introspect.json").write_text(json.dumps(
            {"active": True, "token_type": "Bearer", "exp": workload.FIXTURE_EXP}))
        (w / "call-1k.json").write_bytes(workload.tool_call(workload.arguments_1k()))
        (w / "call-100k.json").write_bytes(workload.tool_call(workload.arguments_100k()))
        (w / "tools-list.json").write_bytes(workload.tools_list_request())
        (w / "delete.json").write_bytes(workload.tool_call({"customer_id": "c-00017"},
                                                           tool="delete_customer"))
        self.idp = keys.Issuer(ISSUER, RESOURCE, algs=("RS256",))
        self.rsa = self.idp.key("RS256")
        self.token_files = {}
        self.write_tokens(1)

    def sign(self, sub: str, **extra) -> str:
        claims = self.idp.claims(sub, ttl=4 * 3600, **{**workload.USER_CLAIMS, **extra})
        return pyjwt.encode(claims, self.rsa.private, algorithm="RS256",
                            headers={"kid": self.rsa.kid})

    def write_tokens(self, users: int) -> Path:
        """A file of `users` tokens, one distinct subject each."""
        if users not in self.token_files:
            start = time.monotonic()
            path = self.work / f"tokens-{users}.txt"
            path.write_text("\n".join(self.sign("alice" if users == 1 else f"user-{i:06d}")
                                      for i in range(users)) + "\n")
            self.token_files[users] = path
            if users > 100:
                log(f"  signed {users} RS256 tokens in {time.monotonic() - start:.1f}s")
        return self.token_files[users]

    # -- processes --

    def start_upstream(self) -> None:
        fill = {"STRICT_PORT": harness.free_port(), "OPEN_PORT": harness.free_port(),
                "SERVICE_KEY_HEADER": SERVICE_KEY_HEADER, "SERVICE_KEY": SERVICE_KEY,
                "CALL_ANSWER": str(self.work / "call-answer.json"),
                "TOOLS_LIST_ANSWER": str(self.work / "tools-list.sse"),
                "INTROSPECT_ANSWER": str(self.work / "introspect.json")}
        self.upstream = Envoy(self.work, "upstream", BENCH / "envoy-upstream.yaml",
                              {**fill, "LISTEN_PORT": fill["STRICT_PORT"]},
                              concurrency=self.args.upstream_concurrency, cpus=self.other_cpus)
        harness.wait_port(fill["OPEN_PORT"], self.upstream.proc)
        self.strict_port, self.open_port = fill["STRICT_PORT"], fill["OPEN_PORT"]
        self.procs.append(self.upstream)

    def start_proxy(self, setup: str, *, name: str | None = None, rules: int = 4,
                    concurrency: int | None = None, cpus="proxy", limits: list | None = None,
                    extra_config: dict | None = None, clusters: str = "",
                    server_extra: dict | None = None, issuer_extra: dict | None = None,
                    vm_env: dict | None = None) -> Envoy:
        name = name or setup
        port = harness.free_port()
        common = {"LISTEN_PORT": port, "UPSTREAM_HOST": "127.0.0.1"}
        cpus = self.proxy_cpus if cpus == "proxy" else cpus
        concurrency = concurrency or self.args.concurrency
        if setup == "a":
            template = BENCH / "envoy-plain.yaml"
            fill = {**common, "UPSTREAM_PORT": self.open_port}
        elif setup == "w":
            # mcp-guard's own template with the module swapped for one that does nothing (its
            # configuration unread, no record written, no credential swap: the open upstream).
            template = self.args.guard_template
            fill = {**common, "UPSTREAM_PORT": self.open_port, "WASM": str(EMPTY_WASM),
                    "PLUGIN_CONFIG": json.dumps("{}"),
                    "ACCESS_LOG": str(self.work / f"{name}.access.log"), "EXTRA_CLUSTERS": ""}
        elif setup in ("b", "b-cache"):
            template = BENCH / "envoy-native.yaml"
            # jwt_authn verifies every token anew unless its provider has a JWT cache (off by
            # default; mcp-guard's verified-token cache is on): (b-cache) turns it on.
            cache = "jwt_cache_config: { jwt_cache_size: 100 }" if setup == "b-cache" else ""
            fill = {**common, "UPSTREAM_PORT": self.strict_port, "ISSUER": ISSUER,
                    "JWT_CACHE": cache,
                    "AUDIENCE": RESOURCE, "JWKS": json.dumps(json.dumps(self.idp.jwks())),
                    "SERVICE_KEY_HEADER": SERVICE_KEY_HEADER, "SERVICE_KEY": SERVICE_KEY,
                    "ACCESS_LOG": str(self.work / f"{name}.access.log")}
        else:
            template = self.args.guard_template
            issuers = [{"issuer": ISSUER, "audiences": [RESOURCE], "algorithms": ["RS256"],
                        "jwks": self.idp.jwks(), **(issuer_extra or {})}]
            policy = workload.policy(rules)
            if limits:
                policy["limits"] = limits
            # The shipped access log reads the record only (`wasm.mcp.audit_line`), not the
            # per-field columns: the filter need not write them.
            config = harness.plugin_config(issuers, policy, RESOURCE, key=SERVICE_KEY,
                                           key_header=SERVICE_KEY_HEADER, sessions=SESSIONS,
                                           **{"audit_columns": False, **(extra_config or {})})
            config["servers"][0].update(server_extra or {})
            if vm_env:
                template = self.template_with_env(template, vm_env)
            (self.work / f"{name}.plugin.json").write_text(json.dumps(config, indent=1))
            fill = {**common, "UPSTREAM_PORT": self.strict_port, "WASM": str(harness.WASM),
                    "PLUGIN_CONFIG": json.dumps(json.dumps(config)),
                    "ACCESS_LOG": str(self.work / f"{name}.access.log"),
                    "EXTRA_CLUSTERS": clusters}
        envoy = Envoy(self.work, name, template, fill, concurrency=concurrency, cpus=cpus)
        # mcp-guard's audit records carry its own time per request (filter_us).
        envoy.audit_log = Path(fill["ACCESS_LOG"]) if setup == "c" else None
        self.procs.append(envoy)
        return envoy

    def template_with_env(self, template: Path, env: dict) -> Path:
        """The template with `vm_config.environment_variables` (secrets the filter reads)."""
        text = template.read_text()
        marker = "                  code: { local: { filename: ${WASM} } }\n"
        if marker not in text:
            raise SystemExit(f"{rel(template)}: cannot add vm_config.environment_variables")
        text = text.replace(marker, marker + "                  environment_variables: "
                            + json.dumps({"key_values": env}) + "\n")
        path = self.work / f"{template.stem}-env.yaml"
        path.write_text(text)
        return path

    def stop(self, envoy: Envoy) -> None:
        envoy.stop()
        if envoy in self.procs:
            self.procs.remove(envoy)

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        self.procs.clear()
        for p in getattr(self, "helpers", []):
            p.stop()

    # -- checks --

    def post(self, envoy: Envoy, body: Path, token: str | None, extra: dict | None = None):
        headers = {"content-type": "application/json",
                   "accept": "application/json, text/event-stream",
                   "mcp-protocol-version": "2025-11-25", **(extra or {})}
        if token:
            headers["authorization"] = f"Bearer {token}"
        req = urllib.request.Request(f"http://127.0.0.1:{envoy.port}/mcp", data=body.read_bytes(),
                                     headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def check(self, envoy: Envoy, setup: str) -> dict:
        """Refuses to measure a setup that does not enforce what it should."""
        token = self.token_files[1].read_text().split()[0]
        problems = []
        facts = {}
        status, body = self.post(envoy, self.work / "call-1k.json", token)
        if status != 200 or b'"result"' not in body[:300]:
            problems.append(f"allowed tools/call answered {status} {body[:200]!r}")
        status, body = self.post(envoy, self.work / "tools-list.json", token,
                                 {"x-bench-answer": "tools-list"})
        if status != 200 or b'"result"' not in body[:300]:
            problems.append(f"tools/list answered {status} {body[:200]!r}")
        facts["tools_list_bytes"] = len(body)
        facts["tools_listed"] = body.count(b'"inputSchema"')
        if setup not in ("a", "w"):
            status, body = self.post(envoy, self.work / "delete.json", token)
            denied = status == 403 or (status == 200 and b'"error"' in body[:300])
            if not denied:
                problems.append(f"delete_customer by a non-admin was not denied: {status}")
            admin = self.sign("root", groups=["admins"])
            status, body = self.post(envoy, self.work / "delete.json", admin)
            if status != 200 or b'"result"' not in body[:300]:
                problems.append(f"delete_customer by an admin answered {status} {body[:200]!r}")
            status, _ = self.post(envoy, self.work / "call-1k.json", None)
            if status != 401:
                problems.append(f"no token answered {status}, not 401")
            bad = token[:-6] + ("AAAAAA" if not token.endswith("AAAAAA") else "BBBBBB")
            status, _ = self.post(envoy, self.work / "call-1k.json", bad)
            if status != 401:
                problems.append(f"a bad signature answered {status}, not 401")
        if problems:
            raise SystemExit(f"setup ({setup}) {envoy.name} fails its checks; not measuring:\n  "
                             + "\n  ".join(problems) + f"\n(logs in {rel(self.work)})")
        return facts

    # -- load --

    def wrk(self, envoy: Envoy, body: Path, tokens: Path, conns: int, duration: float,
            extra_header: str = "") -> dict:
        threads = 1 if conns == 1 else min(self.args.threads, conns)
        cmd = ["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{max(1, math.ceil(duration))}s",
               "--timeout", "10s", "-s", str(BENCH / "load.lua"),
               f"http://127.0.0.1:{envoy.port}/mcp", "--", str(body), str(tokens), extra_header]
        if self.other_cpus:
            cmd = ["taskset", "-c", ",".join(map(str, self.other_cpus))] + cmd
        audit = getattr(envoy, "audit_log", None)
        offset = audit.stat().st_size if audit and audit.exists() else 0
        cpu0, wall0 = envoy.cpu_seconds(), time.monotonic()
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        cpu1, wall1 = envoy.cpu_seconds(), time.monotonic()
        line = next((l for l in out.stdout.splitlines() if l.startswith("WRK_JSON ")), None)
        if out.returncode != 0 or line is None:
            raise SystemExit(f"wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        r = json.loads(line[len("WRK_JSON "):])
        r["rps"] = r["requests"] / (r["duration_us"] / 1e6) if r["duration_us"] else 0.0
        r["errors"] = r["bad_status"] + r["bad_body"] + r["socket_errors"] + r["timeouts"]
        r["proxy_cpu_us_per_req"] = (cpu1 - cpu0) * 1e6 / r["requests"] if r["requests"] else 0
        r["proxy_cpu_util"] = (cpu1 - cpu0) / (wall1 - wall0)
        r["resp_bytes"] = r["body_bytes"] / r["requests"] if r["requests"] else 0
        r["conns"] = conns
        if audit:
            r.update(filter_times(audit, offset))
        return r

    def measure(self, envoy: Envoy, body: Path, tokens: Path, conns: int,
                extra_header: str = "", duration: float | None = None) -> dict:
        if self.args.warmup > 0:
            self.wrk(envoy, body, tokens, conns, self.args.warmup, extra_header)
        return self.wrk(envoy, body, tokens, conns, duration or self.args.duration, extra_header)

    # -- parts --

    def main_comparison(self) -> None:
        a = self.args
        setups = ["a", "w", "b", "b-cache", "c"]
        if not EMPTY_WASM.exists():
            log(f"  {rel(EMPTY_WASM)} is not built (`make bench` builds it): setup (w) skipped")
            setups.remove("w")
        proxies = {s: self.start_proxy(s) for s in setups}
        for s, envoy in proxies.items():
            self.results["checks"][s] = self.check(envoy, s)
        log(f"\n== tools/call, 1 KiB arguments, RS256 token: {a.rounds} round(s) x "
            f"{len(a.conns)} load(s) x {len(setups) + 1} setups, {a.duration:g}s each "
            f"(+{a.warmup:g}s warm-up)")
        # (c) also with many distinct callers, each token used a few times (a per-VM cache miss
        # costs a full token check: this prices it next to the one-token case).
        callers = self.write_tokens(a.callers)
        order = list(proxies) + ["c-callers"]
        for rnd in range(a.rounds):
            rotated = order[rnd % len(order):] + order[:rnd % len(order)]
            for conns in a.conns:
                for s in rotated:
                    envoy = proxies["c" if s == "c-callers" else s]
                    tokens = callers if s == "c-callers" else self.token_files[1]
                    r = self.measure(envoy, self.work / "call-1k.json", tokens, conns)
                    r.update(setup=s, round=rnd + 1, case="call-1k")
                    self.results["runs"].append(r)
                    log(f"  round {rnd + 1} ({s}) c={conns:<3} {r['rps']:9.0f} req/s  "
                        f"p50 {r['p50_us']:6d} µs  p99 {r['p99_us']:6d} µs  "
                        f"proxy {r['proxy_cpu_us_per_req']:6.0f} CPU-µs/req  errors {r['errors']}"
                        + (f"  first: {r['first_bad']}" if r["errors"] else ""))
        self.proxies = proxies

    def extra_cases(self) -> None:
        a = self.args
        log(f"\n== further cases, 1 round, {a.duration:g}s each")
        big = self.work / "call-100k.json"
        cases = [("call-100k", s, big, "") for s in "abc"]
        cases += [("tools-list-sse-500", s, self.work / "tools-list.json",
                   "x-bench-answer: tools-list") for s in "abc"]
        c100 = self.start_proxy("c", name="c-100-rules", rules=100)
        self.check(c100, "c")
        cases.append(("call-1k-100-rules", "c100", self.work / "call-1k.json", ""))
        for case, s, body, header in cases:
            envoy = c100 if s == "c100" else self.proxies[s]
            for conns in a.conns:
                r = self.measure(envoy, body, self.token_files[1], conns, header)
                r.update(setup=s, case=case)
                self.results["extra"].append(r)
                log(f"  {case:20} ({s:4}) c={conns:<3} {r['rps']:9.0f} req/s  "
                    f"p50 {r['p50_us']:6d} µs  p99 {r['p99_us']:6d} µs  "
                    f"proxy {r['proxy_cpu_us_per_req']:6.0f} CPU-µs/req  "
                    + (f"filter {filter_col(r)} µs  " if "filter_us_p50" in r else "") +
                    f"answer {r['resp_bytes']:7.0f} B  errors {r['errors']}"
                    + (f"  first: {r['first_bad']}" if r["errors"] else ""))
        self.stop(c100)

    def features(self) -> None:
        """What each feature costs when it is on, against the same request without it (each side
        measured twice per round, off-on-on-off, over `rounds` rounds that interleave the
        features, and averaged; at the largest connection count, where the proxy is the
        bottleneck and CPU per request is steadiest). The limits part prices the local limit
        once more, beside the global one."""
        a = self.args
        conns = max(a.conns)
        log(f"\n== features on vs off, {a.rounds} round(s), {a.duration:g}s each, {conns} connections")
        # A proxy started for this section, like the feature proxies: the main proxy has served
        # the rounds before (10,000 callers, 100 KiB calls) and measured slower than a fresh one.
        base = self.start_proxy("c", name="c-features")
        self.check(base, "c")
        call, listing = self.work / "call-1k.json", self.work / "tools-list.json"
        # Every listed tool pinned as it is; the called tools (never listed here) pinned too.
        tools = {**workload.tool_pins(500), "search_customers": "sha256:" + "0" * 64,
                 "delete_customer": "sha256:" + "0" * 64}
        pins = {"pins": {"mode": "enforce", "tools": tools}}
        pinned = self.start_proxy("c", name="c-pins", server_extra=pins)
        listed = self.check(pinned, "c")["tools_listed"]
        if listed != self.results["checks"].get("c", {}).get("tools_listed"):
            raise SystemExit(f"pinning: {listed} tools listed with every tool pinned, not as many "
                             "as without pins: the bench's pins do not match the tools")
        introspect = {"introspect": "always", "introspection": {
            "endpoint": "http://127.0.0.1/introspect", "cluster": "introspect",
            "client_id": "mcp-guard", "client_secret_from_env": "BENCH_INTROSPECTION_SECRET",
            "cache_ttl_seconds": 3600}}
        introspecting = self.start_proxy(
            "c", name="c-introspect", issuer_extra=introspect,
            vm_env={"BENCH_INTROSPECTION_SECRET": "bench-only-secret"},
            clusters=harness.cluster_yaml("introspect", self.open_port))
        self.check(introspecting, "c")
        limited = self.start_proxy("c", name="c-local-limit", limits=LOCAL_LIMIT)
        self.check(limited, "c")
        cases = [
            # A session's calls: each presents its handle (opened) and the answer names the
            # session again (sealed), as every call in an open session does.
            ("sealed session handles", (base, call, ""),
             (base, call, f"mcp-session-id: {self.open_session(base)}")),
            # A new session on every answer (each sealed once, never presented). The off side
            # carries the upstream's answer-selecting header too (a value that selects the plain
            # answer), so the two sides differ only in the session id the answer names.
            ("sealed session handles, a new session per answer",
             (base, call, "x-bench-answer: call"),
             (base, call, "x-bench-answer: new-session")),
            # Many live sessions, each call presenting the next one's handle: each worker's memo
            # (1,024 handles) never has it, as in a fleet whose load balancer spreads more
            # sessions over each worker than it remembers. Every call opens its handle anew.
            (f"sealed session handles, {LIVE_SESSIONS:,} live sessions in turn", (base, call, ""),
             (base, call, f"mcp-session-id: @{self.open_sessions(base, LIVE_SESSIONS)}")),
            ("pinning, 500-tool SSE tools/list", (base, listing, "x-bench-answer: tools-list"),
             (pinned, listing, "x-bench-answer: tools-list")),
            ("cached introspection (introspect: always)", (base, call, ""),
             (introspecting, call, "")),
            # The token verified once (cached); each request a new proof to verify and its jti
            # to remember across workers.
            ("a DPoP proof (DPoP-bound token)", (base, call, ""), (base, call, DPOP)),
            # Every allowed call spends from the caller's bucket (shared data, compare-and-swap).
            (LOCAL_LIMIT_FEATURE, (base, call, ""), (limited, call, "")),
        ]
        # Round after round over all features, so that a slow spell of the host falls on several
        # features once rather than on one feature's every run.
        runs: dict[str, dict[str, list[dict]]] = {f: {"off": [], "on": []} for f, _, _ in cases}
        for rnd, (feature, off, on) in ((r, c) for r in range(a.rounds) for c in cases):
            # off, on, on, off: a drift of the host over the four runs weighs on both sides alike.
            for side in ("off", "on", "on", "off"):
                envoy, body, header = off if side == "off" else on
                if header == DPOP:
                    r = self.measure_dpop(envoy, body, conns)
                else:
                    r = self.measure(envoy, body, self.token_files[1], conns, header)
                r.update(setup=envoy.name, case=feature, side=side, round=rnd)
                runs[feature][side].append(r)
                log(f"  {feature:42} {side:3} {r['rps']:9.0f} req/s  "
                    f"proxy {r['proxy_cpu_us_per_req']:6.0f} CPU-µs/req  "
                    f"filter {filter_col(r)} µs  errors {r['errors']}"
                    + (f"  first: {r['first_bad']}" if r["errors"] else ""))
        for feature, _, _ in cases:
            pair = {side: mean_run(rs) for side, rs in runs[feature].items()}
            self.results.setdefault("features", []).append({"feature": feature, **pair})
        self.results["es256_verify_us"] = es256_verify_us()
        log(f"  one ES256 verification on this machine (OpenSSL): "
            f"{self.results['es256_verify_us']:.0f} µs")
        self.stop(base)
        self.stop(pinned)
        self.stop(introspecting)
        self.stop(limited)

    def open_session(self, envoy: Envoy) -> str:
        """The sealed handle of a session the upstream opens, as the client gets it."""
        token = self.token_files[1].read_text().split()[0]
        req = urllib.request.Request(
            f"http://127.0.0.1:{envoy.port}/mcp", data=(self.work / "call-1k.json").read_bytes(),
            headers={"content-type": "application/json",
                     "accept": "application/json, text/event-stream",
                     "mcp-protocol-version": "2025-11-25", "authorization": f"Bearer {token}",
                     "x-bench-answer": "new-session"}, method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            handle = r.headers.get("mcp-session-id", "")
        if not handle.startswith(SEALED_PREFIX):
            raise SystemExit(f"sealed sessions: the answer's session id is {handle!r}, not a "
                             "sealed handle")
        return handle

    def open_sessions(self, envoy: Envoy, count: int) -> Path:
        """A file of `count` sealed handles of sessions the upstream opened (one per line)."""
        path = self.work / f"{envoy.name}-sessions-{count}.txt"
        handles = [self.open_session(envoy) for _ in range(count)]
        if len(set(handles)) != count:
            raise SystemExit("sealed sessions: the upstream did not open a new session each time")
        path.write_text("\n".join(handles) + "\n")
        return path

    def measure_dpop(self, envoy: Envoy, body: Path, conns: int) -> dict:
        """`measure` with a DPoP-bound token and a new proof per request: proofs are single-use
        and fresh for 60 s (`max_age_seconds`), so each wrk run gets its own, issued just before."""
        runs = [self.args.warmup, self.args.duration] if self.args.warmup > 0 else [
            self.args.duration]
        for seconds in runs:
            token, proofs = self.write_dpop(conns, seconds)
            r = self.wrk(envoy, body, token, conns, seconds, f"dpop: @{proofs}")
        return r

    def write_dpop(self, conns: int, seconds: float) -> tuple[Path, Path]:
        """A DPoP-bound token (`cnf.jkt`, RFC 9449) and a file of single-use proofs for it, enough
        for `seconds` at 1.5 times the best rate seen so far (each wrk thread takes every other
        line), all issued now."""
        key = keys.SigningKey("ES256")
        jwk = {k: v for k, v in key.jwk().items() if k in ("kty", "crv", "x", "y")}
        canonical = json.dumps(jwk, separators=(",", ":"), sort_keys=True).encode()
        jkt = keys.b64url(hashlib.sha256(canonical).digest())
        token = self.sign("alice", cnf={"jkt": jkt})
        ath = keys.b64url(hashlib.sha256(token.encode()).digest())
        rates = [r["rps"] for r in self.results["runs"] if r["conns"] == conns] or [3000]
        count = int(max(rates) * seconds * 2 * 1.5) + 1000
        pem, now = key.pem(), int(time.time())
        proofs = "\n".join(
            pyjwt.encode({"htm": "POST", "htu": RESOURCE, "iat": now, "jti": f"bench-{now}-{i}",
                          "ath": ath}, pem, algorithm="ES256",
                         headers={"typ": "dpop+jwt", "jwk": jwk})
            for i in range(count))
        token_file, proof_file = self.work / "tokens-dpop.txt", self.work / "dpop-proofs.txt"
        token_file.write_text(f"DPoP {token}\n")
        proof_file.write_text(proofs + "\n")
        return token_file, proof_file

    def memory(self) -> None:
        """Memory per worker (concurrency 1 vs 2) and versus distinct callers."""
        a = self.args
        log("\n== memory")
        self.stop_all_proxies()
        per_worker = {}
        for s in ("a", "c"):
            for conc in (1, 2):
                envoy = self.start_proxy(s, name=f"mem-{s}-{conc}", concurrency=conc,
                                         cpus=None if conc > 1 else self.proxy_cpus)
                idle = envoy.settled_memory()
                self.wrk(envoy, self.work / "call-1k.json", self.token_files[1], 8, 2.0)
                loaded = envoy.settled_memory()
                used = envoy.workers_used()
                per_worker[f"{s}{conc}"] = {"idle": idle, "loaded": loaded, "workers_used": used}
                log(f"  ({s}) concurrency {conc}: RSS {mib(loaded['rss'])}, tcmalloc allocated "
                    f"{mib(loaded['allocated'])}, heap {mib(loaded['heap_size'])} of which free "
                    f"{mib(loaded['pageheap_free'])} (idle RSS {mib(idle['rss'])}; "
                    f"{used} worker(s) took connections)")
                self.stop(envoy)
        self.results["per_worker"] = per_worker

        users = []
        envoy = self.start_proxy("c", name="mem-users", concurrency=1)
        base = envoy.settled_memory()
        users.append({"users": 0, "requests": 0, "rps": 0, **base})
        log(f"  (c) idle: RSS {mib(base['rss'])}, allocated {mib(base['allocated'])}")
        # Throughput estimate, to run long enough that every token is used at least once.
        mains = [r["rps"] for r in self.results["runs"] if r["setup"] == "c" and r["conns"] == 32]
        rps = statistics.median(mains) if mains else None
        for n in a.users:
            tokens = self.write_tokens(n)
            duration = a.duration / 2
            if rps:
                # More callers are slower (fewer cache hits): the margin covers the difference.
                duration = min(max(duration, 1.6 * n / rps), 45.0)
            r = self.wrk(envoy, self.work / "call-1k.json", tokens, 32, duration)
            rps = min(rps, r["rps"]) if rps else r["rps"]
            m = envoy.settled_memory()
            users.append({"users": n, "requests": r["requests"], "rps": r["rps"],
                          "errors": r["errors"], "all_used": r["requests"] >= n, **m})
            log(f"  (c) {n:>6} distinct callers: {r['requests']:7d} requests "
                f"({r['rps']:.0f} req/s, errors {r['errors']}): RSS {mib(m['rss'])}, "
                f"allocated {mib(m['allocated'])}")
        self.stop(envoy)
        self.results["users"] = users

        # Sessions: the upstream opens a new one on every answer, which mcp-guard seals for the
        # caller. Nothing is kept per session, so memory must not grow with their number.
        sessions = []
        envoy = self.start_proxy("c", name="mem-sessions", concurrency=1)
        sessions.append({"sessions": 0, "rps": 0, **envoy.settled_memory()})
        total = self.check_sessions(envoy)
        rps, errors = None, 0
        for n in [total] + [n for n in a.sessions if n > total]:
            for _ in range(4):
                need = n - total
                if need <= 0:
                    break
                duration = 2.0 if rps is None else min(max(1.0, 1.1 * need / rps), 60.0)
                r = self.wrk(envoy, self.work / "call-1k.json", self.token_files[1], 32, duration,
                             "x-bench-answer: new-session")
                total, rps, errors = total + r["requests"], r["rps"], errors + r["errors"]
            m = envoy.settled_memory()
            sessions.append({"sessions": total, "rps": rps or 0, "errors": errors, **m})
            log(f"  (c) {total:>7} sessions opened (errors {errors}): RSS {mib(m['rss'])}, "
                f"allocated {mib(m['allocated'])}")
        self.stop(envoy)
        self.results["sessions"] = sessions

    def check_sessions(self, envoy: Envoy) -> int:
        """Each answer carries a new sealed session handle (so the series measures sessions).
        Returns how many sessions it opened."""
        token = self.token_files[1].read_text().split()[0]
        seen = set()
        for _ in range(3):
            req = urllib.request.Request(
                f"http://127.0.0.1:{envoy.port}/mcp", method="POST",
                data=(self.work / "call-1k.json").read_bytes(),
                headers={"content-type": "application/json", "x-bench-answer": "new-session",
                         "accept": "application/json, text/event-stream",
                         "mcp-protocol-version": "2025-11-25", "authorization": f"Bearer {token}"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                handle = resp.headers.get("mcp-session-id") or ""
            if not handle.startswith(SEALED_PREFIX):
                raise SystemExit(f"sessions bench: expected a sealed handle, got {handle!r}")
            seen.add(handle)
        if len(seen) != 3:
            raise SystemExit("sessions bench: the upstream did not open a new session per answer")
        return len(seen)

    def profile(self) -> None:
        """Where the proxies spend their CPU: perf samples of (a), (w), (b-cache) and (c) under
        the main load at each connection count, split into JIT code (Wasm compiled by V8), Envoy
        itself and the kernel, in CPU-µs per request; for (c) at 32 connections also the share
        of the hottest 2 KiB of JIT code (a single hot loop). (c) − (w) is then mcp-guard's own
        code (JIT) and what its hostcalls and held bodies cost Envoy."""
        if not shutil.which("perf"):
            log("\n== profile: perf is not installed; skipped")
            return
        seconds = max(2, int(self.args.duration) - 2)
        log(f"\n== profile ({seconds}s of perf samples per setup and load)")
        by_load = {}
        for conns in sorted(self.args.conns):
            for setup in ("a", "w", "b-cache", "c"):
                if setup in self.proxies:
                    found = self.profile_one(setup, self.proxies[setup], seconds, conns)
                    if found:
                        by_load.setdefault(conns, {})[setup] = found
        top = max(self.args.conns)
        c = by_load.get(top, {}).get("c")
        if c:
            self.results["profile"] = {"samples": c["samples"], "shares": c["shares"],
                                       "by_load": {str(k): v for k, v in by_load.items()}}

    def profile_one(self, setup: str, envoy: Envoy, seconds: int, conns: int) -> dict | None:
        import threading
        data = self.work / f"perf-{setup}-{conns}.data"
        result = {}

        def load():
            result["run"] = self.wrk(envoy, self.work / "call-1k.json", self.token_files[1],
                                     conns, seconds + 3)
        t = threading.Thread(target=load)
        t.start()
        time.sleep(1.5)
        rec = subprocess.run(["perf", "record", "-F", "999", "-p", str(envoy.pid), "-o",
                              str(data), "--", "sleep", str(seconds)], capture_output=True,
                             text=True)
        t.join()
        if rec.returncode != 0 or not data.exists():
            log(f"  ({setup}) perf record failed; skipped: {rec.stderr.strip()[-300:]}")
            return None
        script = subprocess.run(["perf", "script", "-i", str(data), "-F", "ip,dso"],
                                capture_output=True, text=True)
        total, split, windows = 0, {"wasm (V8 JIT code)": 0, "envoy": 0, "kernel": 0,
                                    "other": 0}, {}
        for line in script.stdout.splitlines():
            parts = line.split()
            if not parts:
                continue
            total += 1
            if "perf-" in line or "JIT" in line:
                split["wasm (V8 JIT code)"] += 1
                w = int(parts[0], 16) >> 10
                windows[w] = windows.get(w, 0) + 1
            elif "envoy" in line:
                split["envoy"] += 1
            elif "kernel" in line:
                split["kernel"] += 1
            else:
                split["other"] += 1
        if not total:
            log(f"  ({setup}) no samples; skipped")
            return None
        shares = {k: v / total for k, v in split.items()}
        cpu = result.get("run", {}).get("proxy_cpu_us_per_req", 0)
        found = {"samples": total, "shares": dict(shares), "cpu_us": cpu,
                 "us": {k: v * cpu for k, v in shares.items()}}
        if setup == "c" and conns == max(self.args.conns):
            # Windows are aligned arbitrarily: count the best pair of neighbours.
            hottest = max((n + windows.get(w + 1, 0) for w, n in windows.items()), default=0)
            found["shares"]["hottest 2 KiB of JIT code"] = hottest / total
        log(f"  ({setup}) c={conns:<3} {cpu:.0f} CPU-µs/req: "
            + ", ".join(f"{k} {v:.0%} ({v * cpu:.0f} µs)" for k, v in shares.items())
            + f" ({total} samples)")
        return found

    def limits(self) -> None:
        """The cost of a local and of a global limit on tools/call (same load as the main
        comparison, the service on loopback), and memory of a local limit with 100,000 keys."""
        a = self.args
        log("\n== limits")
        self.stop_all_proxies()
        local = LOCAL_LIMIT
        glob = [{"name": "company", "key": '"acme"', "rate": "1000000000/second",
                 "scope": "global"}]
        setups = [("c", self.start_proxy("c", name="limits-none")),
                  ("c-local", self.start_proxy("c", name="limits-local", limits=local))]
        rls = self.start_rls()
        if rls:
            setups.append(("c-global", self.start_proxy(
                "c", name="limits-global", limits=glob,
                extra_config={"rate_limit_service": {"cluster": "rls", "domain": "bench"}},
                clusters=harness_rls_cluster(rls))))
        else:
            log("  (the test rate limit service is not built: `make rls-peer`; global skipped)")
        for name, envoy in setups:
            self.check(envoy, "c")
        for conns in a.conns:
            for name, envoy in setups:
                r = self.measure(envoy, self.work / "call-1k.json", self.token_files[1], conns)
                r.update(setup=name, case="call-1k-limits")
                self.results.setdefault("limits", []).append(r)
                log(f"  {name:9} c={conns:<3} {r['rps']:9.0f} req/s  p50 {r['p50_us']:6d} µs  "
                    f"p99 {r['p99_us']:6d} µs  proxy {r['proxy_cpu_us_per_req']:6.0f} CPU-µs/req  "
                    f"filter {filter_col(r)} µs  errors {r['errors']}"
                    + (f"  first: {r['first_bad']}" if r["errors"] else ""))
        if rls:
            self.dpop_fleet(setups[0][1], rls)
        self.stop_all_proxies()

        # Memory: a local limit keyed by a header, 100,000 distinct keys, 100,000 slots.
        keyed = [{"name": "per-key", "key": 'request.headers["x-bench-key"]',
                  "rate": "1000/second", "slots": 100000}]
        mem = {}
        base = self.start_proxy("c", name="limits-mem-none", concurrency=1)
        mem["no limit"] = base.settled_memory()
        self.stop(base)
        envoy = self.start_proxy("c", name="limits-mem", concurrency=1, limits=keyed)
        mem["limit, idle"] = envoy.settled_memory()
        # Long enough for every one of the 100,000 keys (rate from a short run; at most 5 min).
        probe = self.wrk(envoy, self.work / "call-1k.json", self.token_files[1], 32, 3.0,
                         "x-bench-key: #100000")
        duration = min(300.0, 1.6 * 100_000 / max(probe["rps"], 1.0))
        r = self.wrk(envoy, self.work / "call-1k.json", self.token_files[1], 32, duration,
                     "x-bench-key: #100000")
        mem["after keys"] = {**envoy.settled_memory(), "requests": r["requests"],
                             "errors": r["errors"], "all_keys": r["requests"] >= 100_000}
        self.stop(envoy)
        self.results["limits_memory"] = mem
        log(f"  memory: no limit RSS {mib(mem['no limit']['rss'])}; a 100,000-slot local limit: "
            f"RSS {mib(mem['limit, idle']['rss'])} idle, {mib(mem['after keys']['rss'])} after "
            f"{r['requests']} requests cycling through 100,000 distinct keys (errors {r['errors']})")

    def dpop_fleet(self, local: Envoy, rls: int) -> None:
        """A DPoP proof per request with `dpop.replay: fleet` (each proof also spent at the rate
        limit service, one `ShouldRateLimit` call, the request waiting for it) against the same
        with the replay check per replica (`local`), off-on-on-off at the largest load."""
        conns = max(self.args.conns)
        fleet = self.start_proxy(
            "c", name="dpop-fleet", clusters=harness_rls_cluster(rls),
            extra_config={"rate_limit_service": {"cluster": "rls", "domain": "bench"},
                          "dpop": {"replay": "fleet"}})
        self.check(fleet, "c")
        runs: dict[str, list[dict]] = {"off": [], "on": []}
        for side in ("off", "on", "on", "off"):
            r = self.measure_dpop(fleet if side == "on" else local, self.work / "call-1k.json",
                                  conns)
            runs[side].append(r)
            log(f"  DPoP, replay {'fleet' if side == 'on' else 'local'}  c={conns:<3} "
                f"{r['rps']:9.0f} req/s  proxy {r['proxy_cpu_us_per_req']:6.0f} CPU-µs/req  "
                f"filter {filter_col(r)} µs  errors {r['errors']}"
                + (f"  first: {r['first_bad']}" if r["errors"] else ""))
        self.results["dpop_fleet"] = {side: mean_run(rs) for side, rs in runs.items()}

    def start_rls(self):
        """Redis and the test rate limit service (tests/peers/rls), when built."""
        binary = ROOT / "target" / "rls" / "release" / "mcp-guard-test-rls"
        if not binary.exists() or not shutil.which("redis-server"):
            return None
        redis_port, rls_port = harness.free_port(), harness.free_port()
        redis = harness.Process(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                                 "--save", "", "--appendonly", "no"], self.work / "redis.log")
        harness.wait_port(redis_port, redis.proc)
        # A global limit that never refuses, and DPoP proofs each allowed once (`dpop_fleet`;
        # docs/identity.md: at least max_age_seconds plus twice the skew).
        limits = json.dumps([{"domain": "bench", "limit": "company", "max": 10**12,
                              "seconds": 3600},
                             {"domain": "bench", "limit": "dpop_proof", "max": 1,
                              "seconds": 180}])
        rls = harness.Process([str(binary), f"127.0.0.1:{rls_port}",
                               f"redis://127.0.0.1:{redis_port}/", limits], self.work / "rls.log")
        harness.wait_port(rls_port, rls.proc)
        self.helpers = getattr(self, "helpers", []) + [rls, redis]
        return rls_port

    def stop_all_proxies(self) -> None:
        for p in list(self.procs):
            if p is not self.upstream:
                self.stop(p)

    def wasm_sizes(self) -> None:
        sizes = {}
        if WASM_UNOPTIMIZED.exists():
            sizes["before wasm-opt (cargo, release, stripped)"] = WASM_UNOPTIMIZED.stat().st_size
        optimized = harness.WASM.read_bytes()
        sizes["after wasm-opt -O3 (target/mcp_guard.wasm)"] = len(optimized)
        sizes["after wasm-opt -O3, gzip -9"] = len(gzip.compress(optimized, 9))
        if self.args.wasm_oz and shutil.which("wasm-opt"):
            out = self.work / "mcp_guard.Oz.wasm"
            subprocess.run(["wasm-opt", "-Oz", "--enable-bulk-memory", "--enable-sign-ext",
                            "--enable-nontrapping-float-to-int", "--enable-mutable-globals",
                            str(harness.WASM), "-o", str(out)], check=True)
            sizes["for comparison: wasm-opt -Oz instead"] = out.stat().st_size
        self.results["wasm"] = sizes
        log("\n== .wasm size\n" + "\n".join(f"  {k}: {v:,} bytes" for k, v in sizes.items()))

    def micro(self) -> None:
        """The native micro-benchmarks, with a short measurement time."""
        out = self.work / "micro.jsonl"
        # Benchmarks always unwind on panic; with the release profile's `panic = "abort"` the
        # `mcp-guard` binary (built alongside) would need a second copy of the library, which
        # collides with the first (a cdylib's file names carry no hash) and can fail to link.
        env = {**os.environ, "BENCH_TIME_MS": str(self.args.micro_ms), "BENCH_JSON": str(out),
               "CARGO_PROFILE_BENCH_PANIC": "unwind"}
        log(f"\n== native micro-benchmarks (cargo bench, {self.args.micro_ms} ms each)")
        start = time.monotonic()
        build = subprocess.run(["cargo", "bench", "-p", "mcp-guard", "--bench", "core",
                                "--no-run"], cwd=ROOT, env=env, capture_output=True, text=True)
        if build.returncode != 0:
            log(f"  cargo bench did not build; skipped:\n{build.stderr[-2000:]}")
            self.results["micro_error"] = build.stderr[-600:]
            return
        log(f"  built in {time.monotonic() - start:.0f}s")
        run = subprocess.run(["cargo", "bench", "-p", "mcp-guard", "--bench", "core"],
                             cwd=ROOT, env=env, capture_output=True, text=True)
        log(run.stdout.rstrip())
        if run.returncode != 0:
            log(run.stderr[-2000:])
            self.results["micro_error"] = run.stderr[-600:]
        if out.exists():
            self.results["micro"] = [json.loads(l) for l in out.read_text().splitlines() if l]


def mean_run(runs: list[dict]) -> dict:
    """One measurement from several of the same setup: numbers averaged (failures summed), the
    rest taken from the first; the runs kept under `runs`."""
    out = dict(runs[0])
    for key, value in runs[0].items():
        values = [r.get(key) for r in runs]
        if key in ("errors", "bad_status", "bad_body"):
            out[key] = sum(v or 0 for v in values)
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            mean = sum(values) / len(values)
            out[key] = round(mean) if all(isinstance(v, int) for v in values) else mean
    out["first_bad"] = next((r["first_bad"] for r in runs if r.get("first_bad")), runs[0].get("first_bad"))
    out["runs"] = runs
    return out


def filter_times(audit: Path, offset: int) -> dict:
    """Median and p99 of the filter's own time per request (the audit records' `filter_us`:
    wall time inside the filter's callbacks, hostcalls included) from the records written since
    `offset`. Envoy flushes the access log about once a second."""
    time.sleep(1.2)
    with audit.open("rb") as f:
        f.seek(offset)
        lines = f.read().splitlines()
    us = []
    for line in lines:
        try:
            v = json.loads(line).get("filter_us")
        except ValueError:
            continue
        if isinstance(v, int):
            us.append(v)
    if not us:
        return {}
    us.sort()
    return {"filter_us_p50": us[len(us) // 2], "filter_us_p99": us[min(len(us) - 1, len(us) * 99 // 100)],
            "filter_samples": len(us)}


def harness_rls_cluster(port: int) -> str:
    """The HTTP/2 cluster `rls` of the rate limit service."""
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


def es256_verify_us(seconds: float = 0.5) -> float:
    """Microseconds one ES256 (ECDSA P-256, SHA-256) verification takes here, with OpenSSL (through
    the `cryptography` package PyJWT uses): the floor under a check that must verify a new proof
    per request."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    key = ec.generate_private_key(ec.SECP256R1())
    public, message = key.public_key(), b"x" * 600
    signature = key.sign(message, ec.ECDSA(hashes.SHA256()))
    times = []
    for _ in range(5):
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 5:
            public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
            n += 1
        times.append((time.perf_counter() - start) / n * 1e6)
    return min(times)


def dpop_floor(feature: dict, res: dict) -> float | None:
    """For the DPoP case: the on/off CPU ratio one ES256 verification alone would give."""
    off, verify_us = feature["off"]["proxy_cpu_us_per_req"], res.get("es256_verify_us")
    if not (feature["feature"].startswith("a DPoP proof") and off and verify_us):
        return None
    return (off + verify_us) / off


def filter_col(r: dict) -> str:
    return (f"{r['filter_us_p50']:,} / {r['filter_us_p99']:,}" if "filter_us_p50" in r else "")


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


# ---- report -----------------------------------------------------------------------------------

def cpu_busy(seconds: float = 1.0) -> float:
    """Share of all CPUs busy (anything but idle and iowait) over `seconds`, from /proc/stat."""
    def sample():
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields[:8]), idle
    t0, i0 = sample()
    time.sleep(seconds)
    t1, i1 = sample()
    return 1 - (i1 - i0) / (t1 - t0) if t1 > t0 else 0.0


def machine(args, bench: Bench) -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"model name\s*:\s*(.*)", cpuinfo)
    version = subprocess.run([harness.envoy_binary(), "--version"], capture_output=True,
                             text=True).stdout.strip()
    envoy_version = re.search(r"/(\d+\.\d+\.\d+)/", version)
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split()
    mem_kb = re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "filter", "envoy"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    load = os.getloadavg()
    busy = cpu_busy()
    pin = (f"proxy on CPU {','.join(map(str, bench.proxy_cpus))}; upstream and wrk on CPU "
           f"{','.join(map(str, bench.other_cpus))}" if bench.proxy_cpus else "none")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": model.group(1).strip() if model else platform.processor() or "unknown",
        "cores": f"{os.cpu_count()} logical CPUs ({len(bench.cpus)} usable)",
        "memory": f"{int(mem_kb.group(1)) / 2**20:.1f} GiB" if mem_kb else "?",
        "kernel": platform.release(),
        "envoy": envoy_version.group(1) if envoy_version else version,
        "wrk": wrk_version[1] if len(wrk_version) > 1 else "?",
        "concurrency": f"proxies {args.concurrency} worker(s), upstream "
                       f"{args.upstream_concurrency}",
        "pinning": pin,
        "load_before": f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; CPUs {busy:.0%} busy "
                       "in the second before the bench started"
                       + (" (other work was running: treat the numbers as indicative)"
                          if busy > 0.15 else ""),
        "commit": commit + (" + uncommitted changes in filter/ or envoy/" if dirty else ""),
    }


def agg(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def spread(runs: list[dict], key: str) -> str:
    values = [r[key] for r in runs]
    if len(values) < 2:
        return ""
    mid = statistics.median(values)
    return f" ±{(max(values) - min(values)) / 2 / mid * 100:.0f}%" if mid else ""


def report(args, bench: Bench, info: dict, elapsed: float) -> str:
    res = bench.results
    L = []
    L.append("# mcp-guard benchmark results\n")
    L.append(f"Written by `make bench` (bench/run.py) on {info['date']}. Re-run to refresh; "
             "every number below comes from that one run.\n")
    L.append("| machine | |\n|---|---|")
    for k in ("cpu", "cores", "memory", "kernel", "envoy", "wrk", "concurrency", "pinning",
              "load_before", "commit"):
        label = {"load_before": "machine load at start", "envoy": "Envoy",
                 "concurrency": "Envoy concurrency", "pinning": "CPU pinning"}.get(k, k)
        L.append(f"| {label} | {info[k]} |")
    L.append(f"| run | {args.rounds} round(s), {args.duration:g} s per measurement after "
             f"{args.warmup:g} s warm-up, wrk {args.threads} threads (1 for 1 connection); "
             f"total {elapsed / 60:.1f} min |\n")

    runs = res["runs"]
    if runs:
        L.append("## tools/call, ~1 KiB arguments, RS256 bearer token\n")
        L.append("Median over rounds (± half the min–max range of req/s). Latency as wrk measures "
                 "it (client side, closed loop). *Proxy CPU* is the proxy process's user+system "
                 "time per request, the cost least disturbed by a shared machine; *proxy CPU "
                 "use* is that time over the wall time: near 100% at 32 connections, the proxy "
                 "(1 worker) was the bottleneck; well below, something else was (other processes, "
                 "the load generator), and the req/s ratios understate the differences.\n")
        L.append("| setup | conns | req/s | p50 µs | p99 µs | proxy CPU µs/req | proxy CPU use "
                 "| filter µs p50 / p99 | requests | errors |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        table = {}
        for conns in args.conns:
            for s in ["a", "w", "b", "b-cache", "c", "c-callers"]:
                rs = [r for r in runs if r["setup"] == s and r["conns"] == conns]
                if not rs:
                    continue
                row = {k: agg(rs, k) for k in ("rps", "p50_us", "p99_us", "proxy_cpu_us_per_req",
                                                "proxy_cpu_util")}
                row["requests"] = sum(r["requests"] for r in rs)
                row["errors"] = sum(r["errors"] for r in rs)
                table[(s, conns)] = row
                label = (f"(c) mcp-guard, {args.callers:,} distinct callers" if s == "c-callers"
                         else f"({s}) {SETUPS[s]}")
                L.append(f"| {label} | {conns} | {row['rps']:,.0f}{spread(rs, 'rps')} "
                         f"| {row['p50_us']:,.0f} | {row['p99_us']:,.0f} "
                         f"| {row['proxy_cpu_us_per_req']:,.0f} | {row['proxy_cpu_util']:.0%} "
                         f"| {filter_col(rs[len(rs) // 2])} "
                         f"| {row['requests']:,} | {row['errors']} |")
        L.append("")
        L.append("| ratio | " + " | ".join(f"{c} conn{'s' if c > 1 else ''}" for c in args.conns)
                 + " |")
        L.append("|---|" + "---:|" * len(args.conns))

        def ratio(x, y, key):
            cells = []
            for c in args.conns:
                if (x, c) in table and (y, c) in table and table[(y, c)][key]:
                    cells.append(f"{table[(x, c)][key] / table[(y, c)][key]:.2f}")
                else:
                    cells.append("–")
            return " | ".join(cells)

        L.append(f"| throughput c/a (mcp-guard / plain) | {ratio('c', 'a', 'rps')} |")
        L.append(f"| throughput c/b (mcp-guard / native) | {ratio('c', 'b', 'rps')} |")
        L.append(f"| throughput b/a (native / plain) | {ratio('b', 'a', 'rps')} |")
        L.append(f"| proxy CPU per request c/a | {ratio('c', 'a', 'proxy_cpu_us_per_req')} |")
        L.append(f"| proxy CPU per request c/b | {ratio('c', 'b', 'proxy_cpu_us_per_req')} |")
        L.append(f"| throughput c/b-cache (mcp-guard / native with its JWT cache) "
                 f"| {ratio('c', 'b-cache', 'rps')} |")
        L.append(f"| proxy CPU per request c/b-cache "
                 f"| {ratio('c', 'b-cache', 'proxy_cpu_us_per_req')} |")
        L.append(f"| throughput, {args.callers:,} callers / one token (target ≥ 0.80) "
                 f"| {ratio('c-callers', 'c', 'rps')} |")
        L.append(f"| proxy CPU per request, {args.callers:,} callers / one token "
                 f"| {ratio('c-callers', 'c', 'proxy_cpu_us_per_req')} |")
        L.append(f"| throughput, {args.callers:,} callers c/b (mcp-guard / native, one token) "
                 f"| {ratio('c-callers', 'b', 'rps')} |")
        L.append("")
        one = min(args.conns)
        if all((s, one) in table for s in "abc"):
            ta, tb, tc = (table[(s, one)] for s in "abc")
            L.append(f"At {one} connection, mcp-guard adds **{tc['p99_us'] - ta['p99_us']:,.0f} µs "
                     f"at p99** ({tc['p50_us'] - ta['p50_us']:,.0f} µs at p50) over plain Envoy; "
                     f"the native stack adds {tb['p99_us'] - ta['p99_us']:,.0f} µs at p99 "
                     f"({tb['p50_us'] - ta['p50_us']:,.0f} µs at p50). Per request the proxy "
                     f"spends {tc['proxy_cpu_us_per_req'] - ta['proxy_cpu_us_per_req']:,.0f} "
                     f"CPU-µs more with mcp-guard, "
                     f"{tb['proxy_cpu_us_per_req'] - ta['proxy_cpu_us_per_req']:,.0f} more with "
                     f"the native filters.\n")
        floor = [c for c in args.conns if all((s, c) in table for s in ("a", "w", "b-cache", "c"))]
        if floor:
            cpu = {(s, c): table[(s, c)]["proxy_cpu_us_per_req"] for s in ("a", "w", "b-cache", "c")
                   for c in floor}
            L.append("**What any Wasm filter pays.** (w) is (c)'s Envoy configuration with a module "
                     "that does nothing (bench/empty-filter: no hostcall, every callback continues). "
                     "Proxy CPU-µs per request, "
                     + "; ".join(
                         f"at {c} connection{'s' if c > 1 else ''}: the empty Wasm filter "
                         f"{cpu[('w', c)] - cpu[('a', c)]:,.0f} over plain Envoy, so a Wasm filter "
                         f"has {cpu[('b-cache', c)] - cpu[('w', c)]:,.0f} left for all its work "
                         f"before it costs more than (b-cache); mcp-guard's work (c − w) takes "
                         f"{cpu[('c', c)] - cpu[('w', c)]:,.0f}" for c in floor)
                     + ". The difference between (w) and (a) is Envoy's and V8's: a context per "
                     "request and each callback a call into the VM, whatever the module does.\n")

    lim = res.get("limits")
    if lim:
        L.append("## Limits (1 round)\n")
        L.append("tools/call with 1 KiB arguments through mcp-guard: without limits, with one "
                 "local limit (token bucket in shared data, CAS), with one global limit (a "
                 "`ShouldRateLimit` call to the test rate limit service — limitador on Redis — "
                 "on loopback, the request waiting for it).\n")
        L.append("| limit | conns | req/s | p50 µs | p99 µs | proxy CPU µs/req | filter µs p50 / p99 "
                 "| errors |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        names = {"c": "none", "c-local": "local", "c-global": "global"}
        for r in lim:
            L.append(f"| {names.get(r['setup'], r['setup'])} | {r['conns']} | {r['rps']:,.0f} "
                     f"| {r['p50_us']:,} | {r['p99_us']:,} | {r['proxy_cpu_us_per_req']:,.0f} "
                     f"| {filter_col(r)} | {r['errors']} |")
        mem = res.get("limits_memory")
        if mem:
            after = mem["after keys"]
            L.append(f"\nMemory (one worker): RSS {mib(mem['no limit']['rss'])} without limits; "
                     f"{mib(mem['limit, idle']['rss'])} with a local limit of 100,000 slots "
                     f"(created at load); {mib(after['rss'])} after {after['requests']:,} requests "
                     f"cycling through 100,000 distinct keys"
                     + ("" if after.get("all_keys") else " (NOT all of them used: the run was too short)")
                     + f" ({after['errors']} errors). Memory is fixed by "
                     f"`slots`, not by the number of keys.\n")
        fleet = res.get("dpop_fleet")
        if fleet:
            off, on = fleet["off"], fleet["on"]
            ratio = (on["proxy_cpu_us_per_req"] / off["proxy_cpu_us_per_req"]
                     if off["proxy_cpu_us_per_req"] else float("nan"))
            L.append(f"A DPoP proof per request with `dpop.replay: fleet` (each proof also spent at "
                     f"the rate limit service: one `ShouldRateLimit` call, the request waiting for "
                     f"it) against the same proofs checked per replica only, at "
                     f"{max(args.conns)} connections (off, on, on, off): "
                     f"{off['rps']:,.0f} → {on['rps']:,.0f} req/s, "
                     f"{off['proxy_cpu_us_per_req']:,.0f} → {on['proxy_cpu_us_per_req']:,.0f} "
                     f"proxy CPU-µs per request ({ratio:.2f}×), filter µs p50 "
                     f"{off.get('filter_us_p50', '–')} → {on.get('filter_us_p50', '–')}, "
                     f"{on['errors']} errors.\n")

    extra = res["extra"]
    if extra:
        L.append("## Further cases (1 round)\n")
        L.append("*Filter µs* is mcp-guard's own time per request from its audit records "
                 "(`filter_us`: wall time inside its callbacks, hostcalls included; median / p99). "
                 "For tools/list it covers the whole request and the filtering of the answer.\n")
        L.append("| case | setup | conns | req/s | p50 µs | p99 µs | proxy CPU µs/req "
                 "| filter µs p50 / p99 | answer bytes | errors |")
        L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        names = {"call-100k": "tools/call, 100 KiB arguments",
                 "tools-list-sse-500": "tools/list, 500 tools as SSE",
                 "call-1k-100-rules": "tools/call 1 KiB, policy of 100 rules"}
        for r in extra:
            s = r["setup"]
            label = "(c) mcp-guard, 100 rules" if s == "c100" else f"({s}) {SETUPS[s]}"
            L.append(f"| {names.get(r['case'], r['case'])} | {label} | {r['conns']} "
                     f"| {r['rps']:,.0f} | {r['p50_us']:,} | {r['p99_us']:,} "
                     f"| {r['proxy_cpu_us_per_req']:,.0f} | {filter_col(r)} "
                     f"| {r['resp_bytes']:,.0f} | {r['errors']} |")
        checks = res["checks"]
        if checks:
            full = checks.get("a", {}).get("tools_listed")
            got = checks.get("c", {}).get("tools_listed")
            L.append(f"\ntools/list: the upstream lists {full} tools; through mcp-guard the "
                     f"caller sees {got} ("
                     + ("filtered by the policy" if got is not None and full and got < full
                        else "NOT filtered: this build forwards the list as is") + "). "
                     "The native stack never filters lists.\n")

    feats = res.get("features") or []
    lim_rows = {r["setup"]: r for r in res.get("limits") or [] if r["conns"] == max(args.conns)}
    if feats or ("c" in lim_rows and "c-local" in lim_rows):
        L.append("## Features on vs off\n")
        L.append(f"Each feature of this round against the same request without it (each side "
                 f"measured twice per round, in the order off, on, on, off, over {args.rounds} "
                 "round(s) that go through every feature in turn, and averaged), at "
                 f"{max(args.conns)} connections (the proxy the bottleneck, its CPU per request "
                 "the steadiest figure). Target: at most 1.10× the proxy CPU per request when on, "
                 "nothing when not configured (*off* is the configuration without it). *Each run* shows how far "
                 "the runs of a side lie apart: on this kind of machine a single pair of runs can "
                 "differ by more than a feature costs, which is why every side is run several "
                 "times and the rounds interleave the features.\n")
        L.append("| feature | req/s off → on | proxy CPU µs/req off → on | each run: off; on | "
                 "on/off | filter µs p50 off → on | target ≤ 1.10 |")
        L.append("|---|---:|---:|---:|---:|---:|---|")
        rows = [(f["feature"], f["off"], f["on"]) for f in feats]
        # Without the features part, the local limit's one run of each side from the limits part.
        if not feats and "c" in lim_rows and "c-local" in lim_rows:
            rows.append((LOCAL_LIMIT_FEATURE, lim_rows["c"],
                         lim_rows["c-local"]))
        for feature, off, on in rows:
            ratio = (on["proxy_cpu_us_per_req"] / off["proxy_cpu_us_per_req"]
                     if off["proxy_cpu_us_per_req"] else float("nan"))
            each = "; ".join(", ".join(f"{r['proxy_cpu_us_per_req']:,.0f}"
                                       for r in side.get("runs", [side])) for side in (off, on))
            L.append(f"| {feature} | {off['rps']:,.0f} → {on['rps']:,.0f} "
                     f"| {off['proxy_cpu_us_per_req']:,.0f} → {on['proxy_cpu_us_per_req']:,.0f} "
                     f"| {each} | {ratio:.2f} | {off.get('filter_us_p50', '–')} → "
                     f"{on.get('filter_us_p50', '–')} | {'met' if ratio <= 1.10 else 'NOT met'} |")
        L.append("\nThe sealed-handles case is a call in an open session: the request presents "
                 "its handle (opened) and the answer names the session again (sealed), as the "
                 "TypeScript SDK's server does on every answer; *a new session per answer* has the "
                 "upstream open a new session on every answer instead (each handle sealed once and "
                 "never presented: the worst case, not a session's steady state); its off side "
                 "carries the same answer-selecting request header with a value that selects the "
                 "plain answer, so the two sides differ only in the session the answer names. "
                 f"*{LIVE_SESSIONS:,} live sessions in turn* presents a different session's handle "
                 "on each call, more than a worker remembers (1,024), so each is opened anew, as in "
                 "a fleet whose load balancer spreads many sessions over each worker. Handles are "
                 f"sealed with `{SESSIONS['cipher']}` (`sessions.cipher`, docs/fleet.md).\n")
        L.append("The DPoP case sends a DPoP-bound token (`cnf.jkt`, verified once, then cached) "
                 "with a new ES256 proof in every request (each single-use: signed just before "
                 "the run, taken in turn by bench/load.lua); *off* is the same call with a plain "
                 "bearer token.\n")
        for f in feats:
            if floor := dpop_floor(f, res):
                off_us = f["off"]["proxy_cpu_us_per_req"]
                L.append(f"A new proof is a new signature to check: one ES256 verification costs "
                         f"{res['es256_verify_us']:.0f} µs on this machine (OpenSSL's P-256, timed "
                         f"by the bench; Envoy checks it with BoringSSL's), so no DPoP "
                         f"implementation can do this case below {floor:.2f}× the off case's "
                         f"{off_us:,.0f} CPU-µs per request here.\n")

    L.extend(targets(args, res))

    if "profile" in res:
        prof = res["profile"]
        L.append("## Where (c) spends its CPU\n")
        L.append(f"perf samples of the mcp-guard proxy process under the tools/call load at "
                 f"{max(args.conns)} "
                 f"connections ({prof['samples']:,} samples). V8 runs the filter as JIT code; the "
                 "hottest 2 KiB of it is one or two functions.\n")
        L.append("| where | share of proxy CPU |\n|---|---:|")
        for k, v in prof["shares"].items():
            L.append(f"| {k} | {v:.0%} |")
        L.append("")
        by_load = prof.get("by_load") or {}
        if by_load:
            parts = ["wasm (V8 JIT code)", "envoy", "kernel", "other"]
            L.append("The same split for each setup and load, in proxy CPU-µs per request (each "
                     "setup's own run under perf): (c) − (w) is mcp-guard's own code (JIT) and "
                     "what its hostcalls, held bodies and longer record cost Envoy.\n")
            L.append("| setup | conns | CPU µs/req | " + " | ".join(parts) + " |")
            L.append("|---|---:|---:|" + "---:|" * len(parts))
            for conns, by in by_load.items():
                for setup, f in by.items():
                    L.append(f"| ({setup}) {SETUPS[setup]} | {conns} | {f['cpu_us']:,.0f} | "
                             + " | ".join(f"{f['us'][k]:,.1f}" for k in parts) + " |")
                if "c" in by and "w" in by:
                    L.append(f"| (c) − (w) | {conns} | "
                             f"{by['c']['cpu_us'] - by['w']['cpu_us']:,.0f} | "
                             + " | ".join(f"{by['c']['us'][k] - by['w']['us'][k]:+,.1f}"
                                          for k in parts) + " |")
            L.append("")

    if "per_worker" in res:
        pw = res["per_worker"]
        L.append("## Memory\n")
        L.append("Per worker: Envoy started with 1 and with 2 workers, after 2 s of load "
                 "(RSS from the kernel; *allocated* is tcmalloc's count of live heap bytes, which "
                 "does not include V8's own pages, so RSS is the figure for Wasm; *tcmalloc heap* "
                 "is what tcmalloc holds, *free* the part freed but not returned to the kernel).\n")
        L.append("| setup | RSS, 1 worker | RSS, 2 workers | RSS per extra worker "
                 "| allocated, 1 worker | allocated per extra worker | tcmalloc heap (free), "
                 "1 worker |")
        L.append("|---|---:|---:|---:|---:|---:|---:|")
        for s in ("a", "c"):
            one, two = pw.get(f"{s}1"), pw.get(f"{s}2")
            if one and two:
                o, t = one["loaded"], two["loaded"]
                L.append(f"| ({s}) {SETUPS[s]} | {mib(o['rss'])} | {mib(t['rss'])} "
                         f"| {mib(t['rss'] - o['rss'])} | {mib(o['allocated'])} "
                         f"| {mib(t['allocated'] - o['allocated'])} "
                         f"| {mib(o['heap_size'])} ({mib(o['pageheap_free'])}) |")
        if all(k in pw for k in ("a1", "a2", "c1", "c2")):
            fixed = pw["c1"]["loaded"]["rss"] - pw["a1"]["loaded"]["rss"]
            per = ((pw["c2"]["loaded"]["rss"] - pw["c1"]["loaded"]["rss"])
                   - (pw["a2"]["loaded"]["rss"] - pw["a1"]["loaded"]["rss"]))
            L.append(f"\nWith 1 worker mcp-guard costs {mib(fixed)} of RSS over plain Envoy "
                     f"(main-thread VM + worker VM + compiled module); each further worker adds "
                     f"{mib(per)} more than a plain Envoy worker does. All setups return freed "
                     f"heap to the system in the background (`memory_allocator_manager`, 16 MiB "
                     f"a second, as envoy/mcp-guard.yaml ships): without it the heap freed after "
                     f"loading the module (about 50 MiB on this machine) stays in tcmalloc and in "
                     f"RSS.\n")
    if "users" in res:
        L.append("Versus distinct callers (mcp-guard, 1 worker, one process, loads one after the "
                 "other; each caller a different `sub`; *all used*: at least as many requests as "
                 "callers, the two wrk threads walking the tokens from the start and the middle):\n")
        L.append("| distinct callers | requests | all used | req/s | RSS | allocated "
                 "| RSS vs idle | allocated vs idle |")
        L.append("|---:|---:|---|---:|---:|---:|---:|---:|")
        idle, idle_alloc = res["users"][0]["rss"], res["users"][0]["allocated"]
        for u in res["users"]:
            used = "" if not u["users"] else ("yes" if u.get("all_used") else "no")
            L.append(f"| {u['users'] if u['users'] else 'idle'} | {u['requests']:,} | {used} "
                     f"| {u['rps']:,.0f} | {mib(u['rss'])} | {mib(u['allocated'])} "
                     f"| {'+' if u['rss'] >= idle else ''}{mib(u['rss'] - idle)} "
                     f"| {'+' if u['allocated'] >= idle_alloc else ''}"
                     f"{mib(u['allocated'] - idle_alloc)} |")
        L.append("")

    if res.get("sessions"):
        L.append("Versus sessions (mcp-guard, 1 worker, one caller; the upstream opens a new "
                 "session on every answer and mcp-guard seals each for the caller; cumulative):\n")
        L.append("| sessions opened | req/s | RSS | allocated | RSS vs idle | allocated vs idle |")
        L.append("|---:|---:|---:|---:|---:|---:|")
        idle, idle_alloc = res["sessions"][0]["rss"], res["sessions"][0]["allocated"]
        for s in res["sessions"]:
            L.append(f"| {s['sessions'] if s['sessions'] else 'idle'} | {s['rps']:,.0f} "
                     f"| {mib(s['rss'])} | {mib(s['allocated'])} "
                     f"| {'+' if s['rss'] >= idle else ''}{mib(s['rss'] - idle)} "
                     f"| {'+' if s['allocated'] >= idle_alloc else ''}"
                     f"{mib(s['allocated'] - idle_alloc)} |")
        L.append("")

    if "wasm" in res:
        L.append("## .wasm size\n")
        L.append("| artifact | bytes |\n|---|---:|")
        for k, v in res["wasm"].items():
            L.append(f"| {k} | {v:,} |")
        L.append("")

    if res.get("micro"):
        L.append("## Native micro-benchmarks (`cargo bench -p mcp-guard`, filter/benches/core.rs)"
                 "\n")
        L.append(f"Median time per call over batches, {args.micro_ms} ms per benchmark (short; "
                 "`CARGO_PROFILE_BENCH_PANIC=unwind cargo bench -p mcp-guard --bench core` runs "
                 "2 s each). Native code: in Envoy the same code runs as Wasm under V8; compare "
                 "`flow/RS256/tools-call/4-rules/call-1k` with the proxy CPU mcp-guard adds per "
                 "request above. On a busy machine the p10 is the better estimate of the cost.\n")
        L.append("| benchmark | median | p10 .. p90 | throughput |\n|---|---:|---:|---:|")
        for m in res["micro"]:
            tp = (f"{m['bytes'] / (m['median_ns'] / 1e9) / 1e6:,.0f} MB/s" if m.get("bytes")
                  else "")
            L.append(f"| {m['name']} | {ns(m['median_ns'])} | {ns(m['p10_ns'])} .. "
                     f"{ns(m['p90_ns'])} | {tp} |")
        L.append("")
    elif "micro_error" in res:
        L.append(f"## Native micro-benchmarks\n\nNot run: `cargo bench` failed:\n\n```\n"
                 f"{res['micro_error']}\n```\n")

    L.append("## How this was measured\n")
    L.append(
        f"- Upstream: a second Envoy answering from canned bodies (`direct_response`): a "
        f"{len(workload.call_answer())}-byte tools/call result, or the 500-tool list as one SSE "
        f"event ({len(workload.tools_list_sse(500)) // 1024} KiB) when the request "
        "carries `x-bench-answer: tools-list`. For (b) and (c) it answers only requests that "
        "carry the service key and no Authorization header, so a missed credential swap shows "
        "up as errors. It reads each whole request before it answers, as a real server does, so "
        "every proxy keeps its upstream connections open (until 2026-12-03 it answered at the "
        "headers and Envoy closed each connection: one new upstream connection per request in "
        "every setup).\n"
        "- Load: wrk with bench/load.lua; every answer must be a 200 whose body holds a JSON-RPC "
        "`result` (a policy denial, a 200 with `error`, counts as an error). Bodies and tokens "
        "are identical for all setups. Before measuring, each setup must allow the call, deny "
        "delete_customer to a non-admin and allow it to an admin (not (a) or (w)), and answer "
        "401 to a missing token and to a bad signature (not (a) or (w)).\n"
        "- (b) differs from (c) in what it does, not only how: Envoy's MCP filter extracts "
        "`method` and `params.name` and stops parsing as soon as it has them (the rest of the "
        "body is not validated: no strict JSON, no duplicate-key or depth checks, arguments "
        "unseen), RBAC matches strings in metadata where mcp-guard evaluates CEL over identity "
        "and arguments, its access log line is shorter than mcp-guard's audit record, and it "
        "does not filter tools/list answers.\n"
        "- (b) verifies the token's signature on every request (jwt_authn's default); "
        "(b-cache) turns on jwt_authn's JWT cache (`jwt_cache_config`, 100 tokens), which skips "
        "that check for a token seen before. mcp-guard's verified-token cache is on by default, "
        "so with one token reused (c) checks no signature after the first request: (b-cache) is "
        "the like-for-like comparison, (b) what Envoy does unless told otherwise.\n"
        "- (w) uses envoy/mcp-guard.yaml as (c) does, with bench/empty-filter's module (built "
        "by the same recipe) in place of mcp-guard's and the upstream that needs no service key, "
        "as (a). It prices the Wasm machinery alone: what the proxy spends above (a) before a "
        "filter reads a header.\n"
        "- (c) uses envoy/mcp-guard.yaml as shipped (audit access log included) with "
        "bench/policy.yaml; the 100-rule policy puts 96 generated rules (deny and allow rules on "
        "tool names, allow rules on the caller only; none matching) in front of the same four "
        "rules.\n")
    return "\n".join(L) + "\n"


def targets(args, res: dict) -> list[str]:
    """Where issue 19's targets stand, from this run's numbers."""
    runs = res["runs"]
    L = ["## Targets\n", "| target | measured | met? |", "|---|---|---|"]

    def med(setup, conns, key):
        rs = [r[key] for r in runs if r["setup"] == setup and r["conns"] == conns]
        return statistics.median(rs) if rs else None

    def verdict(ok):
        return "–" if ok is None else ("met" if ok else "**not met**")

    def near(value, line):
        """Two decimals, or three where two would print the line itself (0.797 against 0.80)."""
        return f"{value:.3f}" if f"{value:.2f}" == f"{line:.2f}" else f"{value:.2f}"

    for c in args.conns:
        for b, what in (("b", "native"), ("b-cache", "native with its JWT cache")):
            cb, bb = med("c", c, "rps"), med(b, c, "rps")
            ccpu, bcpu = med("c", c, "proxy_cpu_us_per_req"), med(b, c, "proxy_cpu_us_per_req")
            if cb and bb and ccpu and bcpu:
                L.append(f"| tools/call throughput ≥ {what}, {c} conn | c/{b} {near(cb / bb, 1)} "
                         f"| {verdict(cb / bb >= 1.0)} |")
                L.append(f"| proxy CPU per request ≤ {what}, {c} conn | c/{b} {near(ccpu / bcpu, 1)} "
                         f"({ccpu:,.0f} vs {bcpu:,.0f} µs) | {verdict(ccpu <= bcpu)} |")
        w, bc = med("w", c, "proxy_cpu_us_per_req"), med("b-cache", c, "proxy_cpu_us_per_req")
        if w and bc:
            L.append(f"| (the floor, not a target) an empty Wasm filter against native with its "
                     f"JWT cache, {c} conn | w/b-cache {w / bc:.2f} ({w:,.0f} vs {bc:,.0f} µs) "
                     f"| – |")
        many, one = med("c-callers", c, "rps"), med("c", c, "rps")
        if many and one:
            L.append(f"| {args.callers:,} callers within 20% of one token, {c} conn "
                     f"| {near(many / one, 0.8)} | {verdict(many / one >= 0.8)} |")
    sse = [r for r in res["extra"] if r["case"] == "tools-list-sse-500" and r["setup"] == "c"
           and "filter_us_p50" in r]
    if sse:
        worst = max(r["filter_us_p50"] for r in sse)
        L.append(f"| 500-tool SSE tools/list filtered in ≤ 0.5 ms of filter time "
                 f"| {worst:,} µs (median, worst load) | {verdict(worst <= 500)} |")
    for f in res.get("features") or []:
        off, on = f["off"]["proxy_cpu_us_per_req"], f["on"]["proxy_cpu_us_per_req"]
        if off:
            floor = dpop_floor(f, res)
            floor = f" (one ES256 verification alone: {floor:.2f})" if floor else ""
            L.append(f"| {f['feature']}: ≤ 1.10× CPU | {near(on / off, 1.1)}{floor} "
                     f"| {verdict(on / off <= 1.10)} |")
    if res.get("sessions") and len(res["sessions"]) > 1:
        s0, s1 = res["sessions"][0], res["sessions"][-1]
        L.append(f"| memory flat with {s1['sessions']:,} sessions | RSS {mib(s1['rss'] - s0['rss'])} "
                 f"over idle | {verdict(s1['rss'] - s0['rss'] < 16 * 2**20)} |")
    mem = res.get("limits_memory")
    if mem:
        d = mem["after keys"]["rss"] - mem["limit, idle"]["rss"]
        L.append(f"| memory flat with 100,000 limit keys | RSS {mib(d)} after all keys "
                 f"| {verdict(d < 16 * 2**20)} |")
    if res.get("users") and len(res["users"]) > 1:
        u0, u1 = res["users"][0], res["users"][-1]
        L.append(f"| memory flat with {u1['users']:,} callers | RSS {mib(u1['rss'] - u0['rss'])} "
                 f"over idle | {verdict(u1['rss'] - u0['rss'] < 16 * 2**20)} |")
    L.append("\n*Flat* is read as: less than 16 MiB above idle, the per-worker budget.\n")
    return L


def ns(v: float) -> str:
    if v < 1e3:
        return f"{v:.0f} ns"
    if v < 1e6:
        return f"{v / 1e3:.2f} µs"
    return f"{v / 1e6:.2f} ms"


# ---- main -------------------------------------------------------------------------------------

def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up before each")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--conns", type=lambda s: [int(x) for x in s.split(",")], default=[1, 32],
                   help="connection counts, e.g. 1,32")
    p.add_argument("--threads", type=int, default=2, help="wrk threads (1 for 1 connection)")
    p.add_argument("--concurrency", type=int, default=1, help="workers of the proxies under test")
    p.add_argument("--upstream-concurrency", type=int, default=1)
    p.add_argument("--callers", type=int, default=10000,
                   help="distinct callers of the many-callers case (each token used a few times)")
    p.add_argument("--users", type=lambda s: [int(x) for x in s.split(",")],
                   default=[1, 100, 10000], help="distinct callers for the memory test")
    p.add_argument("--sessions", type=lambda s: [int(x) for x in s.split(",")],
                   default=[1, 1000, 100000], help="sessions opened (cumulative) for the memory test")
    p.add_argument("--micro-ms", type=int, default=300, help="ms per micro-benchmark")
    p.add_argument("--no-pin", dest="pin", action="store_false",
                   help="do not pin the proxy and the load generator to separate CPUs")
    p.add_argument("--wasm-oz", action="store_true", help="also report the size with -Oz")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: "
                   "main,extra,features,perf,memory,limits,micro")
    p.add_argument("--quick", action="store_true",
                   help="a fast smoke run: 1 round of 3 s, users 1,100,1000, sessions "
                   "1,1000,10000, 1,000 callers, 100 ms micro")
    p.add_argument("--guard-template", type=Path, default=ROOT / "envoy" / "mcp-guard.yaml",
                   help="Envoy template for mcp-guard (placeholders as tests/harness.py fills)")
    p.add_argument("--out", type=Path, default=BENCH / "RESULTS.md")
    args = p.parse_args()
    if args.quick:
        args.duration, args.warmup, args.rounds = 3.0, 1.0, 1
        args.users, args.micro_ms = [1, 100, 1000], 100
        args.callers = 1000
        args.sessions = [1, 1000, 10000]
    skip = set(filter(None, args.skip.split(",")))
    for tool in ("wrk", "taskset"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: run `make setup`")
    if not harness.WASM.exists():
        raise SystemExit(f"{rel(harness.WASM)} is missing: run `make wasm`")

    start = time.monotonic()
    bench = Bench(args)
    info = machine(args, bench)
    log(f"mcp-guard bench: {info['cpu']}, {info['cores']}, Envoy {info['envoy']}, "
        f"pinning: {info['pinning']}; load: {info['load_before']}")
    try:
        bench.write_inputs()
        bench.start_upstream()
        if not {"main", "extra", "features", "perf"} <= skip:
            bench.main_comparison() if "main" not in skip else None
            if "main" in skip:
                bench.proxies = {s: bench.start_proxy(s) for s in "abc"}
                for s, e in bench.proxies.items():
                    bench.results["checks"][s] = bench.check(e, s)
            if "extra" not in skip:
                bench.extra_cases()
            if "features" not in skip:
                bench.features()
            if "perf" not in skip:
                bench.profile()
        if "memory" not in skip:
            bench.memory()
        if "limits" not in skip:
            bench.limits()
        bench.wasm_sizes()
    finally:
        bench.stop_all()
    if "micro" not in skip:
        bench.micro()

    elapsed = time.monotonic() - start
    text = report(args, bench, info, elapsed)
    args.out.write_text(text)
    (bench.work / "results.json").write_text(json.dumps(bench.results, indent=1))
    log("\n" + text)
    log(f"written: {rel(args.out)} (raw numbers: {rel(bench.work / 'results.json')})")
    feature_runs = [f[side] for f in bench.results.get("features", []) for side in ("off", "on")]
    feature_runs += list(bench.results.get("dpop_fleet", {}).values())
    bad = sum(r["bad_status"] + r["bad_body"] for r in bench.results["runs"] +
              bench.results["extra"] + feature_runs + bench.results.get("limits", []))
    if bad:
        log(f"ERROR: {bad} answers were not the expected 200 + result: the numbers above are "
            "not valid")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
