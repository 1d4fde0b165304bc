"""Hostile bearer tokens: every forgery, confusion and smuggling trick ends in a 401 (or 400 for
malformed requests), an audit record naming the reason, and nothing at the upstream."""

import base64
import datetime
import hashlib
import hmac
import http.server
import json
import threading

import jwt as pyjwt
import keys
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from hostile import SecStack, body_headers, call, refused, send

CALL, _ = call("get_customer", {"customer_id": "c-100"})
BODY = json.dumps(CALL)


def headers(token):
    return body_headers(token, method="tools/call", name="get_customer")


def segment(obj):
    return keys.b64url(json.dumps(obj).encode())


def hs256(secret: bytes, header: dict, claims: dict) -> str:
    """An HMAC-signed token made by hand (PyJWT refuses PEM keys as HMAC secrets)."""
    signing_input = f"{segment(header)}.{segment(claims)}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{keys.b64url(mac)}"


def attacker_cert(key: keys.SigningKey) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp.example")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.private.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key.private, hashes.SHA256()))
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


def sign_raw(key: keys.SigningKey, claims: dict, header: dict, alg=None) -> str:
    """Signs with exactly `header` (no kid added)."""
    return pyjwt.encode(claims, key.pem(), algorithm=alg or key.alg, headers=header)


# Each case: the token an attacker presents, and the audit reason the filter must give.
def alg_none(s):
    return keys.unsigned(s.issuer.claims("mallory"), {"alg": "none", "kid": s.issuer.key("RS256").kid})


def alg_none_mixed_case(s):
    return keys.unsigned(s.issuer.claims("mallory"), {"alg": "nOnE", "typ": "JWT"})


def hs256_with_rsa_public_key_pem(s):
    """The classic HS/RS confusion: the RSA public key's PEM bytes as the HMAC secret."""
    pem = s.issuer.key("RS256").private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hs256(pem, {"alg": "HS256", "typ": "JWT", "kid": s.issuer.key("RS256").kid},
                 s.issuer.claims("mallory"))


def hs256_with_rsa_public_key_der(s):
    der = s.issuer.key("RS256").private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hs256(der, {"alg": "HS256", "kid": s.issuer.key("RS256").kid}, s.issuer.claims("mallory"))


def es256_all_zero_signature(s):
    """CVE-2022-21449 ("psychic signatures"): r = s = 0 must never verify."""
    header = {"alg": "ES256", "typ": "JWT", "kid": s.issuer.key("ES256").kid}
    return f"{segment(header)}.{segment(s.issuer.claims('mallory'))}.{keys.b64url(bytes(64))}"


def rs_key_with_es_alg(s):
    """The RSA key's kid with alg ES256: a key is only ever used with its own type."""
    key = s.issuer.key("ES256")
    return sign_raw(key, s.issuer.claims("mallory"), {"kid": s.issuer.key("RS256").kid})


def ps256_not_allowed(s):
    """A correct PS256 signature by the issuer's own RSA key, but PS256 is not in its list."""
    key = s.issuer.key("RS256")
    return sign_raw(key, s.issuer.claims("mallory"), {"kid": key.kid}, alg="PS256")


def kid_of_another_issuer(s):
    """iss = the demo IdP, signed by (and naming the kid of) the partner IdP's key."""
    return s.partner.key("RS256").sign(s.issuer.claims("mallory"))


def kid_path_traversal(s):
    return s.issuer.key("RS256").sign(s.issuer.claims("mallory"), {"kid": "../../../../../../dev/null"})


def kid_path_traversal_to_key_file(s):
    return keys.SigningKey("RS256").sign(s.issuer.claims("mallory"),
                                         {"kid": "/proc/self/cwd/target/../tests/peers/keys.py"})


def kid_sql(s):
    return s.issuer.key("RS256").sign(s.issuer.claims("mallory"),
                                      {"kid": "x' UNION SELECT 'secret' AS key --"})


def embedded_jwk_with_kid(s):
    """Signed by the attacker, carrying the attacker's public key as `jwk`."""
    attacker = keys.SigningKey("RS256")
    return attacker.sign(s.issuer.claims("mallory"), {"jwk": attacker.jwk()})


def embedded_jwk_without_kid(s):
    attacker = keys.SigningKey("RS256")
    return sign_raw(attacker, s.issuer.claims("mallory"), {"jwk": attacker.jwk()})


