//! Property tests (proptest) over the reference parser (DESIGN §3) and the injection engine
//! (DESIGN §4, §5): no input makes them panic, the patch always applies to the Pod it was computed
//! for, the engine applied to its own output changes nothing, nothing outside the fields §5 names
//! ever changes, the result does not depend on the order maps were indexed in, and a reference's
//! familiar and full strings parse back to the same reference.
//!
//! Failures are not persisted to a `proptest-regressions/` file: a failing case is printed
//! (shrunk) and belongs in a deterministic test below or in `engine.rs`.

use std::collections::BTreeSet;

use imagemap_core::admission::review;
use imagemap_core::inject::{inject_json, Applicable, SWAPS_ANNOTATION};
use imagemap_core::maps::MapIndex;
use imagemap_core::reference::Reference;
use imagemap_core::types::{ImageMap, ImageMapOverrideArgs, ImageMapOverrideCommand, ImageMapSpec, ImageMapStatus};
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{json, Map, Value};

fn config(cases: u32) -> Config {
    Config { cases, failure_persistence: None, ..Config::default() }
}

// ---------------------------------------------------------------------------------------------
// References

/// What a generated reference was made of, to compare the parse with DESIGN §3 by hand.
#[derive(Debug, Clone)]
struct Parts {
    registry: String,
    path: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl Parts {
    fn text(&self) -> String {
        let mut s = String::new();
        if !self.registry.is_empty() {
            s.push_str(&self.registry);
            s.push('/');
        }
        s.push_str(&self.path);
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d);
        }
        s
    }

    /// The normalized name, per DESIGN §3 written out independently of the parser: the text
    /// before the first `/` is a registry only if it is `localhost`, has `.` or `:`, or has an
    /// uppercase letter;
    /// `index.docker.io` is `docker.io`; a single-segment Docker Hub path gets `library/`.
    fn expected_name(&self) -> String {
        let whole =
            if self.registry.is_empty() { self.path.clone() } else { format!("{}/{}", self.registry, self.path) };
        let (registry, path) = match whole.split_once('/') {
            Some((first, rest))
                if first == "localhost"
                    || first.contains(['.', ':'])
                    || first.chars().any(|c| c.is_ascii_uppercase()) =>
            {
                (first.to_string(), rest)
            }
            _ => ("docker.io".to_string(), whole.as_str()),
        };
        let registry = if registry == "index.docker.io" { "docker.io".to_string() } else { registry };
        if registry == "docker.io" && !path.contains('/') {
            format!("docker.io/library/{path}")
        } else {
            format!("{registry}/{path}")
        }
    }
}

fn registry() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just(String::new()),
        1 => Just("docker.io".to_string()),
        1 => Just("index.docker.io".to_string()),
        1 => Just("localhost".to_string()),
        1 => Just("localhost:5000".to_string()),
        1 => Just("gcr.io".to_string()),
        1 => Just("10.0.0.5:32000".to_string()),
        1 => Just("[::1]:5000".to_string()),
        1 => Just("GCR.io".to_string()),
        1 => Just("MyReg".to_string()),
        1 => "[a-z0-9]{0,3}[A-Z][a-zA-Z0-9]{0,3}",
        2 => "[a-z0-9]{1,6}(\\.[a-z0-9]{1,4}){1,2}(:[0-9]{1,5})?",
    ]
}

/// A path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn component() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z0-9]{1,5}((\\.|_|__|-{1,3})[a-z0-9]{1,4}){0,2}",
        1 => Just("library".to_string()),
        1 => Just("localhost".to_string()),
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(component(), 1..4).prop_map(|c| c.join("/"))
}

fn tag() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_][A-Za-z0-9_.-]{0,12}"
}

fn digest() -> impl Strategy<Value = String> {
    prop_oneof!["[0-9a-f]{64}".prop_map(|h| format!("sha256:{h}")), "[0-9a-f]{96}".prop_map(|h| format!("sha384:{h}"))]
}

