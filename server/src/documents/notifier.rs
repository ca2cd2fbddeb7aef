//! The notifier: turns [`Candidate`]s into stored notifications for the users allowed to get
//! them, streams them live, and reminds assignees of due dates.
//!
//! **Who may be notified.** The server has no user directory; it remembers, durably, which
//! users were seen with a token reaching which documents ([`Notifier::seen`] records a
//! [`Grant`]: user, pattern, role, expiry, issue time; once per process and token shape). A
//! notification is made only for a user with a grant that reaches the document, has not
//! expired and is not revoked, at the moment it is made. Reading and streaming check again
//! (the edge filters by the reading token's pattern; revoked tokens are refused).
//!
//! **Durability.** Notifications are stored (with their `notification.created` webhook rows)
//! in one transaction, then pushed to this node's live streams. Streams resume from the store
//! by id, so a notification made on another node reaches a stream on this one at the next
//! resume; with one node every stream is live. Bounded: [`InboxLimits`] (newest 1,000 per
//! user, 90 days).
//!
//! **Due reminders** ([`Notifier::due_pass`], clock as a parameter) read the store's due-date
//! index, so documents that are not loaded are reminded too; each value once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::notify::Candidate;
use crate::access::auth::Auth;
use crate::access::token::Identity;
use crate::base::clock::now_ms;
use crate::base::name::DocPattern;
use crate::infra::config::NotifyConfig;
use crate::infra::metrics::Metrics;
use crate::infra::shutdown::Shutdown;
use crate::infra::store::{
    DueEntry, Grant, InboxLimits, NewNotification, Notification, Store, StoreError,
};
use crate::infra::webhook::Webhooks;

/// Jobs waiting for the notifier; beyond this, new ones are dropped (and logged).
const JOBS: usize = 4096;
/// Notifications queued for one live stream; a stream that falls behind is ended (it resumes
/// from its last id, without a gap).
pub const LIVE_QUEUE: usize = 256;
/// How often due dates are looked at.
const DUE_EVERY: Duration = Duration::from_millis(250);

/// Work for the notifier.
#[derive(Debug)]
pub enum Job {
    /// Notifications to make.
    Candidates(Vec<Candidate>),
    /// A document's due date changed.
    Due {
        /// The document.
        doc: String,
        /// Its due date now.
        entry: Option<DueEntry>,
    },
    /// A user's first connection to a document opened (`joined`) or last closed (`left`).
    Presence {
        /// The document.
        doc: String,
        /// `joined` or `left`.
        what: &'static str,
        /// The user.
        user: String,
    },
}

/// What a user's live inbox stream receives.
#[derive(Debug, Clone)]
pub enum InboxEvent {
    /// A new notification.
    Notification(Arc<Notification>),
    /// The unread count changed (notifications marked read).
    Unread(u64),
}

type Live = HashMap<String, Vec<mpsc::Sender<InboxEvent>>>;

struct Inner {
    jobs: mpsc::Sender<Job>,
    store: Arc<dyn Store>,
    auth: Auth,
    metrics: Metrics,
    config: NotifyConfig,
    webhooks: Webhooks,
    limits: InboxLimits,
    live: Mutex<Live>,
    /// Grants recorded by this process: (user, pattern, role) → expiry.
    seen: Mutex<HashMap<(String, String, String), Option<u64>>>,
}

/// The notifier handle. Cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier").finish_non_exhaustive()
    }
}

impl Notifier {
    /// A notifier and the receiver of its jobs (give it to [`Notifier::run`]).
    pub fn new(
        store: Arc<dyn Store>,
        auth: Auth,
        metrics: Metrics,
        config: NotifyConfig,
        webhooks: Webhooks,
    ) -> (Notifier, mpsc::Receiver<Job>) {
        let (jobs, rx) = mpsc::channel(JOBS);
        let inner = Inner {
            jobs,
            store,
            auth,
            metrics,
            config,
            webhooks,
            limits: InboxLimits::default(),
            live: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
        };
        (
            Notifier {
                inner: Arc::new(inner),
            },
            rx,
        )
    }

    /// The configuration (fields, reminder lead time).
    pub fn config(&self) -> &NotifyConfig {
        &self.inner.config
    }

    /// The webhooks (document tasks write their rows).
    pub fn webhooks(&self) -> &Webhooks {
        &self.inner.webhooks
    }

