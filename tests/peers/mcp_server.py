"""Demo MCP server (official Python SDK, Streamable HTTP) with read-only and destructive tools.

Used by `make run` and by the end-to-end tests. With --record FILE it appends one JSON line per
HTTP request it receives (method, path, headers), so tests can prove what reached the upstream.
With --expect-key it refuses any request whose key header does not carry that value (401), the
way a real SaaS API would; given twice, it accepts either key (the overlap of a key rotation).
With --echo-key-header NAME it copies the key it received into the response header NAME, the way
a careless upstream might (to test that mcp-guard never lets the key go back downstream).
"""

import argparse
import json
import sys
import time

import uvicorn

from mcp.server.mcpserver import MCPServer
from mcp.types import Completion

CUSTOMERS = {
    "c-100": {"id": "c-100", "name": "Ada Lovelace", "tier": "gold"},
    "c-200": {"id": "c-200", "name": "Grace Hopper", "tier": "silver"},
}

app = MCPServer("demo-crm", instructions="A tiny CRM behind mcp-guard.")


@app.tool(annotations={"readOnlyHint": True})
def search_customers(query: str) -> list[dict]:
    """Find customers whose name contains the query."""
    return [c for c in CUSTOMERS.values() if query.lower() in c["name"].lower()]


@app.tool(annotations={"readOnlyHint": True})
def get_customer(customer_id: str) -> dict:
    """Fetch one customer by id."""
    return CUSTOMERS.get(customer_id, {"error": "no such customer"})


@app.tool(annotations={"destructiveHint": True})
def delete_customer(customer_id: str) -> str:
    """Delete a customer record (destructive)."""
    return f"deleted {customer_id}"


@app.tool(annotations={"destructiveHint": True})
def push_branch(owner: str, repo: str, branch: str, force: bool = False) -> str:
    """Push a branch to a repository."""
    return f"pushed {owner}/{repo}@{branch}{' (forced)' if force else ''}"


@app.tool()
def echo(text: str) -> str:
    """Echo the text back (used to test what the upstream returns)."""
    return text


@app.prompt()
def summarize_account(customer_id: str) -> str:
    """Summarize a customer account."""
    return f"Summarize the account {customer_id}."


@app.completion()
async def complete_customer_id(ref, argument, context):
    """Customer ids starting with what was typed, for the prompt's and the template's argument:
    values drawn from the server's data, which is why a policy decides on what is completed."""
    if argument.name != "customer_id":
        return None
    return Completion(values=sorted(k for k in CUSTOMERS if k.startswith(argument.value)))


@app.resource("crm://customers/{customer_id}")
def customer_resource(customer_id: str) -> str:
    """A customer record as a resource."""
    return json.dumps(CUSTOMERS.get(customer_id, {}))


class Recorder:
    """ASGI middleware: records each request's headers; optionally checks the service key."""

    def __init__(self, inner, record_path, key_header, expect_keys, echo_key_header=None,
                 refuse_status=401):
        self.inner = inner
        self.refuse_status = refuse_status
        self.record_path = record_path
        self.key_header = key_header.lower().encode() if key_header else None
        self.expect_keys = [k.encode() for k in expect_keys] if expect_keys else None
        self.echo_key_header = echo_key_header.lower().encode() if echo_key_header else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.inner(scope, receive, send)
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        if self.record_path:
            line = {"method": scope["method"], "path": scope["path"], "headers": headers,
                    "time": time.time()}
            with open(self.record_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")
        seen = [v for k, v in scope["headers"] if k == self.key_header]
        if self.expect_keys is not None:
            if len(seen) != 1 or seen[0] not in self.expect_keys:
                await send({"type": "http.response.start", "status": self.refuse_status,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"www-authenticate", b'Bearer realm="upstream"')]})
                await send({"type": "http.response.body", "body": b'{"error":"bad service key"}'})
                return
        if self.echo_key_header and seen:
            inner_send = send

            async def send(message):
                if message["type"] == "http.response.start":
                    message = {**message, "headers": [*message.get("headers", []),
                                                      (self.echo_key_header, seen[0])]}
                await inner_send(message)
        return await self.inner(scope, receive, send)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--json-response", action="store_true", help="answer in JSON instead of SSE")
    p.add_argument("--stateless", action="store_true")
    p.add_argument("--record", help="append one JSON line per request to this file")
    p.add_argument("--key-header", default="x-api-key")
    p.add_argument("--expect-key", action="append",
                   help="refuse requests without this service key (401); repeat to accept several")
    p.add_argument("--refuse-status", type=int, default=401, help="status for a wrong key (401 or 403)")
    p.add_argument("--echo-key-header", help="echo the received key in this response header")
    args = p.parse_args()
    asgi = app.streamable_http_app(json_response=args.json_response, stateless_http=args.stateless)
    wrapped = Recorder(asgi, args.record, args.key_header, args.expect_key, args.echo_key_header,
                       args.refuse_status)
    print(f"demo MCP server on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
    uvicorn.run(wrapped, host="127.0.0.1", port=args.port, log_level="warning", lifespan="on")


if __name__ == "__main__":
    main()