fn parts() -> impl Strategy<Value = Parts> {
    (registry(), path(), prop::option::of(tag()), prop::option::of(digest()))
        .prop_map(|(registry, path, tag, digest)| Parts { registry, path, tag, digest })
        // A bare 64-hex string is an image ID, not a reference (§3): not what this generates.
        .prop_filter("not an image ID", |p| p.text().len() != 64 || !p.text().bytes().all(|b| b.is_ascii_hexdigit()))
        // Without a registry, a first segment with `.` is a registry (§3), and `_` is no host.
        .prop_filter("a first segment read as a registry is a host", |p| {
            !p.registry.is_empty()
                || p.path.split_once('/').is_none_or(|(first, _)| !first.contains('.') || !first.contains('_'))
        })
}

/// The familiar string of a Docker Hub reference whose first path segment looks like a host
/// (`docker.io/my.org/app` -> `my.org/app`) names another registry when parsed again. See
/// `familiar_string_of_a_docker_hub_path_with_a_dotted_first_segment_names_the_same_image`.
fn familiar_is_ambiguous(r: &Reference) -> bool {
    r.registry() == "docker.io"
        && r.familiar_name()
            .split_once('/')
            .is_some_and(|(first, _)| first == "localhost" || first.contains(['.', ':']))
}

/// The normalized name is longer than the 255 characters the parser allows for the name as
/// written. See `a_name_that_normalizes_past_255_characters_is_refused`.
fn normalized_name_too_long(r: &Reference) -> bool {
    r.name().len() > 255
}

