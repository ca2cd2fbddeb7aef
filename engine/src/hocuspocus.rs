//! The Hocuspocus dialect of the Yjs protocol, as a pure codec: frames from a client parsed
//! into (document name, message), and what a [`Room`](crate::protocol::Room) sends a
//! connection turned into this dialect. The transport joins each document named on a socket to
//! its room like any y-websocket connection; only this module knows the dialect.
//!
//! # Wire format
//!
//! Checked against `@hocuspocus/provider` and `@hocuspocus/server` 3.4.4 (and the 4.x
//! provider). Every frame is `varString(document name)` followed by one message, so one socket
//! carries several documents:
//!
//! | type | message | payload | sent by |
//! | --- | --- | --- | --- |
//! | 0 | Sync | a y-protocols sync message: `varUint(0 step 1, 1 step 2, 2 update)`, `varBytes` | both |
//! | 1 | Awareness | `varBytes(awareness update)` | both |
//! | 2 | Auth | client: `varUint(0)`, `varString(token)` (4.x adds `varString(version)`); server: `varUint(1)`, `varString(reason)` (permission denied) or `varUint(2)`, `varString("readonly" \| "read-write")` (authenticated) | both |
//! | 3 | QueryAwareness | — | both |
//! | 4 | SyncReply | as Sync (servers answering servers) | — |
//! | 5 | Stateless | `varString(payload)` | both |
//! | 6 | BroadcastStateless | `varString(payload)` | client |
//! | 7 | Close | client: —; server: `varString(reason)` | both |
//! | 8 | SyncStatus | `varUint(1 saved, 0 not applied)` | server |
//!
//! Provider 4.x also answers a bare `[9]` (a ping, no document name) with a bare `[10]`
//! (pong). The 3.x provider throws on any type it does not know (4, 6, 9, 10 among them), so
//! the server sends only 0, 1, 2, 5, 7 and 8.
//!
//! # Translation
//!
//! Sync (and SyncReply, rewritten as Sync), Awareness and QueryAwareness carry exactly the
//! y-websocket message of the same type after the name: [`Message::Room`] is that message, for
//! the room. The other direction, [`Outbound::translate`], prefixes the room's sync and
//! awareness messages with the name and turns tandem's extension messages into this dialect:
//! a durability ack counting `n` more updates becomes `n` SyncStatus(true) messages (the
//! provider decrements `unsyncedChanges` once per SyncStatus(true)), a refused update of a
//! read-only connection SyncStatus(false), a viewer's update that held nothing new
//! SyncStatus(true), a stateless message Stateless. Other notices have no counterpart and are
//! dropped.
//!
//! # Bounds
//!
//! Every length is checked against the bytes present ([`crate::wire`]); a message must end
//! where its frame ends. Nothing is allocated from a declared length, and only a SyncReply is
//! copied.

use std::borrow::Cow;

use crate::error::{DecodeError, ProtocolError};
use crate::protocol::{
    stateless_frame, MSG_AUTH, MSG_AWARENESS, MSG_QUERY_AWARENESS, MSG_SYNC, MSG_TANDEM,
    NOTICE_NOTHING_NEW, SYNC_UPDATE, TANDEM_ACK, TANDEM_FIELD_RESULT, TANDEM_NOTICE,
    TANDEM_STATELESS,
};
use crate::wire::{Reader, Writer};

