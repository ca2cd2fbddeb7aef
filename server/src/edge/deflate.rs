//! permessage-deflate (RFC 7692) under the WebSocket codec, which has no extensions: the
//! negotiation ([`negotiate`]), compression of large outgoing messages ([`compress`]), and
//! [`Inflow`], which turns the client's compressed messages back into plain frames before the
//! codec reads them.
//!
//! Both directions run without context takeover: every message is compressed and inflated on
//! its own, with a compressor or inflater that lives for that one message. An idle connection
//! keeps no DEFLATE state (a compressor holds hundreds of KiB, an inflater its 32 KiB window),
//! at the price of some ratio on small messages, which are not compressed at all anyway: only
//! messages over [`COMPRESS_OVER`] are (a document's first sync, large pastes), keystrokes and
//! presence go out as they are.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// Outgoing messages of this many bytes or fewer are sent uncompressed.
pub const COMPRESS_OVER: usize = 1024;
/// DEFLATE level of outgoing messages: the cheapest, most of the gain of Yjs updates (long
/// runs of client ids, clocks and repeated text) comes from the first levels.
const LEVEL: u32 = 1;
/// What a sync flush ends a compressed message with, left off on the wire (RFC 7692 §7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// The response header value of an accepted offer.
const ACCEPTED: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
/// The same, for an offer that asked for `server_max_window_bits` (which must then be
/// answered, RFC 7692 §7.1.2.1).
const ACCEPTED_WITH_WINDOW: &str = "permessage-deflate; server_no_context_takeover; \
                                    client_no_context_takeover; server_max_window_bits=15";

/// The `Sec-WebSocket-Extensions` response value that accepts the first acceptable
/// permessage-deflate offer among `offers` (the request's header values), or `None`.
///
/// Accepted: the parameters of RFC 7692, each at most once, with valid values. The answer
/// always asks for no context takeover both ways. `server_max_window_bits` below 15 is
/// declined (our compressor always uses a 32 KiB window); any `client_max_window_bits` is
/// fine (a 32 KiB inflater reads smaller windows). Offers of other extensions, or with
/// unknown parameters, are passed over.
pub fn negotiate<'a>(offers: impl IntoIterator<Item = &'a str>) -> Option<&'static str> {
    offers
        .into_iter()
        .flat_map(|value| value.split(','))
        .find_map(accept_offer)
}

/// The answer to one offer (`name; param; param=value`), if it is an acceptable
/// permessage-deflate one.
fn accept_offer(offer: &str) -> Option<&'static str> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut seen = [false; 4];
    let mut server_window = false;
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (param, None),
        };
        let slot = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" if value.is_none() => 0,
            "client_no_context_takeover" if value.is_none() => 1,
            "server_max_window_bits" if value.is_some_and(|v| window_bits(v) == Some(15)) => {
                server_window = true;
                2
            }
            "client_max_window_bits" if !matches!(value, Some(v) if window_bits(v).is_none()) => 3,
            _ => return None,
        };
        if std::mem::replace(&mut seen[slot], true) {
            return None;
        }
    }
    Some(if server_window {
        ACCEPTED_WITH_WINDOW
    } else {
        ACCEPTED
    })
}

/// A window size parameter's value: 8 to 15, digits only.
fn window_bits(value: &str) -> Option<u8> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) || value.len() > 2 {
        return None;
    }
    value.parse().ok().filter(|b| (8..=15).contains(b))
}

/// The payload of `data` compressed as one message (raw DEFLATE, sync flush, its tail left
/// off), or `None` when that saves nothing.
pub fn compress(data: &[u8]) -> Option<Vec<u8>> {
    let mut c = Compress::new(Compression::new(LEVEL), false);
    // Room for the tail too: with less, the message was not worth compressing.
    let mut out = Vec::with_capacity(data.len() + TAIL.len());
    loop {
        let taken = c.total_in() as usize;
        c.compress_vec(&data[taken..], &mut out, FlushCompress::Sync)
            .ok()?;
        if out.len() == out.capacity() {
            return None;
        }
        if c.total_in() as usize == data.len() {
            // All taken and room left over: the flush is complete.
            break;
        }
    }
    if !out.ends_with(&TAIL) {
        return None;
    }
    out.truncate(out.len() - TAIL.len());
    (out.len() < data.len()).then_some(out)
}

