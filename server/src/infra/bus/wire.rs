//! How bus messages look on a Redis channel: a compact binary encoding, versioned by its
//! first byte. Lengths are checked against the bytes present; anything that does not decode
//! is [`Malformed`] (the receiver drops and counts it), never a panic.
//!
//! ```text
//! u8 version (1) | u8 kind | u8 n | n bytes: sender's node id (UTF-8) | fields of the kind
//!
//! kind 1 Update     u64 sid (BE) | u32 m (BE) | m bytes: author (UTF-8) | rest: the update
//! kind 2 Awareness  rest: the awareness update payload
//! kind 3 Query      nothing
//! kind 4 Revoked    u64 at (BE, unix seconds) | rest: the user (UTF-8)
//! kind 5 Goodbye    nothing
//! kind 6 Updates    u64 first sid (BE) | u32 count (BE) | count × entry
//!                   entry: u32 m (BE) | m bytes: author (UTF-8) | u32 k (BE) | k bytes: update
//! ```
//!
//! Kinds 1–3 and 6 travel on a document's channel (which names the document), 4–5 on the
//! nodes channel. A committed batch is one kind-6 message; kind 1 (one update per message,
//! what earlier nodes sent) is still read, as a batch of one. A node that reads a version or
//! kind it does not know drops the message (the receiver reads missing updates from the
//! store): a new version needs every node upgraded before it is sent.

use bytes::Bytes;

use super::{DocMessage, Replicated};

/// The encoding's version, the first byte of every message.
pub const VERSION: u8 = 1;

const UPDATE: u8 = 1;
const AWARENESS: u8 = 2;
const QUERY: u8 = 3;
const REVOKED: u8 = 4;
const GOODBYE: u8 = 5;
const UPDATES: u8 = 6;

/// Bytes that are not a bus message of this version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// What a message says, apart from who sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// About the document the channel names.
    Doc(DocMessage),
    /// A user's tokens issued at or before `at` were revoked.
    Revoked {
        /// The user.
        user: String,
        /// Unix seconds.
        at: u64,
    },
    /// The sender is stopping.
    Goodbye,
}

/// Encodes a message from `node` (at most 255 bytes, checked when the bus starts).
pub fn encode(node: &str, body: &Body) -> Vec<u8> {
    let extra = match body {
        Body::Doc(DocMessage::Updates { updates, .. }) => {
            12 + updates
                .iter()
                .map(|u| 8 + u.author.len() + u.update.len())
                .sum::<usize>()
        }
        Body::Doc(DocMessage::Awareness { payload }) => payload.len(),
        Body::Revoked { user, .. } => 8 + user.len(),
        Body::Doc(DocMessage::Query) | Body::Goodbye => 0,
    };
    let mut out = Vec::with_capacity(3 + node.len() + extra);
    out.push(VERSION);
    out.push(match body {
        Body::Doc(DocMessage::Updates { .. }) => UPDATES,
        Body::Doc(DocMessage::Awareness { .. }) => AWARENESS,
        Body::Doc(DocMessage::Query) => QUERY,
        Body::Revoked { .. } => REVOKED,
        Body::Goodbye => GOODBYE,
    });
    debug_assert!(node.len() <= usize::from(u8::MAX));
    out.push(node.len().min(255) as u8);
    out.extend_from_slice(&node.as_bytes()[..node.len().min(255)]);
    match body {
        Body::Doc(DocMessage::Updates { first, updates }) => {
            out.extend_from_slice(&first.to_be_bytes());
            out.extend_from_slice(&(updates.len() as u32).to_be_bytes());
            for u in updates {
                put_bytes(&mut out, u.author.as_bytes());
                put_bytes(&mut out, &u.update);
            }
        }
        Body::Doc(DocMessage::Awareness { payload }) => out.extend_from_slice(payload),
        Body::Revoked { user, at } => {
            out.extend_from_slice(&at.to_be_bytes());
            out.extend_from_slice(user.as_bytes());
        }
        Body::Doc(DocMessage::Query) | Body::Goodbye => {}
    }
    out
}

