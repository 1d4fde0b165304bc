//! Token validation as a caller experiences it: which tokens pass, and the exact reason each
//! bad one is refused.

mod common;

use common::*;
use mcp_guard::jwt::{AuthError, Authenticator, Issuer, MAX_TOKEN_BYTES};
use serde_json::{json, Value};

/// An issuer trusting every test key, with these extra settings merged in.
fn issuer_with(extra: Value) -> Issuer {
    let mut config = json!({
        "issuer": ISSUER,
        "audiences": [RESOURCE, "https://other.example.com/mcp"],
        "algorithms": ["RS256", "PS256", "ES256", "ES384", "EdDSA"],
        "jwks": jwks_all(),
    });
    for (k, v) in extra.as_object().expect("object").clone() {
        config[k] = v;
    }
    Issuer::from_config(config, "issuers[0]").expect("issuer config is valid")
}

fn auth_with(extra: Value, skew: u64) -> Authenticator {
    Authenticator::new(vec![issuer_with(extra)], skew)
}

fn auth() -> Authenticator {
    auth_with(json!({}), 60)
}

fn claims() -> Value {
    claims_for("alice", &["staff"], "mcp:read")
}

fn with_claims(changes: Value) -> Value {
    let mut c = claims();
    for (k, v) in changes.as_object().expect("object").clone() {
        if v.is_null() {
            c.as_object_mut().expect("object").remove(&k);
        } else {
            c[k] = v;
        }
    }
    c
}

fn verify(auth: &Authenticator, token: &str) -> Result<String, AuthError> {
    auth.verify(token, NOW)
        .map(|identity| identity.subject().unwrap_or_default().to_string())
}

// ---- accepted ------------------------------------------------------------------------------

#[test]
fn rs256_token_is_accepted() {
    assert_eq!(
        verify(&auth(), &sign(Signer::Rs256, &claims())),
        Ok("alice".into())
    );
}

#[test]
fn ps256_token_is_accepted() {
    assert_eq!(
        verify(&auth(), &sign(Signer::Ps256, &claims())),
        Ok("alice".into())
    );
}

#[test]
fn es256_token_is_accepted() {
    assert_eq!(
        verify(&auth(), &sign(Signer::Es256, &claims())),
        Ok("alice".into())
    );
}

#[test]
fn es384_token_is_accepted() {
    assert_eq!(
        verify(&auth(), &sign(Signer::Es384, &claims())),
        Ok("alice".into())
    );
}

#[test]
fn eddsa_token_is_accepted() {
    assert_eq!(
        verify(&auth(), &sign(Signer::EdDsa, &claims())),
        Ok("alice".into())
    );
}

#[test]
fn token_without_kid_is_matched_by_algorithm() {
    let token = sign_with_header(Signer::Es256, &json!({ "alg": "ES256" }), &claims());
    assert_eq!(verify(&auth(), &token), Ok("alice".into()));
}

#[test]
fn verified_identity_carries_all_claims() {
    let identity = auth()
        .verify(&sign(Signer::Es256, &claims()), NOW)
        .expect("valid token");
    assert_eq!(identity.issuer(), Some(ISSUER));
    assert_eq!(identity.claim_str("email"), Some("alice@example.com"));
    assert_eq!(identity.claims["groups"], json!(["staff"]));
}

// ---- algorithm attacks ------------------------------------------------------------------------

#[test]
fn alg_none_is_refused() {
    let token = sign(Signer::None, &claims());
    assert_eq!(
        verify(&auth(), &token),
        Err(AuthError::UnsupportedAlgorithm("none".into()))
    );
    // Same with a variant spelling and a dangling signature.
    let header = json!({ "alg": "None", "kid": RSA_KID });
    let token = format!("{}AAAA", sign_with_header(Signer::None, &header, &claims()));
    assert!(matches!(
        verify(&auth(), &token),
        Err(AuthError::UnsupportedAlgorithm(_) | AuthError::Malformed(_))
    ));
}

#[test]
fn hs256_signed_with_the_rsa_public_key_is_refused() {
    let token = sign(Signer::Hs256RsaModulus, &claims());
    assert_eq!(
        verify(&auth(), &token),
        Err(AuthError::UnsupportedAlgorithm("HS256".into()))
    );
    // Also with the JWKS text as secret: the algorithm is never verified.
    let header = json!({ "alg": "HS256", "kid": RSA_KID });
    let token = sign_with_header(Signer::Hs256RsaModulus, &header, &claims());
    assert_eq!(
        verify(&auth(), &token),
        Err(AuthError::UnsupportedAlgorithm("HS256".into()))
    );
}

#[test]
fn algorithm_outside_the_issuer_allow_list_is_refused() {
    let only_rs256 = auth_with(json!({ "algorithms": ["RS256"] }), 60);
    assert_eq!(
        verify(&only_rs256, &sign(Signer::Es256, &claims())),
        Err(AuthError::AlgorithmNotAllowed)
    );
    assert_eq!(
        verify(&only_rs256, &sign(Signer::Ps256, &claims())),
        Err(AuthError::AlgorithmNotAllowed)
    );
    assert_eq!(
        verify(&only_rs256, &sign(Signer::Rs256, &claims())),
        Ok("alice".into())
    );
}

#[test]
fn default_allow_list_is_rs256_and_es256() {
    let defaults = Authenticator::new(
        vec![Issuer::from_config(
            json!({ "issuer": ISSUER, "audiences": [RESOURCE], "jwks": jwks_all() }),
            "issuers[0]",
        )
        .expect("valid")],
        60,
    );
    assert_eq!(
        verify(&defaults, &sign(Signer::Es256, &claims())),
        Ok("alice".into())
    );
    assert_eq!(
        verify(&defaults, &sign(Signer::EdDsa, &claims())),
        Err(AuthError::AlgorithmNotAllowed)
    );
}

