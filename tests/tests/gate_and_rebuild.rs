//! Holding Pods until their image is built (`--gate-unbuilt`) and following rebuilds
//! (`--restart-on-rebuild`), through the real API server and controller-manager.

use std::time::Duration;

use imagemap_e2e::plugin::kubectl_imagemap_ok;
use imagemap_e2e::webhook::wait_until_admitted;
use imagemap_e2e::{poll, shared, ControlPlane, ControlPlaneOptions, ServedWebhook, WebhookOptions};
use serde_json::Value;

const GATE: &str = "tilt.dev/imagemap";

/// An admission server that gates unbuilt Pods, with a controller beside it that releases them
/// and restarts workloads after a rebuild.
fn controller_args(lease_ns: &str, extra: &[&str]) -> WebhookOptions {
    let mut args: Vec<String> = [
        "--gate-unbuilt",
        "--restart-on-rebuild",
        "--controller-interval",
        "300ms",
        "--leader-election-namespace",
        lease_ns,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    WebhookOptions { extra_args: vec!["--gate-unbuilt".into()], controller_args: Some(args), ..Default::default() }
}

fn plugin(plane: &ControlPlane, args: &[&str]) -> String {
    kubectl_imagemap_ok(plane.kubeconfig_path(), args)
}

fn get_pod(plane: &ControlPlane, ns: &str, name: &str) -> Value {
    serde_json::from_str(&plane.kubectl_ok(["get", "pod", name, "-n", ns, "-o", "json"])).expect("pod json")
}

fn gates(pod: &Value) -> Vec<String> {
    pod["spec"]["schedulingGates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| g["name"].as_str().map(String::from))
        .collect()
}

fn events(plane: &ControlPlane, ns: &str, reason: &str) -> Vec<Value> {
    let list: Value =
        serde_json::from_str(&plane.kubectl_ok(["get", "events", "-n", ns, "-o", "json"])).expect("events");
    list["items"].as_array().into_iter().flatten().filter(|e| e["reason"] == reason).cloned().collect()
}

fn run_pod(plane: &ControlPlane, ns: &str, name: &str, image: &str) -> String {
    let out = plane.kubectl(["run", name, "-n", ns, &format!("--image={image}"), "--restart=Never"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_pod_created_before_its_build_waits_at_a_gate_then_gets_the_built_image() {
    let plane = shared();
    let lease_ns = plane.create_namespace("gate-lease");
    let served = ServedWebhook::start(plane, "gate", controller_args(&lease_ns, &[])).expect("webhook");
    let ns = served.create_namespace("gate");
    plugin(plane, &["create", "app", "--selector", "gated-app", "-n", &ns]);
    // The webhook's cache must know the (unbuilt) map before the Pod is created.
    wait_until_admitted(plane, &ns, "gated-app", |pod| gates(pod).contains(&GATE.to_string()));

    let warnings = run_pod(plane, &ns, "web", "gated-app");
    assert!(warnings.contains("held by scheduling gate"), "{warnings}");
    let pod = get_pod(plane, &ns, "web");
    assert_eq!(gates(&pod), [GATE]);
    assert_eq!(pod["spec"]["containers"][0]["image"], "gated-app");

    plugin(plane, &["set-image", "app", "localhost:5000/gated-app:tilt-1", "-n", &ns]);
    let released = poll(Duration::from_secs(30), Duration::from_millis(200), || {
        let pod = get_pod(plane, &ns, "web");
        gates(&pod).is_empty().then_some(pod)
    })
    .expect("gate removed after set-image");
    assert_eq!(released["spec"]["containers"][0]["image"], "localhost:5000/gated-app:tilt-1");
    assert!(released["metadata"]["annotations"]["imagemap.tilt.dev/swaps"]
        .as_str()
        .expect("swap recorded")
        .contains("gated-app:tilt-1"));
    assert!(released["metadata"]["labels"].get("imagemap.tilt.dev/gated").is_none());
    let swapped = poll(Duration::from_secs(10), Duration::from_millis(200), || {
        let e = events(plane, &ns, "ImageMapSwapped");
        (!e.is_empty()).then_some(e)
    })
    .expect("an Event records the swap");
    assert_eq!(swapped.len(), 1, "one replica acted once");
}

/// A user whose rights are the controller's for `--gate-unbuilt`, except that it may list
/// ImageMaps but not watch them.
const LAGGING_USER: &str = "imagemap-e2e-lagging-controller";

const LAGGING_RBAC: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: imagemap-e2e-lagging-controller}
rules:
  - {apiGroups: [tilt.dev], resources: [imagemaps], verbs: [get, list]}
  - {apiGroups: [""], resources: [pods], verbs: [list, watch, patch]}
  - {apiGroups: [events.k8s.io], resources: [events], verbs: [create, patch]}
  - {apiGroups: [coordination.k8s.io], resources: [leases], verbs: [get, create, update]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: imagemap-e2e-lagging-controller}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: imagemap-e2e-lagging-controller}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: imagemap-e2e-lagging-controller}]
"#;

/// A watch may deliver a gated Pod to the controller before the map it waits for, so the
/// controller's cache can lack a map the Pod needs. Made certain here: the controller's user may
/// list ImageMaps but not watch them, so its cache keeps its first (empty) list. The Pod stays
/// gated, and the build releases it, because a release is decided on maps read again from the
/// API server. Its own plane: no other test's controller acts on the Pod.
#[test]
fn a_gated_pod_stays_gated_while_the_controllers_cache_has_not_seen_its_map() {
    let plane = ControlPlane::start(ControlPlaneOptions::default()).expect("plane");
    plane.apply_yaml(LAGGING_RBAC);
    let kubeconfig = plane.dir().join("lagging.kubeconfig");
    imagemap_e2e::kubeconfig::impersonating(plane.kubeconfig_path(), LAGGING_USER, &kubeconfig)
        .expect("an impersonating kubeconfig");
    let lease_ns = plane.create_namespace("lagging-lease");
    let mut options = controller_args(&lease_ns, &["--log-level", "info,imagemap_webhook::controller=debug"]);
    options.controller_kubeconfig = Some(kubeconfig);
    let served = ServedWebhook::start(&plane, "lagging", options).expect("webhook");
    let controller = served.webhook().controller().expect("a controller");
    let ns = served.create_namespace("lagging");
    plugin(&plane, &["create", "web", "--selector", "lagging-web", "-n", &ns]);
    wait_until_admitted(&plane, &ns, "lagging-web", |pod| gates(pod).contains(&GATE.to_string()));
    run_pod(&plane, &ns, "early", "lagging-web");

    // The controller's cache does not follow the maps, and the controller looked at the Pod.
    let seen = poll(Duration::from_secs(30), Duration::from_millis(200), || {
        let log = controller.log_tail(200);
        (log.contains("ImageMap watch failed") && log.contains(&format!("pod={ns}/early"))).then_some(log)
    });
    let log = seen.unwrap_or_else(|| panic!("the controller's log:\n{}", controller.log_tail(200)));
    assert!(log.contains("the ImageMap cache is behind the API server; the Pod stays gated"), "{log}");
    assert_eq!(gates(&get_pod(&plane, &ns, "early")), [GATE], "{log}");

    // Built: the cache still knows no map, the read from the API server does.
    plugin(&plane, &["set-image", "web", "localhost:5000/lagging-web:tilt-1", "-n", &ns]);
    let released = poll(Duration::from_secs(30), Duration::from_millis(200), || {
        let pod = get_pod(&plane, &ns, "early");
        gates(&pod).is_empty().then_some(pod)
    })
    .unwrap_or_else(|| panic!("released once built; the controller's log:\n{}", controller.log_tail(200)));
    assert_eq!(released["spec"]["containers"][0]["image"], "localhost:5000/lagging-web:tilt-1");
    poll(Duration::from_secs(10), Duration::from_millis(200), || {
        (!events(&plane, &ns, "ImageMapSwapped").is_empty()).then_some(())
    })
    .expect("an Event records the swap");
}

#[test]
fn a_gated_pod_is_released_unchanged_after_the_timeout_and_when_its_map_is_deleted() {
    let plane =
        ControlPlane::start(ControlPlaneOptions { controller_manager: true, ..Default::default() }).expect("plane");
    let lease_ns = plane.create_namespace("timeout-lease");
    let served = ServedWebhook::start(&plane, "timeout", controller_args(&lease_ns, &["--gate-timeout", "3s"]))
        .expect("webhook");
    let ns = served.create_namespace("timeout");
    plugin(&plane, &["create", "slow", "--selector", "slow-app", "-n", &ns]);
    wait_until_admitted(&plane, &ns, "slow-app", |pod| !gates(pod).is_empty());
    run_pod(&plane, &ns, "waits", "slow-app");
    assert_eq!(gates(&get_pod(&plane, &ns, "waits")), [GATE]);
    let released = poll(Duration::from_secs(30), Duration::from_millis(200), || {
        let pod = get_pod(&plane, &ns, "waits");
        gates(&pod).is_empty().then_some(pod)
    })
    .expect("released after the timeout");
    assert_eq!(released["spec"]["containers"][0]["image"], "slow-app", "original image kept");
    let timeouts = poll(Duration::from_secs(10), Duration::from_millis(200), || {
        let e = events(&plane, &ns, "ImageMapGateTimeout");
        (!e.is_empty()).then_some(e)
    })
    .expect("a Warning Event");
    assert_eq!(timeouts[0]["type"], "Warning");

    // A gated Pod whose map is deleted is released too (well before the timeout).
    let plane2 = &plane;
    run_pod(plane2, &ns, "orphan", "slow-app");
    assert_eq!(gates(&get_pod(plane2, &ns, "orphan")), [GATE]);
    plugin(plane2, &["delete", "slow", "-n", &ns]);
    let released = poll(Duration::from_secs(30), Duration::from_millis(100), || {
        let pod = get_pod(plane2, &ns, "orphan");
        gates(&pod).is_empty().then_some(pod)
    })
    .expect("released when the map is gone");
    assert_eq!(released["spec"]["containers"][0]["image"], "slow-app");
}

#[test]
fn a_rebuild_rolls_a_deployment_to_new_pods_with_the_new_image() {
    let plane = shared();
    let lease_ns = plane.create_namespace("rebuild-lease");
    let served = ServedWebhook::start(plane, "rebuild", controller_args(&lease_ns, &[])).expect("webhook");
    let ns = served.create_namespace("rebuild");
    deploy_build_1(plane, &ns);
    plugin(plane, &["set-image", "api", "reg.io/api:build-2", "-n", &ns]);
    wait_for_deployment_image(plane, &ns, "reg.io/api:build-2").expect("the Deployment rolled to a Pod with build-2");
    let restarted = restarted_at(plane, &ns);
    assert!(!restarted.is_empty(), "restarted like kubectl rollout restart");
    let desc = plugin(plane, &["describe", "api", "-n", &ns]);
    assert!(desc.contains("Restarted") && desc.contains("deployment/api"), "describe shows what it restarted:\n{desc}");

    // On demand, too.
    let out = plugin(plane, &["rollout", "api", "-n", &ns]);
    assert!(out.contains("deployment.apps/api restarted"), "{out}");
}

/// A map `api` (selector `api-server`) built as `reg.io/api:build-1`, and a Deployment `api`
/// written with the plain name whose Pod got build 1.
fn deploy_build_1(plane: &ControlPlane, ns: &str) {
    plugin(plane, &["set-image", "api", "reg.io/api:build-1", "--create", "--selector", "api-server", "-n", ns]);
    wait_until_admitted(plane, ns, "api-server", |pod| pod["spec"]["containers"][0]["image"] == "reg.io/api:build-1");
    plane.kubectl_ok(["create", "deployment", "api", "-n", ns, "--image=api-server", "--replicas=1"]);
    wait_for_deployment_image(plane, ns, "reg.io/api:build-1").expect("first Pod swapped to build-1");
}

/// Waits until a Pod of the Deployment `api` has `image`.
fn wait_for_deployment_image(plane: &ControlPlane, ns: &str, image: &str) -> Option<()> {
    poll(Duration::from_secs(60), Duration::from_millis(300), || {
        deployment_images(plane, ns).iter().any(|i| i == image).then_some(())
    })
}

/// The Deployment `api`'s Pods' first container images in `ns`.
fn deployment_images(plane: &ControlPlane, ns: &str) -> Vec<String> {
    let list: Value = serde_json::from_str(&plane.kubectl_ok(["get", "pods", "-n", ns, "-l", "app=api", "-o", "json"]))
        .expect("pods");
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["spec"]["containers"][0]["image"].as_str().map(String::from))
        .collect()
}