    /// Queues a job; a full queue drops it (logged): notifications are best effort beyond
    /// [`JOBS`] waiting, edits never wait for them.
    pub fn send(&self, job: Job) {
        if let Err(e) = self.inner.jobs.try_send(job) {
            tracing::warn!(cause = %e, "notifier queue full; a notification job was dropped");
        }
    }

    /// Remembers that `identity` holds a token reaching its pattern (stored once per
    /// process for each user, pattern and role, and again when a later expiry shows up).
    pub fn seen(&self, identity: &Identity) {
        let key = (
            identity.user.clone(),
            identity.pattern.to_string(),
            identity.role.as_str().to_owned(),
        );
        {
            let mut seen = self.inner.seen.lock().unwrap_or_else(|e| e.into_inner());
            match seen.get(&key) {
                Some(None) => return,
                Some(Some(exp)) if identity.expires_at.is_some_and(|e| e <= *exp) => return,
                _ => {}
            }
            seen.insert(key.clone(), identity.expires_at);
        }
        let grant = Grant {
            user: key.0,
            pattern: key.1,
            role: key.2,
            expires_at: identity.expires_at,
            issued_at: identity.issued_at,
        };
        let store = Arc::clone(&self.inner.store);
        tokio::spawn(async move {
            if let Err(e) = store.record_grant(grant).await {
                tracing::warn!(cause = %e, "could not record a grant");
            }
        });
    }

    /// Records `identity`'s grant now and waits until it is stored (a user opening their
    /// inbox stream is notifiable from the moment the stream answers).
    pub async fn remember(&self, identity: &Identity) -> Result<(), StoreError> {
        self.inner
            .store
            .record_grant(Grant {
                user: identity.user.clone(),
                pattern: identity.pattern.to_string(),
                role: identity.role.as_str().to_owned(),
                expires_at: identity.expires_at,
                issued_at: identity.issued_at,
            })
            .await
    }

    /// A live feed of `user`'s new notifications (ended when it falls behind).
    pub fn subscribe(&self, user: &str) -> mpsc::Receiver<InboxEvent> {
        let (tx, rx) = mpsc::channel(LIVE_QUEUE);
        let mut live = self.inner.live.lock().unwrap_or_else(|e| e.into_inner());
        let subs = live.entry(user.to_owned()).or_default();
        subs.retain(|s| !s.is_closed());
        subs.push(tx);
        rx
    }

    /// Whether `user` holds a grant reaching `doc` at `now_s` (unexpired, not revoked).
    pub async fn reaches(&self, user: &str, doc: &str, now_s: u64) -> Result<bool, StoreError> {
        let grants = self.inner.store.grants(user).await?;
        Ok(grants.iter().any(|g| {
            DocPattern::parse(&g.pattern).is_ok_and(|p| p.matches(doc))
                && g.expires_at.is_none_or(|e| e > now_s)
                && !self.inner.auth.is_revoked(&g.user, g.issued_at)
        }))
    }

