"""Hostile JSON-RPC bodies: anything that is not exactly one well-formed message (or, for
protocol version 2025-03-26, a well-formed batch) is refused before policy and never forwarded;
escapes are decoded before policy, so an escaped name meets the same rules as the plain one."""

import json

import pytest
from hostile import MAX_BODY, body_headers, call, forwarded, refused, send, wait_record

POLICY_DENIED = -31403


def hdrs(token, **kw):
    return body_headers(token, **kw)


def has(*parts):
    return lambda reason: all(p in reason for p in parts)


def envelope():
    return {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {}}


# ---- duplicate keys, case variants, hybrids, params -------------------------------------------

META = json.dumps(envelope())
MALFORMED = [
    ("duplicate_top_level_method",
     '{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call","params":{"_meta":%s}}' % META,
     -32600, "duplicate_key"),
    ("duplicate_tool_name",
     '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_customer",'
     '"name":"delete_customer","arguments":{},"_meta":%s}}' % META,
     -32600, "duplicate_key"),
    ("duplicate_key_nested_in_arguments",
     '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_customer",'
     '"arguments":{"customer_id":"c-100","customer_id":"c-200"},"_meta":%s}}' % META,
     -32600, "duplicate_key"),
    ("duplicate_key_deep_in_arguments",
     '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_customer",'
     '"arguments":{"customer_id":"c-100","filter":[{"a":{"force":false,"force":true}}]},"_meta":%s}}' % META,
     -32600, "duplicate_key"),
    ("duplicate_id",
     '{"jsonrpc":"2.0","id":1,"id":2,"method":"tools/list","params":{"_meta":%s}}' % META,
     -32600, "duplicate_key"),
    ("case_variant_Method_beside_method",
     '{"jsonrpc":"2.0","id":1,"method":"tools/list","Method":"tools/call","params":{"_meta":%s}}' % META,
     -32600, "colliding_keys"),
    ("case_variant_Method_alone",
     '{"jsonrpc":"2.0","id":1,"Method":"tools/call","params":{"name":"delete_customer","_meta":%s}}' % META,
     -32600, has('unknown member "Method"')),
    ("case_variant_PARAMS",
     '{"jsonrpc":"2.0","id":1,"method":"tools/list","PARAMS":{}}',
     -32600, has('unknown member "PARAMS"')),
    ("unknown_top_level_member",
     '{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":%s},"extra":1}' % META,
     -32600, has('unknown member "extra"')),
    ("request_and_result",
     '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete_customer"},"result":{}}',
     -32600, has("both a request and a response")),
    ("request_and_error",
     '{"jsonrpc":"2.0","id":1,"method":"tools/list","error":{"code":1,"message":"x"}}',
     -32600, has("both a request and a response")),
    ("result_and_error",
     '{"jsonrpc":"2.0","id":1,"result":{},"error":{"code":1,"message":"x"}}',
     -32600, has("exactly one of")),
    ("response_with_params",
     '{"jsonrpc":"2.0","id":1,"result":{},"params":{}}',
     -32600, has('must not carry "params"')),
    ("params_array",
     '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["delete_customer",{}]}',
     -32600, has('"params" must be an object')),
    ("params_string",
     '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":"delete_customer"}',
     -32600, has('"params" must be an object')),
    ("params_null",
     '{"jsonrpc":"2.0","id":1,"method":"tools/list","params":null}',
     -32600, has('"params" must be an object')),
    ("method_not_a_string",
     '{"jsonrpc":"2.0","id":1,"method":["tools/call"],"params":{}}',
     -32600, has('"method" must be a')),
    ("jsonrpc_1_0",
     '{"jsonrpc":"1.0","id":1,"method":"tools/list"}',
     -32600, has('"jsonrpc" must be "2.0"')),
    ("jsonrpc_missing",
     '{"id":1,"method":"tools/list"}',
     -32600, has('"jsonrpc" must be "2.0"')),
    ("not_an_object",
     '"tools/call"',
     -32600, has("must be a JSON object")),
    ("arguments_not_an_object",
     '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_customer","arguments":[1]}}',
     -32602, has("arguments must be an object")),
    ("tool_name_not_a_string",
     '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":["delete_customer"]}}',
     -32602, has("params.name")),
    # 2^53 + 1: the policy would judge it exactly, a JavaScript or Go (`any`) server reads 2^53.
    ("integer_a_double_reads_otherwise",
     '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_customer",'
     '"arguments":{"customer_id":9007199254740993}}}',
     -32602, has("9007199254740993", "as a string")),
    # 2^64 + 1: the policy (serde_json) would judge the double 2^64, Python the integer.
    ("integer_beyond_64_bits_a_double_reads_otherwise",
     '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_customer",'
     '"arguments":{"customer_id":"c-1","limit":18446744073709551617}}}',
     -32602, has("18446744073709551617", "as a string")),
]


