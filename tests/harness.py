"""Starts the real pieces — Envoy with the built filter, the demo MCP server — for `make run`
and the end-to-end tests, on free loopback ports."""

from __future__ import annotations

import json
import os
import shutil
import socket
import string
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
WASM = ROOT / "target" / "mcp_guard.wasm"
PEERS = ROOT / "tests" / "peers"
SERVICE_KEY = "demo-service-key-0001"
# The demo's and the tests' session sealing key (sessions.key): 32 bytes in base64, public, so
# for tests and the demo only. Make your own with `head -c32 /dev/urandom | base64`.
SESSION_KEY = "bWNwLWd1YXJkIGRlbW8gc2Vzc2lvbiBrZXkgKHRlc3Q="


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free now and not handed out before by this process: the kernel may offer the
    same ephemeral port to two binds in a row, before the first caller's server has bound it
    (two listeners of one Envoy then collide)."""
    if len(_HANDED_OUT) > 10_000:
        _HANDED_OUT.clear()
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no free port that was not handed out already")


def wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


def envoy_binary() -> str:
    local = Path(sys.executable).parent / "envoy"
    return str(local) if local.exists() else (shutil.which("envoy") or "envoy")


class Process:
    """A child process whose output goes to a log file; stopped on `stop()`."""

    def __init__(self, args: list[str], log: Path, env: dict | None = None):
        self.log = log
        self._out = open(log, "wb")
        self.proc = subprocess.Popen(args, stdout=self._out, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})}, cwd=ROOT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()

    def output(self) -> str:
        self._out.flush()
        return self.log.read_text(errors="replace")


class Upstream(Process):
    """The demo MCP server with every knob the credential tests need: several accepted keys
    (a rotation's overlap), any key header, JSON or SSE answers, and a key echoed back in a
    response header (a careless upstream). `requests()` is what it received, with times."""

    def __init__(self, workdir: Path, name: str, *, expect_keys: list[str] | None = None,
                 key_header: str = "x-api-key", json_response: bool = False,
                 stateless: bool = False, echo_key_header: str | None = None,
                 refuse_status: int = 401):
        self.port = free_port()
        self.name = name
        self.record = workdir / f"{name}.requests.jsonl"
        self.record.touch()
        args = [sys.executable, str(PEERS / "mcp_server.py"), "--port", str(self.port),
                "--record", str(self.record), "--key-header", key_header]
        if json_response:
            args.append("--json-response")
        if stateless:
            args.append("--stateless")
        for key in expect_keys or []:
            args += ["--expect-key", key]
        if echo_key_header:
            args += ["--echo-key-header", echo_key_header]
        args += ["--refuse-status", str(refuse_status)]
        super().__init__(args, workdir / f"{name}.log")
        wait_port(self.port, self.proc)

    def requests(self) -> list[dict]:
        return [json.loads(line) for line in self.record.read_text().splitlines() if line]


class McpServer(Upstream):
    """The demo MCP server for the common case: one accepted key (the demo's)."""

    def __init__(self, workdir: Path, *, json_response: bool = False, stateless: bool = False,
                 expect_key: str | None = SERVICE_KEY, key_header: str = "x-api-key",
                 name: str = "mcp-server"):
        super().__init__(workdir, name, expect_keys=[expect_key] if expect_key else [],
                         key_header=key_header, json_response=json_response, stateless=stateless)


def load_policy(path: Path | str) -> dict:
    text = Path(path).read_text()
    return json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)


def plugin_config(issuers: list[dict], policy: dict, resource: str, *, key: str = SERVICE_KEY,
                  key_header: str = "x-api-key", sessions: dict | None = None, **extra) -> dict:
    """The filter's configuration for one MCP server at /mcp. `sessions` defaults to sealing
    with SESSION_KEY."""
    config = {
        "issuers": issuers,
        "servers": [{
            "name": "demo",
            "path": "/mcp",
            "resource": resource,
            "authorization_servers": [i["issuer"] for i in issuers],
            "resource_name": "Demo CRM",
            "credential": {"header": key_header, "value": key},
            "policy": policy,
        }],
        "sessions": sessions if sessions is not None else {"key": SESSION_KEY},
    }
    config.update(extra)
    return config


def cluster_yaml(name: str, port: int, host: str = "127.0.0.1") -> str:
    """A plain-HTTP cluster to a loopback port, as YAML to append to `clusters:`."""
    return f"""  - name: {name}
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {{ socket_address: {{ address: {host}, port_value: {port} }} }}
"""


class Idp(Process):
    """The real OpenID Provider (npm oidc-provider) from tests/peers/idp."""

    def __init__(self, workdir: Path, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = ["node", str(PEERS / "idp" / "server.mjs"), "--port", str(self.port)]
        super().__init__(args, workdir / f"idp-{self.port}.log")
        wait_port(self.port, self.proc)

    def token(self, client: str, resource: str, scope: str = "mcp:tools", **extra) -> str:
        import urllib.parse
        secret = f"test-only-{client}-secret"
        data = urllib.parse.urlencode({"grant_type": "client_credentials", "scope": scope,
                                       "resource": resource, **extra}).encode()
        req = urllib.request.Request(f"{self.url}/token", data=data)
        import base64
        req.add_header("authorization", "Basic " + base64.b64encode(f"{client}:{secret}".encode()).decode())
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())["access_token"]

    def _call(self, method: str, path: str) -> dict:
        req = urllib.request.Request(f"{self.url}{path}", method=method, data=b"" if method == "POST" else None)
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def rotate(self) -> list[str]:
        return self._call("POST", "/_test/rotate")["kids"]

    def jwks_hits(self) -> int:
        return self._call("GET", "/_test/jwks-hits")["count"]

    def reset_hits(self) -> None:
        self._call("POST", "/_test/reset-hits")


def check_config_schema(plugin: dict) -> None:
    """A configuration the filter accepted is valid by policies/config.schema.json (generated
    from the types that parse it), which refers to the policy, pins and revocation feed
    schemas."""
    import jsonschema
    from referencing import Registry, Resource
    schemas = {name: ROOT / "policies" / name
               for name in ("config.schema.json", "policy.schema.json", "pins.schema.json")}
    schemas["../docs/revocation-feed.schema.json"] = ROOT / "docs" / "revocation-feed.schema.json"
    registry = Registry().with_resources(
        (name, Resource.from_contents(json.loads(path.read_text()))) for name, path in schemas.items())
    validator = jsonschema.Draft202012Validator(json.loads(schemas["config.schema.json"].read_text()),
                                                registry=registry)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(plugin)]
    assert not errors, f"the filter accepted a configuration its schema refuses: {errors[:5]}"


