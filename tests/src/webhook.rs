//! The real `imagemap-webhook` binary in front of a [`ControlPlane`]: started as a child process
//! with certificates minted at test time, registered with a `MutatingWebhookConfiguration` that
//! points at `https://127.0.0.1:PORT/mutate`, and reached by the API server like in a cluster.
//!
//! One shared control plane serves every test of a binary, so registrations are scoped with a
//! `namespaceSelector` on a label ([`SERVED_LABEL`]) whose value is unique per registration: a
//! namespace is served by exactly the webhook whose label value it carries. Most tests share one
//! webhook ([`shared_webhook`]) and isolate themselves by namespace
//! ([`ServedWebhook::create_namespace`]); tests that kill or reconfigure a webhook start their
//! own ([`ServedWebhook::start`]).
//!
//! The webhook binary is not built here: `cargo build --workspace --bins` (which `make test`
//! runs) builds it; [`workspace_binary`] finds it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use imagemap_certs::{CertificateAuthority, Sans};
use serde_json::{json, Value};

use crate::binaries::workspace_root;
use crate::kubectl::{self, Kubectl};
use crate::process::{ManagedProcess, Watchdog, STOP_GRACE};
use crate::wait::poll;
use crate::ControlPlane;

/// The webhook binary's name.
pub const WEBHOOK_BIN: &str = "imagemap-webhook";

/// The namespace label a registration selects on; its value names the registration.
pub const SERVED_LABEL: &str = "imagemap-e2e/served";

/// The annotation the webhook records its swaps in (DESIGN §7).
pub use imagemap_core::inject::SWAPS_ANNOTATION;

/// How long [`Webhook::start`] and [`Webhook::restart`] wait for `/readyz`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long [`register`] waits for a registration to take effect.
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(60);

/// Validity of the minted certificates, in days.
const CERT_DAYS: i64 = 2;

/// `<target>/debug/<name>`: a binary of this workspace, built beforehand. Looks next to the
/// running test binary first (`<target>/<profile>/deps/..`), then in `$CARGO_TARGET_DIR/debug`,
/// then in `<workspace>/target/debug`. Fails, naming every place it looked, when none has it.
pub fn workspace_binary(name: &str) -> Result<PathBuf> {
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        // A test binary lives in <target>/<profile>/deps/.
        if let Some(profile) =
            exe.parent().filter(|deps| deps.file_name().is_some_and(|n| n == "deps")).and_then(Path::parent)
        {
            candidates.push(profile.join(name));
        }
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        candidates.push(PathBuf::from(dir).join("debug").join(name));
    }
    candidates.push(workspace_root().join("target").join("debug").join(name));
    if let Some(found) = candidates.iter().find(|c| c.is_file()) {
        return Ok(found.clone());
    }
    let looked: Vec<String> = candidates.iter().map(|c| c.display().to_string()).collect();
    bail!(
        "{name} is not built (looked for {}); run `cargo build --workspace --bins` first (make test does)",
        looked.join(", ")
    )
}

/// Prints a warning when `program` is older than a source file of the webhook (its own crate,
/// `imagemap-core` or `imagemap-cluster`): the tests would
/// run yesterday's webhook. Not an error: the binary may be what the caller wants.
fn warn_if_stale(program: &Path) {
    fn newest(dir: &Path) -> Option<(std::time::SystemTime, PathBuf)> {
        let mut best: Option<(std::time::SystemTime, PathBuf)> = None;
        for entry in std::fs::read_dir(dir).ok()?.flatten() {
            let path = entry.path();
            let candidate = if path.is_dir() {
                newest(&path)
            } else {
                entry.metadata().and_then(|m| m.modified()).ok().map(|t| (t, path))
            };
            if let Some(c) = candidate {
                if best.as_ref().is_none_or(|b| c.0 > b.0) {
                    best = Some(c);
                }
            }
        }
        best
    }
    let built = std::fs::metadata(program).and_then(|m| m.modified());
    let sources = ["webhook/src", "webhook/core/src", "webhook/cluster/src"];
    let changed = sources.iter().filter_map(|dir| newest(&workspace_root().join(dir))).max_by_key(|c| c.0);
    if let (Ok(built), Some((changed, source))) = (built, changed) {
        if changed > built {
            eprintln!(
                "imagemap-e2e: warning: {} is older than {}; run `cargo build --workspace --bins` to test the current code",
                program.display(),
                source.display()
            );
        }
    }
}

