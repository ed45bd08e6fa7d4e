//! The injection engine against DESIGN §4 and §5, through the public core API.

use imagemap_core::inject::{inject_json, Applicable, Injection, SWAPS_ANNOTATION};
use imagemap_core::maps::{MapIndex, Scope};
use imagemap_core::types::ImageMap;
use serde_json::{json, Value};

const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

/// A map: `m("ns", "name", "selector").with_image("image")` (the core's builder).
fn m(ns: &str, name: &str, selector: &str) -> ImageMap {
    ImageMap::for_selector(ns, name, selector)
}

fn pod(containers: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "dev"}, "spec": {"containers": containers}})
}

fn index(maps: &[ImageMap], global: Option<&str>, file: &[ImageMap]) -> MapIndex {
    let mut idx = MapIndex::new(global.map(String::from));
    for map in maps {
        let _ = idx.upsert(map);
    }
    idx.replace_file(file);
    idx
}

/// Runs the engine in namespace `dev` and applies its patch.
fn run_with(pod: &Value, idx: &MapIndex) -> (Value, Injection) {
    let injection = inject_json(pod, &Applicable { index: idx, namespace: "dev" });
    let out = injection.patch.apply_to(pod).expect("patch applies to the original");
    (out, injection)
}

fn run(pod: &Value, maps: &[ImageMap]) -> (Value, Injection) {
    run_with(pod, &index(maps, None, &[]))
}

fn image(p: &Value, i: usize) -> &str {
    p["spec"]["containers"][i]["image"].as_str().unwrap_or("<none>")
}

fn records(p: &Value) -> Value {
    serde_json::from_str(p["metadata"]["annotations"][SWAPS_ANNOTATION].as_str().expect("annotation")).expect("json")
}

#[test]
fn swaps_container_image_to_the_familiar_target_with_if_not_present() {
    let p = pod(json!([{"name": "app", "image": "app", "imagePullPolicy": "Always"}]));
    let (out, inj) = run(&p, &[m("dev", "app", "app").with_image("docker.io/library/app:tilt-1")]);
    assert_eq!(image(&out, 0), "app:tilt-1");
    assert_eq!(out["spec"]["containers"][0]["imagePullPolicy"], "IfNotPresent");
    assert_eq!(inj.swaps.len(), 1);
    assert_eq!(inj.warnings, vec!["image app swapped to app:tilt-1 by ImageMap dev/app"]);
}

#[test]
fn name_match_ignores_tags_and_digests_on_both_sides() {
    let p = pod(json!([{"name": "a", "image": format!("docker.io/library/app:v2@{D1}")}]));
    let (out, _) = run(&p, &[m("dev", "app", "app:v1").with_image("localhost:5000/app:t")]);
    assert_eq!(image(&out, 0), "localhost:5000/app:t");
}

#[test]
fn match_exact_compares_full_normalized_strings() {
    let maps = [m("dev", "app", "app").with_match_exact(true).with_image("localhost:5000/app:t")];
    for (img, swapped) in
        [("app", true), ("docker.io/library/app", true), ("index.docker.io/app", true), ("app:latest", false)]
    {
        let (out, _) = run(&pod(json!([{"name": "a", "image": img}])), &maps);
        assert_eq!(image(&out, 0) == "localhost:5000/app:t", swapped, "{img}");
    }
}

#[test]
fn match_exact_tag_does_not_match_tag_plus_digest() {
    let maps = [m("dev", "app", "app:1.0").with_match_exact(true).with_image("localhost:5000/app:t")];
    let (out, _) = run(&pod(json!([{"name": "a", "image": format!("app:1.0@{D1}")}])), &maps);
    assert_eq!(image(&out, 0), format!("app:1.0@{D1}"));
    let (out, _) = run(&pod(json!([{"name": "a", "image": "app:1.0"}])), &maps);
    assert_eq!(image(&out, 0), "localhost:5000/app:t");
}

