//! `--converge`: every Pod runs the build its maps name. A running Pod is stale when the engine,
//! applied now to it as written, would change it ([`imagemap_core::stale`]): never swapped
//! (created before the map's build, or admitted while the webhook was down, busy or out of
//! scope) or swapped to an older build. The workload that owns a stale Pod (verified by uid and
//! selector, [`workloads::owner_of`]) is restarted once per (map, target), recorded on its Pod
//! template ([`rebuild::restart_record`]), and not more often than [`MIN_RESTART_INTERVAL`];
//! a bare Pod or a Job cannot be restarted safely and gets a Warning Event instead.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ObjectReference, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::{EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::{Api, Client};

use super::policies::swaps_in_effect;
use super::{publish, Options};
use crate::AppState;
use imagemap_cluster::workloads::{self, Owner};
use imagemap_core::rebuild::{self, Targets, Workload};
use imagemap_core::stale::{considered, stale_fields, StaleField};

/// A workload is not restarted again sooner than this after its last restart (a burst of map
/// changes restarts it once the burst is over, not once per change).
pub const MIN_RESTART_INTERVAL: Duration = Duration::from_secs(5);

/// What the job remembers between rounds: what it already reported (an Event per bare Pod and
/// target, not one per round), and each Pod's stale fields as computed for its resourceVersion
/// and the maps' version (a cache: a round recomputes only Pods or maps that changed). What to
/// restart is read from the cluster each round.
#[derive(Default)]
pub(super) struct Memory {
    reported: HashSet<(String, String)>,
    computed: HashMap<String, Computed>,
}

/// A Pod's stale fields, for the resourceVersion and maps version they were computed for.
struct Computed {
    resource_version: String,
    maps_version: u64,
    stale: Vec<StaleField>,
}

/// The stale fields of the Pods in `pods` that the controller may act on: running or pending,
/// not being deleted, not held by our gate (the gate job releases those), not opted out (Pod or
/// namespace label `opts.opt_out_label`), in a namespace that is not protected.
async fn stale_pods(
    client: &Client,
    state: &AppState,
    opts: &Options,
    pods: &Store<Pod>,
    memory: &mut Memory,
) -> Vec<(std::sync::Arc<Pod>, Vec<StaleField>)> {
    let mut found = Vec::new();
    let mut computed = HashMap::with_capacity(memory.computed.len());
    state.with_index(|idx| {
        // Read under the index's lock: writers change both together.
        let maps_version = state.maps_version.load(std::sync::atomic::Ordering::Acquire);
        for pod in pods.state() {
            let (Some(uid), Some(rv)) = (pod.metadata.uid.clone(), pod.metadata.resource_version.clone()) else {
                continue;
            };
            let entry = match memory.computed.remove(&uid) {
                Some(c) if c.resource_version == rv && c.maps_version == maps_version => c,
                _ => {
                    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
                    let stale = match serde_json::to_value(&*pod) {
                        Ok(json) if considered(&json, &opts.opt_out_label) => stale_fields(&json, idx, namespace),
                        _ => Vec::new(),
                    };
                    Computed { resource_version: rv, maps_version, stale }
                }
            };
            if !entry.stale.is_empty() {
                found.push((pod, entry.stale.clone()));
            }
            computed.insert(uid, entry);
        }
    });
    memory.computed = computed;
    // Namespaces opted out by label are read only for namespaces with stale Pods.
    let mut opted_out: HashMap<String, bool> = HashMap::new();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut kept = Vec::new();
    for (pod, stale) in found {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        if !opted_out.contains_key(&namespace) {
            let out = match namespaces.get_metadata_opt(&namespace).await {
                Ok(ns) => ns.and_then(|n| n.metadata.labels).is_some_and(|l| l.contains_key(&opts.opt_out_label)),
                Err(e) => {
                    tracing::warn!(%namespace, error = %e, "could not read a namespace's labels; its Pods wait for the next round");
                    true
                }
            };
            opted_out.insert(namespace.clone(), out);
        }
        if opted_out.get(&namespace) == Some(&false) {
            kept.push((pod, stale));
        }
    }
    kept
}

