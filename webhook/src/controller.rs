//! The controller for `--gate-unbuilt` and `--restart-on-rebuild`, run by one replica at a time:
//! replicas elect a leader through a Lease ([`super::leader`]), only the holder acts, and it
//! releases the Lease on SIGTERM.
//!
//! - Gated Pods (label `imagemap.tilt.dev/gated`) are looked at every interval: once their maps
//!   are built the images are swapped in and the gate removed; after `--gate-timeout` the gate is
//!   removed with the images unchanged and a Warning Event; a Pod whose map is gone is released.
//! - A Deployment, StatefulSet or DaemonSet whose swapped Pods carry an image other than their
//!   map's current target is restarted once for that target ([`imagemap_core::rebuild`]), and an Event on
//!   the map says which. Nothing is remembered between rounds: what to do is read from the
//!   cluster each time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};

use super::leader::Elector;
use super::AppState;
use imagemap_cluster::policy_sync;
use imagemap_cluster::workloads;
use imagemap_core::gate::{release, Release, GATED_AT_ANNOTATION, GATED_LABEL};
use imagemap_core::policy;
use imagemap_core::rebuild::{self, Targets};
use imagemap_core::scope;

/// Controller settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Release gated Pods.
    pub gate_unbuilt: bool,
    /// Release gated Pods unchanged after this long.
    pub gate_timeout: Duration,
    /// Restart workloads when their map's image changes.
    pub restart_on_rebuild: bool,
    /// Keep this MutatingWebhookConfiguration scoped to where maps are.
    pub webhook_configuration: Option<String>,
    /// Keep the compiled MutatingAdmissionPolicies in step with the maps (`--mode policy`).
    pub policies: bool,
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
    // Gated Pods come from a label-selected watch, not a list per round.
    let (gated, gated_watch) = if opts.gate_unbuilt {
        let (reader, writer) = reflector::store::<Pod>();
        let config = watcher::Config::default().labels(&format!("{GATED_LABEL}=true"));
        let stream = reflector::reflector(writer, watcher::watcher(Api::<Pod>::all(client.clone()), config))
            .default_backoff()
            .for_each(|event| {
                if let Err(e) = event {
                    tracing::warn!(error = %e, "the watch of gated Pods failed; retrying");
                }
                std::future::ready(())
            });
        (Some(reader), Some(tokio::spawn(stream)))
    } else {
        (None, None)
    };
    let _stop_watch = AbortOnDrop(gated_watch);
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
            policies_written = None;
        }
        if !leading || !state.synced.load(Ordering::Acquire) {
            continue;
        }
        // Level-triggered: each round compares the Pods with the maps as they are now, so a
        // change made while this replica did not lead is acted on once it does.
        if let Some(name) = &opts.webhook_configuration {
            if let Err(e) = keep_scope(&client, &state, name).await {
                tracing::warn!(configuration = %name, error = %e, "could not scope the webhook configuration");
            }
        }
        if opts.policies {
            if let Err(e) = keep_policies(&client, &state, &mut policies_written).await {
                tracing::warn!(error = %e, "could not bring the admission policies in step with the ImageMaps");
            }
        }
        if opts.restart_on_rebuild {
            if let Err(e) = restart_outdated(&client, &state, &recorder, opts.policies).await {
                tracing::warn!(error = %e, "could not look for workloads to restart");
            }
        }
        if let Some(gated) = &gated {
            release_gated(&client, &state, &opts, gated, &recorder).await;
        }
    }
}