/// How to run a [`Webhook`].
#[derive(Clone, Debug, Default)]
pub struct WebhookOptions {
    /// `--global-namespace`: ImageMaps there apply to every served namespace.
    pub global_namespace: Option<String>,
    /// More flags, e.g. `["--log-level", "debug", "--log-format", "json"]`.
    pub extra_args: Vec<String>,
    /// When set, a second process runs beside the admission server with `--role controller`,
    /// these flags and the same `--global-namespace`: the controller, as the chart runs it
    /// (e.g. `["--restart-on-rebuild", "--leader-election-namespace", NS]`).
    pub controller_args: Option<Vec<String>>,
    /// The kubeconfig the controller uses (default: the plane's admin), e.g. one that
    /// impersonates a user with fewer rights.
    pub controller_kubeconfig: Option<PathBuf>,
}

/// One run of the binary, with the watchdog that kills it if the test process dies. A new run
/// gets a new watchdog, so that no watchdog ever signals a dead run's (reusable) process group.
#[derive(Debug)]
struct Run {
    // Dropped in this order: the process (SIGTERM, then SIGKILL), then its watchdog (disarmed).
    process: ManagedProcess,
    watchdog: Watchdog,
}

/// A running `imagemap-webhook` on `127.0.0.1:PORT` (a port it chose, [`crate::launch`]), watching ImageMaps through the plane's
/// admin kubeconfig. Dropping it stops the process and removes its folder; a webhook left in a
/// `static` is stopped by its watchdog when the test process exits.
#[derive(Debug)]
pub struct Webhook {
    // Before `dir`: the process must be gone before its folder is removed.
    run: Option<Run>,
    dir: tempfile::TempDir,
    program: PathBuf,
    /// With `--listen 127.0.0.1:PORT`: port 0 until the first run has bound one, then that
    /// port, which a restart binds again (the registration names it).
    args: Vec<String>,
    port: u16,
    ca_pem: String,
    runs: usize,
    log_path: PathBuf,
    /// The `--role controller` process started beside it ([`WebhookOptions::controller_args`]).
    controller: Option<Box<Webhook>>,
}

/// What a webhook process needs to serve HTTPS on loopback: a temporary folder holding a CA and
/// a serving certificate for `127.0.0.1` and `localhost`, and the flags that serve them on a
/// port the process chooses and watch the API server `kubeconfig` names. Start the process with
/// [`ManagedProcess::spawn`], then [`ManagedProcess::wait_for_address`] reads the port back.
pub struct ServingSetup {
    /// Holds `ca.crt`, `tls.crt` and `tls.key`; removed when dropped.
    pub dir: tempfile::TempDir,
    /// The CA to trust (PEM).
    pub ca_pem: String,
    /// `--listen 127.0.0.1:0`, the certificate flags and `--kubeconfig`.
    pub args: Vec<String>,
}

