//! lib0 encoding, as the y-websocket protocol uses it, with every length bounded by the bytes
//! actually present.
//!
//! A `varUint` is 7 bits per byte, least significant group first, high bit set when more bytes
//! follow. A byte array is `varUint(len)` followed by `len` bytes; a string is a UTF-8 byte array.
//! [`Reader`] never allocates from a length it has read: every length is checked against the
//! remaining input first, so a 5-byte message cannot ask for gigabytes.

use crate::error::DecodeError;

/// Largest integer JavaScript represents exactly (2^53 - 1): the bound for Yjs client ids.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// A cursor over untrusted bytes.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// True when every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// Current offset from the start of the input.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Reads one byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        let b = *self.buf.get(self.pos).ok_or(DecodeError::UnexpectedEnd)?;
        self.pos += 1;
        Ok(b)
    }

    /// Reads a `varUint` of at most 64 bits.
    pub fn var_u64(&mut self) -> Result<u64, DecodeError> {
        let mut value: u64 = 0;
        let mut shift = 0u32;
        loop {
            let b = self.u8()?;
            if shift == 63 && b > 1 {
                return Err(DecodeError::VarIntOverflow);
            }
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
            shift += 7;
            if shift > 63 {
                return Err(DecodeError::VarIntOverflow);
            }
        }
    }

    /// Reads a `varUint` that must fit in 32 bits.
    pub fn var_u32(&mut self) -> Result<u32, DecodeError> {
        u32::try_from(self.var_u64()?).map_err(|_| DecodeError::VarIntOverflow)
    }

    /// Reads a lib0 signed `varInt` (sign in bit 6 of the first byte), skipping its value.
    ///
    /// The first byte carries 6 bits and each further byte 7, so the tenth byte lands at bit 62.
    /// An eleventh byte would land at bit 69, past a 64-bit integer: yrs's decoder shifts it
    /// there unchecked, so such a number is refused here (Yjs itself writes at most 8 bytes,
    /// for 53-bit numbers).
    pub fn skip_var_i64(&mut self) -> Result<(), DecodeError> {
        let first = self.u8()?;
        let mut more = first & 0x80 != 0;
        let mut shift = 6u32;
        while more {
            if shift >= 64 {
                return Err(DecodeError::VarIntOverflow);
            }
            more = self.u8()? & 0x80 != 0;
            shift += 7;
        }
        Ok(())
    }

    /// Reads a length and checks that at least `len * min_item_size` bytes remain, so a caller
    /// can allocate `len` items safely.
    pub fn len_prefix(&mut self, min_item_size: usize) -> Result<usize, DecodeError> {
        let len = self.var_u64()?;
        let needed = len.saturating_mul(min_item_size.max(1) as u64);
        if needed > self.remaining() as u64 {
            return Err(DecodeError::LengthTooLarge {
                declared: len,
                remaining: self.remaining(),
            });
        }
        Ok(len as usize)
    }

    /// Reads `n` raw bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::LengthTooLarge {
                declared: n as u64,
                remaining: self.remaining(),
            });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// Reads a `varUint8Array`.
    pub fn var_bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.len_prefix(1)?;
        self.bytes(len)
    }

    /// Reads a `varString` (UTF-8).
    pub fn var_str(&mut self) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.var_bytes()?).map_err(|_| DecodeError::InvalidUtf8)
    }

    /// Reads a Yjs client id, refusing ids JavaScript cannot represent.
    pub fn client_id(&mut self) -> Result<u64, DecodeError> {
        let id = self.var_u64()?;
        if id > MAX_SAFE_INTEGER {
            return Err(DecodeError::ClientIdTooLarge(id));
        }
        Ok(id)
    }
}

/// Appends lib0-encoded values to a byte vector.
#[derive(Debug, Default, Clone)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Writer::default()
    }

    /// An empty writer with room for `n` bytes.
    pub fn with_capacity(n: usize) -> Self {
        Writer {
            buf: Vec::with_capacity(n),
        }
    }

    /// Appends one byte.
    pub fn u8(&mut self, b: u8) -> &mut Self {
        self.buf.push(b);
        self
    }

    /// Appends a `varUint`.
    pub fn var_u64(&mut self, mut v: u64) -> &mut Self {
        while v >= 0x80 {
            self.buf.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
        self
    }

    /// Appends a `varUint8Array`.
    pub fn var_bytes(&mut self, b: &[u8]) -> &mut Self {
        self.var_u64(b.len() as u64);
        self.buf.extend_from_slice(b);
        self
    }

    /// Appends a `varString`.
    pub fn var_str(&mut self, s: &str) -> &mut Self {
        self.var_bytes(s.as_bytes())
    }

    /// Appends raw bytes.
    pub fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }

    /// The encoded bytes.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn var_uint_round_trips() {
        for v in [0u64, 1, 127, 128, 300, 1 << 32, MAX_SAFE_INTEGER, u64::MAX] {
            let mut w = Writer::new();
            w.var_u64(v);
            let bytes = w.finish();
            assert_eq!(Reader::new(&bytes).var_u64().unwrap(), v, "{v}");
        }
    }

    #[test]
    fn truncated_varint_is_an_error() {
        assert_eq!(
            Reader::new(&[0x80, 0x80]).var_u64(),
            Err(DecodeError::UnexpectedEnd)
        );
    }

    #[test]
    fn signed_varint_longer_than_64_bits_is_an_error() {
        // Ten bytes end at bit 69 (6 + 9 × 7): the last one still starts inside 64 bits.
        let mut ten = [0xffu8; 10];
        ten[9] = 0x01;
        let mut r = Reader::new(&ten);
        assert_eq!(r.skip_var_i64(), Ok(()));
        assert_eq!(r.remaining(), 0);
        // An eleventh byte would start at bit 69.
        let mut eleven = [0xffu8; 11];
        eleven[10] = 0x01;
        assert_eq!(
            Reader::new(&eleven).skip_var_i64(),
            Err(DecodeError::VarIntOverflow)
        );
        assert_eq!(Reader::new(&[0x3f]).skip_var_i64(), Ok(()));
        assert_eq!(
            Reader::new(&[0x80]).skip_var_i64(),
            Err(DecodeError::UnexpectedEnd)
        );
    }

    #[test]
    fn overlong_varint_is_an_error() {
        let bytes = [0xff; 11];
        assert_eq!(
            Reader::new(&bytes).var_u64(),
            Err(DecodeError::VarIntOverflow)
        );
    }

    #[test]
    fn huge_length_is_refused_before_allocating() {
        let mut w = Writer::new();
        w.var_u64(1 << 60);
        let bytes = w.finish();
        assert!(matches!(
            Reader::new(&bytes).var_bytes(),
            Err(DecodeError::LengthTooLarge { declared, .. }) if declared == 1 << 60
        ));
    }

    #[test]
    fn client_id_above_53_bits_is_refused() {
        let mut w = Writer::new();
        w.var_u64(1 << 53);
        let bytes = w.finish();
        assert_eq!(
            Reader::new(&bytes).client_id(),
            Err(DecodeError::ClientIdTooLarge(1 << 53))
        );
    }
}
