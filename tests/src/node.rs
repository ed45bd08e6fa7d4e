//! A real node where Pods run: containerd (with runc and the CNI bridge plugin), a kubelet and
//! kube-scheduler, against a [`ControlPlane`], pulling from a local [`Registry`].
//!
//! Everything of a node is named after a random id and kept in its own folder
//! (`$TMPDIR/imagemap-node-ID`): containerd's root, state, sockets, shim sockets and network
//! namespaces, runc's state, the kubelet's root and pod logs, the CNI configuration and IPAM
//! data. Outside that folder a node owns a bridge `imgm-ID` with its own /24 (the host reaches
//! Pod IPs through it), and a cgroup `imagemap-node-ID` in every hierarchy (the kubelet's
//! `cgroupRoot`). Teardown is a generated shell script, `teardown.sh` in the folder, run by
//! [`Node`]'s `Drop` and, if the test process exits first, by a watchdog. See `tests/README.md`.
//! Needs root.

use std::fmt::Write as _;
use std::fs::File;
use std::hash::{BuildHasher as _, Hasher as _};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::controlplane::{ControlPlane, ControlPlaneOptions, KEEP_ENV};
use crate::kubectl::Kubectl;
use crate::net;
use crate::oci;
use crate::process::{ManagedProcess, Watchdog, STOP_GRACE};
use crate::registry::Registry;
use crate::wait::poll;

/// The prefix of every node's folder, cgroup and node name (`imagemap-node-ID`).
pub const NODE_PREFIX: &str = "imagemap-node-";
/// The prefix of every node's bridge (`imgm-ID`; interface names have at most 15 bytes).
pub const BRIDGE_PREFIX: &str = "imgm-";
/// Pod subnets are /24s taken from this /16 (`10.244.N.0/24`, N free on this machine).
pub const POD_NETWORK_PREFIX: [u8; 2] = [10, 244];
/// Where libcni caches results (outside the node's folder: cleaned by name).
const CNI_CACHE_DIR: &str = "/var/lib/cni/results";
/// A lock file that serialises picking a subnet and creating the bridge across processes.
const NETWORK_LOCK: &str = "imagemap-e2e-node-network.lock";
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

/// Everything a node leaves on the machine outside its processes, by name: what the teardown
/// removes and [`Footprint::leftovers`] looks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Footprint {
    /// The random id in every name.
    pub id: String,
    /// `$TMPDIR/imagemap-node-ID`.
    pub dir: PathBuf,
    /// The Node's name, `imagemap-node-ID`.
    pub node_name: String,
    /// The bridge, `imgm-ID`.
    pub bridge: String,
    /// The cgroup under every hierarchy's root, `imagemap-node-ID` (the kubelet's cgroupRoot).
    pub cgroup: String,
    /// The CNI network's name (libcni caches results as `/var/lib/cni/results/NAME-*`).
    pub cni_network: String,
    /// The Pod subnet, `10.244.N.0/24`.
    pub subnet: String,
    /// The bridge's address, `10.244.N.1`: the host's side, the node's InternalIP, where the
    /// kubelet listens.
    pub gateway: Ipv4Addr,
}

impl Footprint {
    fn new(id: &str, dir: PathBuf, third_octet: u8) -> Footprint {
        let [a, b] = POD_NETWORK_PREFIX;
        Footprint {
            id: id.to_string(),
            dir,
            node_name: format!("{NODE_PREFIX}{id}"),
            bridge: format!("{BRIDGE_PREFIX}{id}"),
            cgroup: format!("{NODE_PREFIX}{id}"),
            cni_network: format!("{NODE_PREFIX}{id}"),
            subnet: format!("{a}.{b}.{third_octet}.0/24"),
            gateway: Ipv4Addr::new(a, b, third_octet, 1),
        }
    }

    /// The teardown script (in the folder).
    pub fn teardown_script(&self) -> PathBuf {
        self.dir.join("teardown.sh")
    }

