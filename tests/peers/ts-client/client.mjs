// The official MCP TypeScript SDK client through mcp-guard, on the SDK's newest protocol:
// connect, list the tools, call one the policy allows and one it denies. Prints one JSON
// object (what it saw) on stdout. Usage: node client.mjs URL TOKEN
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { LATEST_PROTOCOL_VERSION } from "@modelcontextprotocol/sdk/types.js";

const [url, token] = process.argv.slice(2);
const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: { Authorization: `Bearer ${token}` } },
});
const client = new Client({ name: "mcp-guard-ts-test", version: "1.0.0" });
await client.connect(transport);
const out = { protocol: LATEST_PROTOCOL_VERSION, negotiated: transport.protocolVersion ?? null };
const tools = await client.listTools();
out.tools = tools.tools.map((t) => t.name);
out.cacheScope = tools.cacheScope ?? null;
const ok = await client.callTool({ name: "get_customer", arguments: { customer_id: "c-100" } });
out.allowed = ok.content?.[0]?.text ?? null;
try {
  await client.callTool({ name: "delete_customer", arguments: { customer_id: "c-100" } });
  out.denied = null;
} catch (e) {
  out.denied = { code: e.code ?? null, message: String(e.message ?? e) };
}
await client.close();
console.log(JSON.stringify(out));
