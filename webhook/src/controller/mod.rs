//! The controller (`--role controller`, docs/security.md): every write imagemap makes, in a
//! process of its own with its own ServiceAccount, never called by the API server. Replicas
//! elect a leader through a Lease ([`leader`]); only the holder acts, and it releases the Lease
//! on SIGTERM. Its jobs, one module each, run each round while leading:
//!
//! - [`scope`]: keeps the webhook configuration scoped to the namespaces and images of the maps;
//! - [`policies`]: in policy mode, keeps the compiled MutatingAdmissionPolicies in step;
//! - [`gate`]: releases Pods held for an unbuilt map once it is built (or after the timeout);
//! - [`restarts`]: restarts the workloads whose Pods run an older build of a map.
//!
//! Level-triggered: what to do is read from the cluster each round, nothing is remembered.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use tracing::Instrument;

mod converge;
mod gate;
pub(crate) mod leader;
pub(crate) mod metrics;
mod policies;
mod scope;

use crate::AppState;
use imagemap_core::gate::GATED_LABEL;
use leader::Elector;

/// Controller settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Release gated Pods.
    pub gate_unbuilt: bool,
    /// Release gated Pods unchanged after this long.
    pub gate_timeout: Duration,
    /// Restart the workloads of stale Pods (`--converge`).
    pub converge: bool,
    /// The label that opts a Pod or a namespace out (never swapped, never restarted).
    pub opt_out_label: String,
    /// Keep this MutatingWebhookConfiguration scoped to where maps are.
    pub webhook_configuration: Option<String>,
    /// Keep the compiled MutatingAdmissionPolicies in step with the maps (`--mode policy`).
    pub policies: bool,
    /// The ClusterRole that owns the policies written (`--policy-owner`).
    pub policy_owner: Option<String>,
    /// Namespace of the Lease.
    pub lease_namespace: String,
    /// Name of the Lease.
    pub lease_name: String,
    /// This replica's identity.
    pub identity: String,
    /// How often to act.
    pub interval: Duration,
}

/// Runs until shutdown: elects, runs each job as a task of its own (in a span named after it)
/// that acts while this replica leads, and releases the Lease when the process is asked to
/// stop (after stopping the jobs). A job that ends or panics ends the controller, and so the
/// process (see `crate::run`).
pub async fn run(client: Client, state: Arc<AppState>, opts: Options) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), &opts.lease_namespace);
    let mut elector = Elector::new(leases, opts.lease_name.clone(), opts.identity.clone());
    let recorder = Recorder::new(
        client.clone(),
        Reporter { controller: REPORTING_CONTROLLER.into(), instance: Some(opts.identity.clone()) },
    );
    let (leading_tx, leading) = tokio::sync::watch::channel(false);
    let interval = opts.interval;
    let rounds = || Rounds::new(state.clone(), leading.clone(), interval);
    let opts = Arc::new(opts);
    let mut jobs = tokio::task::JoinSet::new();
    let mut spawn = |name: &'static str, job: futures::future::BoxFuture<'static, ()>| {
        jobs.spawn(job.instrument(tracing::info_span!("job", name)).map(move |()| name));
    };
    if let Some(name) = opts.webhook_configuration.clone() {
        spawn("scope", Box::pin(scope_job(client.clone(), state.clone(), name, rounds())));
    }
    if opts.policies {
        spawn("policies", Box::pin(policies_job(client.clone(), state.clone(), opts.clone(), rounds())));
    }
    // Pods come from watches, not a list per round: the gated ones (by label) for the gate,
    // every Pod for convergence; each watch ends with its job.
    if opts.converge {
        let pods = watch_pods(&client, watcher::Config::default(), "Pods");
        let job = converge_job(client.clone(), state.clone(), opts.clone(), pods, recorder.clone(), rounds());
        spawn("converge", Box::pin(job));
    }
    if opts.gate_unbuilt {
        let gated =
            watch_pods(&client, watcher::Config::default().labels(&format!("{GATED_LABEL}=true")), "gated Pods");
        spawn(
            "gate",
            Box::pin(gate_job(client.clone(), state.clone(), opts.clone(), gated, recorder.clone(), rounds())),
        );
    }
    let mut tick = tokio::time::interval(opts.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = state.shutdown.notified() => {}
            Some(ended) = jobs.join_next(), if !jobs.is_empty() => {
                match ended {
                    Ok(name) => tracing::error!(job = name, "a controller job ended"),
                    Err(e) => tracing::error!(error = %e, "a controller job panicked"),
                }
                return;
            }
        }
        if state.shutting_down.load(Ordering::Acquire) {
            // No job acts once the Lease is released.
            jobs.shutdown().await;
            match elector.release().await {
                Ok(()) => {
                    tracing::info!(identity = %opts.identity, lease = %opts.lease_name, "controller stopped; Lease released")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not release the Lease; another replica takes over when it expires")
                }
            }
            return;
        }
        let now_leading = match elector.try_lead().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "leader election failed");
                elector.leading()
            }
        };
        if now_leading != *leading_tx.borrow() {
            tracing::info!(identity = %opts.identity, lease = %opts.lease_name, leading = now_leading, "controller leadership changed");
            state.metrics.controller.set_leading(now_leading);
            leading_tx.send_replace(now_leading);
        }
    }
}

