//! Counters, gauges and histograms, rendered in the Prometheus text format.
//!
//! [`Metrics`] is a cheap-`Clone` handle over one fixed set of metrics. Every update is a
//! relaxed atomic operation (a histogram observation is three), so hot paths such as fan-out
//! can record freely. There is no registration and no label map: the set is known at compile
//! time, and the only labelled families are indexed by a fixed list: limit breaches by
//! [`LimitKind`], bus drops by reason ([`BusDrops`]).

use std::fmt::Write as _;
use std::ops::Deref;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::base::limit::LimitKind;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Subtracts one.
    pub fn dec(&self) {
        self.add(-1);
    }

    /// Adds `n` (may be negative).
    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Sets the value.
    pub fn set(&self, n: i64) {
        self.0.store(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Latency bucket upper bounds in seconds, from 50 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// A histogram of durations with fixed buckets.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per-bucket counts (not cumulative); one extra slot for +Inf.
    buckets: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// A histogram with these bucket upper bounds (seconds, ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// A histogram with [`LATENCY_BUCKETS`].
    pub fn latency() -> Self {
        Self::new(LATENCY_BUCKETS)
    }

    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self.bounds.partition_point(|&b| b < secs);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// How many durations were recorded.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The sum of recorded durations.
    pub fn sum(&self) -> Duration {
        Duration::from_nanos(self.sum_nanos.load(Ordering::Relaxed))
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0u64;
        for (i, bound) in self.bounds.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.buckets[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {}", self.sum().as_secs_f64());
        // The count line uses the bucket total so the exposition is self-consistent even when
        // an observation lands between the loads above.
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// Breach counters, one per [`LimitKind`].
#[derive(Debug, Default)]
pub struct LimitBreaches([Counter; LimitKind::ALL.len()]);

impl LimitBreaches {
    /// The counter of `kind`.
    pub fn get(&self, kind: LimitKind) -> &Counter {
        &self.0[kind.index()]
    }
}

/// Messages the bus (`infra::bus`) dropped, one counter per reason (rendered as the `reason`
/// label of `tandem_bus_dropped_total`).
#[derive(Debug, Default)]
pub struct BusDrops {
    /// Published while the publish queue was full.
    pub queue_full: Counter,
    /// Published while Redis was unreachable (the bus was not healthy).
    pub disconnected: Counter,
    /// Redis refused the publish, or did not answer in time.
    pub failed: Counter,
    /// Received bytes that do not decode as a bus message (or came on the wrong channel).
    pub malformed: Counter,
    /// Received while the event queue was full (its consumer was slow).
    pub slow_consumer: Counter,
}

impl BusDrops {
    /// Every reason with its counter, in rendering order.
    pub fn reasons(&self) -> [(&'static str, &Counter); 5] {
        [
            ("queue_full", &self.queue_full),
            ("disconnected", &self.disconnected),
            ("failed", &self.failed),
            ("malformed", &self.malformed),
            ("slow_consumer", &self.slow_consumer),
        ]
    }

    /// Drops of every reason.
    pub fn total(&self) -> u64 {
        self.reasons().iter().map(|(_, c)| c.get()).sum()
    }
}

/// Every metric the server exports. Fields are public so call sites read naturally:
/// `metrics.updates.inc()`.
#[derive(Debug)]
pub struct MetricSet {
    /// Open WebSocket connections.
    pub connections: Gauge,
    /// WebSocket connections accepted since start.
    pub connections_accepted: Counter,
    /// Open SSE streams.
    pub sse_streams: Gauge,
    /// Documents held in memory.
    pub documents_loaded: Gauge,
    /// Document loads from storage.
    pub document_loads: Counter,
    /// Document loads that failed (the document was not opened).
    pub document_load_failures: Counter,
    /// Documents unloaded after their last connection left.
    pub document_unloads: Counter,
    /// Documents unloaded because applying an update panicked.
    pub document_panics: Counter,
    /// Updates another node stored, taken by a document loaded here.
    pub replicated_updates: Counter,
    /// Gaps in a document's sids read from the store (the bus lost or delayed an update).
    pub replication_gap_reads: Counter,
    /// Snapshots another node made, merged into a replica whose log position they passed.
    pub replication_rebases: Counter,
    /// Whether the shared store answered the last position check (1) or not (0).
    pub store_up: Gauge,
    /// Updates applied and stored.
    pub updates: Counter,
    /// Updates refused (read-only role, malformed, over a limit).
    pub updates_refused: Counter,
    /// Awareness (presence) messages applied.
    pub awareness_updates: Counter,
    /// Bytes received from clients (frame payloads and HTTP bodies).
    pub bytes_received: Counter,
    /// Bytes sent to clients.
    pub bytes_sent: Counter,
    /// WebSocket messages sent compressed (permessage-deflate).
    pub ws_compressed_messages: Counter,
    /// Bytes compression left off those messages (their size less their compressed size).
    pub ws_compression_saved_bytes: Counter,
    /// Slow readers resynced with a fresh sync step 1/2.
    pub slow_reader_resyncs: Counter,
    /// Slow readers closed.
    pub slow_reader_closes: Counter,
    /// Requests refused for a missing, invalid, expired or revoked token.
    pub auth_unauthorized: Counter,
    /// Requests refused for a token that does not grant the access.
    pub auth_forbidden: Counter,
    /// Limit breaches by limit.
    pub limit_breaches: LimitBreaches,
    /// Store transactions committed (each holds one or more requests: group commit).
    pub store_transactions: Counter,
    /// Updates written to the store's log.
    pub store_appends: Counter,
    /// Compactions performed.
    pub store_compactions: Counter,
    /// Version-history checkpoints kept.
    pub store_checkpoints: Counter,
    /// 1 while the bus to other nodes delivers messages (connected and subscribed), else 0.
    pub bus_up: Gauge,
    /// Messages published on the bus.
    pub bus_published: Counter,
    /// Messages received from other nodes on the bus.
    pub bus_received: Counter,
    /// Bus messages dropped, by reason.
    pub bus_dropped: BusDrops,
    /// Times the bus connected to Redis again after being down (each `Reconnected` event).
    pub bus_reconnects: Counter,
    /// Other nodes found gone (goodbye or expired heartbeat).
    pub bus_nodes_gone: Counter,
    /// Notifications stored (mentions, assignments, replies, reminders).
    pub notifications: Counter,
    /// Webhook events delivered (a 2xx answer).
    pub webhook_delivered: Counter,
    /// Webhook delivery attempts that failed (retried later, or dead).
    pub webhook_failed: Counter,
    /// Webhook deliveries waiting (outbox rows pending), as of the worker's last count.
    pub webhook_pending: Gauge,
    /// Webhook deliveries given up after the retry window (replayable).
    pub webhook_dead: Gauge,
    /// Time from handing an update to the store to its durable commit.
    pub commit_latency: Histogram,
    /// Time from an update's arrival to its last enqueue on every reader's queue.
    pub fanout_latency: Histogram,
}

impl Default for MetricSet {
    fn default() -> Self {
        MetricSet {
            connections: Gauge::default(),
            connections_accepted: Counter::default(),
            sse_streams: Gauge::default(),
            documents_loaded: Gauge::default(),
            document_loads: Counter::default(),
            document_load_failures: Counter::default(),
            document_unloads: Counter::default(),
            document_panics: Counter::default(),
            replicated_updates: Counter::default(),
            replication_gap_reads: Counter::default(),
            replication_rebases: Counter::default(),
            store_up: Gauge::default(),
            updates: Counter::default(),
            updates_refused: Counter::default(),
            awareness_updates: Counter::default(),
            bytes_received: Counter::default(),
            bytes_sent: Counter::default(),
            ws_compressed_messages: Counter::default(),
            ws_compression_saved_bytes: Counter::default(),
            slow_reader_resyncs: Counter::default(),
            slow_reader_closes: Counter::default(),
            auth_unauthorized: Counter::default(),
            auth_forbidden: Counter::default(),
            limit_breaches: LimitBreaches::default(),
            store_transactions: Counter::default(),
            store_appends: Counter::default(),
            store_compactions: Counter::default(),
            store_checkpoints: Counter::default(),
            bus_up: Gauge::default(),
            bus_published: Counter::default(),
            bus_received: Counter::default(),
            bus_dropped: BusDrops::default(),
            bus_reconnects: Counter::default(),
            bus_nodes_gone: Counter::default(),
            notifications: Counter::default(),
            webhook_delivered: Counter::default(),
            webhook_failed: Counter::default(),
            webhook_pending: Gauge::default(),
            webhook_dead: Gauge::default(),
            commit_latency: Histogram::latency(),
            fanout_latency: Histogram::latency(),
        }
    }
}

/// The shared metrics handle.
#[derive(Debug, Clone, Default)]
pub struct Metrics(Arc<MetricSet>);

impl Deref for Metrics {
    type Target = MetricSet;

    fn deref(&self) -> &MetricSet {
        &self.0
    }
}

/// The `Content-Type` of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Metrics {
    /// A fresh set of metrics, all zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one breach of `kind`.
    pub fn limit_breached(&self, kind: LimitKind) {
        self.limit_breaches.get(kind).inc();
    }

    /// Renders every metric in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let m = &self.0;
        let mut out = String::with_capacity(8 * 1024);
        let counter = |out: &mut String, name: &str, help: &str, c: &Counter| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                c.get()
            );
        };
        let gauge = |out: &mut String, name: &str, help: &str, g: &Gauge| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                g.get()
            );
        };
        gauge(
            &mut out,
            "tandem_connections",
            "Open WebSocket connections.",
            &m.connections,
        );
        counter(
            &mut out,
            "tandem_connections_accepted_total",
            "WebSocket connections accepted.",
            &m.connections_accepted,
        );
        gauge(
            &mut out,
            "tandem_sse_streams",
            "Open SSE streams.",
            &m.sse_streams,
        );
        gauge(
            &mut out,
            "tandem_documents_loaded",
            "Documents held in memory.",
            &m.documents_loaded,
        );
        counter(
            &mut out,
            "tandem_document_loads_total",
            "Documents loaded from storage.",
            &m.document_loads,
        );
        counter(
            &mut out,
            "tandem_document_load_failures_total",
            "Document loads that failed.",
            &m.document_load_failures,
        );
        counter(
            &mut out,
            "tandem_document_unloads_total",
            "Documents unloaded.",
            &m.document_unloads,
        );
        counter(
            &mut out,
            "tandem_document_panics_total",
            "Documents unloaded after a panic while applying an update.",
            &m.document_panics,
        );
        counter(
            &mut out,
            "tandem_replicated_updates_total",
            "Updates stored by another node and taken by a document loaded here.",
            &m.replicated_updates,
        );
        counter(
            &mut out,
            "tandem_replication_gap_reads_total",
            "Gaps in a document's sids read from the store (lost or late bus messages).",
            &m.replication_gap_reads,
        );
        counter(
            &mut out,
            "tandem_replication_rebases_total",
            "Snapshots another node made, merged into a replica the log no longer reached.",
            &m.replication_rebases,
        );
        gauge(
            &mut out,
            "tandem_store_up",
            "Whether the shared store answered the last position check (1) or not (0).",
            &m.store_up,
        );
        counter(
            &mut out,
            "tandem_notifications_total",
            "Notifications stored.",
            &m.notifications,
        );
        counter(
            &mut out,
            "tandem_webhook_delivered_total",
            "Webhook events delivered.",
            &m.webhook_delivered,
        );
        counter(
            &mut out,
            "tandem_webhook_failed_attempts_total",
            "Webhook delivery attempts that failed.",
            &m.webhook_failed,
        );
        gauge(
            &mut out,
            "tandem_webhook_pending",
            "Webhook deliveries waiting in the outbox.",
            &m.webhook_pending,
        );
        gauge(
            &mut out,
            "tandem_webhook_dead",
            "Webhook deliveries given up after 24 hours (replayable).",
            &m.webhook_dead,
        );
        counter(
            &mut out,
            "tandem_updates_total",
            "Updates applied and stored.",
            &m.updates,
        );
        counter(
            &mut out,
            "tandem_updates_refused_total",
            "Updates refused.",
            &m.updates_refused,
        );
        counter(
            &mut out,
            "tandem_awareness_updates_total",
            "Awareness messages applied.",
            &m.awareness_updates,
        );
        counter(
            &mut out,
            "tandem_received_bytes_total",
            "Bytes received from clients.",
            &m.bytes_received,
        );
        counter(
            &mut out,
            "tandem_sent_bytes_total",
            "Bytes sent to clients.",
            &m.bytes_sent,
        );
        counter(
            &mut out,
            "tandem_ws_compressed_messages_total",
            "WebSocket messages sent compressed (permessage-deflate).",
            &m.ws_compressed_messages,
        );
        counter(
            &mut out,
            "tandem_ws_compression_saved_bytes_total",
            "Bytes permessage-deflate left off the WebSocket messages it compressed.",
            &m.ws_compression_saved_bytes,
        );
        counter(
            &mut out,
            "tandem_slow_reader_resyncs_total",
            "Slow readers resynced.",
            &m.slow_reader_resyncs,
        );
        counter(
            &mut out,
            "tandem_slow_reader_closes_total",
            "Slow readers closed.",
            &m.slow_reader_closes,
        );
        counter(
            &mut out,
            "tandem_auth_unauthorized_total",
            "Requests refused for a missing, invalid, expired or revoked token.",
            &m.auth_unauthorized,
        );
        counter(
            &mut out,
            "tandem_auth_forbidden_total",
            "Requests refused for insufficient access.",
            &m.auth_forbidden,
        );
        let name = "tandem_limit_breaches_total";
        let _ = writeln!(
            out,
            "# HELP {name} Limit breaches by limit.\n# TYPE {name} counter"
        );
        for kind in LimitKind::ALL {
            let _ = writeln!(
                out,
                "{name}{{limit=\"{}\"}} {}",
                kind.as_str(),
                m.limit_breaches.get(kind).get()
            );
        }
        counter(
            &mut out,
            "tandem_store_transactions_total",
            "Store transactions committed (group commit).",
            &m.store_transactions,
        );
        counter(
            &mut out,
            "tandem_store_appends_total",
            "Updates written to the store log.",
            &m.store_appends,
        );
        counter(
            &mut out,
            "tandem_store_compactions_total",
            "Compactions performed.",
            &m.store_compactions,
        );
        counter(
            &mut out,
            "tandem_store_checkpoints_total",
            "Version-history checkpoints kept.",
            &m.store_checkpoints,
        );
        gauge(
            &mut out,
            "tandem_bus_up",
            "1 while the bus to other nodes is connected and subscribed.",
            &m.bus_up,
        );
        counter(
            &mut out,
            "tandem_bus_published_total",
            "Messages published on the bus.",
            &m.bus_published,
        );
        counter(
            &mut out,
            "tandem_bus_received_total",
            "Messages received from other nodes on the bus.",
            &m.bus_received,
        );
        let name = "tandem_bus_dropped_total";
        let _ = writeln!(
            out,
            "# HELP {name} Bus messages dropped, by reason.\n# TYPE {name} counter"
        );
        for (reason, c) in m.bus_dropped.reasons() {
            let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {}", c.get());
        }
        counter(
            &mut out,
            "tandem_bus_reconnects_total",
            "Times the bus got its Redis connection back.",
            &m.bus_reconnects,
        );
        counter(
            &mut out,
            "tandem_bus_nodes_gone_total",
            "Other nodes found gone (goodbye or expired heartbeat).",
            &m.bus_nodes_gone,
        );
        m.commit_latency.render(
            &mut out,
            "tandem_commit_latency_seconds",
            "Time from handing an update to the store to its durable commit.",
        );
        m.fanout_latency.render(
            &mut out,
            "tandem_fanout_latency_seconds",
            "Time from an update's arrival to its enqueue on every reader.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(prefix) && l[prefix.len()..].starts_with(' '))
            .unwrap_or_else(|| panic!("no line {prefix:?} in\n{text}"))
    }

    #[test]
    fn counters_and_gauges_render() {
        let m = Metrics::new();
        m.connections.inc();
        m.connections.inc();
        m.connections.dec();
        m.updates.add(41);
        m.updates.inc();
        m.bytes_sent.add(1000);
        m.documents_loaded.set(7);
        let clone = m.clone();
        clone.slow_reader_closes.inc();
        let text = m.render();
        assert_eq!(line(&text, "tandem_connections"), "tandem_connections 1");
        assert_eq!(
            line(&text, "tandem_updates_total"),
            "tandem_updates_total 42"
        );
        assert_eq!(
            line(&text, "tandem_sent_bytes_total"),
            "tandem_sent_bytes_total 1000"
        );
        assert_eq!(
            line(&text, "tandem_documents_loaded"),
            "tandem_documents_loaded 7"
        );
        assert_eq!(
            line(&text, "tandem_slow_reader_closes_total"),
            "tandem_slow_reader_closes_total 1"
        );
        assert!(text.contains("# TYPE tandem_connections gauge\n"));
        assert!(text.contains("# TYPE tandem_updates_total counter\n"));
    }

    #[test]
    fn limit_breaches_are_labelled() {
        let m = Metrics::new();
        m.limit_breached(LimitKind::FrameSize);
        m.limit_breached(LimitKind::FrameSize);
        m.limit_breached(LimitKind::PendingUpdates);
        let text = m.render();
        assert_eq!(
            line(&text, "tandem_limit_breaches_total{limit=\"frame_size\"}"),
            "tandem_limit_breaches_total{limit=\"frame_size\"} 2"
        );
        assert_eq!(
            line(
                &text,
                "tandem_limit_breaches_total{limit=\"pending_updates\"}"
            ),
            "tandem_limit_breaches_total{limit=\"pending_updates\"} 1"
        );
        assert_eq!(
            line(&text, "tandem_limit_breaches_total{limit=\"message_rate\"}"),
            "tandem_limit_breaches_total{limit=\"message_rate\"} 0"
        );
        assert_eq!(m.limit_breaches.get(LimitKind::FrameSize).get(), 2);
    }

    #[test]
    fn bus_drops_are_labelled() {
        let m = Metrics::new();
        m.bus_dropped.malformed.inc();
        m.bus_dropped.queue_full.add(2);
        m.bus_up.set(1);
        let text = m.render();
        assert_eq!(
            line(&text, "tandem_bus_dropped_total{reason=\"malformed\"}"),
            "tandem_bus_dropped_total{reason=\"malformed\"} 1"
        );
        assert_eq!(
            line(&text, "tandem_bus_dropped_total{reason=\"queue_full\"}"),
            "tandem_bus_dropped_total{reason=\"queue_full\"} 2"
        );
        assert_eq!(
            line(&text, "tandem_bus_dropped_total{reason=\"slow_consumer\"}"),
            "tandem_bus_dropped_total{reason=\"slow_consumer\"} 0"
        );
        assert_eq!(line(&text, "tandem_bus_up"), "tandem_bus_up 1");
        assert_eq!(m.bus_dropped.total(), 3);
    }

    #[test]
    fn histograms_are_cumulative() {
        let m = Metrics::new();
        m.commit_latency.observe(Duration::from_micros(10));
        m.commit_latency.observe(Duration::from_micros(100));
        m.commit_latency.observe(Duration::from_millis(3));
        m.commit_latency.observe(Duration::from_secs(60));
        let text = m.render();
        let name = "tandem_commit_latency_seconds";
        assert_eq!(
            line(&text, &format!("{name}_bucket{{le=\"0.00005\"}}")),
            format!("{name}_bucket{{le=\"0.00005\"}} 1")
        );
        // 100 µs lands in the 0.0001 bucket (upper bounds are inclusive).
        assert!(text.contains(&format!("{name}_bucket{{le=\"0.0001\"}} 2\n")));
        assert!(text.contains(&format!("{name}_bucket{{le=\"0.005\"}} 3\n")));
        assert!(text.contains(&format!("{name}_bucket{{le=\"10\"}} 3\n")));
        assert!(text.contains(&format!("{name}_bucket{{le=\"+Inf\"}} 4\n")));
        assert!(text.contains(&format!("{name}_count 4\n")));
        let sum: f64 = line(&text, &format!("{name}_sum"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!((sum - 60.00311).abs() < 1e-9, "{sum}");
        assert_eq!(m.commit_latency.count(), 4);
    }

    #[test]
    fn every_sample_line_is_well_formed() {
        let m = Metrics::new();
        m.fanout_latency.observe(Duration::from_millis(1));
        let text = m.render();
        let mut declared = std::collections::HashSet::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                let mut parts = rest.split(' ');
                let name = parts.next().unwrap();
                assert!(matches!(
                    parts.next(),
                    Some("counter" | "gauge" | "histogram")
                ));
                assert!(declared.insert(name.to_owned()), "duplicate {name}");
            } else if !l.starts_with("# HELP ") {
                let (series, value) = l.rsplit_once(' ').unwrap();
                assert!(value.parse::<f64>().is_ok(), "{l}");
                let base = series.split('{').next().unwrap();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| base.strip_suffix(s).filter(|f| declared.contains(*f)))
                    .unwrap_or(base);
                assert!(declared.contains(family), "undeclared {l}");
                assert!(base.starts_with("tandem_"));
            }
        }
    }

    #[test]
    fn counters_are_safe_across_threads() {
        let m = Metrics::new();
        std::thread::scope(|s| {
            for _ in 0..4 {
                let m = m.clone();
                s.spawn(move || {
                    for _ in 0..10_000 {
                        m.updates.inc();
                        m.fanout_latency.observe(Duration::from_micros(5));
                    }
                });
            }
        });
        assert_eq!(m.updates.get(), 40_000);
        assert_eq!(m.fanout_latency.count(), 40_000);
    }
}
