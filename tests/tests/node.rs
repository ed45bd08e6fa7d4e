//! A real node: Pods pull images built here from the local registry, run under containerd and
//! runc, get addresses on the node's bridge that the host (and the API server) reach, and the
//! node leaves nothing behind, whether dropped or stopped by its watchdog at process exit.
//! Needs root (bridge, cgroups, mounts).

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use imagemap_e2e::oci::{self, Run};
use imagemap_e2e::process::run_exit_helper;
use imagemap_e2e::{poll, shared_cluster, ControlPlane, ControlPlaneOptions, Footprint, Node, Registry};
use serde_json::Value;

/// Tests that start a node of their own: one at a time is plenty for two cores.
static EXTRA_NODE: Mutex<()> = Mutex::new(());

/// Generous: a Pod's first start pulls its image and sets up its sandbox on a busy machine.
const POD_TIMEOUT: Duration = Duration::from_secs(180);

fn json(text: &str) -> Value {
    serde_json::from_str(text).expect("kubectl printed JSON")
}

fn pod_json(plane: &ControlPlane, ns: &str, name: &str) -> Value {
    json(&plane.kubectl_ok(["get", "pod", name, "--namespace", ns, "--output", "json"]))
}

/// Polls until the Pod's phase is one of `phases`; panics with the Pod's description otherwise.
fn wait_for_phase(plane: &ControlPlane, ns: &str, name: &str, phases: &[&str]) -> Value {
    let found = poll(POD_TIMEOUT, Duration::from_millis(500), || {
        let pod = pod_json(plane, ns, name);
        let phase = pod["status"]["phase"].as_str().unwrap_or_default().to_string();
        if phases.contains(&phase.as_str()) {
            Some(Ok(pod))
        } else if phase == "Failed" {
            Some(Err(pod))
        } else {
            None
        }
    });
    match found {
        Some(Ok(pod)) => pod,
        other => {
            let describe = plane.kubectl(["describe", "pod", name, "--namespace", ns]);
            panic!(
                "pod {ns}/{name} did not reach {phases:?} ({}):\n{}",
                if matches!(other, Some(Err(_))) { "it failed" } else { "timeout" },
                String::from_utf8_lossy(&describe.stdout)
            );
        }
    }
}

