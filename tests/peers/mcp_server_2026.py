"""The demo MCP server with what the 2026-07-28 revision adds (official Python SDK): a tool whose
parameter is mirrored into an `Mcp-Param-Region` header (`x-mcp-header`), a tool that asks for
confirmation by a multi round-trip (`InputRequiredResult` + `requestState`), a tool that changes
a resource so a `subscriptions/listen` stream gets `notifications/resources/updated`, and lists
the server marks `cacheScope: "public"` (what a filtered list must never keep).

Same command line as mcp_server.py (it reuses its tools and its request recorder)."""

import argparse
import json
import sys
from typing import Annotated

import uvicorn
from pydantic import Field

import mcp_server as demo
from mcp.server.caching import CacheHint
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import ElicitRequest, ElicitRequestFormParams, InputRequiredResult

app = MCPServer(
    "demo-crm-2026",
    instructions="The demo CRM, 2026-07-28 edition.",
    cache_hints={
        "tools/list": CacheHint(ttl_ms=60000, scope="public"),
        "prompts/list": CacheHint(ttl_ms=60000, scope="public"),
        "resources/list": CacheHint(ttl_ms=60000, scope="public"),
    },
)

for fn in (demo.search_customers, demo.get_customer, demo.delete_customer, demo.echo):
    app.tool(annotations=demo.app._tool_manager.get_tool(fn.__name__).annotations)(fn)


@app.tool(annotations={"readOnlyHint": True})
def regional_report(
    region: Annotated[str, Field(json_schema_extra={"x-mcp-header": "Region"})],
    query: str,
    shard: Annotated[int, Field(json_schema_extra={"x-mcp-header": "Shard"})] = 0,
) -> str:
    """A report computed in one region (the region is mirrored into a header for routing)."""
    return f"report for {query!r} in {region}"


@app.tool(annotations={"destructiveHint": True})
async def confirm_delete(customer_id: str, ctx: Context) -> str | InputRequiredResult:
    """Delete a customer after asking the user to confirm (a multi round-trip request)."""
    answers = ctx.input_responses or {}
    answer = answers.get("confirm")
    if answer is None:
        return InputRequiredResult(
            input_requests={"confirm": ElicitRequest(params=ElicitRequestFormParams(
                message=f"Really delete {customer_id}?",
                requested_schema={"type": "object", "properties": {"sure": {"type": "boolean"}},
                                  "required": ["sure"]}))},
            request_state=f"delete:{customer_id}",
        )
    if ctx.request_state != f"delete:{customer_id}":
        # What the server issued must come back byte for byte (the gateway's handle removed).
        return f"not deleted: the retry carried requestState {ctx.request_state!r}"
    action = getattr(answer, "action", None) or (answer.get("action") if isinstance(answer, dict) else None)
    return f"deleted {customer_id}" if action == "accept" else f"kept {customer_id}"


@app.tool()
async def touch_customer(customer_id: str, ctx: Context) -> str:
    """Mark a customer record as changed (subscribers of its resource are notified)."""
    await ctx.notify_resource_updated(f"crm://customers/{customer_id}")
    await ctx.notify_tools_changed()
    return f"touched {customer_id}"


@app.resource("crm://customers/{customer_id}")
def customer_resource(customer_id: str) -> str:
    """A customer record as a resource."""
    return json.dumps(demo.CUSTOMERS.get(customer_id, {}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--json-response", action="store_true")
    p.add_argument("--stateless", action="store_true")
    p.add_argument("--record")
    p.add_argument("--key-header", default="x-api-key")
    p.add_argument("--expect-key", action="append")
    p.add_argument("--refuse-status", type=int, default=401)
    p.add_argument("--echo-key-header")
    args = p.parse_args()
    asgi = app.streamable_http_app(json_response=args.json_response, stateless_http=args.stateless)
    wrapped = demo.Recorder(asgi, args.record, args.key_header, args.expect_key, args.echo_key_header,
                            args.refuse_status)
    print(f"demo MCP server (2026-07-28) on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
    uvicorn.run(wrapped, host="127.0.0.1", port=args.port, log_level="warning", lifespan="on")


if __name__ == "__main__":
    main()
