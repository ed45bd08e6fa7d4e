//! ImageMaps compiled for lookup, and the index that finds the maps for a repository name in
//! constant time however many maps there are (DESIGN §4, §6).

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

use crate::guards::Guards;
use crate::reference::{Reference, ReferenceError};
use crate::types::ImageMap;

/// Where a map applies from, relative to the Pod being admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The map is in the Pod's own namespace.
    Local,
    /// The map is global: in the `--global-namespace` or from `--imagemaps-file`.
    Global,
}

/// Where a map was loaded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Origin {
    /// Watched from the cluster.
    Cluster,
    /// Read from `--imagemaps-file`.
    File,
}

/// Why a map that matches cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unusable {
    /// No `status.imageFromCluster` or `status.image` yet: the build has not finished.
    NotBuilt,
    /// The status image does not parse.
    InvalidTarget {
        /// The status text.
        image: String,
        /// Why it does not parse.
        error: ReferenceError,
    },
    /// The target is outside every `--allowed-registry` prefix.
    RegistryNotAllowed {
        /// The target.
        image: String,
        /// The allowed prefixes, comma-separated.
        allowed: String,
    },
    /// The map overrides `command`/`args` where `--allow-overrides` does not let it.
    OverridesNotAllowed {
        /// The `--allow-overrides` setting.
        setting: &'static str,
    },
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unusable::NotBuilt => f.write_str("has no built image yet (status.image is empty)"),
            Unusable::InvalidTarget { error, .. } => write!(f, "has an invalid status image: {error}"),
            Unusable::RegistryNotAllowed { image, allowed } => {
                write!(f, "targets {image}, which is not under an allowed registry (--allowed-registry {allowed})")
            }
            Unusable::OverridesNotAllowed { setting } => {
                write!(f, "overrides command or args, which --allow-overrides {setting} does not allow for this Pod")
            }
        }
    }
}

/// A usable map's target: the reference and the text injected (its familiar string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The parsed target.
    pub reference: Reference,
    /// The familiar string written into Pods.
    pub familiar: String,
}

/// An ImageMap ready for matching: selector parsed, target resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledMap {
    /// `namespace/name`, or `name` for a file map without a namespace.
    pub id: String,
    /// `metadata.name`, the last precedence tie-breaker.
    pub name: String,
    /// `metadata.namespace` (empty for a file map without one).
    pub namespace: String,
    /// Cluster or file.
    pub origin: Origin,
    /// The parsed selector.
    pub selector: Reference,
    /// Compare full strings rather than names.
    pub match_exact: bool,
    /// Also swap env values.
    pub match_in_env_vars: bool,
    /// Replacement `command` for swapped containers.
    pub command: Option<Vec<String>>,
    /// Replacement `args` for swapped containers.
    pub args: Option<Vec<String>>,
    /// The target, or why there is none.
    pub target: Result<Target, Unusable>,
}

/// Why an ImageMap could not be compiled at all (it is skipped, never an error for a Pod).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ImageMap {id}: invalid spec.selector {selector:?}: {error}")]
pub struct InvalidMap {
    /// `namespace/name` of the map.
    pub id: String,
    /// The selector text.
    pub selector: String,
    /// Why it does not parse.
    pub error: ReferenceError,
}

impl CompiledMap {
    /// Compiles an ImageMap with no admin guards; fails only when the selector does not parse.
    pub fn compile(map: &ImageMap, origin: Origin) -> Result<CompiledMap, InvalidMap> {
        CompiledMap::compile_guarded(map, origin, &Guards::default())
    }

    /// Compiles an ImageMap under `guards`: a target outside the allowed registries makes the
    /// map unusable ([`Unusable::RegistryNotAllowed`]).
    pub fn compile_guarded(map: &ImageMap, origin: Origin, guards: &Guards) -> Result<CompiledMap, InvalidMap> {
        let name = map.metadata.name.clone().unwrap_or_default();
        let namespace = map.metadata.namespace.clone().unwrap_or_default();
        let id = if namespace.is_empty() { name.clone() } else { format!("{namespace}/{name}") };
        let selector = Reference::parse(&map.spec.selector).map_err(|error| InvalidMap {
            id: id.clone(),
            selector: map.spec.selector.clone(),
            error,
        })?;
        let target_text = map
            .status
            .as_ref()
            .map(|s| if s.image_from_cluster.is_empty() { s.image.as_str() } else { s.image_from_cluster.as_str() })
            .unwrap_or("");
        let target = if target_text.is_empty() {
            Err(Unusable::NotBuilt)
        } else {
            Reference::parse(target_text)
                .map(|reference| Target { familiar: reference.familiar(), reference })
                .map_err(|error| Unusable::InvalidTarget { image: target_text.to_string(), error })
                .and_then(|target| {
                    if guards.registry_allowed(&target.reference) {
                        Ok(target)
                    } else {
                        Err(Unusable::RegistryNotAllowed { image: target.familiar, allowed: guards.allowed_list() })
                    }
                })
        };
        Ok(CompiledMap {
            id,
            name,
            namespace,
            origin,
            selector,
            match_exact: map.spec.match_exact,
            match_in_env_vars: map.spec.match_in_env_vars,
            command: map.spec.override_command.as_ref().map(|o| o.command.clone()),
            args: map.spec.override_args.as_ref().map(|o| o.args.clone()),
            target,
        })
    }

