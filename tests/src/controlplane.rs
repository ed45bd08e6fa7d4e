//! A real, throw-away Kubernetes control plane: etcd, kube-apiserver and (optionally)
//! kube-controller-manager as child processes on free loopback ports, in a temporary folder.
//!
//! No scheduler and no kubelet run: Pods are stored and admitted (webhooks included) but stay
//! `Pending`. See `tests/README.md` for every flag and why.

use std::ffi::OsStr;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::binaries;
use crate::kubectl::{self, Kubectl};
use crate::net;
use crate::pki::Pki;
use crate::process::{poll_while_running, ManagedProcess, Watchdog, STOP_GRACE};

/// Keeps the plane's folder (logs, certificates, kubeconfig, etcd data) after teardown when set
/// to a non-empty value; its path is printed at start.
pub const KEEP_ENV: &str = "IMAGEMAP_E2E_KEEP";

/// The CRD folder, relative to the workspace root, installed at start when present.
pub const CRD_DIR: &str = "charts/imagemap/crds";

/// The ImageMap CRD file, relative to the workspace root.
pub const IMAGEMAP_CRD_FILE: &str = "charts/imagemap/crds/imagemaps.tilt.dev.yaml";

/// The Service CIDR (`--service-cluster-ip-range`). Never routed: nothing runs that would
/// program or use Service IPs.
pub const SERVICE_CIDR: &str = "10.0.0.0/24";

/// The service-account token issuer (`--service-account-issuer`).
pub const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// How many times [`ControlPlane::start`] tries again after a port was taken in between.
const PORT_RETRIES: usize = 3;

/// What to start.
#[derive(Clone, Debug)]
pub struct ControlPlaneOptions {
    /// Also run kube-controller-manager (Deployments → ReplicaSets → Pods, ServiceAccounts,
    /// namespace deletion, garbage collection).
    pub controller_manager: bool,
    /// Install the CRDs in [`CRD_DIR`] when the folder has any (and wait for Established).
    pub install_crds: bool,
    /// Deadline for each component to become ready.
    pub ready_timeout: Duration,
    /// Also run the endpoints and endpointslice controllers (with `controller_manager`), so that
    /// Services get endpoints: the API server reaches a Service (a webhook behind one) by its
    /// endpoints (`--enable-aggregator-routing`). Only useful with a [`crate::Node`].
    pub service_endpoints: bool,
    /// A node's bridge address, reserved before the plane ([`crate::node::NodeNetwork`]): the
    /// API server listens there instead of on 127.0.0.1, its serving certificate covers it, and
    /// the kubeconfigs point at it, so that Pods on that node reach the API server at
    /// `https://GATEWAY:PORT` (see [`ControlPlane::pod_api_server`]). `None`: loopback only.
    pub node_gateway: Option<Ipv4Addr>,
}

impl Default for ControlPlaneOptions {
    fn default() -> Self {
        ControlPlaneOptions {
            controller_manager: false,
            install_crds: true,
            ready_timeout: Duration::from_secs(180),
            service_endpoints: false,
            node_gateway: None,
        }
    }
}

/// How long start-up took, per step.
#[derive(Clone, Debug, Default)]
pub struct StartupTimings {
    /// Certificates, keys and kubeconfigs.
    pub pki: Duration,
    /// etcd start until `/health` is true.
    pub etcd: Duration,
    /// kube-apiserver start until `/readyz` is `ok`.
    pub apiserver: Duration,
    /// kube-controller-manager start until the `default` ServiceAccount exists in `default`.
    pub controller_manager: Option<Duration>,
    /// CRD apply until Established.
    pub crds: Option<Duration>,
    /// Everything, from the start of the successful attempt to ready.
    pub total: Duration,
}

/// A running control plane. Dropping it stops every process and removes its folder.
#[derive(Debug)]
pub struct ControlPlane {
    // Teardown order is explicit in `Drop`.
    processes: Vec<ManagedProcess>,
    watchdog: Watchdog,
    dir: tempfile::TempDir,
    bin_dir: PathBuf,
    pki: Pki,
    kubectl: Kubectl,
    kubeconfig_path: PathBuf,
    /// Where the API server listens: 127.0.0.1, or a node's gateway.
    address: Ipv4Addr,
    /// Whether `address` is a node's gateway that Pods reach.
    serves_pods: bool,
    apiserver_port: u16,
    etcd_port: u16,
    etcd_peer_port: u16,
    timings: StartupTimings,
    /// How many times [`ControlPlane::stop_apiserver`] ran (names the logs it keeps).
    apiserver_stops: usize,
}