/// `GET path` over HTTP/1.0 to `ip:port`; the whole response.
fn http_get(ip: Ipv4Addr, port: u16, path: &str) -> std::io::Result<String> {
    let timeout = Duration::from_secs(3);
    let mut stream = TcpStream::connect_timeout(&SocketAddr::from((ip, port)), timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// An image serving `/www` with busybox httpd on port 8080, `/www/index.html` being `marker`.
fn web_image(registry: &Registry, repo: &str, marker: &str) -> String {
    let digest = oci::busybox_image(
        registry,
        repo,
        "v1",
        &[("/www/index.html", marker)],
        &Run {
            entrypoint: vec!["/bin/httpd".into(), "-f".into(), "-p".into(), "8080".into(), "-h".into(), "/www".into()],
            cmd: vec![],
        },
    )
    .expect("the web image is pushed");
    format!("{}/{repo}@{digest}", registry.address())
}

fn web_deployment(ns: &str, image: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: {ns}
spec:
  replicas: 1
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: web
          image: {image}
          ports: [{{containerPort: 8080, name: http}}]
          readinessProbe:
            httpGet: {{path: /index.html, port: 8080}}
            periodSeconds: 1
"#
    )
}

/// The Ready Pod of the `web` Deployment in `ns`.
fn ready_web_pod(plane: &ControlPlane, ns: &str) -> Value {
    let pod = poll(POD_TIMEOUT, Duration::from_millis(500), || {
        let pods =
            json(&plane.kubectl_ok(["get", "pods", "--namespace", ns, "--selector", "app=web", "--output", "json"]));
        pods["items"]
            .as_array()?
            .iter()
            .find(|p| {
                p["status"]["conditions"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
            })
            .cloned()
    });
    pod.unwrap_or_else(|| {
        let describe = plane.kubectl(["describe", "pods", "--namespace", ns]);
        panic!("no Ready web Pod in {ns}:\n{}", String::from_utf8_lossy(&describe.stdout))
    })
}

#[test]
fn the_same_image_input_gives_the_same_digest_in_the_registry() {
    // A registry of its own: no node needed.
    let registry = Registry::start(None).expect("registry");
    let files = [("/etc/marker", "same\n")];
    let run = Run::shell("cat /etc/marker");
    let first = oci::busybox_image(&registry, "e2e/same", "a", &files, &run).expect("push a");
    let second = oci::busybox_image(&registry, "e2e/same", "b", &files, &run).expect("push b");
    assert_eq!(first, second);
    let reported = registry.crane_ok(["digest", &format!("{}/e2e/same:b", registry.address())]).expect("crane digest");
    assert_eq!(reported.trim(), first);
    let other = oci::busybox_image(&registry, "e2e/same", "c", &[("/etc/marker", "other\n")], &run).expect("push c");
    assert_ne!(other, first);
}

#[test]
fn a_pod_runs_an_image_pushed_to_the_local_registry_and_logs_its_marker() {
    let cluster = shared_cluster();
    let plane = &cluster.plane;
    let ns = plane.create_namespace("node-marker");
    let marker = format!("marker-{ns}");
    let digest = oci::busybox_image(
        &cluster.registry,
        "e2e/marker",
        "v1",
        &[("/marker.txt", &format!("{marker}\n"))],
        &Run::shell("cat /marker.txt"),
    )
    .expect("the image is pushed");
    let image = format!("{}/e2e/marker:v1", cluster.registry.address());
    plane.apply_yaml(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: marker
  namespace: {ns}
spec:
  restartPolicy: Never
  containers:
    - name: marker
      image: {image}
"#
    ));
    let pod = wait_for_phase(plane, &ns, "marker", &["Succeeded"]);
    // Placed by the scheduler (no nodeName in the manifest), on the Pod network.
    assert_eq!(pod["spec"]["nodeName"], cluster.node.name());
    assert_ne!(pod["spec"]["hostNetwork"], true);
    let image_id = pod["status"]["containerStatuses"][0]["imageID"].as_str().unwrap_or_default();
    assert!(image_id.ends_with(&digest), "imageID {image_id} is the pushed {digest}");
    let logs = plane.kubectl_ok(["logs", "marker", "--namespace", &ns]);
    assert_eq!(logs.trim(), marker);
}

#[test]
fn a_deployment_pod_gets_an_address_reachable_from_the_host() {
    let cluster = shared_cluster();
    let plane = &cluster.plane;
    let ns = plane.create_namespace("node-web");
    let marker = format!("served-from-{ns}");
    let image = web_image(&cluster.registry, "e2e/web", &marker);
    plane.apply_yaml(&web_deployment(&ns, &image));
    let pod = ready_web_pod(plane, &ns);
    let ip: Ipv4Addr = pod["status"]["podIP"].as_str().expect("podIP").parse().expect("an IPv4 podIP");
    let gateway = cluster.node.gateway().octets();
    assert_eq!(ip.octets()[..3], gateway[..3], "{ip} is in the node's subnet {}", cluster.node.footprint().subnet);
    assert_ne!(pod["status"]["podIP"], pod["status"]["hostIP"], "not host network");
    // The kubelet's readiness probe reached it already; the test process does too.
    let body = poll(Duration::from_secs(60), Duration::from_millis(250), || {
        http_get(ip, 8080, "/index.html").ok().filter(|r| r.contains(&marker))
    });
    assert!(body.is_some(), "GET http://{ip}:8080/index.html from the host returns the marker");
}

#[test]
fn the_api_server_reaches_a_service_through_its_endpoints() {
    let cluster = shared_cluster();
    let plane = &cluster.plane;
    let ns = plane.create_namespace("node-service");
    let marker = format!("behind-a-service-{ns}");
    let image = web_image(&cluster.registry, "e2e/service", &marker);
    plane.apply_yaml(&web_deployment(&ns, &image));
    plane.apply_yaml(&format!(
        r#"
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: {ns}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
"#
    ));
    let pod = ready_web_pod(plane, &ns);
    let ip = pod["status"]["podIP"].as_str().expect("podIP").to_string();
    // The endpointslice controller publishes the Ready Pod's address...
    let published = poll(POD_TIMEOUT, Duration::from_millis(500), || {
        let slices = plane.kubectl_ok([
            "get",
            "endpointslices",
            "--namespace",
            &ns,
            "--selector",
            "kubernetes.io/service-name=web",
            "--output",
            "jsonpath={.items[*].endpoints[*].addresses[*]}",
        ]);
        slices.split_whitespace().any(|a| a == ip).then_some(())
    });
    assert!(published.is_some(), "the Service's EndpointSlice lists {ip}");
    // ...and the API server dials it (as it dials a webhook's Service): no kube-proxy involved.
    let path = format!("/api/v1/namespaces/{ns}/services/http:web:80/proxy/index.html");
    let body = poll(Duration::from_secs(60), Duration::from_millis(500), || {
        let out = plane.kubectl(["get", "--raw", &path]);
        (out.status.success() && String::from_utf8_lossy(&out.stdout).contains(&marker)).then_some(())
    });
    assert!(body.is_some(), "GET {path} through the API server returns the marker");
}

/// A Pod with a tmpfs volume on the Pod network, Running on `node`.
fn run_a_pod_with_mounts(plane: &ControlPlane, registry: &Registry, node: &Node) {
    let ns = plane.create_namespace("node-teardown");
    let digest = oci::busybox_image(
        registry,
        "e2e/sleeper",
        "v1",
        &[],
        &Run::shell("trap 'exit 0' TERM; while :; do sleep 1; done"),
    )
    .expect("push");
    plane.apply_yaml(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: sleeper
  namespace: {ns}
spec:
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 1
  containers:
    - name: sleeper
      image: {}/e2e/sleeper@{digest}
      volumeMounts: [{{name: scratch, mountPath: /scratch}}]
  volumes:
    - name: scratch
      emptyDir: {{medium: Memory}}
"#,
        registry.address()
    ));
    let pod = wait_for_phase(plane, &ns, "sleeper", &["Running"]);
    assert_eq!(pod["spec"]["nodeName"], node.name());
}