/// Messages compressed lately, kept so that a message sent to many connections (a broadcast
/// of a large update, the first sync step 2 that joiners of one revision share) is compressed
/// once: without context takeover its compressed form is the same for every connection.
///
/// An entry holds the message it was made from, so its bytes cannot be freed and their
/// address reused while the entry exists: the same address and length are the same message.
/// At most [`SHARED_ENTRIES`] entries and [`SHARED_BYTES`] bytes of messages; entries older
/// than [`SHARED_FOR`] are dropped at the next use.
struct Shared {
    entries: std::collections::VecDeque<SharedEntry>,
    bytes: usize,
}

struct SharedEntry {
    plain: Bytes,
    compressed: Option<Bytes>,
    at: Instant,
}

/// Most messages [`compress_shared`] remembers.
const SHARED_ENTRIES: usize = 16;
/// Most bytes of messages it remembers (a larger message is compressed each time).
const SHARED_BYTES: usize = 4 << 20;
/// How long it remembers a message.
const SHARED_FOR: Duration = Duration::from_secs(2);

static SHARED: Mutex<Shared> = Mutex::new(Shared {
    entries: std::collections::VecDeque::new(),
    bytes: 0,
});

fn shared() -> std::sync::MutexGuard<'static, Shared> {
    SHARED.lock().unwrap_or_else(|p| p.into_inner())
}

/// [`compress`] for a message that other connections may be sent too: the same `Bytes`
/// (same bytes at the same address) compressed within [`SHARED_FOR`] is not compressed again.
pub fn compress_shared(plain: &Bytes) -> Option<Bytes> {
    let now = Instant::now();
    {
        let mut cache = shared();
        while cache
            .entries
            .front()
            .is_some_and(|e| now.duration_since(e.at) > SHARED_FOR)
        {
            if let Some(old) = cache.entries.pop_front() {
                cache.bytes -= old.plain.len();
            }
        }
        if let Some(e) = cache
            .entries
            .iter()
            .find(|e| e.plain.as_ptr() == plain.as_ptr() && e.plain.len() == plain.len())
        {
            return e.compressed.clone();
        }
    }
    // Compressed outside the lock; two connections may both compress a message now and then.
    let compressed = compress(plain).map(Bytes::from);
    if plain.len() <= SHARED_BYTES {
        let mut cache = shared();
        while cache.entries.len() >= SHARED_ENTRIES || cache.bytes + plain.len() > SHARED_BYTES {
            match cache.entries.pop_front() {
                Some(old) => cache.bytes -= old.plain.len(),
                None => break,
            }
        }
        cache.bytes += plain.len();
        cache.entries.push_back(SharedEntry {
            plain: plain.clone(),
            compressed: compressed.clone(),
            at: now,
        });
    }
    compressed
}

/// Why a compressed message could not be inflated.
#[derive(Debug, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates to more than the limit.
    TooLarge,
    /// It is no valid DEFLATE data.
    Corrupt,
}

/// Inflates a compressed message's payload (`compressed`, to which the tail is appended) to at
/// most `max` bytes.
pub fn inflate(mut compressed: Vec<u8>, max: usize) -> Result<Vec<u8>, InflateError> {
    compressed.extend_from_slice(&TAIL);
    let mut d = Decompress::new(false);
    let limit = max.saturating_add(1);
    let mut out = Vec::with_capacity(compressed.len().saturating_mul(4).max(256).min(limit));
    loop {
        if out.len() == out.capacity() {
            if out.len() >= limit {
                return Err(InflateError::TooLarge);
            }
            out.reserve_exact(out.len().min(limit - out.len()));
        }
        let (taken, made) = (d.total_in(), out.len());
        let status = d
            .decompress_vec(
                &compressed[taken as usize..],
                &mut out,
                FlushDecompress::Sync,
            )
            .map_err(|_| InflateError::Corrupt)?;
        let done = d.total_in() as usize == compressed.len() && out.len() < out.capacity();
        if done || status == Status::StreamEnd {
            break;
        }
        if d.total_in() == taken && out.len() == made && out.len() < out.capacity() {
            return Err(InflateError::Corrupt);
        }
    }
    if out.len() > max {
        return Err(InflateError::TooLarge);
    }
    Ok(out)
}

