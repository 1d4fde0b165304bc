//! Bearer token validation: JWKS keys, signature, `iss`, `aud`, `exp`, `nbf`.
//!
//! A token is matched to its issuer by `iss` before any key is tried; the algorithm must be in
//! that issuer's allow-list and fit the key's type, so an RSA public key can never be used as an
//! HMAC secret. Header URLs (`jku`, `x5u`) and embedded keys (`jwk`, `x5c`) are never followed.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jwt_compact::alg::{Ed25519, Es256, Rsa, RsaPublicKey};
use jwt_compact::jwk::JsonWebKey;
use jwt_compact::{AlgorithmExt, Empty, UntrustedToken};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::{typed, ConfigError};

/// Tokens larger than this are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The signature algorithms the filter verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    EdDsa,
}

impl Alg {
    pub fn parse(name: &str) -> Option<Alg> {
        Some(match name {
            "RS256" => Alg::Rs256,
            "RS384" => Alg::Rs384,
            "RS512" => Alg::Rs512,
            "PS256" => Alg::Ps256,
            "PS384" => Alg::Ps384,
            "PS512" => Alg::Ps512,
            "ES256" => Alg::Es256,
            "EdDSA" => Alg::EdDsa,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Rs384 => "RS384",
            Alg::Rs512 => "RS512",
            Alg::Ps256 => "PS256",
            Alg::Ps384 => "PS384",
            Alg::Ps512 => "PS512",
            Alg::Es256 => "ES256",
            Alg::EdDsa => "EdDSA",
        }
    }

    fn rsa(self) -> Option<Rsa> {
        Some(match self {
            Alg::Rs256 => Rsa::rs256(),
            Alg::Rs384 => Rsa::rs384(),
            Alg::Rs512 => Rsa::rs512(),
            Alg::Ps256 => Rsa::ps256(),
            Alg::Ps384 => Rsa::ps384(),
            Alg::Ps512 => Rsa::ps512(),
            Alg::Es256 | Alg::EdDsa => return None,
        })
    }
}

const DEFAULT_ALGS: &[Alg] = &[Alg::Rs256, Alg::Es256];

/// A public key from a JWKS.
#[derive(Debug, Clone)]
enum PublicKey {
    Rsa(Box<RsaPublicKey>),
    P256(p256::ecdsa::VerifyingKey),
    Ed25519(ed25519_compact::PublicKey),
}

#[derive(Debug, Clone)]
struct Jwk {
    kid: Option<String>,
    /// The JWK's own `alg`, when it pins one.
    alg: Option<String>,
    key: PublicKey,
}

impl Jwk {
    /// Whether this key may verify a token signed with `alg`.
    fn fits(&self, alg: Alg) -> bool {
        if let Some(pinned) = &self.alg {
            if pinned != alg.name() {
                return false;
            }
        }
        matches!(
            (&self.key, alg),
            (
                PublicKey::Rsa(_),
                Alg::Rs256 | Alg::Rs384 | Alg::Rs512 | Alg::Ps256 | Alg::Ps384 | Alg::Ps512
            ) | (PublicKey::P256(_), Alg::Es256)
                | (PublicKey::Ed25519(_), Alg::EdDsa)
        )
    }
}

/// A set of verification keys (the `keys` of a JWKS document).
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<Jwk>,
}

