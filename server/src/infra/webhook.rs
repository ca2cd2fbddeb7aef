//! Webhooks: what the outbox rows say, how events look on the wire, how they are signed, and
//! the worker that delivers them.
//!
//! The hot path only appends: a document's committed batch carries one outbox row per
//! endpoint ([`Webhooks::batch_events`], written by the store in the batch's own transaction),
//! and the worker ([`Webhooks::run`]) delivers from the store. So a receiver that is down never
//! slows editing, and a `kill -9` after a commit loses no event: the rows are there at restart.
//!
//! Delivery: the worker claims the head row of each `(endpoint, doc)` ([`Store::outbox_claim`],
//! leased for [`LEASE_MS`], so with several nodes only one delivers a document's events and in
//! order), renders it into events ([`render`]) and POSTs them one by one, each signed
//! ([`signature`]). All delivered (2xx): the row is deleted. Otherwise it is retried after
//! [`backoff`] (exponential from 1 s, capped at 1 h, jitter ±50 %) until [`RETRY_WINDOW_MS`]
//! (24 h) after it was written, then it is dead (listed and replayable by the admin routes).
//! At least once: a retry sends a row's events again with the same ids.
//!
//! Event ids: `evt-<row>` for a row's first event, `evt-<row>-<n>` for the `field.updated`
//! events after it. Rows of one document's batches never attempted are merged when claimed
//! (debounce): one `document.updated` with the first and last sid, authors and fields.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::sync::Notify;

use crate::base::clock::now_ms;
use crate::infra::metrics::Metrics;
use crate::infra::shutdown::Shutdown;
use crate::infra::store::inbox::BATCH;
use crate::infra::store::{OutboxEvent, OutboxRow, Store};

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "tandem-signature";
/// How long a row is retried before it is dead (24 h).
pub const RETRY_WINDOW_MS: u64 = 24 * 60 * 60 * 1000;
/// How long a claimed row is leased to the node delivering it.
pub const LEASE_MS: u64 = 60_000;
/// Longest one POST may take (connect, send, answer).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the worker looks at the outbox when nothing woke it.
const POLL: Duration = Duration::from_millis(250);
/// Most rows in flight at once (different documents or endpoints, delivered concurrently).
const CLAIM: u32 = 32;

/// What a committed batch did, as stored in its outbox row (one JSON line).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchSummary {
    /// Who wrote the batch's updates, first appearance first.
    pub authors: Vec<String>,
    /// Text fields and registers the batch touched.
    pub fields: Vec<String>,
    /// Register changes, in order.
    pub registers: Vec<RegisterChange>,
}

/// One register change of a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterChange {
    /// The register.
    pub name: String,
    /// Its new value (`null` when deleted).
    pub value: Value,
    /// The winning write's version.
    pub version: Option<String>,
    /// Who made it.
    pub author: Option<String>,
}

/// The webhook configuration and the worker's wake-up, shared by the document tasks (which
/// write rows) and the worker (which delivers them). Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Webhooks {
    endpoints: Arc<[String]>,
    secret: Arc<str>,
    presence: bool,
    wake: Arc<Notify>,
}

