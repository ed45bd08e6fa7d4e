//! A real node where Pods run: containerd (with runc and the CNI bridge plugin), a kubelet and
//! kube-scheduler, against a [`ControlPlane`], pulling from a local [`Registry`].
//!
//! Everything of a node is named after a random id and kept in its own folder
//! (`$TMPDIR/imagemap-node-ID`): containerd's root, state, sockets, shim sockets and network
//! namespaces, runc's state, the kubelet's root and pod logs, the CNI configuration and IPAM
//! data. Outside that folder a node owns a bridge `imgm-ID` with its own /24 (the host reaches
//! Pod IPs through it), and a cgroup `imagemap-node-ID` in every hierarchy (the kubelet's
//! `cgroupRoot`). Teardown is the shell script `teardown.sh` beside this file, copied into the
//! folder with the node's names, run by [`Node`]'s `Drop` and, if the test process exits first,
//! by a watchdog; `teardown.sh --check` lists what is left ([`Footprint::leftovers`]). See
//! `tests/README.md`. Needs root.
//!
//! By concern: [`NodeNetwork`] (`network.rs`) reserves the folder, the teardown and the bridge;
//! [`Footprint`] (`footprint.rs`) names what a node owns and runs its teardown; `config.rs`
//! writes the components' configuration; `machine.rs` reads processes, cgroups and mounts.

mod config;
mod footprint;
mod machine;
mod network;

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

pub use footprint::{all_leftovers, Footprint};
pub use network::NodeNetwork;

use crate::controlplane::{ControlPlane, ControlPlaneOptions};
use crate::kubectl::Kubectl;
use crate::net;
use crate::oci;
use crate::process::{poll_while_running, ManagedProcess, Watchdog, STOP_GRACE};
use crate::registry::Registry;
use machine::cgroup_mounts;

/// The prefix of every node's folder, cgroup and node name (`imagemap-node-ID`).
pub const NODE_PREFIX: &str = "imagemap-node-";
/// The prefix of every node's bridge (`imgm-ID`; interface names have at most 15 bytes).
pub const BRIDGE_PREFIX: &str = "imgm-";
/// Pod subnets are /24s taken from this /16 (`10.244.N.0/24`, N free on this machine).
pub const POD_NETWORK_PREFIX: [u8; 2] = [10, 244];
/// The sysctls the kubelet sets at start (`setupKernelTunables`); saved before and restored by
/// the teardown.
const KUBELET_SYSCTLS: [&str; 6] = [
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];

/// What to start.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// Also run kube-scheduler (one per plane: a second node on the same plane sets this false).
    pub scheduler: bool,
    /// Deadline for each step (containerd up, Node Ready, probe Pod Running).
    pub ready_timeout: Duration,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions { scheduler: true, ready_timeout: Duration::from_secs(180) }
    }
}

/// A running node. Dropping it stops the kubelet, the scheduler and containerd, then runs the
/// teardown script (containers, mounts, network namespaces, bridge, cgroups, folder).
#[derive(Debug)]
pub struct Node {
    processes: Vec<ManagedProcess>,
    watchdog: Watchdog,
    footprint: Footprint,
    kubectl: Kubectl,
    bin_dir: PathBuf,
    kubelet_port: u16,
    healthz_port: u16,
    pause_image: String,
    timings: Vec<(&'static str, Duration)>,
}

impl Node {
    /// Starts a node (with kube-scheduler) on `plane`, pulling from `registry`, and waits until
    /// it is Ready and a probe Pod ran on it.
    pub fn start(plane: &ControlPlane, registry: &Registry) -> Result<Node> {
        Self::start_with(plane, registry, NodeOptions::default())
    }

    /// [`Node::start`] with options.
    pub fn start_with(plane: &ControlPlane, registry: &Registry, opts: NodeOptions) -> Result<Node> {
        Self::start_on(NodeNetwork::reserve()?, plane, registry, opts)
    }

