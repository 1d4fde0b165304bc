"""Sender-constrained tokens through real Envoy against the real IdP (npm oidc-provider with its
DPoP and certificate-bound token features): a DPoP-bound token with a fresh proof (allowed), a
replayed proof, a proof for another URL or method, a missing proof (refused); an mTLS-bound
token through an Envoy listener that asks for client certificates, with the right and a wrong
certificate."""

import base64
import concurrent.futures
import datetime
import hashlib
import http.client
import json
import ssl
import time
import urllib.parse
import urllib.request
import uuid

import harness
import httpx2
import jwt as pyjwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import keys

POLICY = {"name": "open", "version": "1", "default": "allow"}
BODY = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "x"}}}


class DpopKey:
    """The client's DPoP key pair and its proofs."""

    def __init__(self):
        self.key = keys.SigningKey("ES256")
        self.jwk = {k: v for k, v in self.key.jwk().items() if k in ("kty", "crv", "x", "y")}

    def proof(self, htm, htu, token=None, iat=None, jti=None):
        claims = {"htm": htm, "htu": htu, "iat": int(iat or time.time()), "jti": jti or uuid.uuid4().hex}
        if token:
            claims["ath"] = keys.b64url(hashlib.sha256(token.encode()).digest())
        return pyjwt.encode(claims, self.key.pem(), algorithm="ES256",
                            headers={"typ": "dpop+jwt", "jwk": self.jwk})


def token_request(idp, client, resource, headers):
    data = urllib.parse.urlencode({"grant_type": "client_credentials", "scope": "mcp:tools",
                                   "resource": resource}).encode()
    req = urllib.request.Request(f"{idp.url}/token", data=data)
    basic = base64.b64encode(f"{client}:test-only-{client}-secret".encode()).decode()
    req.add_header("authorization", f"Basic {basic}")
    for k, v in headers.items():
        req.add_header(k, v)
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def test_dpop_bound_token_needs_a_fresh_proof_for_this_request(tmp_path):
    idp = harness.Idp(tmp_path)
    server = harness.McpServer(tmp_path, stateless=True)
    port = harness.free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    issuer = {"issuer": idp.url, "audiences": [resource], "algorithms": ["RS256"],
              "discovery": True, "cluster": "idp", "typ": "at+jwt"}
    config = harness.plugin_config([issuer], POLICY, resource, dpop={"algorithms": ["ES256", "RS256"]})
    envoy = harness.Envoy(tmp_path, config, server.port, port=port,
                          values={"EXTRA_CLUSTERS": harness.cluster_yaml("idp", idp.port)})
    try:
        key = DpopKey()
        answer = token_request(idp, "sales-agent", resource, {"dpop": key.proof("POST", f"{idp.url}/token")})
        assert answer["token_type"] == "DPoP"
        token = answer["access_token"]
        claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
        assert claims["cnf"]["jkt"]

        def call(proof, scheme="DPoP", path="/mcp"):
            headers = {"authorization": f"{scheme} {token}", "mcp-protocol-version": "2025-11-25",
                       "accept": "application/json, text/event-stream"}
            if proof:
                headers["dpop"] = proof
            return httpx2.post(f"http://127.0.0.1:{port}{path}", json=BODY, headers=headers, timeout=15)

        fresh = key.proof("POST", resource, token)
        assert call(fresh).status_code == 200

        refusals = {
            "replayed": call(fresh),
            "other URL": call(key.proof("POST", f"http://127.0.0.1:{port}/other", token)),
            "other method": call(key.proof("GET", resource, token)),
            "old": call(key.proof("POST", resource, token, iat=time.time() - 600)),
            "another key": call(DpopKey().proof("POST", resource, token)),
            "missing proof": call(None),
        }
        for why, r in refusals.items():
            assert r.status_code == 401, why
            assert r.json()["error"] == "invalid_dpop_proof", why
            assert r.headers.get_list("www-authenticate")[0] == 'DPoP error="invalid_dpop_proof", algs="ES256 RS256"', why
        assert "used before" in refusals["replayed"].json()["error_description"]
        # A stolen DPoP-bound token presented as a plain bearer token.
        r = call(None, scheme="Bearer")
        assert r.status_code == 401 and r.json()["error"] == "invalid_token"
        records = envoy.wait_audit(9)
        reasons = [r.get("reason") for r in records]
        assert reasons.count("invalid_dpop_proof") == 6 and reasons[-1] == "dpop_required"
        assert len(server.requests()) == 1
        assert not any(k.lower() in ("dpop", "authorization") for k, _ in server.requests()[0]["headers"]), \
            "the proof and the token never reach the MCP server"
        # Another fresh proof works.
        assert call(key.proof("POST", resource, token)).status_code == 200
        # One proof sent at once on many connections (both worker threads take some): one passes.
        burst = key.proof("POST", resource, token)
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            statuses = sorted(r.status_code for r in pool.map(lambda _: call(burst), range(12)))
        assert statuses == [200] + [401] * 11, statuses
    finally:
        envoy.stop()
        server.stop()
        idp.stop()