#[test]
fn algorithm_not_fitting_the_key_type_is_refused() {
    // RS256 header naming the P-256 key.
    let header = json!({ "alg": "RS256", "kid": P256_KID });
    let token = sign_with_header(Signer::Rs256, &header, &claims());
    assert_eq!(
        verify(&auth(), &token),
        Err(AuthError::UnknownKey { issuer: 0 })
    );
    // ES256 header naming the RSA key.
    let header = json!({ "alg": "ES256", "kid": RSA_KID });
    let token = sign_with_header(Signer::Es256, &header, &claims());
    assert_eq!(
        verify(&auth(), &token),
        Err(AuthError::UnknownKey { issuer: 0 })
    );
    // ES384 header naming the P-256 key.
    let header = json!({ "alg": "ES384", "kid": P256_KID });
    let token = sign_with_header(Signer::Es384, &header, &claims());
    assert_eq!(
        verify(&auth(), &token),
        Err(AuthError::UnknownKey { issuer: 0 })
    );
}

#[test]
fn algorithm_pinned_by_the_jwk_is_enforced() {
    let mut rsa = rsa_public_jwk();
    rsa["alg"] = json!("RS256");
    let auth = Authenticator::new(
        vec![Issuer::from_config(
            json!({
                "issuer": ISSUER, "audiences": [RESOURCE],
                "algorithms": ["RS256", "PS256"], "jwks": { "keys": [rsa] },
            }),
            "issuers[0]",
        )
        .expect("valid")],
        60,
    );
    assert_eq!(
        verify(&auth, &sign(Signer::Rs256, &claims())),
        Ok("alice".into())
    );
    assert_eq!(
        verify(&auth, &sign(Signer::Ps256, &claims())),
        Err(AuthError::UnknownKey { issuer: 0 })
    );
}

#[test]
fn unknown_kid_is_refused() {
    let header = json!({ "alg": "ES256", "kid": "rotated-away" });
    let token = sign_with_header(Signer::Es256, &header, &claims());
    assert_eq!(
        verify(&auth(), &token),
        Err(AuthError::UnknownKey { issuer: 0 })
    );
    assert_eq!(AuthError::UnknownKey { issuer: 0 }.reason(), "unknown_key");
}

#[test]
fn wrong_signature_is_refused() {
    let token = sign(Signer::Es256Other, &claims());
    assert_eq!(verify(&auth(), &token), Err(AuthError::BadSignature));
    // A valid token whose payload was swapped for another.
    let good = sign(Signer::Rs256, &claims());
    let other = sign(Signer::Rs256, &with_claims(json!({ "sub": "root" })));
    let parts: Vec<&str> = good.split('.').collect();
    let other_payload = other.split('.').nth(1).expect("payload");
    let forged = format!("{}.{}.{}", parts[0], other_payload, parts[2]);
    assert_eq!(verify(&auth(), &forged), Err(AuthError::BadSignature));
}

#[test]
fn a_token_altered_after_a_good_one_is_refused_whatever_is_remembered() {
    // The VM keeps recent tokens' digests, slotted by their last bytes: tokens that differ
    // anywhere else, or only in length, must never be taken for the one remembered.
    let auth = auth();
    let good = sign(Signer::Rs256, &claims());
    let other = sign(Signer::Rs256, &with_claims(json!({ "sub": "root" })));
    assert_eq!(verify(&auth, &good), Ok("alice".into()));
    let (head, signature) = good.rsplit_once('.').expect("three parts");
    let other_payload = other.split('.').nth(1).expect("payload");
    let header = head.split('.').next().expect("header");
    let swapped = format!("{header}.{other_payload}.{signature}");
    let mut flipped = good.clone().into_bytes();
    flipped[10] ^= 1;
    let flipped = String::from_utf8(flipped).expect("ascii");
    let longer = format!("A{good}");
    for forged in [&swapped, &flipped, &longer] {
        assert!(verify(&auth, forged).is_err(), "{forged}");
        assert_eq!(verify(&auth, &good), Ok("alice".into()));
    }
    assert_eq!(
        auth.token_digest(&good),
        auth.token_digest(&good.clone()),
        "a repeat gives the same digest"
    );
    use sha2::Digest as _;
    for token in [&good, &flipped, &longer] {
        let sha256: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        assert_eq!(auth.token_digest(token), sha256);
    }
}

#[test]
fn crit_header_is_refused() {
    let header = json!({ "alg": "ES256", "kid": P256_KID, "crit": ["exp"], "exp": 1 });
    let token = sign_with_header(Signer::Es256, &header, &claims());
    assert_eq!(verify(&auth(), &token), Err(AuthError::UnsupportedCritical));
    let header = json!({ "alg": "ES256", "kid": P256_KID, "crit": [] });
    let token = sign_with_header(Signer::Es256, &header, &claims());
    assert_eq!(verify(&auth(), &token), Err(AuthError::UnsupportedCritical));
}

#[test]
fn crit_is_refused_whatever_its_value() {
    // `"crit": null` was read as "no crit" and the token accepted.
    for crit in [json!(null), json!({}), json!("b64"), json!(["b64"])] {
        let header = json!({ "alg": "ES256", "kid": P256_KID, "crit": crit, "b64": false });
        let token = sign_with_header(Signer::Es256, &header, &claims());
        assert_eq!(
            verify(&auth(), &token),
            Err(AuthError::UnsupportedCritical),
            "crit: {crit}"
        );
    }
}

/// An issuer whose JWKS holds the P-256 key and `rsa` (a variant of the RSA key).
fn auth_with_rsa_key(rsa: Value) -> Authenticator {
    let issuer = Issuer::from_config(
        json!({
            "issuer": ISSUER, "audiences": [RESOURCE], "algorithms": ["RS256", "ES256"],
            "jwks": { "keys": [rsa, p256_public_jwk()] },
        }),
        "issuers[0]",
    )
    .expect("valid: the P-256 key is usable");
    Authenticator::new(vec![issuer], 60)
}

