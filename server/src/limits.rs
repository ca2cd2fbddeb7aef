//! The limits a client can breach, and the rate limiters that enforce two of them.
//!
//! [`LimitKind`] names each limit once: its metrics label, its WebSocket close code, its HTTP
//! status and its human reason all come from here, so every route answers a breach the same
//! way. [`TokenBucket`] limits messages per connection; [`IpRateLimiter`] limits new
//! connections per IP address. Both take `now` from the caller, so tests need no clock.
//!
//! Where each limit is enforced, and how a breach is answered:
//!
//! | limit | where | WebSocket | HTTP |
//! | --- | --- | --- | --- |
//! | frame size | the WebSocket codec (`ws`), the room | close 1009 | 413 |
//! | awareness state size | the room (`AwarenessTooLarge`) | close 4413 | 413 |
//! | document size | the document task, before a frame carrying updates is applied | close 4507 | 507 |
//! | message rate | the WebSocket reader, one token per message | close 4429 | — |
//! | connection rate | before the upgrade, per peer IP | HTTP 429 | 429 |
//! | connections | before the upgrade | HTTP 503 | 503 |
//! | pending updates | the room (`TooManyPending`) | close 4422 | 422 |
//!
//! The two admission limits answer before the WebSocket upgrade: a refused handshake costs the
//! server no socket state, which matters most exactly when these limits trip (a reconnect storm,
//! a flood from one address). Browsers cannot read the status of a failed handshake; the stock
//! y-websocket client retries with its usual back-off, which is the right reaction to both.
//! Every breach increments `tandem_limit_breaches_total{limit=...}`.

use std::net::IpAddr;
use std::time::Instant;

use axum::http::StatusCode;
use dashmap::DashMap;
use tandem_engine::protocol::{
    MSG_AUTH, MSG_AWARENESS, MSG_QUERY_AWARENESS, MSG_SYNC, MSG_TANDEM, SYNC_STEP2, SYNC_UPDATE,
};
use tandem_engine::wire::Reader;
use tandem_engine::ProtocolError;