    /// Starts a node on a network reserved beforehand ([`NodeNetwork::reserve`], e.g. so that
    /// the plane could be started with [`ControlPlaneOptions::node_gateway`]).
    pub fn start_on(
        network: NodeNetwork,
        plane: &ControlPlane,
        registry: &Registry,
        opts: NodeOptions,
    ) -> Result<Node> {
        let started = network.reserved_at;
        let bin_dir = plane.bin_dir().to_path_buf();
        let mut needed = vec![
            "containerd",
            "containerd-shim-runc-v2",
            "runc",
            "kubelet",
            "cni/bridge",
            "cni/host-local",
            "cni/loopback",
        ];
        if opts.scheduler {
            needed.push("kube-scheduler");
        }
        for name in needed {
            if !bin_dir.join(name).is_file() {
                bail!("{} is missing; run tests/controlplane/build.sh", bin_dir.join(name).display());
            }
        }
        let ports = net::free_ports(2)?;
        let (footprint, watchdog) = network.into_parts();
        let mut node = Node {
            processes: Vec::new(),
            watchdog,
            kubectl: plane.kubectl_client().clone(),
            bin_dir,
            kubelet_port: ports[0],
            healthz_port: ports[1],
            pause_image: oci::pause_reference(registry),
            timings: Vec::new(),
            footprint,
        };
        // On error `node` is dropped, which tears down whatever was set up.
        node.boot(plane, registry, &opts)?;
        node.timings.push(("total", started.elapsed()));
        eprintln!(
            "imagemap-e2e: node {} ready in {:.1?} (Pods in {}, folder {}): {:?}",
            node.footprint.node_name,
            started.elapsed(),
            node.footprint.subnet,
            node.footprint.dir.display(),
            node.timings
        );
        Ok(node)
    }

    fn boot(&mut self, plane: &ControlPlane, registry: &Registry, opts: &NodeOptions) -> Result<()> {
        let dir = self.footprint.dir.clone();
        save_sysctls(&dir.join("sysctl.saved"))?;
        self.create_cgroups()?;

        let step = Instant::now();
        oci::pause_image(registry).context("pushing the pause image")?;
        self.timings.push(("pause image", step.elapsed()));

        let step = Instant::now();
        self.write_containerd_config(registry)?;
        self.write_cni_config()?;
        let mut containerd = Command::new(self.bin_dir.join("containerd"));
        containerd.arg("--config").arg(dir.join("containerd.toml")).env("PATH", self.path_env());
        self.spawn("containerd", containerd)?;
        let socket = dir.join("containerd.sock");
        let log = dir.join("containerd.log");
        self.wait_ready("containerd", opts.ready_timeout, |_| {
            socket.exists() && std::fs::read_to_string(&log).is_ok_and(|l| l.contains("containerd successfully booted"))
        })?;
        self.timings.push(("containerd", step.elapsed()));

        let step = Instant::now();
        self.write_kubelet_config(plane)?;
        let mut kubelet = Command::new(self.bin_dir.join("kubelet"));
        kubelet
            .arg(format!("--config={}", dir.join("kubelet.yaml").display()))
            .arg(format!("--kubeconfig={}", plane.kubeconfig_path().display()))
            .arg(format!("--root-dir={}", dir.join("kubelet").display()))
            // Its self-signed serving certificate (default /var/lib/kubelet/pki, not under
            // --root-dir).
            .arg(format!("--cert-dir={}", dir.join("kubelet/pki").display()))
            .arg(format!("--hostname-override={}", self.footprint.node_name))
            .arg(format!("--node-ip={}", self.footprint.gateway))
            .arg("--v=1")
            // No iptables on PATH: the kubelet then adds no KUBE-FIREWALL/-HINT chains to the
            // machine's (global) tables, which no teardown could tell from another node's.
            .env("PATH", "/usr/local/bin:/usr/bin:/bin");
        self.spawn("kubelet", kubelet)?;
        let healthz = self.healthz_port;
        self.wait_ready("kubelet", opts.ready_timeout, |_| {
            net::http_get(healthz, "/healthz").is_ok_and(|r| r.ends_with("ok"))
        })?;
        self.timings.push(("kubelet healthz", step.elapsed()));

        if opts.scheduler {
            let mut scheduler = Command::new(self.bin_dir.join("kube-scheduler"));
            scheduler
                .arg(format!("--kubeconfig={}", plane.kubeconfig_path().display()))
                .arg("--leader-elect=false")
                .arg("--secure-port=0")
                .arg("--profiling=false");
            self.spawn("kube-scheduler", scheduler)?;
        }

        let step = Instant::now();
        let name = self.footprint.node_name.clone();
        self.wait_ready("kubelet", opts.ready_timeout, |kubectl| node_ready(kubectl, &name).0)?;
        // The TaintNodesByCondition admission plugin gives every new Node the not-ready taint;
        // the node-lifecycle controller, which does not run here, would lift it once the Node is
        // Ready. Lifted here instead (nothing puts it back).
        let untaint = self.kubectl.run(["taint", "node", &name, "node.kubernetes.io/not-ready:NoSchedule-"])?;
        if !untaint.status.success() && !String::from_utf8_lossy(&untaint.stderr).contains("not found") {
            crate::kubectl::check("kubectl taint node", &untaint)?;
        }
        self.wait_ready("kubelet", opts.ready_timeout, |kubectl| node_ready(kubectl, &name).1).map_err(|e| {
            let node = self.kubectl.run(["get", "node", &name, "--output", "yaml"]);
            let node = node.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
            e.context(format!("the Node is Ready but not schedulable:\n{node}"))
        })?;
        self.timings.push(("node Ready", step.elapsed()));

        let step = Instant::now();
        self.run_probe_pod(opts.ready_timeout)?;
        self.timings.push(("probe Pod", step.elapsed()));
        Ok(())
    }

