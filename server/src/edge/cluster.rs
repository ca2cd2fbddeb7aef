//! A node among several: the wiring between the bus to the other nodes, the shared store, the
//! loaded documents and the revocation record.
//!
//! - Updates: what another node committed arrives over the bus and goes to the document if it
//!   is loaded here ([`Registry::apply_replicated`]); the document puts it in sid order and
//!   reads any gap from the store. The bus may lose messages, so every
//!   `--catch-up-interval` the node compares its loaded documents with the store's latest sids
//!   ([`Store::last_sids`]) and tells each one how far the store is ([`Registry::stored_up_to`]):
//!   with Redis down, updates still cross nodes at that pace.
//! - Presence: another node's connections' awareness goes to the document; a node that stops
//!   (goodbye, or its heartbeat expires) has its presence removed everywhere; when the bus comes
//!   back every document republishes this node's presence.
//! - Revocations: recorded in the store (a node that starts later reads them all) and
//!   broadcast on the bus; while the bus is down, the record is re-read every interval.
//! - Health: [`Cluster::readiness`] says whether the store answers and the bus delivers; a node
//!   whose bus is down is "degraded", never green.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::access::auth::Auth;
use crate::base::clock::unix_now;
use crate::documents::Registry;
use crate::infra::bus::{Bus, BusEvent, DocMessage};
use crate::infra::config::Config;
use crate::infra::metrics::Metrics;
use crate::infra::shutdown::Shutdown;
use crate::infra::store::Store;

/// Most documents compared with the store in one query.
const POSITION_BATCH: usize = 1_000;

/// This node's links to the others. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    node: String,
    store: Arc<dyn Store>,
    bus: Option<Arc<dyn Bus>>,
    /// Whether the store answered the last position check.
    store_up: AtomicBool,
    /// Node ids as the small numbers documents know them by.
    origins: Mutex<HashMap<String, u64>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.inner.node)
            .field("bus", &self.inner.bus.is_some())
            .finish()
    }
}

impl Cluster {
    /// The links of a node whose store is shared (`store.is_shared()`), with `bus` when Redis is
    /// configured.
    pub fn new(config: &Config, store: Arc<dyn Store>, bus: Option<Arc<dyn Bus>>) -> Self {
        Cluster {
            inner: Arc::new(Inner {
                node: config.cluster.node_id.clone(),
                store,
                bus,
                store_up: AtomicBool::new(true),
                origins: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// The bus, when there is one.
    pub fn bus(&self) -> Option<Arc<dyn Bus>> {
        self.inner.bus.clone()
    }

    fn origin(&self, node: &str) -> u64 {
        let mut origins = self.inner.origins.lock().unwrap_or_else(|e| e.into_inner());
        let next = origins.len() as u64 + 1;
        *origins.entry(node.to_owned()).or_insert(next)
    }

    /// Starts the tasks that carry the bus's events to the documents and compare positions
    /// with the store; they end at shutdown. Reads every recorded revocation first.
    pub async fn start(
        &self,
        registry: Registry,
        auth: Auth,
        metrics: Metrics,
        interval: Duration,
        shutdown: Shutdown,
    ) -> Result<(), crate::infra::store::StoreError> {
        for (user, at) in self.inner.store.revocations().await? {
            auth.revoke(&user, at);
        }
        if let Some(mut events) = self.inner.bus.as_ref().and_then(|b| b.events()) {
            let this = self.clone();
            let (registry, auth) = (registry.clone(), auth.clone());
            let stop = shutdown.wait();
            tokio::spawn(async move {
                tokio::pin!(stop);
                loop {
                    let event = tokio::select! {
                        e = events.recv() => e,
                        _ = &mut stop => None,
                    };
                    let Some(event) = event else { break };
                    this.event(event, &registry, &auth).await;
                }
            });
        }
        let this = self.clone();
        let stop = shutdown.wait();
        tokio::spawn(async move {
            tokio::pin!(stop);
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => this.check(&registry, &auth, &metrics).await,
                    _ = &mut stop => break,
                }
            }
        });
        Ok(())
    }

    async fn event(&self, event: BusEvent, registry: &Registry, auth: &Auth) {
        match event {
            BusEvent::Doc { doc, from, message } => match message {
                DocMessage::Updates { first, updates } => {
                    registry.apply_replicated(&doc, first, updates).await
                }
                DocMessage::Awareness { payload } => {
                    let origin = self.origin(&from);
                    registry.remote_presence(&doc, origin, payload).await;
                }
                DocMessage::Query => registry.republish(&doc).await,
            },
            BusEvent::Revoked { user, at } => {
                let closed = auth.revoke(&user, at);
                tracing::info!(user = %user, closed, "a revocation made on another node");
            }
            BusEvent::NodeGone { node } => {
                tracing::info!(node = %node, "another node stopped; dropping its presence");
                let origin = self.origin(&node);
                registry.origin_gone(origin).await;
            }
            BusEvent::Reconnected => {
                tracing::info!("the bus is back; republishing presence");
                registry.republish_all().await;
            }
        }
    }

    /// Compares the loaded documents with the store's latest sids; while the bus is down, also
    /// re-reads the revocation record.
    async fn check(&self, registry: &Registry, auth: &Auth, metrics: &Metrics) {
        let store = &self.inner.store;
        let mut ok = true;
        for names in registry.loaded_names().chunks(POSITION_BATCH) {
            match store.last_sids(names).await {
                Ok(sids) => {
                    for (doc, sid) in names.iter().zip(sids) {
                        registry.stored_up_to(doc, sid).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(cause = %e, "position check failed");
                    ok = false;
                    break;
                }
            }
        }
        let bus_down = self.inner.bus.as_ref().is_some_and(|b| !b.healthy());
        if ok && bus_down {
            match store.revocations().await {
                Ok(all) => {
                    for (user, at) in all {
                        if auth.revoked_at(&user).is_none_or(|known| known < at) {
                            auth.revoke(&user, at);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(cause = %e, "reading revocations failed");
                    ok = false;
                }
            }
        }
        self.inner.store_up.store(ok, Ordering::Relaxed);
        metrics.store_up.set(i64::from(ok));
    }

    /// Records a revocation made on this node in the store and tells the other nodes.
    pub async fn revoked(
        &self,
        user: &str,
        at: u64,
    ) -> Result<(), crate::infra::store::StoreError> {
        self.inner.store.record_revocation(user, at).await?;
        if let Some(bus) = &self.inner.bus {
            bus.publish_revocation(user, at);
        }
        Ok(())
    }

    /// Whether this node can serve everything it promises, and what is not working.
    pub fn readiness(&self) -> (bool, Value) {
        let store_up = self.inner.store_up.load(Ordering::Relaxed);
        let bus = match &self.inner.bus {
            None => "none",
            Some(b) if b.healthy() => "up",
            Some(_) => "down",
        };
        let ready = store_up && bus != "down";
        let status = if !store_up {
            "unavailable"
        } else if bus == "down" {
            "degraded"
        } else {
            "ok"
        };
        let body = json!({
            "status": status,
            "node": self.inner.node,
            "store": if store_up { "up" } else { "down" },
            "bus": bus,
            "checked_at": unix_now(),
        });
        (ready, body)
    }
}