impl ServingSetup {
    /// Mints the certificates into a new folder named with `prefix`.
    pub fn new(prefix: &str, kubeconfig: &Path) -> Result<ServingSetup> {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir().context("creating the webhook's folder")?;
        let ca = CertificateAuthority::new("imagemap-e2e webhook CA", CERT_DAYS)?;
        let mut sans = Sans::default();
        sans.add_host("127.0.0.1");
        sans.add_host("localhost");
        let leaf = ca.serving("imagemap-e2e-webhook", &sans, CERT_DAYS)?;
        imagemap_certs::write_serving_set(dir.path(), &ca, &leaf)?;
        let args = vec![
            "--listen".to_string(),
            crate::launch::ANY_PORT.to_string(),
            "--tls-cert-file".into(),
            dir.path().join("tls.crt").display().to_string(),
            "--tls-private-key-file".into(),
            dir.path().join("tls.key").display().to_string(),
            "--kubeconfig".into(),
            kubeconfig.display().to_string(),
        ];
        Ok(ServingSetup { dir, ca_pem: ca.cert_pem.clone(), args })
    }
}

impl Webhook {
    /// Mints a CA and a serving certificate for `127.0.0.1` into a temporary folder, starts the
    /// binary on a port it chooses (its own process group, logs in `webhook.log`), reads the
    /// port from its log and waits until `GET /readyz` answers 200 over HTTPS, i.e. its
    /// ImageMap cache has synced.
    pub fn start(plane: &ControlPlane, opts: WebhookOptions) -> Result<Webhook> {
        Webhook::start_as(plane, opts, plane.kubeconfig_path())
    }

    /// [`Webhook::start`], talking to the API server through `kubeconfig`.
    fn start_as(plane: &ControlPlane, opts: WebhookOptions, kubeconfig: &Path) -> Result<Webhook> {
        let program = workspace_binary(WEBHOOK_BIN)?;
        warn_if_stale(&program);
        let ServingSetup { dir, ca_pem, mut args } = ServingSetup::new("imagemap-e2e-webhook-", kubeconfig)?;
        if let Some(ns) = &opts.global_namespace {
            args.push("--global-namespace".into());
            args.push(ns.clone());
        }
        args.extend(opts.extra_args.iter().cloned());
        let controller = match &opts.controller_args {
            Some(controller_args) => {
                let mut extra = vec!["--role".to_string(), "controller".to_string()];
                extra.extend(controller_args.iter().cloned());
                let options = WebhookOptions {
                    global_namespace: opts.global_namespace.clone(),
                    extra_args: extra,
                    controller_args: None,
                    controller_kubeconfig: None,
                };
                let kubeconfig = opts.controller_kubeconfig.as_deref().unwrap_or(plane.kubeconfig_path());
                Some(Box::new(Webhook::start_as(plane, options, kubeconfig)?))
            }
            None => None,
        };
        let log_path = dir.path().join("webhook.log");
        let mut webhook = Webhook { run: None, dir, program, args, port: 0, ca_pem, runs: 0, log_path, controller };
        webhook.spawn()?;
        Ok(webhook)
    }

    /// The `--role controller` process started beside this one, if any.
    pub fn controller(&self) -> Option<&Webhook> {
        self.controller.as_deref()
    }

    fn spawn(&mut self) -> Result<()> {
        self.runs += 1;
        // Each run logs to its own file: `webhook.log`, then `webhook.2.log`...
        self.log_path = if self.runs == 1 {
            self.dir.path().join("webhook.log")
        } else {
            self.dir.path().join(format!("webhook.{}.log", self.runs))
        };
        if self.port != 0 {
            set_listen_port(&mut self.args, self.port);
        }
        let mut watchdog = Watchdog::spawn(Some(self.dir.path()))?;
        let mut process = ManagedProcess::spawn(WEBHOOK_BIN, &self.program, &self.args, &self.log_path, &mut watchdog)?;
        let address = process.wait_for_address();
        self.run = Some(Run { process, watchdog });
        self.port = address?.port();
        self.wait_ready(READY_TIMEOUT)
    }

