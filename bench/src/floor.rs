//! The floor: the least a server must do to fan out what the capacity workload (W9) sends.
//!
//! A relay that accepts the generator's WebSocket connections (the HTTP upgrade, then frames)
//! and writes every document update and awareness update a client sends, unchanged, to every
//! other connection of the same URL path. No CRDT and no protocol beyond the two answers the
//! generator's clients wait for: a sync step 1 gets an empty step 2 (the client counts as
//! synced), and a joining client is sent the latest awareness message of every connection
//! already there (it counts everyone's presence). Writes are batched as tandem batches them:
//! one task per connection, and the frames queued for it while it was writing go out in one
//! `write` (at most [`WRITE_BATCH`] frames).
//!
//! Run on one core (`taskset -c 0 tandem-bench floor --addr …`), it measures the kernel and
//! WebSocket framing cost of the same fan-out on the same sockets: the CPU per delivery a
//! server cannot go below with this batching.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Frames written per `write` at most (tandem's batch).
pub const WRITE_BATCH: usize = 64;
/// Frames queued for one connection at most; past it, frames to that connection are dropped
/// (and counted: the generator then reports missing deliveries).
const QUEUE: usize = 4096;
/// The largest upgrade request accepted.
const MAX_REQUEST: usize = 8 * 1024;
/// The largest client frame accepted (the generator's are a few hundred bytes).
const MAX_FRAME: u64 = 16 << 20;

/// Sync step 2 carrying an empty Yjs update: message sync (0), step 2 (1), two bytes (no
/// structs, no deletions).
const EMPTY_STEP2: [u8; 5] = [0, 1, 2, 0, 0];

/// WebSocket opcodes.
const OP_CONTINUATION: u8 = 0x0;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Serves on `addr` until the process is stopped, on a single-threaded runtime.
pub fn serve(addr: SocketAddr) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        run(listener).await
    })
}

/// Accepts connections on `listener` forever.
pub async fn run(listener: TcpListener) -> Result<()> {
    let rooms = Rooms::default();
    let mut next_id = 0u64;
    loop {
        let (tcp, _) = listener.accept().await?;
        next_id += 1;
        let (rooms, id) = (rooms.clone(), next_id);
        tokio::spawn(async move {
            // A client that fails its handshake or its socket just goes away.
            let _ = connection(tcp, rooms, id).await;
        });
    }
}

/// One connection of a room.
struct Member {
    id: u64,
    tx: mpsc::Sender<Bytes>,
    /// The latest awareness frame this connection sent (for clients joining later).
    awareness: Option<Bytes>,
}

/// The connections of each URL path. A std mutex: never held across an await.
#[derive(Clone, Default)]
struct Rooms {
    inner: Arc<Mutex<HashMap<String, Vec<Member>>>>,
    dropped: Arc<AtomicU64>,
}

impl Rooms {
    /// Adds a connection; returns the awareness frames of those already there.
    fn join(&self, path: &str, id: u64, tx: mpsc::Sender<Bytes>) -> Vec<Bytes> {
        let mut rooms = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let room = rooms.entry(path.to_string()).or_default();
        let present = room.iter().filter_map(|m| m.awareness.clone()).collect();
        room.push(Member {
            id,
            tx,
            awareness: None,
        });
        present
    }

    fn leave(&self, path: &str, id: u64) {
        let mut rooms = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(room) = rooms.get_mut(path) {
            room.retain(|m| m.id != id);
            if room.is_empty() {
                rooms.remove(path);
            }
        }
    }

    /// Queues `frame` (already encoded) for every connection of `path` but `from`; with
    /// `awareness`, keeps it as `from`'s latest awareness.
    fn relay(&self, path: &str, from: u64, frame: Bytes, awareness: bool) {
        let mut rooms = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Some(room) = rooms.get_mut(path) else {
            return;
        };
        for m in room.iter_mut() {
            if m.id == from {
                if awareness {
                    m.awareness = Some(frame.clone());
                }
                continue;
            }
            if m.tx.try_send(frame.clone()).is_err() {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed);
                if n == 0 {
                    eprintln!("[floor] a connection's queue is full: dropping frames");
                }
            }
        }
    }
}

async fn connection(mut tcp: TcpStream, rooms: Rooms, id: u64) -> Result<()> {
    tcp.set_nodelay(true)?;
    let mut inbuf = BytesMut::with_capacity(1024);
    let (path, key) = loop {
        if tcp.read_buf(&mut inbuf).await? == 0 {
            return Ok(());
        }
        if let Some(end) = find(&inbuf, b"\r\n\r\n") {
            let head = inbuf.split_to(end + 4);
            break parse_upgrade(&head).context("not a WebSocket upgrade")?;
        }
        anyhow::ensure!(inbuf.len() <= MAX_REQUEST, "request too large");
    };
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    tcp.write_all(response.as_bytes()).await?;

    let (tx, rx) = mpsc::channel::<Bytes>(QUEUE);
    let present = rooms.join(&path, id, tx);
    let conn = Conn {
        tcp,
        inbuf,
        rx,
        rooms: rooms.clone(),
        path,
        id,
    };
    conn.pump(present).await
}

