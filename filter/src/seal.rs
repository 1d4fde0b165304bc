//! Sealed handles: an opaque string that carries a value (an upstream's session id, later a task
//! id) to a client and back, readable and checkable only by the filter, and only for the caller
//! and server it was issued to. Nothing is remembered: any filter with the same key opens it.
//!
//! ```text
//! handle    = prefix base64url-no-pad( kid[4] ‖ nonce ‖ ciphertext ‖ tag[16] )
//!   "mg1."  AES-256-GCM-SIV (RFC 8452), nonce[12]
//!   "mg2."  XChaCha20-Poly1305, nonce[24]
//! plaintext = caller_fp[16] ‖ server_fp[8] ‖ value
//! associated data = version ("mg1" | "mg2") ‖ kid ‖ purpose
//! ```
//!
//! * Binding. The caller (issuer and caller id) and the server's name are bound into the
//!   authenticated plaintext as SHA-256 fingerprints. The AEAD authenticates them exactly as it
//!   would associated data (nobody without the key can produce a handle whose plaintext says
//!   anything else), and, unlike associated data, an opened handle says *whose* it is, so a
//!   refusal can be audited as "another caller's" or "another server's" rather than as a bare
//!   authentication failure. A 128-bit caller fingerprint cannot be matched by trying subjects.
//! * The purpose ("session", "task", …) is associated data: a handle issued for one use never
//!   opens as another.
//! * Nonces are synthetic (SIV): HMAC-SHA-256 of the associated data and plaintext under a
//!   nonce key derived from the sealing key. No randomness is needed (so nothing depends on the
//!   Wasm host's `random_get`), sealing is deterministic (the same session of the same caller
//!   gets the same handle on every replica and every answer, which keeps audit records
//!   comparable), and distinct plaintexts get distinct nonces. AES-GCM-SIV (RFC 8452) is itself
//!   nonce-misuse resistant: even a repeated nonce would reveal only that two handles are equal.
//!   XChaCha20-Poly1305 is not, so its nonce is 192 bits of the HMAC over the length-prefixed
//!   associated data and the plaintext: it repeats only for the same associated data and
//!   plaintext (the same handle, as intended), or for an HMAC-SHA-256 collision.
//! * Ciphers. `sessions.cipher` picks the one new handles are sealed with; handles of both open
//!   (the prefix says which). AES-GCM-SIV (`mg1`, the default) is what every earlier version
//!   seals and opens. V8 gives Wasm no AES instructions: sealing or opening a handle not seen
//!   before takes about 6 µs with AES-GCM-SIV there, 2 µs with XChaCha20-Poly1305 (`mg2`),
//!   which versions before this one cannot open: a fleet switches once every replica runs a
//!   version that opens both (docs/fleet.md).
//! * Keys. The configured 32-byte key is never used directly: each cipher's key, the nonce key
//!   and the 4-byte key id are derived from it with HMAC-SHA-256 under distinct labels. Handles
//!   are opened with the key their id names, the current or the previous one (rotation).

use std::cell::RefCell;
use std::collections::HashMap;

use aes_gcm_siv::aead::{Aead, KeyInit, Payload};
use aes_gcm_siv::Aes256GcmSiv;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chacha20poly1305::XChaCha20Poly1305;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The longest value that can be sealed, in bytes.
pub const MAX_VALUE: usize = 256;
/// The longest handle `open` reads; anything longer is refused before decoding. Every handle
/// this module makes is shorter.
pub const MAX_HANDLE: usize =
    "mg2.".len() + (KID + 24 + CALLER_FP + SERVER_FP + MAX_VALUE + TAG).div_ceil(3) * 4;

const KID: usize = 4;
const TAG: usize = 16;
const CALLER_FP: usize = 16;
const SERVER_FP: usize = 8;

/// The cipher handles are sealed with; the handle's prefix names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cipher {
    /// `mg1.`: AES-256-GCM-SIV, what every version opens.
    #[default]
    Aes256GcmSiv,
    /// `mg2.`: XChaCha20-Poly1305, ten times cheaper than AES in Wasm.
    XChaCha20Poly1305,
}

impl Cipher {
    /// Both, with their names in the configuration (`sessions.cipher`).
    pub const ALL: [(&'static str, Cipher); 2] = [
        ("aes-256-gcm-siv", Cipher::Aes256GcmSiv),
        ("xchacha20-poly1305", Cipher::XChaCha20Poly1305),
    ];

    /// The cipher named `name` in the configuration.
    pub fn named(name: &str) -> Option<Cipher> {
        Cipher::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, cipher)| *cipher)
    }

    /// The handle's prefix: its version and a dot.
    pub fn prefix(self) -> &'static str {
        match self {
            Cipher::Aes256GcmSiv => "mg1.",
            Cipher::XChaCha20Poly1305 => "mg2.",
        }
    }

    fn version(self) -> &'static [u8] {
        self.prefix().trim_end_matches('.').as_bytes()
    }

    fn nonce_len(self) -> usize {
        match self {
            Cipher::Aes256GcmSiv => 12,
            Cipher::XChaCha20Poly1305 => 24,
        }
    }
}