    /// True when the admin guards refuse the map's target ([`Unusable::RegistryNotAllowed`]).
    pub fn is_refused(&self) -> bool {
        matches!(self.target, Err(Unusable::RegistryNotAllowed { .. }))
    }

    /// True when the map replaces `command` or `args`.
    pub fn has_overrides(&self) -> bool {
        self.command.is_some() || self.args.is_some()
    }

    /// True when this map's selector matches `reference` (names equal; full strings when exact).
    pub fn matches(&self, reference: &Reference) -> bool {
        self.selector.name() == reference.name() && (!self.match_exact || self.selector == *reference)
    }
}

/// Orders two matching candidates, best first: exact before name-only, local before global,
/// then the lowest `metadata.name`, then origin and namespace so the order is total.
pub fn precedence(a: (&CompiledMap, Scope), b: (&CompiledMap, Scope)) -> Ordering {
    let rank = |(m, s): (&CompiledMap, Scope)| (!m.match_exact, s == Scope::Global);
    rank(a)
        .cmp(&rank(b))
        .then_with(|| a.0.name.as_bytes().cmp(b.0.name.as_bytes()))
        .then_with(|| a.0.origin.cmp(&b.0.origin))
        .then_with(|| a.0.namespace.cmp(&b.0.namespace))
}

type Bucket = Vec<Arc<CompiledMap>>;
type FastMap<K, V> = foldhash::HashMap<K, V>;
type ScopedSlice<'a> = (&'a [Arc<CompiledMap>], Scope);

/// All known maps, indexed by namespace (or file) and then by the selector's repository name.
/// The lookup tables hash with foldhash (seeded per process): a review hashes its namespace and
/// each image's name, and SipHash was a visible share of that.
#[derive(Debug, Default, Clone)]
pub struct MapIndex {
    by_namespace: FastMap<String, FastMap<String, Bucket>>,
    file: FastMap<String, Bucket>,
    cluster_keys: HashMap<(String, String), String>,
    invalid: HashMap<(String, String), InvalidMap>,
    global_namespace: Option<String>,
    guards: Guards,
    cluster_len: usize,
    file_len: usize,
    /// Maps (cluster, file) whose target the guards refuse.
    refused: (usize, usize),
    env_maps: usize,
}

/// The maps that may apply to one repository name for a Pod: at most three buckets.
#[derive(Debug, Default)]
pub struct Candidates<'a> {
    buckets: [Option<ScopedSlice<'a>>; 3],
}

impl<'a> Candidates<'a> {
    /// Every candidate map with its scope.
    pub fn iter(&self) -> impl Iterator<Item = (&'a CompiledMap, Scope)> + '_ {
        self.buckets.iter().flatten().flat_map(|(maps, scope)| maps.iter().map(move |m| (m.as_ref(), *scope)))
    }
}

impl MapIndex {
    /// An empty index; maps in `global_namespace` apply to every namespace.
    pub fn new(global_namespace: Option<String>) -> Self {
        MapIndex { global_namespace: global_namespace.filter(|g| !g.is_empty()), ..Default::default() }
    }

    /// Applies admin guards to every map compiled from now on (call before adding maps).
    pub fn with_guards(mut self, guards: Guards) -> Self {
        self.guards = guards;
        self
    }

    /// An empty index with the same global namespace and guards (to build a fresh list into).
    pub fn empty_like(&self) -> MapIndex {
        MapIndex::new(self.global_namespace.clone()).with_guards(self.guards.clone())
    }

    /// The admin guards.
    pub fn guards(&self) -> &Guards {
        &self.guards
    }

