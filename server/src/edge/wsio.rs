//! The byte stream under the WebSocket codec: the upgraded connection with buffers that hold
//! memory only while bytes wait in them.
//!
//! Most connections are idle most of the time, and whatever a connection's buffers keep while
//! it is idle is paid once per connection. The codec (tungstenite) keeps its buffers for the
//! connection's whole life and never shrinks them: its read buffer at its initial size or the
//! largest frame read, its write buffer at the largest batch it ever wrote. So the codec is
//! configured with a small read buffer and no write batching ([`super::socket`]), and this
//! layer does the batching instead, with buffers it lets go of once they are empty:
//!
//! - reads take up to [`READ_CHUNK`] bytes from the socket at a time (into the caller's
//!   buffer when it is that large, else through the stack); what the codec did not take yet
//!   waits on the heap, exactly its size, until it does;
//! - writes collect in a buffer that a flush writes to the socket (one `write` for a batch of
//!   frames) and then frees. Data frames are put here directly ([`LeanIo::put`], from
//!   [`super::socket::send_batch`]), not through the codec, whose write buffer would keep the
//!   size of the largest frame it ever wrote; only control frames (pings, pongs, closes) pass
//!   through it.
//!
//! With permessage-deflate negotiated, what is read passes through an [`Inflow`] before the
//! codec sees it: the client's compressed messages arrive inflated, as plain frames (the codec
//! has no extensions). The reader then always reads through the stack, and what the
//! transcoder made waits on the heap as above.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::deflate::Inflow;

/// Most bytes taken from the socket by one read.
pub const READ_CHUNK: usize = 8 * 1024;
/// Buffered outgoing bytes over which a write first pushes them to the socket.
pub const WRITE_HIGH_WATER: usize = 64 * 1024;

/// A byte stream with read and write buffers that are empty (no allocation) while idle.
#[derive(Debug)]
pub struct LeanIo<T> {
    inner: T,
    /// Read from the socket, not taken by the reader yet (from `read_at` on).
    read: Vec<u8>,
    read_at: usize,
    /// Written by the writer, not sent to the socket yet (from `write_at` on).
    write: Vec<u8>,
    write_at: usize,
    /// Inflates the client's compressed messages, when permessage-deflate was negotiated
    /// (boxed: a connection without it pays one pointer).
    inflow: Option<Box<Inflow>>,
}

impl<T> LeanIo<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> LeanIo<T> {
        LeanIo {
            inner,
            read: Vec::new(),
            read_at: 0,
            write: Vec::new(),
            write_at: 0,
            inflow: None,
        }
    }

    /// Wraps `inner`, whose reads pass through `inflow`.
    pub fn inflating(inner: T, inflow: Inflow) -> LeanIo<T> {
        LeanIo {
            inflow: Some(Box::new(inflow)),
            ..LeanIo::new(inner)
        }
    }

    /// Bytes allocated by the buffers now (0 when idle).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.read.capacity() + self.write.capacity()
    }
}

