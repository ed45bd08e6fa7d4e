//! RBAC and the chart's admission policies: each ServiceAccount's exact rights, per feature, and
//! what the chart's ValidatingAdmissionPolicies refuse the controller (and any ImageMap writer).

use std::collections::BTreeSet;

use imagemap_e2e::helm::{
    chart_dir, expect_allowed, expect_refused, extra_rights, get_json, helm_ok, is_gone, kubectl_as, patch_as,
    wait_until_refused, Release,
};
use imagemap_e2e::kubectl::text;
use imagemap_e2e::manifests::the_webhook;
use imagemap_e2e::webhook::{container, image_map, pod};
use imagemap_e2e::{shared, ControlPlane, ControlPlaneOptions};
use serde_json::{json, Value};

/// `kubectl auth can-i VERB RESOURCE[/SUBRESOURCE] --as USER` (`--all-namespaces` when
/// `namespace` is None): "yes" or "no".
fn can_i(plane: &ControlPlane, user: &str, verb: &str, resource: &str, namespace: Option<&str>) -> String {
    imagemap_e2e::kubectl::can_i(plane.kubectl_client(), user, verb, resource, namespace).expect("kubectl runs")
}

fn sorted(lines: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut lines: Vec<String> = lines.into_iter().collect();
    lines.sort();
    lines
}

#[test]
fn each_service_account_has_exactly_the_rights_its_features_need() {
    let plane = shared();
    let restarts = [
        "daemonsets.apps [] [] [get patch]",
        "deployments.apps [] [] [get patch]",
        "events.events.k8s.io [] [] [create patch]",
        "namespaces [] [] [get]",
        "pods [] [] [list watch create]",
        "replicasets.apps [] [] [get]",
        "statefulsets.apps [] [] [get patch]",
    ];
    let policies = [
        "mutatingadmissionpolicies.admissionregistration.k8s.io [] [] [get list create patch delete]",
        "mutatingadmissionpolicybindings.admissionregistration.k8s.io [] [] [get list create patch delete]",
        "validatingadmissionpolicies.admissionregistration.k8s.io [] [] [get list create patch delete]",
        "validatingadmissionpolicybindings.admissionregistration.k8s.io [] [] [get list create patch delete]",
    ];
    let gate = ["pods [] [] [list watch patch]", "events.events.k8s.io [] [] [create patch]"];
    // (case, values, whether the webhook configuration is scoped, the controller's feature rights)
    let cases: [(&str, Value, bool, Vec<&str>); 6] = [
        ("defaults", json!({}), true, vec![]),
        ("restart", json!({"controller": {"restartOnRebuild": true}}), true, restarts.to_vec()),
        ("gate", json!({"controller": {"gateUnbuilt": true}}), true, gate.to_vec()),
        ("policy", json!({"mode": "policy"}), false, policies.to_vec()),
        (
            "policy-restart",
            json!({"mode": "policy", "controller": {"restartOnRebuild": true}}),
            false,
            [&policies[..], &restarts].concat(),
        ),
        ("no-controller", json!({"controller": {"scopeWebhook": false}}), false, vec![]),
    ];
    let read_maps = "imagemaps.tilt.dev [] [] [get list watch]".to_string();
    for (case, values, scoped, features) in cases {
        let policy_mode = values["mode"] == "policy";
        let release = Release::install_scoped(plane, &format!("rights-{case}"), values);
        let (ns, name) = (&release.namespace, &release.fullname);

        // The admission server reads ImageMaps, and nothing else, whatever is on.
        let server = extra_rights(plane, &release.server_account(), ns);
        let expected = if policy_mode { vec![] } else { vec![read_maps.clone()] };
        assert_eq!(server, expected, "{case}: the admission server's rights");

        // The controller: ImageMaps, its Lease, and only what its features write.
        let controller = extra_rights(plane, &release.controller_account(), ns);
        let mut expected: Vec<String> = features.iter().map(|s| s.to_string()).collect();
        if scoped {
            expected
                .push(format!("mutatingwebhookconfigurations.admissionregistration.k8s.io [] [{name}] [get update]"));
        }
        if policy_mode {
            // The ClusterRole that owns the compiled policies (deleted at uninstall).
            expected.push(format!("clusterroles.rbac.authorization.k8s.io [] [{name}-controller] [get]"));
        }
        if policy_mode || scoped || !features.is_empty() {
            expected.push(read_maps.clone());
            expected.push("leases.coordination.k8s.io [] [] [create]".to_string());
            expected.push(format!("leases.coordination.k8s.io [] [{name}-controller] [get update]"));
        }
        assert_eq!(
            controller,
            sorted(expected.into_iter().collect::<BTreeSet<_>>()),
            "{case}: the controller's rights"
        );
        if scoped {
            let other = "mutatingwebhookconfigurations.admissionregistration.k8s.io/someone-elses";
            assert_eq!(can_i(plane, &release.controller_account(), "update", other, None), "no", "{case}");
        }
    }
}