#[test]
fn teardown_leaves_no_process_mount_netns_or_cgroup() {
    let _one_at_a_time = EXTRA_NODE.lock().unwrap_or_else(|e| e.into_inner());
    // A plane of its own: the shared node's scheduler must not see this node.
    let plane = ControlPlane::start(ControlPlaneOptions { install_crds: false, ..ControlPlaneOptions::default() })
        .expect("plane");
    let registry = Registry::start(None).expect("registry");
    let node = Node::start(&plane, &registry).expect("node");
    run_a_pod_with_mounts(&plane, &registry, &node);
    let footprint = node.footprint().clone();
    let veths: Vec<String> = std::fs::read_dir(format!("/sys/class/net/{}/brif", footprint.bridge))
        .expect("the bridge has ports")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!veths.is_empty(), "the Pod's veth is on the bridge");
    let running = footprint.leftovers();
    for what in ["process", "mount", "cgroup", "bridge", "folder"] {
        assert!(running.iter().any(|l| l.starts_with(what)), "a running node shows a {what}: {running:#?}");
    }
    assert!(
        running.iter().any(|l| l.starts_with("mount") && l.contains("/netns/")),
        "network namespace mounts: {running:#?}"
    );
    let pids =
        [node.pid("containerd").expect("containerd"), node.pid("kubelet").expect("kubelet"), node.watchdog_pid()];

    drop(node);

    // Synchronous, but the kernel frees network namespaces (and their veths) asynchronously.
    let left = poll(Duration::from_secs(60), Duration::from_millis(200), || {
        let left = footprint.leftovers();
        let veths_left: Vec<&String> =
            veths.iter().filter(|v| PathBuf::from("/sys/class/net").join(v).exists()).collect();
        (left.is_empty() && veths_left.is_empty()).then_some(())
    });
    assert!(left.is_some(), "left after drop: {:#?}", footprint.leftovers());
    for pid in pids {
        assert!(!imagemap_e2e::process::process_alive(pid), "pid {pid} is gone");
    }
}

/// Set for the child process of the test below.
const EXIT_HELPER_ENV: &str = "IMAGEMAP_E2E_NODE_EXIT_HELPER";

/// Not a test on its own: run in a child process by the test below. Starts a plane, a registry
/// and a node with a Pod, keeps them in `static`s (never dropped), prints the node's footprint,
/// and lets the process exit.
#[test]
#[ignore = "run in a child process by the_watchdog_tears_a_node_down_when_the_test_process_exits"]
fn exit_helper_leaves_a_node_in_a_static() {
    if std::env::var_os(EXIT_HELPER_ENV).is_none() {
        return;
    }
    static CLUSTER: OnceLock<(Node, Registry, ControlPlane)> = OnceLock::new();
    let (node, registry, plane) = CLUSTER.get_or_init(|| {
        let plane = ControlPlane::start(ControlPlaneOptions { install_crds: false, ..ControlPlaneOptions::default() })
            .expect("plane");
        let registry = Registry::start(None).expect("registry");
        let node = Node::start(&plane, &registry).expect("node");
        (node, registry, plane)
    });
    run_a_pod_with_mounts(plane, registry, node);
    let f = node.footprint();
    println!(
        "NODE {} {} {} {} {} {} {} {}",
        f.id,
        f.dir.display(),
        f.node_name,
        f.bridge,
        f.cgroup,
        f.cni_network,
        f.subnet,
        f.gateway
    );
}

#[test]
fn the_watchdog_tears_a_node_down_when_the_test_process_exits() {
    let _one_at_a_time = EXTRA_NODE.lock().unwrap_or_else(|e| e.into_inner());
    let line = run_exit_helper("exit_helper_leaves_a_node_in_a_static", EXIT_HELPER_ENV, "NODE ");
    let f: Vec<&str> = line.split_whitespace().collect();
    let footprint = Footprint {
        id: f[0].into(),
        dir: f[1].into(),
        node_name: f[2].into(),
        bridge: f[3].into(),
        cgroup: f[4].into(),
        cni_network: f[5].into(),
        subnet: f[6].into(),
        gateway: f[7].parse().expect("gateway"),
    };
    // The helper has exited: its watchdogs kill the groups (a few seconds each), then run the
    // node's teardown script.
    let left =
        poll(Duration::from_secs(120), Duration::from_millis(250), || footprint.leftovers().is_empty().then_some(()));
    assert!(left.is_some(), "left after the process exited: {:#?}", footprint.leftovers());
}

/// For after `make dev-down` or a test run: nothing of any node is left on this machine. Not
/// run by default (a node of another process may be running).
#[test]
#[ignore = "checks the whole machine: run on its own, e.g. after make dev-down"]
fn no_node_is_left_on_this_machine() {
    let left = imagemap_e2e::node::all_leftovers();
    assert!(left.is_empty(), "left on this machine: {left:#?}");
}