impl KeySet {
    /// Parses a JWKS document. Keys the filter cannot use for verification (private parts
    /// absent is fine; symmetric keys, `use: enc`, unknown curves) are skipped, and a set with
    /// no usable key at all is an error.
    pub fn from_json(value: &Value) -> Result<KeySet, String> {
        let keys = value
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("a JWKS must be an object with a \"keys\" array")?;
        let mut out = Vec::new();
        let mut skipped = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            match parse_jwk(key) {
                Ok(Some(jwk)) => out.push(jwk),
                Ok(None) => {}
                Err(e) => skipped.push(format!("keys[{i}]: {e}")),
            }
        }
        if out.is_empty() {
            let why = if skipped.is_empty() {
                String::from("no signature verification keys")
            } else {
                skipped.join("; ")
            };
            return Err(format!("the JWKS has no usable key ({why})"));
        }
        Ok(KeySet { keys: out })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Parses one JWK. `Ok(None)` means "not a signature key, ignore it".
fn parse_jwk(value: &Value) -> Result<Option<Jwk>, String> {
    let obj = value.as_object().ok_or("a JWK must be an object")?;
    let text = |name: &str| obj.get(name).and_then(Value::as_str).map(str::to_string);
    if text("use").as_deref().is_some_and(|u| u != "sig") {
        return Ok(None);
    }
    let kty = text("kty").ok_or("missing \"kty\"")?;
    if kty == "oct" {
        // Symmetric keys are never accepted: they would allow HS/RS confusion.
        return Ok(None);
    }
    // jwt-compact's JWK type: parse only the public parts we need.
    let jwk: JsonWebKey<'_> =
        serde_json::from_value(value.clone()).map_err(|e| format!("invalid {kty} key: {e}"))?;
    let key = match (&jwk, kty.as_str()) {
        (JsonWebKey::Rsa { modulus, .. }, "RSA") => {
            let bits = bit_length(modulus);
            let key = RsaPublicKey::try_from(&jwk).map_err(|e| format!("invalid RSA key: {e}"))?;
            if bits < 2048 {
                return Err(format!("RSA key of {bits} bits is too short (2048 at least)"));
            }
            PublicKey::Rsa(Box::new(key))
        }
        (JsonWebKey::EllipticCurve { curve, .. }, "EC") if curve == "P-256" => PublicKey::P256(
            p256::ecdsa::VerifyingKey::try_from(&jwk).map_err(|e| format!("invalid P-256 key: {e}"))?,
        ),
        (JsonWebKey::KeyPair { curve, .. }, "OKP") if curve == "Ed25519" => PublicKey::Ed25519(
            ed25519_compact::PublicKey::try_from(&jwk)
                .map_err(|e| format!("invalid Ed25519 key: {e}"))?,
        ),
        _ => return Ok(None),
    };
    Ok(Some(Jwk {
        kid: text("kid"),
        alg: text("alg"),
        key,
    }))
}

/// Bit length of a big-endian unsigned integer.
fn bit_length(bytes: &[u8]) -> usize {
    match bytes.iter().position(|b| *b != 0) {
        Some(first) => {
            let lead = bytes.get(first).map_or(0, |b| b.leading_zeros() as usize);
            (bytes.len() - first) * 8 - lead
        }
        None => 0,
    }
}

/// One trusted token issuer.
#[derive(Debug)]
pub struct Issuer {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Alg>,
    pub keys: KeySet,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIssuer {
    issuer: String,
    audiences: Vec<String>,
    #[serde(default)]
    algorithms: Option<Vec<String>>,
    jwks: Value,
}

impl Issuer {
    pub fn from_config(value: Value, field: &str) -> Result<Issuer, ConfigError> {
        let raw: RawIssuer = typed(value, field)?;
        if raw.issuer.is_empty() {
            return Err(ConfigError::new(format!("{field}.issuer"), "must not be empty"));
        }
        if raw.audiences.is_empty() || raw.audiences.iter().any(String::is_empty) {
            return Err(ConfigError::new(
                format!("{field}.audiences"),
                "list at least one non-empty audience (the resource this filter protects)",
            ));
        }
        let algorithms = match raw.algorithms {
            None => DEFAULT_ALGS.to_vec(),
            Some(names) if names.is_empty() => {
                return Err(ConfigError::new(format!("{field}.algorithms"), "must not be empty"))
            }
            Some(names) => names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    Alg::parse(n).ok_or_else(|| {
                        ConfigError::new(
                            format!("{field}.algorithms[{i}]"),
                            format!(
                                "unsupported algorithm {n:?} (supported: RS256, RS384, RS512, PS256, PS384, PS512, ES256, EdDSA)"
                            ),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        let keys =
            KeySet::from_json(&raw.jwks).map_err(|m| ConfigError::new(format!("{field}.jwks"), m))?;
        Ok(Issuer {
            issuer: raw.issuer,
            audiences: raw.audiences,
            algorithms,
            keys,
        })
    }
}

/// Why a token was refused. `reason()` is the stable word used in audit records and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Malformed(String),
    TooLarge,
    UnsupportedAlgorithm(String),
    UnsupportedCritical,
    UnknownIssuer,
    AlgorithmNotAllowed,
    UnknownKey,
    BadSignature,
    Expired,
    NotYetValid,
    MissingExpiry,
    BadTimeClaim(&'static str),
    WrongAudience,
}

impl AuthError {
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_token",
            AuthError::Malformed(_) => "malformed",
            AuthError::TooLarge => "too_large",
            AuthError::UnsupportedAlgorithm(_) => "unsupported_algorithm",
            AuthError::UnsupportedCritical => "unsupported_crit",
            AuthError::UnknownIssuer => "unknown_issuer",
            AuthError::AlgorithmNotAllowed => "algorithm_not_allowed",
            AuthError::UnknownKey => "unknown_key",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::MissingExpiry => "missing_exp",
            AuthError::BadTimeClaim(_) => "bad_time_claim",
            AuthError::WrongAudience => "wrong_audience",
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Missing => write!(f, "no bearer token"),
            AuthError::Malformed(why) => write!(f, "malformed token: {why}"),
            AuthError::TooLarge => write!(f, "token larger than {MAX_TOKEN_BYTES} bytes"),
            AuthError::UnsupportedAlgorithm(a) => write!(f, "unsupported algorithm {a:?}"),
            AuthError::UnsupportedCritical => write!(f, "token has critical header extensions"),
            AuthError::UnknownIssuer => write!(f, "token issuer is not trusted"),
            AuthError::AlgorithmNotAllowed => write!(f, "algorithm not allowed for this issuer"),
            AuthError::UnknownKey => write!(f, "no key of the issuer matches the token"),
            AuthError::BadSignature => write!(f, "signature does not verify"),
            AuthError::Expired => write!(f, "token expired"),
            AuthError::NotYetValid => write!(f, "token not yet valid"),
            AuthError::MissingExpiry => write!(f, "token has no exp claim"),
            AuthError::BadTimeClaim(c) => write!(f, "claim {c} is not a number"),
            AuthError::WrongAudience => write!(f, "token audience does not include this resource"),
        }
    }
}

/// The caller, once its token has verified.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub claims: Map<String, Value>,
}

impl Identity {
    pub fn claim_str(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(Value::as_str)
    }
    pub fn issuer(&self) -> Option<&str> {
        self.claim_str("iss")
    }
    pub fn subject(&self) -> Option<&str> {
        self.claim_str("sub")
    }
}

/// Header fields the filter looks at beyond `alg` and `kid`.
#[derive(Debug, Clone, Default, Deserialize)]
struct ExtraHeader {
    #[serde(default)]
    crit: Option<Value>,
}

/// Validates tokens against the configured issuers.
#[derive(Debug)]
pub struct Authenticator {
    issuers: Vec<Issuer>,
    skew: i64,
}

impl Authenticator {
    pub fn new(issuers: Vec<Issuer>, skew_seconds: u64) -> Self {
        Authenticator {
            issuers,
            skew: i64::try_from(skew_seconds).unwrap_or(i64::MAX),
        }
    }