    /// Waits until `/readyz` answers 200; fails early, with the log's tail, if the process exits.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        let mut exited = None;
        let ready = poll(timeout, Duration::from_millis(100), || {
            let run = self.run.as_mut()?;
            if let Err(e) = run.process.ensure_running() {
                exited = Some(e);
                return Some(false);
            }
            (readyz(self.port, &self.dir.path().join("ca.crt")) == Some(200)).then_some(true)
        });
        if let Some(e) = exited {
            return Err(e);
        }
        match ready {
            Some(true) => Ok(()),
            _ => bail!(
                "{WEBHOOK_BIN} on port {} was not ready after {:.1?}; last lines of {}:\n{}",
                self.port,
                started.elapsed(),
                self.log_path.display(),
                self.log_tail(40)
            ),
        }
    }

    /// Whether the process runs and `/readyz` answers 200 now.
    pub fn is_ready(&self) -> bool {
        self.run.is_some() && readyz(self.port, &self.dir.path().join("ca.crt")) == Some(200)
    }

    /// SIGTERM (graceful: readiness fails, in-flight reviews finish), SIGKILL after a grace
    /// period; the controller beside it too. The port and certificates are kept for
    /// [`Webhook::restart`].
    pub fn stop(&mut self) {
        if let Some(mut run) = self.run.take() {
            run.process.stop(STOP_GRACE);
        }
        if let Some(controller) = self.controller.as_mut() {
            controller.stop();
        }
    }

    /// SIGKILL, no grace: the admission server is down, as after a crash (a controller beside
    /// it keeps running). See [`Webhook::restart`].
    pub fn kill(&mut self) {
        if let Some(mut run) = self.run.take() {
            run.process.stop(Duration::ZERO);
        }
    }

    /// Stops the webhook if it runs (and a controller beside it), then starts them again with
    /// the same flags, port and certificates, and waits until they are ready. (The port, bound
    /// by the first run, is bound again by name: the registration's URL names it.)
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        if let Some(controller) = self.controller.as_mut() {
            controller.spawn()?;
        }
        self.spawn()
    }

    /// The pid (and process group) of the running process.
    pub fn pid(&self) -> Option<u32> {
        self.run.as_ref().map(|r| r.process.pid())
    }

    /// The pid of the current run's watchdog (kills the webhook if the test process dies).
    pub fn watchdog_pid(&self) -> Option<u32> {
        self.run.as_ref().map(|r| r.watchdog.pid())
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL to register: `https://127.0.0.1:PORT/mutate`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}/mutate", self.port)
    }

    /// The CA (PEM) that signed the serving certificate: the registration's `caBundle`.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The current run's log file (stdout and stderr).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `lines` lines of the current run's log (and of the controller's beside it).
    pub fn log_tail(&self, lines: usize) -> String {
        let own = crate::process::tail(&self.log_path, lines);
        match &self.controller {
            Some(c) => format!("{own}\n--- controller ({}):\n{}", c.log_path.display(), c.log_tail(lines)),
            None => own,
        }
    }

    /// The whole log of the current run (then the controller's, when one runs beside it).
    pub fn log(&self) -> String {
        let own = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        match &self.controller {
            Some(c) => format!("{own}\n{}", c.log()),
            None => own,
        }
    }

    /// The webhook's folder (ca.crt, tls.crt, tls.key, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sets the value after `--listen` in `args` to `127.0.0.1:PORT`.
fn set_listen_port(args: &mut [String], port: u16) {
    if let Some(i) = args.iter().position(|a| a == "--listen") {
        if let Some(value) = args.get_mut(i + 1) {
            *value = format!("127.0.0.1:{port}");
        }
    }
}

/// The HTTP status of `GET https://127.0.0.1:PORT/readyz` (verified against `ca`), via curl;
/// `None` when nothing answers.
fn readyz(port: u16, ca: &Path) -> Option<u16> {
    let output = Command::new("curl")
        .args(["--silent", "--max-time", "2", "--output", "/dev/null"])
        .args(["--write-out", "%{http_code}", "--cacert"])
        .arg(ca)
        .arg(format!("https://127.0.0.1:{port}/readyz"))
        .stdin(Stdio::null())
        .output()
        .ok()?;
    String::from_utf8_lossy(&output.stdout).trim().parse().ok().filter(|code| *code != 0)
}

