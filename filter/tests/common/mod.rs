//! Test support shared by the integration tests: an in-memory [`Host`] for a stream, one for a
//! VM's root context ([`MockKeyHost`]), fixed signing keys for every supported algorithm, and a token signer that
//! builds compact JWS by hand so that headers and claims can be anything a test needs.
#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jwt_compact::alg::{Ed25519, Es256, Hs256, Hs256Key, Rsa, RsaPrivateKey};
use jwt_compact::jwk::JsonWebKey;
use jwt_compact::{Algorithm, AlgorithmSignature};
use mcp_guard::config::Environment;
use mcp_guard::host::{Header, Host, HostError};
use serde_json::{json, Value};

// ---- keys ---------------------------------------------------------------------------------

/// One fixed RSA-2048 key (generated once with python `cryptography`), private parts included:
/// generating RSA keys at test time is slow in debug builds.
const RSA_JWK: &str = include_str!("rsa_test_key.json");

pub const RSA_KID: &str = "rsa-1";
pub const P256_KID: &str = "ec-1";
pub const P384_KID: &str = "ec384-1";
pub const ED25519_KID: &str = "ed-1";

pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn rsa_private() -> &'static RsaPrivateKey {
    static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let jwk: JsonWebKey<'_> = serde_json::from_str(RSA_JWK).expect("RSA test JWK parses");
        RsaPrivateKey::try_from(&jwk).expect("RSA test JWK is a private key")
    })
}

/// The RSA key's public JWK (`kty`, `kid`, `n`, `e` only).
pub fn rsa_public_jwk() -> Value {
    let full: Value = serde_json::from_str(RSA_JWK).expect("RSA test JWK parses");
    json!({ "kty": "RSA", "kid": RSA_KID, "use": "sig", "n": full["n"], "e": full["e"] })
}

/// The modulus bytes of the RSA key (what an HS256 confusion attack would use as the secret).
pub fn rsa_modulus_bytes() -> Vec<u8> {
    let full: Value = serde_json::from_str(RSA_JWK).expect("RSA test JWK parses");
    URL_SAFE_NO_PAD
        .decode(full["n"].as_str().expect("n"))
        .expect("n is base64url")
}

pub fn p256_key() -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::from_slice(&[0x11; 32]).expect("P-256 scalar")
}

/// Another P-256 key, not in any JWKS.
pub fn p256_other_key() -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::from_slice(&[0x44; 32]).expect("P-256 scalar")
}

pub fn p256_jwk_of(key: &p256::ecdsa::SigningKey, kid: &str) -> Value {
    let point = key.verifying_key().to_encoded_point(false);
    json!({
        "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
        "x": b64(point.x().expect("x")), "y": b64(point.y().expect("y")),
    })
}

pub fn p256_public_jwk() -> Value {
    p256_jwk_of(&p256_key(), P256_KID)
}

pub fn p384_key() -> p384::ecdsa::SigningKey {
    p384::ecdsa::SigningKey::from_slice(&[0x22; 48]).expect("P-384 scalar")
}

pub fn p384_public_jwk() -> Value {
    let point = p384_key().verifying_key().to_encoded_point(false);
    json!({
        "kty": "EC", "crv": "P-384", "kid": P384_KID, "use": "sig",
        "x": b64(point.x().expect("x")), "y": b64(point.y().expect("y")),
    })
}

pub fn ed25519_key() -> ed25519_compact::KeyPair {
    ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([0x33; 32]))
}

pub fn ed25519_public_jwk() -> Value {
    json!({ "kty": "OKP", "crv": "Ed25519", "kid": ED25519_KID, "use": "sig", "x": b64(*ed25519_key().pk) })
}

/// A JWKS with the public halves of every test key.
pub fn jwks_all() -> Value {
    json!({ "keys": [rsa_public_jwk(), p256_public_jwk(), p384_public_jwk(), ed25519_public_jwk()] })
}