/// The length of a key in the configuration, in bytes.
pub const KEY_BYTES: usize = 32;

/// Who a handle belongs to and what for.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    /// What the value is ("session", "task"): a handle opens only for the same purpose.
    pub purpose: &'a str,
    /// The token's issuer (`iss`).
    pub issuer: &'a str,
    /// The caller within that issuer (`sub`, else the client): never empty.
    pub caller: &'a str,
    /// `caller` is the client the token was issued to (`client_id`, `azp`), not its subject:
    /// a subject `alice` and a client `alice` of one issuer are different callers.
    pub by_client: bool,
    /// The protected server's configured name.
    pub server: &'a str,
}

/// Why a handle did not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// Not a handle of this format (never sealed, or longer than any handle can be).
    NotSealed,
    /// Sealed with a key that is neither the current nor the previous one.
    UnknownKey,
    /// The right key, but the bytes were changed (or the purpose differs).
    Tampered,
    /// Genuine, but issued to another caller.
    OtherCaller,
    /// Genuine and this caller's, but issued for another server.
    OtherServer,
}

impl OpenError {
    /// The audit reason, with `what` naming the value ("session").
    pub fn reason(self, what: &str) -> String {
        let why = match self {
            OpenError::NotSealed => "not_sealed",
            OpenError::UnknownKey => "key_unknown",
            OpenError::Tampered => "tampered",
            OpenError::OtherCaller => "of_another_caller",
            OpenError::OtherServer => "of_another_server",
        };
        format!("{what}_{why}")
    }
}

/// One sealing key, with what is derived from it.
#[derive(Clone)]
struct Key {
    id: [u8; KID],
    aes: Aes256GcmSiv,
    chacha: XChaCha20Poly1305,
    /// HMAC-SHA-256 keyed with the nonce key: its padded key blocks are hashed once here, and
    /// each handle's nonce starts from a copy (two SHA-256 blocks fewer per handle).
    nonce_mac: Hmac<Sha256>,
    /// HMAC-SHA-256 keyed for local limits' slots ([`Keys::limit_slots`]).
    slots_mac: Hmac<Sha256>,
}

impl Key {
    fn new(secret: &[u8; KEY_BYTES]) -> Key {
        let aes = derive(secret, b"mcp-guard seal v1 encryption");
        let chacha = derive(secret, b"mcp-guard seal v2 encryption");
        let nonce_key = derive(secret, b"mcp-guard seal v1 nonce");
        let nonce_mac = keyed_mac(&nonce_key);
        let full_id = derive(secret, b"mcp-guard seal v1 key id");
        let mut id = [0u8; KID];
        id.copy_from_slice(full_id.get(..KID).unwrap_or(&[0; KID]));
        Key {
            id,
            aes: Aes256GcmSiv::new(&aes.into()),
            chacha: XChaCha20Poly1305::new(&chacha.into()),
            nonce_mac,
            slots_mac: keyed_mac(&derive(secret, b"mcp-guard limit slots v1")),
        }
    }
}

impl Key {
    /// Encrypts (`seal`) or decrypts and authenticates `msg` with `cipher`; `None` when the
    /// nonce is not that cipher's length or the message does not authenticate.
    fn crypt(
        &self,
        cipher: Cipher,
        nonce: &[u8],
        msg: &[u8],
        aad: &[u8],
        seal: bool,
    ) -> Option<Vec<u8>> {
        let payload = Payload { msg, aad };
        match cipher {
            Cipher::Aes256GcmSiv => {
                let nonce = <[u8; 12]>::try_from(nonce).ok()?;
                run(&self.aes, &nonce.into(), payload, seal)
            }
            Cipher::XChaCha20Poly1305 => {
                let nonce = <[u8; 24]>::try_from(nonce).ok()?;
                run(&self.chacha, &nonce.into(), payload, seal)
            }
        }
    }
}

/// One AEAD operation; `None` when `payload` does not authenticate.
fn run<A: Aead>(
    aead: &A,
    nonce: &aes_gcm_siv::aead::Nonce<A>,
    payload: Payload<'_, '_>,
    seal: bool,
) -> Option<Vec<u8>> {
    if seal {
        aead.encrypt(nonce, payload).ok()
    } else {
        aead.decrypt(nonce, payload).ok()
    }
}

/// The sealing keys: new handles are sealed with `current` and `cipher`; `previous` still
/// opens its own.
#[derive(Clone)]
pub struct Keys {
    current: Key,
    previous: Option<Key>,
    cipher: Cipher,
    memo: RefCell<Memo>,
}

