//! The document registry against a scripted store: a failed load never creates or stores
//! anything, and concurrent first connections share one load.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tandem_engine::protocol::{ConnInfo, Role};
use tandem_server::documents::{outbox, ConnSink, JoinError, Registry};
use tandem_server::infra::config::Config;
use tandem_server::infra::metrics::Metrics;
use tandem_server::infra::store::{
    BackendError, CheckpointInfo, Compacted, Compaction, DeliveryState, DueEntry, Grant,
    InboxLimits, KeyRecord, Loaded, Locked, NewKey, NewNotification, NewUpdate, Notification,
    OutboxEvent, OutboxRow, ReadMark, Sid, SidRange, Since, Store, StoreError,
};
use tokio::sync::Semaphore;

/// A store whose loads wait for a signal, then fail or find nothing; writes are counted.
struct Scripted {
    fail_loads: bool,
    /// Loads wait for a permit; releasing adds plenty.
    release: Semaphore,
    loads: AtomicUsize,
    writes: AtomicUsize,
}

#[derive(Debug)]
struct Broken;
impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("disk unreadable")
    }
}
impl std::error::Error for Broken {}

#[async_trait]
impl Store for Scripted {
    async fn load(&self, _doc: &str) -> Result<Option<Loaded>, StoreError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        let _permit = self.release.acquire().await;
        if self.fail_loads {
            Err(StoreError::Backend(BackendError::new(Broken)))
        } else {
            Ok(None)
        }
    }
    async fn append(&self, _: &str, _: Bytes, _: &str) -> Result<Sid, StoreError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        Ok(1)
    }
    async fn append_full(
        &self,
        _: &str,
        u: Vec<NewUpdate>,
        _: Vec<NewKey>,
        _: Vec<OutboxEvent>,
    ) -> Result<SidRange, StoreError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        Ok(SidRange {
            first: 1,
            last: u.len() as Sid,
        })
    }
    async fn idempotency_key(
        &self,
        _: &str,
        _: &str,
        _: &str,
    ) -> Result<Option<KeyRecord>, StoreError> {
        Ok(None)
    }
    async fn updates_since(&self, _: &str, _: Sid) -> Result<Since, StoreError> {
        Ok(Since::Updates {
            entries: Vec::new(),
            last_sid: 0,
        })
    }
    async fn compact(&self, _: &str, _: Compaction) -> Result<Compacted, StoreError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        Ok(Compacted {
            removed: 0,
            checkpoint: None,
        })
    }
    async fn checkpoints(&self, _: &str) -> Result<Vec<CheckpointInfo>, StoreError> {
        Ok(Vec::new())
    }
    async fn checkpoint(&self, _: &str, _: Sid) -> Result<Option<Bytes>, StoreError> {
        Ok(None)
    }
    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
    async fn close(&self) -> Result<(), StoreError> {
        Ok(())
    }
    fn is_shared(&self) -> bool {
        false
    }
    async fn last_sids(&self, docs: &[String]) -> Result<Vec<Sid>, StoreError> {
        Ok(vec![0; docs.len()])
    }
    async fn lock(&self, _: &str, _: Sid) -> Result<Box<dyn Locked>, StoreError> {
        Err(StoreError::Closed)
    }
    async fn record_revocation(&self, _: &str, _: u64) -> Result<(), StoreError> {
        Ok(())
    }
    async fn revocations(&self) -> Result<Vec<(String, u64)>, StoreError> {
        Ok(Vec::new())
    }
    async fn add_notifications(
        &self,
        _: Vec<NewNotification>,
        _: Vec<(String, OutboxEvent)>,
        _: InboxLimits,
    ) -> Result<Vec<Notification>, StoreError> {
        Ok(Vec::new())
    }
    async fn notifications(
        &self,
        _: &str,
        _: Option<u64>,
        _: u32,
    ) -> Result<Vec<Notification>, StoreError> {
        Ok(Vec::new())
    }
    async fn notifications_after(
        &self,
        _: &str,
        _: u64,
        _: u32,
    ) -> Result<Vec<Notification>, StoreError> {
        Ok(Vec::new())
    }
    async fn unread(&self, _: &str) -> Result<u64, StoreError> {
        Ok(0)
    }
    async fn mark_read(&self, _: &str, _: ReadMark) -> Result<u64, StoreError> {
        Ok(0)
    }
    async fn record_grant(&self, _: Grant) -> Result<(), StoreError> {
        Ok(())
    }
    async fn grants(&self, _: &str) -> Result<Vec<Grant>, StoreError> {
        Ok(Vec::new())
    }
    async fn record_comment(&self, _: &str, _: &str, _: &str, _: u64) -> Result<(), StoreError> {
        Ok(())
    }
    async fn comments(&self, _: &str) -> Result<Vec<(String, String)>, StoreError> {
        Ok(Vec::new())
    }
    async fn set_due(&self, _: &str, _: Option<DueEntry>) -> Result<(), StoreError> {
        Ok(())
    }
    async fn due_before(&self, _: u64, _: u32) -> Result<Vec<DueEntry>, StoreError> {
        Ok(Vec::new())
    }
    async fn mark_reminded(&self, _: &str, _: &str) -> Result<(), StoreError> {
        Ok(())
    }
    async fn push_events(&self, _: &str, _: Vec<OutboxEvent>) -> Result<(), StoreError> {
        Ok(())
    }
    async fn outbox_claim(&self, _: u64, _: u64, _: u32) -> Result<Vec<OutboxRow>, StoreError> {
        Ok(Vec::new())
    }
    async fn outbox_done(&self, _: u64) -> Result<(), StoreError> {
        Ok(())
    }
    async fn outbox_failed(&self, _: u64, _: u64, _: &str, _: bool) -> Result<(), StoreError> {
        Ok(())
    }
    async fn outbox_list(&self, _: DeliveryState, _: u32) -> Result<Vec<OutboxRow>, StoreError> {
        Ok(Vec::new())
    }
    async fn outbox_replay(&self, _: u64, _: u64) -> Result<bool, StoreError> {
        Ok(false)
    }
    async fn outbox_counts(&self) -> Result<(u64, u64), StoreError> {
        Ok((0, 0))
    }
}

