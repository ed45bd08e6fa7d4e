//! The loop imagemap serves, end to end on a real node: build an image, push it to the local
//! registry, record it with `kubectl imagemap set-image`, and a Deployment written with the
//! plain image name runs exactly that build; a rebuild rolls it; a Pod created before the first
//! build waits at the scheduling gate, unscheduled, and runs once the build is there.

use std::time::Duration;

use imagemap_e2e::oci::{self, Run};
use imagemap_e2e::plugin::kubectl_imagemap_ok;
use imagemap_e2e::pods::running_build;
use imagemap_e2e::webhook::wait_until_admitted;
use imagemap_e2e::{poll, shared_cluster, Cluster, ControlPlane, ServedWebhook, WebhookOptions};
use serde_json::Value;

/// Generous: a Pod's first start pulls its image and sets up its sandbox on a busy machine.
const POD_TIMEOUT: Duration = Duration::from_secs(180);

fn json(text: &str) -> Value {
    serde_json::from_str(text).expect("kubectl printed JSON")
}

fn webhook(cluster: &Cluster, name: &str) -> ServedWebhook {
    let args = ["--gate-unbuilt", "--restart-on-rebuild", "--controller-interval", "300ms"];
    let lease_ns = cluster.plane.create_namespace(&format!("{name}-lease"));
    let mut controller: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    controller.extend(["--leader-election-namespace".to_string(), lease_ns]);
    let options = WebhookOptions {
        extra_args: vec!["--gate-unbuilt".into()],
        controller_args: Some(controller),
        ..Default::default()
    };
    ServedWebhook::start(&cluster.plane, name, options).expect("webhook")
}

/// Builds and pushes `REGISTRY/repo:tag`, an image that prints `marker` and then waits; returns
/// the pushed digest.
fn build_and_push(cluster: &Cluster, repo: &str, tag: &str, marker: &str) -> String {
    oci::busybox_image(
        &cluster.registry,
        repo,
        tag,
        &[("/marker", marker)],
        &Run::shell("cat /marker; echo; exec sleep 3600"),
    )
    .expect("image built and pushed")
}

fn describe_pods(plane: &ControlPlane, ns: &str) -> String {
    let out = plane.kubectl(["describe", "pods", "-n", ns]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_deployment_named_by_the_plain_image_runs_the_pushed_build_and_a_rebuild_rolls_it() {
    let cluster = shared_cluster();
    let plane = &cluster.plane;
    let served = webhook(cluster, "loop");
    let ns = served.create_namespace("loop");
    let repo = format!("{ns}/app");
    let registry = cluster.registry.address();

    let first = build_and_push(cluster, &repo, "tilt-1", &format!("marker build-1 of {ns}"));
    let kubeconfig = plane.kubeconfig_path();
    kubectl_imagemap_ok(
        kubeconfig,
        &["set-image", "app", &format!("{registry}/{repo}:tilt-1"), "--create", "--selector", "loop-app", "-n", &ns],
    );
    // The webhook's cache must hold the map before the Deployment's Pod is admitted.
    let built = format!("{registry}/{repo}:tilt-1");
    wait_until_admitted(plane, &ns, "loop-app", |pod| pod["spec"]["containers"][0]["image"] == built.as_str());

    plane.kubectl_ok(["create", "deployment", "x", "-n", &ns, "--image=loop-app"]);
    let pod = poll(POD_TIMEOUT, Duration::from_millis(500), || {
        running_build(plane, &ns, "app=x", &first, &format!("marker build-1 of {ns}"))
    })
    .unwrap_or_else(|| panic!("a Pod runs build 1:\n{}", describe_pods(plane, &ns)));
    assert_eq!(pod["spec"]["containers"][0]["image"], format!("{registry}/{repo}:tilt-1"));
    assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "IfNotPresent");

    // Rebuild: a new marker, a new tag; the controller rolls the Deployment.
    let second = build_and_push(cluster, &repo, "tilt-2", &format!("marker build-2 of {ns}"));
    assert_ne!(first, second);
    kubectl_imagemap_ok(kubeconfig, &["set-image", "app", &format!("{registry}/{repo}:tilt-2"), "-n", &ns]);
    poll(POD_TIMEOUT, Duration::from_millis(500), || {
        running_build(plane, &ns, "app=x", &second, &format!("marker build-2 of {ns}"))
    })
    .unwrap_or_else(|| panic!("the Deployment rolled to build 2:\n{}", describe_pods(plane, &ns)));
}

#[test]
fn a_pod_created_before_its_first_build_waits_unscheduled_then_runs_the_build() {
    let cluster = shared_cluster();
    let plane = &cluster.plane;
    let served = webhook(cluster, "gated");
    let ns = served.create_namespace("gated");
    let repo = format!("{ns}/web");
    let registry = cluster.registry.address();
    let kubeconfig = plane.kubeconfig_path();

    kubectl_imagemap_ok(kubeconfig, &["create", "web", "--selector", "gated-web", "-n", &ns]);
    wait_until_admitted(plane, &ns, "gated-web", |pod| {
        pod["spec"]["schedulingGates"].as_array().is_some_and(|g| !g.is_empty())
    });
    plane.kubectl_ok(["run", "early", "-n", &ns, "--image=gated-web", "--labels=app=early", "--restart=Never"]);

    // Held: gated, not scheduled, no container started.
    std::thread::sleep(Duration::from_secs(3));
    let pod = json(&plane.kubectl_ok(["get", "pod", "early", "-n", &ns, "-o", "json"]));
    if pod["spec"]["schedulingGates"][0]["name"] != "tilt.dev/imagemap" {
        // Who let it through: a failed webhook call (the API server's log), or a controller
        // that released it (an Event names the reporting instance).
        let apiserver = plane.log_tail("kube-apiserver", 5000);
        let calls: Vec<&str> = apiserver.lines().filter(|l| l.contains("webhook")).collect();
        panic!(
            "the Pod is not gated: {}\nevents:\n{}\nthe webhook's log:\n{}\nthe API server on webhooks:\n{}",
            pod["metadata"],
            String::from_utf8_lossy(&plane.kubectl(["get", "events", "-n", &ns, "-o", "wide"]).stdout),
            served.webhook().log_tail(60),
            calls.join("\n")
        );
    }
    assert!(pod["spec"]["nodeName"].is_null(), "not scheduled while gated: {}", pod["spec"]["nodeName"]);
    let scheduled = pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "PodScheduled")
        .cloned()
        .unwrap_or_default();
    assert_eq!(scheduled["reason"], "SchedulingGated", "{pod}");

    let digest = build_and_push(cluster, &repo, "tilt-1", &format!("marker early of {ns}"));
    kubectl_imagemap_ok(kubeconfig, &["set-image", "web", &format!("{registry}/{repo}:tilt-1"), "-n", &ns]);
    let pod = poll(POD_TIMEOUT, Duration::from_millis(500), || {
        running_build(plane, &ns, "app=early", &digest, &format!("marker early of {ns}"))
    })
    .unwrap_or_else(|| panic!("the released Pod runs the build:\n{}", describe_pods(plane, &ns)));
    assert_eq!(pod["spec"]["containers"][0]["image"], format!("{registry}/{repo}:tilt-1"));
    assert!(pod["spec"]["schedulingGates"].is_null(), "{}", pod["spec"]["schedulingGates"]);
}
