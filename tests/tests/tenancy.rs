//! Tenancy and least privilege through the real API server (DESIGN §2, §6, §9):
//!
//! * a user who may write ImageMaps only in her namespace cannot write maps in the global
//!   namespace (nor in anyone else's), checked with `kubectl auth can-i --as` and with real
//!   writes `--as` her;
//! * the webhook configuration the chart renders never sends Pods of kube-system,
//!   kube-public, kube-node-lease or the release's own namespace to the webhook (nor Pods or
//!   namespaces that opt out), so even with `failurePolicy: Fail` and the webhook down, those
//!   Pods are still created, while any other Pod is refused.
//!
//! Covered elsewhere: a map in namespace A never changes Pods in namespace B
//! (`webhook.rs` `a_map_never_changes_pods_in_another_namespace`); the webhook's ServiceAccount
//! may read ImageMaps and nothing else (`chart/rbac.rs`
//! `each_service_account_has_exactly_the_rights_its_features_need`).

use std::path::PathBuf;
use std::time::Duration;

use imagemap_e2e::kubectl::{self, text};
use imagemap_e2e::webhook::{container, image_map, pod};
use imagemap_e2e::{poll, shared, ControlPlane, ControlPlaneOptions};
use serde_json::{json, Value};

fn can_i(plane: &ControlPlane, user: &str, verb: &str, resource: &str, namespace: Option<&str>) -> String {
    kubectl::can_i(plane.kubectl_client(), user, verb, resource, namespace).expect("kubectl runs")
}

/// `kubectl --as USER ARGS...` with `stdin`; the output, whatever the exit status.
fn kubectl_as(plane: &ControlPlane, user: &str, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    let mut cmd = plane.kubectl_client().command();
    cmd.args(["--as", user]).args(args);
    imagemap_e2e::kubectl::run(cmd, stdin).expect("kubectl runs")
}

fn assert_forbidden(out: &std::process::Output, what: &str) {
    assert!(!out.status.success(), "{what} was allowed: {}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(err.contains("forbidden") || err.contains("Forbidden"), "{what}: {err}");
}

#[test]
fn a_user_who_may_write_imagemaps_only_in_her_namespace_cannot_write_global_or_other_maps() {
    let plane = shared();
    let team = plane.create_namespace("tenant-alice");
    let global = plane.create_namespace("tenant-global");
    let other = plane.create_namespace("tenant-bob");
    // A developer's usual grant: ImageMaps (and their status, as a build tool publishes it) in
    // her team's namespace, bound to the user alice.
    plane.apply_yaml(&format!(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: imagemap-writer, namespace: {team}}}
rules:
  - apiGroups: ["tilt.dev"]
    resources: ["imagemaps", "imagemaps/status"]
    verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: alice-imagemap-writer, namespace: {team}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: imagemap-writer}}
subjects:
  - {{apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}}
"#
    ));
    // A global map, written by an admin.
    plane.apply_yaml(&image_map(&global, "shared-app", "app").to_string());

    let user = "alice";
    let imagemaps = "imagemaps.tilt.dev";
    // RBAC is cached briefly by the authorizer: wait until the binding is in effect.
    let granted = poll(Duration::from_secs(30), Duration::from_millis(200), || {
        (can_i(plane, user, "create", imagemaps, Some(&team)) == "yes").then_some(())
    });
    assert!(granted.is_some(), "alice may create ImageMaps in {team}");
    assert_eq!(can_i(plane, user, "patch", "imagemaps.tilt.dev/status", Some(&team)), "yes");
    for verb in ["create", "update", "patch", "delete"] {
        assert_eq!(can_i(plane, user, verb, imagemaps, Some(&global)), "no", "{verb} in the global namespace");
        assert_eq!(can_i(plane, user, verb, imagemaps, Some(&other)), "no", "{verb} in another team's namespace");
        assert_eq!(can_i(plane, user, verb, imagemaps, None), "no", "{verb} in every namespace");
    }
    assert_eq!(can_i(plane, user, "patch", "imagemaps.tilt.dev/status", Some(&global)), "no");

    // Real writes as alice: her namespace yes, the global one no.
    let mine = image_map(&team, "app", "app").to_string();
    let out = kubectl_as(plane, user, &["apply", "-f", "-"], Some(&mine));
    assert!(out.status.success(), "alice creates a map in {team}: {}", text(&out.stderr));
    let global_map = image_map(&global, "app", "app").to_string();
    assert_forbidden(&kubectl_as(plane, user, &["apply", "-f", "-"], Some(&global_map)), "creating a global map");
    assert_forbidden(
        &kubectl_as(
            plane,
            user,
            &["create", "--namespace", &global, "-f", "-"],
            Some(&image_map("", "x", "app").to_string()),
        ),
        "creating a map with --namespace global",
    );
    let status = json!({"status": {"image": "evil.example/app:1"}}).to_string();
    assert_forbidden(
        &kubectl_as(
            plane,
            user,
            &["patch", "imagemap", "shared-app", "-n", &global, "--subresource=status", "--type=merge", "-p", &status],
            None,
        ),
        "publishing a status to a global map",
    );
    let spec = json!({"spec": {"selector": "other"}}).to_string();
    assert_forbidden(
        &kubectl_as(
            plane,
            user,
            &["patch", "imagemap", "shared-app", "-n", &global, "--type=merge", "-p", &spec],
            None,
        ),
        "editing a global map",
    );
    assert_forbidden(
        &kubectl_as(plane, user, &["delete", "imagemap", "shared-app", "-n", &global], None),
        "deleting a global map",
    );
    let stored = plane.kubectl_ok(["get", "imagemap", "shared-app", "-n", &global, "-o", "json"]);
    let stored: Value = serde_json::from_str(&stored).expect("JSON");
    assert_eq!(stored["spec"]["selector"], "app", "the global map is unchanged");
    assert!(stored.get("status").is_none_or(|s| s["image"].is_null()), "and has no status: {stored}");
}

