//! The real `imagemap-webhook` binary behind a real kube-apiserver (DESIGN §5-9): Pods created
//! with kubectl, by a Deployment's ReplicaSet, or dry-run on the server are swapped according to
//! ImageMaps whose status is set through the status subresource, and nothing breaks when a map
//! is missing, unbuilt, in another namespace, or when the webhook is down.
//!
//! Needs the webhook binary: `cargo build --workspace --bins` first (`make test` does).

use std::collections::BTreeSet;
use std::process::Output;
use std::time::{Duration, Instant};

use imagemap_e2e::kubectl::text;
use imagemap_e2e::webhook::{container, dry_run_create, image_map, pod, set_status, swaps, SWAPS_ANNOTATION};
use imagemap_e2e::{poll, register, shared, shared_webhook, ControlPlane, ServedWebhook, WebhookOptions};
use serde_json::{json, Value};

/// How long the webhook's cache may take to see an ImageMap change (a watch event: normally
/// milliseconds).
const CACHE_TIMEOUT: Duration = Duration::from_secs(30);

/// Where `captures_the_admission_review_the_api_server_sends` writes the review when
/// `IMAGEMAP_CAPTURE_REVIEW=1`.
const CAPTURE_PATH: &str = "/tmp/captured-review.json";

/// `kubectl apply -f -` of `object`; panics on failure, returns the output (stderr carries the
/// API server's warnings).
fn apply(plane: &ControlPlane, object: &Value) -> Output {
    let output =
        plane.kubectl_client().run_with_stdin(["apply", "-f", "-"], Some(&object.to_string())).expect("kubectl runs");
    assert!(output.status.success(), "kubectl apply failed: {}{}", text(&output.stderr), text(&output.stdout));
    output
}

/// The `Warning: ...` lines kubectl printed (the texts after the prefix).
fn warnings(output: &Output) -> Vec<String> {
    text(&output.stderr).lines().filter_map(|l| l.strip_prefix("Warning: ")).map(str::to_string).collect()
}

/// The stored object, as `kubectl get -o json` prints it.
fn get(plane: &ControlPlane, kind: &str, namespace: &str, name: &str) -> Value {
    let out = plane.kubectl_ok(["get", kind, name, "--namespace", namespace, "--output", "json"]);
    serde_json::from_str(&out).expect("kubectl get printed JSON")
}

/// Creates an ImageMap with `kubectl apply` (with `spec` merged over the selector) and, if
/// given, publishes `status` through the status subresource.
fn create_map(plane: &ControlPlane, ns: &str, name: &str, spec: Value, status: Option<Value>) {
    let mut map = image_map(ns, name, "");
    map["spec"] = spec;
    apply(plane, &map);
    if let Some(status) = status {
        set_status(plane.kubectl_client(), ns, name, &status).expect("set the ImageMap's status");
    }
}

/// Polls a server-side dry-run create of a one-container Pod with `image` in `ns` until the
/// webhook gives it `expected` (the webhook's cache has caught up); panics with the webhook's
/// log otherwise.
fn wait_until_dry_run_gives(plane: &ControlPlane, served: &ServedWebhook, ns: &str, image: &str, expected: &str) {
    let probe = pod(ns, "cache-probe", &[container("app", image)]);
    let started = Instant::now();
    let mut last = String::new();
    let reached =
        poll(CACHE_TIMEOUT, Duration::from_millis(200), || match dry_run_create(plane.kubectl_client(), &probe) {
            Ok(created) => {
                last = created["spec"]["containers"][0]["image"].to_string();
                (created["spec"]["containers"][0]["image"] == expected).then_some(())
            }
            Err(e) => {
                last = format!("{e:#}");
                None
            }
        });
    assert!(
        reached.is_some(),
        "a dry-run Pod with image {image} in {ns} did not get {expected} within {:.1?} (last: {last}); webhook log:\n{}",
        started.elapsed(),
        served.webhook().log_tail(30)
    );
}

