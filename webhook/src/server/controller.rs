//! The controller for `--gate-unbuilt` and `--restart-on-rebuild`, run by one replica at a time:
//! replicas elect a leader through a Lease, and only the holder acts.
//!
//! - Gated Pods (label `imagemap.tilt.dev/gated`) are looked at every interval: once their maps
//!   are built the images are swapped in and the gate removed; after `--gate-timeout` the gate is
//!   removed with the images unchanged and a Warning Event; a Pod whose map is gone is released.
//! - When a map's injected image changes, the Deployments, StatefulSets and DaemonSets whose Pods
//!   it swapped are restarted, and an Event on the map says which.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};

use super::AppState;
use crate::gate::{release, Release, GATED_AT_ANNOTATION, GATED_LABEL};
use crate::workloads;

/// How long a Lease is valid without renewal.
const LEASE_SECONDS: i32 = 15;

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

/// Runs forever: elect, then act while leading.
pub async fn run(client: Client, state: Arc<AppState>, opts: Options) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), &opts.lease_namespace);
    let mut leading = false;
    let mut seen_targets: Option<HashMap<String, String>> = None;
    let mut tick = tokio::time::interval(opts.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now_leading = match elect(&leases, &opts).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "leader election failed; not acting this round");
                false
            }
        };
        if now_leading != leading {
            tracing::info!(identity = %opts.identity, lease = %opts.lease_name, leading = now_leading, "controller leadership changed");
            leading = now_leading;
        }
        if !state.synced.load(Ordering::Acquire) {
            continue;
        }
        // Every replica follows the maps' images, so one that becomes leader (or regains the
        // lead after a failed renewal) acts only on changes since its last look.
        if opts.restart_on_rebuild {
            restart_rebuilt(&client, &state, &opts, &mut seen_targets, leading).await;
        }
        if leading && opts.gate_unbuilt {
            if let Err(e) = release_gated(&client, &state, &opts).await {
                tracing::warn!(error = %e, "could not look at gated Pods");
            }
        }
    }
}

/// Acquires or renews the Lease; true while this replica holds it.
async fn elect(leases: &Api<Lease>, opts: &Options) -> kube::Result<bool> {
    let now = Timestamp::now();
    let fresh = |transitions: i32| LeaseSpec {
        holder_identity: Some(opts.identity.clone()),
        lease_duration_seconds: Some(LEASE_SECONDS),
        acquire_time: Some(MicroTime(now)),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..Default::default()
    };
    let Some(mut lease) = leases.get_opt(&opts.lease_name).await? else {
        let lease = Lease {
            metadata: ObjectMeta { name: Some(opts.lease_name.clone()), ..Default::default() },
            spec: Some(fresh(0)),
        };
        return match leases.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    let renewed = spec.renew_time.as_ref().map_or(0, |t| t.0.as_second());
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS));
    let expired = renewed + duration < now.as_second();
    let new_spec = if holder == opts.identity {
        LeaseSpec { renew_time: Some(MicroTime(now)), ..spec }
    } else if expired || holder.is_empty() {
        fresh(spec.lease_transitions.unwrap_or(0) + 1)
    } else {
        return Ok(false);
    };
    lease.spec = Some(new_spec);
    // The resourceVersion makes this a compare-and-swap: two replicas never both win.
    match leases.replace(&opts.lease_name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
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

async fn restart_rebuilt(
    client: &Client,
    state: &AppState,
    opts: &Options,
    seen: &mut Option<HashMap<String, String>>,
    act: bool,
) {
    let targets: HashMap<String, (String, String, String)> = state.with_index(|idx| {
        idx.cluster_maps()
            .filter_map(|m| {
                m.target
                    .as_ref()
                    .ok()
                    .map(|t| (m.id.clone(), (m.namespace.clone(), m.name.clone(), t.familiar.clone())))
            })
            .collect()
    });
    let Some(previous) = seen.as_mut() else {
        // First look: remember, restart nothing.
        *seen = Some(targets.into_iter().map(|(id, (_, _, t))| (id, t)).collect());
        return;
    };
    for (id, (namespace, name, target)) in &targets {
        let changed = previous.get(id).is_some_and(|old| old != target);
        previous.insert(id.clone(), target.clone());
        if !changed || !act {
            continue;
        }
        let owners = match workloads::owners(client, namespace, id).await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(map = %id, error = %e, "could not find workloads to restart");
                continue;
            }
        };
        let now = Timestamp::now().to_string();
        for workload in &owners {
            let what = format!("{}/{}", workload.0, workload.1);
            match workloads::restart(client, namespace, workload, &now).await {
                Ok(()) => {
                    tracing::info!(map = %id, workload = %what, image = %target, "restarted after rebuild");
                    let msg = format!("restarted {what}: image is now {target}");
                    let _ = workloads::record_event(
                        client,
                        workloads::image_map_ref(namespace, name),
                        "Normal",
                        "Restarted",
                        &msg,
                        &opts.identity,
                    )
                    .await;
                }
                Err(e) => tracing::warn!(map = %id, workload = %what, error = %e, "could not restart"),
            }
        }
    }
    previous.retain(|id, _| targets.contains_key(id));
}
