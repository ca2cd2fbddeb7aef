//! The server's TCP connections, written by their socket loop and, for a y-websocket
//! connection, by its document too.
//!
//! Every accepted connection is a [`Wire`]: its `TcpStream` and a gate every write passes
//! through. Hyper, and after an upgrade the WebSocket codec, read and write it as [`WireIo`]
//! (from [`WireListener`]); the upgrade handler finds it in the request's extensions
//! ([`WireHandle`]). A y-websocket connection gives its document a [`DirectWs`]: when nothing of
//! the connection is waiting (see [`crate::documents::outbox`]), the document task writes a
//! fan-out's small frames to the socket itself, in one `writev`, instead of waking the socket
//! loop to write them. On one core that hop (the wake-up, the loop's poll, the codec, the
//! copy) cost about as much as the write.
//!
//! The gate keeps the byte stream whole: a write the socket takes only in part leaves the rest
//! in the gate, and every later write, from either side, waits until it is out. The socket loop
//! never leaves part of a frame unwritten outside the gate, so frames never interleave.

use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

use crate::documents::outbox::{Direct, Written};

/// Frames one direct write takes at most (a keystroke is an update and a cursor, and an ack
/// for its author); a larger batch is queued for the socket loop.
const DIRECT_FRAMES: usize = 16;
/// A direct write up to this many bytes is framed in a buffer on the stack.
const JOIN_UNDER: usize = 2048;

/// One accepted TCP connection.
#[derive(Debug)]
pub struct Wire {
    stream: TcpStream,
    gate: Mutex<Gate>,
}

/// Bytes a write left for later: they go out before anything else.
#[derive(Debug, Default)]
struct Gate {
    pending: Vec<u8>,
    at: usize,
}

impl Gate {
    fn is_empty(&self) -> bool {
        self.at == self.pending.len()
    }

    fn keep(&mut self, rest: &[u8]) {
        self.pending.extend_from_slice(rest);
    }