/// A `MutatingWebhookConfiguration` in the plane. Dropping it deletes the configuration and its
/// probe namespace (not waiting for the namespace to go).
#[derive(Debug)]
pub struct Registration {
    name: String,
    labels: BTreeMap<String, String>,
    probe_namespace: String,
    kubectl: Kubectl,
}

impl Registration {
    /// The configuration's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The labels a namespace needs to be served by this registration.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }

    /// The labelled namespace the registration was proven in (holds the probe ImageMap).
    pub fn probe_namespace(&self) -> &str {
        &self.probe_namespace
    }

    /// Creates a namespace served by this registration: a unique name from `prefix`, created
    /// with the labels (so no Pod is ever admitted there unserved) and its `default`
    /// ServiceAccount. Panics on failure.
    pub fn create_namespace(&self, prefix: &str) -> String {
        create_labelled_namespace(&self.kubectl, prefix, &self.labels).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Deletes the configuration (and the probe namespace).
    pub fn unregister(self) {
        // Drop does it.
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = unregister_with(&self.kubectl, &self.name);
        let _ = self.kubectl.run(["delete", "namespace", &self.probe_namespace, "--ignore-not-found", "--wait=false"]);
    }
}

/// The `MutatingWebhookConfiguration` for `url`, as the chart's safe defaults (DESIGN §9) have
/// it, restricted to namespaces carrying `match_labels`.
pub fn webhook_configuration(name: &str, url: &str, ca_pem: &str, match_labels: &BTreeMap<String, String>) -> Value {
    let ca_bundle = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "imagemap-e2e"}},
        "webhooks": [{
            "name": "imagemap.tilt.dev",
            "clientConfig": {"url": url, "caBundle": ca_bundle},
            "rules": [{
                "operations": ["CREATE"],
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "resources": ["pods"],
                "scope": "Namespaced",
            }],
            "failurePolicy": "Ignore",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "reinvocationPolicy": "IfNeeded",
            "timeoutSeconds": 5,
            "namespaceSelector": {"matchLabels": match_labels},
        }],
    })
}

/// Applies a `MutatingWebhookConfiguration` named `name` for the webhook at `url` (see
/// [`webhook_configuration`]), serving the namespaces labelled with `match_labels`, and waits
/// until it takes effect: in a labelled probe namespace, with a probe ImageMap whose status is
/// set, a server-side dry-run Pod create must come back swapped. That proves the API server
/// calls the webhook, trusts its certificate, and that the webhook's cache sees ImageMaps.
pub fn register(
    plane: &ControlPlane,
    name: &str,
    url: &str,
    ca_pem: &str,
    match_labels: &BTreeMap<String, String>,
) -> Result<Registration> {
    let kubectl = plane.kubectl_client().clone();
    let config = webhook_configuration(name, url, ca_pem, match_labels);
    kubectl.apply(&config.to_string())?;
    let probe_namespace = create_labelled_namespace(&kubectl, &format!("{name}-probe"), match_labels)?;
    let registration = Registration { name: name.to_string(), labels: match_labels.clone(), probe_namespace, kubectl };
    let ns = &registration.probe_namespace;
    let selector = "imagemap-e2e-probe";
    let target = format!("registry.example/{selector}:registered");
    registration.kubectl.apply(&image_map(ns, "probe", selector).to_string())?;
    set_status(&registration.kubectl, ns, "probe", &json!({ "image": target }))?;
    let pod = pod(ns, "probe", &[container("probe", selector)]);
    let started = Instant::now();
    let mut last = String::new();
    let swapped =
        poll(REGISTER_TIMEOUT, Duration::from_millis(200), || match dry_run_create(&registration.kubectl, &pod) {
            Ok(created) => {
                let image = created["spec"]["containers"][0]["image"].as_str().unwrap_or("");
                last = format!("the dry-run Pod has image {image:?}");
                (image == target).then_some(())
            }
            Err(e) => {
                last = format!("{e:#}");
                None
            }
        });
    if swapped.is_none() {
        bail!(
            "MutatingWebhookConfiguration {name} did not take effect within {:.1?} \
             (a dry-run Pod in {ns} was not swapped to {target}; last: {last})",
            started.elapsed()
        );
    }
    Ok(registration)
}