#[test]
fn docker_hub_paths_are_not_registries() {
    let maps = [m("dev", "a", "myregistry/team/app").with_image("localhost:5000/app:t")];
    let (out, _) = run(&pod(json!([{"name": "a", "image": "docker.io/myregistry/team/app:1"}])), &maps);
    assert_eq!(image(&out, 0), "localhost:5000/app:t");
    let (out, _) = run(&pod(json!([{"name": "a", "image": "myregistry.io/team/app"}])), &maps);
    assert_eq!(image(&out, 0), "myregistry.io/team/app");
}

#[test]
fn swaps_init_containers() {
    let p = json!({"metadata": {"name": "p"}, "spec": {
        "initContainers": [{"name": "init", "image": "app"}],
        "containers": [{"name": "main", "image": "other"}]}});
    let (out, inj) = run(&p, &[m("dev", "app", "app").with_image("reg.io/app:t")]);
    assert_eq!(out["spec"]["initContainers"][0]["image"], "reg.io/app:t");
    assert_eq!(out["spec"]["initContainers"][0]["imagePullPolicy"], "IfNotPresent");
    assert_eq!(out["spec"]["containers"][0], json!({"name": "main", "image": "other"}));
    assert_eq!(inj.swaps[0].record.field, "spec.initContainers{init}.image");
}

#[test]
fn swaps_image_volumes_and_their_pull_policy() {
    let p = json!({"metadata": {"name": "p"}, "spec": {"containers": [],
        "volumes": [{"name": "data", "image": {"reference": "app:1", "pullPolicy": "Always"}}, {"name": "e", "emptyDir": {}}]}});
    let (out, inj) = run(&p, &[m("dev", "app", "app").with_command(&["x"]).with_image("reg.io/app:t")]);
    assert_eq!(out["spec"]["volumes"][0]["image"], json!({"reference": "reg.io/app:t", "pullPolicy": "IfNotPresent"}));
    assert_eq!(out["spec"]["volumes"][1], json!({"name": "e", "emptyDir": {}}));
    assert_eq!(inj.swaps[0].record.field, "spec.volumes{data}.image.reference");
}

#[test]
fn env_values_swap_only_with_match_in_env_vars_and_never_value_from() {
    let c = json!([{"name": "a", "image": "busybox", "env": [
        {"name": "IMG", "value": "app:1"},
        {"name": "TXT", "value": "run app:1 now"},
        {"name": "REF", "valueFrom": {"configMapKeyRef": {"name": "app", "key": "app"}}}]}]);
    let (out, _) = run(&pod(c.clone()), &[m("dev", "app", "app").with_image("reg.io/app:t")]);
    assert_eq!(out["spec"]["containers"][0]["env"][0]["value"], "app:1", "env off by default");
    let (out, inj) =
        run(&pod(c.clone()), &[m("dev", "app", "app").with_match_in_env_vars(true).with_image("reg.io/app:t")]);
    let env = &out["spec"]["containers"][0]["env"];
    assert_eq!(env[0]["value"], "reg.io/app:t");
    assert_eq!(env[1]["value"], "run app:1 now", "no substring matching");
    assert_eq!(env[2], c[0]["env"][2], "valueFrom untouched");
    assert!(out["spec"]["containers"][0].get("imagePullPolicy").is_none(), "env swaps leave pull policy");
    assert_eq!(inj.swaps[0].record.field, "spec.containers{a}.env{IMG}");
}

#[test]
fn env_swaps_do_not_apply_overrides() {
    let c = json!([{"name": "a", "image": "busybox", "command": ["sh"], "env": [{"name": "IMG", "value": "app"}]}]);
    let (out, _) = run(
        &pod(c),
        &[m("dev", "app", "app").with_match_in_env_vars(true).with_command(&["x"]).with_image("reg.io/app:t")],
    );
    assert_eq!(out["spec"]["containers"][0]["command"], json!(["sh"]));
}