/// One round: finds the stale Pods, restarts their workloads (once per map and target) and
/// reports those that cannot be restarted. Sets `imagemap_stale_pods`.
pub(super) async fn converge(
    client: &Client,
    state: &AppState,
    opts: &Options,
    pods: &Store<Pod>,
    recorder: &Recorder,
    memory: &mut Memory,
) {
    let stale = stale_pods(client, state, opts, pods, memory).await;
    let mut per_namespace: BTreeMap<String, usize> = BTreeMap::new();
    let mut wanted: BTreeMap<Workload, Targets> = BTreeMap::new();
    let mut owners: HashMap<String, Owner> = HashMap::new();
    for (pod, fields) in &stale {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        *per_namespace.entry(namespace.clone()).or_default() += 1;
        let key =
            pod.metadata.owner_references.iter().flatten().find(|o| o.controller == Some(true)).map(|o| o.uid.clone());
        let owner = match key.as_ref().and_then(|k| owners.get(k)) {
            Some(owner) => owner.clone(),
            None => match workloads::owner_of(client, pod).await {
                Ok(owner) => {
                    if let Some(k) = key {
                        owners.insert(k, owner.clone());
                    }
                    owner
                }
                Err(e) => {
                    tracing::warn!(pod = %pod_name(pod), error = %e, "could not resolve a stale Pod's owner; retrying");
                    continue;
                }
            },
        };
        match owner {
            Owner::Workload(workload) => {
                let targets = wanted.entry(workload).or_default();
                targets.extend(fields.iter().map(|f| (f.image_map.clone(), f.wanted.clone())));
            }
            Owner::Unrestartable(kind) => {
                report_unrestartable(pod, fields, &kind, recorder, &mut memory.reported).await
            }
            Owner::Untrusted(owner) => {
                tracing::debug!(pod = %pod_name(pod), %owner, "a stale Pod's owner does not own it; not restarted")
            }
        }
    }
    state.metrics.controller.set_stale_pods(&per_namespace);
    for (workload, targets) in wanted {
        restart_once(client, state, recorder, &workload, &targets).await;
    }
}

fn pod_name(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Restarts `workload` unless it was already restarted for every target of `wanted`, or less
/// than [`MIN_RESTART_INTERVAL`] ago, or a new Pod would not be swapped yet (webhook down, or
/// the new build's policy not loaded).
async fn restart_once(client: &Client, state: &AppState, recorder: &Recorder, workload: &Workload, wanted: &Targets) {
    let what = format!("{}/{workload}", workload.namespace);
    let restarts = match workloads::restarts(client, workload).await {
        Ok(r) => r,
        Err(kube::Error::Api(s)) if s.code == 404 => return,
        Err(e) => {
            tracing::warn!(workload = %what, error = %e, "could not read a workload to restart");
            return;
        }
    };
    let recorded = rebuild::parse_record(restarts.record.as_deref()).unwrap_or_else(|e| {
        tracing::warn!(workload = %what, error = %e, "rewriting the record of restarts");
        Targets::new()
    });
    let Some(record) = rebuild::restart_record(&recorded, wanted) else { return };
    let recent = restarts
        .at
        .as_deref()
        .and_then(|t| t.parse::<Timestamp>().ok())
        .is_some_and(|at| Timestamp::now().as_second() - at.as_second() < MIN_RESTART_INTERVAL.as_secs() as i64);
    if recent {
        tracing::debug!(workload = %what, "restarted moments ago; the next round looks again");
        return;
    }
    // A restart must give Pods the new build: a dry-run Pod shows whether the webhook answers
    // (or, in policy mode, whether the new build's policy is loaded). While it does not, the next
    // round looks again, so Pods missed during an outage are restarted once it is over.
    let selectors =
        state.with_index(|idx| idx.all_maps().map(|m| (m.id.clone(), m.selector.full())).collect::<BTreeMap<_, _>>());
    if !swaps_in_effect(client, &workload.namespace, wanted, &selectors).await {
        tracing::debug!(workload = %what, "new Pods would not be swapped yet; restart deferred");
        return;
    }
    let now = Timestamp::now().to_string();
    match workloads::restart(client, workload, &now, Some(&record)).await {
        Ok(()) => {
            state.metrics.controller.restarted();
            for (id, target) in wanted {
                tracing::info!(map = %id, workload = %what, image = %target, "restarted a workload running a stale image");
                let Some((map_ns, map_name)) = id.split_once('/') else { continue };
                let note = format!("restarted {what}: image is now {target}");
                let map = workloads::image_map_ref(map_ns, map_name);
                publish(recorder, &map, EventType::Normal, "Restarted", note).await;
            }
        }
        Err(e) => tracing::warn!(workload = %what, error = %e, "could not restart; retrying"),
    }
}

/// A Warning Event on a stale Pod that cannot be restarted, once per Pod and target.
async fn report_unrestartable(
    pod: &Pod,
    fields: &[StaleField],
    owner: &str,
    recorder: &Recorder,
    reported: &mut HashSet<(String, String)>,
) {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let fresh: Vec<&StaleField> =
        fields.iter().filter(|f| reported.insert((uid.clone(), format!("{}={}", f.field, f.wanted)))).collect();
    if fresh.is_empty() {
        return;
    }
    let what: Vec<String> = fresh
        .iter()
        .map(|f| {
            format!(
                "{} is {} but ImageMap {} names {} ({})",
                f.field,
                f.current,
                f.image_map,
                f.wanted,
                f.reason.describe()
            )
        })
        .collect();
    let note = format!(
        "{}; owned by {owner}, which imagemap does not restart: recreate the Pod to run the current build",
        what.join("; ")
    );
    tracing::info!(pod = %pod_name(pod), %note, "stale Pod cannot be restarted");
    let reference = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: pod.metadata.name.clone(),
        namespace: pod.metadata.namespace.clone(),
        uid: pod.metadata.uid.clone(),
        ..Default::default()
    };
    publish(recorder, &reference, EventType::Warning, "ImageMapStale", note).await;
}
