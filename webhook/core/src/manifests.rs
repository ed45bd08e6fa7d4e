//! Applying the engine to manifests as a user writes them: Pods, and the Pod templates of
//! workloads (Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job,
//! CronJob, PodTemplate). Other objects pass through unchanged. Used by `kubectl imagemap inject`
//! and `explain -f`, so a preview is the webhook's own decision.

use serde_json::{json, Value};

use crate::inject::{inject_json, Applicable, Injection};
use crate::maps::MapIndex;

/// The result for one Pod or Pod template inside a manifest.
#[derive(Debug)]
pub struct ManifestInjection {
    /// `Kind/name` of the object holding the Pod (template).
    pub object: String,
    /// The namespace the Pod would be created in.
    pub namespace: String,
    /// The engine's decision.
    pub injection: Injection,
}

/// Where the Pod template sits inside an object of `kind`, as a JSON pointer; `""` for a Pod.
pub fn template_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "ReplicationController" | "Job" => {
            Some("/spec/template")
        }
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        "PodTemplate" => Some("/template"),
        _ => None,
    }
}

/// The engine's patch did not apply to a manifest's Pod (a bug: it never happens for a Pod the
/// engine read): the manifest is not reported as swapped.
#[derive(Debug, thiserror::Error)]
#[error("{object}: the swap could not be applied to its Pod template: {error}")]
pub struct ManifestError {
    /// `Kind/name` of the object.
    pub object: String,
    /// Why the patch failed.
    pub error: json_patch::PatchError,
}

/// Swaps images in `object` in place (a List's items too), as the webhook would for the Pods it
/// creates. Objects without a namespace use `default_namespace`.
pub fn inject_object(
    object: &mut Value,
    default_namespace: &str,
    index: &MapIndex,
) -> Result<Vec<ManifestInjection>, ManifestError> {
    let mut out = Vec::new();
    walk(object, default_namespace, index, &mut out)?;
    Ok(out)
}

fn walk(
    object: &mut Value,
    default_namespace: &str,
    index: &MapIndex,
    out: &mut Vec<ManifestInjection>,
) -> Result<(), ManifestError> {
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or("").to_string();
    if kind == "List" || kind.ends_with("List") && object.get("items").is_some_and(Value::is_array) {
        if let Some(items) = object.get_mut("items").and_then(Value::as_array_mut) {
            for item in items {
                walk(item, default_namespace, index, out)?;
            }
        }
        return Ok(());
    }
    // A document without `kind` that has a Pod spec is taken as a Pod.
    let pod_like = kind.is_empty() && object.pointer("/spec/containers").is_some();
    let Some(pointer) = (if pod_like { Some("") } else { template_pointer(&kind) }) else { return Ok(()) };
    let namespace = object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .unwrap_or(default_namespace)
        .to_string();
    let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
    let Some(template) = object.pointer_mut(pointer) else { return Ok(()) };
    // A template is a Pod without kind: give the engine the same shape the API server would.
    let pod = json!({ "metadata": template.get("metadata").cloned().unwrap_or_else(|| json!({})), "spec": template.get("spec").cloned().unwrap_or(Value::Null) });
    let injection = inject_json(&pod, &Applicable { index, namespace: &namespace });
    let object = format!("{kind}/{name}");
    if !injection.patch.is_empty() {
        let new_pod =
            injection.patch.apply_to(&pod).map_err(|error| ManifestError { object: object.clone(), error })?;
        if let Value::Object(t) = template {
            t.insert("metadata".into(), new_pod["metadata"].clone());
            t.insert("spec".into(), new_pod["spec"].clone());
        }
    }
    out.push(ManifestInjection { object, namespace, injection });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::tests::map;

    fn index() -> MapIndex {
        let mut idx = MapIndex::new(None);
        idx.upsert(&map("default", "app", "app", "reg.io/app:t")).expect("valid");
        idx
    }

    #[test]
    fn swaps_pod_templates_of_workloads_and_leaves_other_objects() {
        let mut deploy = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "app"}]}}}});
        let results = inject_object(&mut deploy, "default", &index()).expect("applies");
        assert_eq!(results[0].object, "Deployment/web");
        assert_eq!(deploy["spec"]["template"]["spec"]["containers"][0]["image"], "reg.io/app:t");
        assert_eq!(deploy["spec"]["template"]["metadata"]["labels"]["a"], "b");
        let mut cron = json!({"kind": "CronJob", "metadata": {"name": "c"}, "spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "app"}]}}}}}});
        inject_object(&mut cron, "default", &index()).expect("applies");
        assert_eq!(
            cron.pointer("/spec/jobTemplate/spec/template/spec/containers/0/image"),
            Some(&json!("reg.io/app:t"))
        );
        let mut svc = json!({"kind": "Service", "metadata": {"name": "s"}, "spec": {"selector": {"image": "app"}}});
        let before = svc.clone();
        assert!(inject_object(&mut svc, "default", &index()).expect("nothing to apply").is_empty());
        assert_eq!(svc, before);
    }

    #[test]
    fn a_document_without_kind_but_with_a_pod_spec_is_a_pod() {
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "app"}]}});
        assert_eq!(inject_object(&mut pod, "default", &index()).expect("applies").len(), 1);
        assert_eq!(pod["spec"]["containers"][0]["image"], "reg.io/app:t");
    }

    #[test]
    fn lists_are_walked_and_namespaces_respected() {
        let mut list = json!({"apiVersion": "v1", "kind": "List", "items": [
            {"kind": "Pod", "metadata": {"name": "a"}, "spec": {"containers": [{"name": "c", "image": "app"}]}},
            {"kind": "Pod", "metadata": {"name": "b", "namespace": "other"}, "spec": {"containers": [{"name": "c", "image": "app"}]}}]});
        let results = inject_object(&mut list, "default", &index()).expect("applies");
        assert_eq!(results.len(), 2);
        assert_eq!(list["items"][0]["spec"]["containers"][0]["image"], "reg.io/app:t");
        assert_eq!(list["items"][1]["spec"]["containers"][0]["image"], "app");
    }
}