fn records(pod: &Value) -> BTreeSet<(String, String, String, String)> {
    swaps(pod)
        .iter()
        .map(|r| {
            let field = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            (field("field"), field("original"), field("image"), field("imageMap"))
        })
        .collect()
}

#[test]
fn kubectl_apply_swaps_containers_init_containers_env_and_overrides_from_the_map_status() {
    let plane = shared();
    let served = shared_webhook();
    let ns = served.create_namespace("apply");
    create_map(
        plane,
        &ns,
        "my-app",
        json!({
            "selector": "my-app",
            "matchInEnvVars": true,
            "overrideCommand": {"command": ["/app", "--serve"]},
            "overrideArgs": {"args": []},
        }),
        // imageFromLocal is how the developer's machine sees the image: never injected.
        Some(json!({"image": "localhost:5000/my-app:tilt-1", "imageFromLocal": "127.0.0.1:5001/my-app:local"})),
    );
    wait_until_dry_run_gives(plane, served, &ns, "my-app", "localhost:5000/my-app:tilt-1");

    let output = apply(
        plane,
        &json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web", "namespace": ns},
            "spec": {
                "initContainers": [
                    {"name": "migrate", "image": "my-app:dev", "args": ["migrate"]},
                ],
                "containers": [
                    {
                        "name": "app",
                        "image": "my-app",
                        "command": ["/old"],
                        "args": ["--old"],
                        "env": [
                            {"name": "APP_IMAGE", "value": "docker.io/library/my-app:1.0"},
                            {"name": "SUFFIX", "value": "my-app-suffix"},
                            {"name": "OTHER", "value": "busybox"},
                            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        ],
                    },
                    {"name": "sidecar", "image": "busybox:1.36", "imagePullPolicy": "Always"},
                ],
            },
        }),
    );

    // What the API server stored (so the JSON patch was accepted as sent).
    let stored = get(plane, "pod", &ns, "web");
    let spec = &stored["spec"];
    let target = "localhost:5000/my-app:tilt-1";
    let app = &spec["containers"][0];
    assert_eq!(app["image"], target, "{app}");
    assert_eq!(
        app["imagePullPolicy"], "IfNotPresent",
        "an untagged image defaults to Always; the webhook sets IfNotPresent"
    );
    assert_eq!(app["command"], json!(["/app", "--serve"]), "overrideCommand replaces command");
    assert!(app.get("args").is_none(), "an empty overrideArgs removes args: {app}");
    assert_eq!(app["env"][0]["value"], target, "matchInEnvVars swaps a whole env value");
    assert_eq!(app["env"][1]["value"], "my-app-suffix", "no substring matching");
    assert_eq!(app["env"][2]["value"], "busybox");
    assert_eq!(app["env"][3]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name");
    let migrate = &spec["initContainers"][0];
    assert_eq!(migrate["image"], target, "init containers are swapped: {migrate}");
    assert_eq!(migrate["imagePullPolicy"], "IfNotPresent");
    assert_eq!(migrate["command"], json!(["/app", "--serve"]), "overrides apply to every swapped container");
    assert!(migrate.get("args").is_none(), "{migrate}");
    let sidecar = &spec["containers"][1];
    assert_eq!(sidecar["image"], "busybox:1.36", "unmatched containers are left alone");
    assert_eq!(sidecar["imagePullPolicy"], "Always");

    let id = format!("{ns}/my-app");
    let expected: BTreeSet<_> = [
        ("spec.containers{app}.image", "my-app"),
        ("spec.containers{app}.env{APP_IMAGE}", "docker.io/library/my-app:1.0"),
        ("spec.initContainers{migrate}.image", "my-app:dev"),
    ]
    .into_iter()
    .map(|(field, original)| (field.to_string(), original.to_string(), target.to_string(), id.clone()))
    .collect();
    assert_eq!(records(&stored), expected, "annotation {}", stored["metadata"]["annotations"][SWAPS_ANNOTATION]);

    let warnings = warnings(&output);
    assert!(
        warnings.contains(&format!("image my-app swapped to {target} by ImageMap {id}")),
        "kubectl printed the swap warning: {warnings:?}"
    );
    assert!(warnings.contains(&format!("image my-app:dev swapped to {target} by ImageMap {id}")), "{warnings:?}");
}