    /// What is left of this node on the machine, one line per item; empty when all is gone:
    /// processes whose command line names the folder or that sit in the node's cgroups, mounts
    /// under the folder, the folder itself, the bridge and any interface enslaved to it, the
    /// cgroups (every hierarchy), libcni's cached results.
    pub fn leftovers(&self) -> Vec<String> {
        let mut found = Vec::new();
        let dir = self.dir.to_string_lossy().into_owned();
        for (pid, cmdline) in processes() {
            if cmdline.contains(&format!("{dir}/")) && !cmdline.contains("teardown.sh") && pid != std::process::id() {
                found.push(format!("process {pid}: {cmdline}"));
            }
        }
        for mount in cgroup_mounts() {
            let path = mount.join(&self.cgroup);
            if path.exists() {
                found.push(format!("cgroup {}", path.display()));
                for pid in cgroup_pids(&path) {
                    found.push(format!("process {pid} in {}", path.display()));
                }
            }
        }
        for mount in mounts_under(&self.dir) {
            found.push(format!("mount {mount}"));
        }
        if self.dir.exists() {
            found.push(format!("folder {}", self.dir.display()));
        }
        if Path::new("/sys/class/net").join(&self.bridge).exists() {
            found.push(format!("bridge {}", self.bridge));
        }
        for link in interfaces_enslaved_to(&self.bridge) {
            found.push(format!("interface {link} (on {})", self.bridge));
        }
        for link in container_log_links() {
            if link.1.starts_with(&self.dir) {
                found.push(format!("log link {} -> {}", link.0.display(), link.1.display()));
            }
        }
        if let Ok(entries) = std::fs::read_dir(CNI_CACHE_DIR) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(&format!("{}-", self.cni_network)) {
                    found.push(format!("CNI cache {CNI_CACHE_DIR}/{name}"));
                }
            }
        }
        found
    }

    /// Runs the teardown script now (idempotent); its output on failure.
    pub fn run_teardown(&self) -> Result<()> {
        let script = self.teardown_script();
        if !script.is_file() {
            return Ok(());
        }
        let output = Command::new("sh").arg(&script).stdin(Stdio::null()).output().context("running sh")?;
        if !output.status.success() {
            bail!(
                "{} failed ({}):\n{}{}",
                script.display(),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }
}

/// What is left of any imagemap-e2e node on this machine (e.g. after `make dev-down`): processes
/// naming a node folder, node folders in `$TMPDIR`, mounts under them, `imgm-*` bridges,
/// `imagemap-node-*` cgroups, CNI cache entries. Empty when none.
pub fn all_leftovers() -> Vec<String> {
    let mut found = Vec::new();
    let tmp = std::env::temp_dir();
    let marker = format!("/{NODE_PREFIX}");
    for (pid, cmdline) in processes() {
        if cmdline.contains(&marker) && !cmdline.contains("teardown.sh") && pid != std::process::id() {
            found.push(format!("process {pid}: {cmdline}"));
        }
    }
    if let Ok(entries) = std::fs::read_dir(&tmp) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(NODE_PREFIX) {
                found.push(format!("folder {}", entry.path().display()));
                for mount in mounts_under(&entry.path()) {
                    found.push(format!("mount {mount}"));
                }
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir("/sys/class/net") {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(BRIDGE_PREFIX) {
                found.push(format!("bridge {}", entry.file_name().to_string_lossy()));
            }
        }
    }
    for mount in cgroup_mounts() {
        if let Ok(entries) = std::fs::read_dir(&mount) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(NODE_PREFIX) {
                    found.push(format!("cgroup {}", entry.path().display()));
                }
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(CNI_CACHE_DIR) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(NODE_PREFIX) {
                found.push(format!("CNI cache {}", entry.path().display()));
            }
        }
    }
    for (link, target) in container_log_links() {
        if target.to_string_lossy().contains(&marker) {
            found.push(format!("log link {} -> {}", link.display(), target.display()));
        }
    }
    if Path::new(KUBELET_DEVICE_SOCKET).exists() && !processes().iter().any(|(_, c)| c.contains("kubelet")) {
        found.push(format!("{KUBELET_DEVICE_SOCKET} (no kubelet runs)"));
    }
    found
}

/// The device-plugin socket every kubelet creates (a fixed path).
const KUBELET_DEVICE_SOCKET: &str = "/var/lib/kubelet/device-plugins/kubelet.sock";