# ---- mTLS ---------------------------------------------------------------------------------------

def make_ca():
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mcp-guard test CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def issue(ca_key, ca_cert, cn, server=False):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
               .issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
               .not_valid_after(now + datetime.timedelta(days=1)))
    if server:
        import ipaddress
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                        critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def write_pem(path, key, cert):
    cert_path, key_path = path.with_suffix(".crt"), path.with_suffix(".key")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def tls_template(tmp_path, server_crt, server_key, ca_crt):
    """envoy/mcp-guard.yaml with a TLS listener that requires a client certificate."""
    text = (harness.ROOT / "envoy" / "mcp-guard.yaml").read_text()
    marker = "    filter_chains:\n    - filters:\n"
    assert marker in text
    tls = f"""    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_certificates:
            - certificate_chain: {{ filename: {server_crt} }}
              private_key: {{ filename: {server_key} }}
            validation_context:
              trusted_ca: {{ filename: {ca_crt} }}
      filters:
"""
    path = tmp_path / "envoy-mtls.yaml"
    path.write_text(text.replace(marker, tls, 1))
    return str(path)


def test_mtls_bound_token_needs_its_client_certificate(tmp_path):
    ca_key, ca_cert = make_ca()
    ca_crt = tmp_path / "ca.crt"
    ca_crt.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    server_crt, server_key = write_pem(tmp_path / "server", *issue(ca_key, ca_cert, "127.0.0.1", server=True))
    right_key, right_cert = issue(ca_key, ca_cert, "mtls-agent")
    right = write_pem(tmp_path / "right", right_key, right_cert)
    wrong = write_pem(tmp_path / "wrong", *issue(ca_key, ca_cert, "mtls-agent"))

    idp = harness.Idp(tmp_path)
    server = harness.McpServer(tmp_path, stateless=True)
    port = harness.free_port()
    resource = f"https://127.0.0.1:{port}/mcp"
    issuer = {"issuer": idp.url, "audiences": [resource], "algorithms": ["RS256"],
              "discovery": True, "cluster": "idp", "typ": "at+jwt"}
    envoy = harness.Envoy(tmp_path, harness.plugin_config([issuer], POLICY, resource), server.port, port=port,
                          template=tls_template(tmp_path, server_crt, server_key, str(ca_crt)),
                          values={"EXTRA_CLUSTERS": harness.cluster_yaml("idp", idp.port)})
    try:
        pem = right_cert.public_bytes(serialization.Encoding.PEM).decode()
        token = token_request(idp, "mtls-agent", resource, {"x-client-cert": urllib.parse.quote(pem)})["access_token"]
        claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
        der = right_cert.public_bytes(serialization.Encoding.DER)
        assert claims["cnf"]["x5t#S256"] == keys.b64url(hashlib.sha256(der).digest())

        def call(cert):
            context = ssl.create_default_context(cafile=str(ca_crt))
            context.load_cert_chain(*cert)
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=15)
            conn.request("POST", "/mcp", body=json.dumps(BODY), headers={
                "authorization": f"Bearer {token}", "content-type": "application/json",
                "mcp-protocol-version": "2025-11-25", "accept": "application/json, text/event-stream"})
            r = conn.getresponse()
            body = r.read()
            conn.close()
            return r.status, body

        status, body = call(right)
        assert status == 200, body
        status, body = call(wrong)
        assert status == 401, body
        assert json.loads(body)["error"] == "invalid_token"
        assert envoy.wait_audit(2)[-1]["reason"] == "certificate_mismatch"
        assert len(server.requests()) == 1
    finally:
        envoy.stop()
        server.stop()
        idp.stop()


# ---- DPoP replays across replicas (dpop.replay: fleet) ------------------------------------------

def jwk_thumbprint(jwk):
    """RFC 7638 (an EC key's required members, sorted, no whitespace)."""
    members = {k: jwk[k] for k in ("crv", "kty", "x", "y")}
    text = json.dumps(members, separators=(",", ":"), sort_keys=True)
    return keys.b64url(hashlib.sha256(text.encode()).digest())


