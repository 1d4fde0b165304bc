"""The stack the end-to-end tests drive: real Envoy + mcp-guard + the demo MCP server."""

import asyncio
import json
import sys
import time

import httpx2

import harness
import keys
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

ISSUER = "https://idp.example"


class Stack:
    """Envoy + mcp-guard in front of the demo MCP server, with the demo policy."""

    def __init__(self, workdir, *, json_response=False, policy="policies/demo.yaml", **config):
        self.port = harness.free_port()
        self.resource = f"http://127.0.0.1:{self.port}/mcp"
        self.issuer = keys.Issuer(ISSUER, self.resource, algs=("RS256", "ES256"))
        self.server = harness.McpServer(workdir, json_response=json_response)
        issuers = [{"issuer": ISSUER, "audiences": [self.resource],
                    "algorithms": ["RS256", "ES256"], "jwks": self.issuer.jwks()}]
        self.config = harness.plugin_config(issuers, harness.load_policy(harness.ROOT / policy),
                                            self.resource, **config)
        try:
            self.envoy = harness.Envoy(workdir, self.config, self.server.port, port=self.port)
        except Exception:
            self.server.stop()
            raise

    def stop(self):
        self.envoy.stop()
        self.server.stop()

    def token(self, sub, **kw):
        return self.issuer.token(sub, **kw)

    def post(self, body, token=None, headers=None, raw=False):
        """POSTs one message. A dict is sent as a stateless 2026-07-28 request (the envelope
        the demo server needs is added); `raw=True` sends `body` bytes exactly as given."""
        h = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
        if not raw:
            body, envelope = modern(body)
            h.update(envelope)
        if token:
            h["authorization"] = f"Bearer {token}"
        h.update(headers or {})
        content = body if raw else json.dumps(body)
        return httpx2.post(self.envoy.url, content=content, headers=h, timeout=10)

    def audit_for(self, sub=None, count=1, timeout=10.0, **match):
        """Audit records for `sub` (and other exact field matches), waiting for `count`."""
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.envoy.audit()
                     if (sub is None or r.get("sub") == sub)
                     and all(r.get(k) == v for k, v in match.items())]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.1)

    def upstream_requests(self):
        return self.server.requests()


PROTOCOL = "2026-07-28"


def modern(body):
    """Adds what a 2026-07-28 server requires of a sessionless request: the `_meta` envelope in
    params and the Mcp-Method / Mcp-Name headers."""
    body = json.loads(json.dumps(body))
    headers = {"mcp-protocol-version": PROTOCOL}
    if "method" in body:
        params = body.setdefault("params", {})
        params.setdefault("_meta", {
            "io.modelcontextprotocol/protocolVersion": PROTOCOL,
            "io.modelcontextprotocol/clientCapabilities": {},
        })
        headers["mcp-method"] = body["method"]
        name = params.get("name") or params.get("uri")
        if name:
            headers["mcp-name"] = name
    return body, headers


def mcp_client(url, token, mode="legacy"):
    """An official-SDK MCP client calling through Envoy with a bearer token."""
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    return Client(streamable_http_client(url, http_client=http), mode=mode)


def run(coro):
    return asyncio.run(coro)


class Upstream2026(harness.Process):
    """tests/peers/mcp_server_2026.py, recording what it receives."""

    def __init__(self, workdir):
        self.port = harness.free_port()
        self.record = workdir / "upstream.requests.jsonl"
        self.record.touch()
        args = [sys.executable, str(harness.PEERS / "mcp_server_2026.py"), "--port", str(self.port),
                "--record", str(self.record), "--expect-key", harness.SERVICE_KEY]
        super().__init__(args, workdir / "upstream.log")
        harness.wait_port(self.port, self.proc)

    def requests(self):
        return [json.loads(line) for line in self.record.read_text().splitlines() if line]
