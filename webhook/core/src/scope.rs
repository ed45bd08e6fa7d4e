//! Where the webhook is needed (DESIGN §9): only in namespaces that hold ImageMaps, or in every
//! namespace when global maps exist. The controller keeps the MutatingWebhookConfiguration in
//! step, so that Pods no map could touch never wait for the webhook nor depend on it.
//!
//! The scope is one match condition of ours, [`SCOPE_CONDITION`] (`request.namespace in [...]`,
//! evaluated by the API server, no call made when false), added to each webhook. The admin's
//! `namespaceSelector`, exclusions, failure policy and timeout are never touched, and a Helm
//! upgrade (Helm 4 applies server-side) does not conflict with it: the chart sets no match
//! conditions, while the selector is atomic and would be taken from Helm's ownership.
//!
//! A second condition, [`IMAGES_CONDITION`], calls the webhook only for Pods with an image (of a
//! container, init container or image volume) that could match a selector: it contains the last
//! path component of some selector's name. Normalization only adds prefixes (`docker.io/`,
//! `library/`) and a tag or digest follows, so every image that matches contains that component:
//! the condition never skips a Pod the webhook would change (it may call for some it will not).
//! It is left out when a map swaps env values (any value could) or when there are more than
//! [`MAX_IMAGE_TOKENS`] components (the API server's CEL cost budget).

use std::collections::BTreeSet;

use k8s_openapi::api::admissionregistration::v1::MatchCondition;

use crate::maps::MapIndex;

/// The name of our namespace condition.
pub const SCOPE_CONDITION: &str = "imagemap-scope";

/// The name of our image condition.
pub const IMAGES_CONDITION: &str = "imagemap-images";

/// Most selector components the image condition lists; past it there is no image condition.
pub const MAX_IMAGE_TOKENS: usize = 32;

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

/// The components an image must contain to be worth a call (see the module doc), or `None`
/// when every Pod in scope must call: a map swaps env values, or there are too many.
pub fn image_tokens(index: &MapIndex) -> Option<BTreeSet<String>> {
    let mut tokens = BTreeSet::new();
    for map in index.all_maps() {
        if map.match_in_env_vars {
            return None;
        }
        let path = map.selector.path();
        tokens.insert(path.rsplit('/').next().unwrap_or(path).to_string());
    }
    (tokens.len() <= MAX_IMAGE_TOKENS).then_some(tokens)
}

/// The CEL expression of the image condition for `tokens` (path components: lowercase
/// letters, digits and `._-`, nothing to escape).
pub(crate) fn images_expression(tokens: &BTreeSet<String>) -> String {
    let list: Vec<String> = tokens.iter().map(|t| format!("'{t}'")).collect();
    let names = format!("[{}]", list.join(", "));
    format!(
        "object.spec.containers.exists(c, has(c.image) && {names}.exists(t, c.image.contains(t))) || \
         (has(object.spec.initContainers) && object.spec.initContainers.exists(c, has(c.image) && {names}.exists(t, c.image.contains(t)))) || \
         (has(object.spec.volumes) && object.spec.volumes.exists(v, has(v.image) && has(v.image.reference) && {names}.exists(t, v.image.reference.contains(t))))"
    )
}

/// `conditions` restricted to `scope` and to Pods with an image among `images` (any Pod when
/// `None`): the others kept, ours replaced. An empty set of namespaces is `false`: no call at
/// all.
pub fn scoped_conditions(
    conditions: Option<&[MatchCondition]>,
    scope: &Scope,
    images: Option<&BTreeSet<String>>,
) -> Vec<MatchCondition> {
    let mut out: Vec<MatchCondition> = conditions
        .unwrap_or_default()
        .iter()
        .filter(|c| c.name != SCOPE_CONDITION && c.name != IMAGES_CONDITION)
        .cloned()
        .collect();
    if let Some(tokens) = images.filter(|t| !t.is_empty()) {
        out.push(MatchCondition { name: IMAGES_CONDITION.into(), expression: images_expression(tokens) });
    }
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
        let out = scoped_conditions(Some(&admin), &scope, None);
        assert_eq!(out, vec![admin[0].clone(), condition(SCOPE_CONDITION, "request.namespace in ['dev', 'qa']")]);
        // Again with another scope: ours is replaced, not added to.
        let narrower = Scope::Namespaces(BTreeSet::from(["dev".to_string()]));
        let again = scoped_conditions(Some(&out), &narrower, None);
        assert_eq!(again, vec![admin[0].clone(), condition(SCOPE_CONDITION, "request.namespace in ['dev']")]);
    }

    #[test]
    fn a_condition_includes_exactly_its_namespaces() {
        let scope = Scope::Namespaces(BTreeSet::from(["dev".to_string(), "qa".to_string()]));
        let expression = scoped_conditions(None, &scope, None)[0].expression.clone();
        assert!(condition_includes(&expression, "dev") && condition_includes(&expression, "qa"));
        assert!(!condition_includes(&expression, "de") && !condition_includes(&expression, "prod"));
        assert!(!condition_includes("false", "dev"));
    }

    #[test]
    fn the_image_tokens_are_the_selectors_last_components_unless_env_values_are_swapped() {
        let mut idx = MapIndex::new(None);
        idx.upsert(&map("dev", "a", "localhost:5000/team/app:1", "r.io/app:1")).expect("valid");
        idx.upsert(&map("dev", "b", "nginx", "")).expect("valid");
        assert_eq!(image_tokens(&idx), Some(BTreeSet::from(["app".to_string(), "nginx".to_string()])));
        idx.upsert(&ImageMap::for_selector("qa", "c", "web").with_match_in_env_vars(true)).expect("valid");
        assert_eq!(image_tokens(&idx), None, "any env value could match");
        let mut many = MapIndex::new(None);
        for i in 0..=MAX_IMAGE_TOKENS {
            many.upsert(&map("dev", &format!("m{i}"), &format!("app-{i}"), "")).expect("valid");
        }
        assert_eq!(image_tokens(&many), None, "past the limit: no image condition");
    }

    #[test]
    fn the_image_condition_is_added_beside_the_scope_and_replaced() {
        let tokens = BTreeSet::from(["app".to_string()]);
        let scope = Scope::Namespaces(BTreeSet::from(["dev".to_string()]));
        let out = scoped_conditions(None, &scope, Some(&tokens));
        assert_eq!(out.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), [IMAGES_CONDITION, SCOPE_CONDITION]);
        assert!(out[0].expression.contains("['app'].exists(t, c.image.contains(t))"), "{}", out[0].expression);
        assert!(out[0].expression.contains("v.image.reference.contains(t)"), "image volumes count");
        let without = scoped_conditions(Some(&out), &scope, None);
        assert_eq!(without.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), [SCOPE_CONDITION]);
    }

    #[test]
    fn every_namespace_removes_the_condition_and_no_maps_calls_for_nothing() {
        let scoped = scoped_conditions(None, &Scope::Namespaces(BTreeSet::from(["dev".to_string()])), None);
        assert_eq!(scoped_conditions(Some(&scoped), &Scope::Everywhere, None), vec![]);
        assert_eq!(
            scoped_conditions(None, &Scope::Namespaces(BTreeSet::new()), None),
            vec![condition(SCOPE_CONDITION, "false")]
        );
    }
}
