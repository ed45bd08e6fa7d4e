//! Policy mode's warning for maps without a build (DESIGN §5: "a map that matches but is not
//! usable yet changes nothing and adds a warning naming the map"). A mutation cannot warn, so
//! each namespace whose maps (its own or the global namespace's) include unbuilt ones gets a
//! ValidatingAdmissionPolicy with the `Warn` action: a Pod naming such a map's selector in an
//! image is admitted unchanged, and `kubectl apply` shows the same warning as in webhook mode.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding, ValidatingAdmissionPolicyBindingSpec,
    ValidatingAdmissionPolicySpec, Validation, Variable,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::tables::Tables;
use super::{cel, MANAGED_BY, MANAGED_BY_LABEL, MAX_EXPRESSION_CHARS, SERVES_LABEL};
use crate::guards::Guards;
use crate::maps::{CompiledMap, Scope, Unusable};

/// One namespace's warning policy and its binding (`namespace` `None`: the global one).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct UnbuiltWarning {
    /// The namespace served, or `None` for every namespace without its own.
    pub namespace: Option<String>,
    /// The unbuilt maps it warns about, `namespace/name`.
    pub maps: Vec<String>,
    /// The policy.
    pub policy: ValidatingAdmissionPolicy,
    /// Its binding (`validationActions: [Warn]`).
    pub binding: ValidatingAdmissionPolicyBinding,
}

/// The object name of the warning policy (and binding) serving `namespace`, or the global one.
pub fn warning_name(namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("imagemap.unbuilt.ns.{ns}"),
        None => "imagemap.unbuilt.global".to_string(),
    }
}

/// The warning policies for `maps` (every compiled cluster map): one per namespace with an
/// unbuilt map that applies there (protected namespaces never), and a global one when the global
/// namespace has unbuilt maps. A namespace whose table would pass the API server's expression
/// limit gets none (the webhook's warning is a courtesy; the policy's swaps are unaffected).
pub fn compile_warnings<'m>(
    maps: impl IntoIterator<Item = &'m CompiledMap>,
    global_ns: Option<&str>,
    guards: &Guards,
) -> Vec<UnbuiltWarning> {
    let mut namespaces: BTreeSet<&str> = BTreeSet::new();
    let mut unbuilt: BTreeMap<&str, Vec<&CompiledMap>> = BTreeMap::new();
    for map in maps {
        namespaces.insert(map.namespace.as_str());
        if map.target == Err(Unusable::NotBuilt) {
            unbuilt.entry(map.namespace.as_str()).or_default().push(map);
        }
    }
    let global: Vec<&CompiledMap> = global_ns.and_then(|g| unbuilt.get(g)).cloned().unwrap_or_default();
    let mut out = Vec::new();
    for namespace in namespaces {
        if Some(namespace) == global_ns || guards.is_protected(namespace) {
            continue;
        }
        let scoped: Vec<(&CompiledMap, Scope)> = unbuilt
            .get(namespace)
            .into_iter()
            .flatten()
            .map(|m| (*m, Scope::Local))
            .chain(global.iter().map(|m| (*m, Scope::Global)))
            .collect();
        if let Some(w) = warning(Some(namespace), &scoped, &[]) {
            out.push(w);
        }
    }
    if !global.is_empty() {
        let mut served: Vec<&str> = out.iter().filter_map(|w| w.namespace.as_deref()).collect();
        served.extend(guards.protected_namespaces.iter().map(String::as_str));
        let scoped: Vec<(&CompiledMap, Scope)> = global.iter().map(|m| (*m, Scope::Global)).collect();
        if let Some(w) = warning(None, &scoped, &served) {
            out.push(w);
        }
    }
    out
}

