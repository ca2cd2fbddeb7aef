//! The client side of the wire protocol: encoding the frames a browser sends and decoding the
//! frames a tandem server (or any y-websocket server) sends back.
//!
//! Message types and tandem's extension messages are those of `tandem_engine::protocol` (see
//! its module docs). Decoding is bounded: every length is checked against the bytes present.

use crate::error::BindingError;
use js_sys::{Array, Object, Reflect, Uint8Array};
use tandem_engine::protocol::{
    MSG_AUTH, MSG_AWARENESS, MSG_QUERY_AWARENESS, MSG_SYNC, MSG_TANDEM, SYNC_STEP1, SYNC_STEP2,
    SYNC_UPDATE, TANDEM_ACK, TANDEM_FIELD_RESULT, TANDEM_NOTICE, TANDEM_SET_FIELD,
};
use tandem_engine::wire::{Reader, Writer};
use tandem_engine::DecodeError;
use wasm_bindgen::prelude::*;

/// One decoded server message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Sync step 1: the server's state vector; answer with step 2.
    SyncStep1(Vec<u8>),
    /// Sync step 2: the updates this client was missing.
    SyncStep2(Vec<u8>),
    /// An incremental update.
    Update(Vec<u8>),
    /// An awareness payload.
    Awareness(Vec<u8>),
    /// The server refused something (`reason`).
    PermissionDenied(String),
    /// The server asks for this client's awareness state.
    QueryAwareness,
    /// The first `count` updates this connection sent are durable, the last at `sid`.
    Ack {
        /// Updates acknowledged so far on this connection.
        count: u64,
        /// Sequence number of the last of them.
        sid: u64,
    },
    /// The answer to a register write request.
    FieldResult {
        /// The request id the client chose.
        request: u64,
        /// Whether the write happened.
        accepted: bool,
        /// The register's version after the request (`""` when unset).
        version: String,
        /// The register's current value as JSON (`"null"` when unset).
        value: String,
    },
    /// The server set aside something this connection sent, without closing it (`code`: one
    /// of the engine's `NOTICE_*` constants, or a newer one to ignore).
    Notice {
        /// What happened.
        code: u64,
        /// Why, for people.
        reason: String,
    },
}

/// Decodes every message in a frame.
pub fn decode(frame: &[u8]) -> Result<Vec<Message>, DecodeError> {
    let mut r = Reader::new(frame);
    let mut out = Vec::new();
    while !r.is_empty() {
        let message = match r.var_u64()? {
            MSG_SYNC => {
                let kind = r.var_u64()?;
                let payload = r.var_bytes()?.to_vec();
                match kind {
                    SYNC_STEP1 => Message::SyncStep1(payload),
                    SYNC_STEP2 => Message::SyncStep2(payload),
                    SYNC_UPDATE => Message::Update(payload),
                    _ => return Err(DecodeError::Malformed("unknown sync message")),
                }
            }
            MSG_AWARENESS => Message::Awareness(r.var_bytes()?.to_vec()),
            MSG_AUTH => {
                r.var_u64()?;
                Message::PermissionDenied(r.var_str()?.to_owned())
            }
            MSG_QUERY_AWARENESS => Message::QueryAwareness,
            MSG_TANDEM => match r.var_u64()? {
                TANDEM_ACK => Message::Ack {
                    count: r.var_u64()?,
                    sid: r.var_u64()?,
                },
                TANDEM_FIELD_RESULT => Message::FieldResult {
                    request: r.var_u64()?,
                    accepted: r.var_u64()? != 0,
                    version: r.var_str()?.to_owned(),
                    value: r.var_str()?.to_owned(),
                },
                TANDEM_NOTICE => Message::Notice {
                    code: r.var_u64()?,
                    reason: r.var_str()?.to_owned(),
                },
                _ => return Err(DecodeError::Malformed("unknown tandem message")),
            },
            _ => return Err(DecodeError::Malformed("unknown message type")),
        };
        out.push(message);
    }
    Ok(out)
}

/// Encodes a register write request. `value_json` is ignored when `delete` is set; with
/// `expected` the server only writes when the register's version equals it (`""`: unset).
pub fn set_field(
    request: u64,
    name: &str,
    value_json: &str,
    expected: Option<&str>,
    delete: bool,
) -> Vec<u8> {
    let flags = u64::from(expected.is_some()) | (u64::from(delete) << 1);
    let mut w = Writer::new();
    w.var_u64(MSG_TANDEM)
        .var_u64(TANDEM_SET_FIELD)
        .var_u64(request)
        .var_u64(flags)
        .var_str(name)
        .var_str(expected.unwrap_or(""))
        .var_str(if delete { "null" } else { value_json });
    w.finish()
}

fn sync(kind: u64, payload: &[u8]) -> Vec<u8> {
    let mut w = Writer::with_capacity(payload.len() + 8);
    w.var_u64(MSG_SYNC).var_u64(kind).var_bytes(payload);
    w.finish()
}

/// Sync step 1 frame carrying this replica's state vector.
#[wasm_bindgen(js_name = syncStep1Frame)]
pub fn sync_step1_frame(state_vector: &[u8]) -> Vec<u8> {
    sync(SYNC_STEP1, state_vector)
}

/// Sync step 2 frame carrying what the peer is missing.
#[wasm_bindgen(js_name = syncStep2Frame)]
pub fn sync_step2_frame(update: &[u8]) -> Vec<u8> {
    sync(SYNC_STEP2, update)
}