/// An upgraded connection, a member of the room of its path.
struct Conn {
    tcp: TcpStream,
    inbuf: BytesMut,
    rx: mpsc::Receiver<Bytes>,
    rooms: Rooms,
    path: String,
    id: u64,
}

impl Conn {
    /// Sends `present` (the room's awareness), then relays until the client goes; leaves the
    /// room either way.
    async fn pump(mut self, present: Vec<Bytes>) -> Result<()> {
        let result = self.relay_loop(present).await;
        self.rooms.leave(&self.path, self.id);
        result
    }

    async fn relay_loop(&mut self, present: Vec<Bytes>) -> Result<()> {
        let mut out = Vec::with_capacity(4096);
        for f in present {
            out.extend_from_slice(&f);
        }
        if !out.is_empty() {
            self.tcp.write_all(&out).await?;
            out.clear();
        }
        loop {
            tokio::select! {
                biased;
                frame = self.rx.recv() => {
                    let Some(frame) = frame else { return Ok(()) };
                    // Everything queued now goes out in one write (up to WRITE_BATCH frames).
                    out.extend_from_slice(&frame);
                    for _ in 1..WRITE_BATCH {
                        match self.rx.try_recv() {
                            Ok(f) => out.extend_from_slice(&f),
                            Err(_) => break,
                        }
                    }
                    self.tcp.write_all(&out).await?;
                    out.clear();
                    if out.capacity() > 64 * 1024 {
                        out = Vec::with_capacity(4096);
                    }
                }
                n = self.tcp.read_buf(&mut self.inbuf) => {
                    if n? == 0 {
                        return Ok(());
                    }
                    while let Some(frame) = take_frame(&mut self.inbuf)? {
                        match frame.opcode {
                            OP_BINARY => {
                                if let Some(reply) =
                                    on_message(&self.rooms, &self.path, self.id, &frame.payload)
                                {
                                    out.extend_from_slice(&reply);
                                }
                            }
                            OP_PING => out.extend_from_slice(&encode(OP_PONG, &frame.payload)),
                            OP_CLOSE => {
                                let code = frame.payload.get(..2).unwrap_or(&[0x03, 0xE8]);
                                out.extend_from_slice(&encode(OP_CLOSE, code));
                                self.tcp.write_all(&out).await?;
                                return Ok(());
                            }
                            OP_PONG => {}
                            op => anyhow::bail!("unsupported opcode {op}"),
                        }
                    }
                    if !out.is_empty() {
                        self.tcp.write_all(&out).await?;
                        out.clear();
                    }
                }
            }
        }
    }
}

/// Relays a client message; returns the frame to answer the client itself with, if any.
fn on_message(rooms: &Rooms, path: &str, id: u64, msg: &[u8]) -> Option<Bytes> {
    match classify(msg) {
        Kind::Step1 => Some(encode(OP_BINARY, &EMPTY_STEP2)),
        Kind::Update => {
            rooms.relay(path, id, encode(OP_BINARY, msg), false);
            None
        }
        Kind::Awareness => {
            rooms.relay(path, id, encode(OP_BINARY, msg), true);
            None
        }
        Kind::Other => None,
    }
}

/// What the relay does with a client message (its first two bytes decide).
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    /// Sync step 1: answered with an empty step 2.
    Step1,
    /// Sync update: relayed.
    Update,
    /// Awareness: relayed and kept for joiners.
    Awareness,
    /// Anything else (the client's step 2, auth): ignored.
    Other,
}

fn classify(msg: &[u8]) -> Kind {
    match msg {
        [0, 0, ..] => Kind::Step1,
        [0, 2, ..] => Kind::Update,
        [1, ..] => Kind::Awareness,
        _ => Kind::Other,
    }
}

/// One frame as a client sent it (unmasked).
#[derive(Debug)]
struct Frame {
    opcode: u8,
    payload: Bytes,
}

/// Takes one whole frame off the front of `buf` (`None`: more bytes needed).
fn take_frame(buf: &mut BytesMut) -> Result<Option<Frame>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    let opcode = b0 & 0x0F;
    anyhow::ensure!(
        b0 & 0x80 != 0 && opcode != OP_CONTINUATION,
        "fragmented frames are not supported"
    );
    let masked = b1 & 0x80 != 0;
    let (len, mut at) = match b1 & 0x7F {
        126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        126 | 127 => return Ok(None),
        n => (u64::from(n), 2),
    };
    anyhow::ensure!(len <= MAX_FRAME, "frame too large");
    let need = at + if masked { 4 } else { 0 } + len as usize;
    if buf.len() < need {
        return Ok(None);
    }
    let mask = masked.then(|| {
        let m = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
        at += 4;
        m
    });
    buf.advance(at);
    let mut payload = buf.split_to(len as usize);
    if let Some(m) = mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= m[i % 4];
        }
    }
    Ok(Some(Frame {
        opcode,
        payload: payload.freeze(),
    }))
}