use crate::config::Rate;
use crate::docs::Close;
use crate::metrics::Metrics;

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

    /// The WebSocket close code a breach closes the connection with.
    ///
    /// Standard codes where one fits (1009 message too big, 1013 try again later); otherwise
    /// 4000 + the matching HTTP status.
    pub fn close_code(self) -> u16 {
        match self {
            LimitKind::FrameSize => 1009,
            LimitKind::AwarenessSize => 4413,
            LimitKind::DocumentSize => 4507,
            LimitKind::MessageRate | LimitKind::ConnectionRate => 4429,
            LimitKind::MaxConnections => 1013,
            LimitKind::PendingUpdates => 4422,
        }
    }

    /// The HTTP status a breach is answered with.
    pub fn http_status(self) -> StatusCode {
        match self {
            LimitKind::FrameSize | LimitKind::AwarenessSize => StatusCode::PAYLOAD_TOO_LARGE,
            LimitKind::DocumentSize => StatusCode::INSUFFICIENT_STORAGE,
            LimitKind::MessageRate | LimitKind::ConnectionRate => StatusCode::TOO_MANY_REQUESTS,
            LimitKind::MaxConnections => StatusCode::SERVICE_UNAVAILABLE,
            LimitKind::PendingUpdates => StatusCode::UNPROCESSABLE_ENTITY,
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

    /// The close frame a breach closes a WebSocket with.
    pub fn close(self) -> Close {
        Close::new(self.close_code(), self.reason())
    }

    /// The limit a protocol error from the engine reports a breach of, if any.
    pub fn of_protocol_error(err: &ProtocolError) -> Option<LimitKind> {
        match err {
            ProtocolError::FrameTooLarge { .. } => Some(LimitKind::FrameSize),
            ProtocolError::AwarenessTooLarge { .. } => Some(LimitKind::AwarenessSize),
            ProtocolError::DocumentTooLarge(_) => Some(LimitKind::DocumentSize),
            ProtocolError::TooManyPending(_) => Some(LimitKind::PendingUpdates),
            _ => None,
        }
    }
}

/// How to close a connection whose frame the engine refused with `err`. A breach of a limit gets
/// that limit's close code (and is counted in `metrics`); anything else the engine's own code.
pub fn protocol_error_close(err: &ProtocolError, metrics: &Metrics) -> Close {
    match LimitKind::of_protocol_error(err) {
        Some(kind) => {
            metrics.limit_breached(kind);
            Close::new(kind.close_code(), err.close_reason())
        }
        None => Close::new(err.close_code(), err.close_reason()),
    }
}

/// Bytes of document updates a client frame carries: the payloads of its sync step 2 and update
/// messages (empty updates, 2 bytes, excluded: a client with nothing new sends one on every
/// reconnect), plus the rest of the frame from a tandem extension message on (a field write).
/// A frame that does not decode counts from the undecodable message to its end, so the
/// estimate never falls short of what the room could apply before it notices the error.
pub fn update_bytes(frame: &[u8]) -> usize {
    /// An update holding nothing: no structs, an empty delete set.
    const EMPTY_UPDATE: usize = 2;
    let mut r = Reader::new(frame);
    let mut total = 0usize;
    while !r.is_empty() {
        let rest = r.remaining();
        let message = (|| -> Result<Option<usize>, tandem_engine::DecodeError> {
            match r.var_u64()? {
                MSG_SYNC => {
                    let sub = r.var_u64()?;
                    let payload = r.var_bytes()?;
                    let writes = matches!(sub, SYNC_STEP2 | SYNC_UPDATE);
                    Ok(Some(if writes && payload.len() > EMPTY_UPDATE {
                        payload.len()
                    } else {
                        0
                    }))
                }
                MSG_TANDEM => Ok(None),
                // Awareness and query-awareness change no document; anything else is refused
                // by the room before it could.
                MSG_AWARENESS => r.var_bytes().map(|_| Some(0)),
                MSG_AUTH => {
                    r.var_u64()?;
                    r.var_str().map(|_| Some(0))
                }
                MSG_QUERY_AWARENESS => Ok(Some(0)),
                _ => Ok(None),
            }
        })();
        match message {
            Ok(Some(n)) => total = total.saturating_add(n),
            Ok(None) | Err(_) => return total.saturating_add(rest),
        }
    }
    total
}

/// A token bucket: holds up to `burst` tokens, refills `per_second` tokens each second.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: Rate,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(rate: Rate, now: Instant) -> Self {
        TokenBucket {
            rate,
            tokens: f64::from(rate.burst),
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(self.rate.per_second))
            .min(f64::from(self.rate.burst));
        self.last = now.max(self.last);
    }

    /// Takes one token if there is one; `false` means the limit is breached.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket would be full at `now` (an idle bucket carries no state worth keeping).
    pub fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * f64::from(self.rate.per_second) >= f64::from(self.rate.burst)
    }
}

/// Limits new connections per IP address, with memory bounded by the number of recently active
/// addresses: buckets that have refilled completely are dropped when the map grows.
#[derive(Debug)]
pub struct IpRateLimiter {
    rate: Rate,
    buckets: DashMap<IpAddr, TokenBucket>,
    sweep_above: usize,
}

impl IpRateLimiter {
    /// Addresses tracked before idle buckets are swept.
    pub const DEFAULT_SWEEP_ABOVE: usize = 4096;

    /// A limiter giving each address `rate`.
    pub fn new(rate: Rate) -> Self {
        IpRateLimiter {
            rate,
            buckets: DashMap::new(),
            sweep_above: Self::DEFAULT_SWEEP_ABOVE,
        }
    }

    /// Records a connection attempt from `ip`; `false` means refuse it
    /// ([`LimitKind::ConnectionRate`]).
    pub fn check(&self, ip: IpAddr, now: Instant) -> bool {
        if self.buckets.len() > self.sweep_above {
            self.buckets.retain(|_, bucket| !bucket.is_full(now));
        }
        self.buckets
            .entry(ip)
            .or_insert_with(|| TokenBucket::new(self.rate, now))
            .try_take(now)
    }

