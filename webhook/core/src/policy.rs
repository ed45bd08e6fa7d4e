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

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::admissionregistration::v1::{
    JSONPatch, MatchCondition, MatchResources, MutatingAdmissionPolicy, MutatingAdmissionPolicyBinding,
    MutatingAdmissionPolicyBindingSpec, MutatingAdmissionPolicySpec, Mutation, NamedRuleWithOperations, Variable,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement, ObjectMeta};
use serde::Serialize;

use crate::guards::Guards;
use crate::inject::{parse_records, PULL_POLICY, SWAPS_ANNOTATION};
use crate::maps::{precedence, CompiledMap, MapIndex, Origin, Scope};
use crate::patch::escape;
use crate::reference::Reference;
use crate::types::ImageMap;
use k8s_openapi::api::core::v1::Pod;

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

/// A tag and/or digest as §3 allows them, after the written name.
const SUFFIX_PATTERN: &str =
    "^(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@(sha256:[0-9a-f]{64}|sha384:[0-9a-f]{96}|sha512:[0-9a-f]{128}))?$";

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
    compile_maps(index.cluster_maps(), index.global_namespace(), index.guards())
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
fn pod_creates() -> MatchResources {
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

/// The decision tables of one policy: which map wins for each written name, by kind of field.
#[derive(Default)]
struct Tables<'m> {
    /// Every written form of a selector's name -> the normalized name.
    spell: BTreeMap<String, String>,
    image_exact: BTreeMap<String, usize>,
    image_name: BTreeMap<String, usize>,
    env_exact: BTreeMap<String, usize>,
    env_name: BTreeMap<String, usize>,
    /// The winners, indexed by the table values.
    winners: Vec<&'m CompiledMap>,
}

impl<'m> Tables<'m> {
    fn build(maps: &[(&'m CompiledMap, Scope)]) -> Tables<'m> {
        let mut sorted = maps.to_vec();
        sorted.sort_by(|a, b| precedence(*a, *b));
        let mut t = Tables::default();
        for (map, _) in sorted {
            let selector = &map.selector;
            for written in spellings(selector.name()) {
                t.spell.insert(written, selector.name().to_string());
            }
            // Best first: the first map to claim a key keeps it.
            let index = t.winners.len();
            let (key, image_table, env_table) = if map.match_exact {
                (selector.full(), &mut t.image_exact, &mut t.env_exact)
            } else {
                (selector.name().to_string(), &mut t.image_name, &mut t.env_name)
            };
            let mut claimed = claim(image_table, key.clone(), index);
            if map.match_in_env_vars {
                claimed |= claim(env_table, key, index);
            }
            if claimed {
                t.winners.push(map);
            }
        }
        t
    }

    fn has_env(&self) -> bool {
        !self.env_exact.is_empty() || !self.env_name.is_empty()
    }
}

/// Puts `key -> index` into `table` unless a better map has it; true when it was put.
fn claim(table: &mut BTreeMap<String, usize>, key: String, index: usize) -> bool {
    match table.entry(key) {
        std::collections::btree_map::Entry::Vacant(v) => {
            v.insert(index);
            true
        }
        std::collections::btree_map::Entry::Occupied(_) => false,
    }
}

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

/// A CEL string literal for `s` (JSON's escapes are a subset of CEL's).
fn cel_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| unreachable!("a string always serializes"))
}

fn cel_map<V>(table: &BTreeMap<String, V>, value: impl Fn(&V) -> String) -> String {
    let entries: Vec<String> = table.iter().map(|(k, v)| format!("{}: {}", cel_string(k), value(v))).collect();
    format!("{{{}}}", entries.join(", "))
}

fn cel_list(items: impl IntoIterator<Item = String>) -> String {
    format!("[{}]", items.into_iter().collect::<Vec<_>>().join(", "))
}

/// CEL: the index of the winning map for the string `value` (an expression), or -1: split into
/// the written name (before the first `@`, without a `:tag` after the last `/`) and the suffix,
/// check the suffix, look up the full string among exact maps, then the name.
fn decision(value: &str, exact: &str, name: &str) -> String {
    let written = bind(
        "b",
        &format!("{value}.split('@')[0]"),
        &bind("t", "b.lastIndexOf(':')", "t > b.lastIndexOf('/') ? b.substring(0, t) : b"),
    );
    let lookup = bind(
        "k",
        "variables.spell[n]",
        &bind(
            "f",
            &format!("k + {value}.substring(n.size())"),
            &format!(
                "f in variables.{exact} ? variables.{exact}[f] : (k in variables.{name} ? variables.{name}[k] : -1)"
            ),
        ),
    );
    bind(
        "n",
        &written,
        &format!("n in variables.spell && {value}.substring(n.size()).matches('{SUFFIX_PATTERN}') ? {lookup} : -1"),
    )
}

/// CEL: `body` with `name` bound to `value`, evaluated once. The API server has no `cel.bind`, so
/// a one-element list is mapped.
fn bind(name: &str, value: &str, body: &str) -> String {
    format!("[{value}].map({name}, {body})[0]")
}

/// The pieces of CEL for one container list (`containers` or `initContainers`).
struct ContainerList {
    field: &'static str,
    /// The decisions variable for images, and for env values.
    images: &'static str,
    env: &'static str,
}

const CONTAINERS: ContainerList =
    ContainerList { field: "containers", images: "imagesOfContainers", env: "envOfContainers" };
const INIT_CONTAINERS: ContainerList =
    ContainerList { field: "initContainers", images: "imagesOfInitContainers", env: "envOfInitContainers" };

impl ContainerList {
    fn list(&self) -> String {
        format!("object.spec.{}", self.field)
    }

