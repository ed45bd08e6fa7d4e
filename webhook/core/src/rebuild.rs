//! Which workloads a rebuild restarts (`--restart-on-rebuild`), decided from what the cluster
//! shows now, never from memory of an earlier look (level-triggered, like Kubernetes
//! controllers):
//!
//! - a Pod's swap annotation records which image it got from which map;
//! - a workload owning a Pod whose recorded image differs from its map's current target is
//!   **outdated** for that map;
//! - its Pod template carries [`RESTARTED_FOR_ANNOTATION`], the target each map last restarted it
//!   for; an outdated workload is restarted only when that record differs from the target.
//!
//! So a change made while no replica leads, or seen first by a replica that just started, is
//! acted on at the next look, once; old Pods still terminating after the restart cause nothing.

use std::collections::BTreeMap;

use crate::inject::SwapRecord;

/// Annotation on a workload's Pod template: a JSON object from map id (`namespace/name`) to the
/// target the workload was last restarted for.
pub const RESTARTED_FOR_ANNOTATION: &str = "imagemap.tilt.dev/restarted-for";

/// A kind of workload that can be restarted through its Pod template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WorkloadKind {
    /// `apps/v1` Deployment (owner of a Pod's ReplicaSet).
    Deployment,
    /// `apps/v1` StatefulSet.
    StatefulSet,
    /// `apps/v1` DaemonSet.
    DaemonSet,
}

impl WorkloadKind {
    /// The lowercase kind, as kubectl prints it (`deployment`).
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "deployment",
            WorkloadKind::StatefulSet => "statefulset",
            WorkloadKind::DaemonSet => "daemonset",
        }
    }
}

/// A workload in a namespace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Workload {
    /// Namespace.
    pub namespace: String,
    /// Kind.
    pub kind: WorkloadKind,
    /// Name.
    pub name: String,
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.kind.as_str(), self.name)
    }
}

/// Map id (`namespace/name`) to the target it injects now (its familiar string).
pub type Targets = BTreeMap<String, String>;

/// The workloads owning Pods that carry an image other than their map's current target, each
/// with the maps (and current targets) it is outdated for. `pods` pairs each Pod's owning
/// workload with the records of its swap annotation; maps without a current target are ignored.
pub fn outdated<'a>(
    pods: impl IntoIterator<Item = (&'a Workload, &'a [SwapRecord])>,
    targets: &Targets,
) -> BTreeMap<Workload, Targets> {
    let mut out: BTreeMap<Workload, Targets> = BTreeMap::new();
    for (workload, records) in pods {
        for record in records {
            let Some(target) = targets.get(&record.image_map) else { continue };
            if &record.image != target {
                out.entry(workload.clone()).or_default().insert(record.image_map.clone(), target.clone());
            }
        }
    }
    out
}

/// The new [`RESTARTED_FOR_ANNOTATION`] record when the workload must be restarted: some map in
/// `wanted` has a target other than the one `recorded` says it was restarted for. `None` when it
/// was already restarted for every wanted target.
pub fn restart_record(recorded: &Targets, wanted: &Targets) -> Option<Targets> {
    if wanted.iter().all(|(map, target)| recorded.get(map) == Some(target)) {
        return None;
    }
    let mut next = recorded.clone();
    next.extend(wanted.iter().map(|(m, t)| (m.clone(), t.clone())));
    Some(next)
}