fn restarted_at(plane: &ControlPlane, ns: &str) -> String {
    plane.kubectl_ok([
        "get",
        "deployment",
        "api",
        "-n",
        ns,
        "-o",
        "jsonpath={.spec.template.metadata.annotations.kubectl\\.kubernetes\\.io/restartedAt}",
    ])
}

/// Its own plane: on the shared one, another test's leading controller would restart the
/// Deployment while this test asserts that nothing does.
#[test]
fn a_rebuild_made_while_no_replica_leads_is_acted_on_once_one_does() {
    let plane =
        &ControlPlane::start(ControlPlaneOptions { controller_manager: true, ..Default::default() }).expect("plane");
    let lease_ns = plane.create_namespace("idle-lease");
    // Another replica holds the Lease for an hour: this one serves reviews but does not lead.
    plane.apply_yaml(&format!(
        "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata:\n  name: imagemap-controller\n  namespace: {lease_ns}\n\
         spec:\n  holderIdentity: another-replica\n  leaseDurationSeconds: 3600\n  renewTime: \"2099-01-01T00:00:00.000000Z\"\n"
    ));
    let served = ServedWebhook::start(plane, "idle", controller_args(&lease_ns, &[])).expect("webhook");
    let ns = served.create_namespace("idle");
    deploy_build_1(plane, &ns);

    plugin(plane, &["set-image", "api", "reg.io/api:build-2", "-n", &ns]);
    // The replica has seen build 2 (its reviews use it) and has had several rounds to act on it.
    wait_until_admitted(plane, &ns, "api-server", |pod| pod["spec"]["containers"][0]["image"] == "reg.io/api:build-2");
    std::thread::sleep(Duration::from_secs(2));
    assert!(restarted_at(plane, &ns).is_empty(), "nothing restarts while no replica leads");
    assert!(!served.webhook().log().contains("leading=true"), "{}", served.webhook().log());

    // The other replica goes away: this one takes the Lease and restarts the Deployment.
    plane.kubectl_ok(["delete", "lease", "imagemap-controller", "-n", &lease_ns]);
    wait_for_deployment_image(plane, &ns, "reg.io/api:build-2")
        .expect("the Deployment rolled to a Pod with build-2 once a replica led");
    let record = plane.kubectl_ok([
        "get",
        "deployment",
        "api",
        "-n",
        &ns,
        "-o",
        "jsonpath={.spec.template.metadata.annotations.imagemap\\.tilt\\.dev/restarted-for}",
    ]);
    let record: Value = serde_json::from_str(&record).expect("the restart is recorded on the template");
    assert_eq!(record[format!("{ns}/api")], "reg.io/api:build-2");
    // Restarted once: the old Pods still running build-1 do not restart it again.
    let first = restarted_at(plane, &ns);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(restarted_at(plane, &ns), first, "one restart per build");
}

