"""A real MCP client session (official Python SDK) through mcp-guard: lists the tools, calls an
allowed one and a destructive one, and shows what the caller got back."""

import argparse
import asyncio
from pathlib import Path

from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


async def session(url: str, token: str) -> None:
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
        tools = await client.list_tools()
        print("tools/list ->", ", ".join(t.name for t in tools.tools))
        for name, arguments in (("get_customer", {"customer_id": "c-100"}),
                                ("delete_customer", {"customer_id": "c-100"})):
            try:
                result = await client.call_tool(name, arguments)
                print(f"tools/call {name} -> {result.content[0].text!r}")
            except MCPError as e:
                print(f"tools/call {name} -> error {e.code}: {e.message}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("url")
    p.add_argument("--token-file", type=Path, required=True)
    args = p.parse_args()
    asyncio.run(session(args.url, args.token_file.read_text().strip()))


if __name__ == "__main__":
    main()
