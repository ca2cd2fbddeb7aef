//! One simulated client's socket: connect, open the session the way the stock providers do,
//! then send and receive frames.

use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use nix::sys::socket::{
    recvmsg, setsockopt, sockopt::ReceiveTimestampns, ControlMessageOwned, MsgFlags,
};
use nix::sys::time::TimeValLike;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Bytes, Message};
use tokio_tungstenite::WebSocketStream;

use crate::protocol::{Dialect, EMPTY_STATE_VECTOR};
use crate::target::Target;

type Ws = WebSocketStream<Stamped>;

/// A client's TCP stream that, when asked, reads with the kernel's receive timestamp
/// (`SO_TIMESTAMPNS`): the time the data reached the socket, whatever this process was doing
/// then. One generator thread reading a thousand sockets reads the last of a fan-out some
/// milliseconds after it arrived; with the kernel's time, a delivery's latency is the server's
/// (and the network's) and not the generator's queue.
pub struct Stamped {
    tcp: TcpStream,
    /// The kernel's receive time of the last read, in [`crate::tracker::now_ns`] nanoseconds
    /// (0: none yet); absent when timestamps are off.
    last: Option<Arc<AtomicU64>>,
}

impl Stamped {
    fn new(tcp: TcpStream, kernel_stamps: bool) -> io::Result<Self> {
        let last = if kernel_stamps {
            setsockopt(&tcp, ReceiveTimestampns, &true)?;
            Some(Arc::new(AtomicU64::new(0)))
        } else {
            None
        };
        Ok(Stamped { tcp, last })
    }
}

/// One `recvmsg` from `tcp` into `buf`: the bytes read and the kernel's receive time (Unix
/// nanoseconds) of the last of them.
fn recv_stamped(tcp: &TcpStream, buf: &mut [u8]) -> io::Result<(usize, Option<u64>)> {
    // Room for the one control message, aligned as a `cmsghdr`, on the stack: this runs once
    // per read of every client.
    #[repr(C, align(8))]
    struct Control([u8; 64]);
    let mut control = Control([0; 64]);
    let mut iov = [io::IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        tcp.as_raw_fd(),
        &mut iov,
        Some(&mut control.0),
        MsgFlags::MSG_DONTWAIT,
    )?;
    let stamp = msg.cmsgs()?.find_map(|c| match c {
        ControlMessageOwned::ScmTimestampns(ts) => u64::try_from(ts.num_nanoseconds()).ok(),
        _ => None,
    });
    Ok((msg.bytes, stamp))
}

