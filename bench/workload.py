"""The bench's inputs, shared by the Envoy bench (bench/run.py) and the Rust micro-benchmarks
(filter/benches/core.rs reads the files written by `fixtures()`).

Everything here is deterministic except signing keys: request bodies, the 500-tool list, the
canned upstream answer and the N-rule policies are byte-identical from run to run, so the native
micro-benchmarks and the end-to-end runs measure the same messages.

Run `python bench/workload.py` to rewrite bench/fixtures/ (new keys, same messages).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
FIXTURES = BENCH / "fixtures"
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "peers")]

import yaml  # noqa: E402

ISSUER = "https://bench-idp.example"
# The resource mcp-guard protects, and the audience every bench token carries.
RESOURCE = "https://mcp.bench.example/mcp"
SERVICE_KEY_HEADER = "x-api-key"
SERVICE_KEY = "bench-service-key-0001"
# The fixture tokens (micro-benchmarks only) are issued at this instant and verified a minute
# later; they expire in 2100, so they never go stale in the repository.
FIXTURE_IAT = 1767225600  # 2026-01-01T00:00:00Z
FIXTURE_EXP = 4102444800  # 2100-01-01T00:00:00Z
USER_CLAIMS = {"email": "alice@corp.example", "groups": ["sales", "support"],
               "scope": "openid mcp:read", "azp": "bench-client"}


def compact(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


# ---- request bodies ---------------------------------------------------------------------------

def tool_call(arguments: dict, tool: str = "search_customers", id_: int = 1) -> bytes:
    return compact({"jsonrpc": "2.0", "id": id_, "method": "tools/call",
                    "params": {"name": tool, "arguments": arguments}})


def arguments_1k() -> dict:
    """A search call as an agent writes it, padded to ~1 KiB of arguments JSON."""
    args = {
        "query": "customers in EMEA with an open renewal and more than 50 seats",
        "filters": {"region": "emea", "segment": "enterprise", "status": ["active", "renewal"],
                    "created_after": "2024-01-01", "seats_min": 50, "has_open_ticket": False},
        "fields": ["id", "name", "owner", "arr", "seats", "renewal_date", "health_score",
                   "last_contact", "industry", "country"],
        "sort": [{"field": "renewal_date", "order": "asc"}, {"field": "arr", "order": "desc"}],
        "limit": 50,
        "cursor": None,
        "note": "",
    }
    pad = 1024 - len(compact(args))
    args["note"] = ("Prepare the quarterly renewal review; prioritise accounts with low health "
                    "scores and recent escalations. " * 20)[:max(pad, 0)]
    return args


def arguments_100k() -> dict:
    """A bulk call: ~100 KiB of nested records (objects, strings, numbers, arrays)."""
    records = []
    args = {"mode": "upsert", "records": records}
    i = 0
    while True:
        records.append({"id": f"c-{i:05d}", "name": f"Customer {i:05d} GmbH",
                        "email": f"contact{i:05d}@customer.example", "arr": 1000 + 37 * i,
                        "seats": 5 + i % 200, "health": round((i % 97) / 97, 4),
                        "tags": ["emea", "renewal" if i % 3 else "new", f"owner-{i % 17}"],
                        "active": i % 5 != 0})
        i += 1
        if len(compact(args)) >= 100 * 1024:
            return args


def tools_list_request(id_: int = 1) -> bytes:
    return compact({"jsonrpc": "2.0", "id": id_, "method": "tools/list", "params": {}})


# ---- upstream answers -------------------------------------------------------------------------

def call_answer() -> bytes:
    """The canned `tools/call` result the direct_response upstream returns."""
    return compact({"jsonrpc": "2.0", "id": 1, "result": {
        "content": [{"type": "text", "text": "3 customers match: c-00017 Acme GmbH, c-00042 "
                     "Globex SA, c-00101 Initech BV"}],
        "structuredContent": {"count": 3, "ids": ["c-00017", "c-00042", "c-00101"]},
        "isError": False}})


def tool_entries(count: int = 500) -> list[dict]:
    """`count` tools, alternately `read_*` (allowed by bench/policy.yaml) and `write_*` (hidden)."""
    tools = []
    for i in range(count):
        verb = "read" if i % 2 == 0 else "write"
        tools.append({
            "name": f"{verb}_record_{i:03d}",
            "title": f"{verb.capitalize()} record type {i:03d}",
            "description": f"{verb.capitalize()}s one record of type {i:03d} in the CRM.",
            "inputSchema": {"type": "object",
                            "properties": {"id": {"type": "string", "description": "Record id"},
                                           "fields": {"type": "array",
                                                      "items": {"type": "string"}}},
                            "required": ["id"]},
        })
    return tools


def tool_pins(count: int = 500) -> dict:
    """`servers[].pins.tools` approving every tool of `tool_entries(count)` as it is: SHA-256 over
    the RFC 8785 canonical JSON of the pinned members (for these definitions, ASCII strings and
    no numbers, `json.dumps` with sorted keys and no spaces writes exactly that)."""
    import hashlib

    members = ("name", "title", "description", "inputSchema", "outputSchema", "annotations")
    pins = {}
    for tool in tool_entries(count):
        canonical = json.dumps({k: tool[k] for k in members if k in tool}, sort_keys=True,
                               separators=(",", ":"), ensure_ascii=False)
        pins[tool["name"]] = "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
    return pins


def tools_list_sse(count: int = 500) -> bytes:
    """The upstream's `tools/list` answer as one Server-Sent Event (Streamable HTTP)."""
    message = compact({"jsonrpc": "2.0", "id": 1, "result": {"tools": tool_entries(count)}})
    return b"event: message\ndata: " + message + b"\n\n"


