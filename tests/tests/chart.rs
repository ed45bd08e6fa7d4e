//! The Helm chart (`charts/imagemap`) with the real Helm 4 (`helm4`, v4.3.2, which applies
//! server-side by default) against a real kube-apiserver (DESIGN §9): it lints and renders in every certificate mode and with every option, the
//! rendered objects pass the API server's own validation (server-side dry-run), an installed
//! release with `webhook.url` pointing at a locally started `imagemap-webhook` (serving the
//! certificate the chart generated) swaps Pods, keeps its CA across `helm upgrade`, and leaves
//! nothing behind after `helm uninstall`; bad values are refused with a message naming them.
//!
//! Trust (docs/security.md): for each mode and feature, the admission server's ServiceAccount may
//! read ImageMaps and nothing else, and the controller's exactly what its features write (the
//! API server's `can-i --list`, compared line by line); acting as the controller's ServiceAccount,
//! the chart's ValidatingAdmissionPolicies refuse what RBAC cannot narrow (Pods created for
//! real, ungated Pods updated, workloads changed beyond their restart annotations, the webhook
//! configuration changed beyond its match conditions); ImageMaps outside the admin guards are
//! refused when written (on a plane of its own: the guards bind every ImageMap write).
//!
//! No kubelet runs, so the chart's Deployments never get Pods: the webhook the API server calls
//! is the binary these tests start, with the chart's certificate and Secret. Every
//! MutatingWebhookConfiguration installed here selects only namespaces labelled
//! `imagemap-e2e/chart=<its release>`, so parallel tests never serve each other's Pods.
//!
//! The chart installed in a cluster with its real image, with Helm 4 and Helm 3: `in_cluster.rs`.
//!
//! Needs the webhook binary: `cargo build --workspace --bins` first (`make test` does).
#![allow(clippy::too_many_lines, reason = "a test reads top to bottom as the scenario it checks")]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use imagemap_e2e::helm::{
    chart_dir, expect_allowed, expect_refused, extra_rights, kubectl_as, patch_as, unique, wait_until_refused, Release,
};
use imagemap_e2e::process::{ManagedProcess, Watchdog};
use imagemap_e2e::webhook::{container, dry_run_create, image_map, pod, set_status, workspace_binary, WEBHOOK_BIN};
use imagemap_e2e::{poll, shared, ControlPlane, ControlPlaneOptions};
use serde_json::{json, Value};

/// The namespace label every test's webhook configuration selects on (value: the release).
const TEST_LABEL: &str = "imagemap-e2e/chart";

/// The chart's default opt-out label (namespaces and Pods).
const OPT_OUT_LABEL: &str = "imagemap.tilt.dev/disabled";

/// How long a change (an ImageMap in the webhook's cache, a webhook configuration or a
/// namespace label in the API server's caches) may take to show in a dry-run create.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the webhook may take to answer `/readyz`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// API groups whose CRDs the plane does not have: their objects are checked here, not on the
/// server.
const NOT_ON_SERVER: [&str; 2] = ["cert-manager.io/", "monitoring.coreos.com/"];

// ---------------------------------------------------------------------------------------------
// helpers

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The chart's full name for a release (no overrides): `<release>-imagemap`.
fn fullname(release: &str) -> String {
    format!("{release}-imagemap")
}

/// Runs helm with `args`; panics, with its output, if it fails. Returns stdout.
fn helm_ok(plane: &ControlPlane, args: &[&str]) -> String {
    let output = plane.helm(args);
    assert!(
        output.status.success(),
        "helm {} failed ({}):\n{}{}",
        args.join(" "),
        output.status,
        text(&output.stderr),
        text(&output.stdout)
    );
    text(&output.stdout)
}

/// Values as a file for `helm -f` (JSON is YAML).
struct ValuesFile {
    _dir: tempfile::TempDir,
    path: String,
}

fn values_file(values: &Value) -> ValuesFile {
    let dir = tempfile::Builder::new().prefix("imagemap-chart-values-").tempdir().expect("a temporary folder");
    let path = dir.path().join("values.json");
    std::fs::write(&path, values.to_string()).expect("write the values file");
    ValuesFile { path: path.display().to_string(), _dir: dir }
}

/// Splits helm's multi-document output into objects (comment-only documents dropped).
fn parse_manifests(yaml: &str) -> Vec<Value> {
    let mut docs = vec![String::new()];
    for line in yaml.lines() {
        if line == "---" {
            docs.push(String::new());
        } else if let Some(doc) = docs.last_mut() {
            doc.push_str(line);
            doc.push('\n');
        }
    }
    docs.iter()
        .map(|doc| {
            serde_saphyr::from_str::<Value>(doc).unwrap_or_else(|e| panic!("helm rendered invalid YAML ({e}):\n{doc}"))
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// `helm template RELEASE charts/imagemap --namespace NS -f values` as objects (without the
/// `helm test` hooks, which `tests/monitoring.rs` checks).
fn render(plane: &ControlPlane, release: &str, namespace: &str, values: &Value) -> Vec<Value> {
    let file = values_file(values);
    let chart = chart_dir().display().to_string();
    let args = ["template", release, &chart, "--namespace", namespace, "-f", &file.path, "--skip-tests"];
    let out = helm_ok(plane, &args);
    parse_manifests(&out)
}

/// The objects of `kind`.
fn all_of<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

/// The one object of `kind`; panics if there is not exactly one.
fn one<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found = all_of(objects, kind);
    assert_eq!(found.len(), 1, "expected one {kind}, found {}: {:?}", found.len(), kinds(objects));
    found[0]
}

/// The object of `kind` named `name`; panics if there is none.
fn named<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} among {:?}", names(objects)))
}

/// `KIND/NAME` of every object.
fn names(objects: &[Value]) -> Vec<String> {
    objects
        .iter()
        .map(|o| format!("{}/{}", o["kind"].as_str().unwrap_or("?"), o["metadata"]["name"].as_str().unwrap_or("?")))
        .collect()
}

/// The string arguments of a Deployment's first container.
fn args_of(deployment: &Value) -> Vec<&str> {
    deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

fn kinds(objects: &[Value]) -> BTreeSet<String> {
    objects.iter().map(|o| o["kind"].as_str().unwrap_or("?").to_string()).collect()
}

/// Sends the objects the plane knows the kinds of to the API server with
/// `kubectl apply --dry-run=server`: its validation, defaulting and admission run, nothing is
/// stored. cert-manager and Prometheus Operator kinds are skipped (their CRDs are not
/// installed); the callers check those objects themselves. Returns how many were validated.
fn validate_on_server(plane: &ControlPlane, namespace: &str, objects: &[Value]) -> usize {
    let items: Vec<Value> = objects
        .iter()
        .filter(|o| !NOT_ON_SERVER.iter().any(|group| o["apiVersion"].as_str().unwrap_or("").starts_with(group)))
        .cloned()
        .collect();
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    let output = plane
        .kubectl_client()
        .run_with_stdin(["apply", "--dry-run=server", "--namespace", namespace, "-f", "-"], Some(&list.to_string()))
        .expect("kubectl runs");
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "the API server refused the rendered objects:\n{}{stdout}", text(&output.stderr));
    let validated = stdout.lines().filter(|l| l.ends_with("(server dry run)")).count();
    assert_eq!(validated, items.len(), "kubectl validated fewer objects than sent:\n{stdout}");
    validated
}

/// base64-decoded `data[key]` of a Secret or the text of a ConfigMap key.
fn secret_data(secret: &Value, key: &str) -> String {
    let encoded = secret["data"][key].as_str().unwrap_or_else(|| panic!("the Secret has no {key}: {secret}"));
    let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).expect("Secret data is base64");
    String::from_utf8(bytes).expect("PEM is text")
}

/// `kubectl get KIND NAME -o json` (namespaced when `namespace` is given).
fn get_json(plane: &ControlPlane, kind: &str, name: &str, namespace: Option<&str>) -> Value {
    let mut args = vec!["get", kind, name, "--output", "json"];
    if let Some(ns) = namespace {
        args.extend(["--namespace", ns]);
    }
    serde_json::from_str(&plane.kubectl_ok(&args)).expect("kubectl get printed JSON")
}

/// Whether `kubectl get KIND NAME` says NotFound.
fn is_gone(plane: &ControlPlane, kind: &str, name: &str, namespace: Option<&str>) -> bool {
    let mut args = vec!["get", kind, name];
    if let Some(ns) = namespace {
        args.extend(["--namespace", ns]);
    }
    let output = plane.kubectl(&args);
    !output.status.success() && text(&output.stderr).contains("NotFound")
}

/// Creates a namespace with `labels` (so it is never seen unlabelled) and its `default`
/// ServiceAccount (the ServiceAccount admission plugin needs it before any Pod).
fn create_labelled_namespace(plane: &ControlPlane, prefix: &str, labels: &Value) -> String {
    let name = unique(prefix);
    let namespace = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}});
    let output = plane
        .kubectl_client()
        .run_with_stdin(["create", "-f", "-"], Some(&namespace.to_string()))
        .expect("kubectl runs");
    assert!(output.status.success(), "creating namespace {name}: {}", text(&output.stderr));
    let output = plane.kubectl(["create", "serviceaccount", "default", "--namespace", &name]);
    assert!(
        output.status.success() || text(&output.stderr).contains("already exists"),
        "creating the default ServiceAccount in {name}: {}",
        text(&output.stderr)
    );
    name
}

