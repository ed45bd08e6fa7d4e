//! `make dev` and `make dev-down`: the test harness's cluster (control plane, a node, the local
//! registry on `localhost:5000`) plus the webhook, run in the background for trying things out.
//!
//! - `imagemap-dev up [STATE_DIR] [--mode webhook|policy]` starts a background `serve` process,
//!   waits until it is ready and prints what to export and an example that builds, pushes and
//!   runs an image. With `--mode policy` (`make dev MODE=policy`) no webhook is registered: the
//!   controller compiles the ImageMaps into MutatingAdmissionPolicies the API server applies.
//! - `imagemap-dev down [STATE_DIR]` asks it to stop, waits until everything is torn down and
//!   checks that nothing is left: no process, mount, network namespace, bridge or cgroup.
//! - `imagemap-dev serve STATE_DIR` is that background process: it owns every component (the
//!   same code the tests use) and tears them down when `STATE_DIR/stop` appears. If it dies
//!   instead, the harness's watchdogs tear everything down.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use imagemap_e2e::webhook::{container, dry_run_create, image_map, pod, set_status, webhook_configuration};
use imagemap_e2e::{
    binaries, poll, ControlPlane, ControlPlaneOptions, Footprint, Node, Registry, Webhook, WebhookOptions,
};
use serde_json::json;

/// The registry's port, so that image names are `localhost:5000/...`.
const REGISTRY_PORT: u16 = 5000;
/// Overrides [`REGISTRY_PORT`] (for a second dev cluster, or a test beside a running one).
const REGISTRY_PORT_ENV: &str = "IMAGEMAP_DEV_REGISTRY_PORT";
/// The Kubernetes version `tests/controlplane/build.sh` builds.
const KUBERNETES_VERSION: &str = "v1.37.2";
/// The webhook registration's name.
const CONFIGURATION: &str = "imagemap-dev";
/// How long `up` waits for everything (a cold node start pulls nothing, but two cores are slow).
const UP_TIMEOUT: Duration = Duration::from_secs(600);
/// How long `down` waits for the teardown.
const DOWN_TIMEOUT: Duration = Duration::from_secs(180);

/// How the maps take effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The webhook, registered as `imagemap-dev`.
    Webhook,
    /// MutatingAdmissionPolicies kept by the controller; no webhook registered.
    Policy,
}

impl Mode {
    fn parse(s: &str) -> Result<Mode> {
        match s {
            "webhook" | "" => Ok(Mode::Webhook),
            "policy" => Ok(Mode::Policy),
            other => bail!("unknown mode {other:?}: use webhook or policy (make dev MODE=policy)"),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Mode::Webhook => "webhook",
            Mode::Policy => "policy",
        }
    }
}

/// The command line: a verb, an optional state folder and `--mode M` (or `--mode=M`).
fn parse_args(args: &[String]) -> Result<(String, PathBuf, Mode)> {
    let mut verb = None;
    let mut state = None;
    let mut mode = Mode::Webhook;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if let Some(m) = arg.strip_prefix("--mode=") {
            mode = Mode::parse(m)?;
        } else if arg == "--mode" {
            mode = Mode::parse(rest.next().map(String::as_str).context("--mode needs a value")?)?;
        } else if verb.is_none() {
            verb = Some(arg.clone());
        } else if state.is_none() {
            state = Some(PathBuf::from(arg));
        } else {
            bail!("unexpected argument {arg:?}");
        }
    }
    let state = state.unwrap_or_else(|| binaries::workspace_root().join(".dev"));
    Ok((verb.unwrap_or_else(|| "up".into()), state, mode))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = parse_args(&args).and_then(|(verb, state, mode)| match verb.as_str() {
        "up" => up(&state, mode),
        "down" => down(&state),
        "serve" => serve(&state, mode),
        other => Err(anyhow::anyhow!("unknown command {other:?}: use up, down or serve")),
    });
    if let Err(e) = result {
        eprintln!("imagemap-dev: {e:#}");
        std::process::exit(1);
    }
}