impl<T: AsyncWrite + Unpin> LeanIo<T> {
    /// Sends every buffered outgoing byte to the socket, then frees the buffer.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.write_at < self.write.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.write[self.write_at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.write_at += n;
        }
        self.write = Vec::new();
        self.write_at = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> LeanIo<T> {
    /// Ready for another frame from [`LeanIo::put`]: over [`WRITE_HIGH_WATER`] buffered bytes,
    /// pushes them to the socket first.
    pub fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.write.len() - self.write_at >= WRITE_HIGH_WATER {
            ready!(self.poll_drain(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    /// Buffers one whole frame, its header then its payload, until the next flush. The
    /// WebSocket codec writes whole frames here too (a write is taken whole or not at all), so
    /// frames never interleave.
    pub fn put(&mut self, header: &[u8], payload: &[u8]) {
        self.write.reserve(header.len() + payload.len());
        self.write.extend_from_slice(header);
        self.write.extend_from_slice(payload);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for LeanIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.read_at < this.read.len() {
            let n = buf.remaining().min(this.read.len() - this.read_at);
            buf.put_slice(&this.read[this.read_at..this.read_at + n]);
            this.read_at += n;
            if this.read_at == this.read.len() {
                this.read = Vec::new();
                this.read_at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        if let Some(inflow) = &mut this.inflow {
            let mut chunk = [const { MaybeUninit::<u8>::uninit() }; READ_CHUNK];
            loop {
                let mut read = ReadBuf::uninit(&mut chunk);
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
                let got = read.filled();
                if got.is_empty() {
                    // The end of the stream.
                    return Poll::Ready(Ok(()));
                }
                let mut made = Vec::with_capacity(got.len());
                inflow.feed(got, &mut made);
                if made.is_empty() {
                    if inflow.failed() {
                        // What the codec was handed ended the connection: nothing follows.
                        return Poll::Ready(Ok(()));
                    }
                    // A header or a compressed message in progress: read on.
                    continue;
                }
                let n = buf.remaining().min(made.len());
                buf.put_slice(&made[..n]);
                if n < made.len() {
                    this.read = made;
                    this.read_at = n;
                }
                return Poll::Ready(Ok(()));
            }
        }
        if buf.remaining() >= READ_CHUNK {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        // Not zeroed: a connection polls its socket after every batch it sends, usually to
        // find nothing, and zeroing 8 KiB each time was a measurable part of fan-out.
        let mut chunk = [const { MaybeUninit::<u8>::uninit() }; READ_CHUNK];
        let mut chunk = ReadBuf::uninit(&mut chunk);
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut chunk))?;
        let got = chunk.filled();
        let n = buf.remaining().min(got.len());
        buf.put_slice(&got[..n]);
        if n < got.len() {
            this.read = got[n..].to_vec();
            this.read_at = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for LeanIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.write.len() - this.write_at >= WRITE_HIGH_WATER {
            ready!(this.poll_drain(cx))?;
        }
        this.write.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn small_reads_keep_what_is_left_until_taken() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut io = LeanIo::new(server);
        let sent: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        client.write_all(&sent).await.unwrap();
        let mut got = Vec::new();
        let mut small = [0u8; 100];
        while got.len() < sent.len() {
            let n = io.read(&mut small).await.unwrap();
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(got, sent);
        assert_eq!(io.held(), 0, "nothing left to read holds nothing");
    }

    #[tokio::test]
    async fn writes_wait_for_a_flush_then_free_their_buffer() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut io = LeanIo::new(server);
        io.write_all(b"hello ").await.unwrap();
        io.write_all(b"world").await.unwrap();
        assert!(io.held() > 0);
        io.flush().await.unwrap();
        assert_eq!(io.held(), 0);
        let mut got = [0u8; 11];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello world");
    }

    #[tokio::test]
    async fn a_slow_peer_gets_everything_in_order() {
        // A pipe smaller than what is written: writes over the high-water mark wait for it.
        let (mut client, server) = tokio::io::duplex(1024);
        let mut io = LeanIo::new(server);
        let sent: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        for chunk in sent.chunks(1000) {
            io.write_all(chunk).await.unwrap();
        }
        io.shutdown().await.unwrap();
        assert_eq!(io.held(), 0);
        assert_eq!(reader.await.unwrap(), sent);
    }

    /// A client frame of `payload`, compressed (RSV1) or not, masked with a key that is not 0.
    fn client_frame(fin: bool, rsv1: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut out = vec![u8::from(fin) << 7 | u8::from(rsv1) << 6 | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    /// The codec over an inflating stream reads the client's compressed messages as plain
    /// ones, and refuses one that inflates over its limit for its size, as it refuses an
    /// oversized frame.
    #[tokio::test]
    async fn the_codec_reads_compressed_messages_inflated() {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
        use tokio_tungstenite::tungstenite::{error::CapacityError, Error, Message};
        use tokio_tungstenite::WebSocketStream;

        use crate::edge::deflate::{compress, Inflow};

        let max = 100_000;
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let config = WebSocketConfig::default()
            .max_frame_size(Some(max))
            .max_message_size(Some(max))
            .read_buffer_size(256);
        let mut ws = WebSocketStream::from_raw_socket(
            LeanIo::inflating(server, Inflow::new(max)),
            Role::Server,
            Some(config),
        )
        .await;
        let doc: Vec<u8> = (0..60_000u32)
            .map(|i| b"abcdefgh"[(i % 8) as usize] ^ (i / 500) as u8)
            .collect();
        let payload = compress(&doc).unwrap();
        let (a, b) = payload.split_at(payload.len() / 2);
        let mut input = client_frame(false, true, 0x2, a);
        input.extend(client_frame(true, false, 0x9, b"are you there"));
        input.extend(client_frame(true, false, 0x0, b));
        input.extend(client_frame(true, false, 0x2, b"keystroke"));
        let bomb = compress(&vec![7u8; max + 1]).unwrap();
        input.extend(client_frame(true, true, 0x2, &bomb));
        // Written in odd pieces, to be read across them.
        let writer = tokio::spawn(async move {
            for piece in input.chunks(777) {
                client.write_all(piece).await.unwrap();
            }
            client
        });
        let next = |m: Option<Result<Message, Error>>| m.expect("a message");
        assert_eq!(
            next(ws.next().await).unwrap(),
            Message::Ping("are you there".into())
        );
        assert_eq!(next(ws.next().await).unwrap(), Message::Binary(doc.into()));
        assert_eq!(
            next(ws.next().await).unwrap(),
            Message::Binary("keystroke".into())
        );
        let err = next(ws.next().await).unwrap_err();
        assert!(
            matches!(err, Error::Capacity(CapacityError::MessageTooLong { .. })),
            "{err:?}"
        );
        drop(writer.await.unwrap());
    }
}