// ---- tokens -------------------------------------------------------------------------------

/// How to sign a test token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signer {
    Rs256,
    Ps256,
    Es256,
    /// ES256 with a key that is in no JWKS (but the kid of the one that is).
    Es256Other,
    Es384,
    EdDsa,
    /// HMAC-SHA256 with the RSA modulus as the secret (the classic confusion attack).
    Hs256RsaModulus,
    /// `alg: none`, empty signature.
    None,
}

impl Signer {
    pub fn alg(self) -> &'static str {
        match self {
            Signer::Rs256 => "RS256",
            Signer::Ps256 => "PS256",
            Signer::Es256 | Signer::Es256Other => "ES256",
            Signer::Es384 => "ES384",
            Signer::EdDsa => "EdDSA",
            Signer::Hs256RsaModulus => "HS256",
            Signer::None => "none",
        }
    }

    pub fn kid(self) -> &'static str {
        match self {
            Signer::Rs256 | Signer::Ps256 | Signer::Hs256RsaModulus | Signer::None => RSA_KID,
            Signer::Es256 | Signer::Es256Other => P256_KID,
            Signer::Es384 => P384_KID,
            Signer::EdDsa => ED25519_KID,
        }
    }

    /// The default header: `alg`, `kid`, `typ: JWT`.
    pub fn header(self) -> Value {
        json!({ "alg": self.alg(), "kid": self.kid(), "typ": "JWT" })
    }

    pub fn signature(self, input: &[u8]) -> Vec<u8> {
        match self {
            Signer::Rs256 => Rsa::rs256().sign(rsa_private(), input).as_bytes().to_vec(),
            Signer::Ps256 => Rsa::ps256().sign(rsa_private(), input).as_bytes().to_vec(),
            Signer::Es256 => Es256.sign(&p256_key(), input).as_bytes().to_vec(),
            Signer::Es256Other => Es256.sign(&p256_other_key(), input).as_bytes().to_vec(),
            Signer::Es384 => {
                use p384::ecdsa::signature::DigestSigner;
                use sha2::Digest;
                let sig: p384::ecdsa::Signature =
                    p384_key().sign_digest(sha2::Sha384::new_with_prefix(input));
                sig.to_bytes().to_vec()
            }
            Signer::EdDsa => Ed25519.sign(&ed25519_key().sk, input).as_bytes().to_vec(),
            Signer::Hs256RsaModulus => Hs256
                .sign(&Hs256Key::new(rsa_modulus_bytes()), input)
                .as_bytes()
                .to_vec(),
            Signer::None => Vec::new(),
        }
    }
}

/// A compact JWS with exactly this header and these claims.
pub fn sign_with_header(signer: Signer, header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        b64(serde_json::to_vec(header).expect("header")),
        b64(serde_json::to_vec(claims).expect("claims"))
    );
    let signature = signer.signature(input.as_bytes());
    format!("{input}.{}", b64(signature))
}

pub fn sign(signer: Signer, claims: &Value) -> String {
    sign_with_header(signer, &signer.header(), claims)
}

pub const ISSUER: &str = "https://idp.example.com";
pub const RESOURCE: &str = "https://mcp.example.com/mcp";
pub const METADATA_URL: &str = "https://mcp.example.com/.well-known/oauth-protected-resource/mcp";
/// The clock every test starts at (2026-01-01T00:00:00Z), in seconds.
pub const NOW: i64 = 1_767_225_600;
pub const SERVICE_KEY: &str = "sk-service-key-0123456789";

/// Claims of a valid token for `sub`, with `groups` and `scope`.
pub fn claims_for(sub: &str, groups: &[&str], scope: &str) -> Value {
    json!({
        "iss": ISSUER,
        "sub": sub,
        "aud": RESOURCE,
        "exp": NOW + 3600,
        "iat": NOW - 10,
        "email": format!("{sub}@example.com"),
        "groups": groups,
        "scope": scope,
    })
}