fn pid_file(state: &Path) -> PathBuf {
    state.join("serve.pid")
}

fn running_pid(state: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file(state)).ok()?.trim().parse().ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

fn up(state: &Path, mode: Mode) -> Result<()> {
    if running_pid(state).is_some() && state.join("ready").is_file() {
        eprintln!("imagemap-dev: already running; `make dev-down` first to start over");
        print!("{}", std::fs::read_to_string(state.join("ready"))?);
        return Ok(());
    }
    if running_pid(state).is_some() {
        bail!("a previous `make dev` in {} is still starting or stopping; `make dev-down` first", state.display());
    }
    let _ = std::fs::remove_dir_all(state);
    std::fs::create_dir_all(state).with_context(|| format!("creating {}", state.display()))?;
    let log = state.join("dev.log");
    let me = std::env::current_exe().context("finding this program")?;
    // Its own session: `make` returning, or the terminal closing, does not stop it.
    let mut child = Command::new("setsid")
        .arg(&me)
        .arg("serve")
        .arg(state)
        .arg(format!("--mode={}", mode.as_str()))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(&log)?.try_clone()?)
        .spawn()
        .context("starting the background process (setsid)")?;
    std::fs::write(pid_file(state), child.id().to_string())?;
    eprintln!("imagemap-dev: starting (log: {})", log.display());
    let started = Instant::now();
    let ready = poll(UP_TIMEOUT, Duration::from_millis(500), || {
        if state.join("ready").is_file() {
            return Some(true);
        }
        // Exited (reaped here, so that its pid does not linger as a zombie).
        matches!(child.try_wait(), Ok(Some(_))).then_some(false)
    });
    let tail = || tail(&log, 40);
    match ready {
        Some(true) => {
            eprintln!("imagemap-dev: ready in {:.0?}", started.elapsed());
            print!("{}", std::fs::read_to_string(state.join("ready"))?);
            Ok(())
        }
        Some(false) => bail!("the background process stopped; last lines of {}:\n{}", log.display(), tail()),
        None => bail!("not ready after {:.0?}; last lines of {}:\n{}", UP_TIMEOUT, log.display(), tail()),
    }
}

fn footprint_file(state: &Path) -> PathBuf {
    state.join("node.json")
}

/// Records what the node leaves on the machine, for `down` to check.
fn save_footprint(state: &Path, f: &Footprint) -> Result<()> {
    let text = json!({
        "id": f.id, "dir": f.dir, "nodeName": f.node_name, "bridge": f.bridge, "cgroup": f.cgroup,
        "cniNetwork": f.cni_network, "subnet": f.subnet, "gateway": f.gateway.to_string(),
    });
    std::fs::write(footprint_file(state), text.to_string()).context("writing node.json")
}

fn load_footprint(state: &Path) -> Result<Footprint> {
    let path = footprint_file(state);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let field = |k: &str| v[k].as_str().map(String::from).with_context(|| format!("{} has no {k:?}", path.display()));
    Ok(Footprint {
        id: field("id")?,
        dir: PathBuf::from(field("dir")?),
        node_name: field("nodeName")?,
        bridge: field("bridge")?,
        cgroup: field("cgroup")?,
        cni_network: field("cniNetwork")?,
        subnet: field("subnet")?,
        gateway: field("gateway")?.parse().context("node.json: gateway")?,
    })
}