/// `(link, target)` of the kubelet's symlinks in `/var/log/containers` (a fixed path).
fn container_log_links() -> Vec<(PathBuf, PathBuf)> {
    let Ok(entries) = std::fs::read_dir("/var/log/containers") else {
        return Vec::new();
    };
    entries.flatten().filter_map(|e| Some((e.path(), std::fs::read_link(e.path()).ok()?))).collect()
}

/// A node's folder, teardown script, watchdog and network (a free /24 and the bridge `imgm-ID`
/// holding its gateway address), reserved before anything runs: [`Node::start`] does it first;
/// [`Cluster::start`] does it before the control plane, so that the API server can listen on the
/// gateway, where the node's Pods reach it ([`ControlPlaneOptions::node_gateway`]). Dropped
/// unused, it runs the teardown script; [`Node::start_on`] takes it over.
#[derive(Debug)]
pub struct NodeNetwork {
    footprint: Footprint,
    /// `None` once a [`Node`] took it over.
    watchdog: Option<Watchdog>,
    reserved_at: Instant,
}

impl NodeNetwork {
    /// Creates the folder, the teardown script and its watchdog, picks a /24 no route of the
    /// machine overlaps and creates the bridge with the gateway address (under a lock shared by
    /// every process, so that two nodes never pick the same /24). Needs root.
    pub fn reserve() -> Result<NodeNetwork> {
        let reserved_at = Instant::now();
        ensure_root()?;
        let keep = std::env::var_os(KEEP_ENV).is_some_and(|v| !v.is_empty());
        // The network lock is held from picking a subnet until the bridge holds it.
        let lock = File::create(std::env::temp_dir().join(NETWORK_LOCK)).context("creating the network lock")?;
        lock.lock().context("locking the network lock")?;
        let (id, dir) = create_node_dir()?;
        let prepared = free_subnet().context("finding a free 10.244.N.0/24").and_then(|third_octet| {
            let footprint = Footprint::new(&id, dir.clone(), third_octet);
            // The teardown script exists before anything it removes does, and the watchdog runs
            // it if this process dies at any point from here on.
            std::fs::write(footprint.teardown_script(), teardown_script(&footprint, keep))?;
            let watchdog = Watchdog::spawn_with_teardown(None, Some(&footprint.teardown_script()))?;
            Ok((footprint, watchdog))
        });
        let (footprint, watchdog) = prepared.inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&dir);
        })?;
        if keep {
            eprintln!("imagemap-e2e: keeping {} ({KEEP_ENV} is set)", footprint.dir.display());
        }
        // On error `network` is dropped, which runs the teardown.
        let network = NodeNetwork { footprint, watchdog: Some(watchdog), reserved_at };
        create_bridge(&network.footprint)?;
        drop(lock);
        Ok(network)
    }

    /// The bridge's address: the host's side of the Pod network, where Pods reach the host.
    pub fn gateway(&self) -> Ipv4Addr {
        self.footprint.gateway
    }

    /// What the node owns (and will own) on the machine.
    pub fn footprint(&self) -> &Footprint {
        &self.footprint
    }

    fn into_parts(mut self) -> (Footprint, Watchdog) {
        let watchdog = self.watchdog.take().expect("a reserved network has its watchdog");
        (self.footprint.clone(), watchdog)
    }
}

impl Drop for NodeNetwork {
    fn drop(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            watchdog.disarm();
            if let Err(e) = self.footprint.run_teardown() {
                eprintln!("imagemap-e2e: tearing down node network {}: {e:#}", self.footprint.bridge);
            }
        }
    }
}

