"""`make run`: Envoy + mcp-guard in front of the demo MCP server, with a demo IdP key set.

Runs in the foreground, prints ready-made tokens and commands, echoes audit records as they are
written, and stops everything it started on Ctrl-C.
"""

import argparse
import json
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "peers")]

import harness  # noqa: E402
import keys  # noqa: E402

ISSUER = "https://demo-idp.example"
USERS = {
    "alice": {"email": "alice@corp.example", "groups": ["sales"]},
    "bob": {"email": "bob@corp.example", "groups": ["engineering", "admins"]},
}


def follow(path: Path, stop: threading.Event) -> None:
    """Prints each audit record as one short line."""
    with open(path) as f:
        while not stop.is_set():
            line = f.readline()
            if not line:
                time.sleep(0.2)
                continue
            try:
                r = json.loads(line)
            except ValueError:
                continue
            what = r.get("tool") or r.get("prompt") or r.get("resource") or ""
            print(f"audit: {r.get('decision', '?'):5} {r.get('user') or r.get('sub') or '-':20} "
                  f"{r.get('method') or r.get('http_method', ''):16} {what:18} "
                  f"rule={r.get('rule') or '-'} {r.get('reason') or ''}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, default=10000)
    args = p.parse_args()

    work = harness.ROOT / ".run"
    work.mkdir(exist_ok=True)
    for old in work.glob("*"):
        old.unlink()
    resource = f"http://127.0.0.1:{args.port}/mcp"
    idp = keys.Issuer(ISSUER, resource, algs=("RS256",))
    (work / "jwks.json").write_text(json.dumps(idp.jwks(), indent=2))
    for user, claims in USERS.items():
        (work / f"{user}.jwt").write_text(idp.token(user, ttl=12 * 3600, **claims))

    policy_file = harness.ROOT / "policies" / "demo.yaml"
    config = harness.plugin_config(
        [{"issuer": ISSUER, "audiences": [resource], "algorithms": ["RS256"], "jwks": idp.jwks()}],
        harness.load_policy(policy_file), resource,
        sessions={"key": harness.SESSION_KEY, "cipher": "xchacha20-poly1305"})
    (work / "plugin-config.json").write_text(json.dumps(config, indent=2))

    started = []
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        server = harness.McpServer(work, stateless=True, name="demo-mcp-server")
        started.append(server)
        envoy = harness.Envoy(work, config, server.port, port=args.port)
        started.append(envoy)
        threading.Thread(target=follow, args=(envoy.access_log, stop), daemon=True).start()

        rel = lambda p: p.relative_to(harness.ROOT)  # noqa: E731
        curl = (f"curl -s {resource} -H 'content-type: application/json' "
                "-H 'accept: application/json, text/event-stream' -H 'mcp-protocol-version: 2025-11-25'")

        def call(user, body):
            return f"{curl} -H \"authorization: Bearer $(cat {rel(work / (user + '.jwt'))})\" -d {shlex.quote(json.dumps(body))}"

        get = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
               "params": {"name": "get_customer", "arguments": {"customer_id": "c-100"}}}
        delete = {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                  "params": {"name": "delete_customer", "arguments": {"customer_id": "c-100"}}}
        print(f"""
mcp-guard demo is running (Ctrl-C stops it).

  MCP endpoint   {resource}   (Envoy + mcp-guard -> demo MCP server on 127.0.0.1:{server.port})
  Policy         {rel(policy_file)}
  Audit log      {rel(envoy.access_log)}   (also echoed below as 'audit:' lines; try: jq . {rel(envoy.access_log)})
  Envoy admin    http://127.0.0.1:{envoy.admin_port}/stats   (loopback only)
  Demo IdP keys  {rel(work / 'jwks.json')}   issuer {ISSUER}
  Session key    sessions.key in {rel(work / 'plugin-config.json')} seals each Mcp-Session-Id for
                 its caller (a public demo key: make your own with `head -c32 /dev/urandom | base64`)

Demo users (tokens valid 12 h):
  alice  groups: sales                 token in {rel(work / 'alice.jwt')}
  bob    groups: engineering, admins   token in {rel(work / 'bob.jwt')}

Try, from the repository root:

  # list the tools alice may use
  {call('alice', {"jsonrpc": "2.0", "id": 1, "method": "tools/list"})}

  # an allowed call
  {call('alice', get)}

  # a denied call: JSON-RPC error -31403 naming rule "no-destructive"
  {call('alice', delete)}

  # bob is an admin: the same call is allowed
  {call('bob', delete)}

  # no token: 401 with WWW-Authenticate and resource_metadata
  {curl} -i -d '{{"jsonrpc":"2.0","id":1,"method":"tools/list"}}'

  # a real MCP client session (official Python SDK)
  {rel(Path(sys.executable))} tests/peers/mcp_client.py {resource} --token-file {rel(work / 'alice.jwt')}
""", flush=True)
        while not stop.is_set():
            for proc in started:
                if proc.proc.poll() is not None:
                    print(f"{proc.log.name}: exited with {proc.proc.returncode}; see {proc.log}")
                    return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        print("\nstopping…", flush=True)
        for proc in reversed(started):
            proc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
