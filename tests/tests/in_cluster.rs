//! The chart installed for real, in the cluster: `helm install` of `charts/imagemap` with the
//! webhook image that `scripts/image.sh` (`make image`) builds and pushes to the cluster's local
//! registry. Two admission server replicas and one controller (`--role controller`, its own
//! Deployment and ServiceAccount) run on the node with their probes passing; the controller
//! scopes the webhook configuration to the namespaces with maps; the API server calls them
//! through the chart's Service (`clientConfig.service`, dialled at the Service's endpoints, see
//! tests/README.md) and they watch ImageMaps through the API server at the node's gateway
//! (`extraEnv` sets `KUBERNETES_SERVICE_HOST`/`_PORT`: no kube-proxy runs). A real Pod is
//! swapped and runs; `kubectl imagemap doctor` passes; `helm test` passes after install and after
//! upgrade; `helm upgrade` to a new image rolls the replicas while Pods are being admitted, and
//! every one of them is created and swapped;
//! `helm uninstall` leaves nothing of the release. Once with Helm 4, once with Helm 3.
//!
//! Needs root (a node) and the plugin built (`cargo build --workspace --bins`). The image build
//! is the real release build (fat LTO): several minutes when the webhook changed, seconds when
//! cargo has it already.
#![allow(clippy::too_many_lines, reason = "a test reads top to bottom as the scenario it checks")]

use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use imagemap_e2e::binaries::workspace_root;
use imagemap_e2e::helm::{create_namespace_named, succeeded};
use imagemap_e2e::plugin::kubectl_imagemap;
use imagemap_e2e::webhook::{container, dry_run_image, image_map, pod, set_status, wait_for_image, Patience};
use imagemap_e2e::{poll, shared_cluster, Cluster, ControlPlane, Kubectl};
use serde_json::{json, Value};

/// The namespace label a release's webhook configuration selects on (value: the release).
const SCOPE_LABEL: &str = "imagemap-e2e/in-cluster";

/// The image repository in the cluster's registry.
const IMAGE: &str = "imagemap-webhook";

/// Generous deadlines: image pulls, Pod start-up and rolls on a busy two-core machine.
const ROLL_TIMEOUT: Duration = Duration::from_secs(300);
const CHANGE_TIMEOUT: Duration = Duration::from_secs(120);

/// Dry-run Pods (each a kubectl process) every 500 ms for [`CHANGE_TIMEOUT`] at most.
const DRY_RUN_PATIENCE: Patience = Patience { timeout: CHANGE_TIMEOUT, every: Duration::from_millis(500) };

/// `--wait` deadline given to helm.
const HELM_TIMEOUT: &str = "300s";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn json_of(output: &str) -> Value {
    serde_json::from_str(output).unwrap_or_else(|e| panic!("kubectl printed no JSON ({e}):\n{output}"))
}

/// The webhook image, pushed twice: `tag` (install) and `upgrade_tag` (same binary, another
/// time stamp in its config, so another digest).
struct Images {
    repository: String,
    tag: &'static str,
    digest: String,
    upgrade_tag: &'static str,
    upgrade_digest: String,
}

