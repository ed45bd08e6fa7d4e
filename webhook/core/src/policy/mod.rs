//! Webhook-less mode: ImageMaps compiled into MutatingAdmissionPolicies
//! (`admissionregistration.k8s.io/v1`) that the API server applies itself. Pure: maps in, policy
//! objects out.
//!
//! Everything the engine decides per map is decided here, at compile time: §3 normalization (every
//! way a selector's name can be written is a key of a CEL map literal), §4 precedence (each table
//! entry names its winning map) and §5 usability (unbuilt maps are left out). CEL then only splits
//! a value into its written name and its tag/digest suffix, checks the suffix against one constant
//! (precompiled) pattern and looks the name up. One policy serves one namespace (its own maps plus
//! the global namespace's); a global policy serves every other namespace when the global namespace
//! holds maps.
//!
//! What a policy cannot do, and the engine can: hold Pods until their image is built (the gate),
//! maps from `--imagemaps-file`, and the AdmissionResponse warnings for unbuilt maps (the API
//! server has no warnings from mutations). [`compile`] refuses a namespace whose tables would
//! pass [`MAX_EXPRESSION_CHARS`] rather than writing a policy the API server rejects.
//!
//! Per namespace, in order: `tables` decides which map wins for each written name, `expressions`
//! turns the tables into the policy's CEL (variables, patches and swap records, the match
//! condition) from the building blocks of `cel`, [`compile`] checks the size, and `objects`
//! writes the policy and its binding (also the controller's marker and the probe's reading).
//! `tests/golden/policy-two-namespaces.yaml` holds a compiled policy, so that a change to the CEL
//! shows as a diff.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::guards::Guards;
use crate::maps::{CompiledMap, MapIndex, Origin, Scope};
use crate::reference::Reference;
use crate::types::ImageMap;
use k8s_openapi::api::admissionregistration::v1::{MutatingAdmissionPolicy, MutatingAdmissionPolicyBinding};

mod cel;
mod expressions;
mod objects;
mod tables;
mod unbuilt;

pub use objects::{controller_marker, probe_outcome, Probe, CONTROLLER_MARKER, SERVES_CONTROLLER};
pub use unbuilt::{warning_name, UnbuiltWarning};

/// Label on every object the compiler writes, so stale ones can be found and deleted.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "imagemap";
/// Label naming the namespace a policy serves ([`SERVES_GLOBAL`] for the global policy; the
/// values with a dot can never be a namespace).
pub const SERVES_LABEL: &str = "imagemap.tilt.dev/serves";
/// The global policy's [`SERVES_LABEL`] value.
pub const SERVES_GLOBAL: &str = "global.imagemap";
/// The field manager used when applying policies.
pub const FIELD_MANAGER: &str = "imagemap";
/// The opt-out label, on a namespace or a Pod, that the chart's webhook honours too.
pub const DISABLED_LABEL: &str = "imagemap.tilt.dev/disabled";
/// Namespaces the global policy never serves.
pub const SYSTEM_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];
/// The API server's limit on one CEL expression, in code points. The name table grows with the
/// maps (about 2 000 name-only maps fit); past the limit the compiler refuses.
pub const MAX_EXPRESSION_CHARS: usize = 100_000;

/// Why maps cannot be compiled into a policy that does what the engine does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    /// Too many usable maps apply in one namespace: an expression passes the API server's limit.
    #[error(
        "namespace {namespace:?} has {maps} usable ImageMaps (with the global ones): the policy's {variable} \
         expression would be {size} characters, and the API server accepts at most {max}. Use webhook mode \
         for this namespace, or delete unused maps"
    )]
    TooManyMaps {
        /// The namespace (or the global scope).
        namespace: String,
        /// How many maps apply.
        maps: usize,
        /// The expression over the limit.
        variable: String,
        /// Its size in code points.
        size: usize,
        /// The limit.
        max: usize,
    },
}

/// One namespace's compiled policy and its binding.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NamespacePolicy {
    /// The namespace served, or `None` for the global policy (every namespace without its own).
    pub namespace: Option<String>,
    /// The maps compiled in, `namespace/name`, best first per name.
    pub maps: Vec<String>,
    /// The policy.
    pub policy: MutatingAdmissionPolicy,
    /// Its binding.
    pub binding: MutatingAdmissionPolicyBinding,
}

/// What to compile.
#[derive(Debug, Clone, Default)]
pub struct PolicyOptions {
    /// The `--global-namespace`: its maps apply everywhere, below local maps.
    pub global_namespace: Option<String>,
}