#[test]
fn pods_created_by_a_deployment_are_swapped() {
    let plane = shared();
    let served = shared_webhook();
    let ns = served.create_namespace("deployment");
    create_map(
        plane,
        &ns,
        "api",
        json!({"selector": "my-apiserver", "overrideArgs": {"args": ["--dev"]}}),
        Some(json!({"image": "localhost:5000/my-apiserver:tilt-8f2c"})),
    );
    wait_until_dry_run_gives(plane, served, &ns, "my-apiserver", "localhost:5000/my-apiserver:tilt-8f2c");

    apply(
        plane,
        &json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "api", "namespace": ns},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "api"}},
                "template": {
                    "metadata": {"labels": {"app": "api"}},
                    "spec": {"containers": [{"name": "api", "image": "my-apiserver:v1", "args": ["--prod"]}]},
                },
            },
        }),
    );
    let pods = poll(Duration::from_secs(60), Duration::from_millis(250), || {
        let out = plane.kubectl_ok(["get", "pods", "--namespace", &ns, "--selector", "app=api", "--output", "json"]);
        let list: Value = serde_json::from_str(&out).expect("JSON");
        let items = list["items"].as_array().cloned().unwrap_or_default();
        (items.len() == 2).then_some(items)
    })
    .expect("the ReplicaSet controller created 2 Pods");
    for p in &pods {
        let c = &p["spec"]["containers"][0];
        assert_eq!(c["image"], "localhost:5000/my-apiserver:tilt-8f2c", "{}", p["metadata"]["name"]);
        assert_eq!(c["imagePullPolicy"], "IfNotPresent");
        assert_eq!(c["args"], json!(["--dev"]));
        assert!(
            p["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet",
            "created by the ReplicaSet controller: {}",
            p["metadata"]
        );
        let recs = swaps(p);
        assert_eq!(recs.len(), 1, "{recs:?}");
        assert_eq!(recs[0]["original"], "my-apiserver:v1");
        assert_eq!(recs[0]["imageMap"], format!("{ns}/api"));
    }
    // The Deployment's own template is not touched: only Pods are mutated.
    let deployment = get(plane, "deployment", &ns, "api");
    assert_eq!(deployment["spec"]["template"]["spec"]["containers"][0]["image"], "my-apiserver:v1");
}

#[test]
fn a_status_update_changes_the_next_pod_and_deleting_the_map_stops_the_swap() {
    let plane = shared();
    let served = shared_webhook();
    let ns = served.create_namespace("lifecycle");
    create_map(plane, &ns, "app", json!({"selector": "app"}), Some(json!({"image": "reg.io/app:t1"})));
    wait_until_dry_run_gives(plane, served, &ns, "app:v0", "reg.io/app:t1");
    apply(plane, &pod(&ns, "first", &[container("c", "app:v0")]));
    assert_eq!(get(plane, "pod", &ns, "first")["spec"]["containers"][0]["image"], "reg.io/app:t1");

    // A new build: imageFromCluster (how the cluster reaches it) wins over image.
    set_status(
        plane.kubectl_client(),
        &ns,
        "app",
        &json!({"image": "localhost:5000/app:t2", "imageFromCluster": "registry.svc:5000/app:t2"}),
    )
    .expect("status");
    wait_until_dry_run_gives(plane, served, &ns, "app:v0", "registry.svc:5000/app:t2");
    apply(plane, &pod(&ns, "second", &[container("c", "app:v0")]));
    assert_eq!(get(plane, "pod", &ns, "second")["spec"]["containers"][0]["image"], "registry.svc:5000/app:t2");
    assert_eq!(
        get(plane, "pod", &ns, "first")["spec"]["containers"][0]["image"],
        "reg.io/app:t1",
        "existing Pods are not touched"
    );

    plane.kubectl_ok(["delete", "imagemap", "app", "--namespace", &ns]);
    wait_until_dry_run_gives(plane, served, &ns, "app:v0", "app:v0");
    let output = apply(plane, &pod(&ns, "third", &[container("c", "app:v0")]));
    let third = get(plane, "pod", &ns, "third");
    assert_eq!(third["spec"]["containers"][0]["image"], "app:v0");
    assert!(third["metadata"]["annotations"].get(SWAPS_ANNOTATION).is_none(), "{}", third["metadata"]);
    assert!(warnings(&output).is_empty(), "{:?}", warnings(&output));
}