@pytest.mark.parametrize("body,code,reason", [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_message_is_refused(sec, alice, body, code, reason):
    reply, _ = refused(sec, status=400, code=code, reason=reason, body=body,
                       headers=hdrs(alice, method="tools/call"))
    assert reply.json()["id"] is None


# ---- keys a case-insensitive, last-wins decoder would read as one --------------------------------
# A Go MCP server (encoding/json matches struct fields with Unicode simple case folding, last
# key wins) would run delete_customer for {"name":"echo","Name":"delete_customer"} while the
# policy saw echo. Such objects are refused at every depth; so are keys with control characters.

def tool_params(inner):
    return ('{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{%s,"_meta":%s}}' % (inner, META))


COLLIDING = [
    # params: the review's cases
    ("params_Name", tool_params('"name":"echo","Name":"delete_customer","arguments":{"text":"x"}'),
     "colliding_keys", 'keys "name" and "Name"'),
    ("params_NAME", tool_params('"name":"echo","NAME":"delete_customer","arguments":{"text":"x"}'),
     "colliding_keys", 'keys "name" and "NAME"'),
    ("params_nAmE", tool_params('"name":"echo","nAmE":"delete_customer","arguments":{"text":"x"}'),
     "colliding_keys", 'keys "name" and "nAmE"'),
    ("params_name_nul", tool_params('"name":"echo","name\\u0000":"delete_customer","arguments":{"text":"x"}'),
     "control_character_in_key", 'key "name\\0"'),
    ("params_name_first_variant_last", tool_params('"NAME":"delete_customer","name":"echo","arguments":{"text":"x"}'),
     "colliding_keys", 'keys "NAME" and "name"'),
    # Unicode simple folding as Go's EqualFold: U+017F (long s), U+212A (Kelvin sign)
    ("arguments_long_s", tool_params('"name":"get_customer","arguments":{"customer_id":"c-100",'
                                     '"customer_id":"c-1"}').replace('"customer_id":"c-1"', '"cu\\u017ftomer_id":"c-1"'),
     "colliding_keys", 'keys "customer_id" and "cu\u017ftomer_id"'),
    ("arguments_kelvin", tool_params('"name":"echo","arguments":{"text":"x","kind":"a","\\u212aind":"b"}'),
     "colliding_keys", 'keys "kind" and "\u212aind"'),
    # dotless ı: equal to i for .NET OrdinalIgnoreCase and Java equalsIgnoreCase
    ("arguments_dotless_i", tool_params('"name":"echo","arguments":{"text":"x","id":1,"\\u0131d":2}'),
     "colliding_keys", 'keys "id" and "\u0131d"'),
    # arguments: the policy checks owner, a Go server would use Owner
    ("arguments_Owner", tool_params('"name":"get_customer","arguments":{"customer_id":"c-100","Customer_Id":"c-200"}'),
     "colliding_keys", 'keys "customer_id" and "Customer_Id"'),
    ("arguments_nul", tool_params('"name":"get_customer","arguments":{"customer_id":"c-100","customer_id\\u0000":"c-200"}'),
     "control_character_in_key", 'key "customer_id\\0"'),
    ("arguments_nested_array", tool_params('"name":"echo","arguments":{"text":"x","opts":[{"ok":1},{"force":false,"FORCE":true}]}'),
     "colliding_keys", 'keys "force" and "FORCE"'),
    # a lone case variant of a params member the filter reads: no arguments to the policy,
    # arguments to a case-insensitive server (found by the fuzz property)
    ("params_Arguments_alone", tool_params('"name":"echo","Arguments":{"text":"x"}'),
     "case_variant_key", 'params key "Arguments" is a case variant of "arguments"'),
    # _meta
    ("meta_progressToken", '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"},'
                           '"_meta":{"progressToken":1,"ProgressToken":2,'
                           '"io.modelcontextprotocol/protocolVersion":"2026-07-28",'
                           '"io.modelcontextprotocol/clientCapabilities":{}}}}',
     "colliding_keys", 'keys "progressToken" and "ProgressToken"'),
    ("meta_protocol_version", '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"},'
                              '"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28",'
                              '"IO.modelcontextprotocol/protocolVersion":"2025-06-18",'
                              '"io.modelcontextprotocol/clientCapabilities":{}}}}',
     "colliding_keys", 'keys "io.modelcontextprotocol/protocolVersion" and "IO.modelcontextprotocol/protocolVersion"'),
    ("meta_c1_control", '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"},'
                        '"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","x\\u0085":1,'
                        '"io.modelcontextprotocol/clientCapabilities":{}}}}',
     "control_character_in_key", 'key "x\\u{85}"'),
]


@pytest.mark.parametrize("body,reason,says", [c[1:] for c in COLLIDING], ids=[c[0] for c in COLLIDING])
def test_keys_that_collide_under_case_folding_are_refused_at_every_depth(sec, alice, body, reason, says):
    """400, -32600 naming the key, nothing forwarded, audited with the stable reason."""
    json.loads(body)  # valid JSON to any lenient parser: the refusal is the filter's rule
    reply, _ = refused(sec, status=400, code=-32600, reason=reason, body=body,
                       headers=hdrs(alice, method="tools/call"))
    error = reply.json()["error"]
    assert says in error["message"], error
    assert reply.json()["id"] is None


def test_keys_that_only_look_alike_still_reach_the_server(sec, alice):
    """The control: keys that no common decoder folds together (ß and ss, dotted I and i, a key
    in another object) are not a collision."""
    body = tool_params('"name":"echo","arguments":{"text":"x","stra\\u00dfe":1,"strasse":2,'
                       '"\\u0130d":1,"id":2,"inner":{"Text":1}}')
    reply, record, _ = forwarded(sec, body=body, headers=hdrs(alice, method="tools/call", name="echo"))
    assert reply.status == 200
    assert record["tool"] == "echo" and record["rule"] == "read-only-tools"


# ---- ids ----------------------------------------------------------------------------------------
# JSON-RPC 2.0 allows string, number or null ids (null and fractions discouraged); MCP narrows
# requests to "string or integer, not null". The filter applies that to every message it
# accepts, answers errors it cannot attribute with "id": null (JSON-RPC §5), and refuses
# integers it could not echo exactly (beyond 64 bits) rather than round them.

BAD_IDS = [("null", "null"), ("float", "1.5"), ("float_integral", "1.0"), ("exponent", "1e2"),
           ("true", "true"), ("object", '{"id":1}'), ("array", "[1]"),
           ("huge_2_80", str(2**80)), ("below_i64_min", str(-(2**63) - 1)), ("beyond_u64", str(2**64))]


@pytest.mark.parametrize("kind", ["request", "response"])
@pytest.mark.parametrize("raw_id", [i[1] for i in BAD_IDS], ids=[i[0] for i in BAD_IDS])
def test_ids_that_are_not_string_or_integer_are_refused(sec, alice, raw_id, kind):
    if kind == "request":
        body = '{"jsonrpc":"2.0","id":%s,"method":"tools/list","params":{"_meta":%s}}' % (raw_id, META)
    else:
        body = '{"jsonrpc":"2.0","id":%s,"result":{}}' % raw_id
    reply, _ = refused(sec, status=400, code=-32600, reason=has('"id" must be a string or an integer'),
                       body=body, headers=hdrs(alice, method="tools/list" if kind == "request" else None))
    assert reply.json()["id"] is None


@pytest.mark.parametrize("good_id", [0, -1, 2**53 + 1, 2**63 - 1, 2**64 - 1, -(2**63), "", "x" * 200])
def test_string_and_64_bit_ids_are_echoed_exactly_in_a_denial(sec, alice, good_id):
    """Integers past JavaScript's 2^53 and up to 64 bits keep every digit in the filter's answer."""
    body, _ = call("delete_customer", {"customer_id": "c-100"}, id=good_id)
    text = json.dumps(body)
    reply, record = refused(sec, status=200, code=POLICY_DENIED, reason="policy_denied", detail="deny rule matched", body=text,
                            headers=hdrs(alice, method="tools/call", name="delete_customer"))
    assert reply.json()["id"] == good_id
    assert record["jsonrpc_id"] == good_id


# ---- batches --------------------------------------------------------------------------------------

def batch(*messages):
    return json.dumps(list(messages))


LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
PING = {"jsonrpc": "2.0", "id": 2, "method": "ping", "params": {}}
GET = {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
       "params": {"name": "get_customer", "arguments": {"customer_id": "c-100"}}}
DELETE = {"jsonrpc": "2.0", "id": 4, "method": "tools/call",
          "params": {"name": "delete_customer", "arguments": {"customer_id": "c-100"}}}
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}


@pytest.mark.parametrize("protocol", ["2026-07-28", "2025-11-25", "2025-06-18", None])
def test_batches_are_refused_after_2025_03_26(sec, alice, protocol):
    """One message per POST since 2025-06-18. Without MCP-Protocol-Version the filter does not
    guess 2025-03-26 (as a server may): a batch needs the header that allows it."""
    refused(sec, status=400, code=-32600, reason=has("batches are not allowed"),
            body=batch(LIST, PING), headers=hdrs(alice, protocol=protocol))


def test_a_2025_03_26_batch_is_authorized_element_by_element(sec, alice):
    """All elements allowed: the batch is forwarded as sent, one audit record per element."""
    text = batch(LIST, GET, INITIALIZED)
    before = len(sec.upstream_requests())
    reply, tag = send(sec, body=text, headers=hdrs(alice, protocol="2025-03-26"))
    records = wait_record(sec, tag)
    assert len(sec.upstream_requests()) == before + 1
    assert [(r["method"], r["decision"]) for r in records] == [
        ("tools/list", "allow"), ("tools/call", "allow"), ("notifications/initialized", "allow")]
    assert records[1]["tool"] == "get_customer"


def test_a_2025_03_26_batch_with_one_denied_element_is_denied_whole(sec, alice):
    """One element denied: nothing is forwarded; every request in the batch is answered (the
    denied one with the rule, the others "not executed"), and each element is audited."""
    before = len(sec.upstream_requests())
    reply, rid = send(sec, body=batch(LIST, DELETE, INITIALIZED, GET),
                      headers=hdrs(alice, protocol="2025-03-26"))
    assert reply.status == 200
    answers = {a["id"]: a["error"] for a in reply.json()}
    assert set(answers) == {1, 3, 4}  # the notification gets no answer
    assert all(e["code"] == POLICY_DENIED for e in answers.values())
    assert answers[4]["data"]["rule"] == "no-destructive"
    assert "not executed" in answers[1]["message"] and "not executed" in answers[3]["message"]
    assert len(sec.upstream_requests()) == before
    records = wait_record(sec, rid)
    assert len(records) == 4 and all(r["decision"] == "deny" for r in records)
    by_method = {(r["method"], r.get("tool")): r for r in records}
    assert by_method[("tools/call", "delete_customer")]["rule"] == "no-destructive"
    assert by_method[("tools/call", "delete_customer")]["reason"] == "policy_denied"
    assert by_method[("tools/call", "delete_customer")]["detail"] == "deny rule matched"
    for key in [("tools/list", None), ("tools/call", "get_customer"), ("notifications/initialized", None)]:
        assert by_method[key]["reason"] == "batch_denied"
        assert by_method[key]["detail"] == "another message in the batch was denied"


@pytest.mark.parametrize("text,code,reason", [
    ("[]", -32600, has("empty batch")),
    ('[{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"x"}]', -32600, "duplicate_key"),
    ('[[{"jsonrpc":"2.0","id":1,"method":"tools/list"}]]', -32600, has("batch element 0")),
    ('[{"jsonrpc":"2.0","id":1,"method":"tools/list"}, 1]', -32600, has("batch element 1")),
    ('[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_cust\\u043emer"}}]',
     -32602, has("batch element 0", "tool name")),
], ids=["empty", "duplicate_key", "nested_batch", "non_object_element", "look_alike_tool"])
def test_a_malformed_2025_03_26_batch_is_refused_whole(sec, alice, text, code, reason):
    refused(sec, status=400, code=code, reason=reason, body=text, headers=hdrs(alice, protocol="2025-03-26"))


# ---- encodings, trailing bytes, nesting, size -------------------------------------------------

VALID = json.dumps(call("get_customer", {"customer_id": "c-100"})[0]).encode()
BYTES = [
    ("utf8_bom", b"\xef\xbb\xbf" + VALID),
    ("utf16le", VALID.decode().encode("utf-16-le")),
    ("utf16_with_bom", VALID.decode().encode("utf-16")),
    ("invalid_utf8_in_string", VALID.replace(b"c-100", b"c-\xff\xfe0")),
    ("overlong_utf8_slash", VALID.replace(b"tools/call", b"tools\xc0\xafcall")),
    ("lone_surrogate_escape", VALID.replace(b"c-100", b"c-\\ud800")),
    ("trailing_garbage", VALID + b" x"),
    ("second_message", VALID + VALID),
    ("trailing_nul", VALID + b"\x00"),
    ("truncated", VALID[:-1]),
    ("comment", b"/* */" + VALID),
    ("single_quotes", VALID.replace(b'"', b"'")),
    ("nan", VALID.replace(b'"c-100"', b"NaN")),
    ("empty_body", b""),
]


@pytest.mark.parametrize("body", [b[1] for b in BYTES], ids=[b[0] for b in BYTES])
def test_bytes_that_are_not_one_json_text_are_a_parse_error(sec, alice, body):
    reply, _ = refused(sec, status=400, code=-32700, reason=has("parse error"), body=body,
                       headers=hdrs(alice, method="tools/call", name="get_customer"))
    assert reply.json()["id"] is None


def nested(levels):
    """tools/call get_customer whose arguments hold `levels` containers in total, counting the
    message object, params and arguments."""
    inner = "{}"
    for _ in range(levels - 4):
        inner = '{"a":%s}' % inner
    return ('{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_customer",'
            '"arguments":{"customer_id":"c-100","deep":%s},"_meta":%s}}' % (inner, META))


def test_nesting_up_to_the_limit_is_accepted(sec, alice):
    """The control: exactly 64 levels parse, and the message goes on."""
    forwarded(sec, body=nested(64), headers=hdrs(alice, method="tools/call", name="get_customer"))


@pytest.mark.parametrize("text,protocol", [
    (nested(65), None),
    ('{"a":' * 40_000 + "1" + "}" * 40_000, None),
    ("[" * 100_000 + "]" * 100_000, "2025-03-26"),
], ids=["65_levels", "40k_objects", "100k_arrays_as_batch"])
def test_nesting_deeper_than_64_is_refused_without_harm(sec, alice, text, protocol):
    """Refused with a parse error, not a crash: the VM answers (no 503) and keeps working."""
    refused(sec, status=400, code=-32700, reason=has("nesting deeper than 64 levels"), body=text,
            headers=hdrs(alice, protocol=protocol or "2026-07-28"))
    forwarded(sec, body=VALID, headers=hdrs(alice, method="tools/call", name="get_customer"))


def test_a_body_over_max_body_bytes_gets_413(sec, alice):
    """Larger than the filter's max_body_bytes (here 256 KiB), within Envoy's buffer limit."""
    body, _ = call("echo", {"text": "x" * MAX_BODY})
    reply, _ = refused(sec, status=413, reason="body_too_large", body=json.dumps(body),
                       headers=hdrs(alice, method="tools/call", name="echo"))
    assert reply.json()["error"]["code"] == -32600


def test_a_body_over_envoys_buffer_limit_gets_413_and_is_audited(sec, alice):
    """Past Envoy's per-connection buffer limit (1 MiB by default) Envoy answers 413 itself;
    the filter still audits it as a refusal."""
    body, _ = call("echo", {"text": "x" * (2 * 1024 * 1024)})
    reply, _ = refused(sec, status=413, reason="body_too_large", body=json.dumps(body),
                       headers=hdrs(alice, method="tools/call", name="echo"))
    assert reply.body == b"Payload Too Large"


# ---- escapes are decoded before policy ----------------------------------------------------------

@pytest.mark.parametrize("method,name", [
    ("tools\\u002fcall", "delete\\u005fcustomer"),
    ("tools/call", "delete\\u005Fcustomer"),
    ("\\u0074ools/call", "\\u0064\\u0065\\u006c\\u0065\\u0074\\u0065\\u005f\\u0063ustomer"),
    ("tools\\/call", "delete_customer"),
], ids=["both_escaped", "upper_hex", "every_letter", "escaped_solidus"])
def test_escaped_method_and_tool_names_meet_the_deny_rule(sec, alice, method, name):
    text = ('{"jsonrpc":"2.0","id":7,"method":"%s","params":{"name":"%s",'
            '"arguments":{"customer_id":"c-100"},"_meta":%s}}' % (method, name, META))
    reply, record = refused(sec, status=200, code=POLICY_DENIED, reason="policy_denied", detail="deny rule matched", body=text,
                            headers=hdrs(alice, method="tools/call", name="delete_customer"))
    assert reply.json()["error"]["data"]["rule"] == "no-destructive"
    assert record["method"] == "tools/call" and record["tool"] == "delete_customer"
    assert record["rule"] == "no-destructive"


def test_an_escaped_allowed_tool_reaches_the_server_as_sent(sec, alice):
    """The control: policy and server decode the same name; the original bytes are forwarded."""
    text = ('{"jsonrpc":"2.0","id":8,"method":"tools\\u002fcall","params":{"name":"get\\u005fcustomer",'
            '"arguments":{"customer_id":"c-100"},"_meta":%s}}' % META)
    reply, record, _ = forwarded(sec, body=text, headers=hdrs(alice, method="tools/call", name="get_customer"))
    assert reply.status == 200 and b"Ada Lovelace" in reply.body
    assert record["tool"] == "get_customer" and record["rule"] == "read-only-tools"
