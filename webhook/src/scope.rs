//! Where the webhook is needed (DESIGN §9): only in namespaces that hold ImageMaps, or in every
//! namespace when global maps exist. The controller keeps the MutatingWebhookConfiguration in
//! step, so that Pods no map could touch never wait for the webhook nor depend on it.
//!
//! The scope is one match condition of ours, [`SCOPE_CONDITION`] (`request.namespace in [...]`,
//! evaluated by the API server, no call made when false), added to each webhook. The admin's
//! `namespaceSelector`, exclusions, failure policy and timeout are never touched, and a Helm
//! upgrade (Helm 4 applies server-side) does not conflict with it: the chart sets no match
//! conditions, while the selector is atomic and would be taken from Helm's ownership.

use std::collections::BTreeSet;

use k8s_openapi::api::admissionregistration::v1::MatchCondition;

use crate::maps::MapIndex;

/// The name of our match condition.
pub const SCOPE_CONDITION: &str = "imagemap-scope";

/// The namespaces whose Pods a map could change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Global maps exist (`--global-namespace` holds one, or `--imagemaps-file` gave some).
    Everywhere,
    /// Only these (possibly none).
    Namespaces(BTreeSet<String>),
}

/// The scope the maps in `index` need. Maps with an invalid selector swap nothing and do not
/// count; unbuilt maps do (they warn, and gate Pods).
pub fn scope_of(index: &MapIndex) -> Scope {
    if index.has_file_maps() {
        return Scope::Everywhere;
    }
    let mut namespaces = BTreeSet::new();
    for map in index.cluster_maps() {
        if index.global_namespace() == Some(map.namespace.as_str()) {
            return Scope::Everywhere;
        }
        namespaces.insert(map.namespace.clone());
    }
    Scope::Namespaces(namespaces)
}

/// `conditions` restricted to `scope`: the others kept, ours replaced (removed for every
/// namespace). An empty set of namespaces is `false`: no call at all.
pub fn scoped_conditions(conditions: Option<&[MatchCondition]>, scope: &Scope) -> Vec<MatchCondition> {
    let mut out: Vec<MatchCondition> =
        conditions.unwrap_or_default().iter().filter(|c| c.name != SCOPE_CONDITION).cloned().collect();
    if let Scope::Namespaces(namespaces) = scope {
        let expression = if namespaces.is_empty() {
            "false".to_string()
        } else {
            // Namespace names are DNS labels: no quote or backslash to escape.
            let list: Vec<String> = namespaces.iter().map(|n| format!("'{n}'")).collect();
            format!("request.namespace in [{}]", list.join(", "))
        };
        out.push(MatchCondition { name: SCOPE_CONDITION.into(), expression });
    }
    out
}

/// True when a scope condition's expression (as [`scoped_conditions`] writes it) lets Pods of
/// `namespace` call the webhook.
pub fn condition_includes(expression: &str, namespace: &str) -> bool {
    expression.strip_prefix("request.namespace in [").is_some_and(|list| list.contains(&format!("'{namespace}'")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::tests::map;
    use crate::types::ImageMap;

    fn condition(name: &str, expression: &str) -> MatchCondition {
        MatchCondition { name: name.into(), expression: expression.into() }
    }

    #[test]
    fn the_scope_is_the_namespaces_that_hold_maps_built_or_not() {
        let mut idx = MapIndex::new(Some("global".into()));
        idx.upsert(&map("dev", "a", "app", "r.io/app:1")).expect("valid");
        idx.upsert(&map("team", "b", "web", "")).expect("valid");
        let _ = idx.upsert(&map("broken", "c", "Not A Ref", "r.io/x:1"));
        assert_eq!(scope_of(&idx), Scope::Namespaces(BTreeSet::from(["dev".to_string(), "team".to_string()])));
    }

    #[test]
    fn global_or_file_maps_make_the_scope_every_namespace() {
        let mut idx = MapIndex::new(Some("global".into()));
        idx.upsert(&map("global", "g", "app", "r.io/app:1")).expect("valid");
        assert_eq!(scope_of(&idx), Scope::Everywhere);
        let mut idx = MapIndex::new(None);
        idx.replace_file([&ImageMap::for_selector("", "f", "app").with_image("r.io/app:1")]);
        assert_eq!(scope_of(&idx), Scope::Everywhere);
        assert_eq!(scope_of(&MapIndex::new(None)), Scope::Namespaces(BTreeSet::new()));
    }

    #[test]
    fn the_scope_is_one_condition_of_ours_beside_the_admins() {
        let admin = [condition("not-jobs", "!has(object.metadata.labels) || true")];
        let scope = Scope::Namespaces(BTreeSet::from(["dev".to_string(), "qa".to_string()]));
        let out = scoped_conditions(Some(&admin), &scope);
        assert_eq!(out, vec![admin[0].clone(), condition(SCOPE_CONDITION, "request.namespace in ['dev', 'qa']")]);
        // Again with another scope: ours is replaced, not added to.
        let narrower = Scope::Namespaces(BTreeSet::from(["dev".to_string()]));
        let again = scoped_conditions(Some(&out), &narrower);
        assert_eq!(again, vec![admin[0].clone(), condition(SCOPE_CONDITION, "request.namespace in ['dev']")]);
    }

    #[test]
    fn a_condition_includes_exactly_its_namespaces() {
        let scope = Scope::Namespaces(BTreeSet::from(["dev".to_string(), "qa".to_string()]));
        let expression = scoped_conditions(None, &scope)[0].expression.clone();
        assert!(condition_includes(&expression, "dev") && condition_includes(&expression, "qa"));
        assert!(!condition_includes(&expression, "de") && !condition_includes(&expression, "prod"));
        assert!(!condition_includes("false", "dev"));
    }

    #[test]
    fn every_namespace_removes_the_condition_and_no_maps_calls_for_nothing() {
        let scoped = scoped_conditions(None, &Scope::Namespaces(BTreeSet::from(["dev".to_string()])));
        assert_eq!(scoped_conditions(Some(&scoped), &Scope::Everywhere), vec![]);
        assert_eq!(
            scoped_conditions(None, &Scope::Namespaces(BTreeSet::new())),
            vec![condition(SCOPE_CONDITION, "false")]
        );
    }
}
