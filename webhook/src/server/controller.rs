//! The controller for `--gate-unbuilt` and `--restart-on-rebuild`, run by one replica at a time:
//! replicas elect a leader through a Lease ([`super::leader`]), only the holder acts, and it
//! releases the Lease on SIGTERM.
//!
//! - Gated Pods (label `imagemap.tilt.dev/gated`) are looked at every interval: once their maps
//!   are built the images are swapped in and the gate removed; after `--gate-timeout` the gate is
//!   removed with the images unchanged and a Warning Event; a Pod whose map is gone is released.
//! - A Deployment, StatefulSet or DaemonSet whose swapped Pods carry an image other than their
//!   map's current target is restarted once for that target ([`crate::rebuild`]), and an Event on
//!   the map says which. Nothing is remembered between rounds: what to do is read from the
//!   cluster each time.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};

use super::leader::Elector;
use super::AppState;
use crate::gate::{release, Release, GATED_AT_ANNOTATION, GATED_LABEL};
use crate::rebuild::{self, Targets};
use crate::workloads;

/// Controller settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Release gated Pods.
    pub gate_unbuilt: bool,
    /// Release gated Pods unchanged after this long.
    pub gate_timeout: Duration,
    /// Restart workloads when their map's image changes.
    pub restart_on_rebuild: bool,
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
    let mut leading = false;
    let mut tick = tokio::time::interval(opts.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = state.shutdown.notified() => {}
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
        }
        if !leading || !state.synced.load(Ordering::Acquire) {
            continue;
        }
        // Level-triggered: each round compares the Pods with the maps as they are now, so a
        // change made while this replica did not lead is acted on once it does.
        if opts.restart_on_rebuild {
            if let Err(e) = restart_outdated(&client, &state, &opts).await {
                tracing::warn!(error = %e, "could not look for workloads to restart");
            }
        }
        if opts.gate_unbuilt {
            if let Err(e) = release_gated(&client, &state, &opts).await {
                tracing::warn!(error = %e, "could not look at gated Pods");
            }
        }
    }
}

async fn release_gated(client: &Client, state: &AppState, opts: &Options) -> kube::Result<()> {
    let pods: Api<Pod> = Api::all(client.clone());
    let gated = pods.list(&ListParams::default().labels(&format!("{GATED_LABEL}=true"))).await?;
    let now = Timestamp::now();
    for pod in gated.items {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let gated_at = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(GATED_AT_ANNOTATION))
            .and_then(|t| t.parse::<Timestamp>().ok())
            .unwrap_or(now);
        let waited = now.as_second() - gated_at.as_second();
        let Ok(json) = serde_json::to_value(&pod) else { continue };
        let decision =
            state.with_index(|idx| release(&json, idx, &namespace, waited, opts.gate_timeout.as_secs() as i64));
        let (patch, event) = match decision {
            Release::Wait(_) => continue,
            Release::Swap { patch, swapped } if swapped.is_empty() => (
                patch,
                (
                    "Normal",
                    "ImageMapReleased",
                    "no ImageMap waits any more (deleted?); scheduling gate removed, images unchanged".to_string(),
                ),
            ),
            Release::Swap { patch, swapped } => (
                patch,
                (
                    "Normal",
                    "ImageMapSwapped",
                    format!("built image ready: {}; scheduling gate removed", swapped.join(", ")),
                ),
            ),
            Release::TimedOut { patch, waiting_for } => (
                patch,
                (
                    "Warning",
                    "ImageMapGateTimeout",
                    format!(
                        "ImageMap {} still has no built image after {waited}s; released with the original images",
                        waiting_for.join(", ")
                    ),
                ),
            ),
        };
        let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
        match api.patch(&name, &PatchParams::default(), &Patch::<()>::Json(patch.into_json_patch())).await {
            Ok(_) => {
                tracing::info!(pod = %format!("{namespace}/{name}"), reason = event.1, message = %event.2, "released gated Pod");
                let reference = ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(name.clone()),
                    namespace: Some(namespace.clone()),
                    uid: pod.metadata.uid.clone(),
                    ..Default::default()
                };
                if let Err(e) =
                    workloads::record_event(client, reference, event.0, event.1, &event.2, &opts.identity).await
                {
                    tracing::warn!(error = %e, "could not record an Event");
                }
            }
            Err(e) => {
                tracing::warn!(pod = %format!("{namespace}/{name}"), error = %e, "could not release gated Pod; retrying")
            }
        }
    }
    Ok(())
}

/// Restarts, once per new target, every workload whose Pods carry an image other than their map's
/// current target (see [`crate::rebuild`]): nothing is remembered between rounds.
async fn restart_outdated(client: &Client, state: &AppState, opts: &Options) -> kube::Result<()> {
    // Cluster maps with a target now, and where their Pods can be: the maps' own namespaces, or
    // every namespace when the global namespace has maps.
    let (targets, namespaces, everywhere) = state.with_index(|idx| {
        let mut targets = Targets::new();
        let mut namespaces = BTreeSet::new();
        let mut everywhere = false;
        for map in idx.cluster_maps() {
            if let Ok(target) = &map.target {
                targets.insert(map.id.clone(), target.familiar.clone());
                namespaces.insert(map.namespace.clone());
                everywhere |= idx.global_namespace() == Some(map.namespace.as_str());
            }
        }
        (targets, namespaces, everywhere)
    });
    if targets.is_empty() {
        return Ok(());
    }
    let mut pods = Vec::new();
    if everywhere {
        pods = workloads::swapped_pods(client, None).await?;
    } else {
        for namespace in &namespaces {
            pods.extend(workloads::swapped_pods(client, Some(namespace)).await?);
        }
    }
    let outdated = rebuild::outdated(pods.iter().map(|(w, r)| (w, r.as_slice())), &targets);
    for (workload, wanted) in outdated {
        let what = format!("{}/{workload}", workload.namespace);
        let recorded = match workloads::restarted_for(client, &workload).await {
            Ok(text) => rebuild::parse_record(text.as_deref()).unwrap_or_else(|e| {
                tracing::warn!(workload = %what, error = %e, "rewriting the record of restarts");
                Targets::new()
            }),
            Err(kube::Error::Api(s)) if s.code == 404 => continue,
            Err(e) => {
                tracing::warn!(workload = %what, error = %e, "could not read a workload to restart");
                continue;
            }
        };
        let Some(record) = rebuild::restart_record(&recorded, &wanted) else { continue };
        let now = Timestamp::now().to_string();
        match workloads::restart(client, &workload, &now, Some(&record)).await {
            Ok(()) => {
                for (id, target) in &wanted {
                    tracing::info!(map = %id, workload = %what, image = %target, "restarted after rebuild");
                    let Some((map_ns, map_name)) = id.split_once('/') else { continue };
                    let msg = format!("restarted {what}: image is now {target}");
                    if let Err(e) = workloads::record_event(
                        client,
                        workloads::image_map_ref(map_ns, map_name),
                        "Normal",
                        "Restarted",
                        &msg,
                        &opts.identity,
                    )
                    .await
                    {
                        tracing::warn!(error = %e, "could not record an Event");
                    }
                }
            }
            Err(e) => tracing::warn!(workload = %what, error = %e, "could not restart; retrying"),
        }
    }
    Ok(())
}