#[test]
fn a_map_never_changes_pods_in_another_namespace() {
    let plane = shared();
    let served = shared_webhook();
    let ns_a = served.create_namespace("isolation-a");
    let ns_b = served.create_namespace("isolation-b");
    create_map(
        plane,
        &ns_a,
        "app",
        json!({"selector": "app", "matchInEnvVars": true}),
        Some(json!({"image": "reg.io/app:a"})),
    );
    // The webhook has the map: it swaps in A...
    wait_until_dry_run_gives(plane, served, &ns_a, "app", "reg.io/app:a");
    // ...and leaves B alone, containers and env alike, with no warning.
    let mut in_b = pod(&ns_b, "web", &[container("c", "app")]);
    in_b["spec"]["containers"][0]["env"] = json!([{"name": "IMG", "value": "app"}]);
    let output = apply(plane, &in_b);
    let stored = get(plane, "pod", &ns_b, "web");
    assert_eq!(stored["spec"]["containers"][0]["image"], "app");
    assert_eq!(stored["spec"]["containers"][0]["env"][0]["value"], "app");
    assert!(swaps(&stored).is_empty(), "{}", stored["metadata"]);
    assert!(warnings(&output).is_empty(), "{:?}", warnings(&output));
}

#[test]
fn maps_in_the_global_namespace_apply_to_every_served_namespace_below_local_ones() {
    let plane = shared();
    let global = plane.create_namespace("global-maps");
    let served = ServedWebhook::start(
        plane,
        "global",
        WebhookOptions { global_namespace: Some(global.clone()), ..WebhookOptions::default() },
    )
    .expect("a webhook with --global-namespace");
    let ns = served.create_namespace("global-consumer");
    create_map(
        plane,
        &global,
        "shared-app",
        json!({"selector": "shared-app"}),
        Some(json!({"image": "reg.io/shared-app:g"})),
    );
    create_map(plane, &global, "db", json!({"selector": "db"}), Some(json!({"image": "reg.io/db:g"})));
    wait_until_dry_run_gives(plane, &served, &ns, "shared-app", "reg.io/shared-app:g");

    // A local map beats the global one for the same image.
    create_map(plane, &ns, "local-db", json!({"selector": "db"}), Some(json!({"image": "reg.io/db:local"})));
    wait_until_dry_run_gives(plane, &served, &ns, "db", "reg.io/db:local");

    apply(plane, &pod(&ns, "web", &[container("app", "shared-app:1"), container("db", "db:1")]));
    let stored = get(plane, "pod", &ns, "web");
    assert_eq!(stored["spec"]["containers"][0]["image"], "reg.io/shared-app:g");
    assert_eq!(stored["spec"]["containers"][1]["image"], "reg.io/db:local");
    let by_map: BTreeSet<String> =
        swaps(&stored).iter().map(|r| r["imageMap"].as_str().unwrap_or_default().to_string()).collect();
    assert_eq!(by_map, BTreeSet::from([format!("{global}/shared-app"), format!("{ns}/local-db")]));

    // The shared webhook has no --global-namespace: the same maps mean nothing to its namespaces.
    let shared_served = shared_webhook();
    let other = shared_served.create_namespace("not-global");
    apply(plane, &pod(&other, "web", &[container("app", "shared-app:1")]));
    assert_eq!(get(plane, "pod", &other, "web")["spec"]["containers"][0]["image"], "shared-app:1");
}

