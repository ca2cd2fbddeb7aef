//! WebSocket closes: [`Close`] (a code and a reason) and every code the server sends.
//!
//! A close code is also an instruction to the client. The stock y-websocket provider (3.x)
//! never reconnects after a code in 4400-4499, and reconnects after anything else (4500-4599
//! means "try again later"). So 44xx is kept for what no retry can fix: a bad, expired or
//! revoked token, no access, an invalid document name, a protocol violation.
//! [`Close::stock_client_reconnects`] says which side of that line a code is on; the README's
//! close-code table is checked against it.

/// Why the server closes a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    /// WebSocket close code (one of [`code`]).
    pub code: u16,
    /// Human-readable reason (cut to 120 bytes on the wire).
    pub reason: String,
}

impl Close {
    /// A close with `code` and `reason`.
    pub fn new(code: u16, reason: impl Into<String>) -> Self {
        Close {
            code,
            reason: reason.into(),
        }
    }

    /// Whether the stock y-websocket provider reconnects after this close.
    pub fn stock_client_reconnects(&self) -> bool {
        code::stock_client_reconnects(self.code)
    }
}

/// Every close code the server sends.
pub mod code {
    /// Server shutting down, or no pong within 30 s.
    pub const GOING_AWAY: u16 = 1001;
    /// A malformed WebSocket frame.
    pub const MALFORMED_FRAME: u16 = 1002;
    /// A text frame (the protocol is binary).
    pub const TEXT_FRAME: u16 = 1003;
    /// A frame over `--max-frame-size`.
    pub const FRAME_TOO_LARGE: u16 = 1009;
    /// The document failed (storage error or a panic); reconnecting reloads it.
    pub const DOCUMENT_FAILED: u16 = 1011;
    /// A slow reader whose queue overflowed twice within 30 s (the first time it is resynced).
    pub const SLOW_READER: u16 = 4008;
    /// An invalid document name, or a protocol violation.
    pub const BAD_REQUEST: u16 = 4400;
    /// A missing, invalid, expired or revoked token.
    pub const UNAUTHORIZED: u16 = 4401;
    /// A token that does not reach the document.
    pub const FORBIDDEN: u16 = 4403;
    /// Storage is out of reach (the shared database): nothing more was stored; try again.
    pub const STORAGE_UNAVAILABLE: u16 = 4503;
    /// The document is at its size limit.
    pub const DOCUMENT_TOO_LARGE: u16 = 4507;

    /// Whether the stock y-websocket provider (3.x) reconnects after `code`: everything but
    /// 4400-4499.
    pub fn stock_client_reconnects(code: u16) -> bool {
        !(4400..4500).contains(&code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_4400_to_4499_are_permanent_for_stock_clients() {
        assert!(Close::new(code::GOING_AWAY, "").stock_client_reconnects());
        assert!(Close::new(code::SLOW_READER, "").stock_client_reconnects());
        assert!(Close::new(code::DOCUMENT_TOO_LARGE, "").stock_client_reconnects());
        assert!(Close::new(code::STORAGE_UNAVAILABLE, "").stock_client_reconnects());
        assert!(!Close::new(code::UNAUTHORIZED, "").stock_client_reconnects());
        assert!(!Close::new(code::BAD_REQUEST, "").stock_client_reconnects());
    }
}
