//! `Idempotency-Key`: a client that lost its answer retries with the same key, and the write is
//! carried out once; every request with the key gets the first answer.
//!
//! What a key is: a request header of 1 to [`MAX_KEY_LEN`] printable ASCII characters (else
//! 400), accepted on every write route. It belongs to the authenticated user and, on the
//! document routes, to the document: two users (or two documents) never share a key. A key
//! names one request: its method, path (without the query, so a refreshed `?token=` is still
//! the same request), `If-Match` / `If-None-Match` and body, hashed into a [`Fingerprint`]
//! (SHA-256). The same key with another request is refused with 422 `unprocessable` and does
//! nothing.
//!
//! What a retry gets: the first request's status, body and the headers that belong to it
//! (`ETag`), plus `Idempotent-Replayed: true`. A retry that arrives while the first request is
//! still being carried out (e.g. waiting for its write to be durable) waits for that answer;
//! it is not refused with 409. Only requests that were carried out are remembered (2xx, and the
//! 412 of a conditional write that lost); a request refused before anything was done (400,
//! 401, 403, 404, 413, 422, 5xx) is not, and its retry runs again.
//!
//! Where the record lives, and why it cannot be lost between the write and the answer:
//! - Document writes (`POST …/update`, `PUT`/`DELETE …/fields/{name}`, `POST …/texts/{field}`):
//!   the edge renders nothing itself. It hands the document layer the key, the fingerprint and
//!   how to render the answer ([`crate::documents::WriteRequest`]); the document's owner task
//!   renders the answer as soon as the write is applied and queues the record with the update,
//!   and the store commits both in ONE transaction (`crate::documents::keys` explains the
//!   steps). So after a `kill -9` either the update and its record are both on disk or neither
//!   is: dying after the commit but before the answer reaches the client leaves the record,
//!   and the retry is replayed; dying before the commit leaves neither, and the retry runs.
//!   Storing the answer from here after the reply would leave a window (commit done, record
//!   not stored) in which a crash makes the retry apply twice. Records live in the store, not
//!   in memory, so they outlive restarts and, with a shared store, hold across nodes. Bounds:
//!   kept 24 h, at most 100,000 records and 256 MiB of answers in all, oldest evicted first
//!   ([`crate::infra::store::KeyLimits`]).
//! - `POST /admin/revoke`: a revocation lives in this process's memory
//!   ([`crate::access::revocation`]), so its key does too ([`LocalKeys`]): recorded under the
//!   same lock as the revocation, and forgotten with it on restart. A durable key would make a
//!   retry after a restart replay "revoked" for a revocation the restart forgot; with both
//!   forgotten, the retry revokes again. When revocations move to a shared store, their keys
//!   move with them (same transaction). Bounds: 24 h, 10,000 keys.
//!
//! Every success body of a document write carries the write's `sid`, which is known only once
//! the store has committed it: the stored answer leaves it out, the store keeps the sid with
//! the record, and [`respond`] puts it in, for the first answer and for every replay alike.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::error::{ApiError, ErrorCode};
use crate::documents::{Answered, DocError, RequestKey};
use crate::infra::store::{Answer, Fingerprint, Sid};

/// The request header.
pub const HEADER: HeaderName = HeaderName::from_static("idempotency-key");
/// The response header set on a replayed answer.
pub const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
/// The longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 255;

/// How long [`LocalKeys`] remembers a key (milliseconds).
const LOCAL_TTL_MS: u64 = 24 * 60 * 60 * 1000;
/// How many keys [`LocalKeys`] remembers; the oldest go first.
const LOCAL_MAX: usize = 10_000;

/// The parts of a write request that say whether it has a key and which request it is. An
/// extractor: a malformed key is refused with 400 before the route runs.
#[derive(Debug)]
pub struct Keyed {
    key: Option<String>,
    method: Method,
    path: String,
    if_match: Option<HeaderValue>,
    if_none_match: Option<HeaderValue>,
}