/// A valid reference with one character inserted, removed or replaced.
fn mutated() -> impl Strategy<Value = String> {
    let alphabet: Vec<char> = "aZ09/:@._-+ \t\u{0}é[]".chars().collect();
    (parts(), any::<prop::sample::Index>(), 0..3u8, prop::sample::select(alphabet)).prop_map(|(p, at, op, c)| {
        let mut chars: Vec<char> = p.text().chars().collect();
        let i = at.index(chars.len() + 1);
        match op {
            0 => chars.insert(i, c),
            1 if i < chars.len() => {
                chars.remove(i);
            }
            _ if i < chars.len() => chars[i] = c,
            _ => chars.push(c),
        }
        chars.into_iter().collect()
    })
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn parsing_any_string_never_panics(s in any::<String>()) {
        let _ = Reference::parse(&s);
    }

    #[test]
    fn parsing_any_bytes_as_text_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = Reference::parse(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn references_built_from_the_grammar_parse_to_the_design_normalization(p in parts()) {
        let text = p.text();
        let r = Reference::parse(&text);
        let r = match r {
            Ok(r) => r,
            Err(e) => return Err(TestCaseError::fail(format!("{text:?} is valid per §3 but was refused: {e}"))),
        };
        prop_assert_eq!(r.name(), p.expected_name(), "name of {:?}", text);
        prop_assert_eq!(r.tag(), p.tag.as_deref(), "no implicit :latest, tag kept as written");
        prop_assert_eq!(r.digest(), p.digest.as_deref());
        prop_assert!(r.full().starts_with(r.name()));
        prop_assert!(r.name().ends_with(r.familiar_name()));
    }

    #[test]
    fn the_full_and_familiar_strings_parse_back_to_the_same_reference(p in parts()) {
        let r = Reference::parse(&p.text()).expect("a grammar-built reference parses");
        prop_assume!(!normalized_name_too_long(&r) && !familiar_is_ambiguous(&r));
        let full = Reference::parse(&r.full());
        prop_assert_eq!(full.as_ref(), Ok(&r), "parse(full) of {:?}", p.text());
        let familiar = Reference::parse(&r.familiar());
        prop_assert_eq!(familiar.as_ref(), Ok(&r), "parse(familiar) of {:?}", p.text());
        prop_assert_eq!(familiar.as_ref().map(Reference::familiar).ok(), Some(r.familiar()), "familiar is a fixed point");
    }

    #[test]
    fn near_misses_of_valid_references_never_panic_and_round_trip_when_accepted(s in mutated()) {
        if let Ok(r) = Reference::parse(&s) {
            prop_assert!(!s.chars().any(|c| c.is_whitespace() || c.is_control()), "{:?} accepted with whitespace", s);
            prop_assert!(!r.path().bytes().any(|b| b.is_ascii_uppercase()), "{:?}: path must be lowercase", s);
            if !normalized_name_too_long(&r) && !familiar_is_ambiguous(&r) {
                prop_assert_eq!(Reference::parse(&r.full()).ok(), Some(r.clone()), "parse(full) of {:?}", s);
                prop_assert_eq!(Reference::parse(&r.familiar()).ok(), Some(r.clone()), "parse(familiar) of {:?}", s);
            }
        }
    }
}

/// DESIGN §5 injects the target's familiar string. For `docker.io/my.org/app:1` that is
/// `my.org/app:1`, which every runtime reads as an image on the registry `my.org`: a Pod would
/// pull from a host the map never named. (Docker's own `FamiliarString` has the same ambiguity,
/// but it is never used to write a reference another program parses again.)
#[test]
fn familiar_string_of_a_docker_hub_path_with_a_dotted_first_segment_names_the_same_image() {
    for text in ["docker.io/my.org/app:1", "docker.io/localhost/app", "index.docker.io/team.io/app"] {
        let r = Reference::parse(text).expect("valid: the path is on Docker Hub");
        assert_eq!(r.registry(), "docker.io", "{text}");
        let again = Reference::parse(&r.familiar()).expect("the familiar string parses");
        assert_eq!(again, r, "{text}: familiar {:?} parses to {:?}", r.familiar(), again.name());
    }
}

/// Docker's distribution grammar limits the *normalized* name to 255 characters
/// (`ParseNormalizedNamed` checks `docker.io/library/...`); the parser checks the name as
/// written, so `aaa...` (250 characters) is accepted but its own full string is refused.
#[test]
fn a_name_that_normalizes_past_255_characters_is_refused() {
    let text = "a".repeat(250);
    match Reference::parse(&text) {
        Err(_) => {}
        Ok(r) => assert_eq!(Reference::parse(&r.full()).as_ref(), Ok(&r), "parse(full) of a {}-char name", text.len()),
    }
}

// ---------------------------------------------------------------------------------------------
// The engine

const H64: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Image texts that match each other in many ways (names, tags, digests, registries), plus
/// invalid ones, so that generated maps and Pods meet often.
fn pool() -> Vec<String> {
    let mut v: Vec<String> = [
        "app",
        "app:1.0",
        "docker.io/library/app",
        "docker.io/library/app:1.0",
        "index.docker.io/app:2",
        "localhost:5000/app:t",
        "team/app",
        "gcr.io/x/app:2",
        "busybox",
        "busybox:1.36",
        "reg.io/app:built",
        "localhost:5000/app:tilt-1",
        "docker.io/my.org/app:1",
        "Bad Image",
        "APP",
        "",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push(format!("app@sha256:{H64}"));
    v.push(format!("app:1.0@sha256:{H64}"));
    v
}

fn image_text() -> impl Strategy<Value = String> {
    prop_oneof![8 => prop::sample::select(pool()), 1 => ".{0,12}"]
}

/// A JSON value where a string is expected: usually one, sometimes not.
fn image_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        12 => image_text().prop_map(Value::String),
        1 => Just(Value::Null),
        1 => any::<i32>().prop_map(|n| json!(n)),
        1 => Just(json!({"not": "a string"})),
    ]
}

fn strings() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec("[a-z/-]{0,6}", 0..3)
}

#[derive(Debug, Clone)]
struct GenMap {
    namespace: &'static str,
    name: &'static str,
    selector: String,
    exact: bool,
    env: bool,
    command: Option<Vec<String>>,
    args: Option<Vec<String>>,
    status: Option<(String, String, String)>,
}

impl GenMap {
    fn key(&self) -> (&'static str, &'static str) {
        (self.namespace, self.name)
    }