/// Deletes the `MutatingWebhookConfiguration` `name` (no error if it is gone).
pub fn unregister(plane: &ControlPlane, name: &str) -> Result<()> {
    unregister_with(plane.kubectl_client(), name)
}

fn unregister_with(kubectl: &Kubectl, name: &str) -> Result<()> {
    kubectl.ok(["delete", "mutatingwebhookconfiguration", name, "--ignore-not-found"])?;
    Ok(())
}

/// A webhook process plus its registration: what a test needs to create served namespaces.
/// Dropping it unregisters first, then stops the process.
#[derive(Debug)]
pub struct ServedWebhook {
    // Dropped in this order: no registration may point at a stopped webhook longer than needed.
    registration: Registration,
    webhook: Webhook,
}

impl ServedWebhook {
    /// Starts a webhook and registers it as `imagemap-e2e-NAME-PID-N`, serving namespaces
    /// labelled [`SERVED_LABEL`]`=<that name>`; waits until the registration works.
    pub fn start(plane: &ControlPlane, name: &str, opts: WebhookOptions) -> Result<ServedWebhook> {
        let webhook = Webhook::start(plane, opts)?;
        let id = unique_name(&format!("imagemap-e2e-{name}"));
        let labels = BTreeMap::from([(SERVED_LABEL.to_string(), id.clone())]);
        let registration = register(plane, &id, &webhook.url(), webhook.ca_pem(), &labels).map_err(|e| {
            e.context(format!("last lines of {}:\n{}", webhook.log_path().display(), webhook.log_tail(30)))
        })?;
        Ok(ServedWebhook { registration, webhook })
    }

    /// A new namespace served by this webhook (see [`Registration::create_namespace`]).
    pub fn create_namespace(&self, prefix: &str) -> String {
        self.registration.create_namespace(prefix)
    }

    /// The webhook process.
    pub fn webhook(&self) -> &Webhook {
        &self.webhook
    }

    /// The webhook process, to kill or restart it.
    pub fn webhook_mut(&mut self) -> &mut Webhook {
        &mut self.webhook
    }

    /// The registration.
    pub fn registration(&self) -> &Registration {
        &self.registration
    }
}

/// One webhook, registered once, shared by the tests of a test binary (on the [`crate::shared`]
/// plane); tests isolate themselves with [`ServedWebhook::create_namespace`]. Started on first
/// use; panics in every caller if it could not start. Never dropped: the watchdog stops the
/// process when the test process exits.
pub fn shared_webhook() -> &'static ServedWebhook {
    static SHARED: OnceLock<Result<ServedWebhook, String>> = OnceLock::new();
    let served = SHARED.get_or_init(|| {
        ServedWebhook::start(crate::shared(), "shared", WebhookOptions::default()).map_err(|e| format!("{e:#}"))
    });
    match served {
        Ok(served) => served,
        Err(e) => panic!("the shared webhook did not start: {e}"),
    }
}

/// `PREFIX-N-PID`, unique in this process and across processes, cut to a DNS label.
pub fn unique_name(prefix: &str) -> String {
    crate::names::unique_name(prefix, 63)
}