/// Creates the bridge with the gateway address (the CNI bridge plugin then only adds veths:
/// `isGateway` is off, so it changes no sysctl and adds no route or iptables rule).
fn create_bridge(footprint: &Footprint) -> Result<()> {
    let bridge = &footprint.bridge;
    let address = format!("{}/24", footprint.gateway);
    run_ok("ip", &["link", "add", bridge, "type", "bridge"])?;
    run_ok("ip", &["addr", "add", &address, "dev", bridge])?;
    run_ok("ip", &["link", "set", bridge, "up"])?;
    Ok(())
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
        let mut exited = None;
        let processes = &mut self.processes;
        let outcome = poll(timeout, Duration::from_millis(250), || {
            for process in processes.iter_mut() {
                if let Err(e) = process.ensure_running() {
                    exited = Some(e);
                    return Some(false);
                }
            }
            ready(&kubectl).then_some(true)
        });
        if let Some(e) = exited {
            return Err(e);
        }
        if outcome.is_none() {
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

    fn write_containerd_config(&self, registry: &Registry) -> Result<()> {
        let dir = &self.footprint.dir;
        let d = dir.display();
        let bin = self.bin_dir.display();
        // Shim sockets: containerd refuses a socket_dir longer than 42 bytes; the default then is
        // /run/containerd/s (sockets named by a hash of this node's address).
        let socket_dir = dir.join("s");
        let socket_dir_line = if socket_dir.as_os_str().len() <= 42 {
            format!("[plugins.'io.containerd.shim.v1.manager']\n  socket_dir = '{}'\n", socket_dir.display())
        } else {
            String::new()
        };
        let config = format!(
            r#"# containerd for imagemap-e2e node {name}: everything under {d}.
version = 3
root = '{d}/containerd/root'
state = '{d}/containerd/state'
temp = '{d}/containerd/tmp'
# No NRI socket in /var/run/nri; no snapshotters or tracing that are not used.
disabled_plugins = [
  'io.containerd.nri.v1.nri',
  'io.containerd.snapshotter.v1.btrfs',
  'io.containerd.snapshotter.v1.zfs',
  'io.containerd.snapshotter.v1.devmapper',
  'io.containerd.snapshotter.v1.blockfile',
  'io.containerd.snapshotter.v1.erofs',
  'io.containerd.differ.v1.erofs',
  'io.containerd.tracing.processor.v1.otlp',
  'io.containerd.internal.v1.tracing',
]

[grpc]
  address = '{d}/containerd.sock'

[ttrpc]
  address = '{d}/containerd.sock.ttrpc'

{socket_dir_line}
[plugins.'io.containerd.internal.v1.opt']
  path = '{d}/containerd/opt'

[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    # Nothing is pulled from the internet: the sandbox image is in the local registry.
    sandbox = '{pause}'
  [plugins.'io.containerd.cri.v1.images'.registry]
    # hosts.toml per registry: the local one over plain HTTP.
    config_path = '{d}/certs.d'

[plugins.'io.containerd.cri.v1.runtime']
  # This machine refuses to lower oom_score_adj: without this every sandbox fails.
  restrict_oom_score_adj = true
  # Network namespaces under the state folder, not /var/run/netns.
  netns_mounts_under_state_dir = true
  cdi_spec_dirs = []
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = 'runc'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = 'io.containerd.runc.v2'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = '{bin}/runc'
        Root = '{d}/runc'
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ['{bin}/cni']
    conf_dir = '{d}/cni/net.d'
    # containerd brings `lo` up itself: the loopback plugin would leave a result per sandbox in
    # /var/lib/cni/results, named by sandbox, which a killed node never deletes.
    use_internal_loopback = true
"#,
            name = self.footprint.node_name,
            pause = self.pause_image,
        );
        std::fs::write(dir.join("containerd.toml"), config)?;
        let host = registry.address();
        let hosts_dir = dir.join("certs.d").join(&host);
        std::fs::create_dir_all(&hosts_dir)?;
        std::fs::write(
            hosts_dir.join("hosts.toml"),
            format!(
                "server = 'http://{host}'\n\n[host.'http://{host}']\n  capabilities = ['pull', 'resolve']\n  skip_verify = true\n"
            ),
        )?;
        Ok(())
    }

    fn write_cni_config(&self) -> Result<()> {
        let dir = self.footprint.dir.join("cni/net.d");
        std::fs::create_dir_all(&dir)?;
        let config = json!({
            "cniVersion": "1.0.0",
            "name": self.footprint.cni_network,
            "plugins": [{
                "type": "bridge",
                "bridge": self.footprint.bridge,
                // The bridge and its address exist already (created at start).
                "isGateway": false,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": self.footprint.subnet, "gateway": self.footprint.gateway.to_string() }]],
                    "dataDir": self.footprint.dir.join("cni/ipam"),
                    // No default route: Pods reach the host and each other, nothing else.
                },
            }],
        });
        std::fs::write(dir.join("10-imagemap.conflist"), serde_json::to_vec_pretty(&config)?)?;
        Ok(())
    }

    fn write_kubelet_config(&self, plane: &ControlPlane) -> Result<()> {
        let dir = &self.footprint.dir;
        std::fs::write(dir.join("resolv.conf"), "# no DNS for Pods of an imagemap-e2e node\n")?;
        let config = json!({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            // cgroups v1 (hybrid: a v2 hierarchy beside) on the dev machine and CI.
            "failCgroupV1": false,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": format!("/{}", self.footprint.cgroup),
            "cgroupsPerQOS": true,
            "containerRuntimeEndpoint": format!("unix://{}", dir.join("containerd.sock").display()),
            // Serving (logs, exec) on the bridge address only; the apiserver authenticates with a
            // client certificate from the plane's client CA.
            "address": self.footprint.gateway.to_string(),
            "port": self.kubelet_port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": self.healthz_port,
            "authentication": {
                "anonymous": { "enabled": false },
                "webhook": { "enabled": false },
                "x509": { "clientCAFile": plane.pki().client_ca.cert_path },
            },
            "authorization": { "mode": "AlwaysAllow" },
            "rotateCertificates": false,
            "serverTLSBootstrap": false,
            "podLogsDir": dir.join("pod-logs"),
            "volumePluginDir": dir.join("volume-plugins"),
            "resolvConf": dir.join("resolv.conf"),
            "clusterDomain": "cluster.local",
            "failSwapOn": false,
            // Never evict for disk: the machine's disk is shared with builds.
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "0%",
                "nodefs.inodesFree": "0%",
                "imagefs.available": "0%",
                "imagefs.inodesFree": "0%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": false,
            "protectKernelDefaults": false,
            // The default -999 is refused here (this machine does not let a process lower its
            // oom_score_adj); 0 leaves it as it is.
            "oomScoreAdj": 0,
            "maxPods": 110,
        });
        std::fs::write(dir.join("kubelet.yaml"), serde_json::to_vec_pretty(&config)?)?;
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

fn ensure_root() -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().nth(1));
    if uid != Some("0") {
        bail!("a node needs root (it creates a bridge, cgroups and mounts)");
    }
    Ok(())
}

/// A random lower-case hex id and the folder `$TMPDIR/imagemap-node-ID`, created.
fn create_node_dir() -> Result<(String, PathBuf)> {
    for _ in 0..16 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(Instant::now().elapsed().as_nanos());
        hasher.write_u32(std::process::id());
        let id = format!("{:06x}", hasher.finish() & 0xff_ffff);
        let dir = std::env::temp_dir().join(format!("{NODE_PREFIX}{id}"));
        if Path::new("/sys/class/net").join(format!("{BRIDGE_PREFIX}{id}")).exists() {
            continue;
        }
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok((id, dir)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
    }
    bail!("no free node id")
}

/// A third octet N such that 10.244.N.0/24 overlaps no route of this machine (another node's
/// bridge has one as soon as it exists).
fn free_subnet() -> Result<u8> {
    let routes = std::fs::read_to_string("/proc/net/route").context("reading /proc/net/route")?;
    let taken: Vec<(u32, u32)> = routes
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let destination = u32::from_str_radix(fields.get(1)?, 16).ok()?;
            let mask = u32::from_str_radix(fields.get(7)?, 16).ok()?;
            // /proc/net/route prints the in-memory (network order) value: little-endian here.
            Some((u32::from_be_bytes(destination.to_le_bytes()), u32::from_be_bytes(mask.to_le_bytes())))
        })
        .filter(|&(_, mask)| mask != 0) // the default route overlaps everything
        .collect();
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    let start = (hasher.finish() % 254) as u32;
    for i in 0..254u32 {
        let octet = 1 + (start + i) % 254;
        let [a, b] = POD_NETWORK_PREFIX;
        let candidate = u32::from_be_bytes([a, b, octet as u8, 0]);
        let candidate_mask = 0xffff_ff00u32;
        let overlaps = taken.iter().any(|&(destination, mask)| {
            let common = mask & candidate_mask;
            destination & common == candidate & common
        });
        if !overlaps {
            return Ok(octet as u8);
        }
    }
    bail!("every 10.244.N.0/24 overlaps a route")
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

