//! Holding Pods until their image is built (`--gate-unbuilt`), as pure functions: the admission
//! patch that adds a scheduling gate when an image matches only maps without a build yet, and the
//! later patch that swaps the images in and removes the gate (or releases the Pod unchanged after
//! a timeout, or when its map is gone).
//!
//! After creation Kubernetes lets only `image` of containers and init containers change (and
//! scheduling gates be removed), so a released Pod gets its images and swap records; pull policy,
//! command/args overrides and env values stay as created.

use serde_json::{json, Value};

use crate::inject::{inject_json, Applicable, Injection};
use crate::maps::MapIndex;
use crate::patch::{escape, Patch};
use crate::pod_view::{MetadataView, PodView};

/// The scheduling gate name.
pub const GATE: &str = "tilt.dev/imagemap";
/// Label on gated Pods, so the controller finds them with a label selector.
pub const GATED_LABEL: &str = "imagemap.tilt.dev/gated";
/// Annotation holding when the Pod was gated (RFC 3339), for the timeout.
pub const GATED_AT_ANNOTATION: &str = "imagemap.tilt.dev/gated-at";

/// True for container and init-container image fields (the ones a gate can wait for).
fn is_image_field(field: &str) -> bool {
    (field.starts_with("spec.containers{") || field.starts_with("spec.initContainers{")) && field.ends_with("}.image")
}

/// The maps a Pod must wait for: not-yet-built matches on image fields that nothing swapped (a
/// map refused by a guard or with an invalid target never becomes usable by waiting).
pub fn waiting_for(injection: &Injection) -> Vec<String> {
    let mut maps: Vec<String> = injection
        .unusable
        .iter()
        .filter(|u| u.reason == crate::maps::Unusable::NotBuilt)
        .filter(|u| is_image_field(&u.field) && !injection.swaps.iter().any(|s| s.record.field == u.field))
        .map(|u| u.image_map.clone())
        .collect();
    maps.sort();
    maps.dedup();
    maps
}

/// Adds the gate, label and gated-at annotation to `injection` when the Pod must wait; `now` is
/// the RFC 3339 time. Does nothing when nothing waits or the Pod is already gated.
pub fn gate(pod: PodView<'_>, injection: &mut Injection, now: &str) {
    let maps = waiting_for(injection);
    if maps.is_empty() {
        return;
    }
    let gates = pod.spec.and_then(|s| s.scheduling_gates.as_ref());
    if gates.is_some_and(|g| g.iter().any(|name| name.as_deref() == Some(GATE))) {
        return;
    }
    let patch = &mut injection.patch;
    match gates {
        Some(_) => patch.add("/spec/schedulingGates/-", json!({ "name": GATE })),
        None => patch.add("/spec/schedulingGates", json!([{ "name": GATE }])),
    }
    let annotations_created = patch.0.iter().any(|op| {
        let p = op_path(op);
        p == "/metadata/annotations" || p == "/metadata"
    });
    if matches!((pod.metadata, annotations_created), (MetadataView::Absent, false)) {
        patch.add("/metadata", json!({}));
    }
    match (pod.metadata, annotations_created) {
        (MetadataView::Annotations(_), _) | (_, true) => {
            patch.add(&format!("/metadata/annotations/{}", escape(GATED_AT_ANNOTATION)), json!(now))
        }
        _ => patch.add("/metadata/annotations", json!({ GATED_AT_ANNOTATION: now })),
    }
    if pod.labels_present {
        patch.add(&format!("/metadata/labels/{}", escape(GATED_LABEL)), json!("true"));
    } else {
        patch.add("/metadata/labels", json!({ GATED_LABEL: "true" }));
    }
    injection
        .warnings
        .push(format!("Pod held by scheduling gate {GATE} until ImageMap {} has a built image", maps.join(", ")));
}

fn op_path(op: &json_patch::PatchOperation) -> String {
    match op {
        json_patch::PatchOperation::Add(o) => o.path.to_string(),
        json_patch::PatchOperation::Replace(o) => o.path.to_string(),
        json_patch::PatchOperation::Remove(o) => o.path.to_string(),
        json_patch::PatchOperation::Move(o) => o.path.to_string(),
        json_patch::PatchOperation::Copy(o) => o.path.to_string(),
        json_patch::PatchOperation::Test(o) => o.path.to_string(),
    }
}

/// What to do with a gated Pod now.
#[derive(Debug, Clone, PartialEq)]
pub enum Release {
    /// Its maps are still unbuilt: keep waiting.
    Wait(Vec<String>),
    /// Its maps are built (or gone): this patch swaps images, records them and removes the gate.
    Swap {
        /// The patch to apply.
        patch: Patch,
        /// `field -> image` for each swap made.
        swapped: Vec<String>,
    },
    /// Waited too long: this patch removes the gate and leaves the images as they are.
    TimedOut {
        /// The patch to apply.
        patch: Patch,
        /// The maps still unbuilt.
        waiting_for: Vec<String>,
    },
}