def embedded_x5c(s):
    attacker = keys.SigningKey("RS256")
    return sign_raw(attacker, s.issuer.claims("mallory"), {"x5c": [attacker_cert(attacker)]})


def crit_header(s):
    key = s.issuer.key("RS256")
    return key.sign(s.issuer.claims("mallory"), {"crit": ["exp"]})


def crit_unknown_extension(s):
    key = s.issuer.key("RS256")
    return key.sign(s.issuer.claims("mallory"), {"crit": ["http://evil.example/skip-checks"],
                                                 "http://evil.example/skip-checks": True})


def crit_null(s):
    """`"crit": null` was read as no `crit` at all, and the token accepted."""
    key = s.issuer.key("RS256")
    return key.sign(s.issuer.claims("mallory"), {"crit": None})


def logout_token(s):
    """A JWT the IdP signed as another kind (here a back-channel logout token) naming the
    resource: not an access token, although no `typ` is required of this issuer."""
    key = s.issuer.key("RS256")
    claims = s.issuer.claims("mallory", events={"http://schemas.openid.net/event/backchannel-logout": {}})
    return key.sign(claims, {"typ": "logout+jwt"})


def expired(s):
    return s.issuer.token("mallory", ttl=-3600)


def not_yet_valid(s):
    return s.issuer.token("mallory", nbf=2**31)


def missing_exp(s):
    return s.issuer.token("mallory", exp=None)


def wrong_issuer(s):
    return s.issuer.token("mallory", iss="https://evil.example")


def issuer_with_trailing_slash(s):
    return s.issuer.token("mallory", iss=s.issuer.issuer + "/")


def wrong_audience(s):
    return s.issuer.token("mallory", aud="http://127.0.0.1:1/other-mcp")


def audience_of_the_partner_resource(s):
    return s.partner.token("mallory", aud=["https://partner.example/mcp"])


def oversized(s):
    """Validly signed, but larger than 16 KiB: refused before any parsing."""
    return s.issuer.token("mallory", groups=["sales"], padding="x" * (17 * 1024))


TOKEN_CASES = [
    (alg_none, "unsupported_algorithm"),
    (alg_none_mixed_case, "unsupported_algorithm"),
    (hs256_with_rsa_public_key_pem, "unsupported_algorithm"),
    (hs256_with_rsa_public_key_der, "unsupported_algorithm"),
    (es256_all_zero_signature, "bad_signature"),
    (rs_key_with_es_alg, "unknown_key"),
    (ps256_not_allowed, "algorithm_not_allowed"),
    (kid_of_another_issuer, "unknown_key"),
    (kid_path_traversal, "unknown_key"),
    (kid_path_traversal_to_key_file, "unknown_key"),
    (kid_sql, "unknown_key"),
    (embedded_jwk_with_kid, "unknown_key"),
    (embedded_jwk_without_kid, "bad_signature"),
    (embedded_x5c, "bad_signature"),
    (crit_header, "unsupported_crit"),
    (crit_unknown_extension, "unsupported_crit"),
    (crit_null, "unsupported_crit"),
    (logout_token, "wrong_typ"),
    (expired, "expired"),
    (not_yet_valid, "not_yet_valid"),
    (missing_exp, "missing_exp"),
    (wrong_issuer, "unknown_issuer"),
    (issuer_with_trailing_slash, "unknown_issuer"),
    (wrong_audience, "wrong_audience"),
    (audience_of_the_partner_resource, "wrong_audience"),
    (oversized, "too_large"),
]


def challenge(sec, error):
    meta = f"http://127.0.0.1:{sec.port}/.well-known/oauth-protected-resource/mcp"
    return f'Bearer error="{error}", resource_metadata="{meta}"'


@pytest.mark.parametrize("make,reason", TOKEN_CASES, ids=[c[0].__name__ for c in TOKEN_CASES])
def test_hostile_token_is_refused(sec, make, reason):
    token = sec.remember(make(sec))
    reply, record = refused(sec, status=401, reason=reason, body=BODY, headers=headers(token))
    assert reply.header("www-authenticate") == challenge(sec, "invalid_token")
    assert reply.json()["error"] == "invalid_token"
    # No identity from a refused token reaches the audit trail.
    assert "sub" not in record and "iss" not in record


