//! [`LimitKind`]: every limit a client can breach, named once. Its metrics label, WebSocket
//! close code, HTTP status and human reason all come from here, so every route answers a breach
//! the same way. Where each limit is enforced is said in `access::limits`.

use super::close::{code, Close};

/// A limit from `tandem serve`'s flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// A frame or HTTP body above `--max-frame-size`.
    FrameSize,
    /// An awareness state above `--max-awareness-size`.
    AwarenessSize,
    /// An update that would grow a document above `--max-document-size`.
    DocumentSize,
    /// A connection sending faster than `--message-rate`/`--message-burst`.
    MessageRate,
    /// An IP address connecting faster than `--connection-rate`/`--connection-burst`.
    ConnectionRate,
    /// More connections than `--max-connections`.
    MaxConnections,
    /// More updates waiting for missing dependencies than `--max-pending-updates`.
    PendingUpdates,
}

impl LimitKind {
    /// Every limit, in a fixed order (metrics render in this order).
    pub const ALL: [LimitKind; 7] = [
        LimitKind::FrameSize,
        LimitKind::AwarenessSize,
        LimitKind::DocumentSize,
        LimitKind::MessageRate,
        LimitKind::ConnectionRate,
        LimitKind::MaxConnections,
        LimitKind::PendingUpdates,
    ];

    /// The position of this limit in [`LimitKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The metrics label value.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::FrameSize => "frame_size",
            LimitKind::AwarenessSize => "awareness_size",
            LimitKind::DocumentSize => "document_size",
            LimitKind::MessageRate => "message_rate",
            LimitKind::ConnectionRate => "connection_rate",
            LimitKind::MaxConnections => "max_connections",
            LimitKind::PendingUpdates => "pending_updates",
        }
    }

    /// The WebSocket close code a breach closes the connection with, for the limits that close
    /// one. The others never close: over the message rate a connection is slowed, an oversized
    /// awareness state is dropped, pending updates past the bound are resynced in place, and the
    /// two admission limits answer the handshake over HTTP.
    pub fn close_code(self) -> Option<u16> {
        match self {
            LimitKind::FrameSize => Some(code::FRAME_TOO_LARGE),
            LimitKind::DocumentSize => Some(code::DOCUMENT_TOO_LARGE),
            LimitKind::AwarenessSize
            | LimitKind::MessageRate
            | LimitKind::ConnectionRate
            | LimitKind::MaxConnections
            | LimitKind::PendingUpdates => None,
        }
    }

    /// The HTTP status a breach is answered with.
    pub fn http_status(self) -> u16 {
        match self {
            LimitKind::FrameSize | LimitKind::AwarenessSize => 413,
            LimitKind::DocumentSize => 507,
            LimitKind::MessageRate | LimitKind::ConnectionRate => 429,
            LimitKind::MaxConnections => 503,
            LimitKind::PendingUpdates => 422,
        }
    }

    /// A short reason for the close frame or error message (close reasons must stay under
    /// 123 bytes).
    pub fn reason(self) -> &'static str {
        match self {
            LimitKind::FrameSize => "frame too large",
            LimitKind::AwarenessSize => "awareness state too large",
            LimitKind::DocumentSize => "document size limit reached",
            LimitKind::MessageRate => "message rate limit exceeded",
            LimitKind::ConnectionRate => "connection rate limit exceeded",
            LimitKind::MaxConnections => "server is at its connection limit",
            LimitKind::PendingUpdates => "too many updates with missing dependencies",
        }
    }

    /// The close frame a breach closes a WebSocket with (see [`LimitKind::close_code`]).
    pub fn close(self) -> Option<Close> {
        self.close_code()
            .map(|code| Close::new(code, self.reason()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_limit_has_distinct_label_and_a_code() {
        for (i, k) in LimitKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
        }
        let mut labels: Vec<_> = LimitKind::ALL.iter().map(|k| k.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), LimitKind::ALL.len());
        for k in LimitKind::ALL {
            if let Some(code) = k.close_code() {
                // Stock clients come back after these: a limit is never a reason to stop.
                assert!(code::stock_client_reconnects(code), "{k:?}");
            }
            assert!((400..600).contains(&k.http_status()));
            assert!(k.reason().len() < 123);
        }
    }
}