#[test]
fn admits_a_pod_unchanged_with_a_warning_when_its_map_has_no_built_image() {
    let plane = shared();
    let served = shared_webhook();
    let ns = served.create_namespace("unbuilt");
    create_map(plane, &ns, "app", json!({"selector": "app"}), None);
    let warning =
        format!("ImageMap {ns}/app matches app:1 but has no built image yet (status.image is empty); left unchanged");
    // Wait until the webhook's cache has the map (the dry run warns).
    let probe = pod(&ns, "probe", &[container("c", "app:1")]).to_string();
    let seen = poll(CACHE_TIMEOUT, Duration::from_millis(200), || {
        let output = plane
            .kubectl_client()
            .run_with_stdin(["create", "--dry-run=server", "-o", "json", "-f", "-"], Some(&probe))
            .expect("kubectl runs");
        warnings(&output).contains(&warning).then_some(())
    });
    assert!(seen.is_some(), "no warning {warning:?}; webhook log:\n{}", served.webhook().log_tail(30));

    let output = apply(plane, &pod(&ns, "web", &[container("c", "app:1")]));
    assert_eq!(warnings(&output), vec![warning], "stderr: {}", text(&output.stderr));
    let stored = get(plane, "pod", &ns, "web");
    assert_eq!(stored["spec"]["containers"][0]["image"], "app:1");
    assert_eq!(
        stored["spec"]["containers"][0]["imagePullPolicy"], "IfNotPresent",
        "the API server's default for a tagged image"
    );
    assert!(swaps(&stored).is_empty(), "{}", stored["metadata"]);
}

#[test]
fn a_server_side_dry_run_is_swapped_and_stores_nothing() {
    let plane = shared();
    let served = shared_webhook();
    let ns = served.create_namespace("dry-run");
    create_map(plane, &ns, "app", json!({"selector": "app"}), Some(json!({"image": "reg.io/app:dry"})));
    wait_until_dry_run_gives(plane, served, &ns, "app", "reg.io/app:dry");

    let output = plane
        .kubectl_client()
        .run_with_stdin(
            ["create", "--dry-run=server", "-o", "json", "-f", "-"],
            Some(&pod(&ns, "ghost", &[container("c", "app")]).to_string()),
        )
        .expect("kubectl runs");
    assert!(output.status.success(), "{}", text(&output.stderr));
    let returned: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(returned["spec"]["containers"][0]["image"], "reg.io/app:dry");
    assert_eq!(returned["spec"]["containers"][0]["imagePullPolicy"], "IfNotPresent");
    assert_eq!(swaps(&returned).len(), 1, "{}", returned["metadata"]);
    assert!(
        warnings(&output).contains(&format!("image app swapped to reg.io/app:dry by ImageMap {ns}/app")),
        "{:?}",
        warnings(&output)
    );

    let get = plane.kubectl(["get", "pod", "ghost", "--namespace", &ns]);
    assert!(!get.status.success());
    assert!(text(&get.stderr).contains("NotFound"), "{}", text(&get.stderr));
}

#[test]
fn pods_are_created_unchanged_while_the_webhook_is_down_and_swapped_again_after_a_restart() {
    let plane = shared();
    let mut served = ServedWebhook::start(plane, "down", WebhookOptions::default()).expect("a webhook of its own");
    let ns = served.create_namespace("down");
    create_map(plane, &ns, "app", json!({"selector": "app"}), Some(json!({"image": "reg.io/app:up"})));
    wait_until_dry_run_gives(plane, &served, &ns, "app", "reg.io/app:up");

    served.webhook_mut().kill();
    assert!(!served.webhook().is_ready());
    let started = Instant::now();
    apply(plane, &pod(&ns, "while-down", &[container("c", "app")]));
    let took = started.elapsed();
    let stored = get(plane, "pod", &ns, "while-down");
    assert_eq!(stored["spec"]["containers"][0]["image"], "app", "failurePolicy: Ignore admits the Pod as is");
    assert!(swaps(&stored).is_empty());
    assert!(took < Duration::from_secs(10), "a refused connection fails fast, took {took:?}");

    served.webhook_mut().restart().expect("restart");
    wait_until_dry_run_gives(plane, &served, &ns, "app", "reg.io/app:up");
    apply(plane, &pod(&ns, "after-restart", &[container("c", "app")]));
    assert_eq!(get(plane, "pod", &ns, "after-restart")["spec"]["containers"][0]["image"], "reg.io/app:up");
}