fn create_labelled_namespace(kubectl: &Kubectl, prefix: &str, labels: &BTreeMap<String, String>) -> Result<String> {
    let name = unique_name(&format!("wh-{prefix}"));
    let namespace = json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": labels},
    });
    let output = kubectl.run_with_stdin(["create", "-f", "-"], Some(&namespace.to_string()))?;
    kubectl::check(&format!("kubectl create namespace {name}"), &output)?;
    // The ServiceAccount admission plugin rejects Pods until `default` exists; the
    // controller-manager, if any, races us to create it.
    let output = kubectl.run(["create", "serviceaccount", "default", "--namespace", &name])?;
    if !output.status.success() && !String::from_utf8_lossy(&output.stderr).contains("already exists") {
        kubectl::check("kubectl create serviceaccount default", &output)?;
    }
    Ok(name)
}

/// An `ImageMap` (no status) selecting `selector`, as JSON.
pub fn image_map(namespace: &str, name: &str, selector: &str) -> Value {
    json!({
        "apiVersion": "tilt.dev/v1alpha1",
        "kind": "ImageMap",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": selector},
    })
}

/// A container `{name, image}`.
pub fn container(name: &str, image: &str) -> Value {
    json!({"name": name, "image": image})
}

/// A Pod with `containers`, as JSON.
pub fn pod(namespace: &str, name: &str, containers: &[Value]) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"containers": containers},
    })
}

/// A v1 `AdmissionReview` of a Pod CREATE of `object` in `namespace` by `user`, as the API
/// server sends it to `/mutate`.
pub fn pod_create_review(uid: &str, namespace: &str, user: &str, object: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": user},
            "object": object,
        },
    })
}

/// Sets an ImageMap's status through the status subresource (merge patch), the way a build tool
/// publishes a build.
pub fn set_status(kubectl: &Kubectl, namespace: &str, name: &str, status: &Value) -> Result<()> {
    let patch = json!({ "status": status }).to_string();
    kubectl.ok([
        "patch",
        "imagemap",
        name,
        "--namespace",
        namespace,
        "--subresource=status",
        "--type=merge",
        "--patch",
        &patch,
    ])?;
    Ok(())
}

/// `kubectl create --dry-run=server -o json -f -` of `object`: the object as admission (the
/// webhook included) left it, stored nowhere.
pub fn dry_run_create(kubectl: &Kubectl, object: &Value) -> Result<Value> {
    let output = kubectl
        .run_with_stdin(["create", "--dry-run=server", "--output=json", "-f", "-"], Some(&object.to_string()))?;
    let stdout = kubectl::check("kubectl create --dry-run=server", &output)?;
    serde_json::from_str(&stdout).context("kubectl create --dry-run=server printed no JSON")
}

/// The image a server-side dry-run create of a one-container Pod (`image`, `labels`) in `ns`
/// comes back with, or kubectl's error.
pub fn dry_run_image(kubectl: &Kubectl, ns: &str, image: &str, labels: &Value) -> Result<String, String> {
    let mut probe = pod(ns, "probe", &[container("app", image)]);
    probe["metadata"]["labels"] = labels.clone();
    let created = dry_run_create(kubectl, &probe).map_err(|e| format!("{e:#}"))?;
    Ok(created["spec"]["containers"][0]["image"].as_str().unwrap_or_default().to_string())
}

/// How long [`wait_for_image`] waits, and how often it tries.
#[derive(Debug, Clone, Copy)]
pub struct Patience {
    /// Give up after this long.
    pub timeout: Duration,
    /// Pause between dry-run creates (each is a kubectl process).
    pub every: Duration,
}

/// Polls dry-run creates until a Pod with `image` in `ns` comes back with `expected`; after
/// `patience.timeout`, panics with the last image or error seen and `context()` (e.g. the
/// webhook's log).
pub fn wait_for_image(
    plane: &ControlPlane,
    ns: &str,
    image: &str,
    expected: &str,
    patience: Patience,
    context: impl Fn() -> String,
) {
    let started = Instant::now();
    let mut last = String::new();
    let reached =
        poll(patience.timeout, patience.every, || match dry_run_image(plane.kubectl_client(), ns, image, &json!({})) {
            Ok(got) if got == expected => Some(()),
            Ok(got) => {
                last = format!("image {got}");
                None
            }
            Err(e) => {
                last = e;
                None
            }
        });
    assert!(
        reached.is_some(),
        "a dry-run Pod with image {image} in {ns} did not come back with {expected} within {:.1?} (last: {last})\n{}",
        started.elapsed(),
        context()
    );
}