def test_the_partner_token_itself_is_valid(sec):
    """The control for the cross-issuer cases: the partner's own tokens are accepted."""
    token = sec.remember(sec.partner.token("partner-user", groups=["sales"]))
    reply, _ = send(sec, body=BODY, headers=headers(token))
    assert reply.status == 200


class _JwksServer(http.server.BaseHTTPRequestHandler):
    hits = []
    jwks = {}

    def do_GET(self):  # noqa: N802
        type(self).hits.append(self.path)
        body = json.dumps(type(self).jwks).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_jku_and_x5u_headers_are_never_fetched(sec):
    """A token signed by the attacker names the attacker's JWKS (jku) and certificate (x5u) on
    a server the attacker controls: the filter verifies only with the configured keys, so the
    token is refused and the attacker's server is never contacted."""
    attacker = keys.SigningKey("RS256")
    _JwksServer.hits = []
    _JwksServer.jwks = {"keys": [attacker.jwk()]}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _JwksServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        claims = sec.issuer.claims("mallory")
        for header in ({"jku": f"{url}/jwks.json", "kid": attacker.kid},
                       {"jku": f"{url}/jwks.json"},
                       {"x5u": f"{url}/cert.pem"},
                       {"jku": f"{url}/jwks.json", "jwk": attacker.jwk(), "x5u": f"{url}/c.pem"}):
            token = sec.remember(sign_raw(attacker, claims, header))
            reason = "unknown_key" if "kid" in header else "bad_signature"
            refused(sec, status=401, reason=reason, body=BODY, headers=headers(token))
    finally:
        server.shutdown()
        server.server_close()
    assert _JwksServer.hits == []


def test_duplicate_authorization_headers_are_a_bad_request(sec, alice):
    """Two Authorization headers (Envoy joins them with a comma): 400 invalid_request, even when
    both carry the same valid token."""
    for second in (alice, "not-a-token"):
        h = headers(alice) + [("authorization", f"Bearer {second}")]
        reply, _ = refused(sec, status=400, reason="duplicate_authorization", body=BODY, headers=h)
        assert reply.header("www-authenticate") == challenge(sec, "invalid_request")


@pytest.mark.parametrize("query", ["access_token={token}", "x=1&Access_Token={token}",
                                   "access_token={token}&access_token={token}"])
def test_token_in_the_query_string_is_a_bad_request(sec, alice, query):
    """RFC 6750 §2.3 is never accepted, with or without an Authorization header too."""
    path = "/mcp?" + query.format(token=alice)
    for h in (headers(None), headers(alice)):
        reply, _ = refused(sec, status=400, reason="token_in_query", path=path, body=BODY, headers=h)
        assert reply.header("www-authenticate") == challenge(sec, "invalid_request")


# ---- sender-constrained tokens ------------------------------------------------------------------
# A token bound to a key (RFC 9449 DPoP `cnf.jkt`, RFC 8705 mTLS `cnf.x5t#S256`) presented as a
# plain bearer token may be a stolen one: without its proof of possession it is refused, and so
# is a binding the filter cannot check. (Valid proofs and certificates:
# tests/e2e/test_sender_constrained.py, against the real IdP.)

