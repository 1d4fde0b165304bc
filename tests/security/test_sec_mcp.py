"""MCP-level attacks: tools that do not exist or only look like allowed ones, methods a client
never sends, Mcp-* headers that disagree with the body, and another user's session."""

import json

import pytest
from hostile import ACCEPT, body_headers, call, forwarded, refused, send
from stack import modern

POLICY_DENIED = -31403


def hdrs(token, **kw):
    return body_headers(token, **kw)


def tool_call(name, id=1):
    body, envelope = call(name, {"customer_id": "c-100"}, id=id)
    return json.dumps(body), envelope


@pytest.mark.parametrize("name", ["drop_all_customers", "get_customer2", "GET_CUSTOMER", "Get_Customer",
                                  "get-customer", "get.customer", "a" * 128])
def test_a_tool_not_in_the_policy_is_denied(sec, alice, name):
    """Valid MCP tool names the policy does not allow: 200 + policy denial (session survives)."""
    text, envelope = tool_call(name)
    reply, record = refused(sec, status=200, code=POLICY_DENIED, reason=lambda r: "no rule" in r,
                            body=text, headers=hdrs(alice, method="tools/call", name=name))
    assert reply.json()["id"] == 1
    assert record["tool"] == name and "rule" not in record


LOOK_ALIKES = [
    ("cyrillic_a", "get_customer".replace("c", "\u0441", 1)),      # с U+0441
    ("cyrillic_o", "get_custоmer"),                                  # о U+043E
    ("cyrillic_e_in_delete", "d\u0435lete_customer"),                # е U+0435
    ("greek_omicron", "get_cust\u03bfmer"),
    ("fullwidth", "\uff47\uff45\uff54_customer"),
    ("fullwidth_underscore", "get\uff3fcustomer"),
    ("zero_width_joiner", "get\u200d_customer"),
    ("zero_width_space", "delete_\u200bcustomer"),
    ("word_joiner", "delete\u2060_customer"),
    ("soft_hyphen", "delete\u00ad_customer"),
    ("combining_mark", "get_custo\u0301mer"),
    ("right_to_left_override", "\u202eremotsuc_teg"),
    ("dotless_i", "get_customer".replace("t", "\u0131", 1)),
    ("nul", "get_customer\u0000"),
    ("trailing_space", "get_customer "),
    ("newline", "get_customer\n"),
    ("slash", "../get_customer"),
    ("colon_namespaced", "crm:get_customer"),
    ("too_long", "a" * 129),
]


@pytest.mark.parametrize("name", [n for _, n in LOOK_ALIKES], ids=[i for i, _ in LOOK_ALIKES])
def test_look_alike_and_invalid_tool_names_are_invalid_params(sec, alice, name):
    """Outside the MCP spec's [A-Za-z0-9_.-]{1,128}: -32602 before any policy or server sees it."""
    text, _ = tool_call(name)
    reply, _ = refused(sec, status=400, code=-32602, reason=lambda r: r.startswith("invalid params: tool name"),
                       body=text, headers=hdrs(alice, method="tools/call"))


def test_an_empty_tool_name_is_invalid_params(sec, alice):
    text, _ = tool_call("")
    refused(sec, status=400, code=-32602, reason=lambda r: "params.name" in r, body=text,
            headers=hdrs(alice, method="tools/call"))


UNKNOWN_METHODS = ["tools/execute", "admin/shutdown", "Tools/Call", "tools/call ", "tools//call",
                   "rpc.discover", "", "notifications/../tools/call"]


@pytest.mark.parametrize("method", UNKNOWN_METHODS)
def test_unknown_methods_are_denied(sec, alice, method):
    body, _ = modern({"jsonrpc": "2.0", "id": 5, "method": method, "params": {"name": "delete_customer"}})
    if method == "":
        # An empty method is not a request at all.
        refused(sec, status=400, code=-32600, reason=lambda r: '"method"' in r, body=json.dumps(body),
                headers=hdrs(alice))
        return
    # No Mcp-Method header: Envoy trims header values, so "tools/call " would not match the body.
    reply, record = refused(sec, status=200, code=POLICY_DENIED, reason=lambda r: "not a method" in r,
                            body=json.dumps(body), headers=hdrs(alice))
    assert record["rule"] == "unknown-method" and record["method"] == method
    assert reply.json()["error"]["data"]["rule"] == "unknown-method"


@pytest.mark.parametrize("method", ["sampling/createMessage", "elicitation/create", "roots/list"])
def test_server_only_methods_sent_by_a_client_are_denied(sec, alice, method):
    """Requests only a server sends to a client: a client sending them to the server is refused."""
    body, _ = modern({"jsonrpc": "2.0", "id": 6, "method": method, "params": {}})
    reply, record = refused(sec, status=200, code=POLICY_DENIED, reason=lambda r: "not a method" in r,
                            body=json.dumps(body), headers=hdrs(alice, method=method))
    assert record["method"] == method and record["rule"] == "unknown-method"


@pytest.mark.parametrize("method", ["notifications/evil", "notifications/tools/call"])
def test_unknown_notifications_are_refused_over_http(sec, alice, method):
    """A notification has no id to answer in-band: 403."""
    body, _ = modern({"jsonrpc": "2.0", "method": method, "params": {}})
    refused(sec, status=403, code=POLICY_DENIED, reason=lambda r: "not a method" in r,
            body=json.dumps(body), headers=hdrs(alice, method=method))