/// Runs a webhook that logs request bodies (`--log-level debug`, JSON lines), creates one Pod,
/// and checks the AdmissionReview the API server sent. With `IMAGEMAP_CAPTURE_REVIEW=1` it is
/// also written to [`CAPTURE_PATH`], e.g. to refresh the webhook's test fixture.
#[test]
fn captures_the_admission_review_the_api_server_sends() {
    let plane = shared();
    let served = ServedWebhook::start(
        plane,
        "capture",
        WebhookOptions {
            extra_args: ["--log-level", "debug", "--log-format", "json"].map(String::from).to_vec(),
            ..WebhookOptions::default()
        },
    )
    .expect("a debug-logging webhook");
    let ns = served.create_namespace("capture");
    create_map(
        plane,
        &ns,
        "my-apiserver",
        json!({"selector": "my-apiserver", "matchInEnvVars": true}),
        Some(json!({"image": "localhost:5000/my-apiserver:tilt-1"})),
    );
    wait_until_dry_run_gives(plane, &served, &ns, "my-apiserver", "localhost:5000/my-apiserver:tilt-1");
    let mut web = pod(&ns, "web", &[container("web", "my-apiserver:dev"), container("sidecar", "busybox:1.36")]);
    web["metadata"]["labels"] = json!({"run": "web"});
    web["spec"]["containers"][0]["env"] = json!([{"name": "SELF", "value": "my-apiserver:dev"}]);
    web["spec"]["initContainers"] = json!([{"name": "migrate", "image": "my-apiserver:dev", "command": ["/migrate"]}]);
    apply(plane, &web);

    let (raw, review) = poll(Duration::from_secs(10), Duration::from_millis(100), || {
        served.webhook().log().lines().find_map(|line| {
            let entry: Value = serde_json::from_str(line).ok()?;
            let raw = entry.get("body")?.as_str()?;
            let body: Value = serde_json::from_str(raw).ok()?;
            let request = &body["request"];
            (request["namespace"] == ns.as_str() && request["name"] == "web" && request["dryRun"] != true)
                .then(|| (raw.to_string(), body))
        })
    })
    .unwrap_or_else(|| panic!("no logged request body for {ns}/web; log:\n{}", served.webhook().log_tail(20)));

    let request = &review["request"];
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(review["kind"], "AdmissionReview");
    assert!(request["uid"].as_str().is_some_and(|u| !u.is_empty()), "{request}");
    assert_eq!(request["kind"], json!({"group": "", "version": "v1", "kind": "Pod"}));
    assert_eq!(request["resource"], json!({"group": "", "version": "v1", "resource": "pods"}));
    assert_eq!(request["operation"], "CREATE");
    assert_eq!(request["object"]["spec"]["containers"][0]["image"], "my-apiserver:dev", "the original Pod");
    assert_eq!(
        request["object"]["spec"]["containers"][0]["imagePullPolicy"], "IfNotPresent",
        "the API server defaults before mutating admission"
    );
    assert!(request["oldObject"].is_null(), "{}", request["oldObject"]);
    assert_eq!(request["options"]["kind"], "CreateOptions");

    if std::env::var_os("IMAGEMAP_CAPTURE_REVIEW").is_some_and(|v| v == "1") {
        // The bytes as the API server sent them (field order included).
        std::fs::write(CAPTURE_PATH, raw + "\n").expect("write the captured review");
        eprintln!("wrote the captured AdmissionReview to {CAPTURE_PATH}");
    }
}

