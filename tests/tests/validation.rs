//! ImageMap validation through the real API server: invalid selectors and status images are
//! refused when written, with a message that says what is wrong (CRD CEL rules).

use imagemap_e2e::shared;

fn apply_map(ns: &str, selector: &str) -> std::process::Output {
    let yaml = format!(
        "apiVersion: tilt.dev/v1alpha1\nkind: ImageMap\nmetadata: {{name: m-{}, namespace: {ns}}}\nspec: {{selector: {selector:?}}}\n",
        selector.len()
    );
    let plane = shared();
    let mut cmd = plane.kubectl_client().command();
    cmd.args(["apply", "-f", "-"]);
    imagemap_e2e::kubectl::run(cmd, Some(&yaml)).expect("kubectl")
}

#[test]
fn invalid_selectors_are_refused_with_the_reason() {
    let plane = shared();
    let ns = plane.create_namespace("validate");
    let h64 = "0123456789abcdef".repeat(4);
    for bad in ["My App", "App", "app:", "app@sha256:abc", h64.as_str(), "gcr.io/Team/app"] {
        let out = apply_map(&ns, bad);
        assert!(!out.status.success(), "{bad:?} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("must be an image reference"), "{bad:?}: {err}");
    }
    for good in ["app", "localhost:5000/app:t", "gcr.io/team/app:1.0", "myregistry/team/app"] {
        let out = apply_map(&ns, good);
        assert!(out.status.success(), "{good:?} refused: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn invalid_status_images_are_refused_and_empty_ones_allowed() {
    let plane = shared();
    let ns = plane.create_namespace("validate-status");
    assert!(apply_map(&ns, "app").status.success());
    let patch = |status: &str| {
        plane.kubectl([
            "patch",
            "imagemap",
            "m-3",
            "-n",
            &ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            &format!(r#"{{"status":{status}}}"#),
        ])
    };
    let out = patch(r#"{"image":"Bad Image"}"#);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be an image reference"));
    let out = patch(r#"{"image":"reg.io/app:1","imageFromCluster":"","imageFromLocal":"localhost:5000/app:1"}"#);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
