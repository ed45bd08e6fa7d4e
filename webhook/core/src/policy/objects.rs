//! The Kubernetes objects: a namespace's MutatingAdmissionPolicy and its binding, the
//! controller's marker policy, and what a dry-run probe Pod shows about a compiled policy.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::admissionregistration::v1::{
    JSONPatch, MatchCondition, MatchResources, MutatingAdmissionPolicy, MutatingAdmissionPolicyBinding,
    MutatingAdmissionPolicyBindingSpec, MutatingAdmissionPolicySpec, Mutation, NamedRuleWithOperations, Variable,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement, ObjectMeta};

use super::expressions::Program;
use super::{
    policy_name, DISABLED_LABEL, MANAGED_BY, MANAGED_BY_LABEL, SERVES_GLOBAL, SERVES_LABEL, SYSTEM_NAMESPACES,
};
use crate::inject::{parse_records, SWAPS_ANNOTATION};

/// The policy of `namespace` (`None`: the global one, serving every namespace but the system ones
/// and `served_elsewhere`) running `program`, and its binding.
pub(super) fn policy_and_binding(
    namespace: Option<&str>,
    program: Program,
    served_elsewhere: &[&str],
) -> (MutatingAdmissionPolicy, MutatingAdmissionPolicyBinding) {
    let name = policy_name(namespace);
    let metadata = ObjectMeta {
        name: Some(name.clone()),
        labels: Some(BTreeMap::from([
            (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
            (SERVES_LABEL.to_string(), namespace.unwrap_or(SERVES_GLOBAL).to_string()),
        ])),
        ..Default::default()
    };
    let Program { variables, mutation, condition } = program;
    let match_conditions =
        condition.map(|expression| vec![MatchCondition { name: "imagemap-images".into(), expression }]);
    let policy = MutatingAdmissionPolicy {
        metadata: metadata.clone(),
        spec: Some(MutatingAdmissionPolicySpec {
            failure_policy: Some("Ignore".into()),
            match_constraints: Some(pod_creates()),
            match_conditions,
            reinvocation_policy: Some("IfNeeded".into()),
            variables: Some(variables.into_iter().map(|(name, expression)| Variable { name, expression }).collect()),
            mutations: Some(vec![Mutation {
                patch_type: "JSONPatch".into(),
                json_patch: Some(JSONPatch { expression: Some(mutation) }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    };
    let binding = MutatingAdmissionPolicyBinding {
        metadata,
        spec: Some(MutatingAdmissionPolicyBindingSpec {
            policy_name: Some(name),
            match_resources: Some(served(namespace, served_elsewhere)),
            ..Default::default()
        }),
    };
    (policy, binding)
}

/// What a binding of ours matches: Pods of `namespace` (`None`: of every namespace but the
/// system ones and `served_elsewhere`), neither the namespace nor the Pod opted out.
pub(super) fn served(namespace: Option<&str>, served_elsewhere: &[&str]) -> MatchResources {
    let requirement = |key: &str, operator: &str, values: Option<Vec<String>>| LabelSelectorRequirement {
        key: key.into(),
        operator: operator.into(),
        values,
    };
    let opted_in = requirement(DISABLED_LABEL, "DoesNotExist", None);
    let namespaces = match namespace {
        Some(ns) => requirement("kubernetes.io/metadata.name", "In", Some(vec![ns.to_string()])),
        None => {
            let mut others: BTreeSet<String> = SYSTEM_NAMESPACES.iter().map(|s| s.to_string()).collect();
            others.extend(served_elsewhere.iter().map(|s| s.to_string()));
            requirement("kubernetes.io/metadata.name", "NotIn", Some(others.into_iter().collect()))
        }
    };
    MatchResources {
        namespace_selector: Some(LabelSelector {
            match_expressions: Some(vec![namespaces, opted_in.clone()]),
            ..Default::default()
        }),
        object_selector: Some(LabelSelector { match_expressions: Some(vec![opted_in]), ..Default::default() }),
        ..Default::default()
    }
}

/// The policy the controller keeps while it runs in policy mode, so that the plugin knows a
/// controller applies new builds (and waits for it) even before any map exists. It has no
/// binding, so the API server never evaluates it.
pub const CONTROLLER_MARKER: &str = "imagemap.controller";
/// The marker's [`SERVES_LABEL`] value.
pub const SERVES_CONTROLLER: &str = "controller.imagemap";

/// The [`CONTROLLER_MARKER`] policy: a no-op mutation of Pod creates, with no binding.
pub fn controller_marker() -> MutatingAdmissionPolicy {
    MutatingAdmissionPolicy {
        metadata: ObjectMeta {
            name: Some(CONTROLLER_MARKER.into()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
                (SERVES_LABEL.to_string(), SERVES_CONTROLLER.to_string()),
            ])),
            ..Default::default()
        },
        spec: Some(MutatingAdmissionPolicySpec {
            failure_policy: Some("Ignore".into()),
            match_constraints: Some(pod_creates()),
            mutations: Some(vec![Mutation {
                patch_type: "JSONPatch".into(),
                // An empty list(JSONPatch): `[]` alone is list(dyn), which is refused.
                json_patch: Some(JSONPatch {
                    expression: Some("[JSONPatch{op: 'test', path: '/kind', value: 'Pod'}].filter(p, false)".into()),
                }),
                ..Default::default()
            }]),
            reinvocation_policy: Some("Never".into()),
            ..Default::default()
        }),
    }
}

/// Pod `CREATE`s, the only requests a policy of ours matches.
pub(super) fn pod_creates() -> MatchResources {
    MatchResources {
        resource_rules: Some(vec![NamedRuleWithOperations {
            api_groups: Some(vec![String::new()]),
            api_versions: Some(vec!["v1".into()]),
            operations: Some(vec!["CREATE".into()]),
            resources: Some(vec!["pods".into()]),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

/// What a dry-run Pod naming a map's selector shows about the map's target: how the plugin and
/// the controller know that a compiled policy is in effect.
#[derive(Debug, PartialEq, Eq)]
pub enum Probe {
    /// Swapped to the target.
    Applied,
    /// Another map wins for this selector: the policy is in, nothing more to wait for.
    OtherMapWins,
    /// Not (yet) swapped by this map.
    Waiting,
}

/// The [`Probe`] for `pod`, the API server's answer to a dry-run Pod whose first container names
/// map `map_id`'s selector.
pub fn probe_outcome(pod: &Pod, map_id: &str, target: &str) -> Probe {
    let image = pod.spec.as_ref().and_then(|s| s.containers.first()).and_then(|c| c.image.as_deref());
    if image == Some(target) {
        return Probe::Applied;
    }
    let records = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SWAPS_ANNOTATION))
        .map(|text| parse_records(text))
        .unwrap_or_default();
    if records.iter().any(|r| r.image_map != map_id) {
        return Probe::OtherMapWins;
    }
    Probe::Waiting
}