/// The image a server-side dry-run create of a one-container Pod (`image`, `labels`) in `ns`
/// comes back with.
fn dry_run_image(plane: &ControlPlane, ns: &str, image: &str, labels: &Value) -> Result<String, String> {
    let mut probe = pod(ns, "chart-probe", &[container("app", image)]);
    probe["metadata"]["labels"] = labels.clone();
    let created = dry_run_create(plane.kubectl_client(), &probe).map_err(|e| format!("{e:#}"))?;
    Ok(created["spec"]["containers"][0]["image"].as_str().unwrap_or_default().to_string())
}

/// Polls dry-run creates until a Pod with `image` in `ns` comes back with `expected`; panics
/// with `context()` (e.g. the webhook's log) after [`CHANGE_TIMEOUT`].
fn wait_for_image(plane: &ControlPlane, ns: &str, image: &str, expected: &str, context: impl Fn() -> String) {
    let started = Instant::now();
    let mut last = String::new();
    let reached =
        poll(CHANGE_TIMEOUT, Duration::from_millis(200), || match dry_run_image(plane, ns, image, &json!({})) {
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

/// An ImageMap `name` in `ns` selecting `selector`, with `status.image = target`.
fn create_built_map(plane: &ControlPlane, ns: &str, name: &str, selector: &str, target: &str) {
    plane.apply_yaml(&image_map(ns, name, selector).to_string());
    set_status(plane.kubectl_client(), ns, name, &json!({ "image": target })).expect("set the ImageMap's status");
}

/// The HTTP status of `GET https://HOST:PORT/PATH`, verifying the server's certificate with
/// `ca` and connecting to 127.0.0.1 whatever HOST is (`--resolve`); `Err` with curl's message
/// when the connection or the verification fails.
fn https_status(host: &str, port: u16, path: &str, ca: &Path) -> Result<u16, String> {
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "5", "--output", "/dev/null", "--write-out", "%{http_code}"])
        .arg("--cacert")
        .arg(ca)
        .arg("--resolve")
        .arg(format!("{host}:{port}:127.0.0.1"))
        .arg(format!("https://{host}:{port}{path}"))
        .stdin(Stdio::null())
        .output()
        .expect("curl runs");
    if !output.status.success() {
        return Err(format!("curl {}: {}", output.status, text(&output.stderr).trim()));
    }
    text(&output.stdout).trim().parse().map_err(|e| format!("curl printed no status: {e}"))
}

/// The real `imagemap-webhook` on 127.0.0.1:PORT, serving `tls.crt`/`tls.key` from `dir` (the
/// files the chart generated). Stopped on drop; its watchdog kills it if the test process dies.
struct LocalWebhook {
    // Dropped first: SIGTERM, then SIGKILL after a grace period.
    process: ManagedProcess,
    _watchdog: Watchdog,
    log: PathBuf,
}

impl LocalWebhook {
    /// Starts the binary with `args` added and waits until `https://HOST:PORT/readyz` (HOST
    /// resolved to 127.0.0.1) answers 200, verified with `dir/ca.crt`: the chart's CA signed a
    /// certificate valid for `host`.
    fn start(dir: &Path, host: &str, port: u16, args: &[String]) -> LocalWebhook {
        let program = workspace_binary(WEBHOOK_BIN).unwrap_or_else(|e| panic!("{e:#}"));
        let mut all = vec![
            "--listen".to_string(),
            format!("127.0.0.1:{port}"),
            "--tls-cert-file".into(),
            dir.join("tls.crt").display().to_string(),
            "--tls-private-key-file".into(),
            dir.join("tls.key").display().to_string(),
        ];
        all.extend(args.iter().cloned());
        let log = dir.join("webhook.log");
        let mut watchdog = Watchdog::spawn(None).expect("start a watchdog");
        let process = ManagedProcess::spawn(WEBHOOK_BIN, &program, &all, &log, &mut watchdog)
            .unwrap_or_else(|e| panic!("starting {}: {e:#}", program.display()));
        let mut webhook = LocalWebhook { process, _watchdog: watchdog, log };
        let ca = dir.join("ca.crt");
        let mut last = String::new();
        let ready = poll(READY_TIMEOUT, Duration::from_millis(100), || {
            if let Err(e) = webhook.process.ensure_running() {
                panic!("{e:#}");
            }
            match https_status(host, port, "/readyz", &ca) {
                Ok(200) => Some(()),
                Ok(code) => {
                    last = format!("HTTP {code}");
                    None
                }
                Err(e) => {
                    last = e;
                    None
                }
            }
        });
        assert!(
            ready.is_some(),
            "the webhook was not ready within {READY_TIMEOUT:?} (last: {last})\n{}",
            webhook.log_tail()
        );
        webhook
    }

    fn log_tail(&self) -> String {
        format!("last lines of {}:\n{}", self.log.display(), imagemap_e2e::process::tail(&self.log, 30))
    }

    fn stop(mut self) {
        self.process.stop(Duration::from_secs(5));
    }
}

/// Writes `ca.crt`, `tls.crt` and `tls.key` of a chart-made Secret into `dir`.
fn write_certificates(secret: &Value, dir: &Path) {
    for key in ["ca.crt", "tls.crt", "tls.key"] {
        std::fs::write(dir.join(key), secret_data(secret, key)).expect("write a certificate file");
    }
}

/// The first (only) webhook of a MutatingWebhookConfiguration.
fn the_webhook(config: &Value) -> &Value {
    let hooks = config["webhooks"].as_array().expect("webhooks");
    assert_eq!(hooks.len(), 1, "{config}");
    &hooks[0]
}

/// Values that keep a release's webhook configuration to namespaces labelled for `release`.
fn scoped_values(release: &str, mut values: Value) -> Value {
    values["webhook"]["namespaceSelector"]["matchLabels"] = json!({ TEST_LABEL: release });
    values
}

// ---------------------------------------------------------------------------------------------
// rendering

/// The value combinations the rendering tests go through: (name, values).
fn cases() -> Vec<(&'static str, Value)> {
    let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    vec![
        ("defaults", json!({})),
        ("url", json!({"webhook": {"url": "https://127.0.0.1:8443/mutate"}})),
        ("certManager", json!({"certs": {"mode": "certManager"}})),
        (
            "certManager-issuer-url",
            json!({"certs": {"mode": "certManager", "certManager": {"issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}}},
                   "webhook": {"url": "https://webhook.example.com/mutate"}}),
        ),
        (
            "existingSecret",
            json!({"certs": {"mode": "existingSecret", "existingSecret": {"name": "my-tls", "caBundle": pem}}}),
        ),
        ("single-replica", json!({"replicaCount": 1})),
        ("controller", json!({"controller": {"gateUnbuilt": true, "gateTimeout": "5m", "restartOnRebuild": true}})),
        (
            "everything",
            json!({
                "replicaCount": 3,
                "image": {"digest": "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"},
                "imagePullSecrets": [{"name": "regcred"}],
                "priorityClassName": "system-cluster-critical",
                "commonLabels": {"team": "platform"},
                "commonAnnotations": {"owner": "platform@example.com"},
                "podLabels": {"extra": "yes"},
                "podAnnotations": {"scrape": "no"},
                "globalNamespace": "imagemap-global",
                "allowedRegistries": ["registry.example.com/", "localhost:5000"],
                "allowOverrides": "local",
                "imagemapsFile": {"enabled": true, "maps": [
                    {"metadata": {"name": "base"}, "spec": {"selector": "base"}, "status": {"image": "registry.example/base:1"}}
                ]},
                "extraArgs": ["--max-concurrent-reviews=64"],
                "extraEnv": [{"name": "RUST_BACKTRACE", "value": "1"}],
                "metrics": {"service": {"enabled": true}, "serviceMonitor": {"enabled": true, "labels": {"release": "prom"}}},
                "networkPolicy": {"enabled": true, "egress": {"enabled": true, "apiServerCIDRs": ["10.0.0.1/32"]}},
                "webhook": {
                    "failurePolicy": "Fail",
                    "timeoutSeconds": 3,
                    "optOutLabel": "example.com/no-swaps",
                    "excludeNamespaces": ["monitoring"],
                    "namespaceSelector": {"matchLabels": {"imagemap": "on"},
                                          "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["prod"]}]},
                    "objectSelector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]},
                    "annotations": {"note": "x"}
                },
                "serviceAccount": {"annotations": {"iam": "role"}},
                "nodeSelector": {"kubernetes.io/os": "linux"},
                "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]
            }),
        ),
    ]
}

/// Adds to `missing` every key under `values` (path `prefix`) that `schema` does not declare or
/// the README's values table does not list (objects listed as a whole are not descended into).
fn undocumented(prefix: &str, values: &Value, schema: &Value, readme: &str, missing: &mut Vec<String>) {
    for (key, value) in values.as_object().into_iter().flatten() {
        let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        let declared = &schema["properties"][key];
        if declared.is_null() {
            missing.push(format!("{path} is not in values.schema.json"));
        }
        if readme.contains(&format!("| `{path}` |")) {
            continue;
        }
        match value.as_object() {
            Some(children) if !children.is_empty() => undocumented(&path, value, declared, readme, missing),
            _ => missing.push(format!("{path} is not in README.md's values table")),
        }
    }
}

#[test]
fn every_value_is_in_the_schema_and_the_readme() {
    let read = |file: &str| {
        std::fs::read_to_string(chart_dir().join(file))
            .unwrap_or_else(|e| panic!("reading charts/imagemap/{file}: {e}"))
    };
    let values: Value = serde_saphyr::from_str(&read("values.yaml")).expect("values.yaml is YAML");
    let schema: Value = serde_json::from_str(&read("values.schema.json")).expect("values.schema.json is JSON");
    let mut missing = Vec::new();
    undocumented("", &values, &schema, &read("README.md"), &mut missing);
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn lint_passes_in_every_mode_and_with_every_option() {
    let plane = shared();
    let chart = chart_dir().display().to_string();
    for (name, values) in cases() {
        let file = values_file(&values);
        let output = plane.helm(["lint", "--strict", &chart, "--namespace", "imagemap-system", "-f", &file.path]);
        assert!(
            output.status.success(),
            "helm lint --strict failed for {name}:\n{}{}",
            text(&output.stdout),
            text(&output.stderr)
        );
    }
}

#[test]
fn the_default_render_has_the_safe_defaults() {
    let plane = shared();
    let ns = plane.create_namespace("chart-defaults");
    let release = "imagemap";
    let objects = render(plane, release, &ns, &json!({}));
    assert_eq!(
        kinds(&objects),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "MutatingWebhookConfiguration",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Secret",
            "Service",
            "ServiceAccount",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding"
        ]
        .map(String::from)
        .into(),
        "the default objects"
    );
    // Release name "imagemap" already holds the chart name: no "imagemap-imagemap".
    let name = "imagemap";

    // The webhook configuration: DESIGN §9.
    let config = one(&objects, "MutatingWebhookConfiguration");
    assert_eq!(config["metadata"]["name"], name);
    let hook = the_webhook(config);
    assert_eq!(hook["name"], "pods.imagemap.tilt.dev");
    assert_eq!(hook["failurePolicy"], "Ignore");
    assert_eq!(hook["sideEffects"], "None");
    assert_eq!(hook["timeoutSeconds"], 5);
    assert_eq!(hook["admissionReviewVersions"], json!(["v1"]));
    assert_eq!(hook["reinvocationPolicy"], "IfNeeded");
    assert_eq!(
        hook["rules"],
        json!([{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"], "scope": "Namespaced"}])
    );
    assert_eq!(hook["clientConfig"]["service"], json!({"name": name, "namespace": ns, "path": "/mutate", "port": 443}));
    assert_eq!(
        hook["namespaceSelector"],
        json!({"matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
             "values": ["kube-system", "kube-public", "kube-node-lease", ns]},
            {"key": OPT_OUT_LABEL, "operator": "DoesNotExist"}
        ]})
    );
    assert_eq!(
        hook["objectSelector"],
        json!({"matchExpressions": [{"key": OPT_OUT_LABEL, "operator": "DoesNotExist"}]})
    );

    // The certificate Secret and the caBundle come from the same CA.
    let secret = one(&objects, "Secret");
    assert_eq!(secret["metadata"]["name"], format!("{name}-tls"));
    assert_eq!(secret["type"], "kubernetes.io/tls");
    assert_eq!(hook["clientConfig"]["caBundle"], secret["data"]["ca.crt"]);
    assert!(
        secret_data(secret, "tls.key").starts_with(&format!("-----BEGIN {}-----", "EC PRIVATE KEY")),
        "an ECDSA key"
    );

    // The admission server's Deployment.
    let deployment = named(&objects, "Deployment", name);
    let spec = &deployment["spec"]["template"]["spec"];
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(spec["serviceAccountName"], name);
    assert_eq!(spec["terminationGracePeriodSeconds"], 30);
    assert!(spec.get("priorityClassName").is_none());
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert_eq!(spec["securityContext"]["runAsUser"], 65532);
    assert_eq!(spec["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(
        spec["topologySpreadConstraints"],
        json!([{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": deployment["spec"]["selector"]["matchLabels"]}}])
    );
    let webhook = &spec["containers"][0];
    assert_eq!(webhook["image"], "ghcr.io/imagemap/imagemap-webhook:0.1.0");
    let security = &webhook["securityContext"];
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["runAsUser"], 65532);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
    let args: Vec<&str> = webhook["args"].as_array().expect("args").iter().filter_map(Value::as_str).collect();
    for flag in [
        "--listen=0.0.0.0:8443",
        "--tls-cert-file=/etc/imagemap/tls/tls.crt",
        "--tls-private-key-file=/etc/imagemap/tls/tls.key",
        "--shutdown-delay=5s",
        "--shutdown-timeout=20s",
    ] {
        assert!(args.contains(&flag), "{flag} in {args:?}");
    }
    assert!(!args.iter().any(|a| a.starts_with("--global-namespace") || a.starts_with("--imagemaps-file")), "{args:?}");
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(webhook[probe]["httpGet"], json!({"path": path, "port": "https", "scheme": "HTTPS"}), "{probe}");
    }
    assert!(
        webhook["resources"]["requests"]["cpu"].is_string() && webhook["resources"]["limits"]["memory"].is_string()
    );
    assert_eq!(spec["volumes"][0]["secret"]["secretName"], format!("{name}-tls"));

    // Service 443 -> the container's https port (8443), PDB, least-privilege RBAC.
    let service = one(&objects, "Service");
    assert_eq!(
        service["spec"]["ports"],
        json!([{"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}])
    );
    assert_eq!(webhook["ports"], json!([{"name": "https", "containerPort": 8443, "protocol": "TCP"}]));
    // The Service selects the admission server's Pods, never the controller's.
    let selects = |labels: &Value| {
        service["spec"]["selector"].as_object().expect("selector").iter().all(|(k, v)| &labels[k] == v)
    };
    assert!(selects(&deployment["spec"]["template"]["metadata"]["labels"]));
    let controller_pods = &named(&objects, "Deployment", &format!("{name}-controller"))["spec"]["template"];
    assert!(!selects(&controller_pods["metadata"]["labels"]), "{}", controller_pods["metadata"]);
    assert_eq!(controller_pods["spec"]["serviceAccountName"], format!("{name}-controller"));
    let pdb = one(&objects, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(pdb["spec"]["selector"], deployment["spec"]["selector"]);
    let read_maps = json!({"apiGroups": ["tilt.dev"], "resources": ["imagemaps"], "verbs": ["get", "list", "watch"]});
    assert_eq!(named(&objects, "ClusterRole", name)["rules"], json!([read_maps]));
    assert_eq!(
        named(&objects, "ClusterRoleBinding", name)["subjects"],
        json!([{"kind": "ServiceAccount", "name": name, "namespace": ns}])
    );

    // The controller scopes the webhook to where maps are, by default: its own Deployment,
    // ServiceAccount and role.
    let controller = format!("{name}-controller");
    assert!(
        args_of(named(&objects, "Deployment", &controller))
            .contains(&format!("--webhook-configuration={name}").as_str()),
        "the webhook is scoped to where maps are by default"
    );
    assert_eq!(
        named(&objects, "ClusterRole", &controller)["rules"],
        json!([
            read_maps,
            {"apiGroups": ["admissionregistration.k8s.io"], "resources": ["mutatingwebhookconfigurations"],
             "resourceNames": [name], "verbs": ["get", "update"]},
        ])
    );
    assert_eq!(
        named(&objects, "ClusterRoleBinding", &controller)["subjects"],
        json!([{"kind": "ServiceAccount", "name": controller, "namespace": ns}])
    );
    let policy = one(&objects, "ValidatingAdmissionPolicy");
    assert_eq!(policy["metadata"]["name"], format!("{controller}-webhook-configuration"));
    assert_eq!(
        policy["spec"]["matchConditions"][0]["expression"],
        format!("request.userInfo.username == 'system:serviceaccount:{ns}:{controller}'")
    );
    assert_eq!(one(&objects, "ValidatingAdmissionPolicyBinding")["spec"]["validationActions"], json!(["Deny"]));

    // ImageMap rights folded into the built-in roles.
    let view = named(&objects, "ClusterRole", &format!("{name}-view"));
    assert_eq!(view["rules"], json!([read_maps]));
    let edit = named(&objects, "ClusterRole", &format!("{name}-edit"));
    assert_eq!(
        edit["rules"],
        json!([
            {"apiGroups": ["tilt.dev"], "resources": ["imagemaps"],
             "verbs": ["create", "update", "patch", "delete", "deletecollection"]},
            {"apiGroups": ["tilt.dev"], "resources": ["imagemaps/status"], "verbs": ["get", "update", "patch"]},
        ])
    );
    for (role, to) in [(view, ["view", "edit", "admin"].as_slice()), (edit, ["edit", "admin"].as_slice())] {
        let labels = &role["metadata"]["labels"];
        for target in ["view", "edit", "admin"] {
            let label = &labels[format!("rbac.authorization.k8s.io/aggregate-to-{target}")];
            assert_eq!(label.as_str() == Some("true"), to.contains(&target), "{target} in {labels}");
        }
    }

    assert_eq!(validate_on_server(plane, &ns, &objects), objects.len());
}

#[test]
fn every_mode_and_option_renders_objects_the_api_server_accepts() {
    let plane = shared();
    let ns = plane.create_namespace("chart-modes");
    for (case, values) in cases() {
        let release = "r";
        let name = fullname(release);
        let objects = render(plane, release, &ns, &values);
        let config = one(&objects, "MutatingWebhookConfiguration");
        let hook = the_webhook(config);
        let deployment = named(&objects, "Deployment", &name);
        let pod_spec = &deployment["spec"]["template"]["spec"];
        let args = args_of(deployment);
        let controller = named(&objects, "Deployment", &format!("{name}-controller"));
        let validated = validate_on_server(plane, &ns, &objects);
        let skipped = objects.len() - validated;
        match case {
            "defaults" => assert_eq!(skipped, 0),
            "url" => {
                assert_eq!(hook["clientConfig"]["url"], "https://127.0.0.1:8443/mutate", "{case}");
                assert!(hook["clientConfig"].get("service").is_none(), "{case}");
                let secret = one(&objects, "Secret");
                assert!(
                    secret["metadata"]["annotations"]["imagemap.tilt.dev/cert-hosts"]
                        .as_str()
                        .is_some_and(|h| h.ends_with(";127.0.0.1")),
                    "the certificate covers the URL's IP: {secret}"
                );
                assert_eq!(hook["clientConfig"]["caBundle"], secret["data"]["ca.crt"]);
            }
            "certManager" => {
                // Checked here: the cert-manager chain (no CRDs on the plane).
                assert!(all_of(&objects, "Secret").is_empty(), "cert-manager makes the Secret");
                assert_eq!(skipped, 4, "2 Issuers and 2 Certificates");
                let issuers = all_of(&objects, "Issuer");
                assert!(issuers.iter().any(|i| i["spec"]["selfSigned"] == json!({})), "{issuers:?}");
                assert!(issuers.iter().any(|i| i["spec"]["ca"]["secretName"] == format!("{name}-ca")), "{issuers:?}");
                let certificates = all_of(&objects, "Certificate");
                let ca = certificates.iter().find(|c| c["spec"]["isCA"] == true).expect("a CA Certificate");
                assert_eq!(ca["spec"]["issuerRef"]["name"], format!("{name}-selfsigned"));
                let serving = certificates.iter().find(|c| c["spec"]["isCA"] != true).expect("a serving Certificate");
                assert_eq!(serving["spec"]["secretName"], format!("{name}-tls"));
                assert_eq!(serving["spec"]["issuerRef"]["name"], format!("{name}-ca"));
                assert_eq!(
                    serving["spec"]["dnsNames"],
                    json!([
                        name,
                        format!("{name}.{ns}"),
                        format!("{name}.{ns}.svc"),
                        format!("{name}.{ns}.svc.cluster.local")
                    ])
                );
                assert_eq!(
                    config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
                    format!("{ns}/{name}-tls")
                );
                assert!(hook["clientConfig"].get("caBundle").is_none(), "the CA injector fills it");
                assert_eq!(pod_spec["volumes"][0]["secret"]["secretName"], format!("{name}-tls"));
            }
            "certManager-issuer-url" => {
                assert_eq!(skipped, 1, "only the serving Certificate");
                let serving = one(&objects, "Certificate");
                assert_eq!(serving["spec"]["issuerRef"], json!({"name": "corp-ca", "kind": "ClusterIssuer"}));
                assert_eq!(serving["spec"]["dnsNames"][4], "webhook.example.com", "the URL's host name");
                assert!(serving["spec"].get("ipAddresses").is_none());
            }
            "existingSecret" => {
                assert!(all_of(&objects, "Secret").is_empty());
                let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
                assert_eq!(hook["clientConfig"]["caBundle"], base64::engine::general_purpose::STANDARD.encode(pem));
                assert_eq!(pod_spec["volumes"][0]["secret"]["secretName"], "my-tls");
            }
            "single-replica" => {
                assert!(all_of(&objects, "PodDisruptionBudget").is_empty(), "a 1-replica PDB would block drains");
            }
            "controller" => {
                // The admission server adds the gate; the controller does the rest.
                assert!(args.contains(&"--gate-unbuilt"), "{args:?}");
                let controller_args = args_of(controller);
                for flag in
                    ["--gate-unbuilt", "--gate-timeout=5m", "--converge", &format!("--leader-election-namespace={ns}")]
                {
                    assert!(controller_args.contains(&flag), "{flag} in {controller_args:?}");
                }
                let env = &controller["spec"]["template"]["spec"]["containers"][0]["env"];
                assert_eq!(
                    env[0]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name",
                    "POD_NAME for the Lease identity"
                );
                let rules = &named(&objects, "ClusterRole", &format!("{name}-controller"))["rules"];
                let granted: BTreeSet<String> =
                    rules
                        .as_array()
                        .expect("rules")
                        .iter()
                        .flat_map(|r| {
                            let verbs: Vec<String> = r["verbs"]
                                .as_array()
                                .expect("verbs")
                                .iter()
                                .filter_map(|v| v.as_str().map(String::from))
                                .collect();
                            r["resources"].as_array().expect("resources").iter().filter_map(|x| x.as_str()).flat_map(
                                move |res| verbs.iter().map(move |v| format!("{v} {res}")).collect::<Vec<_>>(),
                            )
                        })
                        .collect();
                for want in [
                    "patch pods",
                    "list pods",
                    "create events",
                    "get replicasets",
                    "patch deployments",
                    "patch statefulsets",
                    "patch daemonsets",
                    "get deployments",
                    "get statefulsets",
                    "get daemonsets",
                ] {
                    assert!(granted.contains(want), "{want} granted when the controller is on: {granted:?}");
                }
                let lease_rules = &one(&objects, "Role")["rules"][0];
                assert_eq!(lease_rules["resources"], json!(["leases"]));
                assert_eq!(one(&objects, "RoleBinding")["metadata"]["namespace"], ns.as_str());
            }
            "everything" => {
                assert_eq!(skipped, 1, "the ServiceMonitor");
                assert_eq!(deployment["spec"]["replicas"], 3);
                assert_eq!(
                    pod_spec["containers"][0]["image"],
                    "ghcr.io/imagemap/imagemap-webhook@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
                );
                assert_eq!(pod_spec["priorityClassName"], "system-cluster-critical");
                assert!(args.contains(&"--global-namespace=imagemap-global"), "{args:?}");
                assert!(args.contains(&"--imagemaps-file=/etc/imagemap/maps/imagemaps.yaml"), "{args:?}");
                assert!(args.contains(&"--max-concurrent-reviews=64"), "{args:?}");
                assert_eq!(pod_spec["volumes"][1]["configMap"]["name"], format!("{name}-imagemaps"));
                // The controller runs the same image, with the same global namespace and
                // protected namespaces, but not the admission server's extra flags.
                let controller_spec = &controller["spec"]["template"]["spec"];
                assert_eq!(controller_spec["containers"][0]["image"], pod_spec["containers"][0]["image"]);
                assert_eq!(controller_spec["priorityClassName"], "system-cluster-critical");
                let controller_args = args_of(controller);
                for flag in [
                    "--global-namespace=imagemap-global",
                    "--allowed-registry=registry.example.com/",
                    "--allowed-registry=localhost:5000",
                    "--allow-overrides=local",
                    &format!("--protected-namespace={ns}"),
                    "--protected-namespace=monitoring",
                ] {
                    assert!(
                        args.contains(&flag) && controller_args.contains(&flag),
                        "{flag}: {args:?} {controller_args:?}"
                    );
                }
                assert!(!controller_args.contains(&"--max-concurrent-reviews=64"), "{controller_args:?}");
                let guards = named(&objects, "ValidatingAdmissionPolicy", &format!("{name}-imagemap-guards"));
                let guards = guards["spec"]["validations"].to_string();
                assert!(guards.contains("(allowedRegistries: registry.example.com/, localhost:5000)"), "{guards}");
                assert!(guards.contains("(allowOverrides: local)"), "{guards}");
                for object in &objects {
                    assert_eq!(object["metadata"]["labels"]["team"], "platform", "commonLabels on {}", object["kind"]);
                    assert_eq!(
                        object["metadata"]["annotations"]["owner"], "platform@example.com",
                        "commonAnnotations on {}",
                        object["kind"]
                    );
                }
                assert_eq!(deployment["spec"]["template"]["metadata"]["labels"]["extra"], "yes");
                assert_eq!(hook["failurePolicy"], "Fail");
                assert_eq!(hook["timeoutSeconds"], 3);
                assert_eq!(hook["namespaceSelector"]["matchLabels"], json!({"imagemap": "on"}));
                let expressions = hook["namespaceSelector"]["matchExpressions"].as_array().expect("expressions");
                assert_eq!(
                    expressions[0]["values"],
                    json!(["kube-system", "kube-public", "kube-node-lease", ns, "monitoring"])
                );
                assert_eq!(expressions[1], json!({"key": "example.com/no-swaps", "operator": "DoesNotExist"}));
                assert_eq!(expressions[2]["key"], "tier");
                assert_eq!(hook["objectSelector"]["matchExpressions"][1], json!({"key": "app", "operator": "Exists"}));
                // The maps ConfigMap holds a List of complete ImageMaps (the webhook's file format).
                let maps = &one(&objects, "ConfigMap")["data"]["imagemaps.yaml"];
                let maps: Value = serde_saphyr::from_str(maps.as_str().expect("maps text")).expect("maps YAML");
                assert_eq!(maps["kind"], "List");
                assert_eq!(maps["items"][0]["apiVersion"], "tilt.dev/v1alpha1");
                assert_eq!(maps["items"][0]["kind"], "ImageMap");
                // Metrics and the ServiceMonitor (checked here: no Prometheus Operator CRD).
                let metrics = all_of(&objects, "Service")
                    .into_iter()
                    .find(|s| s["metadata"]["name"] == format!("{name}-metrics"))
                    .expect("the metrics Service");
                let monitor = one(&objects, "ServiceMonitor");
                for (label, value) in monitor["spec"]["selector"]["matchLabels"].as_object().expect("selector") {
                    assert_eq!(&metrics["metadata"]["labels"][label], value, "the ServiceMonitor selects {label}");
                }
                assert_eq!(monitor["metadata"]["labels"]["release"], "prom");
                let endpoint = &monitor["spec"]["endpoints"][0];
                assert_eq!(endpoint["port"], metrics["spec"]["ports"][0]["name"]);
                assert_eq!(endpoint["scheme"], "https");
                assert_eq!(endpoint["path"], "/metrics");
                assert_eq!(
                    endpoint["tlsConfig"]["ca"]["secret"],
                    json!({"name": format!("{name}-tls"), "key": "ca.crt"})
                );
                assert_eq!(endpoint["tlsConfig"]["serverName"], format!("{name}.{ns}.svc"));
                let policy = one(&objects, "NetworkPolicy");
                assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
                assert_eq!(policy["spec"]["ingress"], json!([{"ports": [{"port": "https", "protocol": "TCP"}]}]));
            }
            other => panic!("no checks for case {other}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// certificates, served for real

#[test]
fn the_generated_certificate_serves_the_service_names_and_the_url_host() {
    let plane = shared();
    let port = imagemap_e2e::net::free_ports(1).expect("a free port")[0];
    let (release, ns) = ("certs", "imagemap-system");
    let name = fullname(release);
    let values = json!({
        "webhook": {"url": format!("https://127.0.0.1:{port}/mutate")},
        "imagemapsFile": {"enabled": true, "maps": [
            {"metadata": {"name": "from-file"}, "spec": {"selector": "file-app"},
             "status": {"image": "registry.example/file-app:from-file"}}
        ]},
    });
    let objects = render(plane, release, ns, &values);
    let secret = one(&objects, "Secret");
    let dir = tempfile::Builder::new().prefix("imagemap-chart-certs-").tempdir().expect("a temporary folder");
    write_certificates(secret, dir.path());
    let maps = one(&objects, "ConfigMap")["data"]["imagemaps.yaml"].as_str().expect("maps").to_string();
    std::fs::write(dir.path().join("imagemaps.yaml"), maps).expect("write the maps file");
    assert_eq!(
        the_webhook(one(&objects, "MutatingWebhookConfiguration"))["clientConfig"]["caBundle"],
        secret["data"]["ca.crt"]
    );

    // The webhook serves the chart's certificate and reads the chart's maps file; ready means
    // 127.0.0.1 (the URL's host) verified against the chart's CA.
    let maps_file = dir.path().join("imagemaps.yaml").display().to_string();
    let webhook = LocalWebhook::start(
        dir.path(),
        "127.0.0.1",
        port,
        &["--no-cluster".into(), "--imagemaps-file".into(), maps_file],
    );
    let ca = dir.path().join("ca.crt");
    for host in
        [name.clone(), format!("{name}.{ns}"), format!("{name}.{ns}.svc"), format!("{name}.{ns}.svc.cluster.local")]
    {
        assert_eq!(https_status(&host, port, "/healthz", &ca), Ok(200), "TLS to {host}\n{}", webhook.log_tail());
    }
    // A name the certificate does not cover is refused: the checks above did verify.
    let other = format!("other.{ns}.svc");
    let refused = https_status(&other, port, "/healthz", &ca).expect_err("a name outside the certificate");
    assert!(refused.contains("certificate") || refused.contains("SSL"), "{refused}");

    // An AdmissionReview for a Pod naming the file's selector gets the swap.
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "chart-file-maps",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "dev",
            "operation": "CREATE",
            "userInfo": {"username": "admin"},
            "object": pod("dev", "web", &[container("web", "file-app")]),
        },
    });
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "5", "--cacert"])
        .arg(&ca)
        .args(["--header", "Content-Type: application/json", "--data-binary", &review.to_string()])
        .arg(format!("https://127.0.0.1:{port}/mutate"))
        .stdin(Stdio::null())
        .output()
        .expect("curl runs");
    assert!(output.status.success(), "POST /mutate: {}", text(&output.stderr));
    let answer: Value = serde_json::from_slice(&output.stdout).expect("an AdmissionReview");
    assert_eq!(answer["response"]["uid"], "chart-file-maps");
    assert_eq!(answer["response"]["allowed"], true);
    let patch = base64::engine::general_purpose::STANDARD
        .decode(answer["response"]["patch"].as_str().expect("a patch"))
        .expect("base64 patch");
    assert!(text(&patch).contains("registry.example/file-app:from-file"), "{}", text(&patch));
    webhook.stop();
}

// ---------------------------------------------------------------------------------------------
// install, upgrade, uninstall

#[test]
fn an_installed_release_swaps_pods_keeps_its_ca_across_upgrades_and_uninstalls_cleanly() {
    let plane = shared();
    let chart = chart_dir().display().to_string();
    let release = unique("life");
    let name = fullname(&release);
    let labels = json!({ TEST_LABEL: release });
    // The release namespace carries the label too: only its name keeps it unserved. Created
    // before the served namespace, so once the API server has seen the served one's labels it
    // has seen these (namespace events arrive in order).
    let release_ns = create_labelled_namespace(plane, "chart-rel", &labels);
    let port = imagemap_e2e::net::free_ports(1).expect("a free port")[0];
    let url = format!("https://127.0.0.1:{port}/mutate");
    let values = values_file(&scoped_values(&release, json!({"webhook": {"url": url}})));
    let notes = helm_ok(plane, &["install", &release, &chart, "--namespace", &release_ns, "-f", &values.path]);
    assert!(notes.contains("kubectl imagemap doctor"), "NOTES tell the admin to run doctor:\n{notes}");

    // The configuration points at the URL with the generated CA.
    let config = get_json(plane, "mutatingwebhookconfiguration", &name, None);
    assert_eq!(the_webhook(&config)["clientConfig"]["url"], url);
    let secret = get_json(plane, "secret", &format!("{name}-tls"), Some(&release_ns));
    assert_eq!(the_webhook(&config)["clientConfig"]["caBundle"], secret["data"]["ca.crt"]);

    // Start the webhook with the chart's certificate; `--global-namespace` = the release
    // namespace, so that a map there is in the webhook's cache and applies everywhere it is called.
    let dir = tempfile::Builder::new().prefix("imagemap-chart-life-").tempdir().expect("a temporary folder");
    write_certificates(&secret, dir.path());
    let kubeconfig = plane.kubeconfig_path().display().to_string();
    let webhook = LocalWebhook::start(
        dir.path(),
        "127.0.0.1",
        port,
        &["--kubeconfig".into(), kubeconfig, "--global-namespace".into(), release_ns.clone()],
    );
    let log = || webhook.log_tail();

    // A served namespace: a map with a status swaps Pods.
    let served = create_labelled_namespace(plane, "chart-served", &labels);
    create_built_map(plane, &served, "app", "chart-app", "registry.example/chart-app:v1");
    wait_for_image(plane, &served, "chart-app", "registry.example/chart-app:v1", log);

    // A Pod with the opt-out label is left alone (same namespace, same map: the cache has it).
    let opted_out = dry_run_image(plane, &served, "chart-app", &json!({ OPT_OUT_LABEL: "true" })).expect("dry run");
    assert_eq!(opted_out, "chart-app", "a Pod labelled {OPT_OUT_LABEL} is not served");

    // The release namespace is never served: its map applies globally (proven in the served
    // namespace), yet a Pod in the release namespace itself is left alone.
    create_built_map(plane, &release_ns, "global", "chart-global", "registry.example/chart-global:v1");
    wait_for_image(plane, &served, "chart-global", "registry.example/chart-global:v1", log);
    let in_release_ns = dry_run_image(plane, &release_ns, "chart-global", &json!({})).expect("dry run");
    assert_eq!(in_release_ns, "chart-global", "the release namespace is excluded");

    // A namespace labelled with the opt-out label is not served; removing the label serves it again.
    plane.kubectl_ok(["label", "namespace", &served, &format!("{OPT_OUT_LABEL}=true")]);
    wait_for_image(plane, &served, "chart-app", "chart-app", log);
    plane.kubectl_ok(["label", "namespace", &served, &format!("{OPT_OUT_LABEL}-")]);
    wait_for_image(plane, &served, "chart-app", "registry.example/chart-app:v1", log);

    // helm upgrade (a real change: 3 replicas) keeps the CA, the serving pair and the caBundle.
    helm_ok(
        plane,
        &["upgrade", &release, &chart, "--namespace", &release_ns, "-f", &values.path, "--set", "replicaCount=3"],
    );
    let deployment = get_json(plane, "deployment", &name, Some(&release_ns));
    assert_eq!(deployment["spec"]["replicas"], 3, "the upgrade was applied");
    let upgraded = get_json(plane, "secret", &format!("{name}-tls"), Some(&release_ns));
    for key in ["ca.crt", "tls.crt", "tls.key"] {
        assert_eq!(upgraded["data"][key], secret["data"][key], "{key} changed across helm upgrade");
    }
    let upgraded_config = get_json(plane, "mutatingwebhookconfiguration", &name, None);
    assert_eq!(the_webhook(&upgraded_config)["clientConfig"]["caBundle"], secret["data"]["ca.crt"]);
    // ... and the API server still trusts the running webhook: a new build is swapped in.
    set_status(plane.kubectl_client(), &served, "app", &json!({"image": "registry.example/chart-app:v2"}))
        .expect("set the ImageMap's status");
    wait_for_image(plane, &served, "chart-app", "registry.example/chart-app:v2", log);

    // helm uninstall removes the webhook configuration and everything else of the release.
    helm_ok(plane, &["uninstall", &release, "--namespace", &release_ns, "--wait", "--timeout", "60s"]);
    for (kind, namespace) in [
        ("mutatingwebhookconfiguration", None),
        ("clusterrole", None),
        ("clusterrolebinding", None),
        ("secret", Some(release_ns.as_str())),
    ] {
        let object = if kind == "secret" { format!("{name}-tls") } else { name.clone() };
        assert!(is_gone(plane, kind, &object, namespace), "{kind} {object} is left after helm uninstall");
    }
    let left = plane.kubectl_ok([
        "get",
        "deployments,services,serviceaccounts,poddisruptionbudgets,secrets,configmaps,roles,rolebindings",
        "--namespace",
        &release_ns,
        "--selector",
        &format!("app.kubernetes.io/instance={release}"),
        "--output",
        "name",
    ]);
    assert_eq!(left.trim(), "", "objects left after helm uninstall");
    let left = plane.kubectl_ok([
        "get",
        "clusterroles,clusterrolebindings,mutatingwebhookconfigurations,validatingadmissionpolicies,\
         validatingadmissionpolicybindings",
        "--selector",
        &format!("app.kubernetes.io/instance={release}"),
        "--output",
        "name",
    ]);
    assert_eq!(left.trim(), "", "cluster-wide objects left after helm uninstall");

    // Pods are created, unchanged, once the API server has dropped the configuration, and still
    // with the webhook stopped.
    wait_for_image(plane, &served, "chart-app", "chart-app", log);
    webhook.stop();
    let after = pod(&served, "after-uninstall", &[container("app", "chart-app")]);
    let created = plane
        .kubectl_client()
        .run_with_stdin(["create", "--output", "json", "-f", "-"], Some(&after.to_string()))
        .expect("kubectl runs");
    assert!(created.status.success(), "creating a Pod after uninstall: {}", text(&created.stderr));
    let created: Value = serde_json::from_slice(&created.stdout).expect("the created Pod");
    assert_eq!(created["spec"]["containers"][0]["image"], "chart-app");
}

#[test]
fn a_new_url_host_reissues_the_generated_certificate_for_it() {
    let plane = shared();
    let chart = chart_dir().display().to_string();
    let release = unique("reissue");
    let name = fullname(&release);
    let ns = plane.create_namespace("chart-reissue");
    let port = imagemap_e2e::net::free_ports(1).expect("a free port")[0];
    let by_ip =
        values_file(&scoped_values(&release, json!({"webhook": {"url": format!("https://127.0.0.1:{port}/mutate")}})));
    helm_ok(plane, &["install", &release, &chart, "--namespace", &ns, "-f", &by_ip.path]);
    let first = get_json(plane, "secret", &format!("{name}-tls"), Some(&ns));

    let by_name =
        values_file(&scoped_values(&release, json!({"webhook": {"url": format!("https://localhost:{port}/mutate")}})));
    helm_ok(plane, &["upgrade", &release, &chart, "--namespace", &ns, "-f", &by_name.path]);
    let second = get_json(plane, "secret", &format!("{name}-tls"), Some(&ns));
    assert_ne!(second["data"]["ca.crt"], first["data"]["ca.crt"], "a new certificate for the new host");
    let config = get_json(plane, "mutatingwebhookconfiguration", &name, None);
    assert_eq!(the_webhook(&config)["clientConfig"]["caBundle"], second["data"]["ca.crt"]);

    // The new pair serves `localhost` (a DNS SAN; ready means verified) to a client trusting the
    // new CA, and no longer 127.0.0.1.
    let dir = tempfile::Builder::new().prefix("imagemap-chart-reissue-").tempdir().expect("a temporary folder");
    write_certificates(&second, dir.path());
    let webhook = LocalWebhook::start(dir.path(), "localhost", port, &["--no-cluster".into()]);
    let refused = https_status("127.0.0.1", port, "/healthz", &dir.path().join("ca.crt"));
    assert!(refused.is_err(), "the reissued certificate still covers 127.0.0.1: {refused:?}\n{}", webhook.log_tail());
    webhook.stop();

    // A later upgrade with the same host keeps the reissued pair.
    helm_ok(plane, &["upgrade", &release, &chart, "--namespace", &ns, "-f", &by_name.path]);
    let third = get_json(plane, "secret", &format!("{name}-tls"), Some(&ns));
    assert_eq!(third["data"], second["data"]);
    helm_ok(plane, &["uninstall", &release, "--namespace", &ns]);
}

// ---------------------------------------------------------------------------------------------
// RBAC and values

/// `kubectl auth can-i VERB RESOURCE[/SUBRESOURCE] --as USER` (`--all-namespaces` when
/// `namespace` is None): "yes" or "no".
fn can_i(plane: &ControlPlane, user: &str, verb: &str, resource: &str, namespace: Option<&str>) -> String {
    imagemap_e2e::kubectl::can_i(plane.kubectl_client(), user, verb, resource, namespace).expect("kubectl runs")
}

/// Installs a release named `PREFIX-N-PID` with `values`, its webhook configuration kept to
/// namespaces labelled for it (none).
fn install<'a>(plane: &'a ControlPlane, prefix: &str, values: Value) -> Release<'a> {
    let name = unique(prefix);
    Release::install(plane, &name, &scoped_values(&name, values))
}

fn sorted(lines: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut lines: Vec<String> = lines.into_iter().collect();
    lines.sort();
    lines
}

#[test]
fn each_service_account_has_exactly_the_rights_its_features_need() {
    let plane = shared();
    let restarts = [
        "daemonsets.apps [] [] [get patch]",
        "deployments.apps [] [] [get patch]",
        "events.events.k8s.io [] [] [create patch]",
        "namespaces [] [] [get]",
        "pods [] [] [list watch create]",
        "replicasets.apps [] [] [get]",
        "statefulsets.apps [] [] [get patch]",
    ];
    let policies = [
        "mutatingadmissionpolicies.admissionregistration.k8s.io [] [] [get list create patch delete]",
        "mutatingadmissionpolicybindings.admissionregistration.k8s.io [] [] [get list create patch delete]",
        "validatingadmissionpolicies.admissionregistration.k8s.io [] [] [get list create patch delete]",
        "validatingadmissionpolicybindings.admissionregistration.k8s.io [] [] [get list create patch delete]",
    ];
    let gate = ["pods [] [] [list watch patch]", "events.events.k8s.io [] [] [create patch]"];
    // (case, values, whether the webhook configuration is scoped, the controller's feature rights)
    let cases: [(&str, Value, bool, Vec<&str>); 6] = [
        ("defaults", json!({}), true, vec![]),
        ("restart", json!({"controller": {"restartOnRebuild": true}}), true, restarts.to_vec()),
        ("gate", json!({"controller": {"gateUnbuilt": true}}), true, gate.to_vec()),
        ("policy", json!({"mode": "policy"}), false, policies.to_vec()),
        (
            "policy-restart",
            json!({"mode": "policy", "controller": {"restartOnRebuild": true}}),
            false,
            [&policies[..], &restarts].concat(),
        ),
        ("no-controller", json!({"controller": {"scopeWebhook": false}}), false, vec![]),
    ];
    let read_maps = "imagemaps.tilt.dev [] [] [get list watch]".to_string();
    for (case, values, scoped, features) in cases {
        let policy_mode = values["mode"] == "policy";
        let release = install(plane, &format!("rights-{case}"), values);
        let (ns, name) = (&release.namespace, &release.fullname);

        // The admission server reads ImageMaps, and nothing else, whatever is on.
        let server = extra_rights(plane, &release.server_account(), ns);
        let expected = if policy_mode { vec![] } else { vec![read_maps.clone()] };
        assert_eq!(server, expected, "{case}: the admission server's rights");

        // The controller: ImageMaps, its Lease, and only what its features write.
        let controller = extra_rights(plane, &release.controller_account(), ns);
        let mut expected: Vec<String> = features.iter().map(|s| s.to_string()).collect();
        if scoped {
            expected
                .push(format!("mutatingwebhookconfigurations.admissionregistration.k8s.io [] [{name}] [get update]"));
        }
        if policy_mode {
            // The ClusterRole that owns the compiled policies (deleted at uninstall).
            expected.push(format!("clusterroles.rbac.authorization.k8s.io [] [{name}-controller] [get]"));
        }
        if policy_mode || scoped || !features.is_empty() {
            expected.push(read_maps.clone());
            expected.push("leases.coordination.k8s.io [] [] [create]".to_string());
            expected.push(format!("leases.coordination.k8s.io [] [{name}-controller] [get update]"));
        }
        assert_eq!(
            controller,
            sorted(expected.into_iter().collect::<BTreeSet<_>>()),
            "{case}: the controller's rights"
        );
        if scoped {
            let other = "mutatingwebhookconfigurations.admissionregistration.k8s.io/someone-elses";
            assert_eq!(can_i(plane, &release.controller_account(), "update", other, None), "no", "{case}");
        }
    }
}

/// A one-container Deployment `app` in `ns`, with a Pod template annotation of its own.
fn deployment(ns: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "app", "namespace": ns},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "app"}},
            "template": {
                "metadata": {"labels": {"app": "app"}, "annotations": {"team": "a"}},
                "spec": {"containers": [{"name": "app", "image": "app:1"}]},
            },
        },
    })
}

#[test]
fn the_controller_may_restart_a_workload_but_change_nothing_else_in_it() {
    let plane = shared();
    let release = install(plane, "workloads", json!({"controller": {"restartOnRebuild": true}}));
    let controller = release.controller_account();
    let ns = plane.create_namespace("chart-workloads");
    plane.apply_yaml(&deployment(&ns).to_string());
    let path = format!("/apis/apps/v1/namespaces/{ns}/deployments/app");
    let patch = |change: &Value, dry_run| patch_as(plane, &controller, &path, "merge", change, dry_run);
    let template = |t: Value| json!({"spec": {"template": t}});
    let message = "may change only the";
    let image = template(json!({"spec": {"containers": [{"name": "app", "image": "evil.example/app:1"}]}}));
    wait_until_refused("an image change by the controller", message, || patch(&image, true));
    for (what, change) in [
        ("the image", image.clone()),
        ("another annotation", template(json!({"metadata": {"annotations": {"team": "b"}}}))),
        ("a template label", template(json!({"metadata": {"labels": {"extra": "x"}}}))),
        ("the replicas", json!({"spec": {"replicas": 5}})),
    ] {
        expect_refused(&format!("a change of {what} by the controller"), message, &patch(&change, false));
    }
    let restart = template(json!({"metadata": {"annotations": {
        "kubectl.kubernetes.io/restartedAt": "2026-12-06T10:00:00Z",
        "imagemap.tilt.dev/restarted-for": "x",
    }}}));
    expect_allowed("a restart by the controller", &patch(&restart, false));
    let stored = get_json(plane, "deployment", "app", Some(&ns));
    let annotations = &stored["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["kubectl.kubernetes.io/restartedAt"], "2026-12-06T10:00:00Z");
    assert_eq!(annotations["team"], "a");
    assert_eq!(stored["spec"]["template"]["spec"]["containers"][0]["image"], "app:1");
}

/// A Pod `name` in `ns` created by the admin, held by imagemap's scheduling gate when `gated`.
fn create_pod(plane: &ControlPlane, ns: &str, name: &str, gated: bool) {
    let mut p = pod(ns, name, &[container("app", "app:1")]);
    if gated {
        p["spec"]["schedulingGates"] = json!([{"name": "tilt.dev/imagemap"}]);
    }
    let output =
        plane.kubectl_client().run_with_stdin(["create", "-f", "-"], Some(&p.to_string())).expect("kubectl runs");
    assert!(output.status.success(), "creating Pod {name}: {}", text(&output.stderr));
}

#[test]
fn the_controller_updates_only_pods_still_held_by_the_gate() {
    let plane = shared();
    let release = install(plane, "gate", json!({"controller": {"gateUnbuilt": true}}));
    let controller = release.controller_account();
    let ns = plane.create_namespace("chart-gate");
    create_pod(plane, &ns, "free", false);
    create_pod(plane, &ns, "held", true);
    let patch = |name: &str, kind: &str, change: &Value, dry_run| {
        patch_as(plane, &controller, &format!("/api/v1/namespaces/{ns}/pods/{name}"), kind, change, dry_run)
    };
    let label = json!({"metadata": {"labels": {"touched": "yes"}}});
    let message = "may update only Pods still held by its scheduling gate tilt.dev/imagemap";
    wait_until_refused("an update of an ungated Pod by the controller", message, || {
        patch("free", "merge", &label, true)
    });
    expect_refused("an update of an ungated Pod by the controller", message, &patch("free", "merge", &label, false));
    // The release: the image swapped and the gate removed, in one JSON patch.
    let release_patch = json!([
        {"op": "replace", "path": "/spec/containers/0/image", "value": "localhost:5000/app:2"},
        {"op": "remove", "path": "/spec/schedulingGates"},
    ]);
    expect_allowed("releasing a gated Pod", &patch("held", "json", &release_patch, false));
    assert_eq!(get_json(plane, "pod", "held", Some(&ns))["spec"]["containers"][0]["image"], "localhost:5000/app:2");
    // Released, it is out of the controller's reach.
    expect_refused("an update of a released Pod by the controller", message, &patch("held", "merge", &label, false));
}

#[test]
fn the_controller_creates_pods_only_as_server_side_dry_runs() {
    let plane = shared();
    let release = install(plane, "probes", json!({"mode": "policy", "controller": {"restartOnRebuild": true}}));
    let controller = release.controller_account();
    let ns = plane.create_namespace("chart-probes");
    let probe = pod(&ns, "probe", &[container("probe", "app:1")]).to_string();
    let create = |extra: &[&str]| {
        let mut args = vec!["create", "-f", "-"];
        args.extend_from_slice(extra);
        kubectl_as(plane, &controller, &args, Some(&probe))
    };
    let message = "may create Pods only as server-side dry-runs";
    // A create let through before the policy is in force is deleted again.
    wait_until_refused("a Pod created by the controller", message, || {
        let output = create(&[]);
        if output.status.success() {
            plane.kubectl_ok(["delete", "pod", "probe", "-n", &ns, "--wait=false"]);
        }
        output
    });
    expect_allowed("a dry-run Pod created by the controller", &create(&["--dry-run=server"]));
    assert!(is_gone(plane, "pod", "probe", Some(&ns)), "nothing was stored");
}

#[test]
fn the_controller_changes_only_the_match_conditions_of_its_webhook_configuration() {
    let plane = shared();
    let release = install(plane, "scope", json!({}));
    let controller = release.controller_account();
    let name = release.fullname.clone();
    let config = get_json(plane, "mutatingwebhookconfiguration", &name, None);
    let replace = |change: &dyn Fn(&mut Value), dry_run: bool| {
        let mut changed = config.clone();
        change(&mut changed["webhooks"][0]);
        let args: &[&str] = if dry_run { &["replace", "--dry-run=server", "-f", "-"] } else { &["replace", "-f", "-"] };
        kubectl_as(plane, &controller, args, Some(&changed.to_string()))
    };
    let message = "may change only the matchConditions";
    let path = |hook: &mut Value| hook["clientConfig"]["service"]["path"] = json!("/elsewhere");
    wait_until_refused("a clientConfig change by the controller", message, || replace(&path, true));
    expect_refused("a clientConfig change", message, &replace(&path, false));
    expect_refused("a rules change", message, &replace(&|hook| hook["rules"][0]["operations"] = json!(["*"]), false));
    expect_refused("a failurePolicy change", message, &replace(&|hook| hook["failurePolicy"] = json!("Fail"), false));
    let scoped = json!([{"name": "imagemap-scope", "expression": "request.namespace in ['nowhere']"}]);
    expect_allowed(
        "a scope change by the controller",
        &replace(&|hook| hook["matchConditions"] = scoped.clone(), false),
    );
    let stored = get_json(plane, "mutatingwebhookconfiguration", &name, None);
    assert_eq!(the_webhook(&stored)["matchConditions"], scoped);
    assert_eq!(the_webhook(&stored)["clientConfig"], the_webhook(&config)["clientConfig"]);
    assert_eq!(the_webhook(&stored)["rules"], the_webhook(&config)["rules"]);
}

#[test]
fn imagemaps_outside_the_admin_guards_are_refused_when_written() {
    // Its own plane: the guards bind every ImageMap write in the cluster.
    let plane = ControlPlane::start(ControlPlaneOptions::default()).expect("a dedicated control plane");
    let name = unique("guards");
    let values = json!({"allowedRegistries": ["localhost:5000"], "allowOverrides": "none"});
    let release = Release::install(&plane, &name, &scoped_values(&name, values));
    let ns = plane.create_namespace("guarded");
    plane.apply_yaml(&image_map(&ns, "app", "app").to_string());
    let kubectl = |args: &[&str], object: &Value| {
        plane.kubectl_client().run_with_stdin(args, Some(&object.to_string())).expect("kubectl runs")
    };
    let apply_status = |image: &str, dry_run: bool| {
        let mut map = image_map(&ns, "app", "app");
        map["status"] = json!({ "image": image });
        let mut args = vec!["apply", "--server-side", "--subresource=status", "--force-conflicts", "-f", "-"];
        if dry_run {
            args.push("--dry-run=server");
        }
        kubectl(&args, &map)
    };
    let message = "ImageMap target evil.io/x:1 is not under an allowed registry (allowedRegistries: localhost:5000)";
    wait_until_refused("a map's target outside allowedRegistries", message, || apply_status("evil.io/x:1", true));
    expect_refused("a map's target outside allowedRegistries", message, &apply_status("evil.io/x:1", false));
    for near_miss in ["localhost:50001/app:1", "localhost/app:1", "team/app:1"] {
        expect_refused(near_miss, "is not under an allowed registry", &apply_status(near_miss, false));
    }
    expect_allowed("a map's target in the allowed registry", &apply_status("localhost:5000/app:2", false));
    assert_eq!(get_json(&plane, "imagemap", "app", Some(&ns))["status"]["image"], "localhost:5000/app:2");

    let mut with_args = image_map(&ns, "args", "args");
    with_args["spec"]["overrideArgs"] = json!({"args": ["--debug"]});
    let none = "may not set spec.overrideCommand or spec.overrideArgs (allowOverrides: none)";
    expect_refused("a map with overrides", none, &kubectl(&["create", "-f", "-"], &with_args));

    // `local`: overrides only from maps outside the global namespace.
    let global = plane.create_namespace("guarded-global");
    let chart = chart_dir().display().to_string();
    let global_value = format!("globalNamespace={global}");
    let (release_name, release_ns) = (release.name.as_str(), release.namespace.as_str());
    let upgrade =
        ["upgrade", release_name, &chart, "-n", release_ns, "--reuse-values", "--set", "allowOverrides=local"];
    helm_ok(&plane, &[&upgrade[..], &["--set", &global_value]].concat());
    let mut in_global = with_args.clone();
    in_global["metadata"]["namespace"] = json!(global);
    let local = "is in the global namespace and may not set spec.overrideCommand or spec.overrideArgs";
    wait_until_refused("a global map with overrides", local, || {
        kubectl(&["create", "--dry-run=server", "-f", "-"], &in_global)
    });
    expect_allowed("a local map with overrides", &kubectl(&["create", "-f", "-"], &with_args));
}

#[test]
fn bad_values_are_refused_with_a_message_naming_them() {
    let plane = shared();
    let chart = chart_dir().display().to_string();
    let ns = plane.create_namespace("chart-bad");
    let cases: [(&[&str], &[&str]); 8] = [
        (&["--set", "replicaCount=two"], &["/replicaCount", "want integer"]),
        (&["--set", "webhook.failurePolicy=Sometimes"], &["/webhook/failurePolicy", "'Ignore', 'Fail'"]),
        (&["--set", "certs.mode=selfSigned"], &["/certs/mode", "'generate', 'certManager', 'existingSecret'"]),
        (&["--set", "webhook.url=http://127.0.0.1:8443/mutate"], &["/webhook/url", "http://127.0.0.1:8443/mutate"]),
        (&["--set", "replicas=3"], &["replicas", "not allowed"]),
        (&["--set", "certs.mode=existingSecret"], &["certs.existingSecret.name", "certs.existingSecret.caBundle"]),
        (&["--set", "allowOverrides=some"], &["/allowOverrides", "'all', 'local', 'none'"]),
        (
            &["--set", "serviceAccount.create=false", "--set", "serviceAccount.name=mine"],
            &["controller.serviceAccount.name is required"],
        ),
    ];
    for (args, expected) in cases {
        let release = unique("bad");
        let mut all = vec!["install", release.as_str(), chart.as_str(), "--namespace", ns.as_str()];
        all.extend_from_slice(args);
        let scope = format!(r#"webhook.namespaceSelector.matchLabels={{"{TEST_LABEL}":"{release}"}}"#);
        all.extend(["--set-json", scope.as_str()]);
        let output = plane.helm(&all);
        let stderr = text(&output.stderr);
        assert!(!output.status.success(), "helm accepted {args:?}:\n{}", text(&output.stdout));
        for needle in expected {
            assert!(stderr.contains(needle), "helm's message for {args:?} does not mention {needle:?}:\n{stderr}");
        }
        // Nothing was installed.
        assert!(!plane.helm(["status", &release, "--namespace", &ns]).status.success(), "release {release} exists");
        assert!(is_gone(plane, "mutatingwebhookconfiguration", &fullname(&release), None));
    }
}

#[test]
fn policy_mode_registers_no_webhook_and_may_write_admission_policies() {
    let plane = shared();
    let ns = plane.create_namespace("chart-policy");
    let values = json!({"mode": "policy", "controller": {"restartOnRebuild": true}});
    let objects = render(plane, "r", &ns, &values);
    // No admission server: no webhook configuration, Service, budget or its ServiceAccount;
    // only the controller.
    for kind in ["MutatingWebhookConfiguration", "Service", "PodDisruptionBudget"] {
        assert!(all_of(&objects, kind).is_empty(), "{kind} in policy mode: {:?}", kinds(&objects));
    }
    assert_eq!(one(&objects, "ServiceAccount")["metadata"]["name"], "r-imagemap-controller");
    let deployment = one(&objects, "Deployment");
    assert_eq!(deployment["metadata"]["name"], "r-imagemap-controller");
    let args = args_of(deployment);
    assert!(args.contains(&"--role=controller") && args.contains(&"--mode=policy"), "{args:?}");
    assert!(args.iter().any(|a| a.starts_with("--policy-owner=")), "policies owned by a ClusterRole: {args:?}");
    assert!(args.iter().any(|a| a.starts_with("--leader-election-namespace=")), "{args:?}");
    assert!(!args.iter().any(|a| a.starts_with("--webhook-configuration")), "no webhook to scope: {args:?}");
    let role = named(&objects, "ClusterRole", "r-imagemap-controller");
    let rules = role["rules"].as_array().expect("rules");
    assert!(
        rules.contains(&json!({"apiGroups": ["admissionregistration.k8s.io"],
            "resources": ["mutatingadmissionpolicies", "mutatingadmissionpolicybindings"],
            "verbs": ["get", "list", "create", "patch", "delete"]})),
        "{rules:?}"
    );
    assert!(!role.to_string().contains("mutatingwebhookconfigurations"), "{role}");
    // Restarts wait for a new build's policy to be in effect, seen with dry-run Pods.
    assert!(
        rules.contains(&json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch", "create"]})),
        "{rules:?}"
    );
    assert_eq!(validate_on_server(plane, &ns, &objects), objects.len(), "the API server accepts every object");
    let file = values_file(&values);
    let chart = chart_dir().display().to_string();
    let lint = plane.helm(["lint", "--strict", &chart, "--namespace", "imagemap-system", "-f", &file.path]);
    assert!(lint.status.success(), "{}{}", text(&lint.stdout), text(&lint.stderr));

    for (set, why) in [
        ("controller.gateUnbuilt=true", "cannot hold Pods until their image is built"),
        ("imagemapsFile.enabled=true", "compiled from the cluster's ImageMaps only"),
    ] {
        let out = plane.helm(["template", "r", &chart, "--set", "mode=policy", "--set", set]);
        assert!(!out.status.success(), "{set} accepted");
        assert!(text(&out.stderr).contains(why), "{set}: {}", text(&out.stderr));
    }
    let out = plane.helm(["template", "r", &chart, "--set", "mode=sometimes"]);
    assert!(!out.status.success() && text(&out.stderr).contains("/mode"), "{}", text(&out.stderr));
}