fn run_ok(program: &str, args: &[&str]) -> Result<()> {
    let output =
        Command::new(program).args(args).stdin(Stdio::null()).output().with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!("{program} {} failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

/// Every process's pid and command line (NULs as spaces).
fn processes() -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            if cmdline.is_empty() {
                return None; // kernel thread or zombie
            }
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            Some((pid, text.trim_end().to_string()))
        })
        .collect()
}

/// The mount points of every cgroup (v1 and v2) hierarchy.
fn cgroup_mounts() -> Vec<PathBuf> {
    mountinfo()
        .into_iter()
        .filter(|(_, fstype)| fstype == "cgroup" || fstype == "cgroup2")
        .map(|(mount_point, _)| PathBuf::from(mount_point))
        .collect()
}

/// `(mount point, file system type)` of every mount in this process's namespace.
fn mountinfo() -> Vec<(String, String)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let separator = fields.iter().position(|f| *f == "-")?;
            Some((unescape_mount(fields.get(4)?), fields.get(separator + 1)?.to_string()))
        })
        .collect()
}

/// Mount points at or under `dir`.
fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    mountinfo()
        .into_iter()
        .map(|(mount_point, _)| mount_point)
        .filter(|m| *m == dir || m.starts_with(&format!("{dir}/")))
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space...).
fn unescape_mount(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let value = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The pids in a cgroup and all its descendants.
fn cgroup_pids(path: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            stack.extend(entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Interfaces whose master is `bridge`.
fn interfaces_enslaved_to(bridge: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(Path::new("/sys/class/net").join(bridge).join("brif")) else {
        return Vec::new();
    };
    entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()
}

/// The node's teardown, as a POSIX shell script, so that the watchdog (a `sh`) can run it when
/// the test process is gone. Idempotent; exits non-zero, saying what is left, if something stays.
fn teardown_script(footprint: &Footprint, keep: bool) -> String {
    format!(
        r#"#!/bin/sh
# Teardown of imagemap-e2e node {node}, generated by tests/src/node.rs. Idempotent.
dir='{dir}'
bridge='{bridge}'
cgroup='{cgroup}'
cni_network='{cni_network}'
keep={keep}
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# Processes of the node: command line names the folder (kubelet, containerd, its shims, runc), or
# in the node's cgroups (containers). Not this script (its subshells share its command line).
node_pids() {{
  for p in /proc/[0-9]*; do
    cmd=$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null) || continue
    case "$cmd" in *teardown.sh*) continue ;; *"$dir/"*) echo "${{p#/proc/}}" ;; esac
  done
  for m in $(cgroup_mounts); do
    [ -d "$m/$cgroup" ] && find "$m/$cgroup" -name cgroup.procs -exec cat {{}} + 2>/dev/null
  done
}}
cgroup_mounts() {{
  awk '{{ for (i = 7; i <= NF; i++) if ($i == "-") {{ if ($(i+1) == "cgroup" || $(i+1) == "cgroup2") print $5; break }} }}' /proc/self/mountinfo
}}
mounts() {{
  awk -v d="$dir" '$5 == d || index($5, d "/") == 1 {{ print $5 }}' /proc/self/mountinfo | sort -r
}}

# 1. Kill (the kubelet and containerd were stopped already, unless this runs after a crash).
i=0
while [ $i -lt 100 ]; do
  pids=$(node_pids | sort -u)
  [ -z "$pids" ] && break
  kill -KILL $pids 2>/dev/null
  sleep 0.1
  i=$((i + 1))
done

# 2. Unmount everything under the folder (rootfs overlays, shm, secrets' tmpfs, network
#    namespace bind mounts, the kubelet's rshared bind of its root), deepest first.
i=0
while [ $i -lt 20 ]; do
  ms=$(mounts)
  [ -z "$ms" ] && break
  for m in $ms; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
  i=$((i + 1))
done

# 3. The bridge, and any veth still on it (they go with their network namespaces otherwise).
for l in /sys/class/net/"$bridge"/brif/*; do [ -e "$l" ] && ip link del "${{l##*/}}" 2>/dev/null; done
[ -e "/sys/class/net/$bridge" ] && ip link del "$bridge" 2>/dev/null