    /// How many addresses are tracked.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn rate(per_second: u32, burst: u32) -> Rate {
        Rate { per_second, burst }
    }

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(rate(10, 3), t0);
        assert!(b.try_take(t0));
        assert!(b.try_take(t0));
        assert!(b.try_take(t0));
        assert!(!b.try_take(t0));
        // 10 per second: one token every 100 ms.
        assert!(!b.try_take(t0 + Duration::from_millis(99)));
        assert!(b.try_take(t0 + Duration::from_millis(100)));
        assert!(!b.try_take(t0 + Duration::from_millis(150)));
        // A long pause refills to the burst, no more.
        let later = t0 + Duration::from_secs(60);
        assert!(b.is_full(later));
        for _ in 0..3 {
            assert!(b.try_take(later));
        }
        assert!(!b.try_take(later));
    }

    #[test]
    fn time_going_backwards_does_not_refill() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = TokenBucket::new(rate(1, 1), t0);
        assert!(b.try_take(t0));
        assert!(!b.try_take(t0 - Duration::from_secs(5)));
        assert!(!b.try_take(t0 + Duration::from_millis(500)));
        assert!(b.try_take(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn ip_limiter_is_per_address_and_bounded() {
        let t0 = Instant::now();
        let mut limiter = IpRateLimiter::new(rate(1, 2));
        limiter.sweep_above = 10;
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(limiter.check(a, t0));
        assert!(limiter.check(a, t0));
        assert!(!limiter.check(a, t0));
        assert!(limiter.check(b, t0));
        for i in 0..100u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            limiter.check(ip, t0 + Duration::from_secs(u64::from(i) * 10));
        }
        assert!(limiter.tracked() <= 12, "{}", limiter.tracked());
    }

    #[test]
    fn update_bytes_counts_only_writes() {
        use tandem_engine::protocol::{awareness_frame, sync_frame};
        let update = [1u8, 1, 5, 0, 4, 1, 1, b't', 1, b'a', 0];
        assert_eq!(update_bytes(&sync_frame(2, &update)), update.len());
        assert_eq!(update_bytes(&sync_frame(1, &update)), update.len());
        // Step 1 and empty updates carry nothing.
        assert_eq!(update_bytes(&sync_frame(0, &[0])), 0);
        assert_eq!(update_bytes(&sync_frame(1, &[0, 0])), 0);
        assert_eq!(update_bytes(&awareness_frame(&[])), 0);
        assert_eq!(update_bytes(&[3]), 0);
        // Several messages in one frame add up.
        let mut two = sync_frame(2, &update).to_vec();
        two.extend_from_slice(&sync_frame(0, &[0]));
        two.extend_from_slice(&sync_frame(2, &update));
        assert_eq!(update_bytes(&two), 2 * update.len());
        // Field writes and undecodable tails count whole.
        assert_eq!(update_bytes(&[100, 1, 0, 0]), 4);
        let mut tail = sync_frame(0, &[0]).to_vec();
        tail.extend_from_slice(&[0, 2, 0x80]);
        assert_eq!(update_bytes(&tail), 3);
    }

    #[test]
    fn engine_errors_map_to_their_limits() {
        let metrics = Metrics::new();
        let close = protocol_error_close(
            &ProtocolError::AwarenessTooLarge {
                size: 9000,
                limit: 8192,
            },
            &metrics,
        );
        assert_eq!(close.code, 4413);
        assert!(close.reason.contains("9000"), "{close:?}");
        let close = protocol_error_close(&ProtocolError::TooManyPending(5000), &metrics);
        assert_eq!(close.code, LimitKind::PendingUpdates.close_code());
        assert_eq!(
            metrics.limit_breaches.get(LimitKind::AwarenessSize).get(),
            1
        );
        assert_eq!(
            metrics.limit_breaches.get(LimitKind::PendingUpdates).get(),
            1
        );
        // Errors that are not limits keep the engine's code and count nothing.
        let close = protocol_error_close(&ProtocolError::UnknownMessage(42), &metrics);
        assert_eq!(close.code, 4400);
        let total: u64 = LimitKind::ALL
            .iter()
            .map(|k| metrics.limit_breaches.get(*k).get())
            .sum();
        assert_eq!(total, 2);
    }

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
            assert!(k.close_code() >= 1000 && k.close_code() < 5000);
            assert!(k.http_status().is_client_error() || k.http_status().is_server_error());
            assert!(k.reason().len() < 123);
        }
    }
}
