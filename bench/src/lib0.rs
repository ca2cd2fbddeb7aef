//! The lib0 binary encoding used by every Yjs wire format: variable-length unsigned integers
//! (7 bits per byte, least significant group first, high bit = more), length-prefixed byte
//! arrays and UTF-8 strings.

/// Decoding failures. Every variant names what was being read when the input ran out or made
/// no sense; nothing here allocates from an input-given length.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The input ended in the middle of a value.
    #[error("unexpected end of input")]
    Eof,
    /// A varUint did not fit in 64 bits.
    #[error("varUint longer than 64 bits")]
    VarUintOverflow,
    /// A length prefix pointed past the end of the input.
    #[error("length {0} runs past the end of the input")]
    Length(u64),
    /// A string was not valid UTF-8.
    #[error("string is not UTF-8")]
    Utf8,
    /// A Yjs structure used a content kind this reader does not know how to skip.
    #[error("unsupported content kind {0}")]
    Content(u8),
}

/// A read cursor over a byte slice.
#[derive(Debug, Clone)]
pub struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// Starts reading at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    /// True when every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// The bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos.min(self.buf.len())..]
    }

    /// Reads one byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        let b = *self.buf.get(self.pos).ok_or(DecodeError::Eof)?;
        self.pos += 1;
        Ok(b)
    }

    /// Reads a varUint.
    pub fn var_u64(&mut self) -> Result<u64, DecodeError> {
        let mut value: u64 = 0;
        let mut shift = 0u32;
        loop {
            let b = self.u8()?;
            if shift >= 64 || (shift == 63 && (b & 0x7f) > 1) {
                return Err(DecodeError::VarUintOverflow);
            }
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
            shift += 7;
        }
    }

    /// Reads a varUint that must fit a `u32` (Yjs clocks and lengths).
    pub fn var_u32(&mut self) -> Result<u32, DecodeError> {
        let v = self.var_u64()?;
        u32::try_from(v).map_err(|_| DecodeError::VarUintOverflow)
    }

    /// Reads a varByteArray: varUint(len) then the bytes.
    pub fn var_bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.var_u64()?;
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| self.pos.checked_add(l))
            .filter(|&e| e <= self.buf.len())
            .ok_or(DecodeError::Length(len))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    /// Reads a varString.
    pub fn var_str(&mut self) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.var_bytes()?).map_err(|_| DecodeError::Utf8)
    }
}

/// Appends a varUint.
pub fn write_var_u64(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends a varByteArray.
pub fn write_var_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    write_var_u64(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Appends a varString.
pub fn write_var_str(out: &mut Vec<u8>, s: &str) {
    write_var_bytes(out, s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(v: u64, bytes: &[u8]) {
        let mut out = Vec::new();
        write_var_u64(&mut out, v);
        assert_eq!(out, bytes, "encoding {v}");
        assert_eq!(Cursor::new(bytes).var_u64(), Ok(v), "decoding {v}");
    }

    #[test]
    fn var_uint_round_trips_lib0_vectors() {
        check(0, &[0]);
        check(127, &[127]);
        check(128, &[0x80, 1]);
        check(300, &[0xac, 0x02]);
        check(u64::from(u32::MAX), &[0xff, 0xff, 0xff, 0xff, 0x0f]);
        check(
            u64::MAX,
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
        );
    }

    #[test]
    fn overlong_and_truncated_inputs_are_errors() {
        assert_eq!(Cursor::new(&[0x80]).var_u64(), Err(DecodeError::Eof));
        assert_eq!(
            Cursor::new(&[0xff; 11]).var_u64(),
            Err(DecodeError::VarUintOverflow)
        );
        assert_eq!(
            Cursor::new(&[5, 1, 2]).var_bytes(),
            Err(DecodeError::Length(5))
        );
        assert_eq!(Cursor::new(&[1, 0xff]).var_str(), Err(DecodeError::Utf8));
    }

    #[test]
    fn strings_round_trip() {
        let mut out = Vec::new();
        write_var_str(&mut out, "doc-ü");
        let mut c = Cursor::new(&out);
        assert_eq!(c.var_str(), Ok("doc-ü"));
        assert!(c.is_empty());
    }
}
