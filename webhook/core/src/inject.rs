//! The injection engine (DESIGN §5): from a Pod and the applicable maps to the JSON patch that
//! swaps its images, plus a report of every swap and every matched-but-unusable map.
//!
//! The engine reads the few fields it looks at through the views of [`crate::pod_view`] rather
//! than a typed `Pod`: fields it does not own are never decoded or re-encoded, so they cannot
//! change, and the patch touches only what it swaps.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::maps::{precedence, CompiledMap, MapIndex, Scope, Target, Unusable};
use crate::patch::{escape, Patch};
use crate::pod_view::{ContainerView, ListField, MetadataView, PodObject, PodView, VolumeView};
use crate::reference::Reference;

/// The Pod annotation recording every swap (DESIGN §7).
pub const SWAPS_ANNOTATION: &str = "imagemap.tilt.dev/swaps";

/// The pull policy set on swapped images: built tags are immutable.
pub const PULL_POLICY: &str = "IfNotPresent";

/// One swapped field, as recorded in the Pod's annotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SwapRecord {
    /// The field, e.g. `spec.containers{app}.image` or `spec.containers{app}.env{APP_IMAGE}`.
    pub field: String,
    /// The value before the first swap.
    pub original: String,
    /// The value written.
    pub image: String,
    /// The map that decided, `namespace/name`.
    pub image_map: String,
}

/// One swap made by this call, with why that map won.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Swap {
    /// What the annotation records.
    pub record: SwapRecord,
    /// The winner matched the full string (`matchExact`) rather than the name only.
    pub exact: bool,
    /// The winner is local to the Pod's namespace or global.
    pub scope: Scope,
    /// Other usable maps that matched and lost on precedence, best first.
    pub outranked: Vec<String>,
}

/// A map that matched a field but could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnusableHit {
    /// The field it matched.
    pub field: String,
    /// The field's value.
    pub value: String,
    /// The map, `namespace/name`.
    pub image_map: String,
    /// Why it is unusable.
    pub reason: Unusable,
}

/// What the engine decided for one Pod.
#[derive(Debug, Clone, Default)]
pub struct Injection {
    /// The RFC 6902 patch that turns the Pod into the swapped Pod (empty when nothing changes).
    pub patch: Patch,
    /// Every swap made by this call.
    pub swaps: Vec<Swap>,
    /// Every matched map that could not be used.
    pub unusable: Vec<UnusableHit>,
    /// Warnings for the AdmissionResponse: one per swap and one per unusable map.
    pub warnings: Vec<String>,
}

/// Which maps may apply: an index plus the Pod's namespace.
pub struct Applicable<'a> {
    /// The maps.
    pub index: &'a MapIndex,
    /// The Pod's namespace.
    pub namespace: &'a str,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Container,
    Env,
    Volume,
}

/// Where a value sits in the Pod; its field name and patch path are built only on a match.
#[derive(Clone, Copy)]
enum Site<'v> {
    Image { list: &'static str, index: usize, name: &'v str },
    Env { list: &'static str, index: usize, name: &'v str, env_index: usize, var: &'v str },
    Volume { index: usize, name: &'v str },
}

impl Site<'_> {
    fn kind(&self) -> Kind {
        match self {
            Site::Image { .. } => Kind::Container,
            Site::Env { .. } => Kind::Env,
            Site::Volume { .. } => Kind::Volume,
        }
    }

    /// The field as recorded, e.g. `spec.containers{app}.env{IMG}`.
    fn field(&self) -> String {
        match self {
            Site::Image { list, name, .. } => concat(&["spec.", list, "{", name, "}.image"]),
            Site::Env { list, name, var, .. } => concat(&["spec.", list, "{", name, "}.env{", var, "}"]),
            Site::Volume { name, .. } => concat(&["spec.volumes{", name, "}.image.reference"]),
        }
    }

    /// The JSON pointer to the value.
    fn path(&self) -> String {
        match self {
            Site::Image { list, index, .. } => {
                concat(&["/spec/", list, "/", itoa::Buffer::new().format(*index), "/image"])
            }
            Site::Env { list, index, env_index, .. } => concat(&[
                "/spec/",
                list,
                "/",
                itoa::Buffer::new().format(*index),
                "/env/",
                itoa::Buffer::new().format(*env_index),
                "/value",
            ]),
            Site::Volume { index, .. } => {
                concat(&["/spec/volumes/", itoa::Buffer::new().format(*index), "/image/reference"])
            }
        }
    }
}