/// The client's frames on their way to the codec, with its compressed messages inflated: a
/// transcoder of the byte stream read from the socket.
///
/// Frames of uncompressed messages and control frames (also those between the fragments of a
/// compressed message) pass through unchanged, as they arrive: they are not held. The frames
/// of a compressed message (RSV1 on its first frame) are unmasked and their payloads collected
/// until its final frame; then the message is inflated and goes on as one unfragmented frame
/// of the same type, masked with the key 0. Only a message in progress holds memory (its
/// compressed payload), and only until its final frame.
///
/// Limits: a compressed message over `max` bytes, compressed or inflated, becomes a frame
/// header that declares `max + 1` bytes, which the codec, limited to `max`, refuses as it
/// refuses any frame over its size: the client is closed with 1009 as for an oversized
/// uncompressed frame. Data that does not inflate, or frames that break the extension's rules
/// (RSV1 on a continuation frame, a new message before a compressed one ended, an unmasked
/// frame in a compressed message), become a frame with RSV1 set the codec refuses as malformed
/// (1002). Either way, nothing after it reaches the codec.
#[derive(Debug)]
pub struct Inflow {
    max: usize,
    /// The frame header being read (up to 14 bytes).
    header: [u8; 14],
    header_len: usize,
    step: Step,
    /// A compressed message in progress: its opcode, and its payload so far (unmasked).
    message: Option<(u8, Vec<u8>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Reading a frame header.
    Header,
    /// Passing this many payload bytes of a frame through.
    Pass(u64),
    /// Collecting this many payload bytes of a compressed message's frame, unmasked with
    /// `mask` from `at`; the message ends with this frame when `fin`.
    Collect {
        left: usize,
        mask: [u8; 4],
        at: usize,
        fin: bool,
    },
    /// Refused: nothing more passes.
    Failed,
}

const FIN: u8 = 0x80;
const RSV1: u8 = 0x40;
const RSV_ALL: u8 = 0x70;
const MASKED: u8 = 0x80;
const CONTINUATION: u8 = 0x0;

impl Inflow {
    /// A transcoder for a codec that accepts frames and messages of up to `max` bytes.
    pub fn new(max: usize) -> Inflow {
        Inflow {
            max,
            header: [0; 14],
            header_len: 0,
            step: Step::Header,
            message: None,
        }
    }

    /// Whether it refused what it read (then it passes nothing more).
    pub fn failed(&self) -> bool {
        self.step == Step::Failed
    }

    /// Bytes held now (0 unless a compressed message is in progress).
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.message.as_ref().map_or(0, |(_, m)| m.capacity())
    }