/// A one-container Deployment `app` in `ns`, with a Pod template annotation of its own.
fn deployment(ns: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "app", "namespace": ns},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "app"}},
            "template": {
                "metadata": {"labels": {"app": "app"}, "annotations": {"team": "a"}},
                "spec": {"containers": [{"name": "app", "image": "app:1"}]},
            },
        },
    })
}

#[test]
fn the_controller_may_restart_a_workload_but_change_nothing_else_in_it() {
    let plane = shared();
    let release = Release::install_scoped(plane, "workloads", json!({"controller": {"restartOnRebuild": true}}));
    let controller = release.controller_account();
    let ns = plane.create_namespace("chart-workloads");
    plane.apply_yaml(&deployment(&ns).to_string());
    let path = format!("/apis/apps/v1/namespaces/{ns}/deployments/app");
    let patch = |change: &Value, dry_run| patch_as(plane, &controller, &path, "merge", change, dry_run);
    let template = |t: Value| json!({"spec": {"template": t}});
    let message = "may change only the";
    let image = template(json!({"spec": {"containers": [{"name": "app", "image": "evil.example/app:1"}]}}));
    wait_until_refused("an image change by the controller", message, || patch(&image, true));
    for (what, change) in [
        ("the image", image.clone()),
        ("another annotation", template(json!({"metadata": {"annotations": {"team": "b"}}}))),
        ("a template label", template(json!({"metadata": {"labels": {"extra": "x"}}}))),
        ("the replicas", json!({"spec": {"replicas": 5}})),
    ] {
        expect_refused(&format!("a change of {what} by the controller"), message, &patch(&change, false));
    }
    let restart = template(json!({"metadata": {"annotations": {
        "kubectl.kubernetes.io/restartedAt": "2026-12-06T10:00:00Z",
        "imagemap.tilt.dev/restarted-for": "x",
    }}}));
    expect_allowed("a restart by the controller", &patch(&restart, false));
    let stored = get_json(plane, "deployment", "app", Some(&ns));
    let annotations = &stored["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["kubectl.kubernetes.io/restartedAt"], "2026-12-06T10:00:00Z");
    assert_eq!(annotations["team"], "a");
    assert_eq!(stored["spec"]["template"]["spec"]["containers"][0]["image"], "app:1");
}

/// A Pod `name` in `ns` created by the admin, held by imagemap's scheduling gate when `gated`.
fn create_pod(plane: &ControlPlane, ns: &str, name: &str, gated: bool) {
    let mut p = pod(ns, name, &[container("app", "app:1")]);
    if gated {
        p["spec"]["schedulingGates"] = json!([{"name": "tilt.dev/imagemap"}]);
    }
    let output =
        plane.kubectl_client().run_with_stdin(["create", "-f", "-"], Some(&p.to_string())).expect("kubectl runs");
    assert!(output.status.success(), "creating Pod {name}: {}", text(&output.stderr));
}

#[test]
fn the_controller_updates_only_pods_still_held_by_the_gate() {
    let plane = shared();
    let release = Release::install_scoped(plane, "gate", json!({"controller": {"gateUnbuilt": true}}));
    let controller = release.controller_account();
    let ns = plane.create_namespace("chart-gate");
    create_pod(plane, &ns, "free", false);
    create_pod(plane, &ns, "held", true);
    let patch = |name: &str, kind: &str, change: &Value, dry_run| {
        patch_as(plane, &controller, &format!("/api/v1/namespaces/{ns}/pods/{name}"), kind, change, dry_run)
    };
    let label = json!({"metadata": {"labels": {"touched": "yes"}}});
    let message = "may update only Pods still held by its scheduling gate tilt.dev/imagemap";
    wait_until_refused("an update of an ungated Pod by the controller", message, || {
        patch("free", "merge", &label, true)
    });
    expect_refused("an update of an ungated Pod by the controller", message, &patch("free", "merge", &label, false));
    // The release: the image swapped and the gate removed, in one JSON patch.
    let release_patch = json!([
        {"op": "replace", "path": "/spec/containers/0/image", "value": "localhost:5000/app:2"},
        {"op": "remove", "path": "/spec/schedulingGates"},
    ]);
    expect_allowed("releasing a gated Pod", &patch("held", "json", &release_patch, false));
    assert_eq!(get_json(plane, "pod", "held", Some(&ns))["spec"]["containers"][0]["image"], "localhost:5000/app:2");
    // Released, it is out of the controller's reach.
    expect_refused("an update of a released Pod by the controller", message, &patch("held", "merge", &label, false));
}

#[test]
fn the_controller_creates_pods_only_as_server_side_dry_runs() {
    let plane = shared();
    let release =
        Release::install_scoped(plane, "probes", json!({"mode": "policy", "controller": {"restartOnRebuild": true}}));
    let controller = release.controller_account();
    let ns = plane.create_namespace("chart-probes");
    let probe = pod(&ns, "probe", &[container("probe", "app:1")]).to_string();
    let create = |extra: &[&str]| {
        let mut args = vec!["create", "-f", "-"];
        args.extend_from_slice(extra);
        kubectl_as(plane, &controller, &args, Some(&probe))
    };
    let message = "may create Pods only as server-side dry-runs";
    // A create let through before the policy is in force is deleted again.
    wait_until_refused("a Pod created by the controller", message, || {
        let output = create(&[]);
        if output.status.success() {
            plane.kubectl_ok(["delete", "pod", "probe", "-n", &ns, "--wait=false"]);
        }
        output
    });
    expect_allowed("a dry-run Pod created by the controller", &create(&["--dry-run=server"]));
    assert!(is_gone(plane, "pod", "probe", Some(&ns)), "nothing was stored");
}

#[test]
fn the_controller_changes_only_the_match_conditions_of_its_webhook_configuration() {
    let plane = shared();
    let release = Release::install_scoped(plane, "scope", json!({}));
    let controller = release.controller_account();
    let name = release.fullname.clone();
    let config = get_json(plane, "mutatingwebhookconfiguration", &name, None);
    let replace = |change: &dyn Fn(&mut Value), dry_run: bool| {
        let mut changed = config.clone();
        change(&mut changed["webhooks"][0]);
        let args: &[&str] = if dry_run { &["replace", "--dry-run=server", "-f", "-"] } else { &["replace", "-f", "-"] };
        kubectl_as(plane, &controller, args, Some(&changed.to_string()))
    };
    let message = "may change only the matchConditions";
    let path = |hook: &mut Value| hook["clientConfig"]["service"]["path"] = json!("/elsewhere");
    wait_until_refused("a clientConfig change by the controller", message, || replace(&path, true));
    expect_refused("a clientConfig change", message, &replace(&path, false));
    expect_refused("a rules change", message, &replace(&|hook| hook["rules"][0]["operations"] = json!(["*"]), false));
    expect_refused("a failurePolicy change", message, &replace(&|hook| hook["failurePolicy"] = json!("Fail"), false));
    let scoped = json!([{"name": "imagemap-scope", "expression": "request.namespace in ['nowhere']"}]);
    expect_allowed(
        "a scope change by the controller",
        &replace(&|hook| hook["matchConditions"] = scoped.clone(), false),
    );
    let stored = get_json(plane, "mutatingwebhookconfiguration", &name, None);
    assert_eq!(the_webhook(&stored)["matchConditions"], scoped);
    assert_eq!(the_webhook(&stored)["clientConfig"], the_webhook(&config)["clientConfig"]);
    assert_eq!(the_webhook(&stored)["rules"], the_webhook(&config)["rules"]);
}

#[test]
fn imagemaps_outside_the_admin_guards_are_refused_when_written() {
    // Its own plane: the guards bind every ImageMap write in the cluster.
    let plane = ControlPlane::start(ControlPlaneOptions::default()).expect("a dedicated control plane");
    let values = json!({"allowedRegistries": ["localhost:5000"], "allowOverrides": "none"});
    let release = Release::install_scoped(&plane, "guards", values);
    let ns = plane.create_namespace("guarded");
    plane.apply_yaml(&image_map(&ns, "app", "app").to_string());
    let kubectl = |args: &[&str], object: &Value| {
        plane.kubectl_client().run_with_stdin(args, Some(&object.to_string())).expect("kubectl runs")
    };
    let apply_status = |image: &str, dry_run: bool| {
        let mut map = image_map(&ns, "app", "app");
        map["status"] = json!({ "image": image });
        let mut args = vec!["apply", "--server-side", "--subresource=status", "--force-conflicts", "-f", "-"];
        if dry_run {
            args.push("--dry-run=server");
        }
        kubectl(&args, &map)
    };
    let message = "ImageMap target evil.io/x:1 is not under an allowed registry (allowedRegistries: localhost:5000)";
    wait_until_refused("a map's target outside allowedRegistries", message, || apply_status("evil.io/x:1", true));
    expect_refused("a map's target outside allowedRegistries", message, &apply_status("evil.io/x:1", false));
    for near_miss in ["localhost:50001/app:1", "localhost/app:1", "team/app:1"] {
        expect_refused(near_miss, "is not under an allowed registry", &apply_status(near_miss, false));
    }
    expect_allowed("a map's target in the allowed registry", &apply_status("localhost:5000/app:2", false));
    assert_eq!(get_json(&plane, "imagemap", "app", Some(&ns))["status"]["image"], "localhost:5000/app:2");

    let mut with_args = image_map(&ns, "args", "args");
    with_args["spec"]["overrideArgs"] = json!({"args": ["--debug"]});
    let none = "may not set spec.overrideCommand or spec.overrideArgs (allowOverrides: none)";
    expect_refused("a map with overrides", none, &kubectl(&["create", "-f", "-"], &with_args));

    // `local`: overrides only from maps outside the global namespace.
    let global = plane.create_namespace("guarded-global");
    let chart = chart_dir().display().to_string();
    let global_value = format!("globalNamespace={global}");
    let (release_name, release_ns) = (release.name.as_str(), release.namespace.as_str());
    let upgrade =
        ["upgrade", release_name, &chart, "-n", release_ns, "--reuse-values", "--set", "allowOverrides=local"];
    helm_ok(&plane, &[&upgrade[..], &["--set", &global_value]].concat());
    let mut in_global = with_args.clone();
    in_global["metadata"]["namespace"] = json!(global);
    let local = "is in the global namespace and may not set spec.overrideCommand or spec.overrideArgs";
    wait_until_refused("a global map with overrides", local, || {
        kubectl(&["create", "--dry-run=server", "-f", "-"], &in_global)
    });
    expect_allowed("a local map with overrides", &kubectl(&["create", "-f", "-"], &with_args));
}