#[test]
fn overrides_keep_replace_and_clear() {
    let c = json!([{"name": "a", "image": "app", "command": ["old"], "args": ["old-arg"]}]);
    let (out, _) = run(&pod(c.clone()), &[m("dev", "app", "app").with_image("reg.io/app:t")]);
    assert_eq!(out["spec"]["containers"][0]["command"], json!(["old"]), "absent override keeps");
    assert_eq!(out["spec"]["containers"][0]["args"], json!(["old-arg"]));
    let (out, _) = run(
        &pod(c.clone()),
        &[m("dev", "app", "app").with_command(&["/new", "x"]).with_args(&["--a"]).with_image("reg.io/app:t")],
    );
    assert_eq!(out["spec"]["containers"][0]["command"], json!(["/new", "x"]), "present override replaces");
    assert_eq!(out["spec"]["containers"][0]["args"], json!(["--a"]));
    let (out, _) = run(&pod(c), &[m("dev", "app", "app").with_command(&[]).with_args(&[]).with_image("reg.io/app:t")]);
    assert!(out["spec"]["containers"][0].get("command").is_none(), "empty list removes");
    assert!(out["spec"]["containers"][0].get("args").is_none());
    let (out, _) = run(
        &pod(json!([{"name": "a", "image": "app"}])),
        &[m("dev", "app", "app").with_command(&[]).with_args(&["y"]).with_image("r.io/a:t")],
    );
    assert!(out["spec"]["containers"][0].get("command").is_none(), "removing an absent field is a no-op");
    assert_eq!(out["spec"]["containers"][0]["args"], json!(["y"]));
}

#[test]
fn overrides_apply_only_to_swapped_containers() {
    let c = json!([{"name": "a", "image": "app"}, {"name": "b", "image": "other", "command": ["keep"]}]);
    let (out, _) = run(&pod(c), &[m("dev", "app", "app").with_command(&["new"]).with_image("reg.io/app:t")]);
    assert_eq!(out["spec"]["containers"][0]["command"], json!(["new"]));
    assert_eq!(out["spec"]["containers"][1]["command"], json!(["keep"]));
}

#[test]
fn ignores_unbuilt_maps_with_warning() {
    let p = pod(json!([{"name": "a", "image": "app"}]));
    let (out, inj) = run(&p, &[m("dev", "app", "app")]);
    assert_eq!(out, p);
    assert!(inj.patch.is_empty());
    assert_eq!(inj.unusable.len(), 1);
    assert_eq!(inj.unusable[0].image_map, "dev/app");
    assert_eq!(inj.warnings.len(), 1);
    assert!(
        inj.warnings[0].contains("ImageMap dev/app") && inj.warnings[0].contains("no built image"),
        "{:?}",
        inj.warnings
    );
}

#[test]
fn ignores_maps_with_invalid_status_image_with_warning() {
    let p = pod(json!([{"name": "a", "image": "app"}]));
    let (out, inj) = run(&p, &[m("dev", "app", "app").with_image("Not/Valid")]);
    assert_eq!(out, p);
    assert!(inj.warnings[0].contains("invalid status image"), "{:?}", inj.warnings);
}

#[test]
fn unusable_map_does_not_block_a_usable_one() {
    let p = pod(json!([{"name": "a", "image": "app"}]));
    let (out, inj) = run(
        &p,
        &[m("dev", "a-exact", "app").with_match_exact(true), m("dev", "b-name", "app").with_image("reg.io/app:t")],
    );
    assert_eq!(image(&out, 0), "reg.io/app:t");
    assert_eq!(inj.unusable.len(), 1);
    assert_eq!(inj.warnings.len(), 2);
}

#[test]
fn invalid_selectors_and_images_are_skipped_never_errors() {
    let p = pod(json!([{"name": "a", "image": "Bad Image"}, {"name": "b", "image": "app"}]));
    let (out, inj) =
        run(&p, &[m("dev", "bad", "::nope").with_image("x:1"), m("dev", "app", "app").with_image("reg.io/app:t")]);
    assert_eq!(image(&out, 0), "Bad Image");
    assert_eq!(image(&out, 1), "reg.io/app:t");
    assert_eq!(inj.swaps.len(), 1);
}