/// The swap records of a Pod's [`SWAPS_ANNOTATION`] (empty when it has none).
pub fn swaps(pod: &Value) -> Vec<Value> {
    pod["metadata"]["annotations"][SWAPS_ANNOTATION]
        .as_str()
        .and_then(|text| serde_json::from_str::<Vec<Value>>(text).ok())
        .unwrap_or_default()
}

/// Waits (30 s at most, panicking then) until a server-side dry-run Pod in `ns` with `image`
/// comes back `accepted`: the webhook serving `ns` has the map in its cache.
pub fn wait_until_admitted(plane: &ControlPlane, ns: &str, image: &str, accepted: impl Fn(&Value) -> bool) {
    poll(Duration::from_secs(30), Duration::from_millis(200), || {
        let out =
            plane.kubectl(["run", "probe", "-n", ns, &format!("--image={image}"), "--dry-run=server", "-o", "json"]);
        let pod: Value = serde_json::from_slice(&out.stdout).ok()?;
        accepted(&pod).then_some(())
    })
    .unwrap_or_else(|| panic!("a dry-run Pod with image {image} in {ns} was never admitted as expected"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_are_dns_labels() {
        let a = unique_name("Some_Name");
        assert_ne!(a, unique_name("Some_Name"));
        assert!(a.starts_with("some-name-"), "{a}");
        let long = unique_name(&"x".repeat(100));
        assert!(long.len() <= 63, "{long}");
        assert!(unique_name("--").starts_with("test-"));
    }

    #[test]
    fn a_missing_binary_says_how_to_build_it() {
        let e = workspace_binary("no-such-binary-here").expect_err("missing");
        let text = format!("{e:#}");
        assert!(text.contains("cargo build --workspace --bins"), "{text}");
        assert!(text.contains("no-such-binary-here"), "{text}");
    }

    #[test]
    fn the_configuration_has_the_safe_defaults() {
        let labels = BTreeMap::from([(SERVED_LABEL.to_string(), "x".to_string())]);
        let config = webhook_configuration("n", "https://127.0.0.1:1/mutate", "PEM", &labels);
        let hook = &config["webhooks"][0];
        assert_eq!(hook["failurePolicy"], "Ignore");
        assert_eq!(hook["sideEffects"], "None");
        assert_eq!(hook["reinvocationPolicy"], "IfNeeded");
        assert_eq!(hook["admissionReviewVersions"], json!(["v1"]));
        assert_eq!(hook["clientConfig"]["caBundle"], "UEVN");
        assert_eq!(hook["namespaceSelector"]["matchLabels"][SERVED_LABEL], "x");
        assert_eq!(hook["rules"][0]["operations"], json!(["CREATE"]));
    }

    #[test]
    fn a_restart_listens_on_the_port_the_first_run_bound() {
        let mut args: Vec<String> =
            ["--kubeconfig", "k", "--listen", crate::launch::ANY_PORT, "--no-cluster"].map(String::from).into();
        set_listen_port(&mut args, 40125);
        assert_eq!(args, ["--kubeconfig", "k", "--listen", "127.0.0.1:40125", "--no-cluster"]);
    }

    #[test]
    fn swaps_reads_the_annotation() {
        let pod = json!({"metadata": {"annotations": {SWAPS_ANNOTATION: r#"[{"field":"f"}]"#}}});
        assert_eq!(swaps(&pod), vec![json!({"field": "f"})]);
        assert!(swaps(&json!({})).is_empty());
    }
}
