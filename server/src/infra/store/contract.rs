//! The [`Store`] contract as tests every backend runs (`sqlite.rs` and `postgres.rs` call
//! each function on a fresh store). Only what the trait shows is checked here; what needs a
//! backend's insides (group commit, raw SQL) stays in the backend's own tests.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use super::{
    Answer, Compacted, Compaction, HistoryMark, LogEntry, NewKey, NewUpdate, Sid, SidRange, Since,
    Snapshot, Store, StoreError,
};

/// A backend-specific step a contract test needs (raw SQL), as a boxed future.
pub type Hook<'a, T> = Box<dyn Fn(String) -> Pin<Box<dyn Future<Output = T> + Send + 'a>> + 'a>;

pub fn upd(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

pub fn texts(entries: &[LogEntry]) -> Vec<(Sid, String)> {
    entries
        .iter()
        .map(|e| (e.sid, String::from_utf8(e.update.to_vec()).unwrap()))
        .collect()
}

/// A compaction to `upto` with no checkpoint.
pub fn snap(upto: Sid, state: &str) -> Compaction {
    Compaction {
        upto,
        state: upd(state),
        authors: Vec::new(),
        checkpoint_at: None,
    }
}

pub fn new(s: &str) -> NewUpdate {
    NewUpdate {
        update: upd(s),
        author: "u".into(),
    }
}

pub fn answer(body: &str) -> Answer {
    Answer {
        status: 200,
        headers: vec![("etag".into(), format!("\"{body}\""))],
        body: upd(body),
    }
}

pub fn key(user: &str, key: &str, after: usize) -> NewKey {
    NewKey {
        user: user.into(),
        key: key.into(),
        fingerprint: [key.len() as u8; 32],
        answer: answer(key),
        after,
    }
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

pub async fn unknown_documents_load_as_none(store: &dyn Store) {
    assert_eq!(store.load("nope").await.unwrap(), None);
    assert_eq!(
        store.updates_since("nope", 0).await.unwrap(),
        Since::Updates {
            entries: vec![],
            last_sid: 0
        }
    );
    assert_eq!(
        store.updates_since("nope", 3).await.unwrap(),
        Since::Ahead { last_sid: 0 }
    );
    assert!(matches!(
        store.compact("nope", snap(1, "s")).await,
        Err(StoreError::UnknownDocument(_))
    ));
    assert_eq!(store.checkpoints("nope").await.unwrap(), vec![]);
    assert_eq!(store.checkpoint("nope", 1).await.unwrap(), None);
}

pub async fn appends_get_gap_free_sids_per_document(store: &dyn Store) {
    assert_eq!(store.append("a", upd("a1"), "u1").await.unwrap(), 1);
    assert_eq!(store.append("a", upd("a2"), "u2").await.unwrap(), 2);
    assert_eq!(store.append("b", upd("b1"), "u1").await.unwrap(), 1);
    let range = store
        .append_batch(
            "a",
            vec![
                NewUpdate {
                    update: upd("a3"),
                    author: "u1".into(),
                },
                NewUpdate {
                    update: upd("a4"),
                    author: "u3".into(),
                },
            ],
        )
        .await
        .unwrap();
    assert_eq!(range, SidRange { first: 3, last: 4 });
    assert!(matches!(
        store.append_batch("a", vec![]).await,
        Err(StoreError::EmptyAppend)
    ));
    let loaded = store.load("a").await.unwrap().unwrap();
    assert_eq!(loaded.last_sid, 4);
    assert_eq!(loaded.snapshot, None);
    assert_eq!(
        texts(&loaded.updates),
        vec![
            (1, "a1".into()),
            (2, "a2".into()),
            (3, "a3".into()),
            (4, "a4".into())
        ]
    );
    assert_eq!(loaded.updates[3].author, "u3");
    assert!(loaded.updates[0].at > 1_600_000_000_000);
    assert_eq!(loaded.log_bytes(), 8);
    assert_eq!(loaded.history, HistoryMark::default());
    let Since::Updates { entries, last_sid } = store.updates_since("a", 2).await.unwrap() else {
        panic!("expected updates");
    };
    assert_eq!(
        (texts(&entries), last_sid),
        (vec![(3, "a3".into()), (4, "a4".into())], 4)
    );
}

pub async fn compaction_replaces_the_log_with_a_snapshot(store: &dyn Store) {
    for i in 1..=10 {
        store
            .append("doc", upd(&format!("u{i}")), &format!("user{}", i % 3))
            .await
            .unwrap();
    }
    let done = store.compact("doc", snap(6, "state@6")).await.unwrap();
    assert_eq!(
        done,
        Compacted {
            removed: 6,
            checkpoint: None
        }
    );
    let loaded = store.load("doc").await.unwrap().unwrap();
    assert_eq!(
        loaded.snapshot,
        Some(Snapshot {
            sid: 6,
            state: upd("state@6")
        })
    );
    assert_eq!(
        texts(&loaded.updates),
        vec![
            (7, "u7".into()),
            (8, "u8".into()),
            (9, "u9".into()),
            (10, "u10".into())
        ]
    );
    assert_eq!(loaded.last_sid, 10);

    for older in [0, 5] {
        assert_eq!(
            store.updates_since("doc", older).await.unwrap(),
            Since::Compacted { snapshot_sid: 6 }
        );
    }
    let Since::Updates { entries, last_sid } = store.updates_since("doc", 6).await.unwrap() else {
        panic!("expected updates");
    };
    assert_eq!((entries.len(), last_sid), (4, 10));
    let Since::Updates { entries, .. } = store.updates_since("doc", 8).await.unwrap() else {
        panic!("expected updates");
    };
    assert_eq!(texts(&entries), vec![(9, "u9".into()), (10, "u10".into())]);
    assert_eq!(
        store.updates_since("doc", 10).await.unwrap(),
        Since::Updates {
            entries: vec![],
            last_sid: 10
        }
    );
    assert_eq!(
        store.updates_since("doc", 11).await.unwrap(),
        Since::Ahead { last_sid: 10 }
    );

    // Compacting everything leaves an empty log; sids still continue.
    store.compact("doc", snap(10, "state@10")).await.unwrap();
    let loaded = store.load("doc").await.unwrap().unwrap();
    assert_eq!((loaded.updates.len(), loaded.last_sid), (0, 10));
    assert_eq!(store.append("doc", upd("u11"), "u").await.unwrap(), 11);
}

pub async fn bad_compactions_are_refused_without_harm(store: &dyn Store) {
    for i in 1..=5 {
        store.append("doc", upd(&i.to_string()), "u").await.unwrap();
    }
    assert!(matches!(
        store.compact("doc", snap(6, "s")).await,
        Err(StoreError::CompactBeyondLog {
            upto: 6,
            last_sid: 5,
            ..
        })
    ));
    assert!(matches!(
        store.compact("doc", snap(0, "s")).await,
        Err(StoreError::CompactBehindSnapshot { upto: 0, .. })
    ));
    store.compact("doc", snap(3, "s3")).await.unwrap();
    assert!(matches!(
        store.compact("doc", snap(2, "s2")).await,
        Err(StoreError::CompactBehindSnapshot {
            upto: 2,
            snapshot_sid: 3,
            ..
        })
    ));
    let loaded = store.load("doc").await.unwrap().unwrap();
    assert_eq!(loaded.snapshot.unwrap().state, upd("s3"));
    assert_eq!(loaded.updates.len(), 2);
}

/// Checkpoints kept when asked, the history mark; leaves "doc" with a checkpoint at 12.
pub async fn checkpoints_are_kept_when_asked(store: &dyn Store) {
    for i in 1..=12u64 {
        store.append("doc", upd(&i.to_string()), "u").await.unwrap();
    }
    let with = |upto, state: &str, authors: &[&str], at| Compaction {
        upto,
        state: upd(state),
        authors: names(authors),
        checkpoint_at: at,
    };
    let done = store
        .compact("doc", with(2, "s2", &["bob", "cy"], Some(1_000)))
        .await
        .unwrap();
    assert_eq!(done.checkpoint, Some(2));
    // No checkpoint: the authors are kept for the next load.
    let done = store
        .compact("doc", with(5, "s5", &["ada"], None))
        .await
        .unwrap();
    assert_eq!(done.checkpoint, None);
    let loaded = store.load("doc").await.unwrap().unwrap();
    assert_eq!(
        loaded.history,
        HistoryMark {
            last_checkpoint: Some((2, 1_000)),
            authors: names(&["ada"]),
        }
    );
    store
        .compact("doc", with(12, "s12", &["ada", "bob"], Some(2_000)))
        .await
        .unwrap();
    let list = store.checkpoints("doc").await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!((list[0].sid, list[0].at), (2, 1_000));
    assert_eq!(list[0].authors, names(&["bob", "cy"]));
    assert_eq!(
        (list[1].sid, list[1].authors.clone()),
        (12, names(&["ada", "bob"]))
    );
    assert_eq!(store.checkpoint("doc", 12).await.unwrap(), Some(upd("s12")));
    assert_eq!(store.checkpoint("doc", 2).await.unwrap(), Some(upd("s2")));
    assert_eq!(store.checkpoint("doc", 5).await.unwrap(), None);
    let loaded = store.load("doc").await.unwrap().unwrap();
    assert_eq!(
        loaded.history,
        HistoryMark {
            last_checkpoint: Some((12, 2_000)),
            authors: Vec::new(),
        }
    );
}

/// Keys stored with their batch; leaves records of ann's "a", "bb", "ccc" on "doc" and "a" on
/// "fresh" (never written).
pub async fn keys_are_stored_with_their_batch(store: &dyn Store) {
    let range = store
        .append_with_keys(
            "doc",
            vec![new("1"), new("2")],
            vec![key("ann", "a", 1), key("ann", "bb", 2)],
        )
        .await
        .unwrap();
    assert_eq!(range, SidRange { first: 1, last: 2 });
    // Keys only: a request that changed nothing. Its sid is the last one before it, and a
    // document never written is not created by it.
    let range = store
        .append_with_keys("doc", vec![], vec![key("ann", "ccc", 0)])
        .await
        .unwrap();
    assert_eq!(range, SidRange { first: 3, last: 2 });
    let range = store
        .append_with_keys("fresh", vec![], vec![key("ann", "a", 0)])
        .await
        .unwrap();
    assert_eq!(range, SidRange { first: 1, last: 0 });
    assert_eq!(store.load("fresh").await.unwrap(), None);
    assert!(matches!(
        store.append_with_keys("doc", vec![], vec![]).await,
        Err(StoreError::EmptyAppend)
    ));
    check_keys_of_keys_are_stored_with_their_batch(store).await;
}

/// What [`keys_are_stored_with_their_batch`] left (also after a reopen).
pub async fn check_keys_of_keys_are_stored_with_their_batch(store: &dyn Store) {
    let a = store
        .idempotency_key("doc", "ann", "a")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((a.sid, a.fingerprint, a.answer), (1, [1; 32], answer("a")));
    let sids = [("doc", "bb", 2), ("doc", "ccc", 2), ("fresh", "a", 0)];
    for (doc, k, sid) in sids {
        let record = store.idempotency_key(doc, "ann", k).await.unwrap().unwrap();
        assert_eq!(record.sid, sid, "{doc} {k}");
        assert!(record.at > 1_600_000_000_000);
    }
    // Keys are per user and per document.
    assert_eq!(
        store.idempotency_key("doc", "bob", "a").await.unwrap(),
        None
    );
    assert_eq!(
        store.idempotency_key("other", "ann", "a").await.unwrap(),
        None
    );
    assert_eq!(store.load("doc").await.unwrap().unwrap().last_sid, 2);
}

pub async fn a_live_key_refuses_its_append_and_only_its_append(store: &dyn Store) {
    store
        .append_with_keys("doc", vec![new("1")], vec![key("ann", "k", 1)])
        .await
        .unwrap();
    store
        .append_with_keys("new", vec![], vec![key("ann", "k", 0)])
        .await
        .unwrap();
    let refused = store
        .append_with_keys(
            "doc",
            vec![new("dup")],
            vec![key("ann", "fresh", 1), key("ann", "k", 1)],
        )
        .await;
    assert!(
        matches!(refused, Err(StoreError::KeyInUse { ref key, .. }) if key == "k"),
        "{refused:?}"
    );
    // The same key twice in one batch: the second finds the first.
    let twice = store
        .append_with_keys(
            "doc",
            vec![new("twice")],
            vec![key("cy", "t", 1), key("cy", "t", 1)],
        )
        .await;
    assert!(
        matches!(twice, Err(StoreError::KeyInUse { ref key, .. }) if key == "t"),
        "{twice:?}"
    );
    assert_eq!(store.idempotency_key("doc", "cy", "t").await.unwrap(), None);
    assert_eq!(
        store.append_batch("doc", vec![new("2")]).await.unwrap(),
        SidRange { first: 2, last: 2 }
    );
    assert_eq!(
        store
            .append_with_keys("doc", vec![new("3")], vec![key("ann", "fresh", 1)])
            .await
            .unwrap(),
        SidRange { first: 3, last: 3 }
    );
    // The document's row would be created by the refused append: gone with it.
    assert!(matches!(
        store
            .append_with_keys("new", vec![new("dup")], vec![key("ann", "k", 1)])
            .await,
        Err(StoreError::KeyInUse { .. })
    ));
    assert_eq!(store.load("new").await.unwrap(), None);
    assert_eq!(
        store.append_batch("new", vec![new("n1")]).await.unwrap(),
        SidRange { first: 1, last: 1 }
    );
    let loaded = store.load("doc").await.unwrap().unwrap();
    assert_eq!(
        texts(&loaded.updates),
        vec![(1, "1".into()), (2, "2".into()), (3, "3".into())]
    );
    // "fresh" is the record of the append that got it in, not of the refused one.
    let fresh = store.idempotency_key("doc", "ann", "fresh").await.unwrap();
    assert_eq!(fresh.unwrap().sid, 3);
    let loaded = store.load("new").await.unwrap().unwrap();
    assert_eq!(texts(&loaded.updates), vec![(1, "n1".into())]);
}

/// `store` keeps records 60 s, at most 4 of them and 35 bytes. `count` says how many records
/// are stored (expired or not); `backdate` makes bob's record of the key it is given older
/// than the TTL.
pub async fn expired_keys_are_free_again_and_the_oldest_keys_are_evicted(
    store: &dyn Store,
    count: Hook<'_, u64>,
    backdate: Hook<'_, ()>,
) {
    // Answers of "k0".."k5" take 10 bytes each; of "0".."5", 8.
    assert_eq!((answer("k0").size(), answer("0").size()), (10, 8));
    for i in 0..6 {
        store
            .append_with_keys("doc", vec![new("x")], vec![key("ann", &format!("k{i}"), 1)])
            .await
            .unwrap();
    }
    // 35 bytes hold three of these answers (the tighter bound here): the newest three are
    // kept.
    let mut kept = Vec::new();
    for i in 0..6 {
        let k = format!("k{i}");
        if store
            .idempotency_key("doc", "ann", &k)
            .await
            .unwrap()
            .is_some()
        {
            kept.push(k);
        }
    }
    assert_eq!(kept, ["k3", "k4", "k5"]);
    assert_eq!(count(String::new()).await, 3);
    // Four short keys fit in the bytes but not in the count.
    for i in 0..6 {
        store
            .append_with_keys("doc", vec![], vec![key("bob", &i.to_string(), 0)])
            .await
            .unwrap();
    }
    assert_eq!(count(String::new()).await, 4);
    assert!(store
        .idempotency_key("doc", "bob", "5")
        .await
        .unwrap()
        .is_some());
    assert!(store
        .idempotency_key("doc", "bob", "1")
        .await
        .unwrap()
        .is_none());
    // A record older than the TTL is not seen, and its key can be stored again.
    backdate("5".to_owned()).await;
    assert_eq!(
        store.idempotency_key("doc", "bob", "5").await.unwrap(),
        None
    );
    let mut again = key("bob", "5", 1);
    again.answer = answer("again");
    store
        .append_with_keys("doc", vec![new("y")], vec![again])
        .await
        .unwrap();
    let record = store
        .idempotency_key("doc", "bob", "5")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((record.sid, record.answer), (7, answer("again")));
    assert!(count(String::new()).await <= 4);
}

/// What a lock guard carries and how it appends. (Whether it excludes other writers is the
/// shared backend's own test.)
pub async fn a_lock_reads_what_was_committed_and_appends_within_it(store: &dyn Store) {
    // A document never written: nothing, and a bare release leaves it never written.
    let guard = store.lock("doc", 0).await.unwrap();
    assert_eq!(
        guard.since(),
        &Since::Updates {
            entries: vec![],
            last_sid: 0
        }
    );
    assert_eq!(
        guard.append_with_keys(vec![], vec![]).await.unwrap(),
        SidRange { first: 1, last: 0 }
    );
    assert_eq!(store.load("doc").await.unwrap(), None);
    assert_eq!(store.last_sids(&names(&["doc"])).await.unwrap(), vec![0]);
    let guard = store.lock("doc", 2).await.unwrap();
    assert_eq!(guard.since(), &Since::Ahead { last_sid: 0 });
    drop(guard);

    store
        .append_batch("doc", vec![new("1"), new("2"), new("3")])
        .await
        .unwrap();
    let guard = store.lock("doc", 1).await.unwrap();
    let Since::Updates { entries, last_sid } = guard.since() else {
        panic!("expected updates, got {:?}", guard.since());
    };
    assert_eq!(
        (texts(entries), *last_sid),
        (vec![(2, "2".into()), (3, "3".into())], 3)
    );
    assert_eq!(
        guard
            .append_with_keys(vec![new("4")], vec![key("ann", "four", 1)])
            .await
            .unwrap(),
        SidRange { first: 4, last: 4 }
    );
    assert_eq!(
        store
            .idempotency_key("doc", "ann", "four")
            .await
            .unwrap()
            .unwrap()
            .sid,
        4
    );

    let guard = store.lock("doc", 9).await.unwrap();
    assert_eq!(guard.since(), &Since::Ahead { last_sid: 4 });
    assert_eq!(
        guard.append_with_keys(vec![], vec![]).await.unwrap(),
        SidRange { first: 5, last: 4 }
    );

    store.compact("doc", snap(2, "s2")).await.unwrap();
    let guard = store.lock("doc", 1).await.unwrap();
    assert_eq!(guard.since(), &Since::Compacted { snapshot_sid: 2 });
    // Keys only, under the lock: the record names the last sid.
    assert_eq!(
        guard
            .append_with_keys(vec![], vec![key("ann", "stale", 0)])
            .await
            .unwrap(),
        SidRange { first: 5, last: 4 }
    );
    assert_eq!(
        store
            .idempotency_key("doc", "ann", "stale")
            .await
            .unwrap()
            .unwrap()
            .sid,
        4
    );
    let guard = store.lock("doc", 2).await.unwrap();
    assert_eq!(
        guard.append_with_keys(vec![], vec![]).await.unwrap(),
        SidRange { first: 5, last: 4 }
    );

    // A live key refuses the guard's append whole; the lock is released all the same.
    let guard = store.lock("doc", 4).await.unwrap();
    assert!(matches!(
        guard
            .append_with_keys(vec![new("dup")], vec![key("ann", "four", 1)])
            .await,
        Err(StoreError::KeyInUse { .. })
    ));
    // A dropped guard writes nothing.
    drop(store.lock("doc", 4).await.unwrap());
    assert_eq!(store.append("doc", upd("5"), "u").await.unwrap(), 5);
    let loaded = store.load("doc").await.unwrap().unwrap();
    assert_eq!(
        texts(&loaded.updates),
        vec![(3, "3".into()), (4, "4".into()), (5, "5".into())]
    );
}

pub async fn last_sids_answer_in_order(store: &dyn Store) {
    assert_eq!(store.last_sids(&[]).await.unwrap(), Vec::<Sid>::new());
    store
        .append_batch("a", vec![new("1"), new("2")])
        .await
        .unwrap();
    store.append("b", upd("1"), "u").await.unwrap();
    store.compact("a", snap(2, "s")).await.unwrap();
    assert_eq!(
        store
            .last_sids(&names(&["b", "nope", "a", "b"]))
            .await
            .unwrap(),
        vec![1, 0, 2, 1]
    );
}

/// Records revocations; leaves ann at 200 and bob at 50.
pub async fn revocations_keep_the_latest_time_per_user(store: &dyn Store) {
    assert_eq!(store.revocations().await.unwrap(), vec![]);
    store.record_revocation("ann", 100).await.unwrap();
    store.record_revocation("bob", 50).await.unwrap();
    // An earlier time does not undo a later one.
    store.record_revocation("ann", 90).await.unwrap();
    let mut all = store.revocations().await.unwrap();
    all.sort();
    assert_eq!(all, vec![("ann".into(), 100), ("bob".into(), 50)]);
    store.record_revocation("ann", 200).await.unwrap();
    check_revocations(store).await;
}

/// What [`revocations_keep_the_latest_time_per_user`] left (also after a reopen).
pub async fn check_revocations(store: &dyn Store) {
    let mut all = store.revocations().await.unwrap();
    all.sort();
    assert_eq!(all, vec![("ann".into(), 200), ("bob".into(), 50)]);
}

pub async fn a_closed_store_refuses_everything(store: &dyn Store) {
    store.append("doc", upd("1"), "u").await.unwrap();
    store.flush().await.unwrap();
    store.close().await.unwrap();
    store.close().await.unwrap();
    assert!(matches!(
        store.append("doc", upd("late"), "u").await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(store.load("doc").await, Err(StoreError::Closed)));
    assert!(matches!(store.flush().await, Err(StoreError::Closed)));
    assert!(matches!(
        store.lock("doc", 0).await.map(|_| ()),
        Err(StoreError::Closed)
    ));
    assert!(matches!(store.revocations().await, Err(StoreError::Closed)));
}

fn note(user: &str, kind: &str, at: u64) -> super::NewNotification {
    super::NewNotification {
        user: user.into(),
        kind: kind.into(),
        doc: "task-1".into(),
        field: "comment:1".into(),
        from: Some("ann".into()),
        at,
        excerpt: format!("{kind} at {at}"),
    }
}

fn event(endpoint: &str, payload: &str) -> super::OutboxEvent {
    super::OutboxEvent {
        endpoint: endpoint.into(),
        kind: super::inbox::BATCH.into(),
        payload: upd(payload),
    }
}

/// Notifications get increasing ids per user, page newest first, resume after an id, count
/// unread, are marked read by id or all, and are bounded per user.
pub async fn notifications_are_per_user_paged_and_bounded(store: &dyn Store) {
    use super::{InboxLimits, ReadMark};
    let now = super::inbox::tests_now();
    let limits = InboxLimits {
        per_user: 3,
        ttl_ms: 60_000,
    };
    let added = store
        .add_notifications(
            vec![note("bob", "mention", now), note("cat", "reply", now)],
            Vec::new(),
            limits,
        )
        .await
        .unwrap();
    assert_eq!(
        added.iter().map(|n| n.id).collect::<Vec<_>>(),
        [1, 1],
        "ids count per user"
    );
    for i in 1..=3 {
        store
            .add_notifications(vec![note("bob", "assigned", now + i)], Vec::new(), limits)
            .await
            .unwrap();
    }
    // Four made, three kept: the oldest went.
    let page = store.notifications("bob", None, 2).await.unwrap();
    assert_eq!(page.iter().map(|n| n.id).collect::<Vec<_>>(), [4, 3]);
    let rest = store.notifications("bob", Some(3), 10).await.unwrap();
    assert_eq!(rest.iter().map(|n| n.id).collect::<Vec<_>>(), [2]);
    assert_eq!(rest[0].new, note("bob", "assigned", now + 1));
    let after = store.notifications_after("bob", 2, 10).await.unwrap();
    assert_eq!(after.iter().map(|n| n.id).collect::<Vec<_>>(), [3, 4]);
    assert_eq!(store.unread("bob").await.unwrap(), 3);
    assert_eq!(
        store
            .mark_read("bob", ReadMark::Ids(vec![4, 1]))
            .await
            .unwrap(),
        2
    );
    assert!(store.notifications("bob", None, 1).await.unwrap()[0].read);
    assert_eq!(store.mark_read("bob", ReadMark::All).await.unwrap(), 0);
    assert_eq!(
        store.unread("cat").await.unwrap(),
        1,
        "other users untouched"
    );
    // Older than the retention: dropped when the user's next notification is added.
    store
        .add_notifications(vec![note("cat", "due", now + 100_000)], Vec::new(), limits)
        .await
        .unwrap();
    let cat = store.notifications("cat", None, 10).await.unwrap();
    assert_eq!(cat.iter().map(|n| n.id).collect::<Vec<_>>(), [2]);
}

/// Grants, comment authors and the due-date index.
pub async fn grants_comments_and_due_dates_are_kept(store: &dyn Store) {
    use super::{DueEntry, Grant};
    let grant = |exp: Option<u64>| Grant {
        user: "bob".into(),
        pattern: "task-*".into(),
        role: "editor".into(),
        expires_at: exp,
        issued_at: 10,
    };
    store.record_grant(grant(Some(100))).await.unwrap();
    store.record_grant(grant(Some(50))).await.unwrap();
    assert_eq!(store.grants("bob").await.unwrap(), [grant(Some(100))]);
    assert!(store.grants("cat").await.unwrap().is_empty());

    store
        .record_comment("d", "comment:1", "ann", 1)
        .await
        .unwrap();
    store
        .record_comment("d", "comment:2", "bob", 2)
        .await
        .unwrap();
    store
        .record_comment("d", "comment:1", "bob", 3)
        .await
        .unwrap();
    assert_eq!(
        store.comments("d").await.unwrap(),
        [
            ("comment:1".to_owned(), "ann".to_owned()),
            ("comment:2".to_owned(), "bob".to_owned())
        ]
    );

    let due = |value: &str, at: u64| DueEntry {
        doc: "d".into(),
        value: value.into(),
        due_at: at,
        assignee: Some("bob".into()),
    };
    store.set_due("d", Some(due("v1", 1000))).await.unwrap();
    assert!(store.due_before(999, 10).await.unwrap().is_empty());
    assert_eq!(store.due_before(1000, 10).await.unwrap(), [due("v1", 1000)]);
    store.mark_reminded("d", "v1").await.unwrap();
    assert!(store.due_before(5000, 10).await.unwrap().is_empty());
    // The same value again stays reminded; a new value is reminded again.
    store.set_due("d", Some(due("v1", 1000))).await.unwrap();
    assert!(store.due_before(5000, 10).await.unwrap().is_empty());
    store.set_due("d", Some(due("v2", 2000))).await.unwrap();
    assert_eq!(store.due_before(5000, 10).await.unwrap(), [due("v2", 2000)]);
    store.set_due("d", None).await.unwrap();
    assert!(store.due_before(5000, 10).await.unwrap().is_empty());
}

/// Outbox rows are written with their batch, claimed one head per (endpoint, doc) in order,
/// merged while never attempted, retried, killed and replayed.
pub async fn the_outbox_keeps_order_per_document(store: &dyn Store) {
    use super::DeliveryState;
    let range = store
        .append_full(
            "d",
            vec![new("1")],
            Vec::new(),
            vec![event("http://a", "p1")],
        )
        .await
        .unwrap();
    assert_eq!(range, SidRange { first: 1, last: 1 });
    store
        .append_full(
            "d",
            vec![new("2"), new("3")],
            Vec::new(),
            vec![event("http://a", "p2")],
        )
        .await
        .unwrap();
    store
        .append_full(
            "e",
            vec![new("1")],
            Vec::new(),
            vec![event("http://a", "e1")],
        )
        .await
        .unwrap();
    assert_eq!(store.outbox_counts().await.unwrap(), (3, 0));
    let now = 1 << 50;
    let claimed = store.outbox_claim(now, now + 1000, 10).await.unwrap();
    assert_eq!(claimed.len(), 2, "one head per document");
    let d = &claimed[0];
    assert_eq!((d.doc.as_str(), d.first_sid, d.last_sid), ("d", 1, 3));
    assert_eq!(&d.payload[..], b"p1\np2", "never-attempted batches merge");
    // Leased: not claimed again until the lease ends.
    assert!(store
        .outbox_claim(now, now + 1000, 10)
        .await
        .unwrap()
        .is_empty());
    store
        .outbox_failed(d.id, now + 10, "503", false)
        .await
        .unwrap();
    store.outbox_done(claimed[1].id).await.unwrap();
    store
        .append_full(
            "d",
            vec![new("4")],
            Vec::new(),
            vec![event("http://a", "p4")],
        )
        .await
        .unwrap();
    assert!(store
        .outbox_claim(now, now + 1000, 10)
        .await
        .unwrap()
        .is_empty());
    let again = store.outbox_claim(now + 10, now + 1000, 10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].id, again[0].attempts), (d.id, 1));
    assert_eq!(
        &again[0].payload[..],
        b"p1\np2",
        "an attempted row is not merged into"
    );
    store
        .outbox_failed(d.id, now + 20, "gone", true)
        .await
        .unwrap();
    let dead = store.outbox_list(DeliveryState::Dead, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].last_error.as_deref(), Some("gone"));
    // The dead row no longer holds the document back.
    let next = store.outbox_claim(now + 20, now + 1000, 10).await.unwrap();
    assert_eq!((next[0].first_sid, &next[0].payload[..]), (4, &b"p4"[..]));
    store.outbox_done(next[0].id).await.unwrap();
    assert_eq!(store.outbox_counts().await.unwrap(), (0, 1));
    assert!(store.outbox_replay(d.id, now + 30).await.unwrap());
    assert!(!store.outbox_replay(9999, now).await.unwrap());
    let replayed = store.outbox_claim(now + 30, now + 1000, 10).await.unwrap();
    assert_eq!((replayed[0].id, replayed[0].attempts), (d.id, 0));
    // Events not tied to a batch, and notifications with their events in one transaction.
    store
        .push_events("p", vec![event("http://a", "joined")])
        .await
        .unwrap();
    store
        .add_notifications(
            vec![note("bob", "mention", 1)],
            vec![("task-1".into(), event("http://b", "n"))],
            super::InboxLimits::default(),
        )
        .await
        .unwrap();
    let pending = store.outbox_list(DeliveryState::Pending, 10).await.unwrap();
    let docs: Vec<&str> = pending.iter().map(|r| r.doc.as_str()).collect();
    assert_eq!(docs, ["d", "p", "task-1"]);
}