impl Keyed {
    /// The key and the fingerprint of this request with `body`, when it has a key.
    pub fn request_key(&self, body: &[u8]) -> Option<RequestKey> {
        let key = self.key.as_ref()?;
        Some(RequestKey {
            key: key.clone(),
            fingerprint: fingerprint(
                &self.method,
                &self.path,
                [self.if_match.as_ref(), self.if_none_match.as_ref()],
                body,
            ),
        })
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Keyed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Keyed {
            key: key_of(&parts.headers)?,
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            if_match: parts.headers.get(header::IF_MATCH).cloned(),
            if_none_match: parts.headers.get(header::IF_NONE_MATCH).cloned(),
        })
    }
}

/// The request's `Idempotency-Key`, checked: one header, 1 to [`MAX_KEY_LEN`] printable ASCII
/// characters (space to `~`).
pub fn key_of(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all(HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let bad = |why: &str| {
        Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("Idempotency-Key {why}"),
        ))
    };
    if values.next().is_some() {
        return bad("is given more than once");
    }
    let bytes = value.as_bytes();
    if bytes.is_empty() {
        return bad("is empty");
    }
    if bytes.len() > MAX_KEY_LEN {
        return bad(&format!("is longer than {MAX_KEY_LEN} characters"));
    }
    if !bytes.iter().all(|b| (0x20..=0x7e).contains(b)) {
        return bad("must be printable ASCII");
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

/// SHA-256 of what makes a request the one its key names: method, path, conditional headers,
/// body; each part length-prefixed, so no two different requests hash the same input.
pub fn fingerprint(
    method: &Method,
    path: &str,
    conditions: [Option<&HeaderValue>; 2],
    body: &[u8],
) -> Fingerprint {
    let mut hash = Sha256::new();
    let mut part = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_be_bytes());
        hash.update(bytes);
    };
    part(b"tandem idempotency v1");
    part(method.as_str().as_bytes());
    part(path.as_bytes());
    for condition in conditions {
        match condition {
            Some(v) => {
                part(b"+");
                part(v.as_bytes());
            }
            None => part(b"-"),
        }
    }
    part(body);
    hash.finalize().into()
}

/// A JSON answer.
pub fn json_answer(status: StatusCode, headers: Vec<(String, String)>, body: &Value) -> Answer {
    Answer {
        status: status.as_u16(),
        headers,
        body: Bytes::from(body.to_string()),
    }
}

/// An error as an answer (the 412 of a conditional write is stored like a success).
pub fn error_answer(error: ApiError) -> Answer {
    json_answer(error.code().status(), Vec::new(), &error.body())
}

/// The response for a document write: a success body gets the write's `sid`.
pub fn respond_write(answered: Answered) -> Response {
    let success = (200..300).contains(&answered.answer.status);
    respond(
        answered.answer,
        success.then_some(answered.sid),
        answered.replayed,
    )
}

/// The response for an answer (JSON), with `sid` put into its body when given, and
/// `Idempotent-Replayed: true` when an earlier request made it.
pub fn respond(answer: Answer, sid: Option<Sid>, replayed: bool) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = match sid {
        Some(sid) => match serde_json::from_slice::<Value>(&answer.body) {
            Ok(Value::Object(mut map)) => {
                map.insert("sid".to_owned(), Value::from(sid));
                Bytes::from(Value::Object(map).to_string())
            }
            _ => answer.body,
        },
        None => answer.body,
    };
    let mut response = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    let headers = response.headers_mut();
    for (name, value) in &answer.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    if replayed {
        headers.insert(REPLAYED, HeaderValue::from_static("true"));
    }
    response
}

/// Keys of writes whose effect lives in this process's memory (see the module docs), bounded
/// by 24 h and 10,000 keys. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct LocalKeys {
    table: Arc<Mutex<LocalTable>>,
}

#[derive(Debug, Default)]
struct LocalTable {
    records: HashMap<(String, String), (Fingerprint, Answer, u64)>,
    /// Keys in the order they were stored, with when.
    order: VecDeque<((String, String), u64)>,
}