/// An ES256 token for `sub` (fast to sign).
pub fn token_for(sub: &str, groups: &[&str], scope: &str) -> String {
    sign(Signer::Es256, &claims_for(sub, groups, scope))
}

// ---- environment --------------------------------------------------------------------------

/// Environment variables from a map.
#[derive(Default)]
pub struct MapEnv(pub HashMap<String, String>);

impl MapEnv {
    pub fn with(pairs: &[(&str, &str)]) -> Self {
        MapEnv(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }
}

impl Environment for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

// ---- Host ---------------------------------------------------------------------------------

/// A local reply the filter sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "reply body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Process-wide shared data, shared between the hosts of several streams or VMs.
pub type Shared = Rc<RefCell<CasStore>>;

/// An in-memory Envoy for one HTTP stream.
pub struct MockHost {
    pub request_headers: Vec<Header>,
    pub response_headers: Vec<Header>,
    pub response_trailers: Vec<Header>,
    pub properties: HashMap<Vec<String>, Vec<u8>>,
    pub shared: Shared,
    pub counters: BTreeMap<String, u64>,
    /// Every audit write, in order (Envoy keeps the last one).
    pub audits: Vec<Vec<u8>>,
    /// Every local reply, in order (there should never be more than one).
    pub replies: Vec<Reply>,
    pub resets: usize,
    pub now_ms: u64,
    /// Headers Envoy refuses to set or remove (request or response): the flow must fail closed.
    pub refuse_headers: Vec<&'static str>,
    /// The request body the filter forwards in place of the client's (`replace_request_body`).
    pub replaced_request_body: Option<Vec<u8>>,
    /// What the host's random source gives (`None`: it has none): byte `i` of a draw is
    /// `source + i`, so two hosts with different sources draw different bytes.
    pub random_source: Option<u8>,
}

impl Default for MockHost {
    fn default() -> Self {
        MockHost {
            request_headers: Vec::new(),
            response_headers: Vec::new(),
            response_trailers: Vec::new(),
            properties: HashMap::new(),
            shared: Shared::default(),
            counters: BTreeMap::new(),
            audits: Vec::new(),
            replies: Vec::new(),
            resets: 0,
            now_ms: NOW as u64 * 1000,
            refuse_headers: Vec::new(),
            replaced_request_body: None,
            random_source: Some(1),
        }
    }
}

impl MockHost {
    /// A request with these headers (pseudo-headers included).
    pub fn request(headers: &[(&str, &str)]) -> Self {
        MockHost {
            request_headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..MockHost::default()
        }
    }

    pub fn with_shared(mut self, shared: &Shared) -> Self {
        self.shared = Rc::clone(shared);
        self
    }

    pub fn set_property(&mut self, path: &[&str], value: &str) {
        self.properties.insert(
            path.iter().map(|s| s.to_string()).collect(),
            value.as_bytes().to_vec(),
        );
    }

