//! A bounds-checked little-endian reader over the file's bytes.
//!
//! Every read names what it is reading, so a short file fails with "file ends inside <what>"
//! at the offset where the field starts. Nothing here allocates: callers size a `Vec` only
//! after [`Cursor::count`] has proved the file can hold that many items.

use crate::error::{Error, Result};

/// Position in a byte slice; never reads past its end.
#[derive(Debug, Clone)]
pub(crate) struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `bytes`.
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Cursor { bytes, pos: 0 }
    }

    /// Offset of the next byte to read.
    pub(crate) fn pos(&self) -> u64 {
        self.pos as u64
    }

    /// Bytes not yet read.
    pub(crate) fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    /// The next `n` bytes, or `Truncated` naming `what`.
    pub(crate) fn take(&mut self, n: u64, what: &'static str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(Error::Truncated {
                offset: self.pos(),
                wanted: n,
                what,
            });
        }
        // n <= remaining <= usize::MAX, so the cast is lossless.
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.bytes[start..self.pos])
    }

    /// The next `N` bytes as an array.
    pub(crate) fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, what)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A u64 count of items that take at least `min_size` bytes each; `CountTooLarge` unless
    /// the rest of the file could hold them. This is the check that keeps a forged count from
    /// sizing an allocation.
    pub(crate) fn count(&mut self, min_size: u64, what: &'static str) -> Result<u64> {
        let offset = self.pos();
        let count = self.u64(what)?;
        let needed = count.saturating_mul(min_size);
        let remaining = self.remaining();
        if needed > remaining {
            return Err(Error::CountTooLarge {
                offset,
                what,
                count,
                needed,
                remaining,
            });
        }
        Ok(count)
    }

    /// A GGUF string: u64 byte length, then UTF-8 without a terminator.
    pub(crate) fn string(&mut self, what: &'static str) -> Result<String> {
        let len = self.u64(what)?;
        let offset = self.pos();
        let bytes = self.take(len, what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(Error::InvalidUtf8 { offset, what }),
        }
    }
}

/// A `Vec` for `n` items whose count came from the file: the count has been checked against
/// the bytes left, but an item in memory can be several times its size on disk, so capacity is
/// capped and the `Vec` grows only as items are actually parsed.
pub(crate) fn vec_for<T>(n: u64) -> Vec<T> {
    const CAP: u64 = 4096;
    Vec::with_capacity(n.min(CAP) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_bounded() {
        let mut c = Cursor::new(&[1, 0, 0, 0, 2]);
        assert_eq!(c.u32("a").ok(), Some(1));
        assert!(matches!(
            c.u32("b"),
            Err(Error::Truncated {
                offset: 4,
                wanted: 4,
                what: "b"
            })
        ));
        assert_eq!(c.u8("c").ok(), Some(2));
        assert!(c.u8("d").is_err());
    }

    #[test]
    fn count_is_checked_against_remaining_bytes() {
        let mut bytes = u64::MAX.to_le_bytes().to_vec();
        bytes.extend([0; 8]);
        let err = Cursor::new(&bytes).count(8, "things");
        assert!(matches!(
            err,
            Err(Error::CountTooLarge {
                offset: 0,
                count: u64::MAX,
                needed: u64::MAX,
                remaining: 8,
                ..
            })
        ));
        let mut ok = 1u64.to_le_bytes().to_vec();
        ok.extend([0; 8]);
        assert_eq!(Cursor::new(&ok).count(8, "things").ok(), Some(1));
    }

    #[test]
    fn string_rejects_bad_utf8_and_huge_length() {
        let mut bytes = 2u64.to_le_bytes().to_vec();
        bytes.extend([0xff, 0xfe]);
        assert!(matches!(
            Cursor::new(&bytes).string("key"),
            Err(Error::InvalidUtf8 {
                offset: 8,
                what: "key"
            })
        ));
        let huge = u64::MAX.to_le_bytes();
        assert!(matches!(
            Cursor::new(&huge).string("key"),
            Err(Error::Truncated {
                offset: 8,
                wanted: u64::MAX,
                ..
            })
        ));
    }
}