    /// A Pod (the pause image, on the Pod network, placed by the scheduler with a node selector)
    /// must reach Running: proves containerd, runc, CNI, the registry and the scheduler.
    fn run_probe_pod(&mut self, timeout: Duration) -> Result<()> {
        let output = self.kubectl.run(["create", "serviceaccount", "default", "--namespace", "kube-system"])?;
        if !output.status.success() && !String::from_utf8_lossy(&output.stderr).contains("already exists") {
            crate::kubectl::check("kubectl create serviceaccount default -n kube-system", &output)?;
        }
        let pod = format!("{}-probe", self.footprint.node_name);
        let manifest = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": { "name": pod, "namespace": "kube-system" },
            "spec": {
                "nodeSelector": { "kubernetes.io/hostname": self.footprint.node_name },
                "automountServiceAccountToken": false,
                "terminationGracePeriodSeconds": 1,
                "containers": [{ "name": "probe", "image": self.pause_image }],
            },
        });
        self.kubectl.apply(&manifest.to_string())?;
        let kubectl = self.kubectl.clone();
        let result = self.wait_ready("kubelet", timeout, |_| {
            kubectl
                .run(["get", "pod", &pod, "--namespace", "kube-system", "--output", "jsonpath={.status.phase}"])
                .is_ok_and(|o| o.stdout == b"Running")
        });
        if let Err(e) = result {
            let describe = kubectl
                .run(["describe", "pod", &pod, "--namespace", "kube-system"])
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            return Err(e.context(format!(
                "the probe Pod did not run:\n{describe}\ncontainerd log:\n{}",
                self.log_tail("containerd", 30)
            )));
        }
        let _ = self.kubectl.run(["delete", "pod", &pod, "--namespace", "kube-system", "--wait=false"]);
        Ok(())
    }

    fn path_env(&self) -> String {
        format!("{}:/usr/local/bin:/usr/bin:/bin", self.bin_dir.display())
    }

    fn spawn(&mut self, name: &str, command: Command) -> Result<()> {
        let log = self.footprint.dir.join(format!("{name}.log"));
        let process = ManagedProcess::spawn_command(name, command, &log, &mut self.watchdog)?;
        self.processes.push(process);
        Ok(())
    }

    /// Polls `ready` until true; fails when any node process exits, or on timeout with the tail
    /// of `name`'s log.
    fn wait_ready(&mut self, name: &str, timeout: Duration, mut ready: impl FnMut(&Kubectl) -> bool) -> Result<()> {
        let started = Instant::now();
        let kubectl = self.kubectl.clone();
        let ready = poll_while_running(&mut self.processes, timeout, Duration::from_millis(250), || ready(&kubectl))?;
        if !ready {
            bail!(
                "{name} was not ready after {:.1?}; last lines of its log:\n{}",
                started.elapsed(),
                self.log_tail(name, 40)
            );
        }
        Ok(())
    }

    /// `mkdir` of the node's cgroup in every hierarchy: the kubelet refuses a cgroupRoot that
    /// does not exist, and puts `kubepods` under it.
    fn create_cgroups(&self) -> Result<()> {
        for mount in cgroup_mounts() {
            let path = mount.join(&self.footprint.cgroup);
            std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        }
        Ok(())
    }

    /// The Node's name.
    pub fn name(&self) -> &str {
        &self.footprint.node_name
    }

    /// What the node owns on the machine, for [`Footprint::leftovers`] after it is gone.
    pub fn footprint(&self) -> &Footprint {
        &self.footprint
    }

    /// The node's folder (logs `containerd.log`, `kubelet.log`, `kube-scheduler.log`).
    pub fn dir(&self) -> &Path {
        &self.footprint.dir
    }

    /// The bridge's (host's) address, also the node's InternalIP.
    pub fn gateway(&self) -> Ipv4Addr {
        self.footprint.gateway
    }

    /// The pause image reference containerd uses for sandboxes.
    pub fn pause_image(&self) -> &str {
        &self.pause_image
    }

    /// The pid of a running component (`containerd`, `kubelet`, `kube-scheduler`).
    pub fn pid(&self, component: &str) -> Option<u32> {
        self.processes.iter().find(|p| p.name() == component).map(ManagedProcess::pid)
    }

    /// The watchdog's pid.
    pub fn watchdog_pid(&self) -> u32 {
        self.watchdog.pid()
    }

    /// The last `lines` lines of a component's log.
    pub fn log_tail(&self, component: &str, lines: usize) -> String {
        crate::process::tail(&self.footprint.dir.join(format!("{component}.log")), lines)
    }

    /// How long start-up took, per step.
    pub fn timings(&self) -> &[(&'static str, Duration)] {
        &self.timings
    }

    /// [`Footprint::leftovers`] of this node (while it runs: everything it owns).
    pub fn leftovers(&self) -> Vec<String> {
        self.footprint.leftovers()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let started = Instant::now();
        self.watchdog.disarm();
        while let Some(mut process) = self.processes.pop() {
            process.stop(STOP_GRACE);
        }
        // The Node object goes too (after the kubelet, which would register it again): nothing
        // else would remove it.
        let _ = self.kubectl.run(["delete", "node", &self.footprint.node_name, "--wait=false"]);
        if let Err(e) = self.footprint.run_teardown() {
            eprintln!("imagemap-e2e: tearing down node {}: {e:#}", self.footprint.node_name);
        }
        eprintln!("imagemap-e2e: stopped node {} in {:.1?}", self.footprint.node_name, started.elapsed());
    }
}