fn warning(
    namespace: Option<&str>,
    maps: &[(&CompiledMap, Scope)],
    served_elsewhere: &[&str],
) -> Option<UnbuiltWarning> {
    if maps.is_empty() {
        return None;
    }
    let t = Tables::build(maps);
    let index = |v: &usize| v.to_string();
    let decide = |value: &str| cel::decision(value, "imageExact", "imageName");
    let hits = |list: &str| {
        let d = decide("c.image");
        format!(
            "(has(object.spec.{list}) ? object.spec.{list}.filter(c, has(c.image) && {d} >= 0).map(c, 'ImageMap ' + \
             variables.mapIds[{d}] + ' matches ' + c.image + ' but {reason}; left unchanged') : [])",
            reason = Unusable::NotBuilt
        )
    };
    let variables = vec![
        ("spell".to_string(), cel::map(&t.spell, |v| cel::string(v))),
        ("imageExact".to_string(), cel::map(&t.image_exact, index)),
        ("imageName".to_string(), cel::map(&t.image_name, index)),
        ("mapIds".to_string(), cel::list(t.winners.iter().map(|m| cel::string(&m.id)))),
        ("hits".to_string(), format!("{} + {}", hits("containers"), hits("initContainers"))),
    ];
    if variables.iter().any(|(_, e)| e.chars().count() > MAX_EXPRESSION_CHARS) {
        return None;
    }
    let name = warning_name(namespace);
    let metadata = ObjectMeta {
        name: Some(name.clone()),
        labels: Some(BTreeMap::from([
            (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
            (SERVES_LABEL.to_string(), format!("unbuilt.{}", namespace.unwrap_or("global"))),
        ])),
        ..Default::default()
    };
    let policy = ValidatingAdmissionPolicy {
        metadata: metadata.clone(),
        spec: Some(ValidatingAdmissionPolicySpec {
            failure_policy: Some("Ignore".into()),
            match_constraints: Some(super::objects::pod_creates()),
            variables: Some(variables.into_iter().map(|(name, expression)| Variable { name, expression }).collect()),
            validations: Some(vec![Validation {
                expression: "size(variables.hits) == 0".into(),
                message_expression: Some("variables.hits.join('; ')".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let binding = ValidatingAdmissionPolicyBinding {
        metadata,
        spec: ValidatingAdmissionPolicyBindingSpec {
            policy_name: name,
            validation_actions: vec!["Warn".into()],
            match_resources: Some(super::objects::served(namespace, served_elsewhere)),
            ..Default::default()
        },
    };
    Some(UnbuiltWarning {
        namespace: namespace.map(String::from),
        maps: t.winners.iter().map(|m| m.id.clone()).collect(),
        policy,
        binding,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::MapIndex;
    use crate::types::ImageMap;

    #[test]
    fn namespaces_with_unbuilt_maps_get_a_warning_policy_and_built_ones_do_not() {
        let mut idx = MapIndex::new(Some("shared".into()));
        for m in [
            ImageMap::for_selector("dev", "waiting", "app"),
            ImageMap::for_selector("dev", "built", "web").with_image("reg.io/web:1"),
            ImageMap::for_selector("ready", "built", "web").with_image("reg.io/web:1"),
            ImageMap::for_selector("kube-system", "waiting", "app"),
        ] {
            idx.upsert(&m).expect("valid");
        }
        let guards = Guards::new(vec![], Default::default(), &[]);
        let out = compile_warnings(idx.cluster_maps(), idx.global_namespace(), &guards);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].namespace.as_deref(), Some("dev"));
        assert_eq!(out[0].maps, ["dev/waiting"]);
        let hits = &out[0].policy.spec.as_ref().and_then(|s| s.variables.as_ref()).expect("variables")[4];
        assert!(hits.expression.contains("has no built image yet"), "{}", hits.expression);
        assert_eq!(out[0].binding.spec.validation_actions, ["Warn"]);
    }

    #[test]
    fn an_unbuilt_global_map_warns_in_every_namespace_without_its_own() {
        let mut idx = MapIndex::new(Some("shared".into()));
        idx.upsert(&ImageMap::for_selector("shared", "waiting", "app")).expect("valid");
        idx.upsert(&ImageMap::for_selector("dev", "other", "x").with_image("reg.io/x:1")).expect("valid");
        let guards = Guards::new(vec![], Default::default(), &["imagemap".into()]);
        let out = compile_warnings(idx.cluster_maps(), idx.global_namespace(), &guards);
        let names: Vec<String> = out.iter().filter_map(|w| w.policy.metadata.name.clone()).collect();
        assert_eq!(names, ["imagemap.unbuilt.ns.dev", "imagemap.unbuilt.global"]);
        let selector = out[1].binding.spec.match_resources.as_ref().expect("match");
        let not_in = &selector.namespace_selector.as_ref().and_then(|s| s.match_expressions.as_ref()).expect("e")[0];
        let values = not_in.values.clone().unwrap_or_default();
        assert!(values.contains(&"dev".to_string()) && values.contains(&"imagemap".to_string()), "{values:?}");
    }
}