impl Webhooks {
    /// Webhooks to `endpoints`, signed with `secret`; `presence`: presence events too.
    pub fn new(endpoints: Vec<String>, secret: String, presence: bool) -> Self {
        Webhooks {
            endpoints: endpoints.into(),
            secret: secret.into(),
            presence,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Whether any endpoint is configured.
    pub fn is_enabled(&self) -> bool {
        !self.endpoints.is_empty()
    }

    /// Whether presence events are wanted.
    pub fn wants_presence(&self) -> bool {
        self.presence && self.is_enabled()
    }

    /// The outbox rows of a batch: one per endpoint (none without endpoints).
    pub fn batch_events(&self, summary: &BatchSummary) -> Vec<OutboxEvent> {
        if !self.is_enabled() {
            return Vec::new();
        }
        let payload = Bytes::from(serde_json::to_vec(summary).unwrap_or_default());
        self.rows(BATCH, payload)
    }

    /// The outbox rows of a `notification.created` event.
    pub fn notification_events(&self, notification: &Value) -> Vec<OutboxEvent> {
        if !self.is_enabled() {
            return Vec::new();
        }
        self.rows("notification", Bytes::from(notification.to_string()))
    }

    /// The outbox rows of a presence event (`joined` or `left`) of `user`.
    pub fn presence_events(&self, what: &str, user: &str) -> Vec<OutboxEvent> {
        if !self.wants_presence() {
            return Vec::new();
        }
        let payload = json!({"what": what, "user": user}).to_string();
        self.rows("presence", Bytes::from(payload))
    }

    fn rows(&self, kind: &str, payload: Bytes) -> Vec<OutboxEvent> {
        self.endpoints
            .iter()
            .map(|e| OutboxEvent {
                endpoint: e.clone(),
                kind: kind.to_owned(),
                payload: payload.clone(),
            })
            .collect()
    }

    /// Tells the worker that rows were written (it also polls).
    pub fn wake(&self) {
        if self.is_enabled() {
            self.wake.notify_one();
        }
    }

    /// Delivers the outbox until `shutdown`. Up to [`CLAIM`] rows (of different documents or
    /// endpoints) are in flight at once; a slow receiver holds only its own rows.
    pub async fn run(self, store: Arc<dyn Store>, metrics: Metrics, shutdown: Shutdown) {
        let stop = shutdown.wait();
        tokio::pin!(stop);
        let mut counted = 0u64;
        let mut inflight = tokio::task::JoinSet::new();
        loop {
            let now = now_ms();
            let room = CLAIM.saturating_sub(u32::try_from(inflight.len()).unwrap_or(CLAIM));
            if room > 0 {
                match store.outbox_claim(now, now + LEASE_MS, room).await {
                    Ok(rows) => {
                        for row in rows {
                            let (store, metrics, secret) = (
                                Arc::clone(&store),
                                metrics.clone(),
                                Arc::clone(&self.secret),
                            );
                            inflight.spawn(async move {
                                deliver_row(&*store, &metrics, &secret, row).await
                            });
                        }
                    }
                    Err(e) => tracing::warn!(cause = %e, "webhook outbox unavailable"),
                }
            }
            // The gauges: at most once a second.
            if now.saturating_sub(counted) >= 1000 {
                counted = now;
                if let Ok((pending, dead)) = store.outbox_counts().await {
                    metrics
                        .webhook_pending
                        .set(i64::try_from(pending).unwrap_or(i64::MAX));
                    metrics
                        .webhook_dead
                        .set(i64::try_from(dead).unwrap_or(i64::MAX));
                }
            }
            tokio::select! {
                _ = &mut stop => return,
                Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }
}

/// Delivers one claimed row's events in order; records the outcome.
async fn deliver_row(store: &dyn Store, metrics: &Metrics, secret: &str, row: OutboxRow) {
    let mut failure = None;
    for event in render(&row) {
        let body = Bytes::from(event.to_string());
        let t = now_ms() / 1000;
        match post(&row.endpoint, body.clone(), &signature(secret, t, &body)).await {
            Ok(()) => metrics.webhook_delivered.inc(),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let result = match failure {
        None => store.outbox_done(row.id).await,
        Some(error) => {
            metrics.webhook_failed.inc();
            let now = now_ms();
            let next = now
                + u64::try_from(backoff(row.attempts, fastrand::f64()).as_millis())
                    .unwrap_or(u64::MAX);
            let dead = next > row.created_at + RETRY_WINDOW_MS;
            tracing::info!(endpoint = %row.endpoint, doc = %row.doc, cause = %error, dead, "webhook delivery failed");
            store.outbox_failed(row.id, next, &error, dead).await
        }
    };
    if let Err(e) = result {
        // The lease runs out and the row is claimed again: delivered at least once.
        tracing::warn!(cause = %e, "could not record a webhook delivery");
    }
}

/// The delay before retry number `attempts + 1`: 1 s doubled per failed attempt, at most 1 h,
/// times a jitter factor from 0.5 to 1.5 (`rand` in `0..1`).
pub fn backoff(attempts: u32, rand: f64) -> Duration {
    let base = 1000u64
        .saturating_mul(1u64 << attempts.min(12))
        .min(3_600_000);
    Duration::from_millis((base as f64 * (0.5 + rand)) as u64)
}

/// The `Tandem-Signature` value: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
pub fn signature(secret: &str, t: u64, body: &[u8]) -> String {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

/// The events a row stands for, in delivery order (see the module docs for ids).
pub fn render(row: &OutboxRow) -> Vec<Value> {
    let id = format!("evt-{}", row.id);
    let text = String::from_utf8_lossy(&row.payload);
    match row.kind.as_str() {
        BATCH => {
            let mut merged = BatchSummary::default();
            for line in text.lines() {
                let Ok(s) = serde_json::from_str::<BatchSummary>(line) else {
                    continue;
                };
                for a in s.authors {
                    if !merged.authors.contains(&a) {
                        merged.authors.push(a);
                    }
                }
                for f in s.fields {
                    if !merged.fields.contains(&f) {
                        merged.fields.push(f);
                    }
                }
                merged.registers.extend(s.registers);
            }
            let mut out = vec![json!({
                "id": id, "type": "document.updated", "doc": row.doc, "at": row.created_at,
                "first_sid": row.first_sid, "last_sid": row.last_sid,
                "authors": merged.authors, "fields": merged.fields,
            })];
            for (n, r) in merged.registers.into_iter().enumerate() {
                out.push(json!({
                    "id": format!("{id}-{}", n + 1), "type": "field.updated", "doc": row.doc,
                    "at": row.created_at, "name": r.name, "value": r.value,
                    "version": r.version, "author": r.author,
                }));
            }
            out
        }
        "notification" => {
            let notification: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            vec![json!({
                "id": id, "type": "notification.created", "doc": row.doc, "at": row.created_at,
                "notification": notification,
            })]
        }
        "presence" => {
            let p: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let what = p["what"].as_str().unwrap_or("joined");
            vec![json!({
                "id": id, "type": format!("presence.{what}"), "doc": row.doc,
                "at": row.created_at, "user": p["user"],
            })]
        }
        other => vec![json!({"id": id, "type": other, "doc": row.doc, "at": row.created_at})],
    }
}

/// POSTs `body` to `endpoint` (http:// only) with its signature; `Ok` on a 2xx answer.
async fn post(endpoint: &str, body: Bytes, signature: &str) -> Result<(), String> {
    let attempt = async {
        let url = url::Url::parse(endpoint).map_err(|e| e.to_string())?;
        let host = url.host_str().ok_or("no host")?.to_owned();
        let port = url.port_or_known_default().unwrap_or(80);
        let stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let driver = tokio::spawn(conn);
        let path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        let request = hyper::Request::post(path)
            .header(hyper::header::HOST, format!("{host}:{port}"))
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, "tandem-webhooks")
            .header(SIGNATURE_HEADER, signature)
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request: {e}"));
        driver.abort();
        let status = response?.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("answered {status}"))
        }
    };
    match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt).await {
        Ok(r) => r,
        Err(_) => Err("timed out".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infra::store::DeliveryState;

    #[test]
    fn signatures_are_hmac_sha256_of_time_dot_body() {
        // Computed independently (Python: hmac.new(b's', b'1700000000.{"a":1}', sha256)).
        let sig = signature("s", 1_700_000_000, br#"{"a":1}"#);
        assert_eq!(
            sig,
            "t=1700000000,v1=ab7bd212df57f3ef4ea3c17d4a1a71d8981ef595d4cd699b62517c68d89192a2"
        );
        assert_ne!(sig, signature("t", 1_700_000_000, br#"{"a":1}"#));
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_an_hour() {
        assert_eq!(backoff(0, 0.5), Duration::from_secs(1));
        assert_eq!(backoff(3, 0.5), Duration::from_secs(8));
        assert_eq!(backoff(0, 0.0), Duration::from_millis(500));
        assert_eq!(backoff(30, 0.5), Duration::from_secs(3600));
        assert_eq!(backoff(30, 1.0), Duration::from_secs(5400));
    }

    #[test]
    fn merged_batches_render_one_document_update_then_field_updates() {
        let line = |author: &str, field: &str, reg: Option<&str>| {
            serde_json::to_string(&BatchSummary {
                authors: vec![author.into()],
                fields: vec![field.into()],
                registers: reg
                    .map(|r| RegisterChange {
                        name: r.into(),
                        value: json!("bob"),
                        version: Some("v".into()),
                        author: Some(author.into()),
                    })
                    .into_iter()
                    .collect(),
            })
            .unwrap()
        };
        let payload = format!(
            "{}\n{}\n{}",
            line("ann", "title", None),
            line("bob", "assignee", Some("assignee")),
            line("ann", "title", None)
        );
        let row = OutboxRow {
            id: 7,
            endpoint: "http://x".into(),
            doc: "d".into(),
            kind: BATCH.into(),
            first_sid: 3,
            last_sid: 9,
            payload: Bytes::from(payload),
            attempts: 0,
            created_at: 5,
            next_at: 5,
            state: DeliveryState::Pending,
            last_error: None,
        };
        let events = render(&row);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0]["id"], "evt-7");
        assert_eq!(events[0]["type"], "document.updated");
        assert_eq!(events[0]["first_sid"], 3);
        assert_eq!(events[0]["last_sid"], 9);
        assert_eq!(events[0]["authors"], json!(["ann", "bob"]));
        assert_eq!(events[0]["fields"], json!(["title", "assignee"]));
        assert_eq!(events[1]["id"], "evt-7-1");
        assert_eq!(events[1]["type"], "field.updated");
        assert_eq!(events[1]["name"], "assignee");
        assert_eq!(events[1]["value"], "bob");
    }
}
