//! Bearer token verification (`jwt::Authenticator::verify`), on arbitrary strings.
//!
//! Three issuers: one trusting four public keys (RSA-2048, P-256, P-384, Ed25519) with every
//! algorithm the filter supports; a strict one (same keys, `typ` at+jwt, a required claim, no
//! exp required); a remote one whose keys were never fetched. The private keys were thrown
//! away once the signed seed tokens in corpus/token were made. The signed seeds fail checks
//! made after the signature (expired, wrong audience, not yet valid, no exp, missing claim), so
//! the fuzzer starts from tokens that reach the end of `verify`; rs512_bad_iat is refused
//! earlier, as `bad_signature`, because jwt-compact cannot read its string `iat`.
//!
//! Properties:
//! 1. It never panics, whatever the header, claims, base64 or signature bytes.
//! 2. It never accepts: without a private key no input can carry a valid signature on claims
//!    that also pass the time, audience and required-claim checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_guard::jwt::{Authenticator, Issuer};
use serde_json::{json, Value};

/// The fixed verification time (2025-06-15); the seeds' time claims are set around it.
const NOW: i64 = 1_750_000_000;

fn authenticator() -> Authenticator {
    let jwks = json!({"keys": [
        {"kty": "RSA", "kid": "rsa", "use": "sig", "n": "0iXZqyfakgHVEA-KAIaUQ2Qkf8mp5IiC3lAPU1mODW5R2atNjxWK2_9TbKgXPMRPXIdeZ6bdCiiB4xqYBLWS9ng-jQ-LDGU-FgQxam0jFAiNWdujMxSpkp_cut9ewuXo3VNISH_PDU2Amvc8lReKUhB_GCRFMexod7CJ4I9ZZ-qdrRxxEwrw6DLZ3ejOpPxs7jzRJAkIWT2fBh8ItJp5NfCiHPJixzbgsNcpVsMgF7-5tZRDuIjlh2y870FxBYlLb2RufwWKvYUewwbbLl--kFRugtUfzbuAZJmkX54oS53Q5KqsQXCgA4jV5jJI3fXTeZo9cSG91OB0OEWxJbyK_Q", "e": "AQAB"},
        {"kty": "EC", "kid": "ec", "crv": "P-256", "x": "c8CMoUJWokAQ1QxV9NHd_6esfQq7_1hzn0uNTKDUgJc", "y": "oeG9gOMWCBaO3CC_Hw3CqkaKhg2WMtkMUIiOPRVB4mY"},
        {"kty": "EC", "kid": "p384", "alg": "ES384", "crv": "P-384", "x": "dSNSHrOFpOyS7mi01JVr7cUhb193jmQ4DKalpt1-PY9THE9dK2ByKm7wjBriaEBL", "y": "Hio8nwl4g8YgeiErLH3_0TVcSROFTOyWn31QIRp0nvok4juPv-5DLuGy8cvrCisA"},
        {"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "ra-w49LHhXxzt3dZZ9RM2LHC0bmI32xgkLlx9ueSRQk"}
    ]});
    let configs = [
        json!({
            "issuer": "https://idp.fuzz.test",
            "audiences": ["mcp-guard"],
            "algorithms": ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"],
            "jwks": jwks,
        }),
        json!({
            "issuer": "https://strict.fuzz.test",
            "audiences": ["mcp-guard", "other"],
            "algorithms": ["ES256", "EdDSA"],
            "typ": "at+jwt",
            "required_claims": ["scope"],
            "require_exp": false,
            "jwks": jwks,
        }),
        json!({
            "issuer": "https://remote.fuzz.test",
            "audiences": ["mcp-guard"],
            "jwks_uri": "https://remote.fuzz.test/jwks",
            "cluster": "idp",
        }),
    ];
    let issuers: Vec<Issuer> = configs
        .into_iter()
        .enumerate()
        .map(|(i, c): (usize, Value)| {
            Issuer::from_config(c, &format!("issuers[{i}]")).expect("fuzz issuer config")
        })
        .collect();
    assert_eq!(
        issuers[0].keys().map(|k| k.len()),
        Some(4),
        "every fuzz key must load"
    );
    Authenticator::new(issuers, 60)
}

thread_local! {
    // Built once per process (issuers hold their keys in a RefCell: not Sync, so no static).
    static AUTH: Authenticator = authenticator();
}

fuzz_target!(|data: &[u8]| {
    let token = String::from_utf8_lossy(data);
    if let Ok(identity) = AUTH.with(|auth| auth.verify(&token, NOW)) {
        panic!("accepted a token nobody could sign: {:?}", identity.claims);
    }
});
