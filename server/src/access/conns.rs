//! Live connections: who may open one, and who holds which.
//!
//! [`Connections::admit`] is asked before a long-lived connection (a WebSocket, an event stream)
//! is accepted. It enforces `--connection-rate`/`--connection-burst` per peer IP and
//! `--max-connections` overall, and hands out an [`Admission`]: one of the `--max-connections`
//! slots, given back when dropped. The count is exact (an atomic reservation, not a gauge read
//! and compared), so a burst of simultaneous handshakes cannot overshoot the limit.
//!
//! [`Connections::register`] files an open connection under its user with a close handle (a
//! `oneshot::Sender<Close>` the connection's loop selects on). [`Connections::close_user`] fires
//! the handles of one user's connections: that is how `POST /admin/revoke` reaches live
//! WebSockets and event streams. A [`Registration`] leaves the registry when dropped.
//!
//! [`super::auth::Auth`] owns the server's `Connections`; routes reach them through
//! [`super::auth::Auth::admit`] and [`super::auth::Auth::register`], which also close the race
//! between a revocation and a connection registering at the same moment.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use dashmap::DashMap;
use tokio::sync::oneshot;

use super::limits::IpRateLimiter;
use crate::base::close::Close;
use crate::base::limit::LimitKind;
use crate::infra::config::Limits;

/// The live connections of one server. Cheap to clone.
#[derive(Clone, Default)]
pub struct Connections {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Slots taken among `--max-connections`.
    open: AtomicUsize,
    /// Per-IP connection rate; created on first use from the limits given to `admit` (the
    /// configuration never changes while the server runs).
    ip: OnceLock<IpRateLimiter>,
    /// user id -> registration id -> the connection.
    by_user: DashMap<String, HashMap<u64, Registered>>,
    next_id: AtomicU64,
}

struct Registered {
    issued_at: u64,
    close: oneshot::Sender<Close>,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("open", &self.open())
            .field("users", &self.inner.by_user.len())
            .finish()
    }
}

/// One of the `--max-connections` slots; given back when dropped. Hold it for as long as the
/// connection it admitted is open.
#[must_use = "the slot is given back as soon as the admission is dropped"]
pub struct Admission {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Admission")
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.inner.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection filed under its user; leaves the registry when dropped.
#[must_use = "the connection leaves the registry as soon as this is dropped"]
pub struct Registration {
    inner: Arc<Inner>,
    user: String,
    id: u64,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("user", &self.user)
            .field("id", &self.id)
            .finish()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let by_user = &self.inner.by_user;
        let now_empty = match by_user.get_mut(&self.user) {
            Some(mut conns) => {
                conns.remove(&self.id);
                conns.is_empty()
            }
            None => false,
        };
        if now_empty {
            by_user.remove_if(&self.user, |_, conns| conns.is_empty());
        }
    }
}