/// Decides a gated Pod's fate: `gated_for_secs` is how long it has waited so far.
pub fn release(pod: &Value, index: &MapIndex, namespace: &str, gated_for_secs: i64, timeout_secs: i64) -> Release {
    let injection = inject_json(pod, &Applicable { index, namespace });
    let waiting = waiting_for(&injection);
    let mut patch = Patch::default();
    if waiting.is_empty() {
        // Only image fields and our annotation may change now.
        for op in injection.patch.0 {
            let path = op_path(&op);
            let allowed = (path.starts_with("/spec/containers/") || path.starts_with("/spec/initContainers/"))
                && path.ends_with("/image")
                || path.starts_with("/metadata");
            if allowed {
                patch.0.push(op);
            }
        }
        let swapped = injection.swaps.iter().map(|s| format!("{} -> {}", s.record.field, s.record.image)).collect();
        ungate(pod, &mut patch);
        return Release::Swap { patch, swapped };
    }
    if gated_for_secs >= timeout_secs {
        ungate(pod, &mut patch);
        return Release::TimedOut { patch, waiting_for: waiting };
    }
    Release::Wait(waiting)
}

/// Removes our gate, label and gated-at annotation.
fn ungate(pod: &Value, patch: &mut Patch) {
    if let Some(i) = pod
        .pointer("/spec/schedulingGates")
        .and_then(Value::as_array)
        .and_then(|g| g.iter().position(|x| x.get("name").and_then(Value::as_str) == Some(GATE)))
    {
        // A test op first: if someone else changed the gates meanwhile, the patch fails safely.
        patch.test_first(&format!("/spec/schedulingGates/{i}/name"), json!(GATE));
        patch.remove(&format!("/spec/schedulingGates/{i}"));
    }
    if pod.pointer(&format!("/metadata/labels/{}", escape(GATED_LABEL))).is_some() {
        patch.remove(&format!("/metadata/labels/{}", escape(GATED_LABEL)));
    }
    if pod.pointer(&format!("/metadata/annotations/{}", escape(GATED_AT_ANNOTATION))).is_some() {
        patch.remove(&format!("/metadata/annotations/{}", escape(GATED_AT_ANNOTATION)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::tests::map;

    fn index(built: bool) -> MapIndex {
        let mut idx = MapIndex::new(None);
        idx.upsert(&map("dev", "app", "app", if built { "reg.io/app:1" } else { "" })).expect("valid");
        idx
    }

    fn admit(pod: &Value, idx: &MapIndex) -> Value {
        let mut injection = inject_json(pod, &Applicable { index: idx, namespace: "dev" });
        gate(crate::pod_view::PodObject::from_json(pod).view(), &mut injection, "2026-11-26T10:00:00Z");
        injection.patch.apply_to(pod).expect("applies")
    }

    fn pod() -> Value {
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "app", "imagePullPolicy": "Always"}, {"name": "s", "image": "busybox"}]}})
    }

    #[test]
    fn gates_a_pod_whose_image_waits_for_an_unbuilt_map() {
        let out = admit(&pod(), &index(false));
        assert_eq!(out["spec"]["schedulingGates"], json!([{"name": GATE}]));
        assert_eq!(out["metadata"]["labels"][GATED_LABEL], "true");
        assert_eq!(out["metadata"]["annotations"][GATED_AT_ANNOTATION], "2026-11-26T10:00:00Z");
        assert_eq!(out["spec"]["containers"][0]["image"], "app");
        assert_eq!(admit(&out, &index(false)), out, "reinvocation adds nothing");
    }

    #[test]
    fn does_not_gate_built_or_unrelated_pods() {
        let out = admit(&pod(), &index(true));
        assert!(out["spec"].get("schedulingGates").is_none());
        let other = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "other"}]}});
        assert_eq!(admit(&other, &index(false)), other);
    }

    #[test]
    fn releases_with_the_built_image_and_only_mutable_fields() {
        let gated = admit(&pod(), &index(false));
        match release(&gated, &index(false), "dev", 5, 600) {
            Release::Wait(maps) => assert_eq!(maps, ["dev/app"]),
            other => panic!("should wait: {other:?}"),
        }
        let Release::Swap { patch, swapped } = release(&gated, &index(true), "dev", 5, 600) else {
            panic!("should swap")
        };
        let out = patch.apply_to(&gated).expect("applies");
        assert_eq!(out["spec"]["containers"][0]["image"], "reg.io/app:1");
        assert_eq!(out["spec"]["containers"][0]["imagePullPolicy"], "Always", "immutable after creation");
        assert!(out["spec"]["schedulingGates"].as_array().is_some_and(Vec::is_empty));
        assert!(out["metadata"]["labels"].get(GATED_LABEL).is_none());
        assert!(out["metadata"]["annotations"].get(GATED_AT_ANNOTATION).is_none());
        assert!(out["metadata"]["annotations"]["imagemap.tilt.dev/swaps"].is_string());
        assert_eq!(swapped, ["spec.containers{c}.image -> reg.io/app:1"]);
    }

    #[test]
    fn times_out_unchanged_and_releases_when_the_map_is_gone() {
        let gated = admit(&pod(), &index(false));
        let Release::TimedOut { patch, waiting_for } = release(&gated, &index(false), "dev", 601, 600) else {
            panic!("timeout")
        };
        let out = patch.apply_to(&gated).expect("applies");
        assert_eq!(out["spec"]["containers"][0]["image"], "app");
        assert!(out["spec"]["schedulingGates"].as_array().is_some_and(Vec::is_empty));
        assert_eq!(waiting_for, ["dev/app"]);
        let Release::Swap { patch, swapped } = release(&gated, &MapIndex::new(None), "dev", 1, 600) else {
            panic!("gone")
        };
        assert!(swapped.is_empty());
        assert_eq!(patch.apply_to(&gated).expect("applies")["spec"]["containers"][0]["image"], "app");
    }
}