    /// Transcodes `input`, the next bytes read from the socket, appending to `out` what the
    /// codec reads.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            match self.step {
                Step::Failed => return,
                Step::Header => {
                    let need = self.header_needed();
                    let take = (need - self.header_len).min(input.len());
                    self.header[self.header_len..self.header_len + take]
                        .copy_from_slice(&input[..take]);
                    self.header_len += take;
                    input = &input[take..];
                    if self.header_len == self.header_needed() {
                        self.on_header(out);
                    }
                }
                Step::Pass(left) => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.step = Step::Pass(left - n as u64);
                    if left == n as u64 {
                        self.step = Step::Header;
                    }
                }
                Step::Collect {
                    left,
                    mask,
                    at,
                    fin,
                } => {
                    let n = left.min(input.len());
                    let Some((_, payload)) = self.message.as_mut() else {
                        self.step = Step::Failed;
                        return;
                    };
                    payload.extend(
                        input[..n]
                            .iter()
                            .enumerate()
                            .map(|(i, b)| b ^ mask[(at + i) % 4]),
                    );
                    input = &input[n..];
                    self.step = Step::Collect {
                        left: left - n,
                        mask,
                        at: (at + n) % 4,
                        fin,
                    };
                    if left == n {
                        self.step = Step::Header;
                        if fin {
                            self.finish(out);
                        }
                    }
                }
            }
        }
    }

    /// Bytes of the header being read, as far as what was read of it tells.
    fn header_needed(&self) -> usize {
        if self.header_len < 2 {
            return 2;
        }
        let b1 = self.header[1];
        let extended = match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        2 + extended + if b1 & MASKED != 0 { 4 } else { 0 }
    }

    /// A whole frame header was read.
    fn on_header(&mut self, out: &mut Vec<u8>) {
        let header = &self.header[..self.header_len];
        self.header_len = 0;
        let (b0, b1) = (header[0], header[1]);
        let opcode = b0 & 0x0f;
        let masked = b1 & MASKED != 0;
        let len = match b1 & 0x7f {
            126 => u64::from(u16::from_be_bytes([header[2], header[3]])),
            127 => u64::from_be_bytes(header[2..10].try_into().unwrap_or_default()),
            n => u64::from(n),
        };
        let control = opcode & 0x08 != 0;
        let in_message = self.message.is_some();
        if control || (!in_message && b0 & RSV1 == 0) {
            // Control frames and uncompressed messages: the codec judges them.
            out.extend_from_slice(header);
            self.step = if len == 0 {
                Step::Header
            } else {
                Step::Pass(len)
            };
            return;
        }
        // A frame of a compressed message: its first (RSV1, a data opcode) or a continuation.
        let first = !in_message && (opcode == 0x1 || opcode == 0x2);
        let continues = in_message && opcode == CONTINUATION && b0 & RSV_ALL == 0;
        if !masked || !(first || continues) || (first && b0 & (RSV_ALL & !RSV1) != 0) {
            return self.fail_malformed(out);
        }
        let mut mask = [0; 4];
        mask.copy_from_slice(&header[header.len() - 4..]);
        let so_far = self.message.as_ref().map_or(0, |(_, m)| m.len());
        let Some(total) = usize::try_from(len)
            .ok()
            .and_then(|l| l.checked_add(so_far))
            .filter(|t| *t <= self.max)
        else {
            return self.fail_too_large(out);
        };
        if first {
            self.message = Some((opcode, Vec::with_capacity(total)));
        }
        let fin = b0 & FIN != 0;
        self.step = Step::Collect {
            left: total - so_far,
            mask,
            at: 0,
            fin,
        };
        if total == so_far {
            self.step = Step::Header;
            if fin {
                self.finish(out);
            }
        }
    }

    /// The final frame of a compressed message was read: inflate it, pass it on as one frame.
    fn finish(&mut self, out: &mut Vec<u8>) {
        let Some((opcode, compressed)) = self.message.take() else {
            return;
        };
        match inflate(compressed, self.max) {
            Ok(payload) => {
                push_header(out, FIN | opcode, payload.len() as u64);
                out.extend_from_slice(&payload);
            }
            Err(InflateError::TooLarge) => self.fail_too_large(out),
            Err(InflateError::Corrupt) => self.fail_malformed(out),
        }
    }

    /// Hands the codec a header over its frame size limit, and stops.
    fn fail_too_large(&mut self, out: &mut Vec<u8>) {
        push_header(out, FIN | 0x2, self.max as u64 + 1);
        self.stop();
    }

    /// Hands the codec a frame with RSV1 set (which it refuses), and stops.
    fn fail_malformed(&mut self, out: &mut Vec<u8>) {
        push_header(out, FIN | RSV1 | 0x2, 0);
        self.stop();
    }

    fn stop(&mut self) {
        self.message = None;
        self.step = Step::Failed;
    }
}

