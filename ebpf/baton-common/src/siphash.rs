//! SipHash-2-4 (Aumasson & Bernstein). The general form is used by the agent and
//! the tests; [`mac_words`] is the fixed-length form the XDP program runs: it is
//! written with straight-line code only, so the BPF verifier accepts it, and it
//! is the *same function* compiled for both targets.

#[inline(always)]
fn sipround(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13);
    v[1] ^= v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16);
    v[3] ^= v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21);
    v[3] ^= v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17);
    v[1] ^= v[2];
    v[2] = v[2].rotate_left(32);
}

#[inline(always)]
fn init(k0: u64, k1: u64) -> [u64; 4] {
    [
        k0 ^ 0x736f6d6570736575,
        k1 ^ 0x646f72616e646f6d,
        k0 ^ 0x6c7967656e657261,
        k1 ^ 0x7465646279746573,
    ]
}

#[inline(always)]
fn compress(v: &mut [u64; 4], m: u64) {
    v[3] ^= m;
    sipround(v);
    sipround(v);
    v[0] ^= m;
}

#[inline(always)]
fn finish(v: &mut [u64; 4]) -> u64 {
    v[2] ^= 0xff;
    sipround(v);
    sipround(v);
    sipround(v);
    sipround(v);
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

/// SipHash-2-4 of an arbitrary message with key (k0, k1) (little-endian halves of
/// the 16-byte key).
pub fn siphash24(k0: u64, k1: u64, msg: &[u8]) -> u64 {
    let mut v = init(k0, k1);
    let full = msg.len() / 8;
    for i in 0..full {
        let mut w = [0u8; 8];
        w.copy_from_slice(&msg[i * 8..i * 8 + 8]);
        compress(&mut v, u64::from_le_bytes(w));
    }
    let mut last = [0u8; 8];
    let rest = &msg[full * 8..];
    last[..rest.len()].copy_from_slice(rest);
    last[7] = msg.len() as u8;
    compress(&mut v, u64::from_le_bytes(last));
    finish(&mut v)
}

/// Number of 64-bit words covered by the MAC of a baton header.
pub const MAC_WORDS: usize = 7;

/// SipHash-2-4 of exactly seven little-endian 64-bit words (a 56-byte message):
/// the MAC of a baton header. Straight-line, no loops, no slices.
#[inline(always)]
pub fn mac_words(k0: u64, k1: u64, m: &[u64; MAC_WORDS]) -> u64 {
    let mut v = init(k0, k1);
    compress(&mut v, m[0]);
    compress(&mut v, m[1]);
    compress(&mut v, m[2]);
    compress(&mut v, m[3]);
    compress(&mut v, m[4]);
    compress(&mut v, m[5]);
    compress(&mut v, m[6]);
    compress(&mut v, ((MAC_WORDS * 8) as u64) << 56);
    finish(&mut v)
}

/// Splits a 16-byte key into the (k0, k1) halves SipHash uses.
pub fn key_halves(key: &[u8; 16]) -> (u64, u64) {
    let mut a = [0u8; 8];
    let mut b = [0u8; 8];
    a.copy_from_slice(&key[..8]);
    b.copy_from_slice(&key[8..]);
    (u64::from_le_bytes(a), u64::from_le_bytes(b))
}

/// The published SipHash-2-4 reference vectors (vectors.h of the reference
/// implementation, 64-bit output): key = 00 01 .. 0f, message = 00 01 .. (len-1),
/// for len = 0..63; each entry is the output as a little-endian u64.
pub const REFERENCE_VECTORS: [u64; 64] = [
    0x726fdb47dd0e0e31, 0x74f839c593dc67fd, 0x0d6c8009d9a94f5a, 0x85676696d7fb7e2d,
    0xcf2794e0277187b7, 0x18765564cd99a68d, 0xcbc9466e58fee3ce, 0xab0200f58b01d137,
    0x93f5f5799a932462, 0x9e0082df0ba9e4b0, 0x7a5dbbc594ddb9f3, 0xf4b32f46226bada7,
    0x751e8fbc860ee5fb, 0x14ea5627c0843d90, 0xf723ca908e7af2ee, 0xa129ca6149be45e5,
    0x3f2acc7f57c29bdb, 0x699ae9f52cbe4794, 0x4bc1b3f0968dd39c, 0xbb6dc91da77961bd,
    0xbed65cf21aa2ee98, 0xd0f2cbb02e3b67c7, 0x93536795e3a33e88, 0xa80c038ccd5ccec8,
    0xb8ad50c6f649af94, 0xbce192de8a85b8ea, 0x17d835b85bbb15f3, 0x2f2e6163076bcfad,
    0xde4daaaca71dc9a5, 0xa6a2506687956571, 0xad87a3535c49ef28, 0x32d892fad841c342,
    0x7127512f72f27cce, 0xa7f32346f95978e3, 0x12e0b01abb051238, 0x15e034d40fa197ae,
    0x314dffbe0815a3b4, 0x027990f029623981, 0xcadcd4e59ef40c4d, 0x9abfd8766a33735c,
    0x0e3ea96b5304a7d0, 0xad0c42d6fc585992, 0x187306c89bc215a9, 0xd4a60abcf3792b95,
    0xf935451de4f21df2, 0xa9538f0419755787, 0xdb9acddff56ca510, 0xd06c98cd5c0975eb,
    0xe612a3cb9ecba951, 0xc766e62cfcadaf96, 0xee64435a9752fe72, 0xa192d576b245165a,
    0x0a8787bf8ecb74b2, 0x81b3e73d20b49b6f, 0x7fa8220ba3b2ecea, 0x245731c13ca42499,
    0xb78dbfaf3a8d83bd, 0xea1ad565322a1a0b, 0x60e61c23a3795013, 0x6606d7e446282b93,
    0x6ca4ecb15c5f91e1, 0x9f626da15c9625f3, 0xe51b38608ef25f57, 0x958a324ceb064572,
];

#[cfg(test)]
mod tests {
    use super::*;

    fn ref_key() -> (u64, u64) {
        let mut k = [0u8; 16];
        for (i, b) in k.iter_mut().enumerate() {
            *b = i as u8;
        }
        key_halves(&k)
    }

    #[test]
    fn all_reference_vectors() {
        let (k0, k1) = ref_key();
        let mut msg = [0u8; 64];
        for (i, b) in msg.iter_mut().enumerate() {
            *b = i as u8;
        }
        for len in 0..64 {
            assert_eq!(
                siphash24(k0, k1, &msg[..len]),
                REFERENCE_VECTORS[len],
                "SipHash-2-4 reference vector for length {len}"
            );
        }
    }

    #[test]
    fn fixed_length_form_matches_vector_56() {
        let (k0, k1) = ref_key();
        let mut w = [0u64; MAC_WORDS];
        for (i, word) in w.iter_mut().enumerate() {
            let mut b = [0u8; 8];
            for (j, x) in b.iter_mut().enumerate() {
                *x = (i * 8 + j) as u8;
            }
            *word = u64::from_le_bytes(b);
        }
        assert_eq!(mac_words(k0, k1, &w), REFERENCE_VECTORS[56]);
    }
}