#[test]
fn a_key_not_meant_for_verifying_signatures_is_never_used() {
    let rs256 = sign(Signer::Rs256, &claims());
    for (name, value) in [
        // RFC 7517 §4.3: an encryption key (no "verify" among its operations).
        ("key_ops", json!(["encrypt", "wrapKey"])),
        ("key_ops", json!([])),
        ("key_ops", json!("verify")),
        ("key_ops", json!([["verify"]])),
        // Restrictions of another type than the RFC's, formerly read as absent.
        ("use", json!(["enc"])),
        ("use", json!(null)),
        ("alg", json!(["PS256"])),
        ("kid", json!(7)),
    ] {
        let mut rsa = rsa_public_jwk();
        rsa.as_object_mut().expect("object").remove("use");
        rsa[name] = value.clone();
        assert_eq!(
            verify(&auth_with_rsa_key(rsa), &rs256),
            Err(AuthError::UnknownKey { issuer: 0 }),
            "{name}: {value}"
        );
    }
    // The control: a key for verifying (as WebCrypto exports it) is used.
    let mut rsa = rsa_public_jwk();
    rsa["key_ops"] = json!(["verify"]);
    assert_eq!(verify(&auth_with_rsa_key(rsa), &rs256), Ok("alice".into()));
}

#[test]
fn embedded_keys_and_key_urls_are_never_followed() {
    // A token signed by a key that is not trusted, carrying that key in `jwk` and a `jku`.
    let header = json!({
        "alg": "ES256", "kid": P256_KID,
        "jwk": p256_jwk_of(&p256_other_key(), P256_KID),
        "jku": "https://attacker.example/jwks",
    });
    let token = sign_with_header(Signer::Es256Other, &header, &claims());
    assert_eq!(verify(&auth(), &token), Err(AuthError::BadSignature));
}

// ---- typ and required claims ---------------------------------------------------------------

#[test]
fn typ_is_enforced_when_required() {
    let auth = auth_with(json!({ "typ": "at+jwt" }), 60);
    let with_typ = |typ: Option<&str>| {
        let mut header = json!({ "alg": "ES256", "kid": P256_KID });
        if let Some(t) = typ {
            header["typ"] = json!(t);
        }
        verify(&auth, &sign_with_header(Signer::Es256, &header, &claims()))
    };
    assert_eq!(with_typ(Some("at+jwt")), Ok("alice".into()));
    assert_eq!(with_typ(Some("AT+JWT")), Ok("alice".into()));
    assert_eq!(with_typ(Some("application/at+jwt")), Ok("alice".into()));
    assert_eq!(with_typ(Some("JWT")), Err(AuthError::WrongType));
    assert_eq!(with_typ(None), Err(AuthError::WrongType));
    // Without the setting, any typ is fine.
    assert_eq!(
        verify(&auth_with(json!({}), 60), &sign(Signer::Es256, &claims())),
        Ok("alice".into())
    );
}

#[test]
fn a_signed_jwt_of_another_kind_is_not_an_access_token() {
    // Without a required `typ`, a JWT the header names as another kind (a DPoP proof, a
    // logout token, a security event, a signed introspection answer), signed by the issuer
    // and naming the resource, was accepted as an access token.
    let with_typ = |typ: Option<&str>| {
        let mut header = json!({ "alg": "ES256", "kid": P256_KID });
        if let Some(t) = typ {
            header["typ"] = json!(t);
        }
        verify(
            &auth(),
            &sign_with_header(Signer::Es256, &header, &claims()),
        )
    };
    for typ in [
        "dpop+jwt",
        "logout+jwt",
        "secevent+jwt",
        "token-introspection+jwt",
        "application/logout+jwt",
        "Logout+JWT",
    ] {
        assert_eq!(with_typ(Some(typ)), Err(AuthError::WrongType), "{typ}");
    }
    // The controls: what access tokens carry.
    for typ in [
        Some("JWT"),
        Some("jwt"),
        Some("at+jwt"),
        Some("application/at+jwt"),
        None,
    ] {
        assert_eq!(with_typ(typ), Ok("alice".into()), "{typ:?}");
    }
}

#[test]
fn missing_required_claim_is_refused() {
    let auth = auth_with(json!({ "required_claims": ["client_id", "email"] }), 60);
    assert_eq!(
        verify(&auth, &sign(Signer::Es256, &claims())),
        Err(AuthError::MissingClaim("client_id".into()))
    );
    let ok = with_claims(json!({ "client_id": "agent-1" }));
    assert_eq!(verify(&auth, &sign(Signer::Es256, &ok)), Ok("alice".into()));
}

// ---- times ---------------------------------------------------------------------------------

#[test]
fn missing_exp_is_refused_unless_allowed() {
    let no_exp = with_claims(json!({ "exp": null }));
    assert_eq!(
        verify(&auth(), &sign(Signer::Es256, &no_exp)),
        Err(AuthError::MissingExpiry)
    );
    let lenient = auth_with(json!({ "require_exp": false }), 60);
    assert_eq!(
        verify(&lenient, &sign(Signer::Es256, &no_exp)),
        Ok("alice".into())
    );
    // A present exp is still enforced when not required.
    let expired = with_claims(json!({ "exp": NOW - 3600 }));
    assert_eq!(
        verify(&lenient, &sign(Signer::Es256, &expired)),
        Err(AuthError::Expired)
    );
}

#[test]
fn expired_token_is_refused_after_the_skew() {
    let auth = auth();
    let at = |exp: i64| {
        verify(
            &auth,
            &sign(Signer::Es256, &with_claims(json!({ "exp": exp }))),
        )
    };
    assert_eq!(at(NOW - 30), Ok("alice".into()), "within the 60 s skew");
    assert_eq!(at(NOW - 61), Err(AuthError::Expired));
    let strict = auth_with(json!({}), 0);
    assert_eq!(
        verify(
            &strict,
            &sign(Signer::Es256, &with_claims(json!({ "exp": NOW })))
        ),
        Err(AuthError::Expired)
    );
    assert_eq!(
        verify(
            &strict,
            &sign(Signer::Es256, &with_claims(json!({ "exp": NOW + 1 })))
        ),
        Ok("alice".into())
    );
}

#[test]
fn string_exp_is_refused() {
    let token = sign(
        Signer::Es256,
        &with_claims(json!({ "exp": (NOW + 3600).to_string() })),
    );
    assert_eq!(verify(&auth(), &token), Err(AuthError::BadTimeClaim("exp")));
    let token = sign(Signer::Es256, &with_claims(json!({ "nbf": "0" })));
    assert_eq!(verify(&auth(), &token), Err(AuthError::BadTimeClaim("nbf")));
    let token = sign(Signer::Es256, &with_claims(json!({ "iat": true })));
    assert_eq!(verify(&auth(), &token), Err(AuthError::BadTimeClaim("iat")));
}