    /// Verifies `token` at time `now` (seconds since the epoch) for one of `audiences`
    /// (when empty, the issuer's configured audiences are used).
    pub fn verify(&self, token: &str, now: i64) -> Result<Identity, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLarge);
        }
        let untrusted = UntrustedToken::<ExtraHeader>::try_from(token)
            .map_err(|e| AuthError::Malformed(e.to_string()))?;
        let header = untrusted.header();
        if header.other_fields.crit.is_some() {
            return Err(AuthError::UnsupportedCritical);
        }
        let alg_name = untrusted.algorithm();
        let alg = Alg::parse(alg_name)
            .ok_or_else(|| AuthError::UnsupportedAlgorithm(alg_name.to_string()))?;

        let claims = decode_claims(token)?;
        let iss = claims.get("iss").and_then(Value::as_str).ok_or(AuthError::UnknownIssuer)?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.issuer == iss)
            .ok_or(AuthError::UnknownIssuer)?;
        if !issuer.algorithms.contains(&alg) {
            return Err(AuthError::AlgorithmNotAllowed);
        }

        let kid = header.key_id.as_deref();
        let mut candidates = issuer
            .keys
            .keys
            .iter()
            .filter(|k| k.fits(alg) && (kid.is_none() || k.kid.as_deref() == kid))
            .peekable();
        if candidates.peek().is_none() {
            return Err(AuthError::UnknownKey);
        }
        if !candidates.any(|k| verify_signature(alg, &k.key, &untrusted)) {
            return Err(AuthError::BadSignature);
        }

        check_times(&claims, now, self.skew)?;
        if !audience_matches(claims.get("aud"), &issuer.audiences) {
            return Err(AuthError::WrongAudience);
        }
        Ok(Identity { claims })
    }
}

fn verify_signature(alg: Alg, key: &PublicKey, token: &UntrustedToken<'_, ExtraHeader>) -> bool {
    match (key, alg) {
        (PublicKey::Rsa(key), _) => match alg.rsa() {
            Some(rsa) => rsa.validator::<Empty>(key).validate(token).is_ok(),
            None => false,
        },
        (PublicKey::P256(key), Alg::Es256) => Es256.validator::<Empty>(key).validate(token).is_ok(),
        (PublicKey::Ed25519(key), Alg::EdDsa) => {
            Ed25519.validator::<Empty>(key).validate(token).is_ok()
        }
        _ => false,
    }
}

/// Decodes the (not yet trusted) payload of a compact JWS into a JSON object.
fn decode_claims(token: &str) -> Result<Map<String, Value>, AuthError> {
    let payload = token
        .split('.')
        .nth(1)
        .ok_or_else(|| AuthError::Malformed("not a compact JWS".into()))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| AuthError::Malformed("payload is not base64url".into()))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(AuthError::Malformed("payload is not a JSON object".into())),
    }
}

fn time_claim(claims: &Map<String, Value>, name: &'static str) -> Result<Option<f64>, AuthError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n.as_f64().map(Some).ok_or(AuthError::BadTimeClaim(name)),
        Some(_) => Err(AuthError::BadTimeClaim(name)),
    }
}

fn check_times(claims: &Map<String, Value>, now: i64, skew: i64) -> Result<(), AuthError> {
    let now = now as f64;
    let skew = skew as f64;
    match time_claim(claims, "exp")? {
        None => return Err(AuthError::MissingExpiry),
        Some(exp) if now - skew >= exp => return Err(AuthError::Expired),
        Some(_) => {}
    }
    if let Some(nbf) = time_claim(claims, "nbf")? {
        if now + skew < nbf {
            return Err(AuthError::NotYetValid);
        }
    }
    time_claim(claims, "iat")?;
    Ok(())
}

fn audience_matches(aud: Option<&Value>, accepted: &[String]) -> bool {
    let accepts = |a: &str| accepted.iter().any(|x| x == a);
    match aud {
        Some(Value::String(a)) => accepts(a),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).any(accepts),
        _ => false,
    }
}
