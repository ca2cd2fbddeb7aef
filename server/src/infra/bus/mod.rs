//! The live channel between tandem nodes: committed updates, presence, presence queries,
//! revocations and node liveness, over Redis pub/sub.
//!
//! The bus is the fast path, not the record. Redis may lose messages or restart empty; the
//! layers above number updates (sids), notice gaps and fill them from the shared database, so
//! the bus only promises to be best-effort and honest about it:
//! - it never blocks a caller: [`Bus::publish`] puts the message on a bounded queue, and drops
//!   it (counted in `tandem_bus_dropped_total`) when the queue is full or Redis is down;
//! - it reconnects by itself, resubscribes every followed document, then tells its user
//!   ([`BusEvent::Reconnected`]: republish presence, check positions);
//! - [`Bus::healthy`] and the `tandem_bus_up` gauge say whether messages are being delivered
//!   now;
//! - it tells its user when another node stopped ([`BusEvent::NodeGone`]: a goodbye, or a
//!   heartbeat key that expired), so that node's presence is dropped.
//!
//! A single node runs without Redis: [`NoBus`] is a bus with no one else on it (it publishes
//! nothing and receives nothing), so callers need no `Option`.
//!
//! - [`redis`]: [`redis::RedisBus`], the implementation (channels, liveness, reconnection).
//! - [`wire`]: how a message is encoded on a channel.

pub mod redis;
pub mod wire;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::infra::metrics::Metrics;

/// A node's identity on the bus (from `--node-id`, or [`random_node_id`] at start): 1 to 255
/// bytes.
pub type NodeId = String;

/// A fresh random node id: 16 hex digits.
pub fn random_node_id() -> NodeId {
    format!("{:016x}", fastrand::u64(..))
}

/// What nodes tell each other about one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocMessage {
    /// Updates committed together at sids `first`, `first + 1`, … (published only after
    /// their commit): one message per stored batch.
    Updates {
        /// The sid of the first update.
        first: u64,
        /// The updates in sid order.
        updates: Vec<Replicated>,
    },
    /// Awareness states of clients connected to the sending node: a y-protocols awareness
    /// update payload (the bytes inside an awareness message: count, then client id, clock,
    /// JSON per entry).
    Awareness {
        /// The awareness update.
        payload: Bytes,
    },
    /// The sender just started serving the document: others republish their awareness of it.
    Query,
}

/// One committed update as it crosses nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replicated {
    /// Who wrote it (a user id).
    pub author: String,
    /// The encoded Yjs update.
    pub update: Bytes,
}

/// What a bus tells its user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusEvent {
    /// A message about `doc` from another node (never from this node itself).
    Doc {
        /// The document.
        doc: String,
        /// The node that sent it.
        from: NodeId,
        /// What it says.
        message: DocMessage,
    },
    /// `user`'s tokens issued at or before `at` (unix seconds) were revoked on another node.
    Revoked {
        /// The user.
        user: String,
        /// Unix seconds.
        at: u64,
    },
    /// Another node stopped: said goodbye, or its heartbeat key expired. Drop its presence.
    NodeGone {
        /// The node.
        node: NodeId,
    },
    /// The connection to Redis was lost and is back (resubscribed): republish presence, check
    /// positions.
    Reconnected,
}

/// The live channel to the other nodes. Object-safe: the server holds an `Arc<dyn Bus>`.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// This node's id.
    fn node(&self) -> &str;

    /// Starts receiving messages about `doc`; returns once subscribed (or at once while Redis
    /// is down: subscribed on reconnect). Not reference-counted: the caller follows once per
    /// loaded document and unfollows when it unloads.
    async fn follow(&self, doc: &str);

    /// Stops receiving messages about `doc`: no event about it is queued after this returns.
    fn unfollow(&self, doc: &str);

    /// Publishes without waiting (a bounded queue; when full or Redis is down the message is
    /// dropped and counted in metrics). Messages are published in the order given.
    fn publish(&self, doc: &str, message: DocMessage);

    /// Tells the other nodes that `user`'s tokens issued at or before `at` (unix seconds) are
    /// revoked. Like [`Bus::publish`], without waiting.
    fn publish_revocation(&self, user: &str, at: u64);

    /// Whether messages are being delivered now (connected and subscribed).
    fn healthy(&self) -> bool;

    /// Takes the receiver of incoming events (once; later calls get `None`). Bounded: when the
    /// consumer is slow, events are dropped and counted (gap-filling above repairs updates).
    fn events(&self) -> Option<mpsc::Receiver<BusEvent>>;

    /// Says goodbye (others drop this node's presence at once) and stops.
    async fn close(&self);
}