impl AsyncRead for Stamped {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(last) = &this.last else {
            return Pin::new(&mut this.tcp).poll_read(cx, buf);
        };
        loop {
            ready!(this.tcp.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match this
                .tcp
                .try_io(Interest::READABLE, || recv_stamped(&this.tcp, unfilled))
            {
                Ok((n, stamp)) => {
                    if let Some(at) = stamp {
                        last.store(crate::tracker::from_realtime_ns(at), Ordering::Release);
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Stamped {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// Client failures.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TCP connection could not be opened.
    #[error("connecting: {0}")]
    Connect(#[from] std::io::Error),
    /// The WebSocket handshake or a frame failed.
    #[error("websocket: {0}")]
    Ws(#[from] tungstenite::Error),
    /// The server closed the connection with a close frame.
    #[error("closed by the server: {code} {reason}")]
    Closed {
        /// The close code.
        code: u16,
        /// The reason given.
        reason: String,
    },
}

/// Small buffers: tens of thousands of these live in one process. Frames fed without a flush
/// ([`Sender::feed`]) collect up to 64 KiB before they are written (the write buffer grows only
/// on a client that feeds); [`Sender::send`] writes at once.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(64 * 1024)
        .max_message_size(Some(256 << 20))
        .max_frame_size(Some(256 << 20))
}

/// An open client connection, before it is split into halves.
pub struct Conn {
    ws: Ws,
    /// How this socket frames messages.
    pub dialect: Dialect,
    /// The kernel's receive time of the last read, when asked for (see [`Stamped`]).
    stamp: Option<Arc<AtomicU64>>,
}

/// Opens a WebSocket to `doc` on `target` (TCP_NODELAY set).
pub async fn connect(target: &Target, doc: &str) -> Result<Conn, ClientError> {
    connect_with(target, doc, false).await
}

/// [`connect`], with the kernel's receive timestamps when `kernel_stamps` (see [`Stamped`] and
/// [`Receiver::received_at`]).
pub async fn connect_with(
    target: &Target,
    doc: &str,
    kernel_stamps: bool,
) -> Result<Conn, ClientError> {
    let tcp = TcpStream::connect(target.addr).await?;
    tcp.set_nodelay(true)?;
    let stream = Stamped::new(tcp, kernel_stamps)?;
    let stamp = stream.last.clone();
    let (ws, _response) =
        tokio_tungstenite::client_async_with_config(target.url(doc), stream, Some(ws_config()))
            .await?;
    Ok(Conn {
        ws,
        dialect: target.dialect(doc),
        stamp,
    })
}

impl Conn {
    /// Sends what a stock provider sends on open: Auth(Token) first on Hocuspocus, then
    /// step1 with an empty state vector, then the client's awareness state if given.
    pub async fn open(
        &mut self,
        target: &Target,
        awareness_update: Option<&[u8]>,
    ) -> Result<(), ClientError> {
        // The dialect decides: Hocuspocus itself, or tandem's `/ws` route speaking it.
        if let Some(auth) = self.dialect.auth_token(target.hocuspocus_token()) {
            self.ws.feed(Message::binary(auth)).await?;
        }
        self.ws
            .feed(Message::binary(self.dialect.step1(EMPTY_STATE_VECTOR)))
            .await?;
        if let Some(a) = awareness_update {
            self.ws
                .feed(Message::binary(self.dialect.awareness(a)))
                .await?;
        }
        self.ws.flush().await?;
        Ok(())
    }

    /// Splits into a sending and a receiving half.
    pub fn split(self) -> (Sender, Receiver) {
        let (sink, stream) = self.ws.split();
        (
            Sender {
                sink,
                dialect: self.dialect,
            },
            Receiver {
                stream,
                stamp: self.stamp,
            },
        )
    }
}

/// The sending half.
pub struct Sender {
    sink: SplitSink<Ws, Message>,
    /// How this socket frames messages.
    pub dialect: Dialect,
}

impl Sender {
    /// Sends one message (already framed for this socket's dialect) and flushes.
    pub async fn send(&mut self, msg: Vec<u8>) -> Result<(), ClientError> {
        self.sink.send(Message::binary(msg)).await?;
        Ok(())
    }

    /// Queues one message without flushing; call [`Sender::flush`] after a batch.
    pub async fn feed(&mut self, msg: Vec<u8>) -> Result<(), ClientError> {
        self.sink.feed(Message::binary(msg)).await?;
        Ok(())
    }

    /// Flushes queued messages.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        self.sink.flush().await?;
        Ok(())
    }

    /// Sends a close frame.
    pub async fn close(&mut self) {
        // The peer may already be gone; closing is best effort.
        let _ = self.sink.close().await;
    }
}

/// The receiving half.
pub struct Receiver {
    stream: SplitStream<Ws>,
    stamp: Option<Arc<AtomicU64>>,
}

impl Receiver {
    /// When the frame [`Receiver::next_frame`] just returned was received, in
    /// [`crate::tracker::now_ns`] nanoseconds: the kernel's time for the read that completed it
    /// when the connection was opened with kernel timestamps, else now.
    pub fn received_at(&self) -> u64 {
        self.stamp
            .as_ref()
            .map(|at| at.load(Ordering::Acquire))
            .filter(|&at| at != 0)
            .unwrap_or_else(crate::tracker::now_ns)
    }

    /// The next binary frame; `Ok(None)` when the connection ended without a close frame,
    /// [`ClientError::Closed`] when the server sent one. Pings are answered by the WebSocket
    /// layer; text frames are skipped.
    pub async fn next_frame(&mut self) -> Result<Option<Bytes>, ClientError> {
        loop {
            match self.stream.next().await {
                None => return Ok(None),
                Some(Err(tungstenite::Error::ConnectionClosed)) => return Ok(None),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(Message::Binary(b))) => return Ok(Some(b)),
                Some(Ok(Message::Close(Some(f)))) => {
                    return Err(ClientError::Closed {
                        code: f.code.into(),
                        reason: f.reason.to_string(),
                    })
                }
                Some(Ok(Message::Close(None))) => return Ok(None),
                Some(Ok(_)) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracker::now_ns;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn a_read_is_timed_by_its_arrival_not_by_the_read() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let mut stream = Stamped::new(tcp, true).unwrap();
        let last = stream.last.clone().unwrap();

        let written = now_ns();
        server.write_all(b"frame").await.unwrap();
        // The data waits in the socket while this client is busy elsewhere.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut buf = [0u8; 16];
        let n = stream.read(&mut buf).await.unwrap();
        let read = now_ns();
        assert_eq!(&buf[..n], b"frame");
        let arrived = last.load(Ordering::Acquire);
        assert!(
            arrived + 1_000_000 >= written,
            "arrived {arrived} before written {written}"
        );
        assert!(
            arrived + 40_000_000 <= read,
            "arrival {arrived} should be the kernel's, ~50 ms before the read at {read}"
        );
    }

    #[tokio::test]
    async fn without_kernel_stamps_reads_pass_through() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let mut stream = Stamped::new(tcp, false).unwrap();
        assert!(stream.last.is_none());
        server.write_all(b"abc").await.unwrap();
        let mut buf = [0u8; 8];
        let n = stream.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"abc");
    }
}