MISMATCHES = [
    ("method_header_lies", {"method": "tools/list", "name": "delete_customer"}, "Mcp-Method"),
    ("method_header_case", {"method": "Tools/call", "name": "delete_customer"}, "Mcp-Method"),
    ("name_header_lies", {"method": "tools/call", "name": "get_customer"}, "Mcp-Name"),
    ("name_header_case", {"method": "tools/call", "name": "Delete_customer"}, "Mcp-Name"),
    ("name_header_escaped", {"method": "tools/call", "name": "delete%5Fcustomer"}, "Mcp-Name"),
]


@pytest.mark.parametrize("headers,which", [m[1:] for m in MISMATCHES], ids=[m[0] for m in MISMATCHES])
def test_mcp_headers_that_disagree_with_the_body_get_400_32020(sec, alice, headers, which):
    text, _ = tool_call("delete_customer", id=11)
    reply, record = refused(sec, status=400, code=-32020, reason=lambda r: r.startswith(which),
                            body=text, headers=hdrs(alice, **headers))
    assert reply.json()["id"] == 11
    assert record["tool"] == "delete_customer"


def test_a_name_header_on_a_message_without_a_name_gets_400_32020(sec, alice):
    body, _ = modern({"jsonrpc": "2.0", "id": 12, "method": "tools/list", "params": {}})
    refused(sec, status=400, code=-32020, reason=lambda r: r.startswith("Mcp-Name"), body=json.dumps(body),
            headers=hdrs(alice, method="tools/list", name="delete_customer"))


# ---- sessions -----------------------------------------------------------------------------------------

LEGACY = "2025-11-25"


def initialize(sec, token):
    """A legacy (2025-11-25) initialize against the stateful demo server: the session id."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": LEGACY, "capabilities": {},
                       "clientInfo": {"name": "security-suite", "version": "1"}}}
    reply, _ = send(sec, body=body, headers=body_headers(token, protocol=None))
    assert reply.status == 200, reply
    session = reply.header("mcp-session-id")
    assert session
    done = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    reply, _ = send(sec, body=done, headers=session_headers(token, session))
    assert reply.status == 202, reply
    return session


def session_headers(token, session):
    h = [("accept", ACCEPT), ("content-type", "application/json"), ("mcp-protocol-version", LEGACY),
         ("mcp-session-id", session)]
    if token:
        h.append(("authorization", f"Bearer {token}"))
    return h


LIST = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}


def test_another_users_session_id_gets_404(sec, alice):
    """The upstream sees everyone through one service key and cannot tell users apart; the
    filter binds each session to (iss, sub) and refuses it to anyone else, whatever they send."""
    session = initialize(sec, alice)
    bob = sec.token("bob", groups=["sales"])
    partner_alice = sec.remember(sec.partner.token("alice", groups=["sales"]))  # same sub, other iss
    for token in (bob, partner_alice):
        for method, body in (("POST", json.dumps(LIST)), ("GET", b""), ("DELETE", b"")):
            h = session_headers(token, session)
            if method == "GET":
                h = [(k, "text/event-stream" if k == "accept" else v) for k, v in h]
            reply, record = refused(sec, status=404, reason="session_of_another_caller", method=method,
                                    body=body, headers=h)
            assert reply.json()["error"]["code"] == -32001
            assert record["session_id"] == session
            assert record["sub"] == ("bob" if token is bob else "alice")
    # Alice's session is untouched by the attempts (the DELETEs above never reached the server).
    reply, record, _ = forwarded(sec, body=json.dumps(LIST), headers=session_headers(alice, session))
    assert reply.status == 200 and b"get_customer" in reply.body
    assert record["session_id"] == session and record["sub"] == "alice"


def test_a_session_id_needs_a_token_too(sec, alice):
    """Session ids never authenticate."""
    session = initialize(sec, alice)
    refused(sec, status=401, reason="missing_token", body=json.dumps(LIST), headers=session_headers(None, session))


def test_a_session_of_the_same_user_is_usable_across_tokens(sec):
    """The control: a fresh token of the same (iss, sub) keeps using its session."""
    first = sec.token("carol", groups=["sales"])
    session = initialize(sec, first)
    second = sec.token("carol", groups=["sales"], ttl=600)
    reply, _, _ = forwarded(sec, body=json.dumps(LIST), headers=session_headers(second, session))
    assert reply.status == 200



def test_smuggling_another_session_id_beside_ones_own_is_refused(sec):
    """Bob owns session B and adds Alice's A: as a second header (servers differ in which one
    they read) or inside one value ("B, A", how proxies join repeated headers). Neither reaches
    the upstream."""
    alice, bob = sec.token("alice", groups=["sales"]), sec.token("bob", groups=["sales"])
    a, b = initialize(sec, alice), initialize(sec, bob)
    base = [(k, v) for k, v in session_headers(bob, b) if k != "mcp-session-id"]
    for order in ((b, a), (a, b)):
        refused(sec, status=400, reason="repeated_header",
                detail="the mcp-session-id header must appear at most once", body=json.dumps(LIST),
                headers=base + [("mcp-session-id", order[0]), ("mcp-session-id", order[1])])
    for value in (f"{b}, {a}", f"{b} {a}", f"{b}\t{a}"):
        refused(sec, status=400, reason="invalid_session_id", body=json.dumps(LIST),
                headers=base + [("mcp-session-id", value)])