/// A control plane (with the controller-manager and the Service endpoint controllers), a
/// registry and a node, for one test binary. The node's network is reserved first and the API
/// server listens on its gateway (not on 127.0.0.1): the node's Pods reach it at
/// [`ControlPlane::pod_api_server`], so a webhook installed in the cluster can watch ImageMaps.
#[derive(Debug)]
pub struct Cluster {
    /// Dropped first (field order), though a `static` is never dropped.
    pub node: Node,
    /// The registry Pods pull from.
    pub registry: Registry,
    /// The plane.
    pub plane: ControlPlane,
}

impl Cluster {
    /// Starts all three.
    pub fn start() -> Result<Cluster> {
        let network = NodeNetwork::reserve()?;
        let plane = ControlPlane::start(ControlPlaneOptions {
            controller_manager: true,
            service_endpoints: true,
            node_gateway: Some(network.gateway()),
            ..ControlPlaneOptions::default()
        })?;
        let registry = Registry::start(None)?;
        let node = Node::start_on(network, &plane, &registry, NodeOptions::default())?;
        Ok(Cluster { node, registry, plane })
    }
}

/// The cluster shared by the tests of one binary, started on first use; in a `static`, so its
/// watchdogs tear it down when the process exits. Panics in every caller if it did not start.
pub fn shared_cluster() -> &'static Cluster {
    static SHARED: OnceLock<Result<Cluster, String>> = OnceLock::new();
    match SHARED.get_or_init(|| Cluster::start().map_err(|e| format!("{e:#}"))) {
        Ok(cluster) => cluster,
        Err(e) => panic!("the shared cluster did not start: {e}"),
    }
}

/// Whether the Node's Ready condition is True, and whether it is also schedulable (no
/// `NoSchedule` taint, not cordoned).
fn node_ready(kubectl: &Kubectl, name: &str) -> (bool, bool) {
    let Ok(output) = kubectl.run(["get", "node", name, "--output", "json"]) else {
        return (false, false);
    };
    let Ok(node) = serde_json::from_slice::<Value>(&output.stdout) else {
        return (false, false);
    };
    let ready = node["status"]["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
    let schedulable = node["spec"]["unschedulable"] != true
        && node["spec"]["taints"].as_array().is_none_or(|t| t.iter().all(|t| t["effect"] != "NoSchedule"));
    (ready, ready && schedulable)
}

pub(super) fn ensure_root() -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().nth(1));
    if uid != Some("0") {
        bail!("a node needs root (it creates a bridge, cgroups and mounts)");
    }
    Ok(())
}

fn save_sysctls(path: &Path) -> Result<()> {
    let mut saved = String::new();
    for key in KUBELET_SYSCTLS {
        if let Ok(value) = std::fs::read_to_string(Path::new("/proc/sys").join(key)) {
            let _ = writeln!(saved, "{key} {}", value.trim());
        }
    }
    std::fs::write(path, saved)?;
    Ok(())
}
