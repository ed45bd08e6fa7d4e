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
use imagemap_core::rebuild::{render_record, selects, Targets, Workload, WorkloadKind, RESTARTED_FOR_ANNOTATION};

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

/// What a workload's Pod template says of earlier restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restarts {
    /// The [`RESTARTED_FOR_ANNOTATION`] text, if any.
    pub record: Option<String>,
    /// The [`RESTARTED_AT`] time (RFC 3339), if any.
    pub at: Option<String>,
}

/// The workload's [`Restarts`]; `Err` with 404 when the workload is gone.
pub async fn restarts(client: &Client, workload: &Workload) -> kube::Result<Restarts> {
    let object = api(client, workload).get(&workload.name).await?;
    let annotations = &object.data["spec"]["template"]["metadata"]["annotations"];
    Ok(Restarts {
        record: annotations[RESTARTED_FOR_ANNOTATION].as_str().map(String::from),
        at: annotations[RESTARTED_AT].as_str().map(String::from),
    })
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

/// The Pods of `namespace` that the maps of `index` would change now, with the stale fields
/// ([`imagemap_core::stale`]): never swapped, or an older build. Finished, terminating, gated
/// and opted-out (`opt_out_label`) Pods are left out.
pub async fn stale_pods(
    client: &Client,
    namespace: &str,
    index: &imagemap_core::maps::MapIndex,
    opt_out_label: &str,
) -> kube::Result<Vec<(Pod, Vec<imagemap_core::stale::StaleField>)>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut out = Vec::new();
    for pod in pods.list(&ListParams::default()).await?.items {
        let Ok(json) = serde_json::to_value(&pod) else { continue };
        if !imagemap_core::stale::considered(&json, opt_out_label) {
            continue;
        }
        let stale = imagemap_core::stale::stale_fields(&json, index, namespace);
        if !stale.is_empty() {
            out.push((pod, stale));
        }
    }
    Ok(out)
}

/// Who owns a Pod, as far as the controller trusts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// A Deployment (through its ReplicaSet), StatefulSet or DaemonSet, verified: each owner in
    /// the chain exists with the uid the reference names, and its selector selects the Pod.
    Workload(Workload),
    /// No controller, or one that cannot be restarted safely (a Job, a bare ReplicaSet, another
    /// kind): `kind/name`, or `Pod` for a bare Pod.
    Unrestartable(String),
    /// The ownerReference names an object that is gone, has another uid, or does not select the
    /// Pod: nothing a Pod author wrote is acted on.
    Untrusted(String),
}

/// Resolves the controller of `pod` (see [`Owner`]). Reads the ReplicaSet and the workload.
pub async fn owner_of(client: &Client, pod: &Pod) -> kube::Result<Owner> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let labels = json!(pod.metadata.labels.clone().unwrap_or_default());
    let Some(owner) = pod.metadata.owner_references.iter().flatten().find(|o| o.controller == Some(true)) else {
        return Ok(Owner::Unrestartable("Pod".into()));
    };
    let described = format!("{}/{}", owner.kind, owner.name);
    let kind = match owner.kind.as_str() {
        "ReplicaSet" if owner.api_version == "apps/v1" => {
            let rs = get_dynamic::<ReplicaSet>(client, &namespace, &owner.name).await?;
            let Some(rs) = rs.filter(|rs| verified(rs, &owner.uid, &labels)) else {
                return Ok(Owner::Untrusted(described));
            };
            let Some(deployment) = rs.metadata.owner_references.iter().flatten().find(|o| o.controller == Some(true))
            else {
                return Ok(Owner::Unrestartable(described));
            };
            if deployment.kind != "Deployment" || deployment.api_version != "apps/v1" {
                return Ok(Owner::Unrestartable(format!("{}/{}", deployment.kind, deployment.name)));
            }
            let object = get_dynamic::<Deployment>(client, &namespace, &deployment.name).await?;
            if !object.is_some_and(|d| verified(&d, &deployment.uid, &labels)) {
                return Ok(Owner::Untrusted(format!("Deployment/{}", deployment.name)));
            }
            return Ok(Owner::Workload(Workload {
                namespace,
                kind: WorkloadKind::Deployment,
                name: deployment.name.clone(),
            }));
        }
        "StatefulSet" if owner.api_version == "apps/v1" => WorkloadKind::StatefulSet,
        "DaemonSet" if owner.api_version == "apps/v1" => WorkloadKind::DaemonSet,
        _ => return Ok(Owner::Unrestartable(described)),
    };
    let workload = Workload { namespace, kind, name: owner.name.clone() };
    match api(client, &workload).get_opt(&workload.name).await? {
        Some(object) if verified(&object, &owner.uid, &labels) => Ok(Owner::Workload(workload)),
        _ => Ok(Owner::Untrusted(described)),
    }
}

/// `K` by name in `namespace` as a dynamic object, `None` when absent.
async fn get_dynamic<K>(client: &Client, namespace: &str, name: &str) -> kube::Result<Option<DynamicObject>>
where
    K: kube::Resource<DynamicType = ()>,
{
    let resource = ApiResource::erase::<K>(&());
    Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &resource).get_opt(name).await
}

/// The object has the uid an ownerReference names and its selector selects `labels`.
fn verified(object: &DynamicObject, uid: &str, labels: &serde_json::Value) -> bool {
    object.metadata.uid.as_deref() == Some(uid) && selects(&object.data["spec"]["selector"], labels)
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
