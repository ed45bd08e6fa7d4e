//! Which running Pods are **stale** (DESIGN §9b): the engine, applied now to the Pod as it was
//! written, with the current maps, would give a field another value than it runs with. That
//! covers a Pod created before its map, one admitted while the webhook was down or busy, and one
//! swapped to an older build, with the same code the webhook runs.
//!
//! "As it was written" undoes our own swaps first: a field whose value is the one its swap
//! record wrote goes back to the recorded original. Records are written into Pods by anyone who
//! can create a Pod, so only records of maps that apply in the Pod's namespace count (its own
//! namespace, the global namespace, the maps file); others are ignored, never trusted.

use serde_json::Value;

use crate::inject::{inject_json, parse_records, Applicable, SwapRecord, SWAPS_ANNOTATION};
use crate::maps::MapIndex;

/// Why a field is stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StaleReason {
    /// The field was never swapped: the Pod was created before the map was built, or its
    /// admission was missed (webhook down, busy or out of scope then).
    NeverSwapped,
    /// The field was swapped to an earlier build.
    OlderBuild,
}

impl StaleReason {
    /// A short explanation, for `describe` and Events.
    pub fn describe(self) -> &'static str {
        match self {
            StaleReason::NeverSwapped => "never swapped (created before the map's build, or its admission was missed)",
            StaleReason::OlderBuild => "runs an older build",
        }
    }
}

/// One field of a Pod that the maps would change now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleField {
    /// The field, as swap records name it (`spec.containers{app}.image`).
    pub field: String,
    /// What the Pod runs with.
    pub current: String,
    /// What the map injects now.
    pub wanted: String,
    /// The map, `namespace/name` (or the file map's name).
    pub image_map: String,
    /// Why.
    pub reason: StaleReason,
}

/// True when `pod` (as JSON) is one whose staleness counts: not finished, not being deleted, not
/// held by our scheduling gate (released by the gate instead), not opted out by `opt_out_label`.
pub fn considered(pod: &Value, opt_out_label: &str) -> bool {
    let phase = pod["status"]["phase"].as_str();
    let gated = pod["spec"]["schedulingGates"].as_array().into_iter().flatten().any(|g| g["name"] == crate::gate::GATE);
    pod["metadata"]["deletionTimestamp"].is_null()
        && !matches!(phase, Some("Succeeded" | "Failed"))
        && !gated
        && pod["metadata"]["labels"].get(opt_out_label).is_none()
}

/// The fields of `pod` (a Pod as JSON, in `namespace`) that the maps of `index` would change
/// now; empty when the Pod runs what its maps name.
pub fn stale_fields(pod: &Value, index: &MapIndex, namespace: &str) -> Vec<StaleField> {
    let records: Vec<SwapRecord> = pod["metadata"]["annotations"][SWAPS_ANNOTATION]
        .as_str()
        .map(parse_records)
        .unwrap_or_default()
        .into_iter()
        .filter(|r| record_applies(r, index, namespace))
        .collect();
    let mut original = pod.clone();
    let mut current = Vec::new();
    for list in ["containers", "initContainers"] {
        let Some(containers) = original["spec"][list].as_array_mut() else { continue };
        for container in containers {
            let name = container["name"].as_str().unwrap_or_default().to_string();
            let field = format!("spec.{list}{{{name}}}.image");
            undo(&mut container["image"], &field, &records, &mut current);
            for env in container["env"].as_array_mut().into_iter().flatten() {
                let var = env["name"].as_str().unwrap_or_default().to_string();
                let field = format!("spec.{list}{{{name}}}.env{{{var}}}");
                undo(&mut env["value"], &field, &records, &mut current);
            }
        }
    }
    for volume in original["spec"]["volumes"].as_array_mut().into_iter().flatten() {
        let name = volume["name"].as_str().unwrap_or_default().to_string();
        let field = format!("spec.volumes{{{name}}}.image.reference");
        undo(&mut volume["image"]["reference"], &field, &records, &mut current);
    }
    if let Some(annotations) = original["metadata"]["annotations"].as_object_mut() {
        annotations.remove(SWAPS_ANNOTATION);
    }
    let injection = inject_json(&original, &Applicable { index, namespace });
    let mut out = Vec::new();
    for swap in injection.swaps {
        let Some((_, value, swapped)) = current.iter().find(|(f, _, _)| *f == swap.record.field) else { continue };
        if *value == swap.record.image {
            continue;
        }
        out.push(StaleField {
            field: swap.record.field,
            current: value.clone(),
            wanted: swap.record.image,
            image_map: swap.record.image_map,
            reason: if *swapped { StaleReason::OlderBuild } else { StaleReason::NeverSwapped },
        });
    }
    out
}

/// A record counts only for a map that may apply to Pods of `namespace`.
fn record_applies(record: &SwapRecord, index: &MapIndex, namespace: &str) -> bool {
    match record.image_map.split_once('/') {
        Some((map_namespace, _)) => map_namespace == namespace || index.global_namespace() == Some(map_namespace),
        // A map from the maps file has no namespace.
        None => index.has_file_maps(),
    }
}