/// Keeps every webhook of the configuration `name` scoped to the namespaces the maps need, with
/// a match condition ([`imagemap_core::scope`]); writes only when that changes.
async fn keep_scope(client: &Client, state: &AppState, name: &str) -> kube::Result<()> {
    let (wanted, images) = state.with_index(|idx| (scope::scope_of(idx), scope::image_tokens(idx)));
    state.metrics.scope_images(images.is_some());
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let mut config = api.get(name).await?;
    let mut changed = false;
    for hook in config.webhooks.iter_mut().flatten() {
        let next = scope::scoped_conditions(hook.match_conditions.as_deref(), &wanted, images.as_ref());
        if hook.match_conditions.as_deref().unwrap_or_default() != next.as_slice() {
            hook.match_conditions = (!next.is_empty()).then_some(next);
            changed = true;
        }
    }
    if changed {
        // The resourceVersion makes this a compare-and-swap with the admin's own edits.
        api.replace(name, &PostParams::default(), &config).await?;
        let scope = match &wanted {
            scope::Scope::Everywhere => "every namespace".to_string(),
            scope::Scope::Namespaces(n) if n.is_empty() => "no namespace".to_string(),
            scope::Scope::Namespaces(n) => n.iter().cloned().collect::<Vec<_>>().join(","),
        };
        let images = images.map_or_else(
            || "any (a map swaps env values, or more than 32 selector names)".to_string(),
            |t| t.into_iter().collect::<Vec<_>>().join(","),
        );
        tracing::info!(configuration = %name, %scope, %images, "webhook scoped to where ImageMaps are");
    }
    Ok(())
}

/// What [`keep_policies`] last wrote: the index version it compiled, the compiled hash, and when.
struct Written {
    maps_version: u64,
    hash: String,
    at: Instant,
}

/// Keeps the compiled admission policies in step with the maps (`--mode policy`). A compile
/// error (too many maps) leaves every object as it is, with a log line that says why.
/// `last` is what was last written: the maps are compiled again only when the index changed, and
/// the same policies are written again only after [`POLICY_RESYNC`], which repairs hand edits
/// and deletions.
async fn keep_policies(client: &Client, state: &AppState, last: &mut Option<Written>) -> anyhow::Result<()> {
    let fresh = |w: &Written| w.at.elapsed() < POLICY_RESYNC;
    let current = state.maps_version.load(Ordering::Acquire);
    if last.as_ref().is_some_and(|w| w.maps_version == current && fresh(w)) {
        return Ok(());
    }
    let (maps_version, compiled) = state.with_versioned_index(policy::compile_index);
    let compiled = compiled?;
    let hash = policy_sync::compiled_hash(&compiled);
    if let Some(w) = last.as_mut().filter(|w| w.hash == hash && fresh(w)) {
        w.maps_version = maps_version;
        return Ok(());
    }
    *last = None;
    let synced = policy_sync::sync(client, &compiled, policy_sync::Prune::All).await?;
    if !synced.is_noop() {
        tracing::info!(
            applied = %synced.applied.join(","),
            deleted = %synced.deleted.join(","),
            unchanged = synced.unchanged.len(),
            "admission policies brought in step with the ImageMaps"
        );
    }
    *last = Some(Written { maps_version, hash, at: Instant::now() });
    Ok(())
}

/// True when every map of `wanted` (id -> target) is in effect in `namespace`, as a dry-run Pod
/// naming its selector shows. A probe the API server refuses (no RBAC for it) counts as in
/// effect, with a warning: restarting as in webhook mode beats never restarting.
async fn policy_in_effect(
    client: &Client,
    namespace: &str,
    wanted: &Targets,
    selectors: &BTreeMap<String, String>,
) -> bool {
    for (id, target) in wanted {
        let Some(selector) = selectors.get(id) else { continue };
        match policy_sync::probe(client, namespace, selector, id, target).await {
            Ok(policy::Probe::Waiting) => {
                tracing::debug!(map = %id, %namespace, "the policy with the new build is not in effect yet; restart deferred");
                return false;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(map = %id, %namespace, error = %e, "could not check the policy with a dry-run Pod; restarting anyway")
            }
        }
    }
    true
}

/// How often unchanged policies are written again anyway.
const POLICY_RESYNC: Duration = Duration::from_secs(30);

/// Aborts a spawned task when dropped (the controller's watch ends with the controller).
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

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
async fn publish(recorder: &Recorder, reference: &ObjectReference, type_: EventType, reason: &str, note: String) {
    let event = Event { type_, reason: reason.into(), note: Some(note), action: reason.into(), secondary: None };
    if let Err(e) = recorder.publish(&event, reference).await {
        tracing::warn!(error = %e, reason, "could not record an Event");
    }
}