#[test]
fn two_replicas_never_both_act_one_holds_the_lease() {
    let plane =
        ControlPlane::start(ControlPlaneOptions { controller_manager: true, ..Default::default() }).expect("plane");
    let lease_ns = plane.create_namespace("lease");
    let a =
        ServedWebhook::start(&plane, "replica-a", controller_args(&lease_ns, &["--identity", "replica-a"])).expect("a");
    let b = imagemap_e2e::Webhook::start(&plane, controller_args(&lease_ns, &["--identity", "replica-b"])).expect("b");
    let holder = poll(Duration::from_secs(30), Duration::from_millis(200), || {
        let out = plane.kubectl([
            "get",
            "lease",
            "imagemap-controller",
            "-n",
            &lease_ns,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ]);
        let h = String::from_utf8_lossy(&out.stdout).to_string();
        (!h.is_empty()).then_some(h)
    })
    .expect("a lease holder");
    assert!(holder == "replica-a" || holder == "replica-b", "{holder}");
    let ns = a.create_namespace("lease-pods");
    plugin(&plane, &["create", "app", "--selector", "lease-app", "-n", &ns]);
    wait_until_admitted(&plane, &ns, "lease-app", |pod| !gates(pod).is_empty());
    for i in 0..3 {
        run_pod(&plane, &ns, &format!("p{i}"), "lease-app");
    }
    plugin(&plane, &["set-image", "app", "reg.io/lease-app:1", "-n", &ns]);
    for i in 0..3 {
        poll(Duration::from_secs(30), Duration::from_millis(200), || {
            gates(&get_pod(&plane, &ns, &format!("p{i}"))).is_empty().then_some(())
        })
        .expect("released");
    }
    std::thread::sleep(Duration::from_secs(2));
    let swapped = events(&plane, &ns, "ImageMapSwapped");
    assert_eq!(swapped.len(), 3, "exactly one release per Pod: {swapped:?}");
    let reporters: std::collections::BTreeSet<&str> =
        swapped.iter().filter_map(|e| e["reportingInstance"].as_str()).collect();
    assert_eq!(reporters.len(), 1, "one replica did all the work: {reporters:?}");
    assert!(reporters.contains(holder.as_str()), "the lease holder acted: {reporters:?} vs {holder}");
    let leading_a = a.webhook().log().contains("leading=true");
    let leading_b = b.log().contains("leading=true");
    assert!(leading_a ^ leading_b, "exactly one replica led (a: {leading_a}, b: {leading_b})");
}

