//! Restarting the workloads whose Pods a map swapped, the way `kubectl rollout restart` does
//! (a Pod-template annotation). Shared by the webhook's `--restart-on-rebuild` controller and
//! `kubectl imagemap rollout`.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Event, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

use crate::inject::{parse_records, SWAPS_ANNOTATION};

/// The annotation `kubectl rollout restart` sets on the Pod template.
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

/// A workload to restart: kind (`deployment`, `statefulset`, `daemonset`) and name.
pub type Workload = (String, String);

/// True when `pod`'s swap annotation names `map_id` (`namespace/name`).
pub fn swapped_by(pod: &Pod, map_id: &str) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SWAPS_ANNOTATION))
        .is_some_and(|text| parse_records(text).iter().any(|r| r.image_map == map_id))
}

/// The workloads owning Pods in `namespace` that `map_id` swapped (ReplicaSets resolved to their
/// Deployments).
pub async fn owners(client: &Client, namespace: &str, map_id: &str) -> kube::Result<BTreeSet<Workload>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), namespace);
    let mut out = BTreeSet::new();
    for pod in pods.list(&ListParams::default()).await?.items.iter().filter(|p| swapped_by(p, map_id)) {
        for owner in pod.metadata.owner_references.iter().flatten().filter(|o| o.controller == Some(true)) {
            match owner.kind.as_str() {
                "ReplicaSet" => {
                    if let Some(rs) = replica_sets.get_opt(&owner.name).await? {
                        for d in rs.metadata.owner_references.iter().flatten().filter(|o| o.kind == "Deployment") {
                            out.insert(("deployment".to_string(), d.name.clone()));
                        }
                    }
                }
                "StatefulSet" => {
                    out.insert(("statefulset".to_string(), owner.name.clone()));
                }
                "DaemonSet" => {
                    out.insert(("daemonset".to_string(), owner.name.clone()));
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

/// Restarts one workload by stamping its Pod template with `now` (RFC 3339).
pub async fn restart(client: &Client, namespace: &str, workload: &Workload, now: &str) -> kube::Result<()> {
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: now}}}}});
    let params = PatchParams::default();
    let (kind, name) = workload;
    match kind.as_str() {
        "deployment" => Api::<Deployment>::namespaced(client.clone(), namespace)
            .patch(name, &params, &Patch::Merge(&patch))
            .await
            .map(drop),
        "statefulset" => Api::<StatefulSet>::namespaced(client.clone(), namespace)
            .patch(name, &params, &Patch::Merge(&patch))
            .await
            .map(drop),
        _ => Api::<DaemonSet>::namespaced(client.clone(), namespace)
            .patch(name, &params, &Patch::Merge(&patch))
            .await
            .map(drop),
    }
}

/// Records an Event about `object` (best effort: failures are only logged by the caller).
pub async fn record_event(
    client: &Client,
    object: ObjectReference,
    type_: &str,
    reason: &str,
    message: &str,
    reporter: &str,
) -> kube::Result<()> {
    let namespace = object.namespace.clone().unwrap_or_else(|| "default".into());
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let event = Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}.", object.name.as_deref().unwrap_or("imagemap"))),
            namespace: Some(namespace.clone()),
            ..Default::default()
        },
        involved_object: object,
        reason: Some(reason.into()),
        message: Some(message.chars().take(1000).collect()),
        type_: Some(type_.into()),
        count: Some(1),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        source: Some(k8s_openapi::api::core::v1::EventSource { component: Some("imagemap".into()), host: None }),
        reporting_component: Some("imagemap.tilt.dev/controller".into()),
        reporting_instance: Some(reporter.into()),
        ..Default::default()
    };
    Api::<Event>::namespaced(client.clone(), &namespace).create(&PostParams::default(), &event).await.map(drop)
}

/// An object reference to an ImageMap, for Events.
pub fn image_map_ref(namespace: &str, name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("tilt.dev/v1alpha1".into()),
        kind: Some("ImageMap".into()),
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        ..Default::default()
    }
}