impl ControlPlane {
    /// Starts a plane and waits until it is ready (and, if asked, the controller-manager works
    /// and the CRDs are established). Fails with the tail of the failing component's log.
    pub fn start(opts: ControlPlaneOptions) -> Result<ControlPlane> {
        let bin_dir = binaries::bin_dir()?;
        let mut attempt = 1;
        loop {
            match Self::start_in(&bin_dir, &opts) {
                Err(e) if attempt < PORT_RETRIES && format!("{e:#}").contains("address already in use") => {
                    eprintln!("imagemap-e2e: a port was taken while starting, trying again: {e:#}");
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    fn start_in(bin_dir: &Path, opts: &ControlPlaneOptions) -> Result<ControlPlane> {
        let started = Instant::now();
        let mut dir =
            tempfile::Builder::new().prefix("imagemap-e2e-").tempdir().context("creating the plane's folder")?;
        let keep = std::env::var_os(KEEP_ENV).is_some_and(|v| !v.is_empty());
        if keep {
            dir.disable_cleanup(true);
            eprintln!("imagemap-e2e: keeping {} ({KEEP_ENV} is set)", dir.path().display());
        }
        let mut pki = Pki::generate(&dir.path().join("pki"))?;
        let address = opts.node_gateway.unwrap_or(Ipv4Addr::LOCALHOST);
        if let Some(gateway) = opts.node_gateway {
            reissue_apiserver_certificate(&mut pki, gateway)?;
        }
        let ports = net::free_ports(3)?;
        let (apiserver_port, etcd_port, etcd_peer_port) = (ports[0], ports[1], ports[2]);
        let server = format!("https://{address}:{apiserver_port}");
        let kubeconfig_path = dir.path().join("admin.kubeconfig");
        crate::kubeconfig::write(
            &kubeconfig_path,
            "imagemap-e2e",
            &server,
            &pki.server_ca.cert_pem,
            &pki.admin.cert_pem,
            &pki.admin.key_pem,
        )?;
        crate::kubeconfig::write(
            &dir.path().join("controller-manager.kubeconfig"),
            "imagemap-e2e",
            &server,
            &pki.server_ca.cert_pem,
            &pki.controller_manager.cert_pem,
            &pki.controller_manager.key_pem,
        )?;
        let watchdog = Watchdog::spawn((!keep).then_some(dir.path()))?;
        let kubectl = Kubectl::new(&kubeconfig_path, &dir.path().join("kubectl-cache"));
        let mut plane = ControlPlane {
            processes: Vec::new(),
            watchdog,
            dir,
            bin_dir: bin_dir.to_path_buf(),
            pki,
            kubectl,
            kubeconfig_path,
            address,
            serves_pods: opts.node_gateway.is_some(),
            apiserver_port,
            etcd_port,
            etcd_peer_port,
            timings: StartupTimings { pki: started.elapsed(), ..StartupTimings::default() },
            apiserver_stops: 0,
        };
        // On error `plane` is dropped here, which stops whatever was started.
        plane.boot(opts)?;
        plane.timings.total = started.elapsed();
        eprintln!(
            "imagemap-e2e: control plane ready at {} in {:.1?} ({:?})",
            plane.server_url(),
            plane.timings.total,
            plane.timings
        );
        Ok(plane)
    }

    fn boot(&mut self, opts: &ControlPlaneOptions) -> Result<()> {
        let step = Instant::now();
        self.spawn("etcd", self.etcd_args())?;
        let port = self.etcd_port;
        self.wait_ready("etcd", opts.ready_timeout, Duration::from_millis(100), |_| {
            net::http_get(port, "/health").is_ok_and(|r| r.contains(r#""health":"true""#))
        })?;
        self.timings.etcd = step.elapsed();

        let step = Instant::now();
        self.spawn("kube-apiserver", self.apiserver_args())?;
        let at = self.apiserver_socket();
        self.wait_ready("kube-apiserver", opts.ready_timeout, Duration::from_millis(250), |kubectl| {
            apiserver_ready(at, kubectl)
        })
        .map_err(|e| {
            // Still running but not ready: say which checks fail.
            if self.processes.last_mut().is_some_and(|p| p.ensure_running().is_ok()) {
                let verbose = self
                    .kubectl
                    .run(["get", "--raw", "/readyz?verbose"])
                    .map(|o| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)));
                e.context(format!("/readyz?verbose says:\n{}", verbose.unwrap_or_else(|e| e.to_string())))
            } else {
                e
            }
        })?;
        self.timings.apiserver = step.elapsed();

        if opts.controller_manager {
            let step = Instant::now();
            self.spawn("kube-controller-manager", self.controller_manager_args(opts.service_endpoints))?;
            // No health port (--secure-port=0): the serviceaccount controller creating the
            // `default` ServiceAccount in `default` shows that the controllers run.
            self.wait_ready("kube-controller-manager", opts.ready_timeout, Duration::from_millis(500), |kubectl| {
                kubectl
                    .run(["get", "serviceaccount", "default", "--namespace", "default", "--output", "name"])
                    .is_ok_and(|o| o.status.success())
            })?;
            self.timings.controller_manager = Some(step.elapsed());
        }

        if opts.install_crds {
            self.timings.crds = self.install_crds(opts.ready_timeout)?;
        }
        Ok(())
    }

    /// Applies every CRD in [`CRD_DIR`] (server-side: big CRDs overflow the annotation
    /// client-side apply keeps) and waits until they are Established. `None` if there is none.
    fn install_crds(&self, timeout: Duration) -> Result<Option<Duration>> {
        let dir = binaries::workspace_root().join(CRD_DIR);
        let has_yaml = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .flatten()
                    .any(|e| e.path().extension().is_some_and(|x| x == "yaml" || x == "yml" || x == "json"))
            })
            .unwrap_or(false);
        if !has_yaml {
            eprintln!("imagemap-e2e: no CRDs in {}, skipping CRD installation", dir.display());
            return Ok(None);
        }
        let step = Instant::now();
        let dir_arg = dir.as_os_str();
        self.kubectl.ok([
            OsStr::new("apply"),
            OsStr::new("--server-side"),
            OsStr::new("--force-conflicts"),
            OsStr::new("-f"),
            dir_arg,
        ])?;
        let timeout_arg = format!("--timeout={}s", timeout.as_secs().max(1));
        self.kubectl.ok([
            OsStr::new("wait"),
            OsStr::new("--for=condition=established"),
            OsStr::new(&timeout_arg),
            OsStr::new("-f"),
            dir_arg,
        ])?;
        eprintln!("imagemap-e2e: installed the CRDs in {} in {:.1?}", dir.display(), step.elapsed());
        Ok(Some(step.elapsed()))
    }

    fn spawn(&mut self, name: &str, args: Vec<String>) -> Result<()> {
        let program = self.bin_dir.join(name);
        if !program.is_file() {
            bail!("{} is missing; run tests/controlplane/build.sh", program.display());
        }
        let log = self.dir.path().join(format!("{name}.log"));
        let process = ManagedProcess::spawn(name, &program, &args, &log, &mut self.watchdog)?;
        self.processes.push(process);
        Ok(())
    }

    /// Polls `ready` until true; fails if the last started process exits or on timeout, with
    /// the tail of its log.
    fn wait_ready(
        &mut self,
        name: &str,
        timeout: Duration,
        interval: Duration,
        mut ready: impl FnMut(&Kubectl) -> bool,
    ) -> Result<()> {
        let started = Instant::now();
        let kubectl = self.kubectl.clone();
        let process = self.processes.last_mut().context("no process started")?;
        let ready = poll_while_running(std::slice::from_mut(process), timeout, interval, || ready(&kubectl))?;
        if !ready {
            bail!(
                "{name} was not ready after {:.1?}; last lines of {}:\n{}",
                started.elapsed(),
                process.log_path().display(),
                process.log_tail(40)
            );
        }
        Ok(())
    }

    /// etcd's flags. Plain HTTP: etcd listens on 127.0.0.1 only and its one client is this
    /// plane's apiserver, so TLS would cost certificates and handshake CPU for no protection
    /// (the test boundary is the machine). What the tests exercise, the apiserver's HTTPS and
    /// client-certificate authentication, is real TLS.
    fn etcd_args(&self) -> Vec<String> {
        let client = format!("http://127.0.0.1:{}", self.etcd_port);
        let peer = format!("http://127.0.0.1:{}", self.etcd_peer_port);
        vec![
            // One member named `default` (the name `--initial-cluster` refers to).
            "--name=default".into(),
            // Data in the plane's folder, removed with it.
            format!("--data-dir={}", self.dir.path().join("etcd").display()),
            // Client traffic (the apiserver) on a free loopback port.
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            // The peer port is unused by a single member but always bound: a free port too,
            // not the default 2380, so planes can run side by side.
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster=default={peer}"),
            // No fsync: the data is thrown away; fsync is the slowest part of etcd on a VM disk.
            "--unsafe-no-fsync=true".into(),
            // Less log volume; errors still show.
            "--log-level=warn".into(),
        ]
    }

    /// kube-apiserver's flags.
    fn apiserver_args(&self) -> Vec<String> {
        let pki = &self.pki;
        vec![
            // Storage: this plane's etcd.
            format!("--etcd-servers=http://127.0.0.1:{}", self.etcd_port),
            // HTTPS on a free port, on loopback only; with a node, on the node's bridge address
            // only (the host and that node's Pods reach it, nothing beyond the machine).
            format!("--secure-port={}", self.apiserver_port),
            format!("--bind-address={}", self.address),
            // The address the apiserver advertises to the cluster (its identity lease...).
            format!("--advertise-address={}", self.address),
            // The default `lease` reconciler writes the advertise address into the `kubernetes`
            // Service's endpoints, and refuses to start with a loopback address there (endpoint
            // validation). Nothing in-cluster reaches the apiserver through that Service (no
            // kube-proxy gives its ClusterIP a meaning; Pods of a node are pointed at the node's
            // gateway instead, see `pod_api_server`), so: no reconciler, no endpoints.
            "--endpoint-reconciler-type=none".into(),
            // Serving certificate (SANs 127.0.0.1, localhost, kubernetes.default.svc..., and the
            // node's gateway when there is one).
            format!("--tls-cert-file={}", pki.apiserver.cert_path.display()),
            format!("--tls-private-key-file={}", pki.apiserver.key_path.display()),
            // Client-certificate authentication: the admin and controller-manager certificates
            // (O=system:masters) are signed by this CA.
            format!("--client-ca-file={}", pki.client_ca.cert_path.display()),
            // Real authorization, as in a cluster: Node for kubelets (none here), RBAC for the
            // rest. system:masters is allowed everything.
            "--authorization-mode=Node,RBAC".into(),
            // Service-account tokens: required flags since 1.20. The controller-manager signs
            // with the same private key.
            format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"),
            format!("--service-account-key-file={}", pki.service_account.cert_path.display()),
            format!("--service-account-signing-key-file={}", pki.service_account.key_path.display()),
            // ClusterIPs are allocated from here (the `kubernetes` Service gets 10.0.0.1);
            // nothing routes to them.
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            // Pods may ask for privileged containers (charts under test might).
            "--allow-privileged=true".into(),
            // No profiling endpoints.
            "--profiling=false".into(),
            // For a node (src/node.rs), unused without one. Logs, exec and port-forward go to
            // the kubelet at its InternalIP (the node's bridge address; its Hostname address is
            // a name nothing resolves) and authenticate with the admin certificate, which the
            // kubelet trusts through the client CA.
            "--kubelet-preferred-address-types=InternalIP".into(),
            format!("--kubelet-client-certificate={}", pki.admin.cert_path.display()),
            format!("--kubelet-client-key={}", pki.admin.key_path.display()),
            // Webhooks (and aggregated APIs) behind a Service are dialled at the Service's
            // endpoints (Pod IPs, routed through the node's bridge), not its ClusterIP: no
            // kube-proxy runs.
            "--enable-aggregator-routing=true".into(),
        ]
    }

    /// kube-controller-manager's flags.
    fn controller_manager_args(&self, service_endpoints: bool) -> Vec<String> {
        let pki = &self.pki;
        // Only what the tests need; the rest (node lifecycle, IPAM, jobs...) would only cost CPU.
        // See tests/README.md.
        let mut controllers = "deployment-controller,replicaset-controller,serviceaccount-controller,serviceaccount-token-controller,root-ca-certificate-publisher-controller,namespace-controller,garbage-collector-controller".to_string();
        if service_endpoints {
            controllers.push_str(",endpoints-controller,endpointslice-controller");
        }
        vec![
            // Talks to the apiserver as system:kube-controller-manager in system:masters.
            format!("--kubeconfig={}", self.dir.path().join("controller-manager.kubeconfig").display()),
            format!("--controllers={controllers}"),
            // Signs legacy service-account token Secrets (serviceaccount-token controller).
            format!("--service-account-private-key-file={}", pki.service_account.key_path.display()),
            // Published as the `kube-root-ca.crt` ConfigMap in every namespace.
            format!("--root-ca-file={}", pki.server_ca.cert_path.display()),
            // One identity for every controller: no per-controller ServiceAccounts and RBAC.
            "--use-service-account-credentials=false".into(),
            // A single instance: no leases to acquire (and no 15 s wait for one).
            "--leader-elect=false".into(),
            // No HTTPS health/metrics endpoint: nothing scrapes it, and it would need a port
            // and delegated authentication.
            "--secure-port=0".into(),
            // No profiling endpoints.
            "--profiling=false".into(),
        ]
    }

    /// The API server URL, `https://127.0.0.1:PORT` (`https://GATEWAY:PORT` with
    /// [`ControlPlaneOptions::node_gateway`]).
    pub fn server_url(&self) -> String {
        format!("https://{}:{}", self.address, self.apiserver_port)
    }

    /// The apiserver's port (on [`ControlPlane::address`]).
    pub fn apiserver_port(&self) -> u16 {
        self.apiserver_port
    }

    /// The one address the API server listens on: 127.0.0.1, or the node's gateway.
    pub fn address(&self) -> Ipv4Addr {
        self.address
    }

    /// Where a Pod of the node reaches the API server, `(GATEWAY, PORT)`, when the plane was
    /// started with [`ControlPlaneOptions::node_gateway`]; `None` otherwise (loopback only).
    /// In-cluster clients find the API server through `KUBERNETES_SERVICE_HOST` and
    /// `KUBERNETES_SERVICE_PORT`, which the kubelet sets to the `kubernetes` Service's ClusterIP
    /// (routed nowhere: no kube-proxy runs); a Pod gets these values instead, e.g. through the
    /// chart's `extraEnv`. The Pod trusts the certificate with its `kube-root-ca.crt` (the
    /// server CA) as usual.
    pub fn pod_api_server(&self) -> Option<(Ipv4Addr, u16)> {
        self.serves_pods.then_some((self.address, self.apiserver_port))
    }

    fn apiserver_socket(&self) -> SocketAddr {
        SocketAddr::from((self.address, self.apiserver_port))
    }

    /// The admin kubeconfig (cluster-admin via `O=system:masters`, certificates embedded).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// The folder holding etcd, kube-apiserver, kube-controller-manager and helm.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The plane's temporary folder (logs `NAME.log`, `pki/`, kubeconfigs, etcd data).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server CA (PEM) that signed the apiserver's certificate.
    pub fn ca_pem(&self) -> &str {
        &self.pki.server_ca.cert_pem
    }

    /// Certificates and keys of this plane.
    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    /// How long start-up took.
    pub fn timings(&self) -> &StartupTimings {
        &self.timings
    }

    /// The pid of a running component (`etcd`, `kube-apiserver`, `kube-controller-manager`).
    pub fn pid(&self, component: &str) -> Option<u32> {
        self.processes.iter().find(|p| p.name() == component).map(ManagedProcess::pid)
    }

    /// The pid of the watchdog that kills the plane if the test process dies.
    pub fn watchdog_pid(&self) -> u32 {
        self.watchdog.pid()
    }

    /// The last `lines` lines of a component's log, e.g. to explain a failure.
    pub fn log_tail(&self, component: &str, lines: usize) -> String {
        crate::process::tail(&self.dir.path().join(format!("{component}.log")), lines)
    }

    /// The kubectl bound to the admin kubeconfig.
    pub fn kubectl_client(&self) -> &Kubectl {
        &self.kubectl
    }

    /// Runs the real kubectl with the admin kubeconfig; any exit status. Panics only if kubectl
    /// cannot be run at all.
    pub fn kubectl<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.kubectl.run(args).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Runs kubectl and returns stdout; panics with stderr if it fails.
    pub fn kubectl_ok<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.kubectl.ok(args).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// `kubectl apply -f -` with `yaml` (one or more documents); returns stdout, panics on
    /// failure.
    pub fn apply_yaml(&self, yaml: &str) -> String {
        self.kubectl.apply(yaml).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Creates a namespace with a unique name derived from `prefix` (tests isolate by
    /// namespace) and returns the name. Also creates its `default` ServiceAccount right away,
    /// so Pods can be created at once: the ServiceAccount admission plugin rejects Pods
    /// until it exists, and without a controller-manager nothing else would create it (with
    /// one, its creation races ours; either wins). Panics on failure.
    pub fn create_namespace(&self, prefix: &str) -> String {
        self.try_create_namespace(prefix).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// [`ControlPlane::create_namespace`], returning errors.
    pub fn try_create_namespace(&self, prefix: &str) -> Result<String> {
        let name = unique_namespace_name(prefix);
        self.kubectl.ok(["create", "namespace", &name])?;
        let output = self.kubectl.run(["create", "serviceaccount", "default", "--namespace", &name])?;
        if !output.status.success() && !String::from_utf8_lossy(&output.stderr).contains("already exists") {
            kubectl::check("kubectl create serviceaccount default", &output)?;
        }
        Ok(name)
    }

    /// Stops kube-apiserver (SIGTERM, SIGKILL after a grace period), as when it crashes or is
    /// upgraded: etcd keeps running with the data, and the port, certificates and kubeconfigs stay,
    /// so that [`ControlPlane::start_apiserver`] brings the same API server back. Its log so far
    /// is kept as `kube-apiserver.N.log`. Fails if it is not running.
    pub fn stop_apiserver(&mut self) -> Result<()> {
        let at = self.processes.iter().position(|p| p.name() == APISERVER).context("kube-apiserver is not running")?;
        let mut process = self.processes.remove(at);
        process.stop(STOP_GRACE);
        self.apiserver_stops += 1;
        let log = self.dir.path().join(format!("{APISERVER}.log"));
        let kept = self.dir.path().join(format!("{APISERVER}.{}.log", self.apiserver_stops));
        std::fs::rename(&log, &kept).with_context(|| format!("keeping {} as {}", log.display(), kept.display()))?;
        // The watchdog would signal the stopped process group at exit, and the kernel may have
        // given that id to another process by then: a fresh one guards the running ones only.
        self.rearm_watchdog()
    }

    /// Starts kube-apiserver again after [`ControlPlane::stop_apiserver`], with the same flags,
    /// port and certificates, and waits until `/readyz` is `ok`; returns how long that took.
    /// Fails if it is already running, or (with its log's tail) if it does not become ready
    /// (e.g. "address already in use": another process took the port meanwhile).
    pub fn start_apiserver(&mut self) -> Result<Duration> {
        if self.pid(APISERVER).is_some() {
            bail!("kube-apiserver is already running");
        }
        let step = Instant::now();
        self.spawn(APISERVER, self.apiserver_args())?;
        let at = self.apiserver_socket();
        let timeout = ControlPlaneOptions::default().ready_timeout;
        let ready =
            self.wait_ready(APISERVER, timeout, Duration::from_millis(250), |kubectl| apiserver_ready(at, kubectl));
        // Back in its place right after etcd: teardown goes newest first, so it is stopped
        // after the controller-manager and before etcd, as at start.
        let process = self.processes.pop().context("kube-apiserver was just started")?;
        let after_etcd = self.processes.iter().position(|p| p.name() == "etcd").map_or(0, |i| i + 1);
        self.processes.insert(after_etcd, process);
        ready?;
        Ok(step.elapsed())
    }

    /// Whether kube-apiserver runs (it may be stopped by [`ControlPlane::stop_apiserver`]).
    pub fn apiserver_running(&self) -> bool {
        self.pid(APISERVER).is_some()
    }

    /// etcd's client port on 127.0.0.1 (plain HTTP).
    pub fn etcd_port(&self) -> u16 {
        self.etcd_port
    }

    /// Compacts etcd's history up to its current revision and returns that revision (through
    /// etcd's JSON gateway, `/v3/kv/compaction`). etcd does this on its own with time; a watch
    /// that resumes from an older resourceVersion afterwards gets `410 Gone` and must list again.
    pub fn compact_etcd(&self) -> Result<i64> {
        // Any key: the response header carries the store's current revision.
        let range = etcd_post(self.etcd_port, "/v3/kv/range", r#"{"key":"AA=="}"#)?;
        let revision: i64 = range["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .or_else(|| range["header"]["revision"].as_i64())
            .with_context(|| format!("no revision in etcd's answer {range}"))?;
        let body = serde_json::json!({ "revision": revision.to_string(), "physical": true }).to_string();
        etcd_post(self.etcd_port, "/v3/kv/compaction", &body)?;
        Ok(revision)
    }

    /// Replaces the watchdog with one that guards the processes running now.
    fn rearm_watchdog(&mut self) -> Result<()> {
        let keep = std::env::var_os(KEEP_ENV).is_some_and(|v| !v.is_empty());
        let mut fresh = Watchdog::spawn((!keep).then_some(self.dir.path()))?;
        for process in &self.processes {
            fresh.guard(process.pid())?;
        }
        // Armed before the old one goes, so that something always guards the processes.
        let mut old = std::mem::replace(&mut self.watchdog, fresh);
        old.disarm();
        Ok(())
    }

    /// Runs Helm 4 (`helm4` in the bin folder, v4.3.2: server-side apply by default) with the
    /// admin kubeconfig, its cache, config and data in the plane's folder; any exit status.
    /// Panics only if helm cannot be run at all.
    pub fn helm<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.run_helm(HELM4, args)
    }

    /// [`ControlPlane::helm`] with Helm 3 (`helm` in the bin folder, v3.22.0), for what must
    /// also work with the previous major version.
    pub fn helm3<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.run_helm(HELM3, args)
    }

    fn run_helm<I, S>(&self, binary: &str, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(self.bin_dir.join(binary));
        // One home per binary: Helm 3 and 4 share the format, not necessarily the plugins/cache.
        let home = self.dir.path().join(binary);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig_path)
            .args(args)
            .env_remove("KUBECONFIG")
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"));
        kubectl::run(cmd, None).unwrap_or_else(|e| panic!("running {binary}: {e:#}"))
    }
}

/// Helm 4 in the bin folder (`tests/controlplane/build.sh`).
pub const HELM4: &str = "helm4";

/// Helm 3 in the bin folder.
pub const HELM3: &str = "helm";

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // The watchdog first, so that it does not race us; then the processes, newest first
        // (the controller-manager and the apiserver before their etcd). The folder goes last,
        // with `dir`.
        let started = Instant::now();
        self.watchdog.disarm();
        while let Some(mut process) = self.processes.pop() {
            let step = Instant::now();
            process.stop(STOP_GRACE);
            eprintln!("imagemap-e2e: stopped {} in {:.1?}", process.name(), step.elapsed());
        }
        eprintln!("imagemap-e2e: stopped the control plane at {} in {:.1?}", self.server_url(), started.elapsed());
    }
}

/// The API server's component name.
const APISERVER: &str = "kube-apiserver";

/// Whether the API server at `at` is ready: a cheap TCP probe first (each kubectl run costs
/// CPU the apiserver needs to start), then `kubectl get --raw /readyz` is `ok`.
fn apiserver_ready(at: SocketAddr, kubectl: &Kubectl) -> bool {
    TcpStream::connect_timeout(&at, Duration::from_millis(500)).is_ok()
        && kubectl.run(["get", "--raw", "/readyz"]).is_ok_and(|o| o.status.success() && o.stdout.trim_ascii() == b"ok")
}

/// Replaces the API server's serving certificate by one with the same SANs plus `gateway`,
/// signed by the same server CA (the one Pods trust through `kube-root-ca.crt`), at the same
/// paths. The CA is rebuilt from its key and subject as `Pki::generate` made it (rcgen derives
/// the authority key identifier from the key, the issuer name from the subject); kubectl's
/// first request verifies the chain.
fn reissue_apiserver_certificate(pki: &mut Pki, gateway: Ipv4Addr) -> Result<()> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::from_pem(&pki.server_ca.key_pem).context("reading the server CA key")?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name.push(DnType::CommonName, SERVER_CA_NAME);
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("generating a key")?;
    let mut params = CertificateParams::new(
        [
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ]
        .map(String::from)
        .to_vec(),
    )
    .context("the apiserver's DNS names")?;
    for ip in [Ipv4Addr::LOCALHOST, KUBERNETES_SERVICE_IP, gateway] {
        params.subject_alt_names.push(rcgen::SanType::IpAddress(IpAddr::V4(ip)));
    }
    params.distinguished_name.push(DnType::CommonName, "kube-apiserver");
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature, rcgen::KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let now = std::time::SystemTime::now();
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + Duration::from_secs(2 * 86_400)).into();
    let cert = params.signed_by(&key, &issuer).context("signing the apiserver's certificate")?;
    let files = &mut pki.apiserver;
    files.cert_pem = cert.pem();
    files.key_pem = key.serialize_pem();
    imagemap_certs::write(&files.cert_path, &files.cert_pem, false)?;
    imagemap_certs::write(&files.key_path, &files.key_pem, true)?;
    Ok(())
}