@pytest.mark.parametrize("cnf,reason", [
    ({"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}, "dpop_required"),
    ({"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"}, "certificate_mismatch"),
    ({"jwk": {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}},
     "dpop_required"),
], ids=["dpop_jkt", "mtls_x5t_s256", "unsupported_binding"])
def test_a_sender_constrained_token_without_its_proof_is_refused(sec, cnf, reason):
    token = sec.token("alice", groups=["sales"], cnf=cnf)
    reply, record = refused(sec, status=401, reason=reason, body=BODY, headers=headers(token))
    challenges = [v for k, v in reply.headers if k.lower() == "www-authenticate"]
    assert any(c.startswith('DPoP error="invalid_token"') for c in challenges), challenges
    assert challenge(sec, "invalid_token") in challenges
    assert reply.json()["error"] == "invalid_token"


# ---- duplicate claims ---------------------------------------------------------------------------
# Which `sub` or `aud` did the IdP mean? A payload naming a claim twice (or two claim names a
# case-insensitive reader takes for one) is refused as malformed, however well signed.

def raw_payload_token(key, payload: str) -> str:
    """A token signed over exactly these payload bytes (a JSON encoder would merge repeats)."""
    signed = pyjwt.api_jws.PyJWS().encode(payload.encode(), key.pem(), algorithm=key.alg,
                                          headers={"kid": key.kid, "typ": "JWT"})
    assert signed.split(".")[1] == keys.b64url(payload.encode())
    return signed


@pytest.mark.parametrize("extra", ['"sub":"root"', '"aud":"https://elsewhere.example/mcp"',
                                   '"Sub":"root"'], ids=["two_sub", "two_aud", "sub_and_Sub"])
def test_a_token_with_duplicate_claims_is_refused(sec, extra):
    claims = json.dumps(sec.issuer.claims("alice", groups=["sales"]), separators=(",", ":"))
    token = sec.remember(raw_payload_token(sec.issuer.key("RS256"), claims[:-1] + "," + extra + "}"))
    reply, record = refused(sec, status=401, reason="malformed", body=BODY, headers=headers(token))
    assert reply.json()["error"] == "invalid_token"
    assert "sub" not in record
    # The control: the same payload without the repeated claim is accepted.
    good = sec.remember(raw_payload_token(sec.issuer.key("RS256"), claims))
    assert send(sec, body=BODY, headers=headers(good))[0].status == 200


# ---- forged and tampered tokens, every algorithm ------------------------------------------------

ALGS = ("RS384", "RS512", "PS384", "PS512", "ES384", "EdDSA")


@pytest.fixture(scope="module")
def algs_stack(tmp_path_factory):
    """The demo issuer with one key per algorithm above, all allowed."""
    s = SecStack(tmp_path_factory.mktemp("algs"), algs=ALGS)
    yield s
    s.stop()


def forged(s, alg):
    """Signed by another key of the same type, naming the trusted key's kid."""
    return keys.SigningKey(alg, kid=s.issuer.key(alg).kid).sign(s.issuer.claims("mallory", groups=["sales"]))


def tampered(s, alg):
    """A valid token of this algorithm whose payload was changed after signing (sub → root)."""
    good = s.issuer.token("mallory", alg=alg, groups=["sales"])
    header, _, signature = good.split(".")
    return f"{header}.{segment(s.issuer.claims('root', groups=['sales']))}.{signature}"


@pytest.mark.parametrize("alg", ALGS)
def test_every_algorithm_accepts_its_own_tokens(algs_stack, alg):
    """The control: a correctly signed token of each algorithm is accepted."""
    token = algs_stack.token("mallory", alg=alg, groups=["sales"])
    reply, tag = send(algs_stack, body=BODY, headers=headers(token))
    assert reply.status == 200 and b"Ada Lovelace" in reply.body


@pytest.mark.parametrize("make", [forged, tampered])
@pytest.mark.parametrize("alg", ALGS)
def test_every_algorithm_refuses_forged_and_tampered_tokens(algs_stack, alg, make):
    token = algs_stack.remember(make(algs_stack, alg))
    reply, record = refused(algs_stack, status=401, reason="bad_signature", body=BODY,
                            headers=headers(token))
    assert reply.header("www-authenticate") == challenge(algs_stack, "invalid_token")
    assert reply.json()["error"] == "invalid_token"
    assert "sub" not in record


# ---- how the token is presented -----------------------------------------------------------------

def test_a_token_only_in_proxy_authorization_is_no_token(sec, alice):
    """`Proxy-Authorization` is for the proxy's own credentials: a token there (or the scheme
    written with a tab) is not read as the caller's. 401, nothing upstream."""
    for extra, reason in (([("proxy-authorization", f"Bearer {alice}")], "missing_token"),
                          ([("authorization", f"Bearer\t{alice}")], "malformed")):
        refused(sec, status=401, reason=reason, body=BODY, headers=headers(None) + extra)


@pytest.mark.parametrize("value", ["bearer {t}", "BEARER {t}", "Bearer  {t}"],
                         ids=["lower_case", "upper_case", "two_spaces"])
def test_the_bearer_scheme_is_read_as_rfc_6750_writes_it(sec, alice, value):
    """RFC 7235: the scheme is case-insensitive; RFC 6750: `Bearer 1*SP b64token`. The same
    token, however written, is the same caller."""
    reply, _ = send(sec, body=BODY, headers=headers(None) + [("authorization", value.format(t=alice))])
    assert reply.status == 200 and b"Ada Lovelace" in reply.body