/// Appends the header of a client frame of `len` payload bytes, masked with the key 0.
fn push_header(out: &mut Vec<u8>, b0: u8, len: u64) {
    out.push(b0);
    if len < 126 {
        out.push(MASKED | len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.push(MASKED | 126);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(MASKED | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
    out.extend_from_slice(&[0; 4]);
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn a_message_sent_to_many_connections_is_compressed_once() {
        let text: Vec<u8> = b"a large paste, sent to every reader ".repeat(200);
        let message = Bytes::from(text.clone());
        let first = compress_shared(&message).expect("compressible");
        // Another connection's copy of the same message: the same compressed bytes.
        let again = compress_shared(&message.clone()).expect("compressible");
        assert_eq!(first.as_ptr(), again.as_ptr(), "compressed once");
        // Equal content in other memory is compressed on its own, to the same bytes.
        let other = compress_shared(&Bytes::from(text)).expect("compressible");
        assert_ne!(other.as_ptr(), first.as_ptr());
        assert_eq!(other, first);
        assert_eq!(inflate(first.to_vec(), 1 << 20).unwrap(), message);
        // What does not compress is remembered as such.
        let mut rng = fastrand::Rng::with_seed(11);
        let noise: Bytes = (0..5000).map(|_| rng.u8(..)).collect();
        assert!(compress_shared(&noise).is_none());
        assert!(compress_shared(&noise).is_none());
    }

    #[test]
    fn stock_offers_are_accepted() {
        // Chromium and Node's `ws` offer this.
        assert_eq!(
            negotiate(["permessage-deflate; client_max_window_bits"]),
            Some(ACCEPTED)
        );
        assert_eq!(negotiate(["permessage-deflate"]), Some(ACCEPTED));
        assert_eq!(
            negotiate([
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
                 client_max_window_bits=10"
            ]),
            Some(ACCEPTED)
        );
        assert_eq!(
            negotiate(["PerMessage-Deflate ; client_max_window_bits=\"12\""]),
            Some(ACCEPTED)
        );
        assert_eq!(
            negotiate(["permessage-deflate; server_max_window_bits=15"]),
            Some(ACCEPTED_WITH_WINDOW)
        );
    }

    #[test]
    fn the_first_acceptable_offer_wins() {
        // Firefox-style fallbacks, several offers in one header or in several headers.
        assert_eq!(
            negotiate([
                "permessage-deflate; server_max_window_bits=10, permessage-deflate; \
                 server_max_window_bits=15"
            ]),
            Some(ACCEPTED_WITH_WINDOW)
        );
        assert_eq!(
            negotiate(["x-webkit-deflate-frame", "permessage-deflate"]),
            Some(ACCEPTED)
        );
        assert_eq!(
            negotiate(["permessage-deflate; mystery, permessage-deflate"]),
            Some(ACCEPTED)
        );
    }

    #[test]
    fn offers_we_cannot_honour_are_declined() {
        for offer in [
            "",
            "x-webkit-deflate-frame",
            "permessage-deflate-x",
            // A smaller window than our compressor's.
            "permessage-deflate; server_max_window_bits=10",
            // Without a value, or out of range.
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; client_max_window_bits=16",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; client_max_window_bits=+9",
            "permessage-deflate; client_max_window_bits=",
            // Unknown parameters, values where none belong, repeats.
            "permessage-deflate; mystery",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; client_max_window_bits; client_max_window_bits=9",
        ] {
            assert_eq!(negotiate([offer]), None, "{offer:?}");
        }
        assert_eq!(negotiate(std::iter::empty()), None);
    }

    /// A Yjs-like message: repetitive, compressible.
    fn sample(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| b"the quick brown fox jumps over the lazy dog "[i % 44] ^ (i / 997) as u8)
            .collect()
    }

    #[test]
    fn compressed_messages_decode_with_a_standard_inflater() {
        let data = sample(100_000);
        let payload = compress(&data).expect("compressible");
        assert!(payload.len() < data.len() / 4, "{}", payload.len());
        assert!(!payload.ends_with(&TAIL));
        // What a receiver does (RFC 7692 §7.2.2): append the tail, inflate raw DEFLATE; an
        // empty final block after it makes it a complete stream for a stream decoder.
        let mut wire = payload.clone();
        wire.extend_from_slice(&TAIL);
        wire.extend_from_slice(&[0x03, 0x00]);
        let mut got = Vec::new();
        flate2::read::DeflateDecoder::new(&wire[..])
            .read_to_end(&mut got)
            .unwrap();
        assert_eq!(got, data);
        assert_eq!(inflate(payload, data.len()).unwrap(), data);
    }

    #[test]
    fn incompressible_messages_are_not_compressed() {
        let mut rng = fastrand::Rng::with_seed(7);
        let noise: Vec<u8> = (0..5000).map(|_| rng.u8(..)).collect();
        assert_eq!(compress(&noise), None);
    }

    #[test]
    fn inflation_stops_at_the_limit() {
        let data = vec![0u8; 1 << 20];
        let payload = compress(&data).unwrap();
        assert!(payload.len() < data.len() / 100, "{}", payload.len());
        assert_eq!(
            inflate(payload.clone(), data.len() - 1),
            Err(InflateError::TooLarge)
        );
        assert_eq!(inflate(payload, data.len()).unwrap().len(), data.len());
        assert_eq!(
            inflate(vec![0xff, 0xff, 0xff], 1000),
            Err(InflateError::Corrupt)
        );
    }

    /// A client frame: FIN, RSV1, opcode; masked with `mask`.
    fn client_frame(fin: bool, rsv1: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = Vec::new();
        let b0 = if fin { FIN } else { 0 } | if rsv1 { RSV1 } else { 0 } | opcode;
        push_header(&mut out, b0, payload.len() as u64);
        let n = out.len();
        out[n - 4..].copy_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    /// A parsed frame the codec would read: (fin, rsv bits, opcode, unmasked payload).
    type Parsed = (bool, u8, u8, Vec<u8>);

    fn parse(mut bytes: &[u8]) -> Vec<Parsed> {
        let mut frames = Vec::new();
        while !bytes.is_empty() {
            let (b0, b1) = (bytes[0], bytes[1]);
            assert!(b1 & MASKED != 0, "client frames stay masked");
            let (len, at) = match b1 & 0x7f {
                126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
                127 => (
                    u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                n => (n as usize, 2),
            };
            let mask: [u8; 4] = bytes[at..at + 4].try_into().unwrap();
            let payload = bytes[at + 4..at + 4 + len]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            frames.push((b0 & FIN != 0, b0 & RSV_ALL, b0 & 0x0f, payload));
            bytes = &bytes[at + 4 + len..];
        }
        frames
    }

    /// Feeds `input` in pieces of `step` bytes, returns what came out.
    fn feed_in_pieces(inflow: &mut Inflow, input: &[u8], step: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for piece in input.chunks(step) {
            inflow.feed(piece, &mut out);
        }
        out
    }

    #[test]
    fn compressed_fragmented_messages_come_out_whole_between_untouched_frames() {
        let big = sample(70_000);
        let payload = compress(&big).unwrap();
        let third = payload.len() / 3;
        let small = compress(&sample(3000)).unwrap();
        let mut input = Vec::new();
        // An uncompressed message, fragmented.
        input.extend(client_frame(false, false, 0x2, b"plain ", [1, 2, 3, 4]));
        input.extend(client_frame(true, false, 0x0, b"fragments", [5, 6, 7, 8]));
        // A compressed one in three fragments with a ping and a pong between them.
        input.extend(client_frame(
            false,
            true,
            0x2,
            &payload[..third],
            [9, 8, 7, 6],
        ));
        input.extend(client_frame(true, false, 0x9, b"ping", [1, 1, 1, 1]));
        input.extend(client_frame(
            false,
            false,
            0x0,
            &payload[third..2 * third],
            [0xaa; 4],
        ));
        input.extend(client_frame(true, false, 0xa, b"", [2; 4]));
        input.extend(client_frame(
            true,
            false,
            0x0,
            &payload[2 * third..],
            [3, 0, 0, 3],
        ));
        // A compressed one in one frame, then a keystroke.
        input.extend(client_frame(true, true, 0x2, &small, [4, 4, 0, 0]));
        input.extend(client_frame(true, false, 0x2, b"k", [9; 4]));
        // A compressed text message with an empty first fragment.
        let text = compress(&b"hello ".repeat(300)).unwrap();
        input.extend(client_frame(false, true, 0x1, b"", [1; 4]));
        input.extend(client_frame(true, false, 0x0, &text, [7; 4]));
        let expected: Vec<Parsed> = vec![
            (false, 0, 0x2, b"plain ".to_vec()),
            (true, 0, 0x0, b"fragments".to_vec()),
            (true, 0, 0x9, b"ping".to_vec()),
            (true, 0, 0xa, vec![]),
            (true, 0, 0x2, big.clone()),
            (true, 0, 0x2, sample(3000)),
            (true, 0, 0x2, b"k".to_vec()),
            (true, 0, 0x1, b"hello ".repeat(300)),
        ];
        for step in [1, 2, 3, 7, 13, 100, 4096, 8192, input.len()] {
            let mut inflow = Inflow::new(1 << 20);
            let out = feed_in_pieces(&mut inflow, &input, step);
            assert_eq!(parse(&out), expected, "read {step} bytes at a time");
            assert!(!inflow.failed());
            assert_eq!(inflow.held(), 0, "nothing held between messages");
        }
        // Random cuts.
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..50 {
            let mut inflow = Inflow::new(1 << 20);
            let mut out = Vec::new();
            let mut rest = &input[..];
            while !rest.is_empty() {
                let n = rng.usize(1..=rest.len().min(20_000));
                inflow.feed(&rest[..n], &mut out);
                rest = &rest[n..];
            }
            assert_eq!(parse(&out), expected);
        }
    }

    #[test]
    fn a_message_in_progress_holds_its_compressed_bytes_only() {
        let payload = compress(&sample(50_000)).unwrap();
        let frame = client_frame(true, true, 0x2, &payload, [1, 2, 3, 4]);
        let mut inflow = Inflow::new(1 << 20);
        let mut out = Vec::new();
        inflow.feed(&frame[..frame.len() - 1], &mut out);
        assert!(out.is_empty());
        assert_eq!(inflow.held(), payload.len());
        inflow.feed(&frame[frame.len() - 1..], &mut out);
        assert_eq!(parse(&out)[0].3, sample(50_000));
        assert_eq!(inflow.held(), 0);
    }

    /// The header of the frame the codec refuses for its size, `max + 1` bytes.
    fn too_large(max: usize) -> Vec<u8> {
        let mut out = Vec::new();
        push_header(&mut out, FIN | 0x2, max as u64 + 1);
        out
    }

    #[test]
    fn messages_over_the_limit_become_a_frame_the_codec_refuses_for_its_size() {
        let max = 10_000;
        // Small compressed, large inflated: a zip bomb.
        let bomb = compress(&vec![0u8; max + 1]).unwrap();
        let mut inflow = Inflow::new(max);
        let mut out = Vec::new();
        inflow.feed(&client_frame(true, true, 0x2, &bomb, [1; 4]), &mut out);
        assert_eq!(out, too_large(max));
        assert!(inflow.failed());
        // Nothing after it passes.
        inflow.feed(&client_frame(true, false, 0x2, b"more", [1; 4]), &mut out);
        assert_eq!(out, too_large(max));
        // Exactly the limit passes.
        let mut inflow = Inflow::new(max);
        let mut out = Vec::new();
        let fits = compress(&vec![0u8; max]).unwrap();
        inflow.feed(&client_frame(true, true, 0x2, &fits, [1; 4]), &mut out);
        assert_eq!(parse(&out), vec![(true, 0, 0x2, vec![0u8; max])]);

        // Compressed fragments adding up to more than the limit: refused at the header of
        // the fragment that crosses it, before its payload is read.
        let mut rng = fastrand::Rng::with_seed(3);
        let noise: Vec<u8> = (0..6000).map(|_| rng.u8(..)).collect();
        let mut inflow = Inflow::new(max);
        let mut out = Vec::new();
        inflow.feed(&client_frame(false, true, 0x2, &noise, [1; 4]), &mut out);
        assert!(out.is_empty());
        let second = client_frame(true, false, 0x0, &noise, [1; 4]);
        inflow.feed(&second[..8], &mut out);
        assert_eq!(out, too_large(max));
        assert_eq!(inflow.held(), 0);
    }

    #[test]
    fn broken_compressed_messages_become_a_frame_the_codec_refuses_as_malformed() {
        let malformed = {
            let mut out = Vec::new();
            push_header(&mut out, FIN | RSV1 | 0x2, 0);
            out
        };
        let payload = compress(&sample(2000)).unwrap();
        let cases: Vec<Vec<u8>> = vec![
            // Not DEFLATE.
            client_frame(true, true, 0x2, &[0xff; 40], [1; 4]),
            // RSV1 on a continuation frame.
            [
                client_frame(false, true, 0x2, &payload[..10], [1; 4]),
                client_frame(true, true, 0x0, &payload[10..], [1; 4]),
            ]
            .concat(),
            // A new message before the compressed one ended.
            [
                client_frame(false, true, 0x2, &payload[..10], [1; 4]),
                client_frame(true, false, 0x2, b"new", [1; 4]),
            ]
            .concat(),
            // Unmasked.
            [&[FIN | RSV1 | 0x2, 5][..], &payload[..5]].concat(),
        ];
        for (i, case) in cases.iter().enumerate() {
            let mut inflow = Inflow::new(1 << 20);
            let mut out = Vec::new();
            inflow.feed(case, &mut out);
            assert_eq!(out, malformed, "case {i}");
            assert!(inflow.failed());
        }
    }
}