# 4. cgroups, in every hierarchy, leaves first (a v1 memory cgroup may need a moment after its
#    last process).
i=0
while [ $i -lt 100 ]; do
  left=0
  for m in $(cgroup_mounts); do
    if [ -d "$m/$cgroup" ]; then
      find "$m/$cgroup" -depth -type d -exec rmdir {{}} \; 2>/dev/null
      [ -d "$m/$cgroup" ] && left=1
    fi
  done
  [ $left -eq 0 ] && break
  pids=$(node_pids | sort -u)
  [ -n "$pids" ] && kill -KILL $pids 2>/dev/null
  sleep 0.1
  i=$((i + 1))
done

# 5. What the kubelet changed: its sysctls; what libcni cached outside the folder.
if [ -f "$dir/sysctl.saved" ]; then
  while read -r key value; do echo "$value" > "/proc/sys/$key" 2>/dev/null; done < "$dir/sysctl.saved"
  rm -f "$dir/sysctl.saved"
fi
rm -f /var/lib/cni/results/"$cni_network"-* 2>/dev/null

# The kubelet writes two things at fixed paths: symlinks to its Pods' logs in
# /var/log/containers, and the device-plugin socket /var/lib/kubelet/device-plugins/kubelet.sock
# (shared by every kubelet on the machine: removed, with the folders if empty, once no kubelet
# runs).
for l in /var/log/containers/*; do
  case "$(readlink "$l" 2>/dev/null)" in "$dir/"*) rm -f "$l" ;; esac
done
kubelets=0
for c in /proc/[0-9]*/comm; do [ "$(cat "$c" 2>/dev/null)" = kubelet ] && kubelets=1; done
if [ $kubelets = 0 ]; then
  rm -f /var/lib/kubelet/device-plugins/kubelet.sock
  rmdir /var/lib/kubelet/device-plugins /var/lib/kubelet /var/log/containers 2>/dev/null