/// How many handles [`Memo`] keeps, each way; it starts over when full.
const MEMO_ENTRIES: usize = 1024;
/// The longest binding and value [`Memo`] keeps (a caller id can be as long as a token): with
/// [`MAX_HANDLE`], what bounds it to about 2.5 MiB per VM. Longer ones are sealed and opened
/// anew each time.
const MEMO_KEY_BYTES: usize = 512;

/// Handles this VM sealed or opened lately, with the binding and value they carry. A session's
/// every call presents its handle, and a server names its session id on every answer (the
/// TypeScript SDK does), so the same handle is opened and sealed again on each call: in Wasm,
/// without AES instructions, that is about 6 µs of AES-GCM-SIV (a key schedule per message) and
/// SHA-256 each time, 2 µs with XChaCha20-Poly1305. Sealing is deterministic, so a memoized handle is exactly
/// the one sealing would make; an opened handle is returned from here only for the exact
/// binding it opened for (anything else goes through [`Keys::open`]'s checks). It lives with
/// its keys: new keys (rotation, a configuration change) start with an empty one.
///
/// Hashed with foldhash (several times faster than SipHash in Wasm): nobody can choose what is
/// stored, only handles that opened (their bytes are the cipher's, unpredictable without the
/// key) and what was sealed for an upstream's session id.
#[derive(Clone, Default)]
struct Memo {
    /// `memo_key(binding, value)` → handle.
    sealed: HashMap<Vec<u8>, String, foldhash::fast::FixedState>,
    /// handle → `memo_key(binding, value)`.
    opened: HashMap<String, Vec<u8>, foldhash::fast::FixedState>,
    /// `memo_key(binding, b"")` → the caller's and the server's fingerprints, as sealed into
    /// every handle of that binding: the handles of one caller's sessions on one server (each
    /// new session's, each handle this VM has not seen) carry the same ones.
    fingerprints: HashMap<Vec<u8>, [u8; CALLER_FP + SERVER_FP], foldhash::fast::FixedState>,
}

impl Memo {
    /// Whether `key` is kept at all; if so, room is made for it.
    fn room_for(&mut self, key: &[u8]) -> bool {
        if key.len() > MEMO_KEY_BYTES {
            return false;
        }
        if self.sealed.len() >= MEMO_ENTRIES || self.opened.len() >= MEMO_ENTRIES {
            self.sealed.clear();
            self.opened.clear();
        }
        true
    }

    /// A handle just sealed (with the current key): it opens to `key` too.
    fn sealed(&mut self, key: Vec<u8>, handle: String) {
        if self.room_for(&key) {
            self.opened.insert(handle.clone(), key.clone());
            self.sealed.insert(key, handle);
        }
    }

    /// The fingerprints of the binding whose `memo_key` is `prefix`, computed only when this
    /// VM has not lately.
    fn fingerprints(&mut self, prefix: &[u8], binding: &Binding) -> [u8; CALLER_FP + SERVER_FP] {
        if let Some(both) = self.fingerprints.get(prefix) {
            return *both;
        }
        let mut both = [0u8; CALLER_FP + SERVER_FP];
        let (caller, server) = both.split_at_mut(CALLER_FP);
        caller.copy_from_slice(&caller_fingerprint(binding));
        server.copy_from_slice(&server_fingerprint(binding.server));
        if prefix.len() <= MEMO_KEY_BYTES {
            if self.fingerprints.len() >= MEMO_ENTRIES {
                self.fingerprints.clear();
            }
            self.fingerprints.insert(prefix.to_vec(), both);
        }
        both
    }

    /// A handle just opened. It is also what sealing its binding and value would make when it
    /// is the current key's and cipher's (sealing is deterministic): a session's handle opened
    /// here is then not sealed again for the answer that names the session.
    fn opened(&mut self, handle: String, key: Vec<u8>, sealable: bool) {
        if self.room_for(&key) {
            if sealable {
                self.sealed.insert(key.clone(), handle.clone());
            }
            self.opened.insert(handle, key);
        }
    }
}

/// The binding's fields, length-prefixed, then the value: equal exactly when binding and value
/// are.
fn memo_key(binding: &Binding, value: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(64 + value.len());
    for part in [
        binding.purpose,
        binding.issuer,
        binding.caller,
        binding.server,
    ] {
        key.extend_from_slice(&(part.len() as u64).to_be_bytes());
        key.extend_from_slice(part.as_bytes());
    }
    key.push(u8::from(binding.by_client));
    key.extend_from_slice(value);
    key
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Key ids are public (they are in every handle); the keys never appear.
        f.debug_struct("Keys")
            .field("current", &hex(&self.current.id))
            .field("previous", &self.previous.as_ref().map(|k| hex(&k.id)))
            .finish()
    }
}

