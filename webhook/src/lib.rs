//! imagemap-webhook: the webhook process. Flags, TLS with hot reload, the ImageMap watch, HTTP
//! routes, metrics and the controller: the runtime wiring around the pure `imagemap-core`, with
//! cluster calls shared with the plugin in `imagemap-cluster`.
#![deny(missing_docs)]

pub mod check;
pub mod config;
pub(crate) mod controller;
pub mod http;
pub mod listener;
pub mod logging;
pub(crate) mod metrics;
pub(crate) mod store;
pub mod tls;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use imagemap_core::guards::Guards;
use imagemap_core::maps::MapIndex;

pub use config::{Config, Role};
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
    /// Woken when the maps change (the controller then acts at once, e.g. widens the scope).
    pub maps_changed: tokio::sync::Notify,
    /// Counts changes of the index, so a task can tell cheaply whether the maps changed since it
    /// last looked.
    pub maps_version: AtomicU64,
    /// A background task stopped: readiness fails (and the process exits).
    pub task_failed: AtomicBool,
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
    /// New state with an empty index and no admin guards.
    pub fn new(global_namespace: Option<String>, limits: http::Limits) -> Arc<Self> {
        AppState::guarded(global_namespace, limits, Guards::default())
    }

    /// New state with an empty index whose maps are bound by `guards`.
    pub fn guarded(global_namespace: Option<String>, limits: http::Limits, guards: Guards) -> Arc<Self> {
        Arc::new(AppState {
            index: RwLock::new(MapIndex::new(global_namespace).with_guards(guards)),
            synced: AtomicBool::new(false),
            cert_loaded: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            shutdown: tokio::sync::Notify::new(),
            task_failed: AtomicBool::new(false),
            maps_changed: tokio::sync::Notify::new(),
            maps_version: AtomicU64::new(0),
            metrics: metrics::Metrics::default(),
            concurrency: tokio::sync::Semaphore::new(limits.max_concurrent_reviews),
            gate_unbuilt: AtomicBool::new(false),
            limits,
        })
    }

    /// Ready to serve: certificate loaded, maps synced, every background task running, not
    /// shutting down.
    pub fn is_ready(&self) -> bool {
        self.not_ready_reason().is_none()
    }

    /// Why the process is not ready (`/readyz` says it), or `None` when it is: the one rule
    /// behind [`AppState::is_ready`] and `/readyz`.
    pub fn not_ready_reason(&self) -> Option<&'static str> {
        if self.shutting_down.load(Ordering::Acquire) {
            Some("shutting down")
        } else if self.task_failed.load(Ordering::Acquire) {
            Some("a background task stopped; the process exits so that it restarts")
        } else if !self.cert_loaded.load(Ordering::Acquire) {
            Some("no serving certificate loaded")
        } else if !self.synced.load(Ordering::Acquire) {
            Some("ImageMap cache not synced with the API server yet")
        } else {
            None
        }
    }

    /// Runs `f` on the index under the read lock (never held across an await).
    pub fn with_index<R>(&self, f: impl FnOnce(&MapIndex) -> R) -> R {
        let guard = self.index.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&guard)
    }

    /// Like [`AppState::with_index`], also giving the index's [`AppState::maps_version`].
    pub fn with_versioned_index<R>(&self, f: impl FnOnce(&MapIndex) -> R) -> (u64, R) {
        let guard = self.index.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        (self.maps_version.load(Ordering::Acquire), f(&guard))
    }

    /// Runs `f` on the index under the write lock and refreshes the cache gauges.
    pub fn update_index<R>(&self, f: impl FnOnce(&mut MapIndex) -> R) -> R {
        let mut guard = self.index.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let out = f(&mut guard);
        self.maps_version.fetch_add(1, Ordering::AcqRel);
        self.metrics.set_cache(guard.len(), guard.invalid().count(), guard.refused_len());
        self.maps_changed.notify_waiters();
        out
    }
}

/// The background tasks the server needs: each must run as long as the server does, so one that
/// ends or panics (other than the controller stopping at shutdown) takes the server down.
#[derive(Default)]
struct Supervisor {
    tasks: tokio::task::JoinSet<()>,
    names: std::collections::HashMap<tokio::task::Id, &'static str>,
}

impl Supervisor {
    fn spawn(&mut self, name: &'static str, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let handle = self.tasks.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// The next task to end: its name, and the panic message if it panicked. Pending forever
    /// when there is none.
    async fn next_exit(&mut self) -> (&'static str, Option<String>) {
        let Some(result) = self.tasks.join_next_with_id().await else {
            return std::future::pending().await;
        };
        let (id, panic) = match result {
            Ok((id, ())) => (id, None),
            Err(e) => (e.id(), Some(panic_message(e))),
        };
        (self.names.get(&id).copied().unwrap_or("a background task"), panic)
    }
}

fn panic_message(error: tokio::task::JoinError) -> String {
    match error.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into()),
        Err(e) => e.to_string(),
    }
}