fn lease_holder(plane: &ControlPlane, lease_ns: &str) -> String {
    let out =
        plane.kubectl(["get", "lease", "imagemap-controller", "-n", lease_ns, "-o", "jsonpath={.spec.holderIdentity}"]);
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn a_stopped_leader_releases_its_lease_and_the_other_replica_takes_over() {
    let plane = shared();
    let lease_ns = plane.create_namespace("handover");
    let mut a =
        imagemap_e2e::Webhook::start(plane, controller_args(&lease_ns, &["--identity", "replica-a"])).expect("a");
    poll(Duration::from_secs(30), Duration::from_millis(200), || {
        (lease_holder(plane, &lease_ns) == "replica-a").then_some(())
    })
    .expect("replica-a, alone, leads");
    let b = imagemap_e2e::Webhook::start(plane, controller_args(&lease_ns, &["--identity", "replica-b"])).expect("b");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(lease_holder(plane, &lease_ns), "replica-a", "b follows while a renews");

    let stopped = std::time::Instant::now();
    a.stop(); // SIGTERM, and waits for the exit
    assert_ne!(lease_holder(plane, &lease_ns), "replica-a", "released before exiting:\n{}", a.log_tail(20));
    assert!(a.log().contains("Lease released"), "{}", a.log_tail(20));
    poll(Duration::from_secs(30), Duration::from_millis(50), || {
        (lease_holder(plane, &lease_ns) == "replica-b").then_some(())
    })
    .expect("replica-b takes over");
    eprintln!("handover after SIGTERM: {:.2?}", stopped.elapsed());
    assert!(b.log().contains("leading=true"), "{}", b.log_tail(20));
}

#[test]
fn a_live_holder_whose_clock_is_an_hour_behind_keeps_the_lease_until_it_stops_renewing() {
    let plane = shared();
    let lease_ns = plane.create_namespace("skew");
    let lease = |renew: &str| {
        format!(
            "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata:\n  name: imagemap-controller\n  namespace: {lease_ns}\n\
             spec:\n  holderIdentity: skewed\n  leaseDurationSeconds: 15\n  renewTime: \"{renew}\"\n"
        )
    };
    // By the wall clock this Lease expired long ago; by its changes it is alive.
    plane.apply_yaml(&lease("2020-01-01T00:00:00.000000Z"));
    let webhook =
        imagemap_e2e::Webhook::start(plane, controller_args(&lease_ns, &["--identity", "local"])).expect("webhook");
    for i in 1..=6 {
        std::thread::sleep(Duration::from_secs(1));
        plane.apply_yaml(&lease(&format!("2020-01-01T00:00:{:02}.000000Z", i * 2)));
        assert_eq!(lease_holder(plane, &lease_ns), "skewed", "round {i}: the live holder keeps the Lease");
    }
    assert!(!webhook.log().contains("leading=true"), "{}", webhook.log_tail(20));
    // The holder stops renewing: its record expires by this replica's clock, which takes over.
    poll(Duration::from_secs(60), Duration::from_millis(200), || {
        (lease_holder(plane, &lease_ns) == "local").then_some(())
    })
    .expect("the replica takes over a Lease that stopped changing");
}
