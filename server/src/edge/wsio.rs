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
//!   frames) and then frees.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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
        if buf.remaining() >= READ_CHUNK {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let mut chunk = [0u8; READ_CHUNK];
        let mut chunk = ReadBuf::new(&mut chunk);
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
}
