//! The compiled policy of two namespaces, checked against `tests/golden/policy-two-namespaces.yaml`
//! byte for byte, so that every change to the generated CEL shows as a reviewable diff.
//!
//! The maps cover every kind of table and expression: name-only and exact maps, a map swapping
//! env values, command and args overrides, a map matched in image volumes (every map is), the
//! global namespace's maps below the local ones and the global policy for the other namespaces.
//! After an intended change, rewrite the file with `IMAGEMAP_BLESS=1 cargo test -p imagemap-core
//! --test policy_golden` and review the diff.

use std::path::Path;

use imagemap_core::policy::{compile, PolicyOptions};
use imagemap_core::types::ImageMap;

/// Set to rewrite the golden file from the compiler's output.
const BLESS_ENV: &str = "IMAGEMAP_BLESS";

fn golden_path() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/policy-two-namespaces.yaml"))
}

fn maps() -> Vec<ImageMap> {
    let built = |ns: &str, name: &str, selector: &str, image: &str| {
        ImageMap::for_selector(ns, name, selector).with_image(image)
    };
    vec![
        // The global namespace: a name-only map (loses `app` to the local one) and one of its own.
        built("shared", "app-global", "app", "localhost:5000/app-global:tilt-1"),
        built("shared", "base", "gcr.io/team/base", "localhost:5000/base:tilt-1"),
        // The local namespace.
        built("dev", "app", "docker.io/library/app", "localhost:5000/app:tilt-2"),
        built("dev", "app-exact", "app:dev", "localhost:5000/app:tilt-exact").with_match_exact(true),
        built("dev", "db", "team/db", "localhost:5000/db:tilt-3").with_match_in_env_vars(true),
        built("dev", "tool", "quay.io/org/tool:v1", "localhost:5000/tool:tilt-4")
            .with_command(&["/bin/sh", "-c"])
            .with_args(&["echo \"quoted\" \\ back"]),
        built("dev", "no-args", "quay.io/org/other", "localhost:5000/other:tilt-5").with_args(&[]),
        ImageMap::for_selector("dev", "data", "docker.io/team/data:1.0")
            .with_image_from_cluster("registry.dev.svc:5000/data:tilt-6")
            .with_image("localhost:5000/data:tilt-6"),
        // Not built: left out.
        ImageMap::for_selector("dev", "unbuilt", "unbuilt"),
    ]
}

#[test]
fn the_compiled_policy_of_two_namespaces_matches_the_golden_file() {
    let options = PolicyOptions { global_namespace: Some("shared".into()) };
    let policies = compile(&maps(), &options).expect("compiles");
    assert_eq!(policies.len(), 2, "the local policy and the global one");
    let yaml = imagemap_core::yaml::to_string(&policies).expect("serializes");
    let path = golden_path();
    if std::env::var_os(BLESS_ENV).is_some_and(|v| !v.is_empty()) {
        std::fs::create_dir_all(path.parent().expect("a folder")).expect("creating the golden folder");
        std::fs::write(path, &yaml).expect("writing the golden file");
        return;
    }
    let golden = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {}: {e} (run with {BLESS_ENV}=1 to write it)", path.display()));
    if yaml != golden {
        let first = yaml.lines().zip(golden.lines()).position(|(a, b)| a != b).unwrap_or(0);
        panic!(
            "the compiled policy differs from {} from line {} on:\n  compiled: {}\n  golden:   {}\n\
             (if the change is intended, run with {BLESS_ENV}=1 and review the diff)",
            path.display(),
            first + 1,
            yaml.lines().nth(first).unwrap_or("(end)"),
            golden.lines().nth(first).unwrap_or("(end)"),
        );
    }
}
