//! [`AppState`]: what every route handler can reach.

use std::sync::Arc;

use super::cluster::Cluster;
use super::idempotency::LocalKeys;
use super::package::Package;
use crate::access::auth::Auth;
use crate::documents::notifier::Notifier;
use crate::documents::Registry;
use crate::infra::config::Config;
use crate::infra::metrics::Metrics;
use crate::infra::shutdown::Shutdown;
use crate::infra::store::Store;
use crate::infra::webhook::Webhooks;

/// What every route handler can reach. Cheap to clone: every field is a shared handle.
#[derive(Clone)]
pub struct AppState {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Token verification and revocation.
    pub auth: Auth,
    /// The metrics registry.
    pub metrics: Metrics,
    /// Durable storage.
    pub store: Arc<dyn Store>,
    /// Fires when the server begins shutting down; long-lived connections select on it.
    pub shutdown: Shutdown,
    /// The loaded documents.
    pub registry: Registry,
    /// The demo's browser package (built on first need in development mode).
    pub demo: Package,
    /// Idempotency keys of the writes whose effect lives in this process's memory
    /// (revocations).
    pub local_keys: LocalKeys,
    /// The links to the other nodes sharing the store, when it is shared.
    pub cluster: Option<Cluster>,
    /// Notifications: grants seen, live inbox streams, due reminders.
    pub notifier: Notifier,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("config", &self.config)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Assembles the state of one node; the auth mode comes from the config.
    pub fn new(
        config: Config,
        store: Arc<dyn Store>,
        metrics: Metrics,
        shutdown: Shutdown,
    ) -> Self {
        Self::with_cluster(config, store, metrics, shutdown, None)
    }

    /// Assembles the state of a node among several (`cluster`) or of one node (`None`).
    pub fn with_cluster(
        config: Config,
        store: Arc<dyn Store>,
        metrics: Metrics,
        shutdown: Shutdown,
        cluster: Option<Cluster>,
    ) -> Self {
        let auth = Auth::new(config.auth.clone());
        let config = Arc::new(config);
        let bus = cluster.as_ref().and_then(Cluster::bus);
        let webhooks = match &config.notify.webhook_secret {
            Some(secret) => Webhooks::new(
                config.notify.webhook_urls.clone(),
                secret.clone(),
                config.notify.webhook_presence,
            ),
            None => Webhooks::default(),
        };
        let (notifier, jobs) = Notifier::new(
            Arc::clone(&store),
            auth.clone(),
            metrics.clone(),
            config.notify.clone(),
            webhooks.clone(),
        );
        // The notifier and the webhook worker run until shutdown (outside a runtime, as in
        // some unit tests, they do not run at all).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(notifier.clone().run(jobs, shutdown.clone()));
            if webhooks.is_enabled() {
                runtime.spawn(webhooks.run(Arc::clone(&store), metrics.clone(), shutdown.clone()));
            }
        }
        let registry = Registry::with_notifier(
            Arc::clone(&store),
            metrics.clone(),
            Arc::clone(&config),
            bus,
            Some(notifier.clone()),
        );
        AppState {
            config,
            auth,
            metrics,
            store,
            shutdown,
            registry,
            demo: Package::default(),
            local_keys: LocalKeys::default(),
            cluster,
            notifier,
        }
    }
}