fn down(state: &Path) -> Result<()> {
    // The node this `make dev` started (others, e.g. a test's, are not ours to judge).
    let footprint = load_footprint(state).ok();
    if let Some(pid) = running_pid(state) {
        std::fs::write(state.join("stop"), "")?;
        let stopped = poll(DOWN_TIMEOUT, Duration::from_millis(200), || running_pid(state).is_none().then_some(()));
        if stopped.is_none() {
            eprintln!(
                "imagemap-dev: process {pid} did not stop within {DOWN_TIMEOUT:?}; killing it (its watchdogs clean up)"
            );
            let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
            if let Some(f) = &footprint {
                poll(DOWN_TIMEOUT, Duration::from_millis(200), || f.leftovers().is_empty().then_some(()));
            }
        }
    }
    let left = footprint.as_ref().map(Footprint::leftovers).unwrap_or_default();
    let _ = std::fs::remove_dir_all(state);
    if !left.is_empty() {
        bail!("left behind:\n  {}", left.join("\n  "));
    }
    eprintln!("imagemap-dev: stopped; nothing left behind");
    Ok(())
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Everything `make dev` runs. Dropped in field order: the webhook, the node, the registry, then
/// the plane.
struct Dev {
    mode: Mode,
    webhook: Webhook,
    node: Node,
    registry: Registry,
    plane: ControlPlane,
}

fn serve(state: &Path, mode: Mode) -> Result<()> {
    let dev = start(mode)?;
    save_footprint(state, dev.node.footprint())?;
    let kubeconfig = state.join("kubeconfig");
    std::fs::copy(dev.plane.kubeconfig_path(), &kubeconfig).context("writing the kubeconfig")?;
    let bin = binaries::bin_dir()?;
    let target = binaries::workspace_root().join("target/debug");
    let registry = dev.registry.address();
    let ready = format!(
        "\nimagemap dev cluster ({mode} mode): control plane, node {node}, registry {registry}, {what} (logs: {logs}, {webhook_log}).\n\
         export KUBECONFIG={kubeconfig}\n\
         export PATH={bin}:{target}:$PATH   # kubectl {version}, crane, kubectl-imagemap\n\
         \n\
         Registry: {registry}\n\
         \n\
         Build an image (busybox and a marker file) with `kubectl imagemap build`: it runs the build command with\n\
         the target in $EXPECTED_REF (under the registry the cluster advertises: `kubectl imagemap registry`),\n\
         then records the pushed image, pinned by digest. A Deployment naming the plain image runs it:\n\
         \x20 mkdir -p /tmp/app/bin && cp /bin/busybox /tmp/app/bin/ && echo 'hello from build 1' > /tmp/app/marker\n\
         \x20 BUILD='tar -C /tmp/app -cf /tmp/app.tar bin marker && crane append --oci-empty-base -f /tmp/app.tar -t $EXPECTED_REF && crane mutate $EXPECTED_REF --entrypoint \"/bin/busybox,sh,-c,trap exit TERM; cat /marker; while true; do sleep 1; done\" -t $EXPECTED_REF'\n\
         \x20 kubectl imagemap build app --create -- sh -c \"$BUILD\"\n\
         \x20 kubectl create deployment x --image=app\n\
         \x20 kubectl rollout status deployment/x && kubectl logs -l app=x --prefix\n\
         \n\
         Rebuild (new marker, new tag) and the Deployment rolls to it:\n\
         \x20 echo 'hello from build 2' > /tmp/app/marker\n\
         \x20 kubectl imagemap build app -- sh -c \"$BUILD\"\n\
         \x20 sleep 2; kubectl rollout status deployment/x && kubectl logs -l app=x --prefix\n\
         \n\
         Stop everything with: make dev-down\n",
        node = dev.node.name(),
        mode = dev.mode.as_str(),
        what = match dev.mode {
            Mode::Webhook => "webhook",
            Mode::Policy => "controller compiling ImageMaps into MutatingAdmissionPolicies (no webhook registered)",
        },
        logs = state.join("dev.log").display(),
        webhook_log = dev.webhook.log_path().display(),
        kubeconfig = kubeconfig.display(),
        bin = bin.display(),
        target = target.display(),
        version = KUBERNETES_VERSION,
    );
    std::fs::write(state.join("ready"), ready)?;
    eprintln!("imagemap-dev: ready");
    while !state.join("stop").exists() {
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("imagemap-dev: stopping");
    drop(dev);
    eprintln!("imagemap-dev: stopped");
    Ok(())
}

fn start(mode: Mode) -> Result<Dev> {
    let plane = ControlPlane::start(ControlPlaneOptions {
        controller_manager: true,
        service_endpoints: true,
        ..ControlPlaneOptions::default()
    })?;
    let port = match std::env::var(REGISTRY_PORT_ENV) {
        Ok(p) => p.parse().with_context(|| format!("{REGISTRY_PORT_ENV}={p:?} is not a port number"))?,
        Err(_) => REGISTRY_PORT,
    };
    let registry = Registry::start(Some(port)).with_context(|| {
        format!("starting the registry on localhost:{port} (is the port taken? {REGISTRY_PORT_ENV} picks another)")
    })?;
    let node = Node::start(&plane, &registry)?;
    imagemap_e2e::registry_hosting::publish(&plane, &registry, imagemap_e2e::registry_hosting::HELP_URL)?;
    let lease_ns = "imagemap-system";
    plane.kubectl_ok(["create", "namespace", lease_ns]);
    // Two processes, as the chart runs them: the admission server only reads ImageMaps; the
    // controller (restarts, gate releases, the webhook's scope, policies) does every write.
    let common = ["--restart-on-rebuild", "--leader-election-namespace", lease_ns];
    let strings = |args: &[&str]| args.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let options = match mode {
        // Only the namespaces that hold ImageMaps call the webhook.
        Mode::Webhook => WebhookOptions {
            extra_args: strings(&["--gate-unbuilt"]),
            controller_args: Some(strings(
                &[&common[..], &["--gate-unbuilt", "--webhook-configuration", CONFIGURATION]].concat(),
            )),
            ..Default::default()
        },
        // No admission server: the API server applies the compiled policies itself.
        Mode::Policy => WebhookOptions {
            extra_args: strings(&[&["--role", "controller", "--mode", "policy"], &common[..]].concat()),
            ..Default::default()
        },
    };
    let webhook = Webhook::start(&plane, options)?;
    if mode == Mode::Webhook {
        register(&plane, &webhook)?;
    }
    wait_until_maps_apply(&plane, &webhook)?;
    Ok(Dev { mode, webhook, node, registry, plane })
}

/// Registers the webhook for every namespace but the system ones and the lease's, with the
/// chart's opt-out labels.
fn register(plane: &ControlPlane, webhook: &Webhook) -> Result<()> {
    let excluded = "imagemap-system";
    let mut config = webhook_configuration(CONFIGURATION, &webhook.url(), webhook.ca_pem(), &BTreeMap::new());
    let hook = &mut config["webhooks"][0];
    hook["namespaceSelector"] = json!({"matchExpressions": [
        {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
         "values": ["kube-system", "kube-public", "kube-node-lease", excluded]},
        {"key": "imagemap.tilt.dev/disabled", "operator": "DoesNotExist"},
    ]});
    hook["objectSelector"] =
        json!({"matchExpressions": [{"key": "imagemap.tilt.dev/disabled", "operator": "DoesNotExist"}]});
    plane.kubectl_client().apply(&config.to_string())?;
    Ok(())
}

/// Waits until a built map in `default` swaps a dry-run Pod there (through the webhook or the
/// compiled policy), then deletes the map.
fn wait_until_maps_apply(plane: &ControlPlane, webhook: &Webhook) -> Result<()> {
    let kubectl = plane.kubectl_client();
    let (ns, name, selector) = ("default", "imagemap-dev-probe", "imagemap-dev-probe");
    let target = "registry.example/imagemap-dev-probe:registered";
    kubectl.apply(&image_map(ns, name, selector).to_string())?;
    set_status(kubectl, ns, name, &json!({ "image": target }))?;
    let probe = pod(ns, "probe", &[container("probe", selector)]);
    let swapped = poll(Duration::from_secs(60), Duration::from_millis(200), || {
        let created = dry_run_create(kubectl, &probe).ok()?;
        (created["spec"]["containers"][0]["image"] == target).then_some(())
    });
    kubectl.ok(["delete", "imagemap", name, "-n", ns])?;
    if swapped.is_none() {
        bail!("the maps did not take effect; webhook log:\n{}", webhook.log_tail(30));
    }
    Ok(())
}