impl Keys {
    /// Keys that seal with AES-256-GCM-SIV (`mg1`); see [`Keys::sealing_with`].
    pub fn new(current: &[u8; KEY_BYTES], previous: Option<&[u8; KEY_BYTES]>) -> Keys {
        Keys {
            current: Key::new(current),
            previous: previous.map(Key::new),
            cipher: Cipher::default(),
            memo: RefCell::default(),
        }
    }

    /// The same keys, sealing new handles with `cipher` (both ciphers' handles open).
    pub fn sealing_with(self, cipher: Cipher) -> Keys {
        Keys {
            cipher,
            memo: RefCell::default(),
            ..self
        }
    }

    /// The keyed hash that places a local limit's keys in its slots: callers who choose a
    /// key (`key: mcp.tool.arguments.to`) cannot work out which slots it takes, so cannot fill
    /// another key's. The same on every worker and replica; a new current key moves every key
    /// to new slots (local windows start afresh).
    pub fn limit_slots(&self) -> &Hmac<Sha256> {
        &self.current.slots_mac
    }

    /// Seals `value` for `binding`. `None` when the value is longer than [`MAX_VALUE`].
    pub fn seal(&self, binding: &Binding, value: &[u8]) -> Option<String> {
        if value.len() > MAX_VALUE {
            return None;
        }
        let key = memo_key(binding, value);
        if let Some(handle) = self.memo.borrow().sealed.get(&key) {
            return Some(handle.clone());
        }
        let prefix = key
            .get(..key.len().saturating_sub(value.len()))
            .unwrap_or_default();
        let fingerprints = self.memo.borrow_mut().fingerprints(prefix, binding);
        let handle = self.seal_anew(&fingerprints, binding, value)?;
        self.memo.borrow_mut().sealed(key, handle.clone());
        Some(handle)
    }

    /// `fingerprints`: the binding's caller's and server's ([`Memo::fingerprints`]).
    fn seal_anew(
        &self,
        fingerprints: &[u8; CALLER_FP + SERVER_FP],
        binding: &Binding,
        value: &[u8],
    ) -> Option<String> {
        let key = &self.current;
        let cipher = self.cipher;
        let aad = associated_data(cipher, &key.id, binding.purpose);
        let mut plaintext = Vec::with_capacity(CALLER_FP + SERVER_FP + value.len());
        plaintext.extend_from_slice(fingerprints);
        plaintext.extend_from_slice(value);

        let mut mac = key.nonce_mac.clone();
        if cipher == Cipher::XChaCha20Poly1305 {
            // No two (associated data, plaintext) pairs give the MAC the same input.
            mac.update(&(aad.len() as u64).to_be_bytes());
        }
        mac.update(&aad);
        mac.update(&plaintext);
        let tag = mac.finalize().into_bytes();
        let nonce = tag.get(..cipher.nonce_len())?;
        let sealed = key.crypt(cipher, nonce, &plaintext, &aad, true)?;
        let mut raw = Vec::with_capacity(KID + nonce.len() + sealed.len());
        raw.extend_from_slice(&key.id);
        raw.extend_from_slice(nonce);
        raw.extend_from_slice(&sealed);
        Some(format!(
            "{}{}",
            cipher.prefix(),
            URL_SAFE_NO_PAD.encode(raw)
        ))
    }

    /// Opens `handle` for `binding`: the value it carries, or why not.
    pub fn open(&self, handle: &str, binding: &Binding) -> Result<Vec<u8>, OpenError> {
        // Bounded before anything is decoded.
        if handle.len() > MAX_HANDLE {
            return Err(OpenError::NotSealed);
        }
        let expected = memo_key(binding, b"");
        if let Some(value) = self
            .memo
            .borrow()
            .opened
            .get(handle)
            .and_then(|key| key.strip_prefix(expected.as_slice()).map(<[u8]>::to_vec))
        {
            return Ok(value);
        }
        let (value, sealable) = self.open_anew(handle, &expected, binding)?;
        let mut key = expected;
        key.extend_from_slice(&value);
        self.memo
            .borrow_mut()
            .opened(handle.to_owned(), key, sealable);
        Ok(value)
    }