/// What [`compile_index`] made: a policy per namespace that compiled, and why others did not.
#[derive(Debug, Clone, Default)]
pub struct Compiled {
    /// The policies that compiled (the global one last).
    pub policies: Vec<NamespacePolicy>,
    /// The namespaces that did not: each keeps the policy it had, and the others still update.
    pub failed: Vec<CompileError>,
    /// The warning policies for maps without a build ([`UnbuiltWarning`]).
    pub warnings: Vec<UnbuiltWarning>,
}

impl Compiled {
    /// The object names of the policies that failed to compile (to keep what the cluster has).
    pub fn failed_names(&self) -> BTreeSet<String> {
        self.failed.iter().map(|CompileError::TooManyMaps { namespace, .. }| policy_name_of(namespace)).collect()
    }
}

/// Compiles every namespace's usable maps (plus the global namespace's) into policies; the
/// global policy comes last when the global namespace has usable maps. Namespaces whose maps are
/// all unusable get no policy. Invalid maps (selector does not parse) are skipped, as the engine
/// skips them. The first namespace that cannot be compiled is the error.
pub fn compile(maps: &[ImageMap], options: &PolicyOptions) -> Result<Vec<NamespacePolicy>, CompileError> {
    let compiled: Vec<CompiledMap> =
        maps.iter().filter_map(|m| CompiledMap::compile(m, Origin::Cluster).ok()).collect();
    let out = compile_maps(compiled.iter(), options.global_namespace.as_deref(), &Guards::default());
    match out.failed.into_iter().next() {
        Some(error) => Err(error),
        None => Ok(out.policies),
    }
}

/// [`compile`] for the maps of an index (its cluster maps, global namespace and admin guards),
/// namespace by namespace: one that cannot compile does not hold up the others.
pub fn compile_index(index: &MapIndex) -> Compiled {
    let mut out = compile_maps(index.cluster_maps(), index.global_namespace(), index.guards());
    out.warnings = unbuilt::compile_warnings(index.cluster_maps(), index.global_namespace(), index.guards());
    out
}

fn compile_maps<'m>(
    maps: impl IntoIterator<Item = &'m CompiledMap>,
    global_ns: Option<&str>,
    guards: &Guards,
) -> Compiled {
    let global_ns = global_ns.filter(|g| !g.is_empty());
    let mut by_namespace: BTreeMap<&str, Vec<&CompiledMap>> = BTreeMap::new();
    for map in maps {
        if map.target.is_ok() {
            by_namespace.entry(map.namespace.as_str()).or_default().push(map);
        }
    }
    let global: Vec<&CompiledMap> = global_ns.and_then(|g| by_namespace.get(g)).cloned().unwrap_or_default();
    // A map may override command/args only where --allow-overrides lets it; elsewhere it is
    // unusable, as in the engine.
    let allowed = |m: &CompiledMap, scope: Scope| !m.has_overrides() || guards.overrides_allowed(scope == Scope::Local);
    let mut out = Compiled::default();
    for (namespace, local) in &by_namespace {
        if Some(*namespace) == global_ns || guards.is_protected(namespace) {
            continue;
        }
        let scoped: Vec<(&CompiledMap, Scope)> = local
            .iter()
            .map(|m| (*m, Scope::Local))
            .chain(global.iter().map(|m| (*m, Scope::Global)))
            .filter(|(m, scope)| allowed(m, *scope))
            .collect();
        if scoped.is_empty() {
            continue;
        }
        match namespace_policy(Some(namespace), &scoped, &[]) {
            Ok(policy) => out.policies.push(policy),
            Err(e) => out.failed.push(e),
        }
    }
    let scoped: Vec<(&CompiledMap, Scope)> =
        global.iter().map(|m| (*m, Scope::Global)).filter(|(m, scope)| allowed(m, *scope)).collect();
    if !scoped.is_empty() {
        // Namespaces with a policy of their own (compiled now, or kept after a failure) and the
        // protected ones are not served by the global policy.
        let mut served: Vec<String> = out.policies.iter().filter_map(|p| p.namespace.clone()).collect();
        served.extend(out.failed.iter().map(|CompileError::TooManyMaps { namespace, .. }| namespace.clone()));
        served.extend(guards.protected_namespaces.iter().cloned());
        let served: Vec<&str> = served.iter().map(String::as_str).collect();
        match namespace_policy(None, &scoped, &served) {
            Ok(policy) => out.policies.push(policy),
            Err(e) => out.failed.push(e),
        }
    }
    out
}