    pub fn req_header(&self, name: &str) -> Option<&str> {
        self.request_headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn req_header_all(&self, name: &str) -> Vec<&str> {
        self.request_headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn resp_header(&self, name: &str) -> Option<&str> {
        self.response_headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn set_response(&mut self, headers: &[(&str, &str)]) {
        self.response_headers = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    /// The only local reply; panics when there is none or several.
    pub fn reply(&self) -> &Reply {
        assert_eq!(
            self.replies.len(),
            1,
            "expected exactly one local reply, got {:?}",
            self.replies
        );
        &self.replies[0]
    }

    /// The records of the last audit write (Envoy logs that one), one per line.
    pub fn audit(&self) -> Vec<Value> {
        let last = self.audits.last().expect("an audit record was written");
        String::from_utf8_lossy(last)
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {line}"))
            })
            .collect()
    }

    /// The one record of the last audit write.
    pub fn record(&self) -> Value {
        let records = self.audit();
        assert_eq!(records.len(), 1, "expected one audit line: {records:?}");
        records.into_iter().next().expect("one record")
    }

    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }
}

fn remove_all(headers: &mut Vec<Header>, name: &str) {
    headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
}

impl MockHost {
    fn allowed(&self, name: &str) -> Result<(), HostError> {
        match self
            .refuse_headers
            .iter()
            .any(|h| h.eq_ignore_ascii_case(name))
        {
            true => Err(HostError),
            false => Ok(()),
        }
    }
}

impl Host for MockHost {
    /// Refused like a header change when the body's `content-length` is refused.
    fn replace_request_body(&mut self, _old_len: usize, body: &[u8]) -> Result<(), HostError> {
        self.allowed("content-length")?;
        self.replaced_request_body = Some(body.to_vec());
        Ok(())
    }
    fn request_headers(&self) -> Vec<Header> {
        self.request_headers.clone()
    }
    fn set_request_header(&mut self, name: &str, value: &str) -> Result<(), HostError> {
        self.allowed(name)?;
        remove_all(&mut self.request_headers, name);
        self.request_headers
            .push((name.to_ascii_lowercase(), value.to_string()));
        Ok(())
    }
    fn remove_request_header(&mut self, name: &str) -> Result<(), HostError> {
        self.allowed(name)?;
        remove_all(&mut self.request_headers, name);
        Ok(())
    }
    fn response_headers(&self) -> Vec<Header> {
        self.response_headers.clone()
    }
    fn set_response_header(&mut self, name: &str, value: &str) -> Result<(), HostError> {
        self.allowed(name)?;
        remove_all(&mut self.response_headers, name);
        self.response_headers
            .push((name.to_ascii_lowercase(), value.to_string()));
        Ok(())
    }
    fn remove_response_header(&mut self, name: &str) -> Result<(), HostError> {
        self.allowed(name)?;
        remove_all(&mut self.response_headers, name);
        Ok(())
    }
    fn response_trailers(&self) -> Vec<Header> {
        self.response_trailers.clone()
    }
    fn set_response_trailer(&mut self, name: &str, value: &str) -> Result<(), HostError> {
        self.allowed(name)?;
        remove_all(&mut self.response_trailers, name);
        self.response_trailers
            .push((name.to_ascii_lowercase(), value.to_string()));
        Ok(())
    }
    fn remove_response_trailer(&mut self, name: &str) -> Result<(), HostError> {
        self.allowed(name)?;
        remove_all(&mut self.response_trailers, name);
        Ok(())
    }
    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        let key: Vec<String> = path.iter().map(|s| s.to_string()).collect();
        self.properties.get(&key).cloned()
    }
    fn send_response(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]) {
        self.replies.push(Reply {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.to_vec(),
        });
    }
    fn reset_response(&mut self) {
        self.resets += 1;
    }
    fn write_audit(&mut self, record: &[u8]) {
        self.audits.push(record.to_vec());
    }
    /// As the adapter does: the property `mcp.<name>` (`wasm.mcp.<name>` in filter state).
    fn write_audit_column(&mut self, name: &str, value: &str) {
        self.set_property(&[&format!("mcp.{name}")], value);
    }
    fn shared_get(&self, key: &str) -> Option<Vec<u8>> {
        self.shared.borrow().bytes(key).map(<[u8]>::to_vec)
    }
    fn shared_set(&mut self, key: &str, value: &[u8]) {
        self.shared.borrow_mut().set(key, value, None);
    }
    fn shared_get_cas(&self, key: &str) -> Option<(Vec<u8>, Option<u32>)> {
        CasStore::read(&self.shared, key)
    }
    fn shared_set_cas(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        self.shared.borrow_mut().set(key, value, cas)
    }
    fn count(&mut self, name: &str, by: u64) {
        *self.counters.entry(name.to_string()).or_default() += by;
    }
    fn random(&mut self, out: &mut [u8]) -> bool {
        let Some(source) = self.random_source else {
            return false;
        };
        for (i, b) in out.iter_mut().enumerate() {
            *b = source.wrapping_add(i as u8);
        }
        true
    }
    fn now_millis(&self) -> u64 {
        self.now_ms
    }
}