/// How a bus paces itself. The defaults suit production; tests shrink the times.
#[derive(Debug, Clone)]
pub struct BusOptions {
    /// How often the node refreshes its heartbeat key and checks the other nodes' keys.
    pub heartbeat: Duration,
    /// The heartbeat key's time to live: a node silent this long is gone.
    pub ttl: Duration,
    /// Messages waiting to be published; more are dropped.
    pub publish_queue: usize,
    /// Events waiting for the consumer; more are dropped.
    pub event_queue: usize,
    /// How long a connection attempt or a command may take before Redis counts as down.
    pub timeout: Duration,
    /// The longest wait between two reconnection attempts.
    pub max_backoff: Duration,
}

impl Default for BusOptions {
    fn default() -> Self {
        BusOptions {
            heartbeat: Duration::from_secs(1),
            ttl: Duration::from_secs(5),
            publish_queue: 4096,
            event_queue: 4096,
            timeout: Duration::from_secs(1),
            max_backoff: Duration::from_secs(1),
        }
    }
}

/// Why a bus could not start.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The Redis URL is malformed or asks for something this build cannot do.
    #[error("--redis-url {url} is not usable: {reason}")]
    BadUrl {
        /// The URL with its password hidden.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The node id is empty or longer than 255 bytes.
    #[error("--node-id must be 1 to 255 bytes long (got {0} bytes)")]
    BadNodeId(usize),
}

/// Connects this node to the bus at `url` (`redis://…`). Does not fail because Redis is
/// unreachable: the bus then starts unhealthy and keeps retrying. Waits for the first
/// connection attempt (at most twice `options.timeout`), so a reachable Redis gives a healthy
/// bus. Fails only for a malformed URL or node id.
pub async fn connect(
    url: &str,
    node: NodeId,
    metrics: Metrics,
    options: BusOptions,
) -> Result<Arc<dyn Bus>, BusError> {
    let bus = redis::RedisBus::connect(url, node, metrics, options).await?;
    Ok(Arc::new(bus))
}

/// The bus of a node alone: nothing to tell anyone, nothing to hear. Always healthy (no
/// message is ever missing); its event receiver stays open and never yields.
#[derive(Debug)]
pub struct NoBus {
    node: NodeId,
    /// Kept so the receiver stays open.
    _sender: mpsc::Sender<BusEvent>,
    receiver: Mutex<Option<mpsc::Receiver<BusEvent>>>,
}

impl NoBus {
    /// A bus for the single node `node`.
    pub fn new(node: NodeId) -> Self {
        let (sender, receiver) = mpsc::channel(1);
        NoBus {
            node,
            _sender: sender,
            receiver: Mutex::new(Some(receiver)),
        }
    }
}

#[async_trait]
impl Bus for NoBus {
    fn node(&self) -> &str {
        &self.node
    }

    async fn follow(&self, _doc: &str) {}

    fn unfollow(&self, _doc: &str) {}

    fn publish(&self, _doc: &str, _message: DocMessage) {}

    fn publish_revocation(&self, _user: &str, _at: u64) {}

    fn healthy(&self) -> bool {
        true
    }

    fn events(&self) -> Option<mpsc::Receiver<BusEvent>> {
        self.receiver
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    async fn close(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn no_bus_is_quiet() {
        let bus: Arc<dyn Bus> = Arc::new(NoBus::new("solo".into()));
        assert_eq!(bus.node(), "solo");
        bus.follow("d").await;
        bus.publish("d", DocMessage::Query);
        bus.publish_revocation("u", 1);
        assert!(bus.healthy());
        let mut events = bus.events().unwrap();
        assert!(bus.events().is_none());
        assert!(events.try_recv().is_err());
        bus.close().await;
    }

    #[test]
    fn random_node_ids_differ() {
        assert_ne!(random_node_id(), random_node_id());
        assert_eq!(random_node_id().len(), 16);
    }
}
