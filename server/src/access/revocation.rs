//! Revoked users: who may no longer use tokens issued up to some time.
//!
//! [`Revocations`] is the record [`crate::access::auth::Auth`] consults on every
//! authentication; [`LocalRevocations`] keeps it in this process's memory (forgotten on
//! restart). A backend shared by several nodes implements the same trait; the node that hears
//! of a revocation made elsewhere closes its own connections of that user with
//! [`crate::access::auth::Auth::close_revoked`].

use dashmap::DashMap;

/// The revocation record.
pub trait Revocations: Send + Sync + std::fmt::Debug + 'static {
    /// Refuses `user`'s tokens issued at or before `at` (unix seconds). An earlier time never
    /// overrides a later one.
    fn revoke(&self, user: &str, at: u64);

    /// The latest revocation time of `user`, if any.
    fn revoked_at(&self, user: &str) -> Option<u64>;
}

/// Revocations held in memory, for one node.
#[derive(Debug, Default)]
pub struct LocalRevocations(DashMap<String, u64>);

impl Revocations for LocalRevocations {
    fn revoke(&self, user: &str, at: u64) {
        self.0
            .entry(user.to_owned())
            .and_modify(|t| *t = (*t).max(at))
            .or_insert(at);
    }

    fn revoked_at(&self, user: &str) -> Option<u64> {
        self.0.get(user).map(|at| *at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_revocation_wins() {
        let r = LocalRevocations::default();
        assert_eq!(r.revoked_at("u"), None);
        r.revoke("u", 10);
        r.revoke("u", 5);
        assert_eq!(r.revoked_at("u"), Some(10));
        r.revoke("u", 12);
        assert_eq!(r.revoked_at("u"), Some(12));
    }
}
