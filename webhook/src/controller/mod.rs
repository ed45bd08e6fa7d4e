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

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};

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

/// Runs until shutdown: elect, act while leading, and release the Lease when the process is
/// asked to stop.
pub async fn run(client: Client, state: Arc<AppState>, opts: Options) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), &opts.lease_namespace);
    let mut elector = Elector::new(leases, opts.lease_name.clone(), opts.identity.clone());
    let recorder = Recorder::new(
        client.clone(),
        Reporter { controller: REPORTING_CONTROLLER.into(), instance: Some(opts.identity.clone()) },
    );
    // Pods come from watches, not a list per round: the gated ones (by label) for the gate,
    // every Pod for convergence.
    let gated = opts
        .gate_unbuilt
        .then(|| watch_pods(&client, watcher::Config::default().labels(&format!("{GATED_LABEL}=true")), "gated Pods"));
    let all_pods = opts.converge.then(|| watch_pods(&client, watcher::Config::default(), "Pods"));
    let _stop_watches =
        [gated.as_ref(), all_pods.as_ref()].map(|w| AbortOnDrop(w.map(|(_, task)| task.abort_handle())));
    let mut memory = converge::Memory::default();
    let mut leading = false;
    let mut policies_written = None;
    let mut tick = tokio::time::interval(opts.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = state.shutdown.notified() => {}
            // A map changed: act now rather than at the next tick (a new namespace is in scope
            // within the watch's latency).
            () = state.maps_changed.notified() => {}
        }
        if state.shutting_down.load(Ordering::Acquire) {
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
        if now_leading != leading {
            tracing::info!(identity = %opts.identity, lease = %opts.lease_name, leading = now_leading, "controller leadership changed");
            leading = now_leading;
            state.metrics.controller.set_leading(leading);
            policies_written = None;
        }
        if !leading || !state.synced.load(Ordering::Acquire) {
            continue;
        }
        // Level-triggered: each round compares the Pods with the maps as they are now, so a
        // change made while this replica did not lead is acted on once it does.
        if let Some(name) = &opts.webhook_configuration {
            if let Err(e) = scope::keep_scope(&client, &state, name).await {
                tracing::warn!(configuration = %name, error = %e, "could not scope the webhook configuration");
            }
        }
        if opts.policies {
            if let Err(e) =
                policies::keep_policies(&client, &state, opts.policy_owner.as_deref(), &mut policies_written).await
            {
                tracing::warn!(error = %e, "could not bring the admission policies in step with the ImageMaps");
            }
        }
        if let Some((pods, _)) = &all_pods {
            converge::converge(&client, &state, &opts, pods, &recorder, &mut memory).await;
        }
        if let Some((gated, _)) = &gated {
            gate::release_gated(&client, &state, &opts, gated, &recorder).await;
        }
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