// ---- a VM's root context ----------------------------------------------------------------

/// Shared data with compare-and-swap, as Envoy implements it: every write bumps the entry's
/// CAS; a write with a CAS fails when the entry exists and its CAS differs (0 is never a CAS,
/// so a write passing 0 — `host::ABSENT` — only creates).
#[derive(Default)]
pub struct CasStore {
    entries: HashMap<String, (Vec<u8>, u32)>,
    next_cas: u32,
    /// Another VM's step, run once right after a read finds missing a key that starts with
    /// the given prefix: what another worker thread may do between one VM's read and its write.
    pub on_missing: Option<(&'static str, Step)>,
    /// The same, after a read that finds such a key.
    pub on_present: Option<(&'static str, Step)>,
}

/// What another VM does, interleaved with this one.
pub type Step = Box<dyn FnOnce()>;

impl CasStore {
    pub fn get(&self, key: &str) -> Option<(Vec<u8>, Option<u32>)> {
        self.entries.get(key).map(|(v, c)| (v.clone(), Some(*c)))
    }

    /// A host's CAS read: [`CasStore::get`], then the interleaved step if one is due.
    pub fn read(store: &RefCell<CasStore>, key: &str) -> Option<(Vec<u8>, Option<u32>)> {
        let (found, step) = {
            let mut s = store.borrow_mut();
            let found = s.get(key);
            let hook = if found.is_none() {
                &mut s.on_missing
            } else {
                &mut s.on_present
            };
            let due = hook.as_ref().is_some_and(|(p, _)| key.starts_with(p));
            (found, if due { hook.take() } else { None })
        };
        if let Some((_, step)) = step {
            step();
        }
        found
    }

    /// The stored bytes at `key`.
    pub fn bytes(&self, key: &str) -> Option<&[u8]> {
        self.entries.get(key).map(|(v, _)| v.as_slice())
    }

    /// Every key and its bytes.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Vec<u8>)> {
        self.entries.iter().map(|(k, (v, _))| (k, v))
    }

    /// Writes `value` unconditionally.
    pub fn insert(&mut self, key: String, value: Vec<u8>) {
        self.set(&key, &value, None);
    }

    pub fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        if let (Some(expected), Some((_, current))) = (cas, self.entries.get(key)) {
            if expected != *current {
                return false;
            }
        }
        self.next_cas += 1;
        self.entries
            .insert(key.to_string(), (value.to_vec(), self.next_cas));
        true
    }

    pub fn value(&self, key: &str) -> Option<Value> {
        self.entries
            .get(key)
            .and_then(|(v, _)| serde_json::from_slice(v).ok())
    }
}

/// A `GET` the key manager dispatched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub token: u32,
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub timeout_ms: u64,
}

/// An in-memory Envoy for one VM's root context. VMs of one process share the `store`.
pub struct MockKeyHost {
    pub store: Rc<RefCell<CasStore>>,
    pub calls: Vec<Call>,
    pub now_ms: u64,
    /// When false, `http_get` fails (no such cluster).
    pub dispatch_ok: bool,
    next_token: Rc<RefCell<u32>>,
}

impl MockKeyHost {
    pub fn new(now_ms: u64) -> Self {
        MockKeyHost {
            store: Rc::default(),
            calls: Vec::new(),
            now_ms,
            dispatch_ok: true,
            next_token: Rc::new(RefCell::new(100)),
        }
    }

    /// Another VM of the same process: same shared data, its own calls.
    pub fn sibling(&self) -> Self {
        MockKeyHost {
            store: Rc::clone(&self.store),
            calls: Vec::new(),
            now_ms: self.now_ms,
            dispatch_ok: true,
            next_token: Rc::clone(&self.next_token),
        }
    }
}