/// Runs the process until SIGTERM/SIGINT: loads certificates and maps, then serves. With
/// `--role serve` it answers admission reviews and only reads ImageMaps; with `--role
/// controller` it runs the controller and serves only health and metrics. Fails if a background
/// task (certificate reload, map watch, controller) stops while serving.
pub async fn run(config: Config) -> anyhow::Result<()> {
    use anyhow::Context;
    config.check().map_err(anyhow::Error::msg)?; // main checks first; kept for other callers
    let state = AppState::guarded(config.global_namespace.clone(), config.limits(), config.guards());
    let certs = tls::CertStore::load(&config.tls_cert_file, &config.tls_private_key_file)
        .context("loading the serving certificate (--tls-cert-file / --tls-private-key-file)")?;
    state.cert_loaded.store(true, Ordering::Release);
    let tls_config = tls::server_config_with_client_ca(certs.clone(), config.client_ca_file.as_deref())
        .context("setting up TLS (--client-ca-file)")?;
    let mut tasks = Supervisor::default();
    tasks.spawn("the certificate reload", tls::watch(certs, config.tls_reload_interval, state.clone()));

    if let Some(path) = &config.imagemaps_file {
        store::load_file_once(path, &state).context("loading --imagemaps-file")?;
        tasks.spawn(
            "the --imagemaps-file reload",
            store::watch_file(path.clone(), config.maps_reload_interval, state.clone()),
        );
    }
    state.gate_unbuilt.store(config.gate_unbuilt, Ordering::Release);
    let mut controller = false;
    if config.no_cluster {
        state.synced.store(true, Ordering::Release);
    } else {
        let client = store::client(config.kubeconfig.as_deref()).await?;
        tasks.spawn("the ImageMap watch", store::watch_cluster(client.clone(), state.clone()));
        if config.role == Role::Controller {
            controller = true;
            tasks.spawn(CONTROLLER_TASK, controller::run(client, state.clone(), config.controller_options()));
        }
    }

    let listener = listener::bind(config.listen).with_context(|| format!("binding --listen {}", config.listen))?;
    // The bound address (with --listen PORT 0, the port chosen): launchers read it back.
    let address = listener.local_addr().context("reading the bound address")?;
    let routes = match config.role {
        Role::Serve => router(state.clone()),
        Role::Controller => http::controller_router(state.clone()),
    };
    tracing::info!(listen = %config.listen, %address, role = ?config.role, "serving HTTPS");
    let shutdown = listener::shutdown_signal(state.clone(), config.shutdown_delay);
    let serving = listener::serve_with_client_auth(
        listener,
        tls_config,
        routes,
        config.timeouts(),
        config.max_connections,
        config.client_ca_file.is_some(),
        shutdown,
    );
    tokio::pin!(serving);
    loop {
        tokio::select! {
            () = &mut serving => break,
            (name, panic) = tasks.next_exit() => {
                if name == CONTROLLER_TASK && panic.is_none() && state.shutting_down.load(Ordering::Acquire) {
                    controller = false;
                    continue; // it stops at shutdown, after releasing its Lease
                }
                state.task_failed.store(true, Ordering::Release);
                let why = panic.map_or_else(|| "it ended".to_string(), |p| format!("it panicked: {p}"));
                anyhow::bail!("{name} stopped ({why}); exiting so that the server restarts");
            }
        }
    }
    if controller {
        // The controller releases its Lease as soon as the signal arrives; wait for that.
        let stopped = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while tasks.next_exit().await.0 != CONTROLLER_TASK {}
        });
        if stopped.await.is_err() {
            tracing::warn!("the controller did not stop within 5s");
        }
    }
    tracing::info!("stopped");
    Ok(())
}

const CONTROLLER_TASK: &str = "the controller";

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_supervised_task_that_panics_or_ends_is_reported_by_name() {
        let mut tasks = Supervisor::default();
        tasks.spawn("the forever task", std::future::pending());
        tasks.spawn("the panicking task", async { panic!("zero period") });
        let (name, panic) = tasks.next_exit().await;
        assert_eq!(name, "the panicking task");
        assert_eq!(panic.as_deref(), Some("zero period"));
        tasks.spawn("the ending task", async {});
        assert_eq!(tasks.next_exit().await, ("the ending task", None));
    }

    #[test]
    fn readiness_fails_once_a_task_has_failed() {
        let state = AppState::new(None, http::Limits::default());
        state.cert_loaded.store(true, Ordering::Release);
        state.synced.store(true, Ordering::Release);
        assert!(state.is_ready());
        state.task_failed.store(true, Ordering::Release);
        assert!(!state.is_ready());
        assert!(state.not_ready_reason().is_some_and(|why| why.contains("background task")));
    }
}