async fn release_gated(client: &Client, state: &AppState, opts: &Options, gated: &Store<Pod>, recorder: &Recorder) {
    let now = Timestamp::now();
    for pod in gated.state() {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let gated_at = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(GATED_AT_ANNOTATION))
            .and_then(|t| t.parse::<Timestamp>().ok())
            // Without our annotation (removed or edited by someone), the Pod's age counts.
            .or_else(|| pod.metadata.creation_timestamp.as_ref().map(|t| t.0))
            .unwrap_or(now);
        let waited = now.as_second() - gated_at.as_second();
        let json = match serde_json::to_value(&*pod) {
            Ok(json) => json,
            Err(e) => {
                tracing::warn!(pod = %format!("{namespace}/{name}"), error = %e, "could not read a gated Pod");
                continue;
            }
        };
        let decision =
            state.with_index(|idx| release(&json, idx, &namespace, waited, opts.gate_timeout.as_secs() as i64));
        let (patch, event) = match decision {
            Release::Wait(_) => continue,
            Release::Swap { patch, swapped } if swapped.is_empty() => (
                patch,
                (
                    EventType::Normal,
                    "ImageMapReleased",
                    "no ImageMap waits any more (deleted?); scheduling gate removed, images unchanged".to_string(),
                ),
            ),
            Release::Swap { patch, swapped } => (
                patch,
                (
                    EventType::Normal,
                    "ImageMapSwapped",
                    format!("built image ready: {}; scheduling gate removed", swapped.join(", ")),
                ),
            ),
            Release::TimedOut { patch, waiting_for } => (
                patch,
                (
                    EventType::Warning,
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
                publish(recorder, &reference, event.0, event.1, event.2).await;
            }
            // Released meanwhile (the watch has not told yet) or deleted: the test op or the
            // lookup fails, and there is nothing to do.
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 422 => {
                tracing::debug!(pod = %format!("{namespace}/{name}"), "gated Pod already released or gone")
            }
            Err(e) => {
                tracing::warn!(pod = %format!("{namespace}/{name}"), error = %e, "could not release gated Pod; retrying")
            }
        }
    }
}

/// Restarts, once per new target, every workload whose Pods carry an image other than their map's
/// current target (see [`imagemap_core::rebuild`]): nothing is remembered between rounds.
/// In policy mode (`policies`), a workload is restarted for a new build only once a dry-run Pod
/// in its namespace shows the compiled policy with that build in effect: the API server loads a
/// new policy a moment after it is written, and Pods created before that would keep the old image.
async fn restart_outdated(client: &Client, state: &AppState, recorder: &Recorder, policies: bool) -> kube::Result<()> {
    // Cluster maps with a target now, and where their Pods can be: the maps' own namespaces, or
    // every namespace when the global namespace has maps.
    let (targets, selectors, namespaces, everywhere) = state.with_index(|idx| {
        let mut targets = Targets::new();
        let mut selectors = BTreeMap::new();
        let mut namespaces = BTreeSet::new();
        let mut everywhere = false;
        for map in idx.cluster_maps() {
            if let Ok(target) = &map.target {
                targets.insert(map.id.clone(), target.familiar.clone());
                selectors.insert(map.id.clone(), map.selector.full());
                namespaces.insert(map.namespace.clone());
                everywhere |= idx.global_namespace() == Some(map.namespace.as_str());
            }
        }
        (targets, selectors, namespaces, everywhere)
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
        if policies && !policy_in_effect(client, &workload.namespace, &wanted, &selectors).await {
            continue; // the next round looks again
        }
        let now = Timestamp::now().to_string();
        match workloads::restart(client, &workload, &now, Some(&record)).await {
            Ok(()) => {
                for (id, target) in &wanted {
                    tracing::info!(map = %id, workload = %what, image = %target, "restarted after rebuild");
                    let Some((map_ns, map_name)) = id.split_once('/') else { continue };
                    let note = format!("restarted {what}: image is now {target}");
                    let map = workloads::image_map_ref(map_ns, map_name);
                    publish(recorder, &map, EventType::Normal, "Restarted", note).await;
                }
            }
            Err(e) => tracing::warn!(workload = %what, error = %e, "could not restart; retrying"),
        }
    }
    Ok(())
}