class Envoy(Process):
    """Envoy with mcp-guard, rendered from a template in envoy/."""

    def __init__(self, workdir: Path, plugin: dict | str, upstream_port: int, *,
                 template: str = "mcp-guard.yaml", port: int | None = None, wait: bool = True,
                 values: dict | None = None):
        self.port = port or free_port()
        self.admin_port = free_port()
        self.access_log = workdir / "audit.log"
        self.access_log.touch()
        config_text = plugin if isinstance(plugin, str) else json.dumps(plugin)
        fill = {
            "LISTEN_PORT": self.port,
            "ADMIN_PORT": self.admin_port,
            "UPSTREAM_HOST": "127.0.0.1",
            "UPSTREAM_PORT": upstream_port,
            "WASM": str(WASM),
            "PLUGIN_CONFIG": json.dumps(config_text),
            "ACCESS_LOG": str(self.access_log),
            "EXTRA_CLUSTERS": "",
        }
        fill.update(values or {})
        rendered = string.Template((ROOT / "envoy" / template).read_text()).substitute(fill)
        self.config_path = workdir / "envoy.yaml"
        self.config_path.write_text(rendered)
        args = [envoy_binary(), "-c", str(self.config_path), "--disable-hot-restart",
                "--concurrency", "2", "--file-flush-interval-msec", "500", "--log-level", "warn", "--component-log-level", "wasm:info"]
        super().__init__(args, workdir / "envoy.log")
        if wait:
            self.wait_ready()
            if isinstance(plugin, dict):
                check_config_schema(plugin)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"envoy exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/ready", timeout=1) as r:
                    if r.status == 200:
                        wait_port(self.port, self.proc)
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"envoy not ready after {timeout}s:\n{self.output()[-3000:]}")

    def exit_code(self, timeout: float = 30.0) -> int:
        """For configurations Envoy must refuse: waits for it to exit."""
        return self.proc.wait(timeout=timeout)

    def audit(self) -> list[dict]:
        """The audit records written so far (the access log flushes on its own schedule)."""
        return [json.loads(line) for line in self.access_log.read_text().splitlines() if line.strip()]

    def wait_audit(self, count: int, timeout: float = 10.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            records = self.audit()
            if len(records) >= count or time.monotonic() > deadline:
                return records
            time.sleep(0.1)

    def stats(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/stats", timeout=5) as r:
            return r.read().decode()


# ---- service credentials: several upstreams, key rotation by ECDS ---------------------------------


def render_template(template: str, **fill) -> str:
    """An envoy/ template with its dollar-brace placeholders filled."""
    return string.Template((ROOT / "envoy" / template).read_text()).substitute(fill)


def write_ecds_filter(path: Path, plugin: dict | str, *, version: str, vm_id: str = "mcp-guard",
                      environment: dict | None = None, wasm: Path = WASM) -> None:
    """Publishes the mcp-guard filter resource (envoy/mcp-guard-filter.yaml) at `path`, the way
    an operator must: written beside it, then renamed over it, so Envoy's watch on the
    directory sees one atomic move and never a half-written file."""
    config_text = plugin if isinstance(plugin, str) else json.dumps(plugin)
    text = render_template("mcp-guard-filter.yaml", VERSION=version, WASM=str(wasm),
                           PLUGIN_CONFIG=json.dumps(config_text), VM_ID=vm_id,
                           VM_ENVIRONMENT=json.dumps(environment or {}))
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def ecds_stats(envoy: Envoy, filter_name: str = "mcp-guard") -> dict:
    """extension_config_discovery.http_filter.<filter_name>.* as {stat: value} (strings)."""
    prefix = f"extension_config_discovery.http_filter.{filter_name}."
    # Admin runs on Envoy's main thread, which also compiles a new Wasm VM: allow for that.
    url = f"http://127.0.0.1:{envoy.admin_port}/stats?filter=^extension_config_discovery"
    with urllib.request.urlopen(url, timeout=30) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith(prefix) and ": " in line:
            name, value = line[len(prefix):].split(": ", 1)
            out[name] = value.strip().strip('"')
    return out


def config_dump(envoy: Envoy, resource: str | None = None) -> str:
    """The admin /config_dump (optionally one resource type, e.g. ecds_filters)."""
    query = f"?resource={resource}" if resource else ""
    with urllib.request.urlopen(f"http://127.0.0.1:{envoy.admin_port}/config_dump{query}", timeout=30) as r:
        return r.read().decode()


# ---- Envoy command-line options (tests/security) --------------------------------------------------


class _ArgsOverride(Process):
    """Rewrites Envoy's command line just before it starts (used by `EnvoyWithArgs`)."""

    overrides: dict = {}

    def __init__(self, args: list[str], log: Path, env: dict | None = None):
        args = list(args)
        for option, value in self.overrides.items():
            if option in args:
                args[args.index(option) + 1] = str(value)
            else:
                args += [option, str(value)]
        super().__init__(args, log, env)


class EnvoyWithArgs(Envoy, _ArgsOverride):
    """`Envoy` with command-line options replaced or added: {"--concurrency": 1} runs one worker
    (one Wasm VM, so fail-closed tests are deterministic); {"--file-flush-interval-msec": 50}
    puts audit lines on disk within 50 ms instead of Envoy's default 10 s."""

    def __init__(self, *args, options: dict | None = None, **kwargs):
        self.overrides = {k: str(v) for k, v in (options or {}).items()}
        super().__init__(*args, **kwargs)


# ---- a scripted upstream (tests/security: hostile answers) ----------------------------------------


class Answer:
    """One scripted HTTP answer: `status`, `headers` (a list of pairs, sent as given; no
    Content-Length is added when the body is a list of chunks, which go out chunked, `delay`
    seconds apart) and `body` (bytes, str, a JSON value, or a list of byte chunks)."""

    def __init__(self, status=200, headers=(), body=b"", delay=0.0, trailers=()):
        self.status = status
        self.headers = list(headers)
        self.body = body
        self.delay = delay
        # Sent after the last chunk of a chunked body (Envoy passes them on only where the
        # cluster enables HTTP/1.1 trailers).
        self.trailers = list(trailers)

    @staticmethod
    def json(message, status=200, content_type="application/json"):
        headers = [("content-type", content_type)] if content_type else []
        return Answer(status, headers, json.dumps(message).encode())

    @staticmethod
    def events(*messages, status=200, raw=b""):
        """A text/event-stream of one event per message (dicts, or str data as given)."""
        data = b"".join(
            b"event: message\ndata: " + (m if isinstance(m, str) else json.dumps(m)).encode() + b"\n\n"
            for m in messages) + raw
        return Answer(status, [("content-type", "text/event-stream"), ("cache-control", "no-cache")], [data])


class ScriptedUpstream:
    """An HTTP upstream in the test process whose answers the test writes: `answer(request)`
    returns an `Answer` for each request ({"method", "path", "headers", "body", "json"}), set
    with `script(fn)`. Like `Upstream`, `requests()` is what it received."""

    def __init__(self, answer=None):
        import http.server
        import threading

        upstream = self
        self._answer = answer or (lambda request: Answer(404))
        self._requests = []
        self._lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                try:
                    parsed = json.loads(body) if body else None
                except ValueError:
                    parsed = None
                request = {"method": self.command, "path": self.path,
                           "headers": [(k.lower(), v) for k, v in self.headers.items()],
                           "body": body, "json": parsed, "time": time.time()}
                with upstream._lock:
                    upstream._requests.append(request)
                answer = upstream._answer(request)
                self.send_response_only(answer.status)
                names = {k.lower() for k, _ in answer.headers}
                for k, v in answer.headers:
                    self.send_header(k, v)
                body = answer.body
                if isinstance(body, list):
                    self.send_header("transfer-encoding", "chunked")
                    self.end_headers()
                    for chunk in body:
                        if answer.delay:
                            time.sleep(answer.delay)
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.wfile.flush()
                    trailers = b"".join(b"%s: %s\r\n" % (k.encode(), v.encode())
                                        for k, v in answer.trailers)
                    self.wfile.write(b"0\r\n" + trailers + b"\r\n")
                else:
                    if isinstance(body, str):
                        body = body.encode()
                    elif not isinstance(body, bytes):
                        body = json.dumps(body).encode()
                    if "content-length" not in names:
                        self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                self.wfile.flush()

            do_GET = do_POST = do_DELETE = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def script(self, answer):
        """Answers every later request with `answer(request)`."""
        self._answer = answer

    def requests(self):
        with self._lock:
            return list(self._requests)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
