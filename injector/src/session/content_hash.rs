//! The payload's content hash, used to name its copies on disk (the embedded one and the
//! one attach stages for a target). Shared with build.rs through `#[path]`, so both
//! always agree. FNV-1a over 8-byte words, then the tail; not cryptographic: the
//! directory's ownership and modes are what protect the copies.

pub fn content_hash(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ bytes.len() as u64;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        h = (h ^ u64::from_le_bytes(w.try_into().unwrap_or([0; 8]))).wrapping_mul(0x0100_0000_01b3);
        h ^= h >> 29;
    }
    for &b in words.remainder() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    h
}