/// A root context has no request: its request calls do nothing (and refuse changes).
impl Host for MockKeyHost {
    fn request_headers(&self) -> Vec<Header> {
        Vec::new()
    }
    fn set_request_header(&mut self, _: &str, _: &str) -> Result<(), HostError> {
        Err(HostError)
    }
    fn remove_request_header(&mut self, _: &str) -> Result<(), HostError> {
        Err(HostError)
    }
    fn response_headers(&self) -> Vec<Header> {
        Vec::new()
    }
    fn set_response_header(&mut self, _: &str, _: &str) -> Result<(), HostError> {
        Err(HostError)
    }
    fn remove_response_header(&mut self, _: &str) -> Result<(), HostError> {
        Err(HostError)
    }
    fn property(&self, _: &[&str]) -> Option<Vec<u8>> {
        None
    }
    fn send_response(&mut self, _: u32, _: &[(&str, &str)], _: &[u8]) {}
    fn reset_response(&mut self) {}
    fn write_audit(&mut self, _: &[u8]) {}
    fn count(&mut self, _: &str, _: u64) {}
    fn now_millis(&self) -> u64 {
        self.now_ms
    }
    fn shared_get(&self, key: &str) -> Option<Vec<u8>> {
        self.store.borrow().get(key).map(|(v, _)| v)
    }
    fn shared_set(&mut self, key: &str, value: &[u8]) {
        self.store.borrow_mut().set(key, value, None);
    }
    fn shared_get_cas(&self, key: &str) -> Option<(Vec<u8>, Option<u32>)> {
        CasStore::read(&self.store, key)
    }
    fn shared_set_cas(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        self.store.borrow_mut().set(key, value, cas)
    }
    /// Only `GET`s of JSON documents are expected here (keys, discovery, feeds).
    fn http_call(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        _body: &[u8],
        timeout_ms: u64,
    ) -> Option<u32> {
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| *k == name)
                .map_or("", |(_, v)| *v)
        };
        assert_eq!(header(":method"), "GET");
        assert_eq!(header("accept"), "application/json");
        let (authority, path) = (header(":authority"), header(":path"));
        if !self.dispatch_ok {
            return None;
        }
        let token = {
            let mut next = self.next_token.borrow_mut();
            *next += 1;
            *next
        };
        self.calls.push(Call {
            token,
            cluster: cluster.to_string(),
            authority: authority.to_string(),
            path: path.to_string(),
            timeout_ms,
        });
        Some(token)
    }
}

/// The sealing key of test configurations that do not test sessions (32 bytes, base64).
#[allow(dead_code)]
pub const TEST_SESSION_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// A host that also records the gRPC (rate limit service) and HTTP (introspection, listings)
/// calls the filter makes.
pub struct CallHost {
    pub inner: MockHost,
    pub calls: Vec<(String, String, String, Vec<u8>, u64)>,
    pub answer_token: Option<u32>,
    /// HTTP callouts, answered with tokens counting up from `answer_token`.
    pub http_calls: Vec<HttpCall>,
}

/// An HTTP callout a test host received: (token, cluster, headers, body).
pub type HttpCall = (u32, String, Vec<(String, String)>, String);

impl CallHost {
    /// `inner`, its callouts recorded and answered with `token`, then `token + 1`, … (HTTP and
    /// gRPC calls counted apart).
    pub fn new(inner: MockHost, token: Option<u32>) -> CallHost {
        CallHost {
            inner,
            calls: Vec::new(),
            answer_token: token,
            http_calls: Vec::new(),
        }
    }
}