#[test]
fn exact_match_beats_name_match() {
    let p = pod(json!([{"name": "a", "image": "app:1"}]));
    let maps = [
        m("dev", "a-name", "app").with_image("reg.io/name:t"),
        m("dev", "z-exact", "app:1").with_match_exact(true).with_image("reg.io/exact:t"),
    ];
    let (out, inj) = run(&p, &maps);
    assert_eq!(image(&out, 0), "reg.io/exact:t");
    assert!(inj.swaps[0].exact);
    assert_eq!(inj.swaps[0].outranked, vec!["dev/a-name"]);
}

#[test]
fn local_map_beats_global_map() {
    let p = pod(json!([{"name": "a", "image": "app"}]));
    let idx = index(
        &[
            m("dev", "z-local", "app").with_image("reg.io/local:t"),
            m("global", "a-global", "app").with_image("reg.io/global:t"),
        ],
        Some("global"),
        &[],
    );
    let (out, inj) = run_with(&p, &idx);
    assert_eq!(image(&out, 0), "reg.io/local:t");
    assert_eq!(inj.swaps[0].scope, Scope::Local);
}

#[test]
fn exact_global_beats_name_only_local() {
    let p = pod(json!([{"name": "a", "image": "app:1"}]));
    let idx = index(
        &[
            m("dev", "local", "app").with_image("reg.io/local:t"),
            m("global", "g", "app:1").with_match_exact(true).with_image("reg.io/global:t"),
        ],
        Some("global"),
        &[],
    );
    assert_eq!(image(&run_with(&p, &idx).0, 0), "reg.io/global:t");
}

#[test]
fn global_namespace_and_file_maps_apply_to_every_namespace() {
    let p = pod(json!([{"name": "a", "image": "app"}, {"name": "b", "image": "tool"}]));
    let idx = index(
        &[m("global", "g", "app").with_image("reg.io/app:g")],
        Some("global"),
        &[m("", "f", "tool").with_image("reg.io/tool:f")],
    );
    let (out, inj) = run_with(&p, &idx);
    assert_eq!(image(&out, 0), "reg.io/app:g");
    assert_eq!(image(&out, 1), "reg.io/tool:f");
    assert_eq!(inj.swaps[1].record.image_map, "f");
}

#[test]
fn maps_in_other_namespaces_never_apply() {
    let p = pod(json!([{"name": "a", "image": "app"}]));
    let (out, inj) = run(&p, &[m("other", "app", "app").with_image("reg.io/app:t")]);
    assert_eq!(out, p);
    assert!(inj.warnings.is_empty());
}

#[test]
fn ties_break_on_lowest_name_whatever_the_order() {
    let p = pod(json!([{"name": "a", "image": "app"}]));
    let a = m("dev", "aaa", "app").with_image("reg.io/a:t");
    let b = m("dev", "bbb", "app").with_image("reg.io/b:t");
    assert_eq!(image(&run(&p, &[a.clone(), b.clone()]).0, 0), "reg.io/a:t");
    assert_eq!(image(&run(&p, &[b, a]).0, 0), "reg.io/a:t");
}

#[test]
fn no_chaining_of_one_maps_output_into_another() {
    let p = pod(json!([{"name": "a", "image": "app"}]));
    let maps =
        [m("dev", "one", "app").with_image("reg.io/two:t"), m("dev", "two", "reg.io/two").with_image("reg.io/three:t")];
    let (out, _) = run(&p, &maps);
    assert_eq!(image(&out, 0), "reg.io/two:t");
    let (again, inj) = run(&out, &maps);
    assert_eq!(again, out, "a reinvocation does not chain either");
    assert!(inj.patch.is_empty());
}

#[test]
fn ephemeral_containers_are_untouched() {
    let p = json!({"metadata": {"name": "p"}, "spec": {"containers": [],
        "ephemeralContainers": [{"name": "dbg", "image": "app", "env": [{"name": "X", "value": "app"}]}]}});
    let (out, inj) = run(&p, &[m("dev", "app", "app").with_match_in_env_vars(true).with_image("reg.io/app:t")]);
    assert_eq!(out, p);
    assert!(inj.patch.is_empty());
}