    /// `expr` over the list, or `[]` when the Pod has none.
    fn guard(&self, expr: String) -> String {
        format!("(has(object.spec.{}) ? {expr} : [])", self.field)
    }

    fn image_swapped(&self) -> String {
        let d = format!("variables.{}[i]", self.images);
        let field = format!("'spec.{}{{' + c.name + '}}.image'", self.field);
        format!("{d} >= 0 && variables.targets[{d}] != c.image && !{}", recorded(&field, "c.image"))
    }

    fn env_swapped(&self) -> String {
        let d = format!("variables.{}[i][j]", self.env);
        let field = format!("'spec.{}{{' + c.name + '}}.env{{' + {ESCAPED_ENV_NAME} + '}}'", self.field);
        format!("{d} >= 0 && variables.targets[{d}] != e.value && !{}", recorded(&field, "e.value"))
    }

    fn path(&self) -> String {
        format!("'/spec/{}/' + string(i)", self.field)
    }
}

/// CEL: the env var's name as the swap record writes it (JSON-escaped).
const ESCAPED_ENV_NAME: &str = r#"e.name.replace('\\', '\\\\').replace('"', '\\"')"#;

/// CEL: true when the swaps annotation records that `field` (a CEL string expression) was
/// swapped to `value`: a value one of our maps wrote is never matched again (no chaining on
/// reinvocation, DESIGN §4), as the engine leaves a recorded value alone.
fn recorded(field: &str, value: &str) -> String {
    format!(
        "variables.recorded.exists(r, r.contains('\"field\":\"' + {field} + '\"') && r.contains('\"image\":\"' + {value} + '\"'))"
    )
}

/// The override of one list field (`command` or `args`) as patches, for container `c` at `path`.
fn override_patches(key: &str, set: &str, values: &str, d: &str, path: &str) -> String {
    format!(
        "(variables.{set}[{d}] ? (variables.{values}[{d}].size() == 0 ? \
         (has(c.{key}) ? [JSONPatch{{op: 'remove', path: {path} + '/{key}'}}] : []) : \
         [JSONPatch{{op: 'add', path: {path} + '/{key}', value: variables.{values}[{d}]}}]) : [])"
    )
}

fn namespace_policy(
    namespace: Option<&str>,
    maps: &[(&CompiledMap, Scope)],
    served_elsewhere: &[&str],
) -> Result<NamespacePolicy, CompileError> {
    let t = Tables::build(maps);
    let env = t.has_env();
    let target = |m: &CompiledMap| m.target.as_ref().map(|t| t.familiar.clone()).unwrap_or_default();
    let has_command = t.winners.iter().any(|m| m.command.is_some());
    let has_args = t.winners.iter().any(|m| m.args.is_some());
    let list_of = |f: &dyn Fn(&CompiledMap) -> Option<Vec<String>>| {
        (
            cel_list(t.winners.iter().map(|m| f(m).is_some().to_string())),
            cel_list(t.winners.iter().map(|m| cel_list(f(m).unwrap_or_default().iter().map(|s| cel_string(s))))),
        )
    };
    let index = |v: &usize| v.to_string();
    let mut variables = vec![
        ("spell", cel_map(&t.spell, |v| cel_string(v))),
        ("imageExact", cel_map(&t.image_exact, index)),
        ("imageName", cel_map(&t.image_name, index)),
        ("targets", cel_list(t.winners.iter().map(|m| cel_string(&target(m))))),
        ("mapIds", cel_list(t.winners.iter().map(|m| cel_string(&m.id)))),
    ];
    if env {
        variables.push(("envExact", cel_map(&t.env_exact, index)));
        variables.push(("envName", cel_map(&t.env_name, index)));
    }
    if has_command {
        let (set, values) = list_of(&|m| m.command.clone());
        variables.push(("commandSet", set));
        variables.push(("commands", values));
    }
    if has_args {
        let (set, values) = list_of(&|m| m.args.clone());
        variables.push(("argsSet", set));
        variables.push(("args", values));
    }
    let mut variables: Vec<(String, String)> = variables.into_iter().map(|(n, e)| (n.to_string(), e)).collect();
    // The records already on the Pod (one string each), for [`recorded`].
    let key = cel_string(SWAPS_ANNOTATION);
    variables.push((
        "recorded".to_string(),
        format!(
            "has(object.metadata.annotations) && {key} in object.metadata.annotations ? \
             object.metadata.annotations[{key}].split('}},{{') : ['']"
        ),
    ));
    let image_decision = decision("c.image", "imageExact", "imageName");
    let env_decision = decision("e.value", "envExact", "envName");
    for list in [&CONTAINERS, &INIT_CONTAINERS] {
        let images = format!("{}.map(c, has(c.image) ? {image_decision} : -1)", list.list());
        variables.push((list.images.to_string(), list.guard(images)));
        if env {
            let values =
                format!("{}.map(c, has(c.env) ? c.env.map(e, has(e.value) ? {env_decision} : -1) : [])", list.list());
            variables.push((list.env.to_string(), list.guard(values)));
        }
    }
    let volume_decision = decision("v.image.reference", "imageExact", "imageName");
    variables.push((
        "imagesOfVolumes".to_string(),
        format!(
            "(has(object.spec.volumes) ? object.spec.volumes.map(v, has(v.image) && has(v.image.reference) ? \
             {volume_decision} : -1) : [])"
        ),
    ));

    // Patches and swap records, in the engine's order: each container's image then its env
    // values; containers, then init containers, then image volumes.
    let mut patches = Vec::new();
    let mut records = Vec::new();
    for list in [&CONTAINERS, &INIT_CONTAINERS] {
        let d = format!("variables.{}[i]", list.images);
        let path = list.path();
        let mut image = format!(
            "[JSONPatch{{op: 'replace', path: {path} + '/image', value: variables.targets[{d}]}}, \
             JSONPatch{{op: 'add', path: {path} + '/imagePullPolicy', value: '{PULL_POLICY}'}}]"
        );
        if has_command {
            image = format!("{image} + {}", override_patches("command", "commandSet", "commands", &d, &path));
        }
        if has_args {
            image = format!("{image} + {}", override_patches("args", "argsSet", "args", &d, &path));
        }
        patches.push(list.guard(format!(
            "{}.transformList(i, c, {}, {image}).flatten()",
            list.list(),
            list.image_swapped()
        )));
        let image_record = format!(
            "'{{\"field\":\"spec.{field}{{' + c.name + '}}.image\",\"original\":\"' + c.image + \
             '\",\"image\":\"' + variables.targets[{d}] + '\",\"imageMap\":\"' + variables.mapIds[{d}] + '\"}}'",
            field = list.field
        );
        let mut record = format!("({} ? [{image_record}] : [])", list.image_swapped());
        if env {
            let e = format!("variables.{}[i][j]", list.env);
            patches.push(list.guard(format!(
                "{}.transformList(i, c, has(c.env) ? c.env.transformList(j, e, {}, \
                 JSONPatch{{op: 'replace', path: {path} + '/env/' + string(j) + '/value', value: variables.targets[{e}]}}) \
                 : []).flatten()",
                list.list(),
                list.env_swapped()
            )));
            let env_record = format!(
                "'{{\"field\":\"spec.{field}{{' + c.name + '}}.env{{' + \
                 e.name.replace('\\\\', '\\\\\\\\').replace('\"', '\\\\\"') + '}}\",\"original\":\"' + e.value + \
                 '\",\"image\":\"' + variables.targets[{e}] + '\",\"imageMap\":\"' + variables.mapIds[{e}] + '\"}}'",
                field = list.field
            );
            record = format!(
                "{record} + (has(c.env) ? c.env.transformList(j, e, {}, {env_record}) : [])",
                list.env_swapped()
            );
        }
        records.push(list.guard(format!("{}.transformList(i, c, ({record}).join(','))", list.list())));
    }
    let vd = "variables.imagesOfVolumes[i]";
    let volume_recorded = recorded("'spec.volumes{' + v.name + '}.image.reference'", "v.image.reference");
    let volume_swapped = format!("{vd} >= 0 && variables.targets[{vd}] != v.image.reference && !{volume_recorded}");
    patches.push(format!(
        "(has(object.spec.volumes) ? object.spec.volumes.transformList(i, v, {volume_swapped}, \
         [JSONPatch{{op: 'replace', path: '/spec/volumes/' + string(i) + '/image/reference', value: variables.targets[{vd}]}}, \
         JSONPatch{{op: 'add', path: '/spec/volumes/' + string(i) + '/image/pullPolicy', value: '{PULL_POLICY}'}}]).flatten() : [])"
    ));
    records.push(format!(
        "(has(object.spec.volumes) ? object.spec.volumes.transformList(i, v, {volume_swapped}, \
         '{{\"field\":\"spec.volumes{{' + v.name + '}}.image.reference\",\"original\":\"' + v.image.reference + \
         '\",\"image\":\"' + variables.targets[{vd}] + '\",\"imageMap\":\"' + variables.mapIds[{vd}] + '\"}}') : [])"
    ));
    variables.push(("records".to_string(), format!("({}).filter(r, r != '')", records.join(" + "))));
    let key = cel_string(SWAPS_ANNOTATION);
    let key_path = cel_string(&format!("/metadata/annotations/{}", escape(SWAPS_ANNOTATION)));
    patches.push(format!(
        "(variables.records.size() == 0 ? [] : [variables.records.join(',')].map(joined, [\
         !has(object.metadata.annotations) ? \
         JSONPatch{{op: 'add', path: '/metadata/annotations', value: {{{key}: '[' + joined + ']'}}}} : \
         JSONPatch{{op: 'add', path: {key_path}, value: \
         ({key} in object.metadata.annotations && object.metadata.annotations[{key}].startsWith('[{{') && \
         object.metadata.annotations[{key}].endsWith('}}]')) ? \
         object.metadata.annotations[{key}].substring(0, object.metadata.annotations[{key}].size() - 1) + ',' + joined + ']' : \
         '[' + joined + ']'}}])[0])"
    ));

    let patch_expression = patches.join(" + ");
    let too_long = variables
        .iter()
        .map(|(name, expression)| (name.as_str(), expression))
        .chain([("mutation", &patch_expression)])
        .map(|(name, expression)| (name, expression.chars().count()))
        .find(|(_, size)| *size > MAX_EXPRESSION_CHARS);
    if let Some((variable, size)) = too_long {
        return Err(CompileError::TooManyMaps {
            namespace: namespace.unwrap_or(GLOBAL_SCOPE).to_string(),
            maps: maps.len(),
            variable: variable.to_string(),
            size,
            max: MAX_EXPRESSION_CHARS,
        });
    }
    let name = policy_name(namespace);
    let metadata = ObjectMeta {
        name: Some(name.clone()),
        labels: Some(BTreeMap::from([
            (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
            (SERVES_LABEL.to_string(), namespace.unwrap_or(SERVES_GLOBAL).to_string()),
        ])),
        ..Default::default()
    };
    let pods = pod_creates();
    let match_conditions =
        image_condition(&t).map(|expression| vec![MatchCondition { name: "imagemap-images".into(), expression }]);
    let policy = MutatingAdmissionPolicy {
        metadata: metadata.clone(),
        spec: Some(MutatingAdmissionPolicySpec {
            failure_policy: Some("Ignore".into()),
            match_constraints: Some(pods),
            match_conditions,
            reinvocation_policy: Some("IfNeeded".into()),
            variables: Some(variables.into_iter().map(|(name, expression)| Variable { name, expression }).collect()),
            mutations: Some(vec![Mutation {
                patch_type: "JSONPatch".into(),
                json_patch: Some(JSONPatch { expression: Some(patch_expression) }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    };
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
    let binding = MutatingAdmissionPolicyBinding {
        metadata,
        spec: Some(MutatingAdmissionPolicyBindingSpec {
            policy_name: Some(name),
            match_resources: Some(MatchResources {
                namespace_selector: Some(LabelSelector {
                    match_expressions: Some(vec![namespaces, opted_in.clone()]),
                    ..Default::default()
                }),
                object_selector: Some(LabelSelector { match_expressions: Some(vec![opted_in]), ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    Ok(NamespacePolicy {
        namespace: namespace.map(String::from),
        maps: t.winners.iter().map(|m| m.id.clone()).collect(),
        policy,
        binding,
    })
}

/// The match condition that skips Pods with no image that could match (as the webhook's scope
/// does), or none when env values are swapped or the names are too many.
fn image_condition(t: &Tables<'_>) -> Option<String> {
    if t.has_env() {
        return None;
    }
    let tokens: BTreeSet<String> = t
        .winners
        .iter()
        .map(|m| {
            let path = m.selector.path();
            path.rsplit('/').next().unwrap_or(path).to_string()
        })
        .collect();
    (tokens.len() <= crate::scope::MAX_IMAGE_TOKENS).then(|| crate::scope::images_expression(&tokens))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn strings_from_maps_are_escaped_for_cel() {
        assert_eq!(cel_string(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