# ---- policies ---------------------------------------------------------------------------------

def base_policy() -> dict:
    return yaml.safe_load((BENCH / "policy.yaml").read_text())


def policy(rules: int = 4) -> dict:
    """bench/policy.yaml with generated rules in front, `rules` in all (at least its own four).

    The generated rules never match the bench's calls, so an allowed `tools/call` is decided by
    the real rules after all of them: the worst case for a policy of this size. They come in
    three kinds, like real policies: deny rules on a tool name, allow rules on a tool name and a
    group (both kinds a rule index can skip for other tools), and allow rules on the caller
    only (which every call has to evaluate).
    """
    base = base_policy()
    filler = []
    for i in range(max(rules - len(base["rules"]), 0)):
        if i % 3 == 0:
            filler.append({"name": f"deny-blocked-{i:03d}",
                           "deny": f'mcp.tool.name == "blocked_tool_{i:03d}" '
                                   f'&& !("admins" in jwt.groups)'})
        elif i % 3 == 1:
            filler.append({"name": f"allow-team-{i:03d}",
                           "allow": f'mcp.method == "tools/call" && mcp.tool.name == '
                                    f'"team_tool_{i:03d}" && "team-{i:03d}" in jwt.groups'})
        else:
            filler.append({"name": f"allow-service-{i:03d}",
                           "allow": f'jwt.sub == "svc-{i:03d}" && "automation" in jwt.groups'})
    return {**base, "name": f"bench-crm-{rules}", "rules": filler + base["rules"]}


# ---- fixtures for the Rust micro-benchmarks ---------------------------------------------------

def fixtures(out: Path = FIXTURES) -> None:
    import keys  # tests/peers/keys.py

    out.mkdir(parents=True, exist_ok=True)
    idp = keys.Issuer(ISSUER, RESOURCE, algs=("RS256", "ES256", "EdDSA"))
    tokens = {}
    for alg in ("RS256", "ES256", "EdDSA"):
        claims = {"iss": ISSUER, "aud": RESOURCE, "sub": "alice", "iat": FIXTURE_IAT,
                  "exp": FIXTURE_EXP, **USER_CLAIMS}
        tokens[alg] = idp.key(alg).sign(claims)
    (out / "jwks.json").write_text(json.dumps(idp.jwks(), indent=1) + "\n")
    (out / "tokens.json").write_text(json.dumps(
        {"issuer": ISSUER, "audience": RESOURCE, "now": FIXTURE_IAT + 60, "tokens": tokens},
        indent=1) + "\n")
    for n in (10, 100):
        (out / f"policy-{n}.json").write_text(json.dumps(policy(n), indent=1) + "\n")
    (out / "call-1k.json").write_bytes(tool_call(arguments_1k()))
    (out / "call-100k.json").write_bytes(tool_call(arguments_100k()))
    (out / "tools-list-500.sse").write_bytes(tools_list_sse(500))
    (out / "call-answer.json").write_bytes(call_answer())
    (out / "README.md").write_text(
        "Inputs of the Rust micro-benchmarks (filter/benches/core.rs), written by\n"
        "`python bench/workload.py`. Public keys and tokens signed with throwaway keys whose\n"
        "private halves were never stored; the tokens expire in 2100 and are verified at a fixed\n"
        "instant (`now` in tokens.json).\n")


if __name__ == "__main__":
    fixtures()
    for f in sorted(FIXTURES.iterdir()):
        print(f"{f.relative_to(ROOT)}: {f.stat().st_size} bytes")
