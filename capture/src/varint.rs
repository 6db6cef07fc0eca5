//! LEB128 varints and protobuf-style zig-zag for signed values, as Memray writes them.

/// Longest LEB128 encoding of a u64.
pub const MAX_VARINT_LEN: usize = 10;

#[inline]
pub const fn zigzag(v: i64) -> u64 {
    ((v as u64) << 1) ^ ((v >> 63) as u64)
}

#[inline]
pub const fn unzigzag(z: u64) -> i64 {
    ((z >> 1) as i64) ^ -((z & 1) as i64)
}

/// A record assembled on the stack so the sink sees one `put` per record. `N`, a power of
/// two at least the record's longest encoding, lets each byte's index be masked rather
/// than bounds-checked (records are written inside allocator hooks).
pub(crate) struct Scratch<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Scratch<N> {
    #[inline]
    pub const fn new() -> Self {
        const { assert!(N.is_power_of_two()) };
        Scratch { buf: [0; N], len: 0 }
    }

    #[inline]
    pub fn byte(&mut self, b: u8) {
        // `len` stays below N for every record that fits, which N is chosen for.
        debug_assert!(self.len < N);
        self.buf[self.len & (N - 1)] = b;
        self.len += 1;
    }

    #[inline]
    pub fn raw(&mut self, bytes: &[u8]) {
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    #[inline]
    pub fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.byte((v as u8) | 0x80);
            v >>= 7;
        }
        self.byte(v as u8);
    }

    #[inline]
    pub fn svarint(&mut self, v: i64) {
        self.varint(zigzag(v));
    }

    #[cfg(test)]
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Puts the record into `s`. The bytes past it are still the zeros `new` wrote.
    #[inline]
    pub fn put_to(&self, s: &mut impl crate::ByteSink) {
        s.put_zero_padded(&self.buf, self.len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zigzag_matches_protobuf() {
        for (v, z) in [(0i64, 0u64), (-1, 1), (1, 2), (-2, 3), (63, 126), (-64, 127), (i64::MAX, u64::MAX - 1), (i64::MIN, u64::MAX)] {
            assert_eq!(zigzag(v), z);
            assert_eq!(unzigzag(z), v);
        }
    }

    #[test]
    fn varint_bytes() {
        let mut s = Scratch::<16>::new();
        s.varint(300);
        assert_eq!(s.as_slice(), &[0xac, 0x02]);
        let mut s = Scratch::<16>::new();
        s.varint(u64::MAX);
        assert_eq!(s.as_slice().len(), MAX_VARINT_LEN);
    }
}