fi

# 6. The folder, never crossing into a mount that is still there.
if [ -z "$(mounts)" ] && [ "$keep" = 0 ]; then rm -rf --one-file-system "$dir"; fi

# What is left.
status=0
[ -n "$(node_pids)" ] && {{ echo "processes left: $(node_pids | sort -u | tr '\n' ' ')"; status=1; }}
[ -n "$(mounts)" ] && {{ echo "mounts left: $(mounts | tr '\n' ' ')"; status=1; }}
[ -e "/sys/class/net/$bridge" ] && {{ echo "bridge left: $bridge"; status=1; }}
for m in $(cgroup_mounts); do [ -d "$m/$cgroup" ] && {{ echo "cgroup left: $m/$cgroup"; status=1; }}; done
[ "$keep" = 0 ] && [ -e "$dir" ] && {{ echo "folder left: $dir"; status=1; }}
exit $status
"#,
        node = footprint.node_name,
        dir = footprint.dir.display(),
        bridge = footprint.bridge,
        cgroup = footprint.cgroup,
        cni_network = footprint.cni_network,
        keep = u8::from(keep),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_unescaped() {
        assert_eq!(unescape_mount(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mount("/plain"), "/plain");
    }

    #[test]
    fn names_fit_the_kernel_limits() {
        let f = Footprint::new("abcdef", PathBuf::from("/tmp/imagemap-node-abcdef"), 7);
        assert!(f.bridge.len() <= 15, "{}", f.bridge);
        assert_eq!(f.subnet, "10.244.7.0/24");
        assert_eq!(f.gateway, Ipv4Addr::new(10, 244, 7, 1));
        let script = teardown_script(&f, false);
        assert!(script.contains("dir='/tmp/imagemap-node-abcdef'"));
    }

    #[test]
    fn a_free_subnet_is_found() {
        let octet = free_subnet().expect("a free /24");
        assert!((1..=254).contains(&octet));
    }
}