/// One namespace's policy (`None`: the global one, serving every namespace but the system ones
/// and `served_elsewhere`) deciding among `maps`: its tables, their CEL, the size check, the
/// objects.
fn namespace_policy(
    namespace: Option<&str>,
    maps: &[(&CompiledMap, Scope)],
    served_elsewhere: &[&str],
) -> Result<NamespacePolicy, CompileError> {
    let t = tables::Tables::build(maps);
    let program = expressions::program(&t);
    check_size(namespace, maps.len(), &program)?;
    let (policy, binding) = objects::policy_and_binding(namespace, program, served_elsewhere);
    Ok(NamespacePolicy {
        namespace: namespace.map(String::from),
        maps: t.winners.iter().map(|m| m.id.clone()).collect(),
        policy,
        binding,
    })
}

/// Refuses a policy with an expression (a variable or the mutation) longer than the API server
/// accepts ([`MAX_EXPRESSION_CHARS`]), rather than writing one it rejects.
fn check_size(namespace: Option<&str>, maps: usize, program: &expressions::Program) -> Result<(), CompileError> {
    let too_long = program
        .variables
        .iter()
        .map(|(name, expression)| (name.as_str(), expression))
        .chain([("mutation", &program.mutation)])
        .map(|(name, expression)| (name, expression.chars().count()))
        .find(|(_, size)| *size > MAX_EXPRESSION_CHARS);
    match too_long {
        Some((variable, size)) => Err(CompileError::TooManyMaps {
            namespace: namespace.unwrap_or(GLOBAL_SCOPE).to_string(),
            maps,
            variable: variable.to_string(),
            size,
            max: MAX_EXPRESSION_CHARS,
        }),
        None => Ok(()),
    }
}

/// The object name of the policy (and binding) serving `namespace`, or the global one.
pub fn policy_name(namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("imagemap.ns.{ns}"),
        None => "imagemap.global".to_string(),
    }
}

/// [`policy_name`] of a [`CompileError`]'s namespace (`(global)` for the global policy).
fn policy_name_of(namespace: &str) -> String {
    policy_name(Some(namespace).filter(|ns| *ns != GLOBAL_SCOPE))
}

/// How a [`CompileError`] names the global policy.
const GLOBAL_SCOPE: &str = "(global)";

