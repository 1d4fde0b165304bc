//! Byte-string comparison for the Wasm build: a slice comparison calls libc's `memcmp`, which
//! in wasi-libc goes a byte at a time; tokens (a kilobyte) and remembered listings (a hundred
//! kilobytes) are compared whole on every request.

/// `a == b`: in Wasm sixteen bytes at a time ([`blocks`]); natively the slice comparison, whose
/// `memcmp` is fast there.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    if cfg!(target_arch = "wasm32") {
        blocks(a, b)
    } else {
        a == b
    }
}

/// `a == b`, sixteen bytes at a time with Wasm SIMD, else eight.
fn blocks(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (a16, b16) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (a16.remainder(), b16.remainder());
    a16.zip(b16).all(|(x, y)| same16(x, y)) && same_words(ra, rb)
}

/// Two sixteen-byte blocks; `false` if either is not sixteen bytes.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn same16(a: &[u8], b: &[u8]) -> bool {
    use core::arch::wasm32::{u64x2, u8x16_all_true, u8x16_eq};
    let v = |c: &[u8]| {
        let lo = c.first_chunk::<8>().map(|w| u64::from_le_bytes(*w));
        let hi = c
            .get(8..)
            .and_then(|r| r.first_chunk::<8>())
            .map(|w| u64::from_le_bytes(*w));
        Some(u64x2(lo?, hi?))
    };
    match (v(a), v(b)) {
        (Some(x), Some(y)) => u8x16_all_true(u8x16_eq(x, y)),
        _ => false,
    }
}

#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
fn same16(a: &[u8], b: &[u8]) -> bool {
    same_words(a, b)
}

/// Eight bytes at a time, then the rest.
fn same_words(a: &[u8], b: &[u8]) -> bool {
    let word = |c: &[u8]| c.first_chunk::<8>().map(|w| u64::from_ne_bytes(*w));
    let (wa, wb) = (a.chunks_exact(8), b.chunks_exact(8));
    a.len() == b.len()
        && wa.remainder() == wb.remainder()
        && wa.zip(wb).all(|(x, y)| word(x) == word(y))
}

#[cfg(test)]
mod tests {
    use super::{blocks, same};

    #[test]
    fn agrees_with_slice_equality_at_every_length_and_offset() {
        let a: Vec<u8> = (0..100u8).collect();
        for same in [same, blocks] {
            for len in 0..a.len() {
                let x = &a[..len];
                let copy = x.to_vec();
                assert!(same(x, &copy));
                assert!(!same(x, &a[..len + 1]));
                for at in 0..len {
                    let mut y = x.to_vec();
                    y[at] ^= 0x80;
                    assert!(!same(x, &y), "a difference at {at} of {len}");
                }
            }
        }
    }
}
