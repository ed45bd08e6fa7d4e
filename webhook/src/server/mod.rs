//! The webhook process: flags, TLS with hot reload, the ImageMap watch, HTTP routes, metrics.
//! Everything here is I/O around the pure core in the crate root.

pub mod config;
pub mod controller;
pub mod http;
pub mod leader;
pub mod listener;
pub mod log_format;
pub mod log_writer;
pub mod metrics;
pub mod store;
pub mod tls;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use crate::maps::MapIndex;

pub use config::Config;
pub use http::router;

/// State shared by every request and background task.
pub struct AppState {
    /// All known maps.
    pub index: RwLock<MapIndex>,
    /// The cluster watch has listed every map at least once (or there is no cluster).
    pub synced: AtomicBool,
    /// A serving certificate is loaded.
    pub cert_loaded: AtomicBool,
    /// SIGTERM received: readiness fails while in-flight requests finish.
    pub shutting_down: AtomicBool,
    /// Woken when SIGTERM is received (background tasks then stop; the controller releases its
    /// Lease).
    pub shutdown: tokio::sync::Notify,
    /// Prometheus metrics.
    pub metrics: metrics::Metrics,
    /// Request limits.
    pub limits: http::Limits,
    /// Bounds concurrent reviews; past it requests get 503 at once.
    pub concurrency: tokio::sync::Semaphore,
    /// Hold Pods waiting for unbuilt maps with a scheduling gate (`--gate-unbuilt`).
    pub gate_unbuilt: AtomicBool,
}

impl AppState {
    /// New state with an empty index.
    pub fn new(global_namespace: Option<String>, limits: http::Limits) -> Arc<Self> {
        Arc::new(AppState {
            index: RwLock::new(MapIndex::new(global_namespace)),
            synced: AtomicBool::new(false),
            cert_loaded: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            shutdown: tokio::sync::Notify::new(),
            metrics: metrics::Metrics::default(),
            concurrency: tokio::sync::Semaphore::new(limits.max_concurrent_reviews),
            gate_unbuilt: AtomicBool::new(false),
            limits,
        })
    }

    /// Ready to serve: certificate loaded, maps synced, not shutting down.
    pub fn is_ready(&self) -> bool {
        self.cert_loaded.load(Ordering::Acquire)
            && self.synced.load(Ordering::Acquire)
            && !self.shutting_down.load(Ordering::Acquire)
    }

    /// Runs `f` on the index under the read lock (never held across an await).
    pub fn with_index<R>(&self, f: impl FnOnce(&MapIndex) -> R) -> R {
        let guard = self.index.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&guard)
    }

    /// Runs `f` on the index under the write lock and refreshes the cache gauges.
    pub fn update_index<R>(&self, f: impl FnOnce(&mut MapIndex) -> R) -> R {
        let mut guard = self.index.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let out = f(&mut guard);
        self.metrics.set_cache(guard.len(), guard.invalid().count());
        out
    }
}

/// Runs the webhook until SIGTERM/SIGINT: loads certificates and maps, then serves.
pub async fn run(config: Config) -> anyhow::Result<()> {
    use anyhow::Context;
    let state = AppState::new(config.global_namespace.clone(), config.limits());
    let certs = tls::CertStore::load(&config.tls_cert_file, &config.tls_private_key_file)
        .context("loading the serving certificate (--tls-cert-file / --tls-private-key-file)")?;
    state.cert_loaded.store(true, Ordering::Release);
    let tls_config = tls::server_config(certs.clone());
    tokio::spawn(tls::watch(certs, config.tls_reload_interval, state.clone()));

    if let Some(path) = &config.imagemaps_file {
        store::load_file_once(path, &state).context("loading --imagemaps-file")?;
        tokio::spawn(store::watch_file(path.clone(), config.maps_reload_interval, state.clone()));
    }
    state.gate_unbuilt.store(config.gate_unbuilt, Ordering::Release);
    let mut controller_task = None;
    if config.no_cluster {
        state.synced.store(true, Ordering::Release);
    } else {
        let client = store::client(config.kubeconfig.as_deref()).await?;
        tokio::spawn(store::watch_cluster(client.clone(), state.clone()));
        if config.gate_unbuilt || config.restart_on_rebuild {
            controller_task = Some(tokio::spawn(controller::run(client, state.clone(), config.controller_options())));
        }
    }

    let listener = listener::bind(config.listen).with_context(|| format!("binding --listen {}", config.listen))?;
    tracing::info!(listen = %config.listen, "serving HTTPS");
    let shutdown = listener::shutdown_signal(state.clone(), config.shutdown_delay);
    listener::serve(listener, tls_config, router(state.clone()), config.timeouts(), shutdown).await;
    if let Some(task) = controller_task {
        // The controller releases its Lease as soon as the signal arrives; wait for that.
        if tokio::time::timeout(std::time::Duration::from_secs(5), task).await.is_err() {
            tracing::warn!("the controller did not stop within 5s");
        }
    }
    tracing::info!("stopped");
    Ok(())
}