    /// The `--global-namespace`, if any.
    pub fn global_namespace(&self) -> Option<&str> {
        self.global_namespace.as_deref()
    }

    /// Number of usable-or-not maps indexed (invalid ones excluded).
    pub fn len(&self) -> usize {
        self.cluster_len + self.file_len
    }

    /// True when `--imagemaps-file` gave maps (they apply to every namespace).
    pub fn has_file_maps(&self) -> bool {
        self.file_len > 0
    }

    /// True when some map swaps env values (else env vars need not be looked at).
    pub fn has_env_maps(&self) -> bool {
        self.env_maps > 0
    }

    /// True when no map is indexed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Maps whose target is outside `--allowed-registry` (stored before a guard tightened, or
    /// from the maps file): indexed, but never applied.
    pub fn refused_len(&self) -> usize {
        self.refused.0 + self.refused.1
    }

    /// Maps skipped because their selector does not parse.
    pub fn invalid(&self) -> impl Iterator<Item = &InvalidMap> {
        self.invalid.values()
    }

    /// Adds or replaces a cluster map. Returns the compile error when it was skipped.
    pub fn upsert(&mut self, map: &ImageMap) -> Result<(), InvalidMap> {
        let key = (map.metadata.namespace.clone().unwrap_or_default(), map.metadata.name.clone().unwrap_or_default());
        self.remove(&key.0, &key.1);
        match CompiledMap::compile_guarded(map, Origin::Cluster, &self.guards) {
            Ok(compiled) => {
                let name = compiled.selector.name().to_string();
                self.refused.0 += usize::from(compiled.is_refused());
                self.by_namespace
                    .entry(key.0.clone())
                    .or_default()
                    .entry(name.clone())
                    .or_default()
                    .push(Arc::new(compiled));
                self.cluster_keys.insert(key, name);
                self.cluster_len += 1;
                self.env_maps += usize::from(map.spec.match_in_env_vars);
                Ok(())
            }
            Err(invalid) => {
                self.invalid.insert(key, invalid.clone());
                Err(invalid)
            }
        }
    }

    /// Removes a cluster map by namespace and name (no-op when unknown).
    pub fn remove(&mut self, namespace: &str, name: &str) {
        let key = (namespace.to_string(), name.to_string());
        self.invalid.remove(&key);
        let Some(selector_name) = self.cluster_keys.remove(&key) else { return };
        if let Some(names) = self.by_namespace.get_mut(namespace) {
            if let Some(bucket) = names.get_mut(&selector_name) {
                if let Some(pos) = bucket.iter().position(|m| m.name == name) {
                    let removed = bucket.swap_remove(pos);
                    self.refused.0 -= usize::from(removed.is_refused());
                    self.env_maps -= usize::from(removed.match_in_env_vars);
                }
                self.cluster_len -= 1;
                if bucket.is_empty() {
                    names.remove(&selector_name);
                }
            }
            if names.is_empty() {
                self.by_namespace.remove(namespace);
            }
        }
    }

    /// Replaces every cluster map at once (after a full list).
    pub fn replace_cluster<'m>(&mut self, maps: impl IntoIterator<Item = &'m ImageMap>) -> Vec<InvalidMap> {
        self.by_namespace.clear();
        self.cluster_keys.clear();
        self.invalid.clear();
        self.cluster_len = 0;
        self.refused.0 = 0;
        self.env_maps = self.file.values().flatten().filter(|m| m.match_in_env_vars).count();
        maps.into_iter().filter_map(|m| self.upsert(m).err()).collect()
    }

    /// Replaces every cluster map with those of `fresh` (an index built from a full list; its
    /// file maps and global namespace are ignored).
    pub fn replace_cluster_with(&mut self, fresh: MapIndex) {
        self.by_namespace = fresh.by_namespace;
        self.cluster_keys = fresh.cluster_keys;
        self.invalid = fresh.invalid;
        self.cluster_len = fresh.cluster_len;
        self.refused.0 = fresh.refused.0;
        self.env_maps = fresh.env_maps + self.file.values().flatten().filter(|m| m.match_in_env_vars).count();
    }