/// Message type: sync (as y-websocket).
pub const SYNC: u64 = 0;
/// Message type: awareness (as y-websocket).
pub const AWARENESS: u64 = 1;
/// Message type: authentication.
pub const AUTH: u64 = 2;
/// Message type: query awareness (as y-websocket).
pub const QUERY_AWARENESS: u64 = 3;
/// Message type: a sync message that asks for no step 1 back (between servers).
pub const SYNC_REPLY: u64 = 4;
/// Message type: stateless.
pub const STATELESS: u64 = 5;
/// Message type: stateless, to broadcast to the document's other connections.
pub const BROADCAST_STATELESS: u64 = 6;
/// Message type: close this document (client), or it was closed (server).
pub const CLOSE: u64 = 7;
/// Message type: whether an update was applied (server).
pub const SYNC_STATUS: u64 = 8;
/// Message type: connection-level ping (server, provider 4.x; a bare `[9]`).
pub const PING: u64 = 9;
/// Message type: connection-level pong (client, provider 4.x; a bare `[10]`).
pub const PONG: u64 = 10;
/// Auth sub-type: the client's token.
pub const AUTH_TOKEN: u64 = 0;
/// Auth sub-type: permission denied, with a reason.
pub const AUTH_PERMISSION_DENIED: u64 = 1;
/// Auth sub-type: authenticated, with the scope.
pub const AUTH_AUTHENTICATED: u64 = 2;

/// What an authenticated connection may do with a document, as the provider's
/// `authorizedScope` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `"readonly"`: sync and awareness; updates are not applied.
    ReadOnly,
    /// `"read-write"`.
    ReadWrite,
}

impl Scope {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::ReadOnly => "readonly",
            Scope::ReadWrite => "read-write",
        }
    }
}

/// A frame from a client: a message about one document, or a connection-level pong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFrame<'a> {
    /// A message about the document `name`; parse `body` with [`Message::parse`]. Split from
    /// the name first so that an error in the body is charged to its document alone.
    Document {
        /// The document name, as sent (not checked as a tandem document name).
        name: &'a str,
        /// Everything after the name: one message.
        body: &'a [u8],
    },
    /// A bare `[10]`: the 4.x provider's answer to a ping.
    Pong,
}

impl<'a> ClientFrame<'a> {
    /// Splits a client frame into its document name and body.
    pub fn parse(frame: &'a [u8]) -> Result<Self, ProtocolError> {
        if frame == [PONG as u8] {
            return Ok(ClientFrame::Pong);
        }
        let mut r = Reader::new(frame);
        let name = r.var_str()?;
        let body = &frame[r.position()..];
        if body.is_empty() {
            return Err(DecodeError::UnexpectedEnd.into());
        }
        Ok(ClientFrame::Document { name, body })
    }
}