/// Deletes the configuration on drop, even when the test fails.
struct Configuration<'a> {
    plane: &'a ControlPlane,
    name: String,
}

impl Drop for Configuration<'_> {
    fn drop(&mut self) {
        let _ = self.plane.kubectl(["delete", "mutatingwebhookconfiguration", &self.name, "--ignore-not-found"]);
    }
}

fn chart_dir() -> PathBuf {
    imagemap_e2e::binaries::workspace_root().join("charts/imagemap")
}

/// The `MutatingWebhookConfiguration` the chart renders for a release in `namespace`.
fn rendered_configuration(plane: &ControlPlane, namespace: &str, values: &[&str]) -> Value {
    let chart = chart_dir().display().to_string();
    let mut args = vec!["template", "imagemap", chart.as_str(), "--namespace", namespace];
    for v in values {
        args.extend(["--set", v]);
    }
    let out = plane.helm(&args);
    assert!(out.status.success(), "helm template: {}", text(&out.stderr));
    text(&out.stdout)
        .split("\n---")
        .filter_map(|doc| serde_saphyr::from_str::<Value>(doc).ok())
        .find(|v| v["kind"] == "MutatingWebhookConfiguration")
        .expect("the chart renders a MutatingWebhookConfiguration")
}

/// Creates a one-container Pod named `name` (really, not a dry run); the output.
fn create_pod(plane: &ControlPlane, ns: &str, name: &str, labels: Value) -> std::process::Output {
    let mut p = pod(ns, name, &[container("app", "busybox:1.36")]);
    p["metadata"]["labels"] = labels;
    plane.kubectl_client().run_with_stdin(["create", "-f", "-"], Some(&p.to_string())).expect("kubectl runs")
}

fn ensure_default_service_account(plane: &ControlPlane, ns: &str) {
    let out = plane.kubectl(["create", "serviceaccount", "default", "--namespace", ns]);
    assert!(out.status.success() || text(&out.stderr).contains("already exists"), "{}", text(&out.stderr));
}

#[test]
fn with_failure_policy_fail_and_the_webhook_down_pods_in_excluded_namespaces_are_still_created() {
    // Its own plane: a `Fail` configuration on the shared one could refuse other tests' Pods.
    let plane = ControlPlane::start(ControlPlaneOptions::default()).expect("a dedicated control plane");
    let release_ns = "imagemap-system";
    plane.kubectl_ok(["create", "namespace", release_ns]);
    // Nothing listens there: the webhook is down.
    let dead = imagemap_e2e::net::free_ports(1).expect("a free port")[0];
    let url = format!("webhook.url=https://127.0.0.1:{dead}/mutate");
    let config = rendered_configuration(&plane, release_ns, &[&url, "webhook.failurePolicy=Fail"]);
    let name = config["metadata"]["name"].as_str().expect("a name").to_string();
    assert_eq!(config["webhooks"][0]["failurePolicy"], "Fail");
    let _cleanup = Configuration { plane: &plane, name: name.clone() };
    plane.apply_yaml(&config.to_string());

    // The configuration is in effect: an ordinary namespace's Pod is refused.
    let ordinary = plane.create_namespace("ordinary");
    let mut n = 0;
    let mut last = String::new();
    let refused = poll(Duration::from_secs(30), Duration::from_millis(250), || {
        n += 1;
        let out = create_pod(&plane, &ordinary, &format!("probe-{n}"), json!({}));
        last = text(&out.stderr);
        (!out.status.success() && last.contains("failed calling webhook")).then_some(())
    });
    assert!(refused.is_some(), "a Pod in {ordinary} is refused while the webhook is down (last: {last})");

    // The namespaces the chart excludes: system ones and its own.
    for ns in ["kube-system", "kube-public", "kube-node-lease", release_ns] {
        ensure_default_service_account(&plane, ns);
        let out = create_pod(&plane, ns, "survivor", json!({}));
        assert!(out.status.success(), "a Pod in {ns} is created with the webhook down: {}", text(&out.stderr));
    }
    // Opting out: a labelled namespace, or a labelled Pod anywhere.
    let opted_out = plane.create_namespace("opted-out");
    plane.kubectl_ok(["label", "namespace", &opted_out, "imagemap.tilt.dev/disabled=true"]);
    let out = create_pod(&plane, &opted_out, "survivor", json!({}));
    assert!(out.status.success(), "a Pod in an opted-out namespace is created: {}", text(&out.stderr));
    let out = create_pod(&plane, &ordinary, "opted-out", json!({"imagemap.tilt.dev/disabled": "true"}));
    assert!(out.status.success(), "an opted-out Pod is created: {}", text(&out.stderr));
    // And still refused elsewhere: the exclusions, not a lost configuration, let those through.
    let out = create_pod(&plane, &ordinary, "still-refused", json!({}));
    assert!(!out.status.success(), "{}", text(&out.stdout));
}