    fn to_map(&self) -> ImageMap {
        let spec = ImageMapSpec {
            selector: self.selector.clone(),
            match_exact: self.exact,
            match_in_env_vars: self.env,
            override_command: self.command.clone().map(|command| ImageMapOverrideCommand { command }),
            override_args: self.args.clone().map(|args| ImageMapOverrideArgs { args }),
        };
        let mut map = ImageMap::new(self.name, spec);
        map.metadata.namespace = Some(self.namespace.to_string()).filter(|n| !n.is_empty());
        map.status = self.status.clone().map(|(image, image_from_cluster, image_from_local)| ImageMapStatus {
            image,
            image_from_cluster,
            image_from_local,
            build_start_time: None,
        });
        map
    }
}

fn gen_map(namespaces: &'static [&'static str]) -> impl Strategy<Value = GenMap> {
    let target = prop_oneof![3 => prop::sample::select(pool()), 1 => Just(String::new())];
    let status = prop::option::weighted(0.85, (target.clone(), target.clone(), target));
    let list = || prop::option::weighted(0.3, strings());
    (
        prop::sample::select(namespaces),
        prop::sample::select(&["a", "b", "c", "d"][..]),
        image_text(),
        prop::bool::weighted(0.3),
        prop::bool::weighted(0.4),
        list(),
        list(),
        status,
    )
        .prop_map(|(namespace, name, selector, exact, env, command, args, status)| GenMap {
            namespace,
            name,
            selector,
            exact,
            env,
            command,
            args,
            status,
        })
}

/// Maps with unique (namespace, name) keys, as in a cluster (and in a sane maps file).
fn unique(maps: Vec<GenMap>) -> Vec<GenMap> {
    let mut seen = BTreeSet::new();
    maps.into_iter().filter(|m| seen.insert(m.key())).collect()
}

#[derive(Debug, Clone)]
struct World {
    cluster: Vec<GenMap>,
    file: Vec<GenMap>,
    global: bool,
    namespace: &'static str,
}

impl World {
    fn index(&self, cluster: &[GenMap]) -> MapIndex {
        let mut idx = MapIndex::new(self.global.then(|| "global".to_string()));
        for m in cluster {
            let _ = idx.upsert(&m.to_map());
        }
        let file: Vec<ImageMap> = self.file.iter().map(GenMap::to_map).collect();
        idx.replace_file(file.iter());
        idx
    }
}

fn world() -> impl Strategy<Value = World> {
    (
        prop::collection::vec(gen_map(&["dev", "other", "global"]), 0..6).prop_map(unique),
        prop::collection::vec(gen_map(&[""]), 0..3).prop_map(unique),
        any::<bool>(),
        prop::sample::select(&["dev", "global"][..]),
    )
        .prop_map(|(cluster, file, global, namespace)| World { cluster, file, global, namespace })
}

