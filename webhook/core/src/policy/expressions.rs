//! The policy's CEL: its variables (the decision tables, then the decisions per container,
//! env value and image volume), the mutation (patches and swap records per container list, for
//! image volumes, and the swaps annotation) and the match condition.

use std::collections::BTreeSet;

use super::cel::{self, Piece};
use super::tables::Tables;
use crate::inject::{PULL_POLICY, SWAPS_ANNOTATION};
use crate::maps::CompiledMap;
use crate::patch::escape;

/// A policy's CEL, before it is checked against the API server's limit and put into objects.
pub(super) struct Program {
    /// `(name, expression)`, in evaluation order.
    pub(super) variables: Vec<(String, String)>,
    /// The JSONPatch expression.
    pub(super) mutation: String,
    /// The match condition on the Pod's images, if one applies.
    pub(super) condition: Option<String>,
}

/// The CEL of the policy deciding with tables `t`.
pub(super) fn program(t: &Tables<'_>) -> Program {
    let overrides = Overrides::of(t);
    let env = t.has_env();
    let mut variables = table_variables(t, &overrides);
    variables.extend(decision_variables(env));
    // Patches and swap records, in the engine's order: each container's image then its env
    // values; containers, then init containers, then image volumes.
    let mut patches = Vec::new();
    let mut records = Vec::new();
    for list in [&CONTAINERS, &INIT_CONTAINERS] {
        patches.push(list.image_patches(&overrides));
        if env {
            patches.push(list.env_patches());
        }
        records.push(list.records(env));
    }
    patches.push(volume_patches());
    records.push(volume_records());
    variables.push(("records".to_string(), format!("({}).filter(r, r != '')", records.join(" + "))));
    patches.push(annotation_patch());
    Program { variables, mutation: patches.join(" + "), condition: image_condition(t) }
}

/// Which overrides some winner has (their variables and patches exist only then).
struct Overrides {
    command: bool,
    args: bool,
}

impl Overrides {
    fn of(t: &Tables<'_>) -> Overrides {
        Overrides {
            command: t.winners.iter().any(|m| m.command.is_some()),
            args: t.winners.iter().any(|m| m.args.is_some()),
        }
    }
}

/// The variables decided at compile time: the spellings, the tables, the winners' targets, ids
/// and overrides.
fn table_variables(t: &Tables<'_>, overrides: &Overrides) -> Vec<(String, String)> {
    let target = |m: &CompiledMap| m.target.as_ref().map(|t| t.familiar.clone()).unwrap_or_default();
    let list_of = |f: &dyn Fn(&CompiledMap) -> Option<Vec<String>>| {
        (
            cel::list(t.winners.iter().map(|m| f(m).is_some().to_string())),
            cel::list(t.winners.iter().map(|m| cel::list(f(m).unwrap_or_default().iter().map(|s| cel::string(s))))),
        )
    };
    let index = |v: &usize| v.to_string();
    let mut variables = vec![
        ("spell", cel::map(&t.spell, |v| cel::string(v))),
        ("imageExact", cel::map(&t.image_exact, index)),
        ("imageName", cel::map(&t.image_name, index)),
        ("targets", cel::list(t.winners.iter().map(|m| cel::string(&target(m))))),
        ("mapIds", cel::list(t.winners.iter().map(|m| cel::string(&m.id)))),
    ];
    if t.has_env() {
        variables.push(("envExact", cel::map(&t.env_exact, index)));
        variables.push(("envName", cel::map(&t.env_name, index)));
    }
    if overrides.command {
        let (set, values) = list_of(&|m| m.command.clone());
        variables.push(("commandSet", set));
        variables.push(("commands", values));
    }
    if overrides.args {
        let (set, values) = list_of(&|m| m.args.clone());
        variables.push(("argsSet", set));
        variables.push(("args", values));
    }
    variables.into_iter().map(|(n, e)| (n.to_string(), e)).collect()
}