/// Update frame carrying one local update.
#[wasm_bindgen(js_name = updateFrame)]
pub fn update_frame(update: &[u8]) -> Vec<u8> {
    sync(SYNC_UPDATE, update)
}

/// Awareness frame carrying an awareness payload.
#[wasm_bindgen(js_name = awarenessFrame)]
pub fn awareness_frame(payload: &[u8]) -> Vec<u8> {
    let mut w = Writer::with_capacity(payload.len() + 6);
    w.var_u64(MSG_AWARENESS).var_bytes(payload);
    w.finish()
}

/// Frame asking the server for every awareness state.
#[wasm_bindgen(js_name = queryAwarenessFrame)]
pub fn query_awareness_frame() -> Vec<u8> {
    let mut w = Writer::new();
    w.var_u64(MSG_QUERY_AWARENESS);
    w.finish()
}

/// Register write request frame (tandem extension). `valueJson` is the value as JSON text;
/// `expected` makes the write conditional on the register's current version.
#[wasm_bindgen(js_name = setFieldFrame)]
pub fn set_field_frame(
    request: f64,
    name: &str,
    value_json: &str,
    expected: Option<String>,
    delete: bool,
) -> Vec<u8> {
    set_field(
        crate::convert::millis(request),
        name,
        value_json,
        expected.as_deref(),
        delete,
    )
}

fn object(kind: &str, props: &[(&str, JsValue)]) -> JsValue {
    let o = Object::new();
    // Setting properties on a fresh plain object cannot fail.
    let _ = Reflect::set(&o, &"type".into(), &kind.into());
    for (k, v) in props {
        let _ = Reflect::set(&o, &(*k).into(), v);
    }
    o.into()
}

fn bytes(b: &[u8]) -> JsValue {
    Uint8Array::from(b).into()
}

/// Decodes a server frame into an array of messages, each `{type, ...}` with `type` one of
/// `sync-step1`, `sync-step2`, `update`, `awareness` (`payload: Uint8Array`),
/// `permission-denied` (`reason`), `query-awareness`, `ack` (`count`, `sid`),
/// `field-result` (`request`, `accepted`, `version`, `value` as JSON text) and `notice`
/// (`code`, `reason`).
#[wasm_bindgen(js_name = decodeFrame)]
pub fn decode_frame(frame: &[u8]) -> Result<Array, BindingError> {
    let messages = decode(frame)?;
    let out = Array::new();
    for m in messages {
        let v = match m {
            Message::SyncStep1(p) => object("sync-step1", &[("payload", bytes(&p))]),
            Message::SyncStep2(p) => object("sync-step2", &[("payload", bytes(&p))]),
            Message::Update(p) => object("update", &[("payload", bytes(&p))]),
            Message::Awareness(p) => object("awareness", &[("payload", bytes(&p))]),
            Message::PermissionDenied(reason) => {
                object("permission-denied", &[("reason", reason.into())])
            }
            Message::QueryAwareness => object("query-awareness", &[]),
            Message::Ack { count, sid } => object(
                "ack",
                &[
                    ("count", (count as f64).into()),
                    ("sid", (sid as f64).into()),
                ],
            ),
            Message::FieldResult {
                request,
                accepted,
                version,
                value,
            } => object(
                "field-result",
                &[
                    ("request", (request as f64).into()),
                    ("accepted", accepted.into()),
                    ("version", version.into()),
                    ("value", value.into()),
                ],
            ),
            Message::Notice { code, reason } => object(
                "notice",
                &[("code", (code as f64).into()), ("reason", reason.into())],
            ),
        };
        out.push(&v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_engine::protocol::{
        ack_frame, field_result_frame, notice_frame, FieldWrite, NOTICE_AWARENESS_TOO_LARGE,
    };

    #[test]
    fn decodes_what_the_server_encodes() {
        let mut frame = ack_frame(3, 17).to_vec();
        frame.extend_from_slice(&field_result_frame(9, &FieldWrite::Rejected(None)));
        frame.extend_from_slice(&sync_step1_frame(&[0]));
        frame.extend_from_slice(&notice_frame(NOTICE_AWARENESS_TOO_LARGE, "too large"));
        assert_eq!(
            decode(&frame).unwrap(),
            vec![
                Message::Ack { count: 3, sid: 17 },
                Message::FieldResult {
                    request: 9,
                    accepted: false,
                    version: String::new(),
                    value: "null".into()
                },
                Message::SyncStep1(vec![0]),
                Message::Notice {
                    code: NOTICE_AWARENESS_TOO_LARGE,
                    reason: "too large".into()
                },
            ]
        );
        assert!(decode(&[0, 0, 200]).is_err());
    }

    #[test]
    fn set_field_request_layout() {
        let f = set_field(7, "status", "\"done\"", Some("1-0-5"), false);
        let mut r = Reader::new(&f);
        let fields: Vec<u64> = (0..4).map(|_| r.var_u64().unwrap()).collect();
        assert_eq!(fields, vec![MSG_TANDEM, TANDEM_SET_FIELD, 7, 1]);
        assert_eq!(r.var_str().unwrap(), "status");
        assert_eq!(r.var_str().unwrap(), "1-0-5");
        assert_eq!(r.var_str().unwrap(), "\"done\"");
    }
}