/// Computes the swaps for a Pod (as JSON) with the maps that apply in its namespace.
pub fn inject_json(pod: &Value, maps: &Applicable<'_>) -> Injection {
    inject(PodObject::from_json(pod).view(), maps)
}

/// Computes the swaps for a Pod with the maps that apply in its namespace.
pub fn inject(pod: PodView<'_>, maps: &Applicable<'_>) -> Injection {
    let previous = match pod.metadata {
        MetadataView::Annotations(Some(text)) => parse_records(text),
        _ => Vec::new(),
    };
    let mut run = Run { maps, out: Injection::default(), previous, records: Vec::new() };
    if let Some(spec) = pod.spec {
        for (list, containers) in [("containers", &spec.containers), ("initContainers", &spec.init_containers)] {
            for (i, c) in containers.iter().flatten().enumerate() {
                run.container(c, list, i);
            }
        }
        for (i, v) in spec.volumes.iter().flatten().enumerate() {
            run.volume(v, i);
        }
    }
    run.finish(pod.metadata)
}

struct Run<'a> {
    maps: &'a Applicable<'a>,
    out: Injection,
    previous: Vec<SwapRecord>,
    records: Vec<SwapRecord>,
}

/// The winning map for one value, if a usable one matched.
struct Decision<'m> {
    winner: Option<(&'m CompiledMap, Scope, &'m Target)>,
    outranked: Vec<String>,
}

impl<'a> Run<'a> {
    fn container(&mut self, c: &ContainerView<'_>, list: &'static str, index: usize) {
        let name = c.name.as_deref().unwrap_or("");
        if let Some(image) = c.image.as_deref() {
            if let Some(map) = self.swap(image, Site::Image { list, index, name }) {
                let path = concat(&["/spec/", list, "/", itoa::Buffer::new().format(index)]);
                self.out.patch.add(&concat(&[&path, "/imagePullPolicy"]), json!(PULL_POLICY));
                override_list(&mut self.out.patch, c.command.as_ref(), &path, "command", map.command.as_deref());
                override_list(&mut self.out.patch, c.args.as_ref(), &path, "args", map.args.as_deref());
            }
        }
        if !self.maps.index.has_env_maps() {
            return;
        }
        for (env_index, e) in c.env.iter().flatten().enumerate() {
            // Only literal values; `valueFrom` is never touched.
            let (Some(var), Some(value)) = (e.name.as_deref(), e.value.as_deref()) else { continue };
            self.swap(value, Site::Env { list, index, name, env_index, var });
        }
    }

    fn volume(&mut self, v: &VolumeView<'_>, index: usize) {
        let Some(reference) = v.image_reference.as_deref() else { return };
        let name = v.name.as_deref().unwrap_or("");
        if self.swap(reference, Site::Volume { index, name }).is_some() {
            self.out.patch.add(
                &concat(&["/spec/volumes/", itoa::Buffer::new().format(index), "/image/pullPolicy"]),
                json!(PULL_POLICY),
            );
        }
    }