#[test]
fn swaps_image_volumes_and_their_pull_policy() {
    let plane = shared();
    let served = shared_webhook();
    let ns = served.create_namespace("image-volume");
    create_map(plane, &ns, "data", json!({"selector": "app-data"}), Some(json!({"image": "reg.io/app-data:built"})));
    wait_until_dry_run_gives(plane, served, &ns, "app-data", "reg.io/app-data:built");
    let mut with_volume = pod(&ns, "web", &[container("c", "busybox:1.36")]);
    with_volume["spec"]["volumes"] =
        json!([{"name": "data", "image": {"reference": "app-data:1", "pullPolicy": "Always"}}]);
    with_volume["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "data", "mountPath": "/data"}]);
    apply(plane, &with_volume);
    let stored = get(plane, "pod", &ns, "web");
    let volume = &stored["spec"]["volumes"][0];
    assert_eq!(volume["image"]["reference"], "reg.io/app-data:built", "{volume}");
    assert_eq!(volume["image"]["pullPolicy"], "IfNotPresent");
    assert_eq!(stored["spec"]["containers"][0]["image"], "busybox:1.36");
    let recs = swaps(&stored);
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(recs[0]["field"], "spec.volumes{data}.image.reference");
}

/// Two registrations of the same webhook for one namespace: the API server sends the Pod to
/// the second with the first's patch applied, as on a reinvocation. The second call must change
/// nothing, not even the annotation (DESIGN §5).
#[test]
fn a_second_call_on_an_already_swapped_pod_changes_nothing() {
    let plane = shared();
    let served = ServedWebhook::start(plane, "twice", WebhookOptions::default()).expect("a webhook of its own");
    let again = register(
        plane,
        &format!("{}-again", served.registration().name()),
        &served.webhook().url(),
        served.webhook().ca_pem(),
        served.registration().labels(),
    )
    .expect("a second registration of the same webhook");
    let ns = served.create_namespace("twice");
    create_map(
        plane,
        &ns,
        "app",
        json!({"selector": "app", "matchInEnvVars": true, "overrideArgs": {"args": ["--dev"]}}),
        Some(json!({"image": "reg.io/app:once"})),
    );
    wait_until_dry_run_gives(plane, &served, &ns, "app:v1", "reg.io/app:once");
    let mut web = pod(&ns, "web", &[container("c", "app:v1")]);
    web["spec"]["containers"][0]["env"] = json!([{"name": "IMG", "value": "app:v1"}]);
    let output = apply(plane, &web);
    let stored = get(plane, "pod", &ns, "web");
    let c = &stored["spec"]["containers"][0];
    assert_eq!(c["image"], "reg.io/app:once");
    assert_eq!(c["args"], json!(["--dev"]));
    assert_eq!(c["env"][0]["value"], "reg.io/app:once");
    let id = format!("{ns}/app");
    let expected: BTreeSet<_> = [("spec.containers{c}.image", "app:v1"), ("spec.containers{c}.env{IMG}", "app:v1")]
        .into_iter()
        .map(|(f, o)| (f.to_string(), o.to_string(), "reg.io/app:once".to_string(), id.clone()))
        .collect();
    assert_eq!(records(&stored), expected, "one record per field, originals kept");
    assert_eq!(swaps(&stored).len(), 2, "no duplicate records: {:?}", swaps(&stored));
    // Both calls happened: the first swapped, the second (seeing its output) changed nothing.
    let object = format!("object={ns}/web ");
    let outcomes: Vec<String> = served
        .webhook()
        .log()
        .lines()
        .filter(|l| l.contains(&object))
        .filter_map(|l| l.split_once(" outcome=").map(|(_, rest)| rest.to_string()))
        .filter_map(|rest| rest.split(' ').next().map(|o| o.trim_matches('"').to_string()))
        .collect();
    assert_eq!(outcomes, ["patched", "unchanged"], "webhook log:\n{}", served.webhook().log_tail(10));
    let swapped: Vec<_> = warnings(&output).into_iter().filter(|w| w.contains("swapped")).collect();
    assert_eq!(swapped.len(), 2, "one warning per swapped field: {swapped:?}");
    drop(again);
}
