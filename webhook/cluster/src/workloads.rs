//! Cluster calls around restarting the workloads whose Pods a map swapped, the way
//! `kubectl rollout restart` does (a Pod-template annotation). Shared by the webhook's
//! `--restart-on-rebuild` controller and `kubectl imagemap rollout`; what to restart is decided
//! by the pure [`imagemap_core::rebuild`].

use std::collections::{BTreeSet, HashMap};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Event, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

use imagemap_core::inject::{parse_records, SwapRecord, SWAPS_ANNOTATION};
use imagemap_core::rebuild::{render_record, Targets, Workload, WorkloadKind, RESTARTED_FOR_ANNOTATION};

/// The annotation `kubectl rollout restart` sets on the Pod template.
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

/// Every Pod in `namespace` (every namespace when `None`) that carries a swap annotation and is
/// owned by a Deployment (through its ReplicaSet), StatefulSet or DaemonSet, with its records.
/// Reads metadata only.
pub async fn swapped_pods(client: &Client, namespace: Option<&str>) -> kube::Result<Vec<(Workload, Vec<SwapRecord>)>> {
    let pods: Api<Pod> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    // A ReplicaSet's Deployment, looked up once per call.
    let mut deployments: HashMap<(String, String), Option<String>> = HashMap::new();
    let mut out = Vec::new();
    for pod in pods.list_metadata(&ListParams::default()).await?.items {
        let meta = pod.metadata;
        let Some(text) = meta.annotations.as_ref().and_then(|a| a.get(SWAPS_ANNOTATION)) else { continue };
        let records = parse_records(text);
        let namespace = meta.namespace.clone().unwrap_or_default();
        let Some(owner) = meta.owner_references.iter().flatten().find(|o| o.controller == Some(true)) else {
            continue;
        };
        let (kind, name) = match owner.kind.as_str() {
            "ReplicaSet" => {
                let key = (namespace.clone(), owner.name.clone());
                let deployment = match deployments.get(&key) {
                    Some(d) => d.clone(),
                    None => {
                        let d = replica_set_deployment(client, &namespace, &owner.name).await?;
                        deployments.insert(key, d.clone());
                        d
                    }
                };
                let Some(deployment) = deployment else { continue };
                (WorkloadKind::Deployment, deployment)
            }
            "StatefulSet" => (WorkloadKind::StatefulSet, owner.name.clone()),
            "DaemonSet" => (WorkloadKind::DaemonSet, owner.name.clone()),
            _ => continue,
        };
        out.push((Workload { namespace, kind, name }, records));
    }
    Ok(out)
}

async fn replica_set_deployment(client: &Client, namespace: &str, name: &str) -> kube::Result<Option<String>> {
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), namespace);
    let Some(rs) = replica_sets.get_metadata_opt(name).await? else { return Ok(None) };
    Ok(rs.metadata.owner_references.into_iter().flatten().find(|o| o.kind == "Deployment").map(|o| o.name))
}

/// The workloads owning Pods in `namespace` that `map_id` (`namespace/name`) swapped.
pub async fn owners(client: &Client, namespace: &str, map_id: &str) -> kube::Result<BTreeSet<Workload>> {
    Ok(swapped_pods(client, Some(namespace))
        .await?
        .into_iter()
        .filter(|(_, records)| records.iter().any(|r| r.image_map == map_id))
        .map(|(workload, _)| workload)
        .collect())
}

fn api(client: &Client, workload: &Workload) -> Api<DynamicObject> {
    let resource = match workload.kind {
        WorkloadKind::Deployment => ApiResource::erase::<Deployment>(&()),
        WorkloadKind::StatefulSet => ApiResource::erase::<StatefulSet>(&()),
        WorkloadKind::DaemonSet => ApiResource::erase::<DaemonSet>(&()),
    };
    Api::namespaced_with(client.clone(), &workload.namespace, &resource)
}

/// The workload's [`RESTARTED_FOR_ANNOTATION`] text, `Ok(None)` when absent; `Err` with 404
/// when the workload is gone.
pub async fn restarted_for(client: &Client, workload: &Workload) -> kube::Result<Option<String>> {
    let object = api(client, workload).get(&workload.name).await?;
    Ok(object.data["spec"]["template"]["metadata"]["annotations"][RESTARTED_FOR_ANNOTATION].as_str().map(String::from))
}

/// Restarts one workload by stamping its Pod template with `now` (RFC 3339), and with `record`
/// as its [`RESTARTED_FOR_ANNOTATION`] when given.
pub async fn restart(client: &Client, workload: &Workload, now: &str, record: Option<&Targets>) -> kube::Result<()> {
    let mut annotations = json!({ RESTARTED_AT: now });
    if let Some(record) = record {
        annotations[RESTARTED_FOR_ANNOTATION] = json!(render_record(record));
    }
    let patch = json!({"spec": {"template": {"metadata": {"annotations": annotations}}}});
    api(client, workload).patch(&workload.name, &PatchParams::default(), &Patch::Merge(&patch)).await.map(drop)
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
