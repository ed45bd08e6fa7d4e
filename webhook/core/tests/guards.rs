//! Admin guards through the engine (DESIGN §9): a map outside them is never applied, and the
//! Pod author sees why in the warnings.

use imagemap_core::guards::{Guards, Overrides};
use imagemap_core::inject::{inject_json, Applicable, Injection};
use imagemap_core::maps::MapIndex;
use imagemap_core::types::ImageMap;
use serde_json::{json, Value};

fn pod(namespace: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": namespace},
           "spec": {"containers": [{"name": "app", "image": "app", "args": ["serve"]}]}})
}

fn run(guards: Guards, maps: &[ImageMap], namespace: &str) -> Injection {
    let mut idx = MapIndex::new(Some("global".into())).with_guards(guards);
    for map in maps {
        idx.upsert(map).expect("valid map");
    }
    inject_json(&pod(namespace), &Applicable { index: &idx, namespace })
}

fn with_args(map: ImageMap) -> ImageMap {
    map.with_args(&["--debug"])
}

#[test]
fn a_target_outside_the_allowed_registries_leaves_the_pod_as_written_with_a_warning() {
    let guards = Guards::new(vec!["localhost:5000/".into()], Overrides::All, &[]);
    let map = ImageMap::for_selector("dev", "app", "app").with_image("evil.example/app:1");
    let out = run(guards, &[map], "dev");
    assert!(out.patch.is_empty(), "{:?}", out.patch);
    let warning = out.warnings.join("\n");
    assert!(warning.contains("not under an allowed registry") && warning.contains("localhost:5000/"), "{warning}");
}

#[test]
fn an_allowed_target_is_swapped_as_usual() {
    let guards = Guards::new(vec!["localhost:5000".into()], Overrides::All, &[]);
    let map = ImageMap::for_selector("dev", "app", "app").with_image("localhost:5000/app:1");
    assert_eq!(run(guards, &[map], "dev").swaps.len(), 1);
}

#[test]
fn overrides_from_a_global_map_are_refused_when_only_local_ones_are_allowed() {
    let guards = Guards::new(vec![], Overrides::Local, &[]);
    let global = with_args(ImageMap::for_selector("global", "app", "app").with_image("localhost:5000/app:1"));
    let out = run(guards.clone(), std::slice::from_ref(&global), "dev");
    assert!(out.patch.is_empty());
    assert!(out.warnings.join("\n").contains("--allow-overrides local"), "{:?}", out.warnings);
    // The same map applies to Pods of its own namespace.
    assert_eq!(run(guards, &[global], "global").swaps.len(), 1);
}

#[test]
fn a_refused_map_yields_to_the_next_usable_one() {
    let guards = Guards::new(vec![], Overrides::None, &[]);
    let overriding = with_args(ImageMap::for_selector("dev", "a-first", "app").with_image("localhost:5000/app:1"));
    let plain = ImageMap::for_selector("dev", "b-plain", "app").with_image("localhost:5000/app:2");
    let out = run(guards, &[overriding, plain], "dev");
    assert_eq!(out.swaps.len(), 1);
    assert_eq!(out.swaps[0].record.image_map, "dev/b-plain");
}

#[test]
fn pods_of_protected_namespaces_are_never_swapped() {
    let guards = Guards::new(vec![], Overrides::All, &["imagemap-system".into()]);
    let global = ImageMap::for_selector("global", "app", "app").with_image("localhost:5000/app:1");
    for namespace in ["kube-system", "imagemap-system"] {
        let out = run(guards.clone(), std::slice::from_ref(&global), namespace);
        assert!(out.patch.is_empty() && out.warnings.is_empty(), "{namespace}: {:?}", out.warnings);
    }
}