def test_a_proof_used_through_one_replica_is_refused_by_the_other(tmp_path):
    """Two Envoys behind one address share nothing but the rate limit service (limitador on
    Redis). With `dpop.replay: fleet` each proof is spent there once: a proof captured after
    its use through one replica is refused by the other; a fresh one passes on either."""
    from test_limits import RLS_BINARY, rls_cluster  # the fleet's service, as the limits tests run it

    if not RLS_BINARY.exists():
        raise AssertionError(f"{RLS_BINARY} is missing: `make test` builds it (tests/peers/rls)")
    procs = []
    try:
        redis_port = harness.free_port()
        redis = harness.Process(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                                 "--save", "", "--appendonly", "no"], tmp_path / "redis.log")
        procs.append(redis)
        harness.wait_port(redis_port, redis.proc)
        rls_port = harness.free_port()

        def start_rls(limits, log):
            """The rate limit service on `rls_port` with these limits (on the same Redis)."""
            rls = harness.Process([str(RLS_BINARY), f"127.0.0.1:{rls_port}",
                                   f"redis://127.0.0.1:{redis_port}/", json.dumps(limits)],
                                  tmp_path / log)
            procs.append(rls)
            harness.wait_port(rls_port, rls.proc)
            return rls

        window = [{"domain": "mcp-fleet", "limit": "dpop_proof", "max": 1, "seconds": 180}]
        rls = start_rls(window, "rls.log")
        server = harness.McpServer(tmp_path, stateless=True)
        procs.append(server)
        resource = "https://mcp.fleet.example/mcp"
        issuer = keys.Issuer("https://idp.example", resource, algs=("ES256",))
        config = harness.plugin_config(
            [{"issuer": "https://idp.example", "audiences": [resource], "algorithms": ["ES256"],
              "jwks": issuer.jwks()}], POLICY, resource,
            dpop={"algorithms": ["ES256"], "replay": "fleet"},
            rate_limit_service={"cluster": "rls", "domain": "mcp-fleet", "timeout_ms": 500})
        envoys = []
        for i in range(2):
            d = tmp_path / f"envoy{i}"
            d.mkdir()
            envoys.append(harness.Envoy(d, config, server.port,
                                        values={"EXTRA_CLUSTERS": rls_cluster(rls_port)}))
            procs.append(envoys[-1])
        key = DpopKey()
        token = issuer.token("alice", alg="ES256", cnf={"jkt": jwk_thumbprint(key.jwk)})

        def call(envoy, proof):
            headers = {"authorization": f"DPoP {token}", "dpop": proof,
                       "mcp-protocol-version": "2025-11-25",
                       "accept": "application/json, text/event-stream"}
            return httpx2.post(envoy.url, json=BODY, headers=headers, timeout=15)

        proof = key.proof("POST", resource, token)
        assert call(envoys[0], proof).status_code == 200
        replayed = call(envoys[1], proof)
        assert replayed.status_code == 401, replayed.text
        assert replayed.json() == {
            "error": "invalid_dpop_proof",
            "error_description": "the proof was used before (jti), through another replica"}
        # Fresh proofs pass through either replica; the upstream saw exactly the three.
        assert call(envoys[1], key.proof("POST", resource, token)).status_code == 200
        assert call(envoys[0], key.proof("POST", resource, token)).status_code == 200
        assert len(server.requests()) == 3
        record = [r for r in envoys[1].wait_audit(2) if r.get("reason")][0]
        assert (record["decision"], record["reason"]) == ("deny", "invalid_dpop_proof"), record

        # The service gone: a proof cannot be checked against the fleet, so it is not passed.
        rls.stop()
        gone = call(envoys[0], key.proof("POST", resource, token))
        assert gone.status_code == 503, gone.text
        assert len(server.requests()) == 3

        # A service without a dpop_proof limit counts nothing and would pass the same proof
        # through every replica: its answer is not taken as "new".
        rls = start_rls([], "rls-bare.log")
        bare = call(envoys[0], key.proof("POST", resource, token))
        assert bare.status_code == 503, bare.text
        assert "no limit for the descriptor dpop_proof" in bare.json()["error_description"]
        assert len(server.requests()) == 3

        # A service whose dpop_proof limit allows 3 uses per key (written like a policy's limit)
        # would call one proof new three times, through either replica: not a replay check.
        rls.stop()
        loose = [{"domain": "mcp-fleet", "limit": "dpop_proof", "max": 3, "seconds": 180}]
        rls = start_rls(loose, "rls-loose.log")
        captured = key.proof("POST", resource, token)
        answers = [call(envoy, captured) for envoy in envoys]
        assert [a.status_code for a in answers] == [503, 503], [a.text for a in answers]
        assert "allows 3 uses of a proof" in answers[0].json()["error_description"]
        assert len(server.requests()) == 3, "the captured proof reached the upstream"
    finally:
        for p in reversed(procs):
            p.stop()