/// The variables decided per Pod: the records already on it, and the winner (or -1) of each
/// container's image, env value (when `env`) and image volume.
fn decision_variables(env: bool) -> Vec<(String, String)> {
    let mut variables = Vec::new();
    // The records already on the Pod (one string each), for [`cel::recorded`].
    let key = cel::string(SWAPS_ANNOTATION);
    variables.push((
        "recorded".to_string(),
        format!(
            "has(object.metadata.annotations) && {key} in object.metadata.annotations ? \
             object.metadata.annotations[{key}].split('}},{{') : ['']"
        ),
    ));
    let image_decision = cel::decision("c.image", "imageExact", "imageName");
    let env_decision = cel::decision("e.value", "envExact", "envName");
    for list in [&CONTAINERS, &INIT_CONTAINERS] {
        let images = format!("{}.map(c, has(c.image) ? {image_decision} : -1)", list.list());
        variables.push((list.images.to_string(), list.guard(images)));
        if env {
            let values =
                format!("{}.map(c, has(c.env) ? c.env.map(e, has(e.value) ? {env_decision} : -1) : [])", list.list());
            variables.push((list.env.to_string(), list.guard(values)));
        }
    }
    let volume_decision = cel::decision("v.image.reference", "imageExact", "imageName");
    variables.push((
        "imagesOfVolumes".to_string(),
        format!(
            "(has(object.spec.volumes) ? object.spec.volumes.map(v, has(v.image) && has(v.image.reference) ? \
             {volume_decision} : -1) : [])"
        ),
    ));
    variables
}

/// The pieces of CEL for one container list (`containers` or `initContainers`).
struct ContainerList {
    field: &'static str,
    /// The decisions variable for images, and for env values.
    images: &'static str,
    env: &'static str,
    /// How a swap record's field names a container of the list, up to its name.
    record_prefix: &'static str,
}

const CONTAINERS: ContainerList = ContainerList {
    field: "containers",
    images: "imagesOfContainers",
    env: "envOfContainers",
    record_prefix: "spec.containers{",
};
const INIT_CONTAINERS: ContainerList = ContainerList {
    field: "initContainers",
    images: "imagesOfInitContainers",
    env: "envOfInitContainers",
    record_prefix: "spec.initContainers{",
};

/// CEL: the env var's name as the swap record writes it (JSON-escaped).
const ESCAPED_ENV_NAME: &str = r#"e.name.replace('\\', '\\\\').replace('"', '\\"')"#;

impl ContainerList {
    fn list(&self) -> String {
        format!("object.spec.{}", self.field)
    }

    /// `expr` over the list, or `[]` when the Pod has none.
    fn guard(&self, expr: String) -> String {
        format!("(has(object.spec.{}) ? {expr} : [])", self.field)
    }

    /// The winner for container `c` (at `i`).
    fn image_winner(&self) -> String {
        format!("variables.{}[i]", self.images)
    }

    /// The winner for env var `e` (at `j`) of container `c` (at `i`).
    fn env_winner(&self) -> String {
        format!("variables.{}[i][j]", self.env)
    }

    /// The swap record's field of container `c`'s image.
    fn image_field(&self) -> [Piece<'static>; 3] {
        [Piece::Text(self.record_prefix), Piece::Cel("c.name"), Piece::Text("}.image")]
    }

    /// The swap record's field of env var `e` of container `c`.
    fn env_field(&self) -> [Piece<'static>; 5] {
        [
            Piece::Text(self.record_prefix),
            Piece::Cel("c.name"),
            Piece::Text("}.env{"),
            Piece::Cel(ESCAPED_ENV_NAME),
            Piece::Text("}"),
        ]
    }

    fn image_swapped(&self) -> String {
        let d = self.image_winner();
        let recorded = cel::recorded(&cel::concat(&self.image_field()), "c.image");
        format!("{d} >= 0 && variables.targets[{d}] != c.image && !{recorded}")
    }

    fn env_swapped(&self) -> String {
        let d = self.env_winner();
        let recorded = cel::recorded(&cel::concat(&self.env_field()), "e.value");
        format!("{d} >= 0 && variables.targets[{d}] != e.value && !{recorded}")
    }

    fn path(&self) -> String {
        format!("'/spec/{}/' + string(i)", self.field)
    }

    /// The patches of swapped images: the image, the pull policy and the overrides.
    fn image_patches(&self, overrides: &Overrides) -> String {
        let d = self.image_winner();
        let path = self.path();
        let mut image = format!(
            "[JSONPatch{{op: 'replace', path: {path} + '/image', value: variables.targets[{d}]}}, \
             JSONPatch{{op: 'add', path: {path} + '/imagePullPolicy', value: '{PULL_POLICY}'}}]"
        );
        if overrides.command {
            image = format!("{image} + {}", override_patches("command", "commandSet", "commands", &d, &path));
        }
        if overrides.args {
            image = format!("{image} + {}", override_patches("args", "argsSet", "args", &d, &path));
        }
        self.guard(format!("{}.transformList(i, c, {}, {image}).flatten()", self.list(), self.image_swapped()))
    }