/// Every way `name` (normalized, `registry/path`) can be written so that §3 normalizes it back:
/// with or without `docker.io/` or `index.docker.io/`, and a lone `library/` dropped or kept.
pub fn spellings(name: &str) -> BTreeSet<String> {
    let mut candidates = vec![name.to_string()];
    if let Some(path) = name.strip_prefix("docker.io/") {
        let mut paths = vec![path.to_string()];
        if let Some(official) = path.strip_prefix("library/").filter(|p| !p.contains('/')) {
            paths.push(official.to_string());
        }
        for p in paths {
            candidates.push(format!("docker.io/{p}"));
            candidates.push(format!("index.docker.io/{p}"));
            candidates.push(p);
        }
    }
    candidates.into_iter().filter(|c| Reference::parse(c).is_ok_and(|r| r.name() == name)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::SWAPS_ANNOTATION;
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn built(ns: &str, name: &str, selector: &str, image: &str) -> ImageMap {
        ImageMap::for_selector(ns, name, selector).with_image(image)
    }

    fn global() -> PolicyOptions {
        PolicyOptions { global_namespace: Some("shared".into()) }
    }

    fn variable<'p>(p: &'p NamespacePolicy, name: &str) -> &'p str {
        let spec = p.policy.spec.as_ref().expect("spec");
        let vars = spec.variables.as_ref().expect("variables");
        &vars.iter().find(|v| v.name == name).unwrap_or_else(|| panic!("no variable {name}")).expression
    }

    #[test]
    fn every_written_form_of_a_name_normalizes_back_to_it() {
        let official: Vec<String> = spellings("docker.io/library/nginx").into_iter().collect();
        assert_eq!(
            official,
            [
                "docker.io/library/nginx",
                "docker.io/nginx",
                "index.docker.io/library/nginx",
                "index.docker.io/nginx",
                "library/nginx",
                "nginx"
            ]
        );
        assert_eq!(spellings("docker.io/team/app").len(), 3);
        assert_eq!(spellings("gcr.io/x/app").into_iter().collect::<Vec<_>>(), ["gcr.io/x/app"]);
        // A Docker Hub path whose first component reads as a registry needs its `docker.io/`.
        let dotted: Vec<String> = spellings("docker.io/my.org/app").into_iter().collect();
        assert_eq!(dotted, ["docker.io/my.org/app", "index.docker.io/my.org/app"]);
    }

    #[test]
    fn precedence_is_decided_at_compile_time() {
        let maps = [
            built("shared", "a-global", "app", "reg/global:1"),
            built("dev", "z-local", "app", "reg/local:1"),
            built("dev", "b-local", "docker.io/library/app", "reg/local-b:1"),
            built("dev", "exact", "app:1.0", "reg/exact:1").with_match_exact(true),
        ];
        let policies = compile(&maps, &global()).expect("compiles");
        let dev = &policies[0];
        assert_eq!(dev.namespace.as_deref(), Some("dev"));
        // Exact first, then the local maps by name; the global one loses every key.
        assert_eq!(dev.maps, ["dev/exact", "dev/b-local"]);
        assert_eq!(variable(dev, "imageExact"), r#"{"docker.io/library/app:1.0": 0}"#);
        assert_eq!(variable(dev, "imageName"), r#"{"docker.io/library/app": 1}"#);
        assert_eq!(variable(dev, "targets"), r#"["reg/exact:1", "reg/local-b:1"]"#);
        let global = &policies[1];
        assert_eq!(global.namespace, None);
        assert_eq!(global.maps, ["shared/a-global"]);
    }

    #[test]
    fn unbuilt_and_invalid_maps_are_left_out() {
        let maps = [
            ImageMap::for_selector("dev", "unbuilt", "app"),
            built("dev", "invalid", "Not A Ref", "reg/x:1"),
            built("other", "bad-target", "app", "NOT VALID"),
        ];
        assert_eq!(compile(&maps, &PolicyOptions::default()).expect("compiles"), []);
    }

    #[test]
    fn env_tables_hold_only_maps_that_swap_env_values() {
        let maps =
            [built("dev", "a", "app", "reg/app:1"), built("dev", "b", "db", "reg/db:1").with_match_in_env_vars(true)];
        let dev = &compile(&maps, &PolicyOptions::default()).expect("compiles")[0];
        assert_eq!(variable(dev, "envName"), r#"{"docker.io/library/db": 1}"#);
        assert_eq!(variable(dev, "imageName"), r#"{"docker.io/library/app": 0, "docker.io/library/db": 1}"#);
        // Env values must be looked at, so no condition can skip Pods by their images.
        assert!(dev.policy.spec.as_ref().expect("spec").match_conditions.is_none());
    }

    #[test]
    fn overrides_are_compiled_only_when_a_map_has_them() {
        let plain = [built("dev", "a", "app", "reg/app:1")];
        let p = &compile(&plain, &PolicyOptions::default()).expect("compiles")[0];
        let vars = p.policy.spec.as_ref().and_then(|s| s.variables.as_ref()).expect("variables");
        assert!(!vars.iter().any(|v| v.name == "commands" || v.name == "args"));
        let with = [built("dev", "a", "app", "reg/app:1").with_command(&["/bin/sh"]).with_args(&[])];
        let p = &compile(&with, &PolicyOptions::default()).expect("compiles")[0];
        assert_eq!(variable(p, "commandSet"), "[true]");
        assert_eq!(variable(p, "commands"), r#"[["/bin/sh"]]"#);
        assert_eq!(variable(p, "argsSet"), "[true]");
        assert_eq!(variable(p, "args"), "[[]]");
    }

    #[test]
    fn the_global_policy_serves_every_namespace_without_its_own_but_the_system_ones() {
        let maps = [built("shared", "g", "app", "reg/app:1"), built("dev", "l", "db", "reg/db:1")];
        let policies = compile(&maps, &global()).expect("compiles");
        assert_eq!(
            policies.iter().map(|p| p.policy.metadata.name.clone().unwrap_or_default()).collect::<Vec<_>>(),
            ["imagemap.ns.dev", "imagemap.global"]
        );
        // The local policy carries the global maps too, below its own.
        assert_eq!(policies[0].maps, ["dev/l", "shared/g"]);
        let selector = policies[1].binding.spec.as_ref().and_then(|s| s.match_resources.as_ref()).expect("match");
        let names = &selector.namespace_selector.as_ref().and_then(|s| s.match_expressions.as_ref()).expect("exprs")[0];
        assert_eq!(names.operator, "NotIn");
        assert_eq!(names.values.as_deref().expect("values"), ["dev", "kube-node-lease", "kube-public", "kube-system"]);
    }

    #[test]
    fn guards_bind_the_compiled_policies_and_a_failing_namespace_does_not_hold_up_the_others() {
        use crate::guards::{Guards, Overrides};
        let guards = Guards::new(vec!["localhost:5000/".into()], Overrides::None, &["imagemap-system".into()]);
        let mut idx = MapIndex::new(Some("shared".into())).with_guards(guards);
        for m in [
            built("dev", "ok", "app", "localhost:5000/app:1"),
            built("dev", "elsewhere", "other", "evil.example/other:1"),
            built("dev", "overrides", "tool", "localhost:5000/tool:1").with_args(&["--x"]),
            built("imagemap-system", "own", "imagemap", "localhost:5000/imagemap:1"),
            built("shared", "g", "base", "localhost:5000/base:1"),
        ] {
            idx.upsert(&m).expect("valid");
        }
        // Too many maps in one namespace: it fails alone.
        for i in 0..2500 {
            idx.upsert(&built("big", &format!("m{i}"), &format!("app{i}"), "localhost:5000/x:1")).expect("valid");
        }
        let out = compile_index(&idx);
        let names: Vec<String> = out.policies.iter().filter_map(|p| p.policy.metadata.name.clone()).collect();
        assert_eq!(names, ["imagemap.ns.dev", "imagemap.global"]);
        assert_eq!(out.policies[0].maps, ["dev/ok", "shared/g"], "refused maps are left out");
        assert_eq!(out.failed_names(), BTreeSet::from(["imagemap.ns.big".to_string()]));
        let global = out.policies[1].binding.spec.as_ref().and_then(|s| s.match_resources.as_ref()).expect("match");
        let not_in = &global.namespace_selector.as_ref().and_then(|s| s.match_expressions.as_ref()).expect("exprs")[0];
        let values = not_in.values.clone().unwrap_or_default();
        assert!(values.contains(&"big".to_string()) && values.contains(&"imagemap-system".to_string()), "{values:?}");
    }

    #[test]
    fn a_recorded_value_is_never_matched_again() {
        let maps = [
            built("dev", "exact", "app:dev", "app:tilt-exact").with_match_exact(true),
            built("dev", "name", "app", "app:tilt-name"),
        ];
        let policies = compile(&maps, &PolicyOptions::default()).expect("compiles");
        let mutation = policies[0].policy.spec.as_ref().and_then(|s| s.mutations.as_ref()).expect("mutations")[0]
            .json_patch
            .as_ref()
            .and_then(|p| p.expression.clone())
            .expect("expression");
        assert!(mutation.contains(r#"variables.recorded.exists(r, r.contains('"field":"' + 'spec.containers{' + c.name + '}.image' + '"')"#), "{mutation}");
    }

    #[test]
    fn too_many_maps_for_one_policy_are_refused_with_the_way_out() {
        let maps = |n: usize| -> Vec<ImageMap> {
            (0..n).map(|i| built("dev", &format!("m{i}"), &format!("gcr.io/team/svc-{i}"), "reg/app:1")).collect()
        };
        // Measured on the real API server: 2 000 such maps were accepted, 2 500 refused
        // ("expression code point size exceeds limit").
        assert!(compile(&maps(2000), &PolicyOptions::default()).is_ok());
        let err = compile(&maps(2500), &PolicyOptions::default()).expect_err("too many");
        assert!(
            matches!(&err, CompileError::TooManyMaps { maps: 2500, variable, size, .. } if variable == "spell" && *size > MAX_EXPRESSION_CHARS),
            "{err:?}"
        );
        assert!(err.to_string().contains("Use webhook mode"), "{err}");
    }

    fn probe(image: &str, annotation: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                annotations: annotation.map(|a| [(SWAPS_ANNOTATION.to_string(), a.to_string())].into()),
                ..Default::default()
            },
            spec: Some(k8s_openapi::api::core::v1::PodSpec {
                containers: vec![k8s_openapi::api::core::v1::Container {
                    name: "probe".into(),
                    image: Some(image.into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_probe_is_done_when_swapped_to_the_target_or_won_by_another_map() {
        assert_eq!(probe_outcome(&probe("reg/app:2", None), "dev/app", "reg/app:2"), Probe::Applied);
        assert_eq!(probe_outcome(&probe("app", None), "dev/app", "reg/app:2"), Probe::Waiting);
        let old =
            r#"[{"field":"spec.containers{probe}.image","original":"app","image":"reg/app:1","imageMap":"dev/app"}]"#;
        assert_eq!(probe_outcome(&probe("reg/app:1", Some(old)), "dev/app", "reg/app:2"), Probe::Waiting);
        let other = old.replace("dev/app", "dev/exact");
        assert_eq!(probe_outcome(&probe("reg/app:1", Some(&other)), "dev/app", "reg/app:2"), Probe::OtherMapWins);
    }
}