    /// Runs the jobs and the due-date timer until `shutdown`.
    pub async fn run(self, mut jobs: mpsc::Receiver<Job>, shutdown: Shutdown) {
        let stop = shutdown.wait();
        tokio::pin!(stop);
        let mut due = tokio::time::interval(DUE_EVERY);
        due.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                job = jobs.recv() => match job {
                    Some(job) => self.job(job, now_ms()).await,
                    None => return,
                },
                _ = due.tick() => {
                    if let Err(e) = self.due_pass(now_ms()).await {
                        tracing::warn!(cause = %e, "due-date reminders failed");
                    }
                }
            }
        }
    }

    async fn job(&self, job: Job, now: u64) {
        let result = match job {
            Job::Candidates(candidates) => self.deliver(candidates, now).await.map(drop),
            Job::Due { doc, entry } => self.inner.store.set_due(&doc, entry).await,
            Job::Presence { doc, what, user } => {
                let events = self.inner.webhooks.presence_events(what, &user);
                if events.is_empty() {
                    Ok(())
                } else {
                    let r = self.inner.store.push_events(&doc, events).await;
                    self.inner.webhooks.wake();
                    r
                }
            }
        };
        if let Err(e) = result {
            tracing::warn!(cause = %e, "a notification job failed");
        }
    }

    /// Makes the notifications `candidates` stand for, at `now` (unix ms): recipients
    /// resolved (replies), filtered (never the author; only users reaching the document),
    /// stored with their webhook rows, then pushed to live streams. Returns what was stored.
    pub async fn deliver(
        &self,
        candidates: Vec<Candidate>,
        now: u64,
    ) -> Result<Vec<Notification>, StoreError> {
        let store = &self.inner.store;
        let mut items = Vec::new();
        for c in candidates {
            let from = c.from.clone();
            let recipients = match &c.user {
                Some(user) => vec![user.clone()],
                None => {
                    // A reply: everyone who started an earlier comment on the document.
                    let mut users = Vec::new();
                    for (field, author) in store.comments(&c.doc).await? {
                        if field != c.field && !users.contains(&author) {
                            users.push(author);
                        }
                    }
                    if let Some(author) = &from {
                        store.record_comment(&c.doc, &c.field, author, now).await?;
                    }
                    users
                }
            };
            for user in recipients {
                if from.as_deref() == Some(user.as_str())
                    || !self.reaches(&user, &c.doc, now / 1000).await?
                {
                    continue;
                }
                items.push(NewNotification {
                    user,
                    kind: c.kind.to_owned(),
                    doc: c.doc.clone(),
                    field: c.field.clone(),
                    from: from.clone(),
                    at: now,
                    excerpt: c.excerpt.clone(),
                });
            }
        }
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let mut events = Vec::new();
        for item in &items {
            let body = json!({
                "user": item.user, "type": item.kind, "doc": item.doc, "field": item.field,
                "from": item.from, "at": item.at, "excerpt": item.excerpt,
            });
            for e in self.inner.webhooks.notification_events(&body) {
                events.push((item.doc.clone(), e));
            }
        }
        let has_events = !events.is_empty();
        let stored = store
            .add_notifications(items, events, self.inner.limits)
            .await?;
        if has_events {
            self.inner.webhooks.wake();
        }
        self.inner.metrics.notifications.add(stored.len() as u64);
        self.publish(&stored);
        Ok(stored)
    }

    fn publish(&self, stored: &[Notification]) {
        for n in stored {
            self.publish_to(&n.new.user, InboxEvent::Notification(Arc::new(n.clone())));
        }
    }

    /// Tells `user`'s live streams how many notifications are unread now.
    pub fn unread_changed(&self, user: &str, unread: u64) {
        self.publish_to(user, InboxEvent::Unread(unread));
    }

    fn publish_to(&self, user: &str, event: InboxEvent) {
        let mut live = self.inner.live.lock().unwrap_or_else(|e| e.into_inner());
        let Some(subs) = live.get_mut(user) else {
            return;
        };
        // A stream that cannot take it is dropped: it ends and resumes from the store.
        subs.retain(|s| s.try_send(event.clone()).is_ok());
        if subs.is_empty() {
            live.remove(user);
        }
    }

    /// Reminds the assignees of due dates within `--remind-before` of `now` (unix ms), once
    /// per value. Returns how many reminders were stored.
    pub async fn due_pass(&self, now: u64) -> Result<usize, StoreError> {
        let lead = u64::try_from(self.inner.config.remind_before.as_millis()).unwrap_or(u64::MAX);
        let due = self
            .inner
            .store
            .due_before(now.saturating_add(lead), 100)
            .await?;
        let mut made = 0;
        for entry in due {
            if let Some(user) = &entry.assignee {
                let candidate = Candidate {
                    kind: "due",
                    user: Some(user.clone()),
                    doc: entry.doc.clone(),
                    field: self.inner.config.due_field.clone(),
                    from: None,
                    excerpt: format!("due {}", entry.value),
                };
                made += self.deliver(vec![candidate], now).await?.len();
            }
            self.inner
                .store
                .mark_reminded(&entry.doc, &entry.value)
                .await?;
        }
        Ok(made)
    }
}