impl Host for CallHost {
    fn request_headers(&self) -> Vec<Header> {
        self.inner.request_headers()
    }
    fn set_request_header(&mut self, n: &str, v: &str) -> Result<(), HostError> {
        self.inner.set_request_header(n, v)
    }
    fn remove_request_header(&mut self, n: &str) -> Result<(), HostError> {
        self.inner.remove_request_header(n)
    }
    fn response_headers(&self) -> Vec<Header> {
        self.inner.response_headers()
    }
    fn set_response_header(&mut self, n: &str, v: &str) -> Result<(), HostError> {
        self.inner.set_response_header(n, v)
    }
    fn remove_response_header(&mut self, n: &str) -> Result<(), HostError> {
        self.inner.remove_response_header(n)
    }
    fn property(&self, p: &[&str]) -> Option<Vec<u8>> {
        self.inner.property(p)
    }
    fn send_response(&mut self, s: u32, h: &[(&str, &str)], b: &[u8]) {
        self.inner.send_response(s, h, b)
    }
    fn reset_response(&mut self) {
        self.inner.reset_response()
    }
    fn write_audit(&mut self, r: &[u8]) {
        self.inner.write_audit(r)
    }
    fn shared_get(&self, k: &str) -> Option<Vec<u8>> {
        self.inner.shared_get(k)
    }
    fn shared_set(&mut self, k: &str, v: &[u8]) {
        self.inner.shared_set(k, v)
    }
    fn count(&mut self, n: &str, by: u64) {
        self.inner.count(n, by)
    }
    fn random(&mut self, out: &mut [u8]) -> bool {
        self.inner.random(out)
    }
    fn now_millis(&self) -> u64 {
        self.inner.now_millis()
    }
    fn shared_get_cas(&self, k: &str) -> Option<(Vec<u8>, Option<u32>)> {
        self.inner.shared_get_cas(k)
    }
    fn shared_set_cas(&mut self, k: &str, v: &[u8], cas: Option<u32>) -> bool {
        self.inner.shared_set_cas(k, v, cas)
    }
    fn http_call(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        _timeout_ms: u64,
    ) -> Option<u32> {
        let token = self.answer_token? + self.http_calls.len() as u32;
        let headers = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let body = String::from_utf8_lossy(body).into_owned();
        self.http_calls
            .push((token, cluster.to_string(), headers, body));
        Some(token)
    }
    /// gRPC calls, answered with tokens counting up from `answer_token`.
    fn grpc_call(&mut self, c: &str, s: &str, m: &str, msg: &[u8], t: u64) -> Option<u32> {
        let token = self
            .answer_token
            .map(|first| first + self.calls.len() as u32);
        self.calls
            .push((c.into(), s.into(), m.into(), msg.to_vec(), t));
        token
    }
}

/// A `ShouldRateLimit` answer with one descriptor's verdict (`rls::OK` or `rls::OVER_LIMIT`).
pub fn rls_answer(code: i32, remaining: u32) -> Vec<u8> {
    rls_answer_per_unit(code, remaining, 10)
}

/// A `ShouldRateLimit` answer whose applied limit allows `per_unit` hits per window.
pub fn rls_answer_per_unit(code: i32, remaining: u32, per_unit: u32) -> Vec<u8> {
    rls_answer_per(code, remaining, per_unit, 3)
}

/// [`rls_answer_per_unit`] with the limit's unit (`RateLimitResponse.RateLimit.Unit`: 1 SECOND,
/// 2 MINUTE, 3 HOUR, 0 UNKNOWN).
pub fn rls_answer_per(code: i32, remaining: u32, per_unit: u32, unit: i32) -> Vec<u8> {
    use prost::Message as _;
    mcp_guard::rls::RateLimitResponse {
        overall_code: code,
        statuses: vec![mcp_guard::rls::DescriptorStatus {
            code,
            current_limit: Some(mcp_guard::rls::CurrentLimit {
                requests_per_unit: per_unit,
                unit,
            }),
            limit_remaining: remaining,
            duration_until_reset: Some(mcp_guard::rls::Duration {
                seconds: 30,
                nanos: 0,
            }),
        }],
    }
    .encode_to_vec()
}
