"""A demo identity provider's key set: signing keys, their JWKS, and tokens signed with them.

Real IdPs are tested with oidc-provider (tests/peers/idp); this module makes the keys for the
demo and for tests that need hand-crafted tokens (expired, wrong audience, unknown key, …).
"""

import base64
import json
import time
import uuid

import jwt as pyjwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int(n: int) -> str:
    return b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))


class SigningKey:
    def __init__(self, alg: str, kid: str | None = None):
        self.alg = alg
        self.kid = kid or f"{alg.lower()}-{uuid.uuid4().hex[:8]}"
        if alg.startswith(("RS", "PS")):
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif alg == "ES256":
            self.private = ec.generate_private_key(ec.SECP256R1())
        elif alg == "ES384":
            self.private = ec.generate_private_key(ec.SECP384R1())
        elif alg == "EdDSA":
            self.private = ed25519.Ed25519PrivateKey.generate()
        else:
            raise ValueError(alg)

    def jwk(self) -> dict:
        pub = self.private.public_key()
        if isinstance(pub, rsa.RSAPublicKey):
            nums = pub.public_numbers()
            key = {"kty": "RSA", "n": _int(nums.n), "e": _int(nums.e)}
        elif isinstance(pub, ec.EllipticCurvePublicKey):
            nums = pub.public_numbers()
            size = (pub.curve.key_size + 7) // 8
            crv = {256: "P-256", 384: "P-384"}[pub.curve.key_size]
            key = {"kty": "EC", "crv": crv,
                   "x": b64url(nums.x.to_bytes(size, "big")),
                   "y": b64url(nums.y.to_bytes(size, "big"))}
        else:
            raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            key = {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}
        key.update({"kid": self.kid, "use": "sig", "alg": self.alg})
        return key

    def pem(self) -> bytes:
        return self.private.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption())

    def sign(self, claims: dict, headers: dict | None = None) -> str:
        h = {"kid": self.kid}
        h.update(headers or {})
        return pyjwt.encode(claims, self.pem(), algorithm=self.alg, headers=h)


class Issuer:
    """One issuer with its keys. `token()` fills iss/aud/exp/iat unless overridden."""

    def __init__(self, issuer: str, audience: str, algs=("RS256", "ES256")):
        self.issuer = issuer
        self.audience = audience
        self.keys = [SigningKey(a) for a in algs]

    def jwks(self) -> dict:
        return {"keys": [k.jwk() for k in self.keys]}

    def key(self, alg: str = "RS256") -> SigningKey:
        return next(k for k in self.keys if k.alg == alg)

    def claims(self, sub: str, ttl: int = 3600, **extra) -> dict:
        now = int(time.time())
        c = {"iss": self.issuer, "aud": self.audience, "sub": sub, "iat": now, "exp": now + ttl}
        c.update(extra)
        return {k: v for k, v in c.items() if v is not None}

    def token(self, sub: str, alg: str = "RS256", ttl: int = 3600, headers=None, **extra) -> str:
        return self.key(alg).sign(self.claims(sub, ttl, **extra), headers)


def unsigned(claims: dict, header: dict) -> str:
    """A token with an arbitrary header and no valid signature (for attack tests)."""
    return ".".join([b64url(json.dumps(header).encode()), b64url(json.dumps(claims).encode()), ""])