    /// Writes what is pending; `true` when nothing is left (its buffer is then freed).
    fn drain(&mut self, stream: &TcpStream) -> io::Result<bool> {
        while self.at < self.pending.len() {
            match stream.try_write(&self.pending[self.at..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        self.pending = Vec::new();
        self.at = 0;
        Ok(true)
    }
}

impl Wire {
    fn new(stream: TcpStream) -> Wire {
        Wire {
            stream,
            gate: Mutex::new(Gate::default()),
        }
    }

    fn gate(&self) -> MutexGuard<'_, Gate> {
        self.gate.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `data` whole, or nothing: `None` when the socket takes nothing now (then wait
    /// for it to be writable). What the socket does not take at once stays in the gate.
    fn write_whole(&self, data: &[u8]) -> io::Result<Option<usize>> {
        let mut gate = self.gate();
        if !gate.drain(&self.stream)? {
            return Ok(None);
        }
        match self.stream.try_write(data) {
            Ok(n) => {
                gate.keep(&data[n..]);
                Ok(Some(data.len()))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn poll_drain(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.gate().drain(&self.stream)? {
                return Poll::Ready(Ok(()));
            }
            ready!(self.stream.poll_write_ready(cx))?;
        }
    }
}

/// A [`Wire`] as hyper and the WebSocket codec read and write it.
#[derive(Debug)]
pub struct WireIo {
    wire: Arc<Wire>,
}

impl WireIo {
    /// The connection, for [`WireHandle`].
    pub fn wire(&self) -> &Arc<Wire> {
        &self.wire
    }

    /// Sets `TCP_NODELAY`.
    pub fn set_nodelay(&self) -> io::Result<()> {
        self.wire.stream.set_nodelay(true)
    }
}

impl AsyncRead for WireIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let stream = &self.wire.stream;
        loop {
            ready!(stream.poll_read_ready(cx))?;
            // Initialised only once the socket says it has data: a connection polls its socket
            // after every batch it writes, usually to find nothing.
            match stream.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for WireIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            if let Some(n) = self.wire.write_whole(data)? {
                return Poll::Ready(Ok(n));
            }
            ready!(self.wire.stream.poll_write_ready(cx))?;
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.wire.poll_drain(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.wire.poll_drain(cx))?;
        Poll::Ready(socket2::SockRef::from(&self.wire.stream).shutdown(Shutdown::Write))
    }
}

/// The connection a request arrived on, in its extensions.
#[derive(Debug, Clone)]
pub struct WireHandle(pub Arc<Wire>);

/// Each accepted connection's socket receive buffer (`SO_RCVBUF`). The kernel's starting
/// buffer (128 KiB, grown only for a reader that keeps up over several round trips) can
/// advertise a window below one segment on loopback, where a segment is 64 KiB: a client
/// writing faster than its document takes the updates then waits for TCP's window probe, 200
/// ms, after a pause (silly-window avoidance keeps it from sending less than a segment). W6
/// stalled that way in most runs with 4,096 updates in flight. The buffer holds kernel memory
/// only while data waits in it: an idle connection costs nothing more.
pub const RECV_BUFFER: usize = 256 * 1024;

/// Accepts connections as [`WireIo`]s, their sockets given [`RECV_BUFFER`].
#[derive(Debug)]
pub struct WireListener {
    inner: TcpListener,
}

impl WireListener {
    /// Accepts on `inner`.
    pub fn new(inner: TcpListener) -> WireListener {
        WireListener { inner }
    }
}

impl axum::serve::Listener for WireListener {
    type Io = WireIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (WireIo, SocketAddr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, peer)) => {
                    if let Err(e) =
                        socket2::SockRef::from(&stream).set_recv_buffer_size(RECV_BUFFER)
                    {
                        tracing::debug!(cause = %e, "could not set SO_RCVBUF");
                    }
                    let wire = Arc::new(Wire::new(stream));
                    return (WireIo { wire }, peer);
                }
                // A connection that failed before it was accepted: the next one.
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    // Out of file descriptors, most likely: wait for some to be freed.
                    tracing::error!(cause = %e, "accept failed; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// The header of a binary frame the server sends (unmasked): `first` and `last` of a message's
/// fragments (both for a whole message), RSV1 on the first marking a `compressed` message
/// (RFC 7692 §6).
pub fn frame_header(first: bool, last: bool, compressed: bool) -> FrameHeader {
    let opcode = if first { Data::Binary } else { Data::Continue };
    FrameHeader {
        is_final: last,
        rsv1: compressed && first,
        opcode: OpCode::Data(opcode),
        ..FrameHeader::default()
    }
}

/// A y-websocket connection's socket, as its document writes it: whole binary frames up to
/// `largest` bytes (frames a socket loop would compress or fragment are queued for it).
#[derive(Debug)]
pub struct DirectWs {
    wire: Arc<Wire>,
    largest: usize,
}

impl DirectWs {
    /// Writes to `wire` frames up to `largest` bytes.
    pub fn new(wire: Arc<Wire>, largest: usize) -> DirectWs {
        DirectWs { wire, largest }
    }
}

impl Direct for DirectWs {
    fn write_now(&self, frames: &[Bytes]) -> Written {
        if frames.len() > DIRECT_FRAMES || frames.iter().any(|f| f.len() > self.largest) {
            return Written::Nothing;
        }
        // Framed into one buffer (on the stack for a keystroke's few hundred bytes) and sent
        // in one plain `write`, which costs the kernel less than a `writev` of the pieces.
        let header = frame_header(true, true, false);
        let total: usize = frames
            .iter()
            .map(|f| header.len(f.len() as u64) + f.len())
            .sum();
        let mut stack = [0u8; JOIN_UNDER];
        let mut heap = Vec::new();
        let buf = if total <= JOIN_UNDER {
            &mut stack[..total]
        } else {
            heap.resize(total, 0);
            &mut heap[..]
        };
        let mut out = &mut buf[..];
        for f in frames {
            if header.format(f.len() as u64, &mut out).is_err() || out.write_all(f).is_err() {
                return Written::Nothing;
            }
        }
        let mut gate = self.wire.gate();
        if !gate.is_empty() {
            return Written::Nothing;
        }
        match self.wire.stream.try_write(buf) {
            Ok(n) if n == total => Written::All,
            Ok(n) => {
                gate.keep(&buf[n..]);
                Written::Part
            }
            // Full, or failing: the socket loop writes them, and meets the error itself.
            Err(_) => Written::Nothing,
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A connected pair: the server's side as a [`Wire`], the client's as a plain stream.
    async fn pair() -> (Arc<Wire>, WireIo, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let wire = Arc::new(Wire::new(server));
        let io = WireIo { wire: wire.clone() };
        (wire, io, client)
    }

    #[tokio::test]
    async fn accepted_sockets_get_the_receive_buffer() {
        use axum::serve::Listener;
        let mut listener = WireListener::new(TcpListener::bind("127.0.0.1:0").await.unwrap());
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (io, _) = listener.accept().await;
        let size = socket2::SockRef::from(&io.wire.stream)
            .recv_buffer_size()
            .unwrap();
        // Linux reports twice what was set (the other half is its bookkeeping).
        assert!(size >= RECV_BUFFER, "SO_RCVBUF {size}");
    }

    /// Reads one unmasked binary frame's payload.
    async fn read_frame(client: &mut TcpStream) -> Vec<u8> {
        let mut head = [0u8; 2];
        client.read_exact(&mut head).await.unwrap();
        assert_eq!(head[0], 0x82, "a final binary frame");
        let len = match head[1] {
            126 => client.read_u16().await.unwrap() as usize,
            127 => client.read_u64().await.unwrap() as usize,
            n => n as usize,
        };
        let mut payload = vec![0u8; len];
        client.read_exact(&mut payload).await.unwrap();
        payload
    }

    fn frame(i: u32, len: usize) -> Bytes {
        let mut f = i.to_be_bytes().to_vec();
        f.resize(len, (i % 251) as u8);
        Bytes::from(f)
    }

    #[test]
    fn headers_match_the_codec() {
        for len in [0usize, 1, 125, 126, 65_535, 65_536, 1 << 20] {
            for (first, last, compressed) in [
                (true, true, false),
                (true, false, true),
                (false, true, false),
            ] {
                let mut ours = Vec::new();
                frame_header(first, last, compressed)
                    .format(len as u64, &mut ours)
                    .unwrap();
                let opcode = if first { Data::Binary } else { Data::Continue };
                let header = FrameHeader {
                    is_final: last,
                    rsv1: compressed && first,
                    opcode: OpCode::Data(opcode),
                    ..FrameHeader::default()
                };
                let mut theirs = Vec::new();
                header.format(len as u64, &mut theirs).unwrap();
                assert_eq!(ours, theirs, "{len} {first} {last} {compressed}");
            }
        }
    }

    /// Direct writes and the socket loop's writes, while the client reads nothing and then
    /// everything: every frame arrives whole and in order, whatever the socket took at once.
    #[tokio::test]
    async fn direct_and_loop_writes_keep_frames_whole_and_in_order() {
        let (wire, mut io, mut client) = pair().await;
        let direct = DirectWs::new(wire.clone(), 1 << 20);
        let mut expected = Vec::new();
        let (mut all, mut part, mut nothing) = (0, 0, 0);
        for i in 0..3000u32 {
            let f = frame(i, 100 + (i as usize * 37) % 3000);
            expected.push(f.clone());
            if i % 3 == 0 {
                // The socket loop's way: a whole frame through the codec's stream.
                let mut whole = Vec::new();
                frame_header(true, true, false)
                    .format(f.len() as u64, &mut whole)
                    .unwrap();
                whole.extend_from_slice(&f);
                // Would wait for the client to read: stop writing this way then.
                let wrote = tokio::time::timeout(Duration::from_millis(0), io.write_all(&whole))
                    .await
                    .is_ok();
                if !wrote {
                    expected.pop();
                    break;
                }
                continue;
            }
            match direct.write_now(std::slice::from_ref(&f)) {
                Written::All => all += 1,
                Written::Part => part += 1,
                Written::Nothing => {
                    nothing += 1;
                    expected.pop();
                    break;
                }
            }
        }
        assert!(all > 0, "some frames were written at once");
        assert!(
            part + nothing > 0,
            "the client read nothing, so the socket filled up"
        );
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..expected.len() {
                got.push(read_frame(&mut client).await);
            }
            (got, expected)
        });
        io.flush().await.unwrap();
        let (got, expected) = reader.await.unwrap();
        assert_eq!(got.len(), expected.len());
        for (g, e) in got.iter().zip(&expected) {
            assert_eq!(&g[..], &e[..]);
        }
        assert!(wire.gate().is_empty(), "flushed");
        assert_eq!(wire.gate().pending.capacity(), 0, "its buffer freed");
    }

    /// A direct write refuses frames the socket loop must compress or fragment, and batches
    /// over its size.
    #[tokio::test]
    async fn large_frames_and_batches_are_left_to_the_socket_loop() {
        let (wire, _io, _client) = pair().await;
        let direct = DirectWs::new(wire, 1000);
        assert_eq!(direct.write_now(&[frame(1, 1001)]), Written::Nothing);
        let many: Vec<Bytes> = (0..DIRECT_FRAMES as u32 + 1)
            .map(|i| frame(i, 10))
            .collect();
        assert_eq!(direct.write_now(&many), Written::Nothing);
        assert_eq!(direct.write_now(&many[..DIRECT_FRAMES]), Written::All);
    }

    #[tokio::test]
    async fn reads_pass_through() {
        let (_wire, mut io, mut client) = pair().await;
        client.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        io.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        io.shutdown().await.unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "the server's side shut down its writes");
    }
}
