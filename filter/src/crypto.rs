//! Signature checks by the host's crypto: Envoy registers a Wasm foreign function,
//! `verify_signature`, that verifies with its own BoringSSL (`EVP_DigestVerify`). An RS256 check
//! in Wasm costs hundreds of microseconds under V8 (no 64×64→128-bit multiplication in wasm32:
//! big-number arithmetic runs on 32-bit limbs); BoringSSL does it natively in tens.
//!
//! The JWT and DPoP logic call the [`SignatureHost`] trait and stay free of hostcalls: the
//! proxy-wasm adapter implements it with the foreign function, native builds and tests run
//! without one (every signature is then checked by the Rust crates, as it is in Wasm whenever
//! the host declines). Only algorithms whose meaning the host call cannot change are handed
//! over: PKCS#1 v1.5 RSA (`RS256/384/512`: BoringSSL's default padding for an RSA key) and
//! ECDSA on P-256/P-384 (`ES256/384`, the JWS `r ‖ s` signature re-encoded as DER, which is
//! what `EVP_DigestVerify` takes). RSA-PSS needs a padding parameter the function has no field
//! for, and Ed25519 cannot take the digest it always passes: both stay in Wasm.
//!
//! The arguments and result are protobuf messages (Envoy's
//! `source/extensions/common/wasm/ext/verify_signature.proto`), declared here and encoded with
//! `prost`, like the rate limit service's ([`crate::rls`]).

use std::fmt;
use std::rc::Rc;

use prost::Message;

/// The foreign function Envoy registers (`source/extensions/common/wasm/foreign.cc`).
pub const VERIFY_SIGNATURE: &str = "verify_signature";

/// One signature check for the host.
#[derive(Debug, Clone, Copy)]
pub struct VerifyRequest<'a> {
    /// `sha256`, `sha384` or `sha512`.
    pub hash: &'static str,
    /// The public key as DER `SubjectPublicKeyInfo`.
    pub public_key_der: &'a [u8],
    /// RSA: the raw signature; ECDSA: DER `ECDSA-Sig-Value`.
    pub signature: &'a [u8],
    /// What was signed (`header.payload` of a JWS).
    pub text: &'a [u8],
}

/// Verifies signatures outside the Wasm VM.
pub trait SignatureHost: fmt::Debug {
    /// `Some(valid)`: the host checked the signature. `None`: it could not (no such function in
    /// this Envoy, a key it cannot import): the caller verifies in Wasm instead, so a `None`
    /// never weakens a check, it only costs time.
    fn verify(&self, request: &VerifyRequest<'_>) -> Option<bool>;
}

/// The [`SignatureHost`] in use, if any: a configuration's field. Configurations compare equal
/// whatever host they use (it changes how fast a check is, never its outcome).
#[derive(Clone, Default)]
pub struct Signatures(Option<Rc<dyn SignatureHost>>);

impl Signatures {
    pub fn new(host: Rc<dyn SignatureHost>) -> Self {
        Signatures(Some(host))
    }

    pub fn host(&self) -> Option<&dyn SignatureHost> {
        self.0.as_deref()
    }
}

impl fmt::Debug for Signatures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(host) => write!(f, "Signatures({host:?})"),
            None => f.write_str("Signatures(in Wasm)"),
        }
    }
}

impl PartialEq for Signatures {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Signatures {}

/// `envoy.source.extensions.common.wasm.VerifySignatureArguments`.
#[derive(Clone, PartialEq, Message)]
pub struct VerifySignatureArguments {
    #[prost(string, tag = "1")]
    pub hash_function: String,
    /// DER `SubjectPublicKeyInfo` (BoringSSL's `EVP_parse_public_key`).
    #[prost(bytes = "vec", tag = "2")]
    pub public_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    pub signature: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    pub text: Vec<u8>,
}

/// `envoy.source.extensions.common.wasm.VerifySignatureResult`.
#[derive(Clone, PartialEq, Message)]
pub struct VerifySignatureResult {
    #[prost(bool, tag = "1")]
    pub result: bool,
    #[prost(string, tag = "2")]
    pub error: String,
}

/// The foreign function's argument bytes for `request`.
pub fn encode_arguments(request: &VerifyRequest<'_>) -> Vec<u8> {
    VerifySignatureArguments {
        hash_function: request.hash.to_string(),
        public_key: request.public_key_der.to_vec(),
        signature: request.signature.to_vec(),
        text: request.text.to_vec(),
    }
    .encode_to_vec()
}

/// The verdict in the foreign function's answer; `None` when the answer does not parse (the
/// caller then verifies in Wasm).
pub fn decode_result(bytes: &[u8]) -> Option<bool> {
    VerifySignatureResult::decode(bytes).ok().map(|r| r.result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_round_trip_with_the_envoy_field_numbers() {
        let request = VerifyRequest {
            hash: "sha256",
            public_key_der: &[0x30, 0x01],
            signature: &[1, 2, 3],
            text: b"a.b",
        };
        let bytes = encode_arguments(&request);
        // Field 1 (string, wire type 2) comes first: tag byte 0x0a, length 6, "sha256".
        assert_eq!(bytes.get(..8), Some(&b"\x0a\x06sha256"[..]));
        let back = VerifySignatureArguments::decode(bytes.as_slice()).unwrap();
        assert_eq!(back.public_key, vec![0x30, 0x01]);
        assert_eq!(back.signature, vec![1, 2, 3]);
        assert_eq!(back.text, b"a.b".to_vec());
    }

    #[test]
    fn result_decodes_and_defaults_to_invalid() {
        let ok = VerifySignatureResult {
            result: true,
            error: String::new(),
        }
        .encode_to_vec();
        assert_eq!(decode_result(&ok), Some(true));
        // proto3: a false `result` is not written at all; an empty answer is "invalid".
        assert_eq!(decode_result(&[]), Some(false));
        let failed = VerifySignatureResult {
            result: false,
            error: "Failed to verify digest. Error code: 0".into(),
        }
        .encode_to_vec();
        assert_eq!(decode_result(&failed), Some(false));
        assert_eq!(decode_result(&[0xff, 0xff]), None);
    }
}