fn env_entry() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => ("[A-C]", image_value()).prop_map(|(n, v)| json!({"name": format!("E{n}"), "value": v})),
        1 => Just(json!({"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})),
        1 => image_value().prop_map(|v| json!({"value": v})),
        1 => Just(json!({"name": "EMPTY"})),
    ]
}

fn container() -> impl Strategy<Value = Value> {
    let c = (
        prop::option::weighted(0.9, prop::sample::select(&["app", "side", "init", "app"][..])),
        prop::option::weighted(0.95, image_value()),
        prop::option::of(prop::sample::select(&["Always", "Never", "IfNotPresent"][..])),
        prop::option::of(strings()),
        prop::option::of(strings()),
        prop::option::of(prop::collection::vec(env_entry(), 0..4)),
        any::<bool>(),
    )
        .prop_map(|(name, image, policy, command, args, env, extras)| {
            let mut c = Map::new();
            if let Some(n) = name {
                c.insert("name".into(), json!(n));
            }
            if let Some(i) = image {
                c.insert("image".into(), i);
            }
            if let Some(p) = policy {
                c.insert("imagePullPolicy".into(), json!(p));
            }
            if let Some(cmd) = command {
                c.insert("command".into(), json!(cmd));
            }
            if let Some(a) = args {
                c.insert("args".into(), json!(a));
            }
            if let Some(e) = env {
                c.insert("env".into(), Value::Array(e));
            }
            if extras {
                c.insert("ports".into(), json!([{"containerPort": 8080, "protocol": "TCP"}]));
                c.insert("resources".into(), json!({"limits": {"cpu": "1", "memory": "64Mi"}}));
                c.insert("x-unknown".into(), json!({"nested": [1, "two", null]}));
            }
            Value::Object(c)
        });
    prop_oneof![20 => c, 1 => Just(json!(42)), 1 => Just(json!("not a container"))]
}

fn volume() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => (image_value(), prop::option::of(prop::sample::select(&["Always", "Never"][..]))).prop_map(|(r, p)| {
            let mut image = json!({"reference": r});
            if let Some(p) = p {
                image["pullPolicy"] = json!(p);
            }
            json!({"name": "img", "image": image})
        }),
        1 => Just(json!({"name": "cfg", "configMap": {"name": "c"}})),
        1 => Just(json!({"name": "odd", "image": {}})),
        1 => Just(json!({"name": "odd", "image": "not an object"})),
    ]
}

/// Swap records a Pod may already carry (a reinvocation), or garbage in their place.
fn previous_annotation() -> impl Strategy<Value = Option<String>> {
    prop::option::weighted(
        0.3,
        prop_oneof![
            Just("not json".to_string()),
            Just("[]".to_string()),
            (prop::sample::select(pool()), prop::sample::select(pool())).prop_map(|(original, image)| {
                json!([{"field": "spec.containers{app}.image", "original": original, "image": image, "imageMap": "dev/a"}])
                    .to_string()
            }),
        ],
    )
}

fn metadata() -> impl Strategy<Value = Option<Value>> {
    (0..5u8, previous_annotation()).prop_map(|(shape, previous)| {
        let mut annotations = Map::new();
        if let Some(text) = previous {
            annotations.insert(SWAPS_ANNOTATION.into(), json!(text));
        }
        match shape {
            0 if annotations.is_empty() => None,
            1 if annotations.is_empty() => Some(json!({})),
            2 if annotations.is_empty() => Some(json!({"name": "p", "namespace": "dev", "labels": {"run": "p"}})),
            _ => {
                annotations.insert("kubectl.kubernetes.io/last-applied-configuration".into(), json!("{}\n"));
                Some(json!({"name": "p", "generateName": "p-", "annotations": annotations}))
            }
        }
    })
}

fn pod() -> impl Strategy<Value = Value> {
    let lists = (
        prop::collection::vec(container(), 0..4),
        prop::option::of(prop::collection::vec(container(), 0..3)),
        prop::option::of(prop::collection::vec(container(), 0..2)),
        prop::option::of(prop::collection::vec(volume(), 0..3)),
    );
    (metadata(), lists, 0..12u8).prop_map(|(metadata, (containers, init, ephemeral, volumes), shape)| {
        let mut spec = Map::new();
        spec.insert("containers".into(), Value::Array(containers));
        if let Some(i) = init {
            spec.insert("initContainers".into(), Value::Array(i));
        }
        if let Some(e) = ephemeral {
            spec.insert("ephemeralContainers".into(), Value::Array(e));
        }
        if let Some(v) = volumes {
            spec.insert("volumes".into(), Value::Array(v));
        }
        spec.insert("restartPolicy".into(), json!("Always"));
        spec.insert("nodeName".into(), json!("n1"));
        let spec = match shape {
            0 => None,
            1 => Some(json!({"containers": "not a list"})),
            2 => Some(json!("not an object")),
            _ => Some(Value::Object(spec)),
        };
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "status": {"phase": "Pending"}});
        if let Some(m) = metadata {
            pod["metadata"] = m;
        }
        if let Some(s) = spec {
            pod["spec"] = s;
        }
        pod
    })
}