    /// Swaps the value at `site` if a usable map matches it; returns the winning map.
    fn swap(&mut self, value: &str, site: Site<'_>) -> Option<&'a CompiledMap> {
        let reference = Reference::parse(value).ok()?;
        self.maps.index.candidates(self.maps.namespace, reference.name()).iter().next()?;
        let field = site.field();
        // Already swapped by an earlier call: the recorded value is ours, leave it alone.
        if self.previous.iter().any(|r| r.field == field && r.image == value) {
            return None;
        }
        let kind = site.kind();
        let decision = self.decide(&reference, value, &field, kind);
        let (map, scope, target) = decision.winner?;
        if target.familiar == value {
            return None;
        }
        self.out.patch.replace(&site.path(), json!(target.familiar));
        let what = match kind {
            Kind::Env => "env value",
            Kind::Container | Kind::Volume => "image",
        };
        push_unique(
            &mut self.out.warnings,
            concat(&[what, " ", value, " swapped to ", &target.familiar, " by ImageMap ", &map.id]),
        );
        let record = SwapRecord {
            field,
            original: value.to_string(),
            image: target.familiar.clone(),
            image_map: map.id.clone(),
        };
        self.records.push(record.clone());
        self.out.swaps.push(Swap { record, exact: map.match_exact, scope, outranked: decision.outranked });
        Some(map)
    }

    fn decide(&mut self, reference: &Reference, value: &str, field: &str, kind: Kind) -> Decision<'a> {
        let mut best: Option<(&'a CompiledMap, Scope, &'a Target)> = None;
        let mut outranked = Vec::new();
        for (map, scope) in self.maps.index.candidates(self.maps.namespace, reference.name()).iter() {
            if (kind == Kind::Env && !map.match_in_env_vars) || !map.matches(reference) {
                continue;
            }
            let overrides_refused = (kind == Kind::Container && map.has_overrides())
                .then(|| self.maps.index.guards())
                .filter(|g| !g.overrides_allowed(scope == Scope::Local))
                .map(|g| Unusable::OverridesNotAllowed { setting: g.overrides.as_str() });
            let reason = match (&map.target, overrides_refused) {
                (Err(reason), _) => reason.clone(),
                (Ok(_), Some(refused)) => refused,
                (Ok(target), None) => {
                    match best {
                        Some((b, bs, _)) if precedence((b, bs), (map, scope)).is_le() => outranked.push((map, scope)),
                        Some(prev) => {
                            outranked.push((prev.0, prev.1));
                            best = Some((map, scope, target));
                        }
                        None => best = Some((map, scope, target)),
                    }
                    continue;
                }
            };
            let warning = format!("ImageMap {} matches {value} but {reason}; left unchanged", map.id);
            push_unique(&mut self.out.warnings, warning);
            self.out.unusable.push(UnusableHit {
                field: field.to_string(),
                value: value.to_string(),
                image_map: map.id.clone(),
                reason,
            });
        }
        outranked.sort_by(|a, b| precedence(*a, *b));
        Decision { winner: best, outranked: outranked.into_iter().map(|(m, _)| m.id.clone()).collect() }
    }

    fn finish(mut self, metadata: MetadataView<'_>) -> Injection {
        if self.records.is_empty() {
            return self.out;
        }
        let mut all = self.previous;
        all.extend(self.records);
        let text = serde_json::to_string(&all).unwrap_or_default();
        match metadata {
            MetadataView::Annotations(_) => {
                self.out.patch.add(&format!("/metadata/annotations/{}", escape(SWAPS_ANNOTATION)), json!(text))
            }
            MetadataView::NoAnnotations => {
                self.out.patch.add("/metadata/annotations", json!({ SWAPS_ANNOTATION: text }))
            }
            MetadataView::Absent => {
                self.out.patch.add("/metadata", json!({ "annotations": { SWAPS_ANNOTATION: text } }))
            }
        }
        self.out
    }
}

/// Sets `command` or `args` as the map says: `[]` removes the field, a list replaces it.
fn override_list(patch: &mut Patch, current: Option<&ListField<'_>>, path: &str, key: &str, with: Option<&[String]>) {
    match with {
        Some([]) if current.is_some() => patch.remove(&concat(&[path, "/", key])),
        Some(list) if !list.is_empty() && !current.is_some_and(|cur| cur.is(list)) => {
            patch.add(&concat(&[path, "/", key]), json!(list))
        }
        _ => {}
    }
}

/// `parts` joined into one allocation (`format!` was a visible share of a review's cost).
pub(crate) fn concat(parts: &[&str]) -> String {
    let mut s = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for part in parts {
        s.push_str(part);
    }
    s
}

fn push_unique(list: &mut Vec<String>, s: String) {
    if !list.contains(&s) {
        list.push(s);
    }
}

/// Reads swap records from the annotation's text; none if unreadable.
pub fn parse_records(text: &str) -> Vec<SwapRecord> {
    serde_json::from_str(text).unwrap_or_default()
}