    /// The value, and whether the handle is the current key's and cipher's.
    /// `prefix`: the binding's `memo_key`.
    fn open_anew(
        &self,
        handle: &str,
        prefix: &[u8],
        binding: &Binding,
    ) -> Result<(Vec<u8>, bool), OpenError> {
        let (cipher, encoded) = Cipher::ALL
            .iter()
            .find_map(|(_, c)| Some((*c, handle.strip_prefix(c.prefix())?)))
            .ok_or(OpenError::NotSealed)?;
        let raw = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| OpenError::NotSealed)?;
        if raw.len() < KID + cipher.nonce_len() + CALLER_FP + SERVER_FP + TAG {
            return Err(OpenError::NotSealed);
        }
        let (kid, rest) = raw.split_at_checked(KID).ok_or(OpenError::NotSealed)?;
        let (nonce, sealed) = rest
            .split_at_checked(cipher.nonce_len())
            .ok_or(OpenError::NotSealed)?;
        let key = std::iter::once(&self.current)
            .chain(self.previous.as_ref())
            .find(|k| k.id == kid)
            .ok_or(OpenError::UnknownKey)?;
        let aad = associated_data(cipher, &key.id, binding.purpose);
        let plaintext = key
            .crypt(cipher, nonce, sealed, &aad, false)
            .ok_or(OpenError::Tampered)?;
        let (caller, rest) = plaintext
            .split_at_checked(CALLER_FP)
            .ok_or(OpenError::Tampered)?;
        let (server, value) = rest
            .split_at_checked(SERVER_FP)
            .ok_or(OpenError::Tampered)?;
        let expected = self.memo.borrow_mut().fingerprints(prefix, binding);
        let (expected_caller, expected_server) = expected.split_at(CALLER_FP);
        if caller != expected_caller {
            return Err(OpenError::OtherCaller);
        }
        if server != expected_server {
            return Err(OpenError::OtherServer);
        }
        let sealable = cipher == self.cipher && std::ptr::eq(key, &self.current);
        Ok((value.to_vec(), sealable))
    }
}

fn derive(secret: &[u8], label: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    if let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(secret) {
        mac.update(label);
        out.copy_from_slice(&mac.finalize().into_bytes());
    }
    out
}

/// HMAC-SHA-256 under a 32-byte key. RFC 2104 pads a key shorter than the hash's 64-byte block
/// with zeros; given as that block, the key needs no fallible length check.
fn keyed_mac(key: &[u8; 32]) -> Hmac<Sha256> {
    let mut block = [0u8; 64];
    block.iter_mut().zip(key).for_each(|(b, k)| *b = *k);
    <Hmac<Sha256> as KeyInit>::new(&block.into())
}

fn associated_data(cipher: Cipher, kid: &[u8], purpose: &str) -> Vec<u8> {
    [cipher.version(), kid, purpose.as_bytes()].concat()
}

/// Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
fn caller_fingerprint(binding: &Binding) -> [u8; CALLER_FP] {
    let mut h = Sha256::new();
    h.update(b"mcp-guard caller");
    for part in [binding.issuer, binding.caller] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    if binding.by_client {
        // One more length-prefixed part: no (issuer, subject) pair hashes the same input.
        h.update(6u64.to_be_bytes());
        h.update(b"client");
    }
    truncate(&h.finalize())
}

fn server_fingerprint(server: &str) -> [u8; SERVER_FP] {
    let mut h = Sha256::new();
    h.update(b"mcp-guard server");
    h.update(server.as_bytes());
    truncate(&h.finalize())
}

