//! Client frames for the room, and a strict parser for the frames the room sends.

use tandem_engine::error::DecodeError;
use tandem_engine::guard;
use tandem_engine::protocol::{
    MSG_AUTH, MSG_AWARENESS, MSG_QUERY_AWARENESS, MSG_SYNC, MSG_TANDEM, SYNC_STEP1, SYNC_STEP2,
    SYNC_UPDATE, TANDEM_ACK, TANDEM_FIELD_RESULT, TANDEM_NOTICE, TANDEM_SET_FIELD,
    TANDEM_STATELESS,
};
use tandem_engine::wire::{Reader, Writer};

/// One awareness entry as it travels: client id, clock, JSON state (`"null"` = removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwarenessEntry {
    /// The client id.
    pub client: u64,
    /// The entry's clock.
    pub clock: u32,
    /// The state, JSON text.
    pub json: String,
}

/// A message the room sent, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage {
    /// Sync step 1 with the room's state vector.
    Step1(Vec<u8>),
    /// Sync step 2 (an update).
    Step2(Vec<u8>),
    /// An incremental update.
    Update(Vec<u8>),
    /// An awareness update.
    Awareness(Vec<AwarenessEntry>),
    /// Permission denied, with its reason.
    Denied(String),
    /// A tandem durability ack.
    Ack {
        /// Updates acknowledged.
        count: u64,
        /// Sid of the last of them.
        sid: u64,
    },
    /// A tandem register write result.
    FieldResult {
        /// The request id it answers.
        request: u64,
        /// Whether the write happened.
        accepted: bool,
        /// The register's version after the request ("" when unset).
        version: String,
        /// The register's value after the request.
        value: serde_json::Value,
    },
    /// A tandem notice: something set aside without closing the connection.
    Notice {
        /// Which (`NOTICE_*`).
        code: u64,
        /// Why.
        reason: String,
    },
    /// A tandem stateless message relayed from another connection.
    Stateless(String),
}

/// Why a frame from the room is not one well-formed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadFrame {
    /// The bytes do not decode.
    Decode(DecodeError),
    /// A message type a stock client does not know.
    UnknownType(u64),
    /// More than one message, or bytes after it.
    Trailing(usize),
}

impl From<DecodeError> for BadFrame {
    fn from(e: DecodeError) -> Self {
        BadFrame::Decode(e)
    }
}

/// Parses a frame the room sent: exactly one message, with a payload that validates.
pub fn parse_server_frame(frame: &[u8]) -> Result<ServerMessage, BadFrame> {
    let mut r = Reader::new(frame);
    let msg = match r.var_u64()? {
        MSG_SYNC => {
            let kind = r.var_u64()?;
            let payload = r.var_bytes()?;
            match kind {
                SYNC_STEP1 => {
                    guard::check_state_vector(payload)?;
                    ServerMessage::Step1(payload.to_vec())
                }
                SYNC_STEP2 => {
                    guard::check_update_v1(payload)?;
                    ServerMessage::Step2(payload.to_vec())
                }
                SYNC_UPDATE => {
                    guard::check_update_v1(payload)?;
                    ServerMessage::Update(payload.to_vec())
                }
                other => return Err(BadFrame::UnknownType(other)),
            }
        }
        MSG_AWARENESS => {
            let payload = r.var_bytes()?;
            ServerMessage::Awareness(parse_awareness(payload)?)
        }
        MSG_AUTH => {
            let kind = r.var_u64()?;
            if kind != 0 {
                return Err(BadFrame::UnknownType(kind));
            }
            ServerMessage::Denied(r.var_str()?.to_owned())
        }
        MSG_TANDEM => match r.var_u64()? {
            TANDEM_ACK => ServerMessage::Ack {
                count: r.var_u64()?,
                sid: r.var_u64()?,
            },
            TANDEM_FIELD_RESULT => {
                let request = r.var_u64()?;
                let accepted = match r.var_u64()? {
                    0 => false,
                    1 => true,
                    other => return Err(BadFrame::UnknownType(other)),
                };
                let version = r.var_str()?.to_owned();
                let value = serde_json::from_str(r.var_str()?)
                    .map_err(|_| BadFrame::Decode(DecodeError::InvalidJson))?;
                ServerMessage::FieldResult {
                    request,
                    accepted,
                    version,
                    value,
                }
            }
            TANDEM_NOTICE => ServerMessage::Notice {
                code: r.var_u64()?,
                reason: r.var_str()?.to_owned(),
            },
            TANDEM_STATELESS => ServerMessage::Stateless(r.var_str()?.to_owned()),
            other => return Err(BadFrame::UnknownType(other)),
        },
        other => return Err(BadFrame::UnknownType(other)),
    };
    if !r.is_empty() {
        return Err(BadFrame::Trailing(r.remaining()));
    }
    Ok(msg)
}

/// Decodes an awareness update payload; every state must be JSON.
pub fn parse_awareness(payload: &[u8]) -> Result<Vec<AwarenessEntry>, DecodeError> {
    let mut r = Reader::new(payload);
    let n = r.len_prefix(3)?;
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        let client = r.client_id()?;
        let clock = r.var_u32()?;
        let json = r.var_str()?;
        serde_json::from_str::<serde_json::Value>(json).map_err(|_| DecodeError::InvalidJson)?;
        entries.push(AwarenessEntry {
            client,
            clock,
            json: json.to_owned(),
        });
    }
    if !r.is_empty() {
        return Err(DecodeError::TrailingBytes(r.remaining()));
    }
    Ok(entries)
}

/// Appends a sync message (`kind` = step1/step2/update) to `w`.
pub fn sync_msg(w: &mut Writer, kind: u64, payload: &[u8]) {
    w.var_u64(MSG_SYNC).var_u64(kind).var_bytes(payload);
}

/// Appends an awareness message to `w`.
pub fn awareness_msg(w: &mut Writer, entries: &[AwarenessEntry]) {
    let mut inner = Writer::new();
    inner.var_u64(entries.len() as u64);
    for e in entries {
        inner
            .var_u64(e.client)
            .var_u64(u64::from(e.clock))
            .var_str(&e.json);
    }
    w.var_u64(MSG_AWARENESS).var_bytes(&inner.finish());
}

/// Appends a query-awareness message to `w`.
pub fn query_awareness_msg(w: &mut Writer) {
    w.var_u64(MSG_QUERY_AWARENESS);
}

/// Appends an auth message to `w`.
pub fn auth_msg(w: &mut Writer, kind: u64, reason: &str) {
    w.var_u64(MSG_AUTH).var_u64(kind).var_str(reason);
}

/// Appends a tandem set-field request to `w`.
pub fn set_field_msg(
    w: &mut Writer,
    request: u64,
    flags: u64,
    name: &str,
    expected: &str,
    value_json: &str,
) {
    w.var_u64(MSG_TANDEM)
        .var_u64(TANDEM_SET_FIELD)
        .var_u64(request)
        .var_u64(flags)
        .var_str(name)
        .var_str(expected)
        .var_str(value_json);
}

/// Appends a tandem stateless message to `w`.
pub fn stateless_msg(w: &mut Writer, payload: &str) {
    w.var_u64(MSG_TANDEM)
        .var_u64(TANDEM_STATELESS)
        .var_str(payload);
}