/// A server frame (unmasked, final) with this opcode and payload.
fn encode(opcode: u8, payload: &[u8]) -> Bytes {
    let mut f = Vec::with_capacity(payload.len() + 10);
    f.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => f.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    Bytes::from(f)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The path and `Sec-WebSocket-Key` of an upgrade request's head.
fn parse_upgrade(head: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut request = lines.next()?.split(' ');
    if request.next()? != "GET" {
        return None;
    }
    let target = request.next()?;
    let path = target.split('?').next()?.to_string();
    let key = lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("sec-websocket-key")
            .then(|| value.trim().to_string())
    })?;
    Some((path, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_requests() {
        let head = b"GET /w9-t4-abc?x=1 HTTP/1.1\r\nHost: a\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        assert_eq!(
            parse_upgrade(head),
            Some((
                "/w9-t4-abc".to_string(),
                "dGhlIHNhbXBsZSBub25jZQ==".to_string()
            ))
        );
        assert_eq!(parse_upgrade(b"POST / HTTP/1.1\r\n\r\n"), None);
        assert_eq!(parse_upgrade(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), None);
    }

    #[test]
    fn frames_round_trip_through_a_mask() {
        for len in [0usize, 5, 125, 126, 300, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            // A client frame: the server encoding with the mask bit and a mask key added.
            let plain = encode(OP_BINARY, &payload);
            let header = plain.len() - len;
            let mask = [1u8, 2, 3, 4];
            let mut client = BytesMut::new();
            client.extend_from_slice(&plain[..header]);
            client[1] |= 0x80;
            client.extend_from_slice(&mask);
            client.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
            let whole = client.clone();
            // Byte by byte: no frame until the last byte is there.
            let mut buf = BytesMut::new();
            for (i, b) in whole.iter().enumerate() {
                buf.extend_from_slice(&[*b]);
                let got = take_frame(&mut buf).expect("valid");
                if i + 1 < whole.len() {
                    assert!(got.is_none(), "len {len}: frame after {i} bytes");
                } else {
                    let f = got.expect("whole frame");
                    assert_eq!(f.opcode, OP_BINARY);
                    assert_eq!(&f.payload[..], &payload[..], "len {len}");
                }
            }
            assert!(buf.is_empty());
        }
        let mut fragment = BytesMut::from(&[0x02u8, 0x00][..]);
        assert!(take_frame(&mut fragment).is_err());
    }

    #[tokio::test]
    async fn relays_to_the_other_connections_of_a_path() {
        use crate::client::connect;
        use crate::protocol::{awareness_update, Dialect, Incoming};
        use crate::target::{Server, Target};

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let target = Target {
            server: Server::Floor,
            addr: listener.local_addr().expect("address"),
            token: None,
            tandem_hocuspocus: false,
            ext: false,
        };
        tokio::spawn(run(listener));
        let mut first = connect(&target, "d").await.expect("connects");
        let presence = awareness_update(7, 1, "{}");
        first.open(&target, Some(&presence)).await.expect("opens");
        let (_tx1, mut rx1) = first.split();
        let step2 = rx1.next_frame().await.expect("reads").expect("a frame");
        assert_eq!(&step2[..], &EMPTY_STEP2);
        // A joiner gets the empty step 2 and the presence of the connection already there.
        let mut second = connect(&target, "d").await.expect("connects");
        second.open(&target, None).await.expect("opens");
        let (mut tx2, mut rx2) = second.split();
        let mut kinds = Vec::new();
        for _ in 0..2 {
            let f = rx2.next_frame().await.expect("reads").expect("a frame");
            Dialect::Stock
                .for_each(&f, |m| kinds.push(matches!(m, Incoming::Awareness(_))))
                .expect("decodes");
        }
        kinds.sort();
        assert_eq!(kinds, vec![false, true]);
        // An update goes to the other connection unchanged, and not back to its sender.
        let update = Dialect::Stock.update(&[1, 2, 3]);
        tx2.send(update.clone()).await.expect("sends");
        let got = rx1.next_frame().await.expect("reads").expect("a frame");
        assert_eq!(&got[..], &update[..]);
        let echo = tokio::time::timeout(std::time::Duration::from_millis(50), rx2.next_frame());
        assert!(echo.await.is_err(), "the sender got its own update back");
    }

    #[test]
    fn messages_by_kind() {
        assert_eq!(classify(&[0, 0, 1, 0]), Kind::Step1);
        assert_eq!(classify(&[0, 2, 3, 1, 2, 3]), Kind::Update);
        assert_eq!(classify(&[0, 1, 2, 0, 0]), Kind::Other);
        assert_eq!(classify(&[1, 5, 1]), Kind::Awareness);
        assert_eq!(classify(&[2, 0]), Kind::Other);
        assert_eq!(classify(&[]), Kind::Other);
    }
}