impl Connections {
    /// No connections yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Admits a new connection from `ip` at `now`, or says which limit refuses it:
    /// [`LimitKind::ConnectionRate`] when `ip` connects faster than `limits.connection_rate`,
    /// [`LimitKind::MaxConnections`] when `limits.max_connections` slots are taken. The caller
    /// counts the breach and answers it (see [`LimitKind::http_status`]).
    pub fn admit(&self, ip: IpAddr, limits: &Limits, now: Instant) -> Result<Admission, LimitKind> {
        let rate = self
            .inner
            .ip
            .get_or_init(|| IpRateLimiter::new(limits.connection_rate));
        if !rate.check(ip, now) {
            return Err(LimitKind::ConnectionRate);
        }
        let max = limits.max_connections;
        self.inner
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| LimitKind::MaxConnections)?;
        Ok(Admission {
            inner: Arc::clone(&self.inner),
        })
    }

    /// Slots taken now.
    pub fn open(&self) -> usize {
        self.inner.open.load(Ordering::Acquire)
    }

    /// Files a connection of `user`, made with a token issued at `issued_at` (unix seconds),
    /// under a close handle. [`Connections::close_user`] fires the handle at most once.
    pub fn register(
        &self,
        user: &str,
        issued_at: u64,
        close: oneshot::Sender<Close>,
    ) -> Registration {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        self.inner
            .by_user
            .entry(user.to_owned())
            .or_default()
            .insert(id, Registered { issued_at, close });
        Registration {
            inner: Arc::clone(&self.inner),
            user: user.to_owned(),
            id,
        }
    }

    /// Closes every registered connection of `user` whose token was issued at or before
    /// `issued_at_or_before`, with `close`. Returns how many were told.
    pub fn close_user(&self, user: &str, issued_at_or_before: u64, close: &Close) -> usize {
        let taken: Vec<Registered> = match self.inner.by_user.get_mut(user) {
            Some(mut conns) => {
                let ids: Vec<u64> = conns
                    .iter()
                    .filter(|(_, live)| live.issued_at <= issued_at_or_before)
                    .map(|(id, _)| *id)
                    .collect();
                ids.iter().filter_map(|id| conns.remove(id)).collect()
            }
            None => Vec::new(),
        };
        // Fired outside the map's lock. A connection that already ended is not counted.
        let mut told = 0;
        for live in taken {
            if live.close.send(close.clone()).is_ok() {
                told += 1;
            }
        }
        told
    }

    /// Registered connections of `user`.
    pub fn of_user(&self, user: &str) -> usize {
        self.inner.by_user.get(user).map_or(0, |conns| conns.len())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::infra::config::{Config, Rate};

    fn limits(max_connections: usize, per_second: u32, burst: u32) -> Limits {
        Limits {
            max_connections,
            connection_rate: Rate { per_second, burst },
            ..Config::default_for("/tmp/unused").limits
        }
    }

    #[test]
    fn slots_are_exact_and_given_back() {
        let conns = Connections::new();
        let l = limits(2, 1000, 1000);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        let a = conns.admit(ip, &l, t0).unwrap();
        let b = conns.admit(ip, &l, t0).unwrap();
        assert_eq!(conns.open(), 2);
        assert_eq!(
            conns.admit(ip, &l, t0).unwrap_err(),
            LimitKind::MaxConnections
        );
        drop(a);
        let c = conns.admit(ip, &l, t0).unwrap();
        drop((b, c));
        assert_eq!(conns.open(), 0);
    }

    #[test]
    fn rate_is_per_address() {
        let conns = Connections::new();
        let l = limits(100, 1, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        let _held: Vec<Admission> = (0..2).map(|_| conns.admit(a, &l, t0).unwrap()).collect();
        assert_eq!(
            conns.admit(a, &l, t0).unwrap_err(),
            LimitKind::ConnectionRate
        );
        assert!(conns.admit(b, &l, t0).is_ok());
        assert!(conns.admit(a, &l, t0 + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn closing_a_user_fires_only_their_older_connections() {
        let conns = Connections::new();
        let (tx1, mut rx1) = oneshot::channel();
        let (tx2, mut rx2) = oneshot::channel();
        let (tx3, mut rx3) = oneshot::channel();
        let (tx4, mut rx4) = oneshot::channel();
        let r1 = conns.register("mallory", 100, tx1);
        let _r2 = conns.register("mallory", 200, tx2);
        let _r3 = conns.register("alice", 100, tx3);
        let _r4 = conns.register("mallory", 150, tx4);
        assert_eq!(conns.of_user("mallory"), 3);
        let close = Close::new(4401, "token revoked");
        assert_eq!(conns.close_user("mallory", 150, &close), 2);
        assert_eq!(rx1.try_recv().unwrap(), close);
        assert_eq!(rx4.try_recv().unwrap(), close);
        assert!(rx2.try_recv().is_err());
        assert!(rx3.try_recv().is_err());
        assert_eq!(conns.of_user("mallory"), 1);
        // Fired handles are gone: a second revocation tells no one twice.
        assert_eq!(conns.close_user("mallory", 150, &close), 0);
        drop(r1);
        assert_eq!(conns.of_user("mallory"), 1);
    }

    #[test]
    fn registrations_leave_when_dropped() {
        let conns = Connections::new();
        let (tx, _rx) = oneshot::channel();
        let r = conns.register("u", 1, tx);
        assert_eq!(conns.of_user("u"), 1);
        drop(r);
        assert_eq!(conns.of_user("u"), 0);
        assert_eq!(conns.inner.by_user.len(), 0);
    }
}