fn registry(fail_loads: bool) -> (Registry, Arc<Scripted>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Scripted {
        fail_loads,
        release: Semaphore::new(0),
        loads: AtomicUsize::new(0),
        writes: AtomicUsize::new(0),
    });
    let config = Arc::new(Config::default_for(dir.path()));
    let r = Registry::new(store.clone(), Metrics::new(), config, None);
    (r, store, dir)
}

fn sink() -> (ConnSink, outbox::Receiver) {
    outbox::outbox(16, usize::MAX)
}

fn writer() -> ConnInfo {
    ConnInfo {
        role: Role::Write,
        user: Some("u".into()),
        name: None,
        extensions: false,
        stateless: false,
    }
}

#[tokio::test]
async fn a_failed_load_refuses_every_waiting_connection_and_stores_nothing() {
    let (registry, store, _dir) = registry(true);
    let (s1, _) = sink();
    let (s2, _) = sink();
    let r1 = registry.clone();
    let r2 = registry.clone();
    let a = tokio::spawn(async move { r1.join("doc", writer(), s1).await.map(|_| ()) });
    let b = tokio::spawn(async move { r2.join("doc", writer(), s2).await.map(|_| ()) });
    // Both joins are queued behind the one load.
    while store.loads.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    store.release.add_permits(100);
    assert_eq!(a.await.unwrap(), Err(JoinError::LoadFailed));
    assert_eq!(b.await.unwrap(), Err(JoinError::LoadFailed));
    assert_eq!(store.writes.load(Ordering::SeqCst), 0, "nothing was stored");
    assert!(
        !registry.is_loaded("doc"),
        "no empty document was left loaded"
    );
    assert!(matches!(
        registry.read("doc", false).await,
        Err(tandem_server::documents::DocError::Join(
            JoinError::LoadFailed
        ))
    ));
}