fn truncate<const N: usize>(digest: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(head) = digest.get(..N) {
        out.copy_from_slice(head);
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    base16ct::lower::encode_string(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 32] = [7; 32];
    const B: [u8; 32] = [9; 32];

    fn alice() -> Binding<'static> {
        Binding {
            purpose: "session",
            issuer: "https://idp.example",
            caller: "alice",
            by_client: false,
            server: "crm",
        }
    }

    #[test]
    fn a_sealed_value_opens_for_its_binding_only() {
        for cipher in [Cipher::Aes256GcmSiv, Cipher::XChaCha20Poly1305] {
            a_sealed_value_opens_for_its_binding_only_with(cipher);
        }
    }

    fn a_sealed_value_opens_for_its_binding_only_with(cipher: Cipher) {
        let keys = Keys::new(&A, None).sealing_with(cipher);
        let handle = keys.seal(&alice(), b"upstream-session-1").expect("sealed");
        assert!(handle.starts_with(cipher.prefix()), "{handle}");
        assert!(handle.len() <= MAX_HANDLE);
        assert!(
            handle.bytes().all(|b| (0x21..=0x7e).contains(&b)),
            "{handle}"
        );
        assert!(!handle.contains("upstream-session-1"));
        assert_eq!(
            keys.open(&handle, &alice()),
            Ok(b"upstream-session-1".to_vec())
        );

        let bob = Binding {
            caller: "bob",
            by_client: false,
            ..alice()
        };
        assert_eq!(keys.open(&handle, &bob), Err(OpenError::OtherCaller));
        let other_issuer = Binding {
            issuer: "https://other.example",
            ..alice()
        };
        assert_eq!(
            keys.open(&handle, &other_issuer),
            Err(OpenError::OtherCaller)
        );
        let other_server = Binding {
            server: "billing",
            ..alice()
        };
        assert_eq!(
            keys.open(&handle, &other_server),
            Err(OpenError::OtherServer)
        );
        let task = Binding {
            purpose: "task",
            ..alice()
        };
        assert_eq!(keys.open(&handle, &task), Err(OpenError::Tampered));
        // (issuer, caller) pairs are not confused by where the boundary is.
        let shifted = Binding {
            issuer: "https://idp.examplea",
            caller: "lice",
            by_client: false,
            ..alice()
        };
        assert_eq!(keys.open(&handle, &shifted), Err(OpenError::OtherCaller));
    }

    /// A handle as every release since each format's first seals it: replicas are upgraded
    /// one at a time, and a session opened on an old one must open on a new one (and the same
    /// session must get the same handle from both).
    #[test]
    fn the_formats_are_stable_across_releases() {
        let binding = Binding {
            purpose: "session",
            issuer: "https://idp.example/",
            caller: "alice",
            by_client: false,
            server: "crm",
        };
        for (cipher, handle) in [
            (Cipher::Aes256GcmSiv, "mg1.XJEjxkTqjusNfFxUPsZUzLHOcMwd3D_fV5En3Pgm5IMks3j9oveOvQxEtLuwAImY8XN-yeoLCqGeJ9UdvF6fbrLvqwnHUQZn"),
            (Cipher::XChaCha20Poly1305, "mg2.XJEjxhkJhRJs3GocukZTQvQHaiaHw6SzCazb8iZM3977auBaFe_ZqPwvKWLD-3wO7Hrr-WvC2mAvngCWI2Prqjcp4ecg4VT7lI-RAGsVrQRTwVE_"),
        ] {
            let keys = Keys::new(&[7; 32], None).sealing_with(cipher);
            assert_eq!(
                keys.seal(&binding, b"3f2a6c1e-session").as_deref(),
                Some(handle)
            );
            let fresh = Keys::new(&[7; 32], None);
            assert_eq!(
                fresh.open(handle, &binding),
                Ok(b"3f2a6c1e-session".to_vec())
            );
        }
    }

    /// Replicas switch `sessions.cipher` one at a time: each opens what the other seals, and
    /// a session's handle is re-sealed in the cipher of whichever replica answers.
    #[test]
    fn either_cipher_opens_the_others_handles() {
        let aes = Keys::new(&A, None);
        let chacha = Keys::new(&A, None).sealing_with(Cipher::XChaCha20Poly1305);
        let one = aes.seal(&alice(), b"s-1").expect("sealed");
        let two = chacha.seal(&alice(), b"s-1").expect("sealed");
        assert!(
            one.starts_with("mg1.") && two.starts_with("mg2."),
            "{one} {two}"
        );
        for keys in [&aes, &chacha] {
            for handle in [&one, &two] {
                assert_eq!(keys.open(handle, &alice()), Ok(b"s-1".to_vec()));
                let bob = Binding {
                    caller: "bob",
                    ..alice()
                };
                assert_eq!(keys.open(handle, &bob), Err(OpenError::OtherCaller));
            }
        }
        // The other cipher's handle is never taken for the prefix it does not carry.
        let swapped = format!("mg1.{}", &two[4..]);
        assert!(Keys::new(&A, None).open(&swapped, &alice()).is_err());
        let swapped = format!("mg2.{}", &one[4..]);
        assert!(Keys::new(&A, None).open(&swapped, &alice()).is_err());
        // A key unknown to either is unknown whatever the cipher.
        let other = Keys::new(&B, None);
        assert_eq!(other.open(&two, &alice()), Err(OpenError::UnknownKey));
    }

    /// A handle opened here (another replica or VM sealed it) is what sealing makes when it is
    /// the current key's and cipher's: the answer naming the session again is not sealed anew.
    /// A handle of the previous key or the other cipher is not: the answer gets the current one.
    #[test]
    fn an_opened_handle_is_sealed_again_only_as_the_keys_would_seal_it() {
        let handle = Keys::new(&A, None).seal(&alice(), b"s-1").expect("sealed");
        let here = Keys::new(&A, None);
        assert_eq!(here.open(&handle, &alice()), Ok(b"s-1".to_vec()));
        assert_eq!(here.memo.borrow().sealed.len(), 1);
        assert_eq!(here.seal(&alice(), b"s-1"), Some(handle.clone()));

        let switched = Keys::new(&A, None).sealing_with(Cipher::XChaCha20Poly1305);
        assert_eq!(switched.open(&handle, &alice()), Ok(b"s-1".to_vec()));
        assert!(switched.memo.borrow().sealed.is_empty());
        let resealed = switched.seal(&alice(), b"s-1").expect("sealed");
        assert!(resealed.starts_with("mg2."), "{resealed}");

        let rotated = Keys::new(&B, Some(&A));
        assert_eq!(rotated.open(&handle, &alice()), Ok(b"s-1".to_vec()));
        assert!(rotated.memo.borrow().sealed.is_empty());
        let resealed = rotated.seal(&alice(), b"s-1").expect("sealed");
        assert_ne!(resealed, handle);
        assert_eq!(
            Keys::new(&B, None).open(&resealed, &alice()),
            Ok(b"s-1".to_vec())
        );
    }

    #[test]
    fn the_nonce_mac_is_hmac_under_the_32_byte_key() {
        let key = [0x5a; 32];
        let mut ours = keyed_mac(&key);
        let mut plain = <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("any key length");
        ours.update(b"message");
        plain.update(b"message");
        assert_eq!(ours.finalize().into_bytes(), plain.finalize().into_bytes());
    }

    #[test]
    fn sealing_is_deterministic_per_key_binding_and_value() {
        let keys = Keys::new(&A, None);
        let one = keys.seal(&alice(), b"s-1").expect("sealed");
        assert_eq!(keys.seal(&alice(), b"s-1"), Some(one.clone()));
        assert_ne!(keys.seal(&alice(), b"s-2"), Some(one.clone()));
        let bob = Binding {
            caller: "bob",
            by_client: false,
            ..alice()
        };
        assert_ne!(keys.seal(&bob, b"s-1"), Some(one.clone()));
        assert_ne!(Keys::new(&B, None).seal(&alice(), b"s-1"), Some(one));
    }

    #[test]
    fn every_changed_byte_is_refused() {
        for cipher in [Cipher::Aes256GcmSiv, Cipher::XChaCha20Poly1305] {
            every_changed_byte_is_refused_with(cipher);
        }
    }

    fn every_changed_byte_is_refused_with(cipher: Cipher) {
        let keys = Keys::new(&A, None).sealing_with(cipher);
        let handle = keys.seal(&alice(), b"upstream-session-1").expect("sealed");
        assert!(handle.starts_with(cipher.prefix()), "{handle}");
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        for at in 0..handle.len() {
            let mut bytes = handle.clone().into_bytes();
            let was = bytes[at];
            bytes[at] = alphabet
                .iter()
                .copied()
                .find(|&c| c != was)
                .expect("another letter");
            let changed = String::from_utf8(bytes).expect("ascii");
            let got = keys.open(&changed, &alice());
            assert!(
                got.is_err(),
                "{cipher:?}: byte {at} changed and still opened"
            );
            if at >= 4 + 6 {
                // Past the key id: the right key, bytes changed.
                assert!(
                    matches!(got, Err(OpenError::Tampered) | Err(OpenError::NotSealed)),
                    "byte {at}: {got:?}"
                );
            }
        }
    }

    #[test]
    fn rotation_opens_the_previous_keys_handles_and_seals_with_the_new() {
        let old = Keys::new(&A, None);
        let handle = old.seal(&alice(), b"s-1").expect("sealed");
        let rotated = Keys::new(&B, Some(&A));
        assert_eq!(rotated.open(&handle, &alice()), Ok(b"s-1".to_vec()));
        let resealed = rotated.seal(&alice(), b"s-1").expect("sealed");
        assert_ne!(resealed, handle);
        assert_eq!(old.open(&resealed, &alice()), Err(OpenError::UnknownKey));
        // Once the old key is dropped, its handles no longer open.
        let done = Keys::new(&B, None);
        assert_eq!(done.open(&handle, &alice()), Err(OpenError::UnknownKey));
        assert_eq!(done.open(&resealed, &alice()), Ok(b"s-1".to_vec()));
    }

    #[test]
    fn a_remembered_handle_answers_as_the_keys_do() {
        let keys = Keys::new(&A, None);
        let handle = keys.seal(&alice(), b"s-1").expect("sealed");
        // Sealed again and opened again: the same handle, the same value, from the memo.
        assert_eq!(
            keys.seal(&alice(), b"s-1").as_deref(),
            Some(handle.as_str())
        );
        assert_eq!(keys.open(&handle, &alice()), Ok(b"s-1".to_vec()));
        assert_eq!(keys.open(&handle, &alice()), Ok(b"s-1".to_vec()));
        // For any other binding it is checked as if never seen.
        let other = |b: Binding<'static>| keys.open(&handle, &b);
        assert_eq!(
            other(Binding {
                caller: "bob",
                ..alice()
            }),
            Err(OpenError::OtherCaller)
        );
        assert_eq!(
            other(Binding {
                by_client: true,
                ..alice()
            }),
            Err(OpenError::OtherCaller)
        );
        assert_eq!(
            other(Binding {
                server: "billing",
                ..alice()
            }),
            Err(OpenError::OtherServer)
        );
        assert_eq!(
            other(Binding {
                purpose: "task",
                ..alice()
            }),
            Err(OpenError::Tampered)
        );
        // A handle another VM sealed (nothing remembered here) opens the same.
        let fresh = Keys::new(&A, None);
        assert_eq!(fresh.open(&handle, &alice()), Ok(b"s-1".to_vec()));
        assert_eq!(fresh.seal(&alice(), b"s-1"), Some(handle));
    }

    #[test]
    fn the_memo_is_bounded() {
        let keys = Keys::new(&A, None);
        let values: Vec<String> = (0..3 * MEMO_ENTRIES).map(|i| format!("s-{i}")).collect();
        let handles: Vec<String> = values
            .iter()
            .map(|v| keys.seal(&alice(), v.as_bytes()).expect("sealed"))
            .collect();
        {
            let memo = keys.memo.borrow();
            assert!(memo.sealed.len() <= MEMO_ENTRIES && memo.opened.len() <= MEMO_ENTRIES);
        }
        for (value, handle) in values.iter().zip(&handles) {
            assert_eq!(keys.open(handle, &alice()), Ok(value.as_bytes().to_vec()));
        }
        let memo = keys.memo.borrow();
        assert!(memo.sealed.len() <= MEMO_ENTRIES && memo.opened.len() <= MEMO_ENTRIES);
        assert!(memo.sealed.keys().all(|k| k.len() <= MEMO_KEY_BYTES));
        drop(memo);
        // A caller id as long as a token allows is sealed and opened, never remembered.
        let long = "x".repeat(16 * 1024);
        let binding = Binding {
            caller: &long,
            ..alice()
        };
        let before = keys.memo.borrow().opened.len();
        let handle = keys.seal(&binding, b"s-long").expect("sealed");
        assert_eq!(keys.open(&handle, &binding), Ok(b"s-long".to_vec()));
        assert_eq!(keys.open(&handle, &alice()), Err(OpenError::OtherCaller));
        assert_eq!(keys.memo.borrow().opened.len(), before);
        assert!(keys.memo.borrow().fingerprints.len() <= MEMO_ENTRIES);
    }

    #[test]
    fn remembered_fingerprints_bind_as_computed_ones_do() {
        // Many callers on two servers, more than the memo keeps: every handle still opens for
        // its own caller and server only, whether its fingerprints were remembered or not.
        let keys = Keys::new(&A, None).sealing_with(Cipher::XChaCha20Poly1305);
        let callers: Vec<String> = (0..MEMO_ENTRIES + 7).map(|i| format!("user-{i}")).collect();
        for (i, caller) in callers.iter().enumerate() {
            let crm = Binding { caller, ..alice() };
            let billing = Binding {
                server: "billing",
                ..crm
            };
            let next = Binding {
                caller: &callers[(i + 1) % callers.len()],
                ..crm
            };
            let handle = keys.seal(&crm, b"s").expect("sealed");
            let fresh = Keys::new(&A, None).sealing_with(Cipher::XChaCha20Poly1305);
            assert_eq!(handle, fresh.seal(&crm, b"s").expect("sealed"));
            assert_eq!(keys.open(&handle, &billing), Err(OpenError::OtherServer));
            assert_eq!(keys.open(&handle, &next), Err(OpenError::OtherCaller));
            assert_eq!(fresh.open(&handle, &next), Err(OpenError::OtherCaller));
            assert_eq!(keys.open(&handle, &crm), Ok(b"s".to_vec()));
            assert!(keys.memo.borrow().fingerprints.len() <= MEMO_ENTRIES);
        }
    }

    #[test]
    fn what_was_never_sealed_is_refused_before_decryption() {
        let keys = Keys::new(&A, None);
        for id in [
            "",
            "s-1",
            "mg1.",
            "mg1.!!!!",
            "mg1.AAAA",
            "mg2.",
            "mg2.AAAA",
            "mg3.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "MG1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert_eq!(keys.open(id, &alice()), Err(OpenError::NotSealed), "{id}");
        }
        for prefix in ["mg1.", "mg2."] {
            let long = format!("{prefix}{}", "A".repeat(MAX_HANDLE));
            assert_eq!(keys.open(&long, &alice()), Err(OpenError::NotSealed));
        }
    }

    #[test]
    fn values_are_bounded() {
        for cipher in [Cipher::Aes256GcmSiv, Cipher::XChaCha20Poly1305] {
            let keys = Keys::new(&A, None).sealing_with(cipher);
            let biggest = vec![b'x'; MAX_VALUE];
            let handle = keys.seal(&alice(), &biggest).expect("sealed");
            assert!(
                handle.len() <= MAX_HANDLE,
                "{} > {MAX_HANDLE}",
                handle.len()
            );
            assert_eq!(keys.open(&handle, &alice()), Ok(biggest));
            assert_eq!(keys.seal(&alice(), &[b'x'; MAX_VALUE + 1]), None);
        }
    }

    #[test]
    fn debug_never_shows_a_key() {
        let text = format!("{:?}", Keys::new(&A, Some(&B)));
        assert!(!text.contains("7, 7") && !text.contains("0707"), "{text}");
    }
}
