//! `ES384` (ECDSA on P-384 with SHA-384) for jwt-compact, which ships ES256 only.

use std::borrow::Cow;
use std::num::NonZeroUsize;

use jwt_compact::{Algorithm, AlgorithmSignature};
use p384::ecdsa::signature::{DigestSigner, DigestVerifier};
use p384::ecdsa::{Signature, SigningKey, VerifyingKey};
use sha2::{Digest, Sha384};

/// The `ES384` algorithm.
#[derive(Debug, Default, Clone, Copy)]
pub struct Es384;

/// A fixed-size (r ‖ s, 96 bytes) P-384 signature.
#[derive(Debug)]
pub struct Es384Signature(Signature);

impl AlgorithmSignature for Es384Signature {
    const LENGTH: Option<NonZeroUsize> = NonZeroUsize::new(96);

    fn try_from_slice(slice: &[u8]) -> anyhow::Result<Self> {
        Signature::try_from(slice)
            .map(Es384Signature)
            .map_err(|e| anyhow::anyhow!("invalid ES384 signature: {e}"))
    }

    fn as_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.0.to_bytes().to_vec())
    }
}

impl Algorithm for Es384 {
    type SigningKey = SigningKey;
    type VerifyingKey = VerifyingKey;
    type Signature = Es384Signature;

    fn name(&self) -> Cow<'static, str> {
        Cow::Borrowed("ES384")
    }

    fn sign(&self, signing_key: &SigningKey, message: &[u8]) -> Es384Signature {
        Es384Signature(signing_key.sign_digest(Sha384::new_with_prefix(message)))
    }

    fn verify_signature(
        &self,
        signature: &Es384Signature,
        key: &VerifyingKey,
        message: &[u8],
    ) -> bool {
        key.verify_digest(Sha384::new_with_prefix(message), &signature.0)
            .is_ok()
    }
}

/// A P-384 public key from its JWK coordinates.
pub fn verifying_key(x: &[u8], y: &[u8]) -> Result<VerifyingKey, String> {
    if x.len() != 48 || y.len() != 48 {
        return Err("P-384 coordinates must be 48 bytes each".into());
    }
    let point = p384::EncodedPoint::from_affine_coordinates(x.into(), y.into(), false);
    VerifyingKey::from_encoded_point(&point).map_err(|e| format!("invalid P-384 key: {e}"))
}