/// The server CA's common name as `Pki::generate` sets it.
const SERVER_CA_NAME: &str = "imagemap-e2e server CA";

/// The `kubernetes` Service's ClusterIP (first of [`SERVICE_CIDR`]), a SAN of the certificate.
const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

/// `POST path` with a JSON `body` to etcd's gateway on 127.0.0.1:`port` (HTTP/1.0, so the answer
/// is never chunked); the JSON answer, or an error with etcd's message.
fn etcd_post(port: u16, path: &str, body: &str) -> Result<serde_json::Value> {
    use std::io::{Read as _, Write as _};
    let timeout = Duration::from_secs(5);
    let addr = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout).context("connecting to etcd")?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "POST {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response).with_context(|| format!("reading etcd's answer to {path}"))?;
    let (head, json) = response.split_once("\r\n\r\n").with_context(|| format!("etcd answered {response:?}"))?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!("etcd refused POST {path}: {head}\n{json}");
    }
    serde_json::from_str(json).with_context(|| format!("etcd's answer to {path} is not JSON: {json}"))
}

/// `PREFIX-N-PID`: a DNS-1123 label unique within this process (and across processes sharing
/// a kept plane), from a sanitised `prefix` (its first 40 characters at most).
fn unique_namespace_name(prefix: &str) -> String {
    crate::names::unique_name(&prefix.chars().take(40).collect::<String>(), 63)
}

/// The control plane shared by all tests of one test binary, with the controller-manager,
/// started on first use (start-up is the slow part on two cores). It lives in a `static`, so
/// it is never dropped: the watchdog stops it when the test process exits. Panics, in every
/// test that asks, if it could not start.
pub fn shared() -> &'static ControlPlane {
    static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();
    let plane = SHARED.get_or_init(|| {
        ControlPlane::start(ControlPlaneOptions { controller_manager: true, ..ControlPlaneOptions::default() })
            .map_err(|e| format!("{e:#}"))
    });
    match plane {
        Ok(plane) => plane,
        Err(e) => panic!("the shared control plane did not start: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_names_are_unique_dns_labels() {
        let a = unique_namespace_name("Pod_Injection test!");
        let b = unique_namespace_name("Pod_Injection test!");
        assert_ne!(a, b);
        assert!(a.starts_with("pod-injection-test-"), "{a}");
        assert!(a.len() <= 63);
        assert!(a.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
        assert!(unique_namespace_name("--").starts_with("test-"));
        assert!(unique_namespace_name(&"x".repeat(100)).len() <= 63);
    }
}
