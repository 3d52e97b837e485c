//! FNV-1a (64-bit): the one non-cryptographic hash the binary's commands name things with —
//! synth's per-tensor seeds, the expert-stats fingerprint, the quality matrix's reference
//! files, `bench --url`'s model file hash.

/// A running FNV-1a hash.
#[derive(Clone, Copy, Debug)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    /// Take in `bytes`.
    pub fn eat(&mut self, bytes: &[u8]) -> &mut Fnv {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        self
    }

    /// The hash so far.
    pub fn get(&self) -> u64 {
        self.0
    }

    /// The hash of `bytes`.
    pub fn of(bytes: &[u8]) -> u64 {
        Fnv::default().eat(bytes).get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // The FNV-1a 64 test vectors of its authors' reference.
        assert_eq!(Fnv::of(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(Fnv::of(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(Fnv::of(b"foobar"), 0x8594_4171_f739_67e8);
        let mut h = Fnv::default();
        h.eat(b"foo").eat(b"bar");
        assert_eq!(h.get(), Fnv::of(b"foobar"));
    }
}