/// Appends `bytes` with its u32 length before it (an author or an update: far below 4 GiB,
/// bounded by the frame size limit).
fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let bytes = &bytes[..bytes.len().min(u32::MAX as usize)];
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// A message's sender, read without decoding (or copying) the rest, so a node skips its own
/// messages cheaply. Returns the sender and the undecoded remainder for [`decode_body`].
pub fn decode_sender(bytes: &[u8]) -> Result<(&str, Head<'_>), Malformed> {
    let [VERSION, kind, n, rest @ ..] = bytes else {
        return Err(Malformed);
    };
    let (node, rest) = split(rest, usize::from(*n))?;
    let node = std::str::from_utf8(node).map_err(|_| Malformed)?;
    if node.is_empty() {
        return Err(Malformed);
    }
    Ok((node, Head { kind: *kind, rest }))
}

/// The part of a message after its sender.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    kind: u8,
    rest: &'a [u8],
}

/// Decodes what the message says.
pub fn decode_body(head: Head<'_>) -> Result<Body, Malformed> {
    let rest = head.rest;
    Ok(match head.kind {
        UPDATE => {
            let (sid, rest) = take_u64(rest)?;
            let (author, update) = take_bytes(rest)?;
            Body::Doc(DocMessage::Updates {
                first: sid,
                updates: vec![Replicated {
                    author: utf8(author)?,
                    update: Bytes::copy_from_slice(update),
                }],
            })
        }
        UPDATES => {
            let (first, rest) = take_u64(rest)?;
            let (count, mut rest) = split(rest, 4)?;
            let count = u32::from_be_bytes(count.try_into().map_err(|_| Malformed)?) as usize;
            // Every entry takes at least 8 bytes: a count the message cannot hold is refused
            // before anything is allocated for it.
            if count > rest.len() / 8 {
                return Err(Malformed);
            }
            let mut updates = Vec::with_capacity(count);
            for _ in 0..count {
                let (author, after) = take_bytes(rest)?;
                let (update, after) = take_bytes(after)?;
                updates.push(Replicated {
                    author: utf8(author)?,
                    update: Bytes::copy_from_slice(update),
                });
                rest = after;
            }
            if !rest.is_empty() {
                return Err(Malformed);
            }
            Body::Doc(DocMessage::Updates { first, updates })
        }
        AWARENESS => Body::Doc(DocMessage::Awareness {
            payload: Bytes::copy_from_slice(rest),
        }),
        QUERY if rest.is_empty() => Body::Doc(DocMessage::Query),
        REVOKED => {
            let (at, user) = split(rest, 8)?;
            Body::Revoked {
                user: std::str::from_utf8(user).map_err(|_| Malformed)?.to_owned(),
                at: u64::from_be_bytes(at.try_into().map_err(|_| Malformed)?),
            }
        }
        GOODBYE if rest.is_empty() => Body::Goodbye,
        _ => return Err(Malformed),
    })
}

fn take_u64(bytes: &[u8]) -> Result<(u64, &[u8]), Malformed> {
    let (n, rest) = split(bytes, 8)?;
    Ok((
        u64::from_be_bytes(n.try_into().map_err(|_| Malformed)?),
        rest,
    ))
}

/// A u32 length, then that many bytes.
fn take_bytes(bytes: &[u8]) -> Result<(&[u8], &[u8]), Malformed> {
    let (len, rest) = split(bytes, 4)?;
    let len = u32::from_be_bytes(len.try_into().map_err(|_| Malformed)?);
    split(rest, usize::try_from(len).map_err(|_| Malformed)?)
}

fn utf8(bytes: &[u8]) -> Result<String, Malformed> {
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| Malformed)
}

