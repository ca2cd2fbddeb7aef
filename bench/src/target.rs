//! The servers under test and how a client reaches a document on each.

use std::fmt;
use std::net::SocketAddr;

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use crate::protocol::Dialect;

/// A server implementation.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Server {
    /// tandem: `GET /ws/{doc}`, stock y-websocket protocol.
    Tandem,
    /// Hocuspocus 3.x: one URL for every document, doc-name-prefixed messages, Auth first.
    Hocuspocus,
    /// The y-websocket reference server (`bin/server.js`): `GET /{doc}`.
    Ywebsocket,
    /// The floor relay (`tandem-bench floor`, capacity workload only): `GET /{doc}`, stock
    /// framing, no CRDT.
    Floor,
}

impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Server::Tandem => "tandem",
            Server::Hocuspocus => "hocuspocus",
            Server::Ywebsocket => "ywebsocket",
            Server::Floor => "floor",
        })
    }
}

/// Where and how to reach a server.
#[derive(Debug, Clone)]
pub struct Target {
    /// Which implementation.
    pub server: Server,
    /// Its loopback address.
    pub addr: SocketAddr,
    /// Token sent to tandem (`?token=`) or in Hocuspocus's Auth message.
    pub token: Option<String>,
    /// For tandem: speak the Hocuspocus dialect on its `GET /ws` route instead of the stock
    /// protocol on `GET /ws/{doc}`.
    pub tandem_hocuspocus: bool,
    /// For tandem's stock route: ask for tandem's extension messages (`?tandem=1`: durability
    /// acks carrying sids). Hocuspocus-dialect sockets get SyncStatus acks without asking.
    pub ext: bool,
}

impl Target {
    /// The same server, asking for tandem's extension messages (durability acks).
    pub fn with_acks(&self) -> Target {
        Target {
            ext: true,
            ..self.clone()
        }
    }

    /// The WebSocket URL a client of `doc` opens.
    pub fn url(&self, doc: &str) -> String {
        match self.server {
            Server::Tandem if self.tandem_hocuspocus => format!("ws://{}/ws", self.addr),
            Server::Tandem => {
                let mut query = Vec::new();
                if let Some(t) = &self.token {
                    query.push(format!("token={t}"));
                }
                if self.ext {
                    query.push("tandem=1".to_string());
                }
                if query.is_empty() {
                    format!("ws://{}/ws/{doc}", self.addr)
                } else {
                    format!("ws://{}/ws/{doc}?{}", self.addr, query.join("&"))
                }
            }
            Server::Hocuspocus => format!("ws://{}/", self.addr),
            Server::Ywebsocket | Server::Floor => format!("ws://{}/{doc}", self.addr),
        }
    }

    /// The framing a client of `doc` uses.
    pub fn dialect(&self, doc: &str) -> Dialect {
        match self.server {
            Server::Hocuspocus => Dialect::Hocuspocus { doc: doc.into() },
            Server::Tandem if self.tandem_hocuspocus => Dialect::Hocuspocus { doc: doc.into() },
            Server::Tandem | Server::Ywebsocket | Server::Floor => Dialect::Stock,
        }
    }

    /// The token for Hocuspocus's Auth message (any string: the bench server accepts all).
    pub fn hocuspocus_token(&self) -> &str {
        self.token.as_deref().unwrap_or("bench")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_follow_each_server() {
        let addr: SocketAddr = "127.0.0.1:9000".parse().expect("address");
        let t = |server, token: Option<&str>| Target {
            server,
            addr,
            token: token.map(String::from),
            tandem_hocuspocus: false,
            ext: false,
        };
        assert_eq!(
            t(Server::Tandem, None).url("d1"),
            "ws://127.0.0.1:9000/ws/d1"
        );
        assert_eq!(
            t(Server::Tandem, Some("tok")).url("d1"),
            "ws://127.0.0.1:9000/ws/d1?token=tok"
        );
        assert_eq!(
            t(Server::Ywebsocket, None).url("d1"),
            "ws://127.0.0.1:9000/d1"
        );
        assert_eq!(
            t(Server::Hocuspocus, None).url("d1"),
            "ws://127.0.0.1:9000/"
        );
        assert_eq!(
            t(Server::Hocuspocus, None).dialect("d1"),
            Dialect::Hocuspocus { doc: "d1".into() }
        );
        assert_eq!(
            t(Server::Tandem, Some("tok")).with_acks().url("d1"),
            "ws://127.0.0.1:9000/ws/d1?token=tok&tandem=1"
        );
        assert_eq!(
            t(Server::Tandem, None).with_acks().url("d1"),
            "ws://127.0.0.1:9000/ws/d1?tandem=1"
        );
        let dialect = Target {
            tandem_hocuspocus: true,
            ..t(Server::Tandem, None)
        };
        assert_eq!(dialect.url("d1"), "ws://127.0.0.1:9000/ws");
        assert_eq!(
            dialect.dialect("d1"),
            Dialect::Hocuspocus { doc: "d1".into() }
        );
    }
}
