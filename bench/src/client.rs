//! One simulated client's socket: connect, open the session the way the stock providers do,
//! then send and receive frames.

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Bytes, Message};
use tokio_tungstenite::WebSocketStream;

use crate::protocol::{Dialect, EMPTY_STATE_VECTOR};
use crate::target::Target;

type Ws = WebSocketStream<TcpStream>;

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

/// Small buffers: tens of thousands of these live in one process.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(256 << 20))
        .max_frame_size(Some(256 << 20))
}

/// An open client connection, before it is split into halves.
pub struct Conn {
    ws: Ws,
    /// How this socket frames messages.
    pub dialect: Dialect,
}

/// Opens a WebSocket to `doc` on `target` (TCP_NODELAY set).
pub async fn connect(target: &Target, doc: &str) -> Result<Conn, ClientError> {
    let tcp = TcpStream::connect(target.addr).await?;
    tcp.set_nodelay(true)?;
    let (ws, _response) =
        tokio_tungstenite::client_async_with_config(target.url(doc), tcp, Some(ws_config()))
            .await?;
    Ok(Conn {
        ws,
        dialect: target.dialect(doc),
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
            Receiver { stream },
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
}

impl Receiver {
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