#[test]
fn far_future_exp_is_not_reported_as_a_bad_signature() {
    // A correctly signed token whose exp lies beyond what a calendar library represents: the
    // signature is fine, so "bad_signature" would send an operator hunting for a key problem.
    let token = sign(Signer::Es256, &with_claims(json!({ "exp": 1.0e15 })));
    assert_ne!(verify(&auth(), &token), Err(AuthError::BadSignature));
}

#[test]
fn nbf_in_the_future_with_and_without_skew() {
    let nbf_in = |secs: i64| with_claims(json!({ "nbf": NOW + secs }));
    let skewed = auth_with(json!({}), 60);
    assert_eq!(
        verify(&skewed, &sign(Signer::Es256, &nbf_in(30))),
        Ok("alice".into())
    );
    assert_eq!(
        verify(&skewed, &sign(Signer::Es256, &nbf_in(120))),
        Err(AuthError::NotYetValid)
    );
    let strict = auth_with(json!({}), 0);
    assert_eq!(
        verify(&strict, &sign(Signer::Es256, &nbf_in(30))),
        Err(AuthError::NotYetValid)
    );
    assert_eq!(
        verify(&strict, &sign(Signer::Es256, &nbf_in(0))),
        Ok("alice".into())
    );
}

// ---- audience and issuer -------------------------------------------------------------------

#[test]
fn audience_as_string_and_as_array() {
    let auth = auth();
    let with_aud = |aud: Value| {
        verify(
            &auth,
            &sign(Signer::Es256, &with_claims(json!({ "aud": aud }))),
        )
    };
    assert_eq!(with_aud(json!(RESOURCE)), Ok("alice".into()));
    assert_eq!(
        with_aud(json!(["https://x.example", RESOURCE])),
        Ok("alice".into())
    );
    assert_eq!(
        with_aud(json!("https://x.example")),
        Err(AuthError::WrongAudience)
    );
    assert_eq!(
        with_aud(json!(["https://x.example"])),
        Err(AuthError::WrongAudience)
    );
    assert_eq!(with_aud(json!([])), Err(AuthError::WrongAudience));
    // Near misses are not matches.
    assert_eq!(
        with_aud(json!(format!("{RESOURCE}/"))),
        Err(AuthError::WrongAudience)
    );
    assert_eq!(
        with_aud(json!("HTTPS://MCP.EXAMPLE.COM/mcp")),
        Err(AuthError::WrongAudience)
    );
    let no_aud = with_claims(json!({ "aud": null }));
    assert_eq!(
        verify(&auth, &sign(Signer::Es256, &no_aud)),
        Err(AuthError::WrongAudience)
    );
}

#[test]
fn unknown_issuer_is_refused() {
    let other = with_claims(json!({ "iss": "https://evil.example.com" }));
    assert_eq!(
        verify(&auth(), &sign(Signer::Es256, &other)),
        Err(AuthError::UnknownIssuer)
    );
    let trailing_slash = with_claims(json!({ "iss": format!("{ISSUER}/") }));
    assert_eq!(
        verify(&auth(), &sign(Signer::Es256, &trailing_slash)),
        Err(AuthError::UnknownIssuer)
    );
    let no_iss = with_claims(json!({ "iss": null }));
    assert_eq!(
        verify(&auth(), &sign(Signer::Es256, &no_iss)),
        Err(AuthError::UnknownIssuer)
    );
}

#[test]
fn each_issuer_uses_only_its_own_keys() {
    // Issuer A trusts the P-256 key; issuer B trusts Ed25519 only. A token claiming B but
    // signed with A's key fails.
    let a = Issuer::from_config(
        json!({ "issuer": ISSUER, "audiences": [RESOURCE], "jwks": { "keys": [p256_public_jwk()] } }),
        "issuers[0]",
    )
    .expect("valid");
    let b = Issuer::from_config(
        json!({
            "issuer": "https://b.example.com", "audiences": [RESOURCE],
            "algorithms": ["ES256", "EdDSA"], "jwks": { "keys": [ed25519_public_jwk()] },
        }),
        "issuers[1]",
    )
    .expect("valid");
    let auth = Authenticator::new(vec![a, b], 60);
    let claims_b = with_claims(json!({ "iss": "https://b.example.com" }));
    assert_eq!(
        verify(&auth, &sign(Signer::Es256, &claims_b)),
        Err(AuthError::UnknownKey { issuer: 1 })
    );
    assert_eq!(
        verify(&auth, &sign(Signer::EdDsa, &claims_b)),
        Ok("alice".into())
    );
}

// ---- shape ---------------------------------------------------------------------------------

#[test]
fn token_over_16_kib_is_refused_before_parsing() {
    let big = with_claims(json!({ "pad": "x".repeat(MAX_TOKEN_BYTES) }));
    let token = sign(Signer::Es256, &big);
    assert!(token.len() > MAX_TOKEN_BYTES);
    assert_eq!(verify(&auth(), &token), Err(AuthError::TooLarge));
    assert_eq!(
        verify(&auth(), &"a".repeat(MAX_TOKEN_BYTES + 1)),
        Err(AuthError::TooLarge)
    );
}

#[test]
fn token_just_under_the_limit_is_accepted() {
    let mut padded = claims();
    let base = sign(Signer::Es256, &padded).len();
    // Base64 grows 4/3: leave room.
    padded["pad"] = json!("x".repeat((MAX_TOKEN_BYTES - base) * 3 / 4 - 16));
    let token = sign(Signer::Es256, &padded);
    assert!(token.len() <= MAX_TOKEN_BYTES, "{}", token.len());
    assert_eq!(verify(&auth(), &token), Ok("alice".into()));
}

