//! Error types of the engine. Hot-path errors are plain enum variants, cheap to create.

use thiserror::Error;

/// Why untrusted bytes were refused before reaching yrs.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The input ended in the middle of a value.
    #[error("unexpected end of input")]
    UnexpectedEnd,
    /// A variable-length integer does not fit in 64 bits (or 32 where 32 are expected).
    #[error("variable-length integer overflows")]
    VarIntOverflow,
    /// A declared length or count exceeds the bytes that follow it.
    #[error("declared length {declared} exceeds the {remaining} bytes remaining")]
    LengthTooLarge {
        /// The length the input declared.
        declared: u64,
        /// Bytes actually left.
        remaining: usize,
    },
    /// A string is not valid UTF-8.
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    /// A client id above 2^53 - 1, which Yjs clients cannot represent.
    #[error("client id {0} is above 2^53 - 1")]
    ClientIdTooLarge(u64),
    /// A block's clock range overflows 32 bits.
    #[error("clock range overflows")]
    ClockOverflow,
    /// A structural rule of the Yjs encoding is broken.
    #[error("malformed update: {0}")]
    Malformed(&'static str),
    /// Bytes remain after the value was complete.
    #[error("{0} trailing bytes")]
    TrailingBytes(usize),
    /// An unknown shared type reference.
    #[error("unknown type reference {0}")]
    UnknownTypeRef(u8),
    /// A shared type yrs does not decode the way Yjs encodes it (an `XmlHook`: yrs skips its
    /// hook name and misreads every byte after it), so it is refused.
    #[error("unsupported type reference {0}")]
    UnsupportedTypeRef(u8),
    /// An unknown lib0 `Any` tag.
    #[error("unknown value tag {0}")]
    UnknownAnyTag(u8),
    /// An item content kind tandem does not accept.
    #[error("unsupported item content {0}")]
    UnsupportedContent(u8),
    /// Values nested deeper than the engine accepts.
    #[error("values nested too deeply")]
    TooDeep,
    /// Text that should be JSON is not.
    #[error("invalid JSON")]
    InvalidJson,
}

/// Errors of document operations.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DocumentError {
    /// The bytes are not a valid Yjs update or state vector.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// yrs refused to integrate a structurally valid update.
    #[error("update could not be applied: {0}")]
    Apply(String),
    /// A field name is empty, too long or reserved.
    #[error("invalid field name {0:?}")]
    InvalidFieldName(String),
    /// A text offset or range lies outside the field's current text.
    #[error("range {index}..{end} is outside a text of length {len}")]
    OutOfRange {
        /// Start offset, UTF-16 units.
        index: u32,
        /// End offset, UTF-16 units.
        end: u64,
        /// Current length, UTF-16 units.
        len: u32,
    },
    /// Another transaction on the document is open.
    #[error("document is busy")]
    Busy,
    /// The update carries, or waits for, ids of this replica's own client beyond what it has
    /// made: another replica uses the same client id.
    #[error("the update waits for edits of client {0}, this replica's own, that it has not made")]
    OwnClientId(u64),
}

/// Errors of the sans-IO protocol state machine. The connection that caused one should be
/// closed with its [`ProtocolError::close_reason`]; the room stays valid for everyone else.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtocolError {
    /// A message could not be decoded.
    #[error("malformed message: {0}")]
    Decode(#[from] DecodeError),
    /// An update was refused by the document.
    #[error(transparent)]
    Document(DocumentError),
    /// An unknown top-level message type.
    #[error("unknown message type {0}")]
    UnknownMessage(u64),
    /// An unknown sync sub-message type.
    #[error("unknown sync message type {0}")]
    UnknownSyncMessage(u64),
    /// An unknown tandem extension message type.
    #[error("unknown tandem message type {0}")]
    UnknownTandemMessage(u64),
    /// The frame is larger than the room accepts.
    #[error("frame of {size} bytes exceeds the limit of {limit}")]
    FrameTooLarge {
        /// Frame size in bytes.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The connection id is not in the room.
    #[error("unknown connection")]
    UnknownConnection,
    /// An awareness entry names a client id another connection, or another node serving the
    /// document, owns.
    #[error("awareness for client {0} owned by another connection")]
    AwarenessNotOwned(u64),
    /// An awareness state is not JSON.
    #[error("awareness state is not JSON")]
    AwarenessNotJson,
    /// A connection claims more awareness client ids than allowed.
    #[error("too many awareness client ids on one connection")]
    TooManyClientIds,
    /// An update written outside any connection ([`Room::apply_update`]) was refused whole:
    /// its part waiting for missing dependencies would take them to this many bytes, above
    /// the room's bound. (Connections are resynced instead, see [`Room::handle`].)
    ///
    /// [`Room::apply_update`]: crate::protocol::Room::apply_update
    /// [`Room::handle`]: crate::protocol::Room::handle
    #[error("too many bytes would wait for missing dependencies ({0})")]
    TooManyPending(usize),
    /// The write would take the document's estimated stored size above the room's limit (the
    /// limit, bytes); nothing of it was applied.
    #[error("document would exceed its size limit of {0} bytes")]
    DocumentTooLarge(u64),
}

impl ProtocolError {
    /// WebSocket close code for this error: 1009 (message too big) for a frame, 4507 when
    /// the document reached its size limit, 4400 for everything else a client sent wrong.
    /// Stock y-websocket clients never reconnect after a code in 4400–4499; 4507 lies outside,
    /// so they come back (a compaction may have made room meanwhile). The limits an honest
    /// client can reach otherwise (awareness size, updates waiting) close nothing; and
    /// [`ProtocolError::TooManyPending`] only answers writes made outside any connection.
    pub fn close_code(&self) -> u16 {
        match self {
            ProtocolError::FrameTooLarge { .. } => 1009,
            ProtocolError::DocumentTooLarge(_) => 4507,
            _ => 4400,
        }
    }

    /// Short close reason (WebSocket close reasons are limited to 123 bytes).
    pub fn close_reason(&self) -> String {
        let mut s = self.to_string();
        if s.len() > 120 {
            let mut cut = 120;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
        }
        s
    }
}

impl From<DocumentError> for ProtocolError {
    fn from(e: DocumentError) -> Self {
        match e {
            DocumentError::Decode(d) => ProtocolError::Decode(d),
            other => ProtocolError::Document(other),
        }
    }
}