#[test]
fn engine_applied_to_its_own_output_changes_nothing() {
    let p = pod(json!([{"name": "a", "image": "reg.io/app", "env": [{"name": "I", "value": "reg.io/app:old"}]},
                        {"name": "b", "image": "tool"}]));
    let maps = [
        m("dev", "app", "reg.io/app").with_match_in_env_vars(true).with_command(&["x"]).with_image("reg.io/app:tilt-1"),
        m("dev", "tool", "tool").with_args(&[]).with_image("reg.io/tool:2"),
    ];
    let (once, inj) = run(&p, &maps);
    assert_eq!(inj.swaps.len(), 3);
    let (twice, inj2) = run(&once, &maps);
    assert_eq!(twice, once);
    assert!(inj2.patch.is_empty() && inj2.warnings.is_empty());
}

#[test]
fn reinvocation_swaps_only_a_new_container_and_keeps_first_originals() {
    let maps = [m("dev", "app", "app").with_image("reg.io/app:t")];
    let (once, _) = run(&pod(json!([{"name": "a", "image": "app:1"}])), &maps);
    let mut grown = once.clone();
    grown["spec"]["containers"].as_array_mut().expect("array").push(json!({"name": "side", "image": "app:2"}));
    let (twice, inj) = run(&grown, &maps);
    assert_eq!(inj.swaps.len(), 1);
    assert_eq!(image(&twice, 1), "reg.io/app:t");
    let recs = records(&twice);
    assert_eq!(recs.as_array().map(Vec::len), Some(2));
    assert_eq!(recs[0]["original"], "app:1");
    assert_eq!(recs[1]["original"], "app:2");
    assert_eq!(recs[1]["field"], "spec.containers{side}.image");
}

#[test]
fn a_field_already_holding_its_target_is_not_a_swap() {
    let p = pod(json!([{"name": "a", "image": "reg.io/app:t"}]));
    let (out, inj) = run(&p, &[m("dev", "app", "reg.io/app").with_image("reg.io/app:t")]);
    assert_eq!(out, p);
    assert!(inj.swaps.is_empty());
}

#[test]
fn annotation_records_field_original_new_and_map() {
    let p = pod(json!([{"name": "a", "image": "app"}]));
    let (out, _) = run(&p, &[m("dev", "app", "app").with_image("reg.io/app:t")]);
    assert_eq!(
        records(&out),
        json!([{"field": "spec.containers{a}.image", "original": "app", "image": "reg.io/app:t", "imageMap": "dev/app"}])
    );
}

#[test]
fn annotation_is_added_beside_existing_annotations_and_without_metadata() {
    let mut p = pod(json!([{"name": "a", "image": "app"}]));
    p["metadata"]["annotations"] = json!({"keep/me": "1"});
    let maps = [m("dev", "app", "app").with_image("reg.io/app:t")];
    let (out, _) = run(&p, &maps);
    assert_eq!(out["metadata"]["annotations"]["keep/me"], "1");
    assert!(out["metadata"]["annotations"][SWAPS_ANNOTATION].is_string());
    let bare = json!({"spec": {"containers": [{"name": "a", "image": "app"}]}});
    let (out, _) = run(&bare, &maps);
    assert!(out["metadata"]["annotations"][SWAPS_ANNOTATION].is_string());
}

#[test]
fn unrelated_fields_are_left_byte_for_byte() {
    let p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"x": "y"}},
        "spec": {"nodeSelector": {"a": "b"}, "containers": [{"name": "a", "image": "app", "ports": [{"containerPort": 80}],
        "resources": {"limits": {"cpu": "1"}}, "unknownField": {"x": [1, 2.5, null]}}]}, "status": {}});
    let (out, _) = run(&p, &[m("dev", "app", "app").with_image("reg.io/app:t")]);
    let mut expected = p.clone();
    expected["spec"]["containers"][0]["image"] = json!("reg.io/app:t");
    expected["spec"]["containers"][0]["imagePullPolicy"] = json!("IfNotPresent");
    expected["metadata"]["annotations"] = out["metadata"]["annotations"].clone();
    assert_eq!(out, expected);
}