/// Runs `scripts/image.sh ARGS` with `env`; stdout, or a panic with its stderr.
fn image_sh(cluster: &Cluster, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new("bash");
    cmd.arg(workspace_root().join("scripts/image.sh"))
        .args(args)
        .current_dir(workspace_root())
        .env("CRANE", cluster.registry.crane())
        .env("REGISTRY", cluster.registry.address())
        .env("IMAGE", IMAGE)
        .stdin(Stdio::null());
    for (key, value) in env {
        cmd.env(key, value);
    }
    let output = cmd.output().expect("bash runs");
    assert!(
        output.status.success(),
        "scripts/image.sh {args:?} failed ({}):\n{}{}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// `REGISTRY/IMAGE:TAG@sha256:...` on the last line: the digest.
fn pushed_digest(stdout: &str, tag: &str) -> String {
    let last = stdout.lines().last().unwrap_or_default();
    let (reference, digest) = last.split_once('@').unwrap_or_else(|| panic!("no REF@DIGEST in {stdout:?}"));
    assert!(reference.ends_with(&format!("/{IMAGE}:{tag}")), "pushed {reference}, not tag {tag}");
    digest.to_string()
}

/// Builds the release binary (`scripts/image.sh binary`) and pushes it twice, once per test
/// binary.
fn images(cluster: &'static Cluster) -> &'static Images {
    static IMAGES: OnceLock<Images> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let started = Instant::now();
        let built = image_sh(cluster, &["binary"], &[]);
        let built = workspace_root().join(built.lines().last().expect("image.sh binary prints the path").trim());
        let build_time = started.elapsed();
        // A copy: both images hold exactly this binary, even if the target folder changes
        // meanwhile.
        let dir = tempfile::Builder::new().prefix("imagemap-in-cluster-").tempdir().expect("a temporary folder");
        let binary = dir.path().join("imagemap-webhook");
        std::fs::copy(&built, &binary).unwrap_or_else(|e| panic!("copying {}: {e}", built.display()));
        let binary_env = binary.display().to_string();
        let (tag, upgrade_tag) = ("e2e-1", "e2e-2");
        let first = image_sh(cluster, &[], &[("TAG", tag), ("IMAGEMAP_WEBHOOK_BINARY", &binary_env)]);
        let second = image_sh(
            cluster,
            &[],
            &[("TAG", upgrade_tag), ("IMAGEMAP_WEBHOOK_BINARY", &binary_env), ("SOURCE_DATE_EPOCH", "86400")],
        );
        let images = Images {
            repository: format!("{}/{IMAGE}", cluster.registry.address()),
            tag,
            digest: pushed_digest(&first, tag),
            upgrade_tag,
            upgrade_digest: pushed_digest(&second, upgrade_tag),
        };
        // The copy is in both images now (the static is never dropped: removed here).
        drop(dir);
        assert_ne!(images.digest, images.upgrade_digest, "the upgrade image is another image");
        eprintln!(
            "in_cluster: release binary built in {build_time:.1?}, images {}:{}@{} and :{}@{} pushed in {:.1?}",
            images.repository,
            tag,
            images.digest,
            upgrade_tag,
            images.upgrade_digest,
            started.elapsed()
        );
        images
    })
}

/// Helm 4 (`helm4`) or Helm 3 (`helm`).
#[derive(Clone, Copy, Debug)]
enum Helm {
    V4,
    V3,
}

impl Helm {
    fn run(self, plane: &ControlPlane, args: &[&str]) -> Output {
        match self {
            Helm::V4 => plane.helm(args),
            Helm::V3 => plane.helm3(args),
        }
    }

    fn ok(self, plane: &ControlPlane, args: &[&str]) -> String {
        succeeded(&format!("{self:?}: helm"), args, &self.run(plane, args))
    }
}

/// Values for a release: the pushed image, the namespace scope, and the API server's address on
/// the node's gateway for the webhook's in-cluster client.
fn values(cluster: &Cluster, images: &Images, release: &str, tag: &str) -> Value {
    let (host, port) = cluster.plane.pod_api_server().expect("the shared cluster serves Pods on the node's gateway");
    json!({
        "image": {"repository": images.repository, "tag": tag},
        "extraEnv": [
            {"name": "KUBERNETES_SERVICE_HOST", "value": host.to_string()},
            {"name": "KUBERNETES_SERVICE_PORT", "value": port.to_string()},
        ],
        "webhook": {"namespaceSelector": {"matchLabels": {SCOPE_LABEL: release}}},
    })
}

struct ValuesFile {
    _dir: tempfile::TempDir,
    path: String,
}

fn values_file(values: &Value) -> ValuesFile {
    let dir = tempfile::Builder::new().prefix("imagemap-in-cluster-values-").tempdir().expect("a temporary folder");
    let path = dir.path().join("values.json");
    std::fs::write(&path, values.to_string()).expect("write the values file");
    ValuesFile { path: path.display().to_string(), _dir: dir }
}

/// A namespace created with the release's scope label, and its `default` ServiceAccount.
fn served_namespace(plane: &ControlPlane, release: &str) -> String {
    let name = format!("{release}-served");
    create_namespace_named(plane, &name, &json!({ SCOPE_LABEL: release }));
    name
}

/// The release's admission server Pods, terminating ones included.
fn webhook_pods(plane: &ControlPlane, ns: &str, release: &str) -> Vec<Value> {
    component_pods(plane, ns, release, "webhook")
}

/// The release's controller Pods, terminating ones included.
fn controller_pods(plane: &ControlPlane, ns: &str, release: &str) -> Vec<Value> {
    component_pods(plane, ns, release, "controller")
}

/// The release's Pods of `component` (`app.kubernetes.io/component`), terminating ones included.
fn component_pods(plane: &ControlPlane, ns: &str, release: &str, component: &str) -> Vec<Value> {
    let selector = format!("app.kubernetes.io/instance={release},app.kubernetes.io/component={component}");
    let out = plane.kubectl(["get", "pods", "-n", ns, "-l", &selector, "-o", "json"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    list["items"].as_array().cloned().unwrap_or_default()
}

/// Whether exactly `n` webhook Pods exist, none terminating, each Running and Ready with its
/// container ready, on the image `repository:tag` whose digest is `digest`.
fn replicas_ready_on(pods: &[Value], n: usize, image: &str, digest: &str) -> bool {
    pods.len() == n
        && pods.iter().all(|p| {
            let status = &p["status"]["containerStatuses"][0];
            p["metadata"]["deletionTimestamp"].is_null()
                && p["status"]["phase"] == "Running"
                && p["status"]["conditions"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
                && status["ready"] == true
                && p["spec"]["containers"][0]["image"] == image
                && status["imageID"].as_str().is_some_and(|id| id.ends_with(digest))
        })
}

/// Pods, webhook logs and events of the release, for failure messages.
fn diagnose(plane: &ControlPlane, ns: &str, release: &str) -> String {
    let selector = format!("app.kubernetes.io/instance={release}");
    let run = |args: &[&str]| {
        let out = plane.kubectl(args);
        format!("$ kubectl {}\n{}{}", args.join(" "), text(&out.stdout), text(&out.stderr))
    };
    [
        run(&["get", "pods,endpointslices", "-n", ns, "-o", "wide"]),
        run(&["describe", "pods", "-n", ns, "-l", &selector]),
        run(&["logs", "-n", ns, "-l", &selector, "--prefix", "--tail", "30"]),
        run(&["get", "events", "-n", ns, "--sort-by", ".lastTimestamp"]),
    ]
    .join("\n")
}

/// What the admission loop saw: one entry per Pod create, `Ok(image)` or `Err(message)`.
#[derive(Default)]
struct Admissions {
    during_roll: Vec<Result<String, String>>,
    after_roll: Vec<Result<String, String>>,
}

/// Creates Pods (server-side dry-run, so admission runs in full and nothing is stored) in `ns`
/// one after another until `stop`, recording each outcome in `during_roll` until `rolled` is set,
/// then in `after_roll`.
fn admission_loop(
    kubectl: Kubectl,
    ns: String,
    image: String,
    rolled: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Admissions>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let phase_done = rolled.load(Ordering::SeqCst);
            let outcome = dry_run_image(&kubectl, &ns, &image, &json!({}));
            let mut seen = seen.lock().expect("the admissions lock");
            if phase_done {
                seen.after_roll.push(outcome);
            } else {
                seen.during_roll.push(outcome);
            }
        }
    })
}

/// `helm test RELEASE` passes: the check Pod saw a dry-run Pod swapped to its test map's target.
/// Helm 4 prints the Pod's log (`--logs`, read before the succeeded hooks are deleted); Helm 3
/// deletes them first, so its run is checked by its status alone. The test namespace and the
/// check's rights are gone afterwards.
fn helm_test(helm: Helm, plane: &ControlPlane, release: &str, ns: &str, diagnosis: &dyn Fn() -> String) {
    let mut args = vec!["test", release, "--namespace", ns, "--timeout", HELM_TIMEOUT];
    if matches!(helm, Helm::V4) {
        args.push("--logs");
    }
    let output = helm.run(plane, &args);
    let report = format!("{}{}", text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "{helm:?}: helm test {release} failed:\n{report}\n{}", diagnosis());
    assert!(report.contains("Succeeded"), "{helm:?}: helm test {release}:\n{report}");
    if matches!(helm, Helm::V4) {
        assert!(report.contains("PASS: a server-side dry-run Pod"), "the check's log:\n{report}");
    }
    eprintln!("in_cluster {helm:?}: helm test:\n{report}");
    let test_ns = format!("{release}-imagemap-test");
    let gone = poll(ROLL_TIMEOUT, Duration::from_secs(1), || {
        let out = plane.kubectl(["get", "namespace", &test_ns]);
        (!out.status.success() && text(&out.stderr).contains("NotFound")).then_some(())
    });
    assert!(gone.is_some(), "the test namespace {test_ns} is deleted once the test passed");
}

/// Serialises the two lifecycles: four webhook replicas rolling at once on two cores would only
/// make each slower.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn lifecycle(helm: Helm, prefix: &str) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let cluster = shared_cluster();
    let plane = &cluster.plane;
    let images = images(cluster);
    let chart = workspace_root().join("charts/imagemap").display().to_string();
    let release = format!("{prefix}-{}", std::process::id());
    let name = format!("{release}-imagemap");
    let ns = plane.create_namespace(&format!("{prefix}-rel"));
    let diagnosis = || diagnose(plane, &ns, &release);
    let started = Instant::now();

    // Install, and wait for two ready replicas of the pushed image.
    let install = values_file(&values(cluster, images, &release, images.tag));
    let notes = helm.ok(
        plane,
        &["install", &release, &chart, "--namespace", &ns, "-f", &install.path, "--wait", "--timeout", HELM_TIMEOUT],
    );
    assert!(notes.contains("kubectl imagemap doctor"), "{notes}");
    let image = format!("{}:{}", images.repository, images.tag);
    let up = poll(ROLL_TIMEOUT, Duration::from_secs(1), || {
        (replicas_ready_on(&webhook_pods(plane, &ns, &release), 2, &image, &images.digest)
            && replicas_ready_on(&controller_pods(plane, &ns, &release), 1, &image, &images.digest))
        .then_some(())
    });
    assert!(up.is_some(), "two ready replicas and a ready controller of {image}@{}:\n{}", images.digest, diagnosis());
    let accounts: Vec<Value> = [webhook_pods(plane, &ns, &release), controller_pods(plane, &ns, &release)]
        .iter()
        .map(|pods| pods[0]["spec"]["serviceAccountName"].clone())
        .collect();
    assert_eq!(accounts, [json!(name), json!(format!("{name}-controller"))], "one ServiceAccount per process");
    let installed = started.elapsed();

    // The API server calls the Service (no URL), whose endpoints are the two Pods.
    let config = json_of(&plane.kubectl_ok(["get", "mutatingwebhookconfiguration", &name, "-o", "json"]));
    let client = &config["webhooks"][0]["clientConfig"];
    assert!(client["url"].is_null(), "{client}");
    assert_eq!(client["service"], json!({"name": name, "namespace": ns, "path": "/mutate", "port": 443}));
    let pod_ips: Vec<String> = webhook_pods(plane, &ns, &release)
        .iter()
        .map(|p| p["status"]["podIP"].as_str().unwrap_or_default().to_string())
        .collect();
    let slices = json_of(&plane.kubectl_ok([
        "get",
        "endpointslices",
        "-n",
        &ns,
        "-l",
        &format!("kubernetes.io/service-name={name}"),
        "-o",
        "json",
    ]));
    let mut endpoints: Vec<String> = slices["items"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["conditions"]["ready"] == true)
        .filter_map(|e| e["addresses"][0].as_str().map(String::from))
        .collect();
    endpoints.sort();
    let mut expected_ips = pod_ips.clone();
    expected_ips.sort();
    assert_eq!(endpoints, expected_ips, "the Service's ready endpoints are the two Pods");

    // A real Pod in a served namespace is swapped (to the pause image in the local registry, so
    // that it runs).
    let served = served_namespace(plane, &release);
    let target = cluster.node.pause_image().to_string();
    plane.apply_yaml(&image_map(&served, "app", "in-cluster-app").to_string());
    set_status(plane.kubectl_client(), &served, "app", &json!({"image": target})).expect("set the map's status");
    wait_for_image(plane, &served, "in-cluster-app", &target, DRY_RUN_PATIENCE, diagnosis);
    // The controller, with its own rights and within the chart's policies, scoped the webhook
    // configuration to the namespaces with maps.
    let scoped = poll(CHANGE_TIMEOUT, Duration::from_millis(500), || {
        let config = json_of(&plane.kubectl_ok(["get", "mutatingwebhookconfiguration", &name, "-o", "json"]));
        let conditions = config["webhooks"][0]["matchConditions"].to_string();
        (conditions.contains("imagemap-scope") && conditions.contains(&served)).then_some(())
    });
    assert!(scoped.is_some(), "the controller did not scope {name} to {served}:\n{}", diagnosis());
    let real = pod(&served, "real", &[container("app", "in-cluster-app")]);
    let created = plane
        .kubectl_client()
        .run_with_stdin(["create", "-o", "json", "-f", "-"], Some(&real.to_string()))
        .expect("kubectl runs");
    assert!(created.status.success(), "creating a Pod: {}", text(&created.stderr));
    assert_eq!(json_of(&text(&created.stdout))["spec"]["containers"][0]["image"], target.as_str());
    let running = poll(ROLL_TIMEOUT, Duration::from_secs(1), || {
        let phase = plane.kubectl(["get", "pod", "real", "-n", &served, "-o", "jsonpath={.status.phase}"]);
        (phase.stdout == b"Running").then_some(())
    });
    assert!(running.is_some(), "the swapped Pod runs:\n{}", diagnose(plane, &served, "none"));

    // kubectl imagemap doctor passes against this install.
    let doctor = kubectl_imagemap(plane.kubeconfig_path(), &["doctor", "--webhook-config", &name, "-n", &served], None);
    let report = format!("{}{}", text(&doctor.stdout), text(&doctor.stderr));
    assert!(doctor.status.success(), "doctor failed:\n{report}\n{}", diagnosis());
    for check in ["[PASS] API server", "[PASS] CRD", "[PASS] webhook configuration", "[PASS] endpoint"] {
        assert!(report.contains(check), "doctor: missing {check}:\n{report}");
    }
    for check in ["[PASS] namespace:", "[PASS] dry-run swap", "all checks passed"] {
        assert!(report.contains(check), "doctor: missing {check}:\n{report}");
    }
    assert!(!report.contains("[FAIL]"), "{report}");
    eprintln!("in_cluster {helm:?}: doctor:\n{report}");

    // helm test: the chart's check Pod (this image) swaps a dry-run Pod in its test namespace.
    helm_test(helm, plane, &release, &ns, &diagnosis);

    // helm upgrade to the second image while Pods are being admitted.
    let rolled = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Admissions::default()));
    let admitting = admission_loop(
        plane.kubectl_client().clone(),
        served.clone(),
        "in-cluster-app".to_string(),
        rolled.clone(),
        stop.clone(),
        seen.clone(),
    );
    // At least one admission before the upgrade starts, so the loop surely overlaps the roll.
    poll(CHANGE_TIMEOUT, Duration::from_millis(100), || {
        (!seen.lock().expect("lock").during_roll.is_empty()).then_some(())
    })
    .expect("the admission loop runs");
    let roll_started = Instant::now();
    let upgrade = values_file(&values(cluster, images, &release, images.upgrade_tag));
    let upgraded = helm.run(
        plane,
        &["upgrade", &release, &chart, "--namespace", &ns, "-f", &upgrade.path, "--wait", "--timeout", HELM_TIMEOUT],
    );
    let new_image = format!("{}:{}", images.repository, images.upgrade_tag);
    // Rolled: two ready replicas of the new image and no other Pod (old ones fully gone).
    let done = upgraded.status.success()
        && poll(ROLL_TIMEOUT, Duration::from_millis(500), || {
            (replicas_ready_on(&webhook_pods(plane, &ns, &release), 2, &new_image, &images.upgrade_digest)
                && replicas_ready_on(&controller_pods(plane, &ns, &release), 1, &new_image, &images.upgrade_digest))
            .then_some(())
        })
        .is_some();
    let roll_time = roll_started.elapsed();
    rolled.store(true, Ordering::SeqCst);
    // A few more admissions against the new replicas only.
    if done {
        poll(CHANGE_TIMEOUT, Duration::from_millis(100), || {
            (seen.lock().expect("lock").after_roll.len() >= 5).then_some(())
        });
    }
    stop.store(true, Ordering::SeqCst);
    admitting.join().expect("the admission loop");
    assert!(
        upgraded.status.success(),
        "helm upgrade failed:\n{}{}\n{}",
        text(&upgraded.stderr),
        text(&upgraded.stdout),
        diagnosis()
    );
    assert!(done, "the upgrade did not roll to two ready replicas of {new_image}:\n{}", diagnosis());
    let seen = seen.lock().expect("lock");
    let count = |outcomes: &[Result<String, String>]| -> (usize, usize, Vec<String>, Vec<String>) {
        let swapped = outcomes.iter().filter(|o| o.as_deref() == Ok(target.as_str())).count();
        let failed = outcomes.iter().filter_map(|o| o.as_ref().err().cloned()).collect();
        let unswapped = outcomes.iter().filter_map(|o| o.as_ref().ok()).filter(|i| **i != target).cloned().collect();
        (outcomes.len(), swapped, failed, unswapped)
    };
    let (during, during_swapped, during_failed, during_unswapped) = count(&seen.during_roll);
    let (after, after_swapped, after_failed, after_unswapped) = count(&seen.after_roll);
    eprintln!(
        "in_cluster {helm:?}: upgrade rolled in {roll_time:.1?}; admissions during the upgrade: {during} created, \
         {during_swapped} swapped; after: {after} created, {after_swapped} swapped"
    );
    assert!(
        during_failed.is_empty()
            && during_unswapped.is_empty()
            && after_failed.is_empty()
            && after_unswapped.is_empty(),
        "admissions during the upgrade: {during} ({} failed: {during_failed:?}; {} unswapped: {during_unswapped:?}); \
         after: {after} ({after_failed:?}, {after_unswapped:?})\n{}",
        during_failed.len(),
        during_unswapped.len(),
        diagnosis()
    );
    assert!(during >= 2 && after >= 1, "the loop ran through the roll: {during} during, {after} after");
    drop(seen);
    // helm test passes against the upgraded release too.
    helm_test(helm, plane, &release, &ns, &diagnosis);

    // The new replicas passed their probes without a restart, and no liveness probe failed.
    for p in webhook_pods(plane, &ns, &release).into_iter().chain(controller_pods(plane, &ns, &release)) {
        assert_eq!(p["status"]["containerStatuses"][0]["restartCount"], 0, "{}", diagnosis());
    }
    let events = json_of(&plane.kubectl_ok(["get", "events", "-n", &ns, "-o", "json"]));
    let liveness: Vec<&Value> = events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["message"].as_str().is_some_and(|m| m.starts_with("Liveness probe failed")))
        .collect();
    assert!(liveness.is_empty(), "liveness probe failures: {liveness:?}");

    // helm uninstall leaves nothing of the release (the CRD stays: Helm never deletes crds/).
    helm.ok(plane, &["uninstall", &release, "--namespace", &ns, "--wait", "--timeout", HELM_TIMEOUT]);
    let selector = format!("app.kubernetes.io/instance={release}");
    let left = poll(ROLL_TIMEOUT, Duration::from_secs(1), || {
        let left = plane.kubectl([
            "get",
            "deployments,replicasets,pods,services,endpointslices,serviceaccounts,secrets,configmaps,\
             poddisruptionbudgets,roles,rolebindings",
            "-n",
            &ns,
            "-l",
            &selector,
            "-o",
            "name",
        ]);
        let cluster_wide = plane.kubectl([
            "get",
            "mutatingwebhookconfigurations,clusterroles,clusterrolebindings,validatingadmissionpolicies,\
             validatingadmissionpolicybindings",
            "-l",
            &selector,
            "-o",
            "name",
        ]);
        let succeeded = left.status.success() && cluster_wide.status.success();
        (succeeded && left.stdout.trim_ascii().is_empty() && cluster_wide.stdout.trim_ascii().is_empty()).then_some(())
    });
    assert!(left.is_some(), "objects of {release} left after helm uninstall:\n{}", diagnosis());
    for (kind, object) in [("mutatingwebhookconfiguration", name.as_str()), ("secret", &format!("{name}-tls"))] {
        let out = plane.kubectl(["get", kind, object, "-n", &ns]);
        assert!(!out.status.success() && text(&out.stderr).contains("NotFound"), "{kind} {object} is left");
    }
    let crd = plane.kubectl(["get", "crd", "imagemaps.tilt.dev", "-o", "name"]);
    eprintln!(
        "in_cluster {helm:?}: after helm uninstall the CRD is {}",
        if crd.status.success() { "still there (crds/ are never deleted by Helm)" } else { "gone" }
    );
    // Pods are created unchanged once the API server dropped the configuration.
    wait_for_image(plane, &served, "in-cluster-app", "in-cluster-app", DRY_RUN_PATIENCE, diagnosis);
    eprintln!(
        "in_cluster {helm:?}: installed (2 ready replicas) in {installed:.1?}, whole lifecycle {:.1?}",
        started.elapsed()
    );
    plane.kubectl_ok(["delete", "namespace", &served, "--wait=false"]);
    plane.kubectl_ok(["delete", "namespace", &ns, "--wait=false"]);
}

#[test]
fn helm4_installs_the_built_image_in_cluster_swaps_passes_doctor_upgrades_without_a_missed_swap_and_uninstalls() {
    lifecycle(Helm::V4, "helm4");
}

#[test]
fn helm3_installs_the_built_image_in_cluster_swaps_passes_doctor_upgrades_without_a_missed_swap_and_uninstalls() {
    lifecycle(Helm::V3, "helm3");
}