/// A notification as the API and streams show it.
pub fn notification_json(n: &Notification) -> Value {
    json!({
        "id": n.id, "type": n.new.kind, "doc": n.new.doc, "field": n.new.field,
        "from": n.new.from, "at": n.new.at, "excerpt": n.new.excerpt, "read": n.read,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::token::Identity;
    use crate::base::role::Role;
    use crate::infra::config::AuthMode;
    use crate::infra::store::{open_embedded, ReadMark};

    fn identity(user: &str, pattern: &str, expires_at: Option<u64>) -> Identity {
        Identity {
            user: user.into(),
            name: user.into(),
            pattern: DocPattern::parse(pattern).unwrap(),
            role: Role::Write,
            expires_at,
            issued_at: 100,
        }
    }

    async fn notifier(dir: &std::path::Path, remind: Duration) -> (Notifier, Arc<dyn Store>) {
        let store = open_embedded(dir, &Metrics::new()).unwrap();
        let config = NotifyConfig {
            remind_before: remind,
            ..NotifyConfig::default()
        };
        let auth = Auth::new(AuthMode::Open);
        let (n, _rx) = Notifier::new(
            Arc::clone(&store),
            auth,
            Metrics::new(),
            config,
            Webhooks::default(),
        );
        (n, store)
    }

    /// Waits until the grant the notifier records in the background is stored.
    async fn grant(n: &Notifier, store: &Arc<dyn Store>, id: &Identity) {
        n.seen(id);
        while store.grants(&id.user).await.unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
    }

    fn mention(user: &str, doc: &str) -> Candidate {
        Candidate {
            kind: "mention",
            user: Some(user.into()),
            doc: doc.into(),
            field: "comment:1".into(),
            from: Some("ann".into()),
            excerpt: "hi".into(),
        }
    }

    #[tokio::test]
    async fn only_users_whose_grants_reach_the_document_are_notified() {
        let dir = tempfile::tempdir().unwrap();
        let (n, store) = notifier(dir.path(), Duration::from_secs(60)).await;
        grant(&n, &store, &identity("bob", "task-*", Some(2_000))).await;
        grant(&n, &store, &identity("cat", "other", None)).await;
        let mut live = n.subscribe("bob");
        let now = 1_000_000; // 1,000 s
        let made = n
            .deliver(
                vec![
                    mention("bob", "task-1"),
                    mention("cat", "task-1"),
                    mention("dan", "task-1"),
                    mention("ann", "task-1"),
                ],
                now,
            )
            .await
            .unwrap();
        assert_eq!(made.len(), 1);
        assert_eq!(made[0].new.user, "bob");
        match live.recv().await.unwrap() {
            InboxEvent::Notification(n) => assert_eq!(n.id, 1),
            other => panic!("{other:?}"),
        }
        // Expired grant: nothing.
        assert!(n
            .deliver(vec![mention("bob", "task-1")], 2_000_000)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(store.mark_read("bob", ReadMark::All).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn replies_go_to_earlier_commenters() {
        let dir = tempfile::tempdir().unwrap();
        let (n, store) = notifier(dir.path(), Duration::from_secs(60)).await;
        for u in ["ann", "bob"] {
            grant(&n, &store, &identity(u, "task-*", None)).await;
        }
        let reply = |from: &str, field: &str| Candidate {
            kind: "reply",
            user: None,
            doc: "task-1".into(),
            field: field.into(),
            from: Some(from.into()),
            excerpt: "x".into(),
        };
        assert!(n
            .deliver(vec![reply("ann", "comment:1")], 1)
            .await
            .unwrap()
            .is_empty());
        let made = n.deliver(vec![reply("bob", "comment:2")], 2).await.unwrap();
        assert_eq!(made.len(), 1);
        assert_eq!(
            (made[0].new.user.as_str(), made[0].new.kind.as_str()),
            ("ann", "reply")
        );
        let made = n.deliver(vec![reply("ann", "comment:3")], 3).await.unwrap();
        assert_eq!(made.len(), 1, "not to ann herself");
        assert_eq!(made[0].new.user, "bob");
    }

    #[tokio::test]
    async fn due_dates_are_reminded_once_per_value_within_the_lead_time() {
        let dir = tempfile::tempdir().unwrap();
        let (n, store) = notifier(dir.path(), Duration::from_secs(3600)).await;
        grant(&n, &store, &identity("bob", "task-*", None)).await;
        let day = 86_400_000;
        let entry = |value: &str, due_at: u64| DueEntry {
            doc: "task-1".into(),
            value: value.into(),
            due_at,
            assignee: Some("bob".into()),
        };
        store
            .set_due("task-1", Some(entry("d1", 10 * day)))
            .await
            .unwrap();
        assert_eq!(
            n.due_pass(10 * day - 3_600_001).await.unwrap(),
            0,
            "too early"
        );
        assert_eq!(n.due_pass(10 * day - 3_600_000).await.unwrap(), 1);
        assert_eq!(n.due_pass(10 * day).await.unwrap(), 0, "once per value");
        store
            .set_due("task-1", Some(entry("d2", 11 * day)))
            .await
            .unwrap();
        assert_eq!(
            n.due_pass(11 * day - 60_000).await.unwrap(),
            1,
            "a new value again"
        );
        let list = store.notifications("bob", None, 10).await.unwrap();
        assert_eq!(list[0].new.kind, "due");
        assert_eq!(list[0].new.from, None);
        assert_eq!(list[0].new.excerpt, "due d2");
    }
}