/// Paces a job: [`Rounds::next`] waits for the next tick, a map change (a new namespace is in
/// scope within the watch's latency) or a leadership change, and returns once this replica
/// leads and the maps are synced. Level-triggered: each round compares the cluster with the
/// maps as they are now, so a change made while this replica did not lead is acted on once it
/// does.
struct Rounds {
    state: Arc<AppState>,
    leading: tokio::sync::watch::Receiver<bool>,
    tick: tokio::time::Interval,
    led: bool,
}

impl Rounds {
    fn new(state: Arc<AppState>, leading: tokio::sync::watch::Receiver<bool>, interval: Duration) -> Rounds {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Rounds { state, leading, tick, led: false }
    }

    /// Waits for the next round this replica acts in; true when it has just started leading.
    async fn next(&mut self) -> bool {
        loop {
            tokio::select! {
                _ = self.tick.tick() => {}
                () = self.state.maps_changed.notified() => {}
                changed = self.leading.changed() => {
                    if changed.is_err() {
                        // The controller is stopping; it aborts this job.
                        std::future::pending::<()>().await;
                    }
                }
            }
            let leading = *self.leading.borrow_and_update();
            let started = leading && !self.led;
            self.led = leading;
            if leading && self.state.synced.load(Ordering::Acquire) {
                return started;
            }
        }
    }
}

async fn scope_job(client: Client, state: Arc<AppState>, configuration: String, mut rounds: Rounds) {
    loop {
        rounds.next().await;
        if let Err(e) = scope::keep_scope(&client, &state, &configuration).await {
            tracing::warn!(%configuration, error = %e, "could not scope the webhook configuration");
        }
    }
}

async fn policies_job(client: Client, state: Arc<AppState>, opts: Arc<Options>, mut rounds: Rounds) {
    let mut written = None;
    loop {
        if rounds.next().await {
            written = None; // a new leader writes everything once
        }
        if let Err(e) = policies::keep_policies(&client, &state, opts.policy_owner.as_deref(), &mut written).await {
            tracing::warn!(error = %e, "could not bring the admission policies in step with the ImageMaps");
        }
    }
}

async fn converge_job(
    client: Client,
    state: Arc<AppState>,
    opts: Arc<Options>,
    (pods, watch): (Store<Pod>, tokio::task::JoinHandle<()>),
    recorder: Recorder,
    mut rounds: Rounds,
) {
    let _watch = AbortOnDrop(Some(watch.abort_handle()));
    let mut memory = converge::Memory::default();
    loop {
        rounds.next().await;
        converge::converge(&client, &state, &opts, &pods, &recorder, &mut memory).await;
    }
}

async fn gate_job(
    client: Client,
    state: Arc<AppState>,
    opts: Arc<Options>,
    (gated, watch): (Store<Pod>, tokio::task::JoinHandle<()>),
    recorder: Recorder,
    mut rounds: Rounds,
) {
    let _watch = AbortOnDrop(Some(watch.abort_handle()));
    loop {
        rounds.next().await;
        gate::release_gated(&client, &state, &opts, &gated, &recorder).await;
    }
}

/// A reflector of the Pods `config` selects, cluster-wide, without their managed fields; the
/// task that feeds it retries with backoff and logs failures as `what`.
fn watch_pods(
    client: &Client,
    config: watcher::Config,
    what: &'static str,
) -> (Store<Pod>, tokio::task::JoinHandle<()>) {
    let (reader, writer) = reflector::store::<Pod>();
    let stream = watcher::watcher(Api::<Pod>::all(client.clone()), config)
        .default_backoff()
        .modify(|pod| pod.metadata.managed_fields = None);
    let task = reflector::reflector(writer, stream).for_each(move |event| {
        if let Err(e) = event {
            tracing::warn!(error = %e, "the watch of {what} failed; retrying");
        }
        std::future::ready(())
    });
    (reader, tokio::spawn(task))
}

/// Aborts a spawned task when dropped (the controller's watches end with the controller).
struct AbortOnDrop(Option<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// The `reportingController` of the controller's Events.
const REPORTING_CONTROLLER: &str = "imagemap.tilt.dev/controller";

/// Publishes an Event about `reference`; a failure is logged (an Event is never worth a retry).
pub(super) async fn publish(
    recorder: &Recorder,
    reference: &ObjectReference,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event { type_, reason: reason.into(), note: Some(note), action: reason.into(), secondary: None };
    if let Err(e) = recorder.publish(&event, reference).await {
        tracing::warn!(error = %e, reason, "could not record an Event");
    }
}