#[test]
fn malformed_tokens_are_refused() {
    for bad in [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "....",
        "eyJhbGciOiJFUzI1NiJ9..",
        "!!!.!!!.!!!",
    ] {
        assert!(
            matches!(verify(&auth(), bad), Err(AuthError::Malformed(_))),
            "{bad:?}: {:?}",
            verify(&auth(), bad)
        );
    }
    // A payload that is JSON but not an object.
    let header = b64(br#"{"alg":"ES256","kid":"ec-1"}"#);
    let token = format!("{header}.{}.{}", b64(b"[1,2]"), b64([0u8; 64]));
    assert!(matches!(
        verify(&auth(), &token),
        Err(AuthError::Malformed(_))
    ));
}

#[test]
fn only_the_canonical_encoding_of_a_token_is_accepted() {
    // The same bytes written another way (padding, `+`/`/`, non-zero trailing bits, a
    // trailing dot, whitespace): refused, so one token has one string (cache key, `ath`,
    // introspection key) and the IdP never sees a variant the filter read differently.
    let mut token = sign(Signer::Rs256, &claims());
    // A signature with `-` or `_` in it (some claims make one).
    for n in 0.. {
        if token
            .rsplit('.')
            .next()
            .is_some_and(|s| s.contains(['-', '_']))
        {
            break;
        }
        token = sign(Signer::Rs256, &with_claims(json!({ "n": n })));
    }
    assert_eq!(verify(&auth(), &token).map(|_| ()), Ok(()));
    let (input, signature) = token.rsplit_once('.').expect("three parts");
    // 256 bytes in 342 characters: the last one carries 4 unused bits; set the lowest.
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let last = signature.bytes().last().expect("signature");
    let value = ALPHABET.iter().position(|c| *c == last).expect("base64url");
    let sibling = char::from(ALPHABET[value ^ 1]);
    let trailing_bits = format!("{}{sibling}", &token[..token.len() - 1]);
    let variants = [
        format!("{token}="),
        format!("{input}.{signature}=="),
        token.replace('-', "+").replace('_', "/"),
        trailing_bits,
        format!("{token}."),
        format!(".{token}"),
        format!("{input} .{signature}"),
        format!("{input}.{signature}\n"),
    ];
    for variant in variants {
        assert!(
            matches!(verify(&auth(), &variant), Err(AuthError::Malformed(_))),
            "{variant:?}: {:?}",
            verify(&auth(), &variant)
        );
    }
}

#[test]
fn other_jws_forms_and_header_tricks_are_refused() {
    let claims = claims().to_string();
    // JWS JSON serialization (flattened) as the bearer value.
    let compact = sign(Signer::Es256, &with_claims(json!({})));
    let mut parts = compact.split('.');
    let (protected, payload, signature) = (parts.next(), parts.next(), parts.next());
    let flattened = json!({ "protected": protected, "payload": payload, "signature": signature });
    assert!(matches!(
        verify(&auth(), &flattened.to_string()),
        Err(AuthError::Malformed(_))
    ));
    for (header, why) in [
        // A nested JWT (`cty: JWT`): the payload would be another token, not claims.
        (r#"{"alg":"ES256","kid":"ec-1","cty":"JWT"}"#, "nested"),
        // Two `alg`s, two `kid`s, two `typ`s: which one did the signer mean?
        (r#"{"alg":"ES256","alg":"none","kid":"ec-1"}"#, "two alg"),
        (r#"{"alg":"ES256","kid":"ec-1","kid":"rsa-1"}"#, "two kid"),
        (
            r#"{"alg":"ES256","kid":"ec-1","typ":"JWT","typ":"at+jwt"}"#,
            "two typ",
        ),
        ("\u{feff}{\"alg\":\"ES256\",\"kid\":\"ec-1\"}", "BOM"),
        (r#"{"alg":"ES256","kid":"ec-1"} x"#, "trailing garbage"),
    ] {
        let input = format!("{}.{}", b64(header), b64(&claims));
        let token = format!("{input}.{}", b64(Signer::Es256.signature(input.as_bytes())));
        assert!(
            matches!(verify(&auth(), &token), Err(AuthError::Malformed(_))),
            "{why}: {:?}",
            verify(&auth(), &token)
        );
    }
    // `b64: false` (RFC 7797) without `crit`: not understood, so the payload is read as the
    // base64url it is in every signed token: a signature over the raw payload does not verify.
    let header = b64(r#"{"alg":"ES256","kid":"ec-1","b64":false}"#);
    let raw_input = format!("{header}.{claims}");
    let token = format!(
        "{header}.{}.{}",
        b64(&claims),
        b64(Signer::Es256.signature(raw_input.as_bytes()))
    );
    assert_eq!(verify(&auth(), &token), Err(AuthError::BadSignature));
}

#[test]
fn an_es256_signature_in_der_is_refused() {
    use p256::ecdsa::signature::Signer as _;
    let token = sign(Signer::Es256, &claims());
    let (input, _) = token.rsplit_once('.').expect("three parts");
    let der: p256::ecdsa::Signature = p256_key().sign(input.as_bytes());
    let token = format!("{input}.{}", b64(der.to_der().as_bytes()));
    assert_eq!(verify(&auth(), &token), Err(AuthError::BadSignature));
}

#[test]
fn a_second_ecdsa_signature_for_the_same_token_is_the_same_token() {
    // ECDSA is malleable: (r, n - s) verifies wherever (r, s) does (the host, BoringSSL,
    // and the Wasm path accept both; IdPs sign with either). Whoever holds a token can make a
    // second string of it: it is the same token for everything that decides, as revocation
    // goes by `jti` and `sub`, never by the token's string.
    let claims = with_claims(json!({ "jti": "j-1" }));
    let token = sign(Signer::Es256, &claims);
    let (input, signature) = token.rsplit_once('.').expect("three parts");
    let bytes =
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, signature)
            .expect("base64url");
    let sig = p256::ecdsa::Signature::from_slice(&bytes).expect("r || s");
    let (r, s) = sig.split_scalars();
    let flipped = p256::ecdsa::Signature::from_scalars(r.to_bytes(), (-*s).to_bytes())
        .expect("n - s is a valid s");
    let twin = format!("{input}.{}", b64(flipped.to_bytes()));
    assert_ne!(twin, token);
    assert_eq!(verify(&auth(), &twin), Ok("alice".into()));
    let revoked = auth_with(
        json!({ "revocation": { "inline": { "revoked_jti": ["j-1"] } } }),
        60,
    );
    for t in [&token, &twin] {
        assert_eq!(
            verify(&revoked, t).map_err(|e| e.reason()),
            Err("token_revoked")
        );
    }
}

#[test]
fn reasons_are_stable_words() {
    assert_eq!(AuthError::Expired.reason(), "expired");
    assert_eq!(AuthError::WrongAudience.reason(), "wrong_audience");
    assert_eq!(AuthError::UnknownIssuer.reason(), "unknown_issuer");
    assert_eq!(AuthError::NoKeys { issuer: 0 }.reason(), "keys_unavailable");
    assert_eq!(AuthError::UnsupportedCritical.reason(), "unsupported_crit");
}

// ---- the verified-token cache ----------------------------------------------------------------

#[test]
fn a_cached_token_still_expires() {
    let auth = auth();
    let token = sign(Signer::Es256, &claims());
    assert!(auth.verify(&token, NOW).is_ok());
    assert!(auth.verify(&token, NOW).is_ok(), "served from the cache");
    let exp = claims()["exp"].as_i64().expect("exp");
    assert_eq!(auth.verify(&token, exp + 3600), Err(AuthError::Expired));
}

#[test]
fn a_cached_token_is_verified_again_when_the_keys_change() {
    let auth = auth();
    let token = sign(Signer::Es256, &claims());
    assert!(auth.verify(&token, NOW).is_ok());
    // The issuer rotates to a key set without the key that signed the token.
    let only_other = serde_json::json!({ "keys": [p256_jwk_of(&p256_other_key(), "other")] });
    let keys = mcp_guard::jwt::KeySet::from_json(&only_other).expect("jwks");
    auth.issuers()[0].install_keys(keys);
    assert!(matches!(
        auth.verify(&token, NOW),
        Err(AuthError::UnknownKey { .. } | AuthError::BadSignature)
    ));
}

#[test]
fn a_forged_token_is_never_served_from_the_cache() {
    let auth = auth();
    let good = sign(Signer::Es256, &claims());
    assert!(auth.verify(&good, NOW).is_ok());
    // Same header and claims, another signature: a different token, verified on its own.
    let forged = format!(
        "{}.AAAA",
        good.rsplit_once('.').map(|(a, _)| a).unwrap_or_default()
    );
    assert_eq!(auth.verify(&forged, NOW), Err(AuthError::BadSignature));
    // And a valid ES256 signature over other claims, spliced onto the cached token's input.
    let other = sign(Signer::Es256, &with_claims(json!({ "sub": "root" })));
    let (input, _) = good.rsplit_once('.').unwrap_or_default();
    let (_, signature) = other.rsplit_once('.').unwrap_or_default();
    let spliced = format!("{input}.{signature}");
    assert_eq!(auth.verify(&spliced, NOW), Err(AuthError::BadSignature));
    // The cached token itself is still accepted.
    assert_eq!(verify(&auth, &good), Ok("alice".into()));
}

// ---- sender-constrained tokens and ambiguous claims --------------------------------------------

#[test]
fn duplicate_and_colliding_claims_are_refused() {
    let body = |extra: &str| {
        let c = claims();
        let text = c.to_string();
        format!("{},{extra}}}", text.trim_end_matches('}'))
    };
    // A second sub, a second aud, a case variant of groups, a claim name with NUL.
    for extra in [
        r#""sub":"root""#,
        r#""aud":"https://mcp.example.com/mcp""#,
        r#""Groups":["admins"]"#,
        r#""sub\u0000":"root""#,
    ] {
        let token = sign_raw_payload(Signer::Rs256, &body(extra));
        assert!(
            matches!(verify(&auth(), &token), Err(AuthError::Malformed(_))),
            "{extra}: {:?}",
            verify(&auth(), &token)
        );
    }
    // The same payload without the extra claim verifies.
    let token = sign_raw_payload(Signer::Rs256, &claims().to_string());
    assert_eq!(verify(&auth(), &token), Ok("alice".into()));
}

/// A token whose payload is exactly these bytes, properly signed.
fn sign_raw_payload(signer: Signer, payload: &str) -> String {
    let input = format!(
        "{}.{}",
        b64(serde_json::to_vec(&signer.header()).expect("header")),
        b64(payload)
    );
    format!("{input}.{}", b64(signer.signature(input.as_bytes())))
}

// ---- signatures checked by the host (Envoy's verify_signature) -------------------------------

mod host_signatures {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    use jwt_compact::alg::{Rsa, RsaPublicKey};
    use jwt_compact::{Algorithm, AlgorithmSignature};
    use mcp_guard::crypto::{SignatureHost, Signatures, VerifyRequest};
    use p256::ecdsa::signature::Verifier as _;
    use p256::pkcs8::DecodePublicKey as _;

    /// What the fake host does with a check.
    #[derive(Debug, Clone, Copy)]
    enum Answer {
        /// Verify the DER key and DER signature it was given, with independent decoders (as
        /// BoringSSL would): proves what the filter hands over is right.
        Verify,
        /// Decline (as an Envoy without the function): the filter must verify in Wasm.
        Decline,
        /// Say "valid" to everything: shows the host's verdict is the one used.
        AlwaysValid,
    }

    #[derive(Debug)]
    struct FakeHost {
        answer: Answer,
        seen: RefCell<Vec<String>>,
    }

    fn verify_der(request: &VerifyRequest<'_>) -> bool {
        if let Ok(key) = RsaPublicKey::from_public_key_der(request.public_key_der) {
            let alg = match request.hash {
                "sha256" => Rsa::rs256(),
                "sha384" => Rsa::rs384(),
                _ => Rsa::rs512(),
            };
            return <Rsa as Algorithm>::Signature::try_from_slice(request.signature)
                .is_ok_and(|sig| alg.verify_signature(&sig, &key, request.text));
        }
        if let Ok(key) = p256::PublicKey::from_public_key_der(request.public_key_der) {
            assert_eq!(request.hash, "sha256");
            let key = p256::ecdsa::VerifyingKey::from(key);
            return p256::ecdsa::Signature::from_der(request.signature)
                .is_ok_and(|sig| key.verify(request.text, &sig).is_ok());
        }
        if let Ok(key) = p384::PublicKey::from_public_key_der(request.public_key_der) {
            assert_eq!(request.hash, "sha384");
            let key = p384::ecdsa::VerifyingKey::from(key);
            return p384::ecdsa::Signature::from_der(request.signature)
                .is_ok_and(|sig| key.verify(request.text, &sig).is_ok());
        }
        panic!("the host was given a key that is not DER SubjectPublicKeyInfo");
    }

    impl SignatureHost for FakeHost {
        fn verify(&self, request: &VerifyRequest<'_>) -> Option<bool> {
            self.seen.borrow_mut().push(request.hash.to_string());
            match self.answer {
                Answer::Verify => Some(verify_der(request)),
                Answer::Decline => None,
                Answer::AlwaysValid => Some(true),
            }
        }
    }

    fn with_host(answer: Answer) -> (Authenticator, Rc<FakeHost>) {
        let host = Rc::new(FakeHost {
            answer,
            seen: RefCell::new(Vec::new()),
        });
        let mut auth = auth();
        auth.set_signature_host(Signatures::new(host.clone()));
        (auth, host)
    }

    fn forged(token: &str) -> String {
        let (input, _) = token.rsplit_once('.').unwrap_or_default();
        let other = sign(Signer::Rs256, &with_claims(json!({ "sub": "root" })));
        let (_, signature) = other.rsplit_once('.').unwrap_or_default();
        format!("{input}.{signature}")
    }

    #[test]
    fn rsa_and_ecdsa_go_to_the_host_in_the_encoding_it_takes() {
        for (signer, hash) in [
            (Signer::Rs256, "sha256"),
            (Signer::Es256, "sha256"),
            (Signer::Es384, "sha384"),
        ] {
            let (auth, host) = with_host(Answer::Verify);
            let token = sign(signer, &claims());
            assert_eq!(verify(&auth, &token), Ok("alice".into()), "{signer:?}");
            assert_eq!(*host.seen.borrow(), vec![hash.to_string()], "{signer:?}");
            // A signature over other claims does not verify at the host either.
            let (input, _) = token.rsplit_once('.').unwrap_or_default();
            let other = sign(signer, &with_claims(json!({ "sub": "root" })));
            let (_, signature) = other.rsplit_once('.').unwrap_or_default();
            let spliced = format!("{input}.{signature}");
            assert_eq!(
                verify(&auth, &spliced),
                Err(AuthError::BadSignature),
                "{signer:?}"
            );
        }
    }

    #[test]
    fn the_hosts_verdict_is_the_one_used() {
        let token = sign(Signer::Rs256, &claims());
        let (auth, _) = with_host(Answer::AlwaysValid);
        assert!(
            verify(&auth, &forged(&token)).is_ok(),
            "a (broken) host that says valid is believed: the check really happened there"
        );
        // Wrong-length ECDSA signatures never reach the host.
        let (auth, host) = with_host(Answer::AlwaysValid);
        let es = sign(Signer::Es256, &claims());
        let (input, _) = es.rsplit_once('.').unwrap_or_default();
        assert_eq!(
            verify(&auth, &format!("{input}.AAAA")),
            Err(AuthError::BadSignature)
        );
        assert!(host.seen.borrow().is_empty());
    }

    #[test]
    fn a_declining_host_leaves_the_check_to_wasm() {
        let (auth, host) = with_host(Answer::Decline);
        let token = sign(Signer::Rs256, &claims());
        assert_eq!(verify(&auth, &token), Ok("alice".into()));
        assert_eq!(verify(&auth, &forged(&token)), Err(AuthError::BadSignature));
        assert_eq!(host.seen.borrow().len(), 2);
    }

    #[test]
    fn pss_and_eddsa_stay_in_wasm() {
        let (auth, host) = with_host(Answer::AlwaysValid);
        for signer in [Signer::Ps256, Signer::EdDsa] {
            let token = sign(signer, &claims());
            assert_eq!(verify(&auth, &token), Ok("alice".into()));
            let (input, _) = token.rsplit_once('.').unwrap_or_default();
            let other = sign(signer, &with_claims(json!({ "sub": "root" })));
            let (_, signature) = other.rsplit_once('.').unwrap_or_default();
            assert_eq!(
                verify(&auth, &format!("{input}.{signature}")),
                Err(AuthError::BadSignature),
                "{signer:?} is checked in Wasm, whatever the host would say"
            );
        }
        assert!(host.seen.borrow().is_empty());
    }
}

// ---- the verified-token cache shared by the worker VMs -----------------------------------------

mod shared_cache {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    use mcp_guard::crypto::{SignatureHost, Signatures, VerifyRequest};

    /// Counts the signature checks of one VM (and lets the Rust crates do them).
    #[derive(Debug, Default)]
    struct Checks(Cell<usize>);

    impl SignatureHost for Checks {
        fn verify(&self, _: &VerifyRequest<'_>) -> Option<bool> {
            self.0.set(self.0.get() + 1);
            None
        }
    }

    /// A worker VM: its authenticator and how many signatures it checked.
    fn vm(extra: Value) -> (Authenticator, Rc<Checks>) {
        let checks = Rc::new(Checks::default());
        let mut auth = auth_with(extra, 60);
        auth.set_signature_host(Signatures::new(checks.clone()));
        (auth, checks)
    }

    fn host_at(shared: &Shared, now: i64) -> MockHost {
        let mut host = MockHost::default().with_shared(shared);
        host.now_ms = u64::try_from(now).unwrap() * 1000;
        host
    }

    fn rs256(changes: Value) -> String {
        sign(Signer::Rs256, &with_claims(changes))
    }

    #[test]
    fn a_token_one_vm_verified_is_not_verified_again_by_another() {
        let shared = Shared::default();
        let (a, a_checks) = vm(json!({}));
        let (b, b_checks) = vm(json!({}));
        let token = rs256(json!({}));
        let who = |auth: &Authenticator| {
            auth.authenticate(&token, &mut host_at(&shared, NOW))
                .map(|i| i.subject().unwrap_or_default().to_string())
        };
        assert_eq!(who(&a), Ok("alice".into()));
        assert_eq!(who(&b), Ok("alice".into()));
        assert_eq!(who(&b), Ok("alice".into()));
        assert_eq!((a_checks.0.get(), b_checks.0.get()), (1, 0));
        // Without shared data (another process, a restart), B verifies it itself.
        let (c, c_checks) = vm(json!({}));
        let mut alone = host_at(&Shared::default(), NOW);
        assert!(c.authenticate(&token, &mut alone).is_ok());
        assert_eq!(c_checks.0.get(), 1);
    }

    #[test]
    fn a_shared_entry_still_expires_and_is_still_revoked() {
        let shared = Shared::default();
        let (a, _) = vm(json!({}));
        let token = rs256(json!({ "jti": "t-1" }));
        assert!(a.authenticate(&token, &mut host_at(&shared, NOW)).is_ok());
        let exp = claims()["exp"].as_i64().unwrap();
        let (b, _) = vm(json!({}));
        assert_eq!(
            b.authenticate(&token, &mut host_at(&shared, exp + 3600)),
            Err(AuthError::Expired)
        );
        let (revoking, checks) =
            vm(json!({ "revocation": { "inline": { "revoked_jti": ["t-1"] } } }));
        assert_eq!(
            revoking.authenticate(&token, &mut host_at(&shared, NOW)),
            Err(AuthError::Revoked(mcp_guard::revocation::Revoked::Jti))
        );
        assert_eq!(
            checks.0.get(),
            0,
            "refused from the shared entry, without a new check"
        );
    }

    #[test]
    fn a_shared_entry_needs_the_key_that_verified_it() {
        let shared = Shared::default();
        let (a, _) = vm(json!({}));
        let token = sign(Signer::Es256, &claims());
        assert!(a.authenticate(&token, &mut host_at(&shared, NOW)).is_ok());
        // B's issuer has rotated to a key set without that key.
        let only_other = json!({ "keys": [p256_jwk_of(&p256_other_key(), "other")] });
        let (b, _) = vm(json!({ "jwks": only_other }));
        assert!(matches!(
            b.authenticate(&token, &mut host_at(&shared, NOW)),
            Err(AuthError::UnknownKey { .. } | AuthError::BadSignature)
        ));
    }

    #[test]
    fn a_shared_entry_meets_this_vms_issuer_settings() {
        let shared = Shared::default();
        let (a, _) = vm(json!({}));
        let token = rs256(json!({ "aud": "https://other.example.com/mcp" }));
        assert!(a.authenticate(&token, &mut host_at(&shared, NOW)).is_ok());
        // A VM with a newer configuration: another audience, RS256 no longer allowed.
        let (b, _) = vm(json!({ "audiences": [RESOURCE] }));
        assert_eq!(
            b.authenticate(&token, &mut host_at(&shared, NOW)),
            Err(AuthError::WrongAudience)
        );
        let (c, _) = vm(json!({ "algorithms": ["ES256"] }));
        assert_eq!(
            c.authenticate(&token, &mut host_at(&shared, NOW)),
            Err(AuthError::AlgorithmNotAllowed)
        );
    }

    /// Shared data outlives an in-place module update: an entry an earlier module wrote, under
    /// fewer checks of the token's header (before `"crit": null` was refused), is not taken as
    /// a verified signature; the token is verified again. An entry of this version is.
    #[test]
    fn an_entry_an_earlier_module_wrote_is_not_adopted() {
        for (earlier, checks_by_b) in [(false, 0), (true, 1)] {
            let shared = Shared::default();
            let (a, _) = vm(json!({}));
            // ES256: a check the host is asked for, so counted.
            let token = sign(Signer::Es256, &claims_for("old", &[], ""));
            assert!(a.authenticate(&token, &mut host_at(&shared, NOW)).is_ok());
            if earlier {
                let mut store = shared.borrow_mut();
                let entries: Vec<(String, Vec<u8>)> = store
                    .iter()
                    .filter(|(k, _)| k.starts_with("mcp-guard:token:"))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                assert_eq!(entries.len(), 1);
                for (key, bytes) in entries {
                    let mut entry: Value = serde_json::from_slice(&bytes).unwrap();
                    assert_eq!(entry["v"], 1);
                    entry.as_object_mut().unwrap().remove("v");
                    store.insert(key, serde_json::to_vec(&entry).unwrap());
                }
            }
            let (b, checked) = vm(json!({}));
            assert!(b.authenticate(&token, &mut host_at(&shared, NOW)).is_ok());
            assert_eq!(
                checked.0.get(),
                checks_by_b,
                "earlier module's entry: {earlier}"
            );
        }
    }

    #[test]
    fn a_token_with_large_claims_is_not_shared_but_still_accepted() {
        let shared = Shared::default();
        let (a, _) = vm(json!({}));
        let big = "g".repeat(mcp_guard::token_cache::MAX_ENTRY_BYTES);
        let token = sign(Signer::EdDsa, &claims_for("big", &[big.as_str()], ""));
        assert!(a.authenticate(&token, &mut host_at(&shared, NOW)).is_ok());
        assert!(a.authenticate(&token, &mut host_at(&shared, NOW)).is_ok());
        let entries: Vec<usize> = shared
            .borrow()
            .iter()
            .filter(|(k, _)| k.starts_with("mcp-guard:token:"))
            .map(|(_, v)| v.len())
            .collect();
        assert!(entries.is_empty(), "shared entries of {entries:?} bytes");
    }

    #[test]
    fn shared_data_stays_bounded() {
        let shared = Shared::default();
        let (a, _) = vm(json!({}));
        for i in 0..300 {
            let token = sign(Signer::EdDsa, &claims_for(&format!("u{i}"), &[], ""));
            assert!(a.authenticate(&token, &mut host_at(&shared, NOW)).is_ok());
        }
        let slots = shared
            .borrow()
            .iter()
            .filter(|(k, _)| k.starts_with("mcp-guard:token:"))
            .count();
        assert!(slots <= usize::from(mcp_guard::token_cache::SLOTS) && slots > 250);
        assert!(
            shared
                .borrow()
                .iter()
                .all(|(_, v)| !String::from_utf8_lossy(v).contains("eyJ")),
            "entries hold digests and claims, never a token"
        );
    }
}