/// A Pod as the API server sends it in a review: `metadata` is always there (Go encodes the
/// struct even when empty). See `a_review_of_an_object_without_metadata_gets_a_patch_that_applies`.
fn api_server_pod() -> impl Strategy<Value = Value> {
    pod().prop_map(|mut p| {
        if p.get("metadata").is_none() {
            p["metadata"] = json!({});
        }
        p
    })
}

/// The Pod without every field DESIGN §5 lets the engine change: containers' and init
/// containers' image, imagePullPolicy, command, args and env values; image volumes' reference
/// and pullPolicy; our annotation (and the `annotations`/`metadata` objects it may create).
fn without_mutable_fields(pod: &Value) -> Value {
    let mut p = pod.clone();
    if let Some(spec) = p.get_mut("spec").and_then(Value::as_object_mut) {
        for list in ["containers", "initContainers"] {
            for c in spec.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
                let Some(c) = c.as_object_mut() else { continue };
                for key in ["image", "imagePullPolicy", "command", "args"] {
                    c.remove(key);
                }
                for e in c.get_mut("env").and_then(Value::as_array_mut).into_iter().flatten() {
                    if let Some(e) = e.as_object_mut() {
                        e.remove("value");
                    }
                }
            }
        }
        for v in spec.get_mut("volumes").and_then(Value::as_array_mut).into_iter().flatten() {
            if let Some(image) = v.get_mut("image").and_then(Value::as_object_mut) {
                image.remove("reference");
                image.remove("pullPolicy");
            }
        }
    }
    if let Some(meta) = p.get_mut("metadata").and_then(Value::as_object_mut) {
        if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            a.remove(SWAPS_ANNOTATION);
            if a.is_empty() {
                meta.remove("annotations");
            }
        }
        if meta.is_empty() {
            p.as_object_mut().map(|o| o.remove("metadata"));
        }
    }
    p
}

/// Patch paths the engine may write, per DESIGN §5.
fn allowed_path() -> regex::Regex {
    regex::Regex::new(concat!(
        r"^(/spec/(containers|initContainers)/\d+/(image|imagePullPolicy|command|args|env/\d+/value)",
        r"|/spec/volumes/\d+/image/(reference|pullPolicy)",
        r"|/metadata/annotations/imagemap\.tilt\.dev~1swaps|/metadata/annotations|/metadata)$"
    ))
    .expect("regex")
}

fn patch_paths(patch: &imagemap_core::patch::Patch) -> Vec<String> {
    let wire = serde_json::to_value(&patch.0).expect("a patch serializes");
    wire.as_array().into_iter().flatten().map(|op| op["path"].as_str().unwrap_or("").to_string()).collect()
}

