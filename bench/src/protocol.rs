//! The y-websocket protocol as the simulated clients speak it, in both dialects: the stock one
//! (one document per socket, named by the URL) and Hocuspocus's (every message prefixed by
//! varString(documentName)).
//!
//! Message types: 0 sync (sub-types 0 step1, 1 step2, 2 update), 1 awareness, 2 auth; the
//! Hocuspocus dialect adds 3 query-awareness, 4 sync-reply, 5 stateless, 6 broadcast-stateless,
//! 7 close and 8 sync-status.

use crate::lib0::{write_var_bytes, write_var_str, write_var_u64, Cursor, DecodeError};

/// Top-level message type: sync.
pub const MSG_SYNC: u64 = 0;
/// Top-level message type: awareness.
pub const MSG_AWARENESS: u64 = 1;
/// Top-level message type: auth.
pub const MSG_AUTH: u64 = 2;
const MSG_QUERY_AWARENESS: u64 = 3;
const MSG_SYNC_REPLY: u64 = 4;
const MSG_STATELESS: u64 = 5;
const MSG_BROADCAST_STATELESS: u64 = 6;
const MSG_CLOSE: u64 = 7;
const MSG_SYNC_STATUS: u64 = 8;
/// tandem's extension messages (`?tandem=1`): sub-type 0 ack, 3 notice, ...
const MSG_TANDEM: u64 = 100;
const TANDEM_ACK: u64 = 0;
const TANDEM_NOTICE: u64 = 3;

/// Sync sub-type: step1 (a state vector).
pub const SYNC_STEP1: u64 = 0;
/// Sync sub-type: step2 (an update answering a step1).
pub const SYNC_STEP2: u64 = 1;
/// Sync sub-type: update.
pub const SYNC_UPDATE: u64 = 2;

/// How messages are framed on one socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dialect {
    /// The stock y-websocket protocol: the URL names the document, messages carry no name.
    Stock,
    /// Hocuspocus: every message starts with varString(document name); before anything else
    /// the client sends Auth(Token).
    Hocuspocus {
        /// The document this socket talks about.
        doc: String,
    },
}