    /// The patches of swapped env values.
    fn env_patches(&self) -> String {
        let (e, path) = (self.env_winner(), self.path());
        self.guard(format!(
            "{}.transformList(i, c, has(c.env) ? c.env.transformList(j, e, {}, \
             JSONPatch{{op: 'replace', path: {path} + '/env/' + string(j) + '/value', value: variables.targets[{e}]}}) \
             : []).flatten()",
            self.list(),
            self.env_swapped()
        ))
    }

    /// The swap records of each container (one string per container, records joined by `,`).
    fn records(&self, env: bool) -> String {
        let image_record = cel::swap_record(&self.image_field(), "c.image", &self.image_winner());
        let mut record = format!("({} ? [{image_record}] : [])", self.image_swapped());
        if env {
            let env_record = cel::swap_record(&self.env_field(), "e.value", &self.env_winner());
            record = format!(
                "{record} + (has(c.env) ? c.env.transformList(j, e, {}, {env_record}) : [])",
                self.env_swapped()
            );
        }
        self.guard(format!("{}.transformList(i, c, ({record}).join(','))", self.list()))
    }
}

/// The override of one list field (`command` or `args`) as patches, for container `c` at `path`.
fn override_patches(key: &str, set: &str, values: &str, d: &str, path: &str) -> String {
    format!(
        "(variables.{set}[{d}] ? (variables.{values}[{d}].size() == 0 ? \
         (has(c.{key}) ? [JSONPatch{{op: 'remove', path: {path} + '/{key}'}}] : []) : \
         [JSONPatch{{op: 'add', path: {path} + '/{key}', value: variables.{values}[{d}]}}]) : [])"
    )
}

/// The winner for image volume `v` (at `i`).
const VOLUME_WINNER: &str = "variables.imagesOfVolumes[i]";

/// The swap record's field of image volume `v`.
const VOLUME_FIELD: [Piece<'static>; 3] =
    [Piece::Text("spec.volumes{"), Piece::Cel("v.name"), Piece::Text("}.image.reference")];

fn volume_swapped() -> String {
    let vd = VOLUME_WINNER;
    let recorded = cel::recorded(&cel::concat(&VOLUME_FIELD), "v.image.reference");
    format!("{vd} >= 0 && variables.targets[{vd}] != v.image.reference && !{recorded}")
}

/// The patches of swapped image volumes: the reference and the pull policy.
fn volume_patches() -> String {
    let vd = VOLUME_WINNER;
    format!(
        "(has(object.spec.volumes) ? object.spec.volumes.transformList(i, v, {}, \
         [JSONPatch{{op: 'replace', path: '/spec/volumes/' + string(i) + '/image/reference', value: variables.targets[{vd}]}}, \
         JSONPatch{{op: 'add', path: '/spec/volumes/' + string(i) + '/image/pullPolicy', value: '{PULL_POLICY}'}}]).flatten() : [])",
        volume_swapped()
    )
}

/// The swap records of image volumes (one string each).
fn volume_records() -> String {
    format!(
        "(has(object.spec.volumes) ? object.spec.volumes.transformList(i, v, {}, {}) : [])",
        volume_swapped(),
        cel::swap_record(&VOLUME_FIELD, "v.image.reference", VOLUME_WINNER)
    )
}

/// The patch adding `variables.records` to the swaps annotation: a new annotations object, the
/// annotation appended to when it holds records, or written anew.
fn annotation_patch() -> String {
    let key = cel::string(SWAPS_ANNOTATION);
    let key_path = cel::string(&format!("/metadata/annotations/{}", escape(SWAPS_ANNOTATION)));
    format!(
        "(variables.records.size() == 0 ? [] : [variables.records.join(',')].map(joined, [\
         !has(object.metadata.annotations) ? \
         JSONPatch{{op: 'add', path: '/metadata/annotations', value: {{{key}: '[' + joined + ']'}}}} : \
         JSONPatch{{op: 'add', path: {key_path}, value: \
         ({key} in object.metadata.annotations && object.metadata.annotations[{key}].startsWith('[{{') && \
         object.metadata.annotations[{key}].endsWith('}}]')) ? \
         object.metadata.annotations[{key}].substring(0, object.metadata.annotations[{key}].size() - 1) + ',' + joined + ']' : \
         '[' + joined + ']'}}])[0])"
    )
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
