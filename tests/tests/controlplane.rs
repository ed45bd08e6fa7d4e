//! Proves the harness: a real apiserver answers, namespaces and Pods work, the real
//! controller-manager turns a Deployment into Pods, the ImageMap CRD is established (when the
//! chart has it), and every process is gone after teardown, by drop or by process exit.

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use imagemap_e2e::net::port_open;
use imagemap_e2e::process::{process_alive, run_exit_helper};
use imagemap_e2e::{poll, shared, ControlPlane, ControlPlaneOptions};
use serde_json::Value;

/// The teardown tests start planes of their own; one at a time is plenty for two cores.
static EXTRA_PLANE: Mutex<()> = Mutex::new(());

fn json(text: &str) -> Value {
    serde_json::from_str(text).expect("kubectl printed JSON")
}

#[test]
fn apiserver_is_ready() {
    let plane = shared();
    assert_eq!(plane.kubectl_ok(["get", "--raw", "/readyz"]).trim(), "ok");
    assert_eq!(plane.kubectl_ok(["get", "--raw", "/livez"]).trim(), "ok");
    assert!(plane.server_url().starts_with("https://127.0.0.1:"));
    let config = std::fs::read_to_string(plane.kubeconfig_path()).expect("kubeconfig");
    assert!(config.contains("client-certificate-data"), "certificates are embedded");
    // The admin certificate is cluster-admin through system:masters.
    assert_eq!(plane.kubectl_ok(["auth", "can-i", "*", "*", "--all-namespaces"]).trim(), "yes");
}

#[test]
fn helm_talks_to_the_plane() {
    let plane = shared();
    let output = plane.helm(["list", "--all-namespaces", "--output", "json"]);
    assert!(output.status.success(), "helm list failed: {}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(json(&String::from_utf8_lossy(&output.stdout)), serde_json::json!([]));
}

#[test]
fn a_namespace_can_be_created() {
    let plane = shared();
    let ns = plane.create_namespace("harness-namespace");
    assert!(ns.starts_with("harness-namespace-"), "{ns}");
    let phase = plane.kubectl_ok(["get", "namespace", &ns, "--output", "jsonpath={.status.phase}"]);
    assert_eq!(phase, "Active");
    plane.kubectl_ok(["get", "serviceaccount", "default", "--namespace", &ns]);
    assert_ne!(ns, plane.create_namespace("harness-namespace"), "names are unique");
}

#[test]
fn a_pod_can_be_created_and_read_back() {
    let plane = shared();
    let ns = plane.create_namespace("harness-pod");
    plane.apply_yaml(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: {ns}
spec:
  containers:
    - name: web
      image: registry.example/web:v1
"#
    ));
    let pod = json(&plane.kubectl_ok(["get", "pod", "web", "--namespace", &ns, "--output", "json"]));
    assert_eq!(pod["spec"]["containers"][0]["image"], "registry.example/web:v1");
    // Admission ran: the ServiceAccount plugin filled in the account.
    assert_eq!(pod["spec"]["serviceAccountName"], "default");
    // No scheduler or kubelet: the Pod stays Pending.
    assert_eq!(pod["status"]["phase"], "Pending");
}

#[test]
fn a_deployment_creates_pods_through_the_controller_manager() {
    let plane = shared();
    let ns = plane.create_namespace("harness-deployment");
    plane.apply_yaml(&format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: {ns}
spec:
  replicas: 2
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
        - name: web
          image: registry.example/web:v1
"#
    ));
    let owned_by = |item: &Value, kind: &str, name: &str| {
        item["metadata"]["ownerReferences"]
            .as_array()
            .is_some_and(|refs| refs.iter().any(|r| r["kind"] == kind && r["name"] == name))
    };
    let pods = poll(Duration::from_secs(60), Duration::from_millis(500), || {
        let sets = json(&plane.kubectl_ok(["get", "replicasets", "--namespace", &ns, "--output", "json"]));
        let set = sets["items"].as_array()?.iter().find(|rs| owned_by(rs, "Deployment", "web"))?.clone();
        let set_name = set["metadata"]["name"].as_str()?.to_string();
        let pods = json(&plane.kubectl_ok(["get", "pods", "--namespace", &ns, "--output", "json"]));
        let owned: Vec<Value> =
            pods["items"].as_array()?.iter().filter(|p| owned_by(p, "ReplicaSet", &set_name)).cloned().collect();
        (owned.len() == 2).then_some(owned)
    })
    .unwrap_or_else(|| {
        panic!(
            "no 2 Pods owned by the Deployment's ReplicaSet after 60 s; controller-manager log:\n{}",
            plane.log_tail("kube-controller-manager", 30)
        )
    });
    for pod in pods {
        assert_eq!(pod["spec"]["containers"][0]["image"], "registry.example/web:v1");
    }
}