/// Why a workload's [`RESTARTED_FOR_ANNOTATION`] could not be read.
#[derive(Debug, thiserror::Error)]
#[error("annotation {RESTARTED_FOR_ANNOTATION} is not a JSON object of strings: {0}")]
pub struct RecordError(#[from] serde_json::Error);

/// Reads a workload's [`RESTARTED_FOR_ANNOTATION`] (absent: nothing recorded).
pub fn parse_record(text: Option<&str>) -> Result<Targets, RecordError> {
    match text {
        None => Ok(Targets::new()),
        Some(text) => Ok(serde_json::from_str(text)?),
    }
}

/// Writes the [`RESTARTED_FOR_ANNOTATION`] value (keys sorted, so equal records are equal text).
pub fn render_record(record: &Targets) -> String {
    serde_json::to_string(record).unwrap_or_else(|_| unreachable!("a map of strings always serializes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(name: &str) -> Workload {
        Workload { namespace: "dev".into(), kind: WorkloadKind::Deployment, name: name.into() }
    }

    fn record(map: &str, image: &str) -> SwapRecord {
        SwapRecord {
            field: "spec.containers{app}.image".into(),
            original: "app".into(),
            image: image.into(),
            image_map: map.into(),
        }
    }

    fn targets(pairs: &[(&str, &str)]) -> Targets {
        pairs.iter().map(|(m, t)| (m.to_string(), t.to_string())).collect()
    }

    #[test]
    fn a_pod_with_the_current_target_makes_nothing_outdated() {
        let api = workload("api");
        let records = [record("dev/app", "reg.io/app:2")];
        let out = outdated([(&api, &records[..])], &targets(&[("dev/app", "reg.io/app:2")]));
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn a_pod_with_an_older_build_makes_its_workload_outdated_for_that_map() {
        let (api, web) = (workload("api"), workload("web"));
        let old = [record("dev/app", "reg.io/app:1"), record("dev/side", "reg.io/side:1")];
        let current = [record("dev/app", "reg.io/app:2")];
        let out = outdated(
            [(&api, &old[..]), (&web, &current[..])],
            &targets(&[("dev/app", "reg.io/app:2"), ("dev/side", "reg.io/side:1")]),
        );
        assert_eq!(out, BTreeMap::from([(api, targets(&[("dev/app", "reg.io/app:2")]))]));
    }

    #[test]
    fn maps_without_a_current_target_are_ignored() {
        let api = workload("api");
        let records = [record("dev/gone", "reg.io/app:1")];
        assert!(outdated([(&api, &records[..])], &targets(&[])).is_empty());
    }

    #[test]
    fn an_outdated_workload_is_restarted_once_per_target() {
        let wanted = targets(&[("dev/app", "reg.io/app:2")]);
        let first = restart_record(&Targets::new(), &wanted).expect("never restarted: restart");
        assert_eq!(first, wanted);
        assert_eq!(restart_record(&first, &wanted), None, "already restarted for build 2");
        let third = targets(&[("dev/app", "reg.io/app:3")]);
        assert_eq!(restart_record(&first, &third), Some(third.clone()), "a newer build restarts again");
        // Going back to an earlier build is a change too.
        assert!(restart_record(&third, &wanted).is_some());
    }

    #[test]
    fn a_restart_keeps_what_other_maps_recorded() {
        let recorded = targets(&[("dev/side", "reg.io/side:1")]);
        let next = restart_record(&recorded, &targets(&[("dev/app", "reg.io/app:2")])).expect("restart");
        assert_eq!(next, targets(&[("dev/app", "reg.io/app:2"), ("dev/side", "reg.io/side:1")]));
    }

    #[test]
    fn the_record_round_trips_and_a_broken_one_is_an_error() {
        let record = targets(&[("dev/b", "x:2"), ("dev/a", "y:1")]);
        let text = render_record(&record);
        assert_eq!(text, r#"{"dev/a":"y:1","dev/b":"x:2"}"#);
        assert_eq!(parse_record(Some(&text)).expect("parses"), record);
        assert_eq!(parse_record(None).expect("absent"), Targets::new());
        let err = parse_record(Some("not json")).expect_err("broken");
        assert!(err.to_string().contains(RESTARTED_FOR_ANNOTATION), "{err}");
    }
}

/// True when the label selector `selector` (a `LabelSelector` as JSON: `matchLabels`,
/// `matchExpressions` with `In`, `NotIn`, `Exists`, `DoesNotExist`) selects `labels` (an object
/// of strings). An empty selector selects nothing here: a workload that owns a Pod always has
/// one, and an owner whose selector does not select the Pod is not trusted as its owner.
pub fn selects(selector: &serde_json::Value, labels: &serde_json::Value) -> bool {
    let match_labels = selector["matchLabels"].as_object();
    let expressions = selector["matchExpressions"].as_array();
    if match_labels.is_none_or(|m| m.is_empty()) && expressions.is_none_or(|e| e.is_empty()) {
        return false;
    }
    let label = |key: &str| labels[key].as_str();
    let labels_match = match_labels.into_iter().flatten().all(|(k, v)| v.as_str().is_some() && label(k) == v.as_str());
    labels_match
        && expressions.into_iter().flatten().all(|e| {
            let key = e["key"].as_str().unwrap_or_default();
            let values: Vec<&str> = e["values"].as_array().into_iter().flatten().filter_map(|v| v.as_str()).collect();
            match e["operator"].as_str() {
                Some("In") => label(key).is_some_and(|v| values.contains(&v)),
                Some("NotIn") => label(key).is_none_or(|v| !values.contains(&v)),
                Some("Exists") => label(key).is_some(),
                Some("DoesNotExist") => label(key).is_none(),
                _ => false,
            }
        })
}

#[cfg(test)]
mod selector_tests {
    use super::selects;
    use serde_json::json;

    #[test]
    fn match_labels_and_expressions_select_like_kubernetes() {
        let labels = json!({"app": "api", "tier": "web"});
        assert!(selects(&json!({"matchLabels": {"app": "api"}}), &labels));
        assert!(!selects(&json!({"matchLabels": {"app": "db"}}), &labels));
        let exprs = |op: &str, values: &[&str]| json!({"matchExpressions": [{"key": "tier", "operator": op, "values": values}]});
        assert!(selects(&exprs("In", &["web", "x"]), &labels));
        assert!(!selects(&exprs("NotIn", &["web"]), &labels));
        assert!(selects(&exprs("Exists", &[]), &labels));
        assert!(!selects(&exprs("DoesNotExist", &[]), &labels));
        assert!(!selects(&exprs("Bogus", &[]), &labels));
    }

    #[test]
    fn an_empty_selector_selects_nothing() {
        assert!(!selects(&json!({}), &json!({"app": "api"})));
    }
}
