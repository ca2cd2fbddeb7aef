//! The rate limiters that enforce two of the limits: [`TokenBucket`] limits messages per
//! connection, [`IpRateLimiter`] new connections per IP address. Both take `now` from the
//! caller, so tests need no clock.
//!
//! Where each limit ([`LimitKind`]) is enforced, and how a breach is answered:
//!
//! | limit | where | WebSocket | HTTP |
//! | --- | --- | --- | --- |
//! | frame size | the WebSocket codec (`edge::ws`; a compressed message both compressed and inflated, `edge::deflate`), the room | close 1009 | 413 |
//! | awareness state size | the room | the state dropped, a notice to extension clients | 413 |
//! | document size | the document task, before a frame carrying updates is applied | close 4507 | 507 |
//! | message rate | the WebSocket reader, one token per message | slowed: not read until the bucket refills | — |
//! | connection rate | before the upgrade, per peer IP | HTTP 429 | 429 |
//! | connections | before the upgrade | HTTP 503 | 503 |
//! | pending updates | the room | the waiting part dropped, the sender resynced (step 1) | 422 |
//!
//! Nothing here closes a connection for what a retry would fix: stock y-websocket clients never
//! come back after a close code in 4400-4499 (see `base::close`).
//!
//! The two admission limits answer before the WebSocket upgrade: a refused handshake costs the
//! server no socket state, which matters most exactly when these limits trip (a reconnect storm,
//! a flood from one address). Browsers cannot read the status of a failed handshake; the stock
//! y-websocket client retries with its usual back-off, which is the right reaction to both.
//! Every breach increments `tandem_limit_breaches_total{limit=...}`.
//!
//! [`LimitKind`]: crate::base::limit::LimitKind

use std::net::IpAddr;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::infra::config::Rate;

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

    /// Takes one token, going into debt when there is none. Returns how long the caller should
    /// wait before taking the next one: zero while tokens remain, else the time until the debt
    /// is paid (so a caller that waits that long is held to the sustained rate).
    pub fn take(&mut self, now: Instant) -> Duration {
        self.refill(now);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / f64::from(self.rate.per_second))
        }
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
    fn taking_in_debt_says_how_long_to_wait() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(rate(10, 2), t0);
        assert_eq!(b.take(t0), Duration::ZERO);
        assert_eq!(b.take(t0), Duration::ZERO);
        // In debt by one token at 10 per second: wait 100 ms.
        let wait = b.take(t0);
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        // Waiting that long pays the debt; the next take owes one more token.
        let later = t0 + wait;
        let wait = b.take(later);
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
    }
}