#[test]
fn the_imagemap_crd_is_established_when_the_chart_has_it() {
    let file = imagemap_e2e::binaries::workspace_root().join(imagemap_e2e::controlplane::IMAGEMAP_CRD_FILE);
    if !file.exists() {
        eprintln!("skipped: {} does not exist yet", file.display());
        return;
    }
    let plane = shared();
    let established = plane.kubectl_ok([
        "get",
        "customresourcedefinition",
        "imagemaps.tilt.dev",
        "--output",
        r#"jsonpath={.status.conditions[?(@.type=="Established")].status}"#,
    ]);
    assert_eq!(established, "True");
    let ns = plane.create_namespace("harness-crd");
    plane.kubectl_ok(["get", "imagemaps.tilt.dev", "--namespace", &ns]);
}

#[test]
fn dropping_a_plane_kills_its_processes_and_removes_its_folder() {
    let _one_at_a_time = EXTRA_PLANE.lock().unwrap_or_else(|e| e.into_inner());
    let plane = ControlPlane::start(ControlPlaneOptions { install_crds: false, ..ControlPlaneOptions::default() })
        .expect("a second, independent plane starts");
    let pids = [
        plane.pid("etcd").expect("etcd runs"),
        plane.pid("kube-apiserver").expect("kube-apiserver runs"),
        plane.watchdog_pid(),
    ];
    assert!(plane.pid("kube-controller-manager").is_none(), "not asked for");
    let port = plane.apiserver_port();
    let dir = plane.dir().to_path_buf();
    assert!(pids.iter().all(|&pid| process_alive(pid)) && port_open(port) && dir.is_dir());

    drop(plane);

    // Dead processes hold no sockets. Whether the port is free afterwards is up to the rest of
    // the machine (another process may bind it at once), so it is not asserted.
    for pid in pids {
        assert!(!process_alive(pid), "pid {pid} is gone after drop");
    }
    assert!(!dir.exists(), "{} is removed after drop", dir.display());
}

/// Set for the child process of the test below.
const EXIT_HELPER_ENV: &str = "IMAGEMAP_E2E_EXIT_HELPER";

/// Not a test on its own: run in a child process by the test below. Starts a plane, keeps it in
/// a `static` (never dropped, like [`shared`]'s), prints its pids, and lets the process exit.
#[test]
#[ignore = "run in a child process by the_watchdog_stops_a_plane_left_in_a_static_at_exit"]
fn exit_helper_leaves_a_plane_in_a_static() {
    if std::env::var_os(EXIT_HELPER_ENV).is_none() {
        return;
    }
    static PLANE: OnceLock<ControlPlane> = OnceLock::new();
    let plane = PLANE.get_or_init(|| {
        ControlPlane::start(ControlPlaneOptions { install_crds: false, ..ControlPlaneOptions::default() })
            .expect("plane starts")
    });
    println!(
        "PLANE {} {} {} {}",
        plane.pid("etcd").expect("etcd"),
        plane.pid("kube-apiserver").expect("apiserver"),
        plane.watchdog_pid(),
        plane.dir().display()
    );
}

#[test]
fn the_watchdog_stops_a_plane_left_in_a_static_at_exit() {
    let _one_at_a_time = EXTRA_PLANE.lock().unwrap_or_else(|e| e.into_inner());
    let line = run_exit_helper("exit_helper_leaves_a_plane_in_a_static", EXIT_HELPER_ENV, "PLANE ");
    let fields: Vec<&str> = line.split(' ').collect();
    let pids: Vec<u32> = fields[..3].iter().map(|f| f.parse().expect("pid")).collect();
    let dir = PathBuf::from(fields[3..].join(" "));

    // The helper has exited: the watchdog kills the groups (SIGTERM, then SIGKILL after at most
    // 5 s), removes the folder, and exits itself.
    let gone = poll(Duration::from_secs(30), Duration::from_millis(200), || {
        (pids.iter().all(|&pid| !process_alive(pid)) && !dir.exists()).then_some(())
    });
    assert!(
        gone.is_some(),
        "after the helper's exit: alive {:?}, {} exists {}",
        pids.iter().filter(|&&pid| process_alive(pid)).collect::<Vec<_>>(),
        dir.display(),
        dir.exists()
    );
}