proptest! {
    #![proptest_config(config(700))]

    #[test]
    fn the_patch_applies_reinvocation_changes_nothing_and_only_design_fields_change(w in world(), pod in pod()) {
        let idx = w.index(&w.cluster);
        let maps = Applicable { index: &idx, namespace: w.namespace };
        let first = inject_json(&pod, &maps);
        let out = match first.patch.apply_to(&pod) {
            Ok(out) => out,
            Err(e) => return Err(TestCaseError::fail(format!("the patch does not apply to the original: {e}"))),
        };
        let paths = patch_paths(&first.patch);
        let allowed = allowed_path();
        for path in &paths {
            prop_assert!(allowed.is_match(path), "patch writes {} outside DESIGN §5", path);
        }
        prop_assert_eq!(without_mutable_fields(&pod), without_mutable_fields(&out), "a field outside §5 changed");
        prop_assert_eq!(first.patch.is_empty(), first.swaps.is_empty(), "a patch exactly when something was swapped");

        let second = inject_json(&out, &maps);
        prop_assert!(second.patch.is_empty(), "reinvocation changed {:?}", patch_paths(&second.patch));
        prop_assert!(second.swaps.is_empty());

        // Every swap changes its value, and image targets parse.
        for swap in &first.swaps {
            let field = &swap.record.field;
            prop_assert!(swap.record.image != swap.record.original, "a swap changes the value: {:?}", swap.record);
            if field.ends_with("}.image") || field.ends_with("}.image.reference") {
                prop_assert!(Reference::parse(&swap.record.image).is_ok(), "targets parse: {:?}", swap.record);
            }
        }
    }

    #[test]
    fn the_result_does_not_depend_on_the_order_maps_were_indexed_in(
        (w, shuffled) in world().prop_flat_map(|w| { let c = w.cluster.clone(); (Just(w), Just(c).prop_shuffle()) }),
        pod in pod(),
    ) {
        let a = w.index(&w.cluster);
        let b = w.index(&shuffled);
        let ia = inject_json(&pod, &Applicable { index: &a, namespace: w.namespace });
        let ib = inject_json(&pod, &Applicable { index: &b, namespace: w.namespace });
        prop_assert_eq!(ia.patch, ib.patch);
        // The warnings are the same; their order follows the index's buckets (harmless).
        let sorted = |mut w: Vec<String>| { w.sort(); w };
        prop_assert_eq!(sorted(ia.warnings), sorted(ib.warnings));
    }

    #[test]
    fn an_admission_review_of_any_pod_is_answered_with_a_patch_that_applies(w in world(), pod in api_server_pod()) {
        let idx = w.index(&w.cluster);
        let review_json = json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": w.namespace,
                "operation": "CREATE",
                "userInfo": {"username": "u"},
                "object": pod,
            }
        });
        let body = serde_json::to_vec(&review_json).expect("json");
        // An object that is not Pod-shaped may be refused (400), never a panic.
        let Ok(reviewed) = review(&body, &idx) else { return Ok(()) };
        let resp: Value = serde_json::from_slice(&reviewed.body).expect("the response is JSON");
        prop_assert_eq!(&resp["response"]["uid"], "u-1");
        prop_assert_eq!(&resp["response"]["allowed"], true);
        if let Some(b64) = resp["response"]["patch"].as_str() {
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::STANDARD.decode(b64).expect("base64");
            let patch: json_patch::Patch = serde_json::from_slice(&bytes).expect("a JSON patch");
            let mut object = review_json["request"]["object"].clone();
            let applied = json_patch::patch(&mut object, &patch);
            prop_assert!(applied.is_ok(), "the response patch does not apply: {:?}", applied.err());
            prop_assert_eq!(without_mutable_fields(&review_json["request"]["object"]), without_mutable_fields(&object));
        }
    }
}

/// `inject_json` adds `/metadata` when a Pod has none, but the admission path reads the object
/// into a typed `ObjectMeta`, where an absent `metadata` looks like one without annotations, so
/// its patch adds `/metadata/annotations` under a parent that does not exist. The API server
/// always sends `metadata`, so only a hand-made review meets this.
#[test]
fn a_review_of_an_object_without_metadata_gets_a_patch_that_applies() {
    let mut idx = MapIndex::new(None);
    let mut map = ImageMap::new("a", ImageMapSpec { selector: "app".into(), ..Default::default() });
    map.metadata.namespace = Some("dev".into());
    map.status = Some(ImageMapStatus { image: "reg.io/app:built".into(), ..Default::default() });
    idx.upsert(&map).expect("a valid map");
    let object = json!({"apiVersion": "v1", "kind": "Pod", "spec": {"containers": [{"name": "c", "image": "app"}]}});
    let body = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "dev",
            "operation": "CREATE",
            "userInfo": {"username": "u"},
            "object": object,
        }
    });
    let reviewed = review(&serde_json::to_vec(&body).expect("json"), &idx).expect("answered");
    let resp: Value = serde_json::from_slice(&reviewed.body).expect("json");
    use base64::Engine as _;
    let b64 = resp["response"]["patch"].as_str().expect("a patch");
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).expect("base64");
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).expect("a JSON patch");
    let mut pod = body["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).expect("the response patch applies to the object");
    assert_eq!(pod["spec"]["containers"][0]["image"], "reg.io/app:built");
}