    /// Replaces every file map; returns the ones skipped as invalid.
    pub fn replace_file<'m>(&mut self, maps: impl IntoIterator<Item = &'m ImageMap>) -> Vec<InvalidMap> {
        self.env_maps -= self.file.values().flatten().filter(|m| m.match_in_env_vars).count();
        self.file.clear();
        self.file_len = 0;
        self.refused.1 = 0;
        let mut invalid = Vec::new();
        for map in maps {
            match CompiledMap::compile_guarded(map, Origin::File, &self.guards) {
                Ok(c) => {
                    self.env_maps += usize::from(c.match_in_env_vars);
                    self.refused.1 += usize::from(c.is_refused());
                    self.file.entry(c.selector.name().to_string()).or_default().push(Arc::new(c));
                    self.file_len += 1;
                }
                Err(e) => invalid.push(e),
            }
        }
        invalid
    }

    /// The maps that may apply to `name` (a normalized repository name) in `namespace`; none in
    /// a protected namespace.
    pub fn candidates(&self, namespace: &str, name: &str) -> Candidates<'_> {
        if self.guards.is_protected(namespace) {
            return Candidates::default();
        }
        let local = self.by_namespace.get(namespace).and_then(|n| n.get(name));
        let global = self
            .global_namespace
            .as_deref()
            .filter(|g| *g != namespace)
            .and_then(|g| self.by_namespace.get(g))
            .and_then(|n| n.get(name));
        let file = self.file.get(name);
        Candidates {
            buckets: [
                local.map(|b| (b.as_slice(), Scope::Local)),
                global.map(|b| (b.as_slice(), Scope::Global)),
                file.map(|b| (b.as_slice(), Scope::Global)),
            ],
        }
    }

    /// Every map, from the cluster and from `--imagemaps-file`.
    pub fn all_maps(&self) -> impl Iterator<Item = &CompiledMap> {
        self.cluster_maps().chain(self.file.values().flatten().map(|m| m.as_ref()))
    }

    /// Every map from the cluster.
    pub fn cluster_maps(&self) -> impl Iterator<Item = &CompiledMap> {
        self.by_namespace.values().flat_map(|n| n.values().flatten().map(|m| m.as_ref()))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A map built as `image` (unbuilt when empty), through [`ImageMap::for_selector`].
    pub fn map(ns: &str, name: &str, selector: &str, image: &str) -> ImageMap {
        let m = ImageMap::for_selector(ns, name, selector);
        if image.is_empty() {
            m
        } else {
            m.with_image(image)
        }
    }

    #[test]
    fn lookup_finds_local_then_global_then_file_buckets() {
        let mut idx = MapIndex::new(Some("global".into()));
        idx.upsert(&map("a", "m1", "app", "x:1")).expect("valid");
        idx.upsert(&map("global", "m2", "docker.io/library/app", "x:2")).expect("valid");
        idx.replace_file([&map("", "m3", "app:v", "x:3")]);
        let c = idx.candidates("a", "docker.io/library/app");
        let got: Vec<_> = c.iter().map(|(m, s)| (m.id.as_str(), s)).collect();
        assert_eq!(got, vec![("a/m1", Scope::Local), ("global/m2", Scope::Global), ("m3", Scope::Global)]);
        assert_eq!(idx.candidates("b", "docker.io/library/app").iter().count(), 2);
    }

    #[test]
    fn maps_in_the_global_namespace_are_local_to_pods_there() {
        let mut idx = MapIndex::new(Some("global".into()));
        idx.upsert(&map("global", "m", "app", "x:1")).expect("valid");
        let scopes: Vec<_> = idx.candidates("global", "docker.io/library/app").iter().map(|(_, s)| s).collect();
        assert_eq!(scopes, vec![Scope::Local]);
    }

    #[test]
    fn upsert_replaces_and_remove_deletes() {
        let mut idx = MapIndex::new(None);
        idx.upsert(&map("a", "m", "app", "x:1")).expect("valid");
        idx.upsert(&map("a", "m", "other", "x:1")).expect("valid");
        assert_eq!(idx.len(), 1);
        assert_eq!(idx.candidates("a", "docker.io/library/app").iter().count(), 0);
        assert_eq!(idx.candidates("a", "docker.io/library/other").iter().count(), 1);
        idx.remove("a", "m");
        assert!(idx.is_empty());
        assert_eq!(idx.candidates("a", "docker.io/library/other").iter().count(), 0);
    }

    #[test]
    fn a_fresh_list_replaces_cluster_maps_and_keeps_file_maps() {
        let mut idx = MapIndex::new(Some("g".into()));
        idx.upsert(&map("a", "old", "old", "x:1")).expect("valid");
        let mut file = map("", "f", "tool", "x:1");
        file.spec.match_in_env_vars = true;
        idx.replace_file([&file]);
        let mut fresh = MapIndex::new(None);
        fresh.upsert(&map("a", "new", "new", "x:1")).expect("valid");
        idx.replace_cluster_with(fresh);
        assert_eq!(idx.len(), 2);
        assert_eq!(idx.candidates("a", "docker.io/library/old").iter().count(), 0);
        assert_eq!(idx.candidates("a", "docker.io/library/new").iter().count(), 1);
        assert_eq!(idx.global_namespace(), Some("g"));
        assert!(idx.has_env_maps());
    }

    #[test]
    fn invalid_selectors_are_skipped_and_reported() {
        let mut idx = MapIndex::new(None);
        let err = idx.upsert(&map("a", "bad", "Not Valid", "x:1")).expect_err("invalid");
        assert!(err.to_string().contains("a/bad"), "{err}");
        assert!(idx.is_empty());
        assert_eq!(idx.invalid().count(), 1);
        idx.remove("a", "bad");
        assert_eq!(idx.invalid().count(), 0);
    }

    #[test]
    fn target_prefers_image_from_cluster_and_never_image_from_local() {
        let mut m = map("a", "m", "app", "localhost:5000/app:t");
        let status = m.status.as_mut().expect("status");
        status.image_from_local = "localhost:5000/app:local".into();
        let c = CompiledMap::compile(&m, Origin::Cluster).expect("valid");
        assert_eq!(c.target.as_ref().expect("usable").familiar, "localhost:5000/app:t");
        m.status.as_mut().expect("status").image_from_cluster = "registry:5000/app:t".into();
        let c = CompiledMap::compile(&m, Origin::Cluster).expect("valid");
        assert_eq!(c.target.as_ref().expect("usable").familiar, "registry:5000/app:t");
    }

    #[test]
    fn maps_without_status_or_with_invalid_status_are_unusable() {
        let c = CompiledMap::compile(&map("a", "m", "app", ""), Origin::Cluster).expect("valid");
        assert_eq!(c.target, Err(Unusable::NotBuilt));
        let c = CompiledMap::compile(&map("a", "m", "app", "Bad Image"), Origin::Cluster).expect("valid");
        assert!(matches!(c.target, Err(Unusable::InvalidTarget { .. })));
    }

    #[test]
    fn a_target_outside_the_allowed_registries_is_unusable_naming_the_flag() {
        let guards = Guards::new(vec!["localhost:5000/".into()], crate::guards::Overrides::All, &[]);
        let mut idx = MapIndex::new(None).with_guards(guards);
        idx.upsert(&map("a", "evil", "app", "evil.example/app:1")).expect("valid");
        idx.upsert(&map("a", "good", "good", "localhost:5000/good:1")).expect("valid");
        let evil = idx.candidates("a", "docker.io/library/app").iter().next().expect("indexed").0.clone();
        let reason = evil.target.expect_err("unusable");
        assert!(matches!(reason, Unusable::RegistryNotAllowed { .. }));
        assert!(reason.to_string().contains("--allowed-registry localhost:5000/"), "{reason}");
        let good = idx.candidates("a", "docker.io/library/good").iter().next().expect("indexed").0.clone();
        assert!(good.target.is_ok());
        assert_eq!(idx.refused_len(), 1);
        idx.remove("a", "evil");
        assert_eq!(idx.refused_len(), 0);
        let fresh = idx.empty_like();
        assert_eq!(fresh.guards(), idx.guards());
    }

    #[test]
    fn protected_namespaces_have_no_candidates() {
        let mut idx = MapIndex::new(Some("global".into())).with_guards(Guards::new(
            vec![],
            Default::default(),
            &["imagemap".into()],
        ));
        idx.upsert(&map("global", "m", "app", "x:1")).expect("valid");
        idx.upsert(&map("kube-system", "m", "app", "x:1")).expect("valid");
        assert_eq!(idx.candidates("kube-system", "docker.io/library/app").iter().count(), 0);
        assert_eq!(idx.candidates("imagemap", "docker.io/library/app").iter().count(), 0);
        assert_eq!(idx.candidates("team", "docker.io/library/app").iter().count(), 1);
    }

    #[test]
    fn lookup_cost_does_not_depend_on_unrelated_maps() {
        let mut idx = MapIndex::new(None);
        for i in 0..2000 {
            idx.upsert(&map(&format!("ns{}", i % 50), &format!("m{i}"), &format!("app{i}"), "x:1")).expect("valid");
        }
        assert_eq!(idx.len(), 2000);
        assert_eq!(idx.candidates("ns7", "docker.io/library/app7").iter().count(), 1);
        assert_eq!(idx.candidates("ns7", "docker.io/library/app8").iter().count(), 0);
    }
}