impl LocalTable {
    fn evict(&mut self, now_ms: u64) {
        while let Some((id, at)) = self.order.front() {
            if self.order.len() <= LOCAL_MAX && at + LOCAL_TTL_MS > now_ms {
                break;
            }
            if self.records.get(id).is_some_and(|r| r.2 == *at) {
                self.records.remove(id);
            }
            self.order.pop_front();
        }
    }
}

impl LocalKeys {
    /// Runs `write` once per `user`'s key: without a key, always; with one, only when the key
    /// is new, keeping its answer (a success) for the retries. Returns the answer and whether
    /// it was replayed. `write` runs under the table's lock, so it must not block.
    pub fn once(
        &self,
        user: &str,
        key: Option<RequestKey>,
        now_ms: u64,
        write: impl FnOnce() -> Result<Answer, ApiError>,
    ) -> Result<(Answer, bool), ApiError> {
        let Some(key) = key else {
            return write().map(|a| (a, false));
        };
        // Nothing here can leave the table inconsistent: recover from poisoning.
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let id = (user.to_owned(), key.key);
        if let Some((fingerprint, answer, at)) = table.records.get(&id) {
            if at + LOCAL_TTL_MS > now_ms {
                if *fingerprint != key.fingerprint {
                    return Err(DocError::KeyReused.into());
                }
                return Ok((answer.clone(), true));
            }
        }
        let answer = write()?;
        table
            .records
            .insert(id.clone(), (key.fingerprint, answer.clone(), now_ms));
        table.order.push_back((id, now_ms));
        table.evict(now_ms);
        Ok((answer, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn keys_are_one_header_of_printable_ascii_up_to_255_bytes() {
        assert_eq!(key_of(&headers(&[])).unwrap(), None);
        assert_eq!(
            key_of(&headers(&[("idempotency-key", b"a b~!")])).unwrap(),
            Some("a b~!".to_owned())
        );
        let longest = vec![b'k'; MAX_KEY_LEN];
        assert_eq!(
            key_of(&headers(&[("idempotency-key", &longest)]))
                .unwrap()
                .map(|k| k.len()),
            Some(MAX_KEY_LEN)
        );
        let too_long = vec![b'k'; MAX_KEY_LEN + 1];
        for bad in [
            headers(&[("idempotency-key", b"")]),
            headers(&[("idempotency-key", &too_long)]),
            headers(&[("idempotency-key", "é".as_bytes())]),
            headers(&[("idempotency-key", b"tab\there")]),
            headers(&[("idempotency-key", b"a"), ("idempotency-key", b"a")]),
        ] {
            let err = key_of(&bad).unwrap_err();
            assert_eq!(err.code(), ErrorCode::BadRequest, "{bad:?}");
        }
    }

    #[test]
    fn the_fingerprint_covers_method_path_conditions_and_body() {
        let etag = HeaderValue::from_static("\"v1\"");
        let base = fingerprint(&Method::PUT, "/docs/d/fields/f", [None, None], b"1");
        assert_eq!(
            base,
            fingerprint(&Method::PUT, "/docs/d/fields/f", [None, None], b"1")
        );
        let others = [
            fingerprint(&Method::DELETE, "/docs/d/fields/f", [None, None], b"1"),
            fingerprint(&Method::PUT, "/docs/d/fields/g", [None, None], b"1"),
            fingerprint(&Method::PUT, "/docs/d/fields/f", [Some(&etag), None], b"1"),
            fingerprint(&Method::PUT, "/docs/d/fields/f", [None, Some(&etag)], b"1"),
            fingerprint(&Method::PUT, "/docs/d/fields/f", [None, None], b"2"),
            // Moving bytes between parts changes it too.
            fingerprint(&Method::PUT, "/docs/d/fields/f1", [None, None], b""),
        ];
        for (i, other) in others.iter().enumerate() {
            assert_ne!(base, *other, "variant {i}");
        }
    }

    async fn parts(response: Response) -> (StatusCode, HeaderMap, Value) {
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, headers, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn answers_get_their_sid_and_replays_say_so() {
        let answer = json_answer(
            StatusCode::OK,
            vec![("etag".into(), "\"v\"".into())],
            &serde_json::json!({"name": "f"}),
        );
        let first = Answered {
            answer: answer.clone(),
            sid: 7,
            replayed: false,
        };
        let (status, headers, body) = parts(respond_write(first.clone())).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, serde_json::json!({"name": "f", "sid": 7}));
        assert_eq!(headers[header::ETAG], "\"v\"");
        assert!(headers.get(REPLAYED).is_none());
        let (status2, headers2, body2) = parts(respond_write(Answered {
            replayed: true,
            ..first
        }))
        .await;
        assert_eq!((status2, &body2), (status, &body));
        assert_eq!(headers2[header::ETAG], "\"v\"");
        assert_eq!(headers2[REPLAYED], "true");
        // An error answer gets no sid.
        let stale = error_answer(ApiError::new(ErrorCode::PreconditionFailed, "stale"));
        let (status, _, body) = parts(respond_write(Answered {
            answer: stale,
            sid: 3,
            replayed: false,
        }))
        .await;
        assert_eq!(status, StatusCode::PRECONDITION_FAILED);
        assert_eq!(body.get("sid"), None);
        assert_eq!(body["error"], "precondition_failed");
    }

    fn key(k: &str, body: &[u8]) -> Option<RequestKey> {
        Some(RequestKey {
            key: k.into(),
            fingerprint: fingerprint(&Method::POST, "/admin/revoke", [None, None], body),
        })
    }

    #[test]
    fn local_keys_run_a_write_once_per_user_and_key() {
        let keys = LocalKeys::default();
        let mut runs = 0;
        let mut write = |n: &str| {
            runs += 1;
            Ok(json_answer(
                StatusCode::OK,
                Vec::new(),
                &serde_json::json!({ "n": n }),
            ))
        };
        let (a, replayed) = keys.once("u", key("k", b"x"), 0, || write("1")).unwrap();
        assert!(!replayed);
        let (b, replayed) = keys.once("u", key("k", b"x"), 1, || write("2")).unwrap();
        assert!(replayed);
        assert_eq!(a, b);
        // Another request with the key: 422, nothing runs.
        let err = keys
            .once("u", key("k", b"y"), 2, || write("3"))
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::Unprocessable);
        // Another user's key of the same name is another key; no key runs every time.
        keys.once("v", key("k", b"x"), 3, || write("4")).unwrap();
        keys.once("u", None, 4, || write("5")).unwrap();
        keys.once("u", None, 5, || write("6")).unwrap();
        // A refused write is not remembered.
        let refused = keys.once("u", key("r", b"x"), 6, || {
            Err(ApiError::new(ErrorCode::BadRequest, "no"))
        });
        assert!(refused.is_err());
        keys.once("u", key("r", b"x"), 7, || write("7")).unwrap();
        // After 24 h the key is forgotten and runs again.
        let (_, replayed) = keys
            .once("u", key("k", b"y"), LOCAL_TTL_MS + 1, || write("8"))
            .unwrap();
        assert!(!replayed);
        assert_eq!(runs, 6);
    }

    #[test]
    fn local_keys_are_bounded() {
        let keys = LocalKeys::default();
        let ok = || Ok(json_answer(StatusCode::OK, Vec::new(), &Value::Null));
        for i in 0..LOCAL_MAX + 10 {
            keys.once("u", key(&i.to_string(), b""), 1, ok).unwrap();
        }
        let table = keys.table.lock().unwrap();
        assert!(table.records.len() <= LOCAL_MAX);
        assert!(!table
            .records
            .contains_key(&("u".to_owned(), "0".to_owned())));
        assert!(table
            .records
            .contains_key(&("u".to_owned(), (LOCAL_MAX + 9).to_string())));
    }
}