/// One message received from a server, borrowing the frame it came in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// Sync step1 carrying the server's state vector.
    Step1(&'a [u8]),
    /// Sync step2 carrying an update (the answer to our step1).
    Step2(&'a [u8]),
    /// A document update broadcast by the server.
    Update(&'a [u8]),
    /// An awareness update (y-protocols encoding).
    Awareness(&'a [u8]),
    /// Auth: permission denied, with the reason.
    Denied(&'a str),
    /// Auth: authenticated (Hocuspocus), with the scope.
    Authenticated(&'a str),
    /// tandem's durability ack (`?tandem=1`): the first `count` updates this connection sent
    /// are stored, the last of them at sequence number `sid`.
    Ack {
        /// Updates of this connection stored so far.
        count: u64,
        /// The document's sid of the last of them.
        sid: u64,
    },
    /// Hocuspocus's SyncStatus after each update it applied (`true`) or refused (`false`).
    SyncStatus(bool),
    /// Anything this client ignores (stateless, query-awareness, tandem notices, ...).
    Other(u64),
}

impl Dialect {
    fn start(&self, cap: usize) -> Vec<u8> {
        match self {
            Dialect::Stock => Vec::with_capacity(cap + 4),
            Dialect::Hocuspocus { doc } => {
                let mut out = Vec::with_capacity(cap + doc.len() + 5);
                write_var_str(&mut out, doc);
                out
            }
        }
    }

    /// A sync message of the given sub-type carrying `payload`.
    pub fn sync(&self, sub: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = self.start(payload.len() + 8);
        write_var_u64(&mut out, MSG_SYNC);
        write_var_u64(&mut out, sub);
        write_var_bytes(&mut out, payload);
        out
    }

    /// Sync step1 with the given encoded state vector.
    pub fn step1(&self, state_vector: &[u8]) -> Vec<u8> {
        self.sync(SYNC_STEP1, state_vector)
    }

    /// A sync update message.
    pub fn update(&self, update: &[u8]) -> Vec<u8> {
        self.sync(SYNC_UPDATE, update)
    }

    /// An awareness message wrapping an encoded awareness update.
    pub fn awareness(&self, awareness_update: &[u8]) -> Vec<u8> {
        let mut out = self.start(awareness_update.len() + 6);
        write_var_u64(&mut out, MSG_AWARENESS);
        write_var_bytes(&mut out, awareness_update);
        out
    }

    /// The Hocuspocus Auth(Token) message; `None` for the stock dialect, which has no
    /// client-sent auth message.
    pub fn auth_token(&self, token: &str) -> Option<Vec<u8>> {
        match self {
            Dialect::Stock => None,
            Dialect::Hocuspocus { .. } => {
                let mut out = self.start(token.len() + 4);
                write_var_u64(&mut out, MSG_AUTH);
                write_var_u64(&mut out, 0);
                write_var_str(&mut out, token);
                Some(out)
            }
        }
    }

    /// Calls `f` on every message in a received frame (a frame may hold several messages).
    /// Stops at the first message it cannot delimit (an unknown type) after reporting it as
    /// [`Incoming::Other`].
    pub fn for_each<'a>(
        &self,
        frame: &'a [u8],
        mut f: impl FnMut(Incoming<'a>),
    ) -> Result<(), DecodeError> {
        let mut c = Cursor::new(frame);
        while !c.is_empty() {
            if let Dialect::Hocuspocus { .. } = self {
                c.var_str()?;
            }
            let ty = c.var_u64()?;
            let msg = match ty {
                MSG_SYNC | MSG_SYNC_REPLY => {
                    let sub = c.var_u64()?;
                    let payload = c.var_bytes()?;
                    match sub {
                        SYNC_STEP1 => Incoming::Step1(payload),
                        SYNC_STEP2 => Incoming::Step2(payload),
                        SYNC_UPDATE => Incoming::Update(payload),
                        _ => {
                            f(Incoming::Other(ty));
                            return Ok(());
                        }
                    }
                }
                MSG_AWARENESS => Incoming::Awareness(c.var_bytes()?),
                MSG_AUTH => match c.var_u64()? {
                    1 => Incoming::Denied(c.var_str()?),
                    2 => Incoming::Authenticated(c.var_str()?),
                    _ => Incoming::Denied(c.var_str()?),
                },
                MSG_QUERY_AWARENESS => Incoming::Other(ty),
                MSG_STATELESS | MSG_BROADCAST_STATELESS | MSG_CLOSE => {
                    c.var_str()?;
                    Incoming::Other(ty)
                }
                MSG_SYNC_STATUS => Incoming::SyncStatus(c.var_u64()? == 1),
                MSG_TANDEM => match c.var_u64()? {
                    TANDEM_ACK => Incoming::Ack {
                        count: c.var_u64()?,
                        sid: c.var_u64()?,
                    },
                    TANDEM_NOTICE => {
                        c.var_u64()?;
                        c.var_str()?;
                        Incoming::Other(ty)
                    }
                    _ => {
                        // Sub-types this client never asks for: the rest of the frame cannot
                        // be delimited.
                        f(Incoming::Other(ty));
                        return Ok(());
                    }
                },
                _ => {
                    f(Incoming::Other(ty));
                    return Ok(());
                }
            };
            f(msg);
            if let Dialect::Hocuspocus { .. } = self {
                // Hocuspocus sends one message per frame.
                break;
            }
        }
        Ok(())
    }
}

/// Encodes a y-protocols awareness update holding one client's state.
pub fn awareness_update(client_id: u64, clock: u32, state_json: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(state_json.len() + 16);
    write_var_u64(&mut out, 1);
    write_var_u64(&mut out, client_id);
    write_var_u64(&mut out, u64::from(clock));
    write_var_str(&mut out, state_json);
    out
}

/// Calls `f(client_id, clock, is_removal)` for every entry of an awareness update.
pub fn awareness_entries(
    update: &[u8],
    mut f: impl FnMut(u64, u32, bool),
) -> Result<(), DecodeError> {
    let mut c = Cursor::new(update);
    let n = c.var_u64()?;
    for _ in 0..n {
        let client = c.var_u64()?;
        let clock = c.var_u32()?;
        let state = c.var_str()?;
        f(client, clock, state == "null");
    }
    Ok(())
}

/// The encoded empty state vector (a client that holds nothing).
pub const EMPTY_STATE_VECTOR: &[u8] = &[0];

#[cfg(test)]
mod tests {
    use super::*;

    fn collect<'a>(d: &Dialect, frame: &'a [u8]) -> Vec<Incoming<'a>> {
        let mut out = Vec::new();
        d.for_each(frame, |m| out.push(m)).expect("decodes");
        out
    }

    #[test]
    fn stock_frames_may_hold_several_messages() {
        let d = Dialect::Stock;
        let mut frame = d.step1(EMPTY_STATE_VECTOR);
        frame.extend(d.sync(SYNC_STEP2, &[0, 0]));
        frame.extend(d.awareness(&awareness_update(7, 3, "{}")));
        frame.extend(d.update(&[1, 2, 3]));
        assert_eq!(
            collect(&d, &frame),
            vec![
                Incoming::Step1(&[0]),
                Incoming::Step2(&[0, 0]),
                Incoming::Awareness(&[1, 7, 3, 2, b'{', b'}']),
                Incoming::Update(&[1, 2, 3]),
            ]
        );
    }

    #[test]
    fn hocuspocus_messages_carry_the_document_name() {
        let d = Dialect::Hocuspocus { doc: "w1".into() };
        let auth = d.auth_token("any").expect("hocuspocus has auth");
        assert_eq!(auth, [2, b'w', b'1', 2, 0, 3, b'a', b'n', b'y']);
        assert_eq!(d.step1(EMPTY_STATE_VECTOR), [2, b'w', b'1', 0, 0, 1, 0]);
        // Authenticated("read-write") as the server sends it.
        let mut frame = vec![2, b'w', b'1', 2, 2];
        write_var_str(&mut frame, "read-write");
        assert_eq!(
            collect(&d, &frame),
            vec![Incoming::Authenticated("read-write")]
        );
        // A sync-reply carrying step1 is a step1.
        let frame = [2, b'w', b'1', 4, 0, 1, 0];
        assert_eq!(collect(&d, &frame), vec![Incoming::Step1(&[0])]);
        assert!(Dialect::Stock.auth_token("x").is_none());
    }

    #[test]
    fn acks_and_sync_status_decode() {
        // tandem: ack(count 3, sid 41), then an update in the same frame.
        let d = Dialect::Stock;
        let mut frame = vec![100, 0, 3, 41];
        frame.extend(d.update(&[9]));
        assert_eq!(
            collect(&d, &frame),
            vec![Incoming::Ack { count: 3, sid: 41 }, Incoming::Update(&[9])]
        );
        // Hocuspocus: SyncStatus(true).
        let h = Dialect::Hocuspocus { doc: "w1".into() };
        let frame = [2, b'w', b'1', 8, 1];
        assert_eq!(collect(&h, &frame), vec![Incoming::SyncStatus(true)]);
    }

    #[test]
    fn awareness_entries_decode() {
        let mut u = awareness_update(42, 9, "{\"a\":1}");
        let mut seen = Vec::new();
        awareness_entries(&u, |c, k, r| seen.push((c, k, r))).expect("decodes");
        assert_eq!(seen, vec![(42, 9, false)]);
        u = awareness_update(42, 10, "null");
        seen.clear();
        awareness_entries(&u, |c, k, r| seen.push((c, k, r))).expect("decodes");
        assert_eq!(seen, vec![(42, 10, true)]);
    }
}