fn split(bytes: &[u8], n: usize) -> Result<(&[u8], &[u8]), Malformed> {
    if bytes.len() < n {
        return Err(Malformed);
    }
    Ok(bytes.split_at(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(body: Body) {
        let bytes = encode("node-a", &body);
        let (node, head) = decode_sender(&bytes).unwrap();
        assert_eq!(node, "node-a");
        assert_eq!(decode_body(head).unwrap(), body);
        // Every strict prefix is refused or decodes to something else, never panics.
        for cut in 0..bytes.len() {
            if let Ok((_, head)) = decode_sender(&bytes[..cut]) {
                assert_ne!(decode_body(head).ok().as_ref(), Some(&body), "cut {cut}");
            }
        }
    }

    fn entry(author: &str, update: &[u8]) -> Replicated {
        Replicated {
            author: author.into(),
            update: Bytes::copy_from_slice(update),
        }
    }

    #[test]
    fn every_kind_round_trips() {
        round_trip(Body::Doc(DocMessage::Updates {
            first: 42,
            updates: vec![
                entry("ada", &[1, 2, 3, 0]),
                entry("bob", &[4]),
                entry("", &[]),
            ],
        }));
        round_trip(Body::Doc(DocMessage::Updates {
            first: u64::MAX,
            updates: vec![entry("", &[])],
        }));
        round_trip(Body::Doc(DocMessage::Updates {
            first: 1,
            updates: vec![],
        }));
        round_trip(Body::Doc(DocMessage::Awareness {
            payload: Bytes::from_static(b"\x01\x07\x02{}"),
        }));
        round_trip(Body::Doc(DocMessage::Query));
        round_trip(Body::Revoked {
            user: "bob".into(),
            at: 1_700_000_000,
        });
        round_trip(Body::Goodbye);
    }

    #[test]
    fn the_layout_is_as_documented() {
        let bytes = encode(
            "n",
            &Body::Doc(DocMessage::Updates {
                first: 7,
                updates: vec![entry("u", b"xy"), entry("", b"z")],
            }),
        );
        #[rustfmt::skip]
        assert_eq!(
            bytes,
            [
                1, 6, 1, b'n', 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 2,
                0, 0, 0, 1, b'u', 0, 0, 0, 2, b'x', b'y',
                0, 0, 0, 0, 0, 0, 0, 1, b'z',
            ]
        );
        assert_eq!(encode("n", &Body::Goodbye), [1, 5, 1, b'n']);
    }

    #[test]
    fn a_single_update_from_an_earlier_node_is_a_batch_of_one() {
        let bytes = [
            1, 1, 1, b'n', 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 1, b'u', b'x', b'y',
        ];
        let (_, head) = decode_sender(&bytes).unwrap();
        assert_eq!(
            decode_body(head).unwrap(),
            Body::Doc(DocMessage::Updates {
                first: 7,
                updates: vec![entry("u", b"xy")],
            })
        );
    }

    #[test]
    fn malformed_bytes_are_refused() {
        for bytes in [
            &b""[..],
            b"\x01",
            b"\x02\x03\x01n",                                     // unknown version
            b"\x01\x09\x01n",                                     // unknown kind
            b"\x01\x03\x00",                                      // empty node id
            b"\x01\x03\x05n",                                     // node id longer than the message
            b"\x01\x03\x01\xff",                                  // node id not UTF-8
            b"\x01\x03\x01nx",                                    // a query with trailing bytes
            b"\x01\x01\x01n\x00\x00",                             // a truncated sid
            b"\x01\x04\x01n\x00\x00\x00\x00\x00\x00\x00\x01\xff", // user not UTF-8
            b"\x01\x01\x01n\x00\x00\x00\x00\x00\x00\x00\x01\xff\xff\xff\xff", // author too long
            // a batch claiming more entries than its bytes can hold
            b"\x01\x06\x01n\x00\x00\x00\x00\x00\x00\x00\x01\xff\xff\xff\xff",
            // a batch with bytes after its last entry
            b"\x01\x06\x01n\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00",
        ] {
            let decoded = decode_sender(bytes).and_then(|(_, head)| decode_body(head));
            assert_eq!(decoded, Err(Malformed), "{bytes:?}");
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..10_000 {
            let len = rng.usize(0..40);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            if len > 2 && rng.bool() {
                bytes[0] = VERSION;
                bytes[1] = rng.u8(0..8);
                bytes[2] = rng.u8(0..8);
            }
            let _ = decode_sender(&bytes).and_then(|(_, head)| decode_body(head));
        }
    }
}