/// Puts back the recorded original of `field` when `value` is what our record wrote, and notes
/// the field's current value and whether it was swapped.
fn undo(value: &mut Value, field: &str, records: &[SwapRecord], current: &mut Vec<(String, String, bool)>) {
    let Some(text) = value.as_str().map(String::from) else { return };
    let record = records.iter().find(|r| r.field == field && r.image == text);
    if let Some(record) = record {
        *value = Value::String(record.original.clone());
    }
    current.push((field.to_string(), text, record.is_some()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ImageMap;
    use serde_json::json;

    fn index(maps: &[ImageMap]) -> MapIndex {
        let mut idx = MapIndex::new(Some("global".into()));
        for m in maps {
            idx.upsert(m).expect("valid");
        }
        idx
    }

    fn pod(image: &str, records: Option<Value>) -> Value {
        let mut pod = json!({"metadata": {"name": "p", "namespace": "dev"},
                             "spec": {"containers": [{"name": "app", "image": image}]}});
        if let Some(records) = records {
            pod["metadata"]["annotations"] = json!({ SWAPS_ANNOTATION: records.to_string() });
        }
        pod
    }

    fn record(map: &str, image: &str) -> Value {
        json!([{"field": "spec.containers{app}.image", "original": "app", "image": image, "imageMap": map}])
    }

    #[test]
    fn a_pod_created_before_its_map_was_built_is_stale_as_never_swapped() {
        let idx = index(&[ImageMap::for_selector("dev", "app", "app").with_image("reg.io/app:1")]);
        let stale = stale_fields(&pod("app", None), &idx, "dev");
        assert_eq!(stale.len(), 1);
        assert_eq!((stale[0].wanted.as_str(), stale[0].reason), ("reg.io/app:1", StaleReason::NeverSwapped));
    }

    #[test]
    fn a_pod_swapped_to_an_older_build_is_stale_and_one_with_the_current_build_is_not() {
        let idx = index(&[ImageMap::for_selector("dev", "app", "app").with_image("reg.io/app:2")]);
        let old = stale_fields(&pod("reg.io/app:1", Some(record("dev/app", "reg.io/app:1"))), &idx, "dev");
        assert_eq!(old.len(), 1);
        assert_eq!((old[0].current.as_str(), old[0].reason), ("reg.io/app:1", StaleReason::OlderBuild));
        assert!(stale_fields(&pod("reg.io/app:2", Some(record("dev/app", "reg.io/app:2"))), &idx, "dev").is_empty());
    }

    #[test]
    fn finished_deleting_gated_and_opted_out_pods_are_not_considered() {
        let label = "imagemap.tilt.dev/disabled";
        let base = pod("app", None);
        assert!(considered(&base, label));
        for (path, value) in [
            ("/status/phase", json!("Succeeded")),
            ("/metadata/deletionTimestamp", json!("2026-01-01T00:00:00Z")),
            ("/spec/schedulingGates", json!([{"name": crate::gate::GATE}])),
            ("/metadata/labels", json!({label: "true"})),
        ] {
            let mut p = base.clone();
            let (parent, key) = path.rsplit_once('/').expect("a path");
            if p.pointer(parent).is_none_or(|v| v.is_null()) {
                let (grand, parent_key) = parent.rsplit_once('/').expect("a parent");
                p.pointer_mut(grand).expect("grandparent")[parent_key] = json!({});
            }
            p.pointer_mut(parent).expect("parent")[key] = value;
            assert!(!considered(&p, label), "{path}");
        }
    }

    #[test]
    fn a_pod_no_map_matches_and_a_map_without_a_build_make_nothing_stale() {
        let idx = index(&[ImageMap::for_selector("dev", "app", "app")]);
        assert!(stale_fields(&pod("app", None), &idx, "dev").is_empty());
        assert!(stale_fields(&pod("other:1", None), &idx, "dev").is_empty());
    }

    #[test]
    fn a_forged_record_naming_another_namespaces_map_is_not_trusted() {
        // The Pod claims its image was swapped by team-b's map: the record is ignored, so its
        // image counts as written, and team-b's map (not applicable here) changes nothing.
        let idx = index(&[ImageMap::for_selector("team-b", "app", "app").with_image("reg.io/app:9")]);
        let forged = pod("reg.io/app:1", Some(record("team-b/app", "reg.io/app:1")));
        assert!(stale_fields(&forged, &idx, "dev").is_empty());
    }

    #[test]
    fn global_maps_count_and_protected_namespaces_are_never_stale() {
        let global = ImageMap::for_selector("global", "app", "app").with_image("reg.io/app:1");
        let idx = index(std::slice::from_ref(&global));
        assert_eq!(stale_fields(&pod("app", None), &idx, "dev").len(), 1);
        let mut guarded = MapIndex::new(Some("global".into())).with_guards(crate::guards::Guards::new(
            vec![],
            Default::default(),
            &[],
        ));
        guarded.upsert(&global).expect("valid");
        assert!(stale_fields(&pod("app", None), &guarded, "kube-system").is_empty());
    }
}