#[tokio::test]
async fn concurrent_first_connections_share_one_load() {
    let (registry, store, _dir) = registry(false);
    let mut joins = Vec::new();
    let mut receivers = Vec::new();
    for _ in 0..5 {
        let (s, rx) = sink();
        receivers.push(rx);
        let r = registry.clone();
        joins.push(tokio::spawn(
            async move { r.join("doc", writer(), s).await },
        ));
    }
    while store.loads.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    store.release.add_permits(100);
    let mut attached = Vec::new();
    for j in joins {
        attached.push(j.await.unwrap().expect("joined"));
    }
    assert_eq!(store.loads.load(Ordering::SeqCst), 1);
    for rx in &mut receivers {
        // Each got the server's greeting (sync step 1).
        assert_eq!(&rx.recv().await.unwrap()[..2], &[0, 0]);
    }
    assert!(registry.is_loaded("doc"));
    for a in attached {
        a.leave().await;
    }
}

/// A reader whose queue overflows gets its queue replaced by a resync (the whole document as
/// step 2, the server's step 1, presence) and ends with the writer's text.
#[tokio::test]
async fn a_reader_that_falls_behind_is_resynced_and_converges() {
    let (registry, store, _dir) = registry(false);
    store.release.add_permits(100);
    let (ws, _writer_rx) = sink();
    let writer_conn = registry.join("doc", writer(), ws).await.expect("joined");
    let (rs, mut reader_rx) = sink();
    let _reader_conn = registry.join("doc", writer(), rs).await.expect("joined");
    // 40 updates, more than the reader's queue (16 frames) holds; the reader never reads.
    let mut replica = tandem_engine::Document::new(5);
    for i in 0..40u32 {
        let update = replica.insert("w", "t", i, "x").unwrap();
        let frame = tandem_engine::protocol::sync_frame(2, &update);
        assert!(writer_conn.frame(frame).await);
    }
    // A read is answered after every frame sent before it was handled.
    registry.read("doc", false).await.expect("readable");
    let mut frames = Vec::new();
    while let Some(f) = reader_rx.try_recv() {
        frames.push(f);
    }
    assert!(frames.len() <= 16, "{} frames queued", frames.len());
    assert_eq!(
        &frames[0][..2],
        &[0, 1],
        "the queue starts with a resync step 2"
    );
    let mut doc = tandem_engine::Document::new(9);
    for f in &frames {
        if f[0] == 0 && (f[1] == 1 || f[1] == 2) {
            let mut r = tandem_engine::wire::Reader::new(&f[2..]);
            doc.apply_update(r.var_bytes().unwrap(), None).unwrap();
        }
    }
    assert_eq!(doc.text("t"), replica.text("t"));
    writer_conn.leave().await;
}

/// A reader that falls behind again soon after a resync is closed with 4008 and a reason.
#[tokio::test]
async fn a_reader_that_falls_behind_twice_is_closed() {
    let (registry, store, _dir) = registry(false);
    store.release.add_permits(100);
    let (ws, _writer_rx) = sink();
    let writer_conn = registry.join("doc", writer(), ws).await.expect("joined");
    let (frames, mut reader_rx) = outbox::outbox(16, usize::MAX);
    let _reader_conn = registry
        .join("doc", writer(), frames)
        .await
        .expect("joined");
    let mut replica = tandem_engine::Document::new(5);
    for i in 0..80u32 {
        let update = replica.insert("w", "t", i, "x").unwrap();
        assert!(
            writer_conn
                .frame(tandem_engine::protocol::sync_frame(2, &update))
                .await
        );
    }
    let close = reader_rx.closed().await.expect("closed");
    assert_eq!(close.code, 4008);
    assert!(close.reason.contains("slow reader"), "{}", close.reason);
    writer_conn.leave().await;
}