/// One message from a client about one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    /// Sync, Awareness or QueryAwareness: the y-websocket message of the same type, for the
    /// document's room. Borrowed from the frame; a SyncReply is rewritten as a Sync.
    Room(Cow<'a, [u8]>),
    /// Auth: the token to authorize this document with.
    Token(&'a str),
    /// Stateless: an application message with no receiver on a Hocuspocus server but its hooks.
    Stateless(&'a str),
    /// BroadcastStateless: an application message for the document's other connections.
    BroadcastStateless(&'a str),
    /// Close: the client is done with this document.
    Close,
}

impl<'a> Message<'a> {
    /// Parses the body of a [`ClientFrame::Document`]: exactly one message, nothing after it.
    pub fn parse(body: &'a [u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body);
        let message = match r.var_u64()? {
            kind @ (SYNC | SYNC_REPLY) => {
                let step = r.var_u64()?;
                if step > SYNC_UPDATE {
                    return Err(ProtocolError::UnknownSyncMessage(step));
                }
                r.var_bytes()?;
                Message::Room(if kind == SYNC {
                    Cow::Borrowed(body)
                } else {
                    // The type is one byte (4); the sync message that follows is kept as is.
                    let mut sync = Vec::with_capacity(body.len());
                    sync.push(SYNC as u8);
                    sync.extend_from_slice(&body[1..]);
                    Cow::Owned(sync)
                })
            }
            AWARENESS => {
                r.var_bytes()?;
                Message::Room(Cow::Borrowed(body))
            }
            QUERY_AWARENESS => Message::Room(Cow::Borrowed(body)),
            AUTH => {
                if r.var_u64()? != AUTH_TOKEN {
                    return Err(
                        DecodeError::Malformed("a client's auth message carries a token").into(),
                    );
                }
                let token = r.var_str()?;
                if !r.is_empty() {
                    // The 4.x provider sends its version after the token.
                    r.var_str()?;
                }
                Message::Token(token)
            }
            STATELESS => Message::Stateless(r.var_str()?),
            BROADCAST_STATELESS => Message::BroadcastStateless(r.var_str()?),
            CLOSE => Message::Close,
            other => return Err(ProtocolError::UnknownMessage(other)),
        };
        if !r.is_empty() {
            return Err(DecodeError::TrailingBytes(r.remaining()).into());
        }
        Ok(message)
    }
}

impl Message<'_> {
    /// What the document's room takes for this message: the y-websocket message itself, or,
    /// for Stateless and BroadcastStateless alike, tandem's stateless message, which the room
    /// relays to the document's other connections that receive them. (A Hocuspocus server
    /// hands a plain Stateless to its hooks; tandem runs none, so it relays it as the common
    /// hook does.) `None` for what the transport handles itself: Token and Close.
    pub fn room_frame(&self) -> Option<Cow<'_, [u8]>> {
        match self {
            Message::Room(m) => Some(Cow::Borrowed(m.as_ref())),
            Message::Stateless(p) | Message::BroadcastStateless(p) => {
                Some(Cow::Owned(stateless_frame(p).to_vec()))
            }
            Message::Token(_) | Message::Close => None,
        }
    }
}

/// A message the server writes itself (not translated from the room).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply<'a> {
    /// Auth: the document is authorized with this scope.
    Authenticated(Scope),
    /// Auth: the document is refused; the provider fires `onAuthenticationFailed` with it.
    PermissionDenied(&'a str),
    /// Whether an update was applied (and, here, is durable).
    SyncStatus(bool),
    /// A stateless message.
    Stateless(&'a str),
    /// The document is closed on this connection.
    Close(&'a str),
}

/// Encodes `reply` about the document `name` as one frame.
pub fn encode(name: &str, reply: Reply<'_>) -> Vec<u8> {
    let mut w = Writer::with_capacity(name.len() + 16);
    w.var_str(name);
    write_reply(&mut w, reply);
    w.finish()
}

fn write_reply(w: &mut Writer, reply: Reply<'_>) {
    match reply {
        Reply::Authenticated(scope) => w
            .var_u64(AUTH)
            .var_u64(AUTH_AUTHENTICATED)
            .var_str(scope.as_str()),
        Reply::PermissionDenied(reason) => w
            .var_u64(AUTH)
            .var_u64(AUTH_PERMISSION_DENIED)
            .var_str(reason),
        Reply::SyncStatus(applied) => w.var_u64(SYNC_STATUS).var_u64(u64::from(applied)),
        Reply::Stateless(payload) => w.var_u64(STATELESS).var_str(payload),
        Reply::Close(reason) => w.var_u64(CLOSE).var_str(reason),
    };
}

/// One document on one connection, seen from the server: encodes what goes to the client about
/// it, and remembers how many of its updates were acknowledged as durable.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// `varString(name)`, written before every message.
    prefix: Vec<u8>,
    /// Updates acknowledged so far (the count of the last durability ack).
    acked: u64,
}

impl Outbound {
    /// The document `name`, with nothing acknowledged yet (a fresh room connection).
    pub fn new(name: &str) -> Self {
        let mut w = Writer::with_capacity(name.len() + 2);
        w.var_str(name);
        Outbound {
            prefix: w.finish(),
            acked: 0,
        }
    }

    /// Encodes `reply` about this document.
    pub fn reply(&self, reply: Reply<'_>) -> Vec<u8> {
        let mut w = Writer::with_capacity(self.prefix.len() + 16);
        w.raw(&self.prefix);
        write_reply(&mut w, reply);
        w.finish()
    }

    fn forward(&self, message: &[u8]) -> Vec<u8> {
        let mut frame = Vec::with_capacity(self.prefix.len() + message.len());
        frame.extend_from_slice(&self.prefix);
        frame.extend_from_slice(message);
        frame
    }

    /// Translates a frame the room sent this connection (y-websocket messages and tandem's
    /// extensions, see [`crate::protocol`]) into frames of this dialect, one message each,
    /// appended to `out` (see the module docs for what becomes what). An error means the frame
    /// is not one a room writes; the frames before it are kept.
    pub fn translate(&mut self, frame: &[u8], out: &mut Vec<Vec<u8>>) -> Result<(), ProtocolError> {
        let mut r = Reader::new(frame);
        while !r.is_empty() {
            let start = r.position();
            match r.var_u64()? {
                MSG_SYNC => {
                    r.var_u64()?;
                    r.var_bytes()?;
                    out.push(self.forward(&frame[start..r.position()]));
                }
                MSG_AWARENESS => {
                    r.var_bytes()?;
                    out.push(self.forward(&frame[start..r.position()]));
                }
                MSG_QUERY_AWARENESS => out.push(self.forward(&frame[start..r.position()])),
                MSG_AUTH => {
                    // Permission denied: the room refuses a read-only connection's updates
                    // this way (this dialect writes no registers, the other refusal).
                    r.var_u64()?;
                    r.var_str()?;
                    out.push(self.reply(Reply::SyncStatus(false)));
                }
                MSG_TANDEM => self.tandem(&mut r, out)?,
                other => return Err(ProtocolError::UnknownMessage(other)),
            }
        }
        Ok(())
    }

    fn tandem(&mut self, r: &mut Reader<'_>, out: &mut Vec<Vec<u8>>) -> Result<(), ProtocolError> {
        match r.var_u64()? {
            TANDEM_ACK => {
                let count = r.var_u64()?;
                r.var_u64()?;
                // Acks repeat after a resync: only the updates acknowledged for the first time.
                let new = count.saturating_sub(self.acked);
                self.acked = self.acked.max(count);
                let saved = self.reply(Reply::SyncStatus(true));
                out.extend((0..new).map(|_| saved.clone()));
            }
            TANDEM_NOTICE => {
                let code = r.var_u64()?;
                r.var_str()?;
                if code == NOTICE_NOTHING_NEW {
                    out.push(self.reply(Reply::SyncStatus(true)));
                }
            }
            TANDEM_STATELESS => {
                let payload = r.var_str()?;
                out.push(self.reply(Reply::Stateless(payload)));
            }
            TANDEM_FIELD_RESULT => {
                r.var_u64()?;
                r.var_u64()?;
                r.var_str()?;
                r.var_str()?;
            }
            other => return Err(ProtocolError::UnknownTandemMessage(other)),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{
        ack_frame, awareness_frame, notice_frame, permission_denied_frame, stateless_frame,
        sync_frame, NOTICE_PENDING_FULL, SYNC_STEP1, SYNC_STEP2,
    };

    /// A client frame: `varString(name)`, then `body`.
    fn frame(name: &str, body: &[u8]) -> Vec<u8> {
        let mut w = Writer::new();
        w.var_str(name).raw(body);
        w.finish()
    }

    fn parse(frame: &[u8]) -> Result<(String, Message<'_>), ProtocolError> {
        match ClientFrame::parse(frame)? {
            ClientFrame::Document { name, body } => Ok((name.to_owned(), Message::parse(body)?)),
            ClientFrame::Pong => Ok((String::new(), Message::Close)),
        }
    }

    /// Bytes a stock 3.4.4 provider sends (lib0 encoders, as in its `OutgoingMessages/`).
    #[test]
    fn what_a_stock_provider_sends() {
        // Auth(Token) for "doc-1": name, 2, 0, token.
        let auth = [5, b'd', b'o', b'c', b'-', b'1', 2, 0, 3, b'a', b'.', b'b'];
        let (name, m) = parse(&auth).unwrap();
        assert_eq!((name.as_str(), m), ("doc-1", Message::Token("a.b")));
        // 4.x adds its version after the token.
        let mut v4 = auth.to_vec();
        v4.extend_from_slice(&[5, b'4', b'.', b'5', b'.', b'0']);
        assert_eq!(parse(&v4).unwrap().1, Message::Token("a.b"));
        // Sync step 1 with an empty state vector: exactly the y-websocket message.
        let step1 = frame("doc-1", &[0, 0, 1, 0]);
        assert_eq!(
            parse(&step1).unwrap().1,
            Message::Room(Cow::Borrowed(&[0, 0, 1, 0][..]))
        );
        let awareness = awareness_frame(&[]);
        let f = frame("doc-1", &awareness);
        let (_, m) = parse(&f).unwrap();
        assert_eq!(m, Message::Room(Cow::Borrowed(&awareness[..])));
        assert_eq!(
            parse(&frame("d", &[3])).unwrap().1,
            Message::Room(Cow::Borrowed(&[3][..]))
        );
        assert_eq!(
            parse(&frame("d", &[5, 2, b'h', b'i'])).unwrap().1,
            Message::Stateless("hi")
        );
        assert_eq!(
            parse(&frame("d", &[6, 0])).unwrap().1,
            Message::BroadcastStateless("")
        );
        assert_eq!(parse(&frame("d", &[7])).unwrap().1, Message::Close);
        assert_eq!(ClientFrame::parse(&[10]).unwrap(), ClientFrame::Pong);
        // A SyncReply is handed over as a Sync.
        let f = frame("d", &[4, 2, 2, 0, 0]);
        let (_, m) = parse(&f).unwrap();
        assert_eq!(m, Message::Room(Cow::Owned(vec![0, 2, 2, 0, 0])));
    }

    #[test]
    fn what_the_room_takes() {
        let room = |body: &[u8]| {
            let m = Message::parse(body).unwrap();
            m.room_frame().map(|f| f.into_owned())
        };
        assert_eq!(room(&[0, 0, 1, 0]), Some(vec![0, 0, 1, 0]));
        assert_eq!(room(&[3]), Some(vec![3]));
        let relayed = stateless_frame("hi").to_vec();
        assert_eq!(room(&[5, 2, b'h', b'i']), Some(relayed.clone()));
        assert_eq!(room(&[6, 2, b'h', b'i']), Some(relayed));
        assert_eq!(room(&[2, 0, 0]), None);
        assert_eq!(room(&[7]), None);
    }

    #[test]
    fn bad_input_is_an_error_charged_to_its_document() {
        // No name, a name longer than the frame, a name with nothing after it.
        assert!(ClientFrame::parse(&[]).is_err());
        assert!(ClientFrame::parse(&[200, 1, 1]).is_err());
        assert!(ClientFrame::parse(&frame("d", &[])).is_err());
        assert!(
            ClientFrame::parse(&[2, 0xff, 0xfe, 0]).is_err(),
            "not UTF-8"
        );
        // Once the name is read, errors concern the document alone.
        for (body, what) in [
            (&[11][..], "unknown type"),
            (&[8, 1][..], "SyncStatus comes from servers"),
            (&[9][..], "a named ping"),
            (&[0, 3, 0][..], "unknown sync step"),
            (&[0, 2, 5, 1][..], "update longer than the frame"),
            (&[0, 0, 1, 0, 0][..], "trailing byte"),
            (&[2, 1, 0][..], "permission denied from a client"),
            (&[2, 0, 1, b'x', 1][..], "a truncated version"),
            (&[5, 3, b'a'][..], "truncated stateless"),
            (&[7, 0][..], "trailing byte after close"),
            (&[1][..], "awareness without its payload"),
        ] {
            let f = frame("doc", body);
            let ClientFrame::Document { name, body } = ClientFrame::parse(&f).unwrap() else {
                panic!("{what}: not a document frame");
            };
            assert_eq!(name, "doc");
            assert!(Message::parse(body).is_err(), "{what}");
        }
        assert_eq!(
            Message::parse(&[11]),
            Err(ProtocolError::UnknownMessage(11))
        );
    }

    #[test]
    fn replies_are_what_the_provider_reads() {
        assert_eq!(
            encode("d", Reply::Authenticated(Scope::ReadOnly)),
            [&[1, b'd', 2, 2, 8][..], b"readonly"].concat()
        );
        assert_eq!(
            encode("d", Reply::Authenticated(Scope::ReadWrite)),
            [&[1, b'd', 2, 2, 10][..], b"read-write"].concat()
        );
        assert_eq!(
            encode("d", Reply::PermissionDenied("no")),
            [1, b'd', 2, 1, 2, b'n', b'o']
        );
        // The provider reads the status with readVarInt: 1 and 0 encode as in varUint.
        assert_eq!(encode("d", Reply::SyncStatus(true)), [1, b'd', 8, 1]);
        assert_eq!(encode("d", Reply::SyncStatus(false)), [1, b'd', 8, 0]);
        assert_eq!(encode("d", Reply::Stateless("x")), [1, b'd', 5, 1, b'x']);
        assert_eq!(
            encode("d", Reply::Close("bye")),
            [1, b'd', 7, 3, b'b', b'y', b'e']
        );
        let out = Outbound::new("d");
        assert_eq!(
            out.reply(Reply::SyncStatus(true)),
            encode("d", Reply::SyncStatus(true))
        );
    }

    #[test]
    fn room_frames_are_translated() {
        let mut o = Outbound::new("doc");
        let mut out = Vec::new();
        // Sync and awareness: the same message under the name.
        let step1 = sync_frame(SYNC_STEP1, &[0]);
        let step2 = sync_frame(SYNC_STEP2, &[0, 0]);
        let awareness = awareness_frame(&[]);
        for f in [&step1, &step2, &awareness] {
            o.translate(f, &mut out).unwrap();
        }
        assert_eq!(
            out,
            [
                frame("doc", &step1),
                frame("doc", &step2),
                frame("doc", &awareness)
            ]
        );
        // Several messages in one frame become one frame each.
        out.clear();
        o.translate(&[&step1[..], &awareness[..]].concat(), &mut out)
            .unwrap();
        assert_eq!(out, [frame("doc", &step1), frame("doc", &awareness)]);

        // Acks: one SyncStatus(true) per update acknowledged for the first time.
        let saved = encode("doc", Reply::SyncStatus(true));
        out.clear();
        o.translate(&ack_frame(3, 17), &mut out).unwrap();
        assert_eq!(out, vec![saved.clone(); 3]);
        out.clear();
        o.translate(&ack_frame(3, 17), &mut out).unwrap();
        assert!(
            out.is_empty(),
            "an ack repeated after a resync counts nothing"
        );
        o.translate(&ack_frame(4, 18), &mut out).unwrap();
        assert_eq!(out, vec![saved.clone()]);

        // A read-only refusal, a viewer's update with nothing new, a stateless message.
        out.clear();
        o.translate(&permission_denied_frame("read-only"), &mut out)
            .unwrap();
        o.translate(&notice_frame(NOTICE_NOTHING_NEW, "nothing new"), &mut out)
            .unwrap();
        o.translate(&notice_frame(NOTICE_PENDING_FULL, "dropped"), &mut out)
            .unwrap();
        o.translate(&stateless_frame("hey"), &mut out).unwrap();
        assert_eq!(
            out,
            [
                encode("doc", Reply::SyncStatus(false)),
                saved,
                encode("doc", Reply::Stateless("hey")),
            ]
        );

        // What no room writes is an error.
        out.clear();
        assert!(o.translate(&[42], &mut out).is_err());
        assert!(o.translate(&[100, 9], &mut out).is_err());
        assert!(o.translate(&[0, 1, 9], &mut out).is_err());
        assert!(out.is_empty());
    }
}
