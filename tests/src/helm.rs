//! Helpers for the chart's tests (`tests/chart/`): `helm template` as objects and their
//! validation by the API server, a release installed with Helm 4 and uninstalled on drop (kept to
//! namespaces labelled for it), what the API server stores and what a dry-run Pod comes back
//! with, the exact rights of a ServiceAccount as the API server reports them, and kubectl run as
//! that ServiceAccount (impersonation), to see what RBAC and the chart's
//! ValidatingAdmissionPolicies let it do.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use std::time::Duration;

use serde_json::{json, Value};

use crate::binaries::workspace_root;
use crate::kubectl::text;
use crate::manifests::parse_manifests;
use crate::webhook::{image_map, set_status, Patience};
use crate::{poll, ControlPlane};

/// The namespace label every chart test's webhook configuration selects on (value: the
/// release), so that parallel tests never serve each other's Pods.
pub const TEST_LABEL: &str = "imagemap-e2e/chart";

/// How long a change (an ImageMap in the webhook's cache, a webhook configuration or a
/// namespace label in the API server's caches) may take to show in a dry-run create.
pub const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);

/// [`CHANGE_TIMEOUT`], trying every 200 ms.
pub const CHANGE_PATIENCE: Patience = Patience { timeout: CHANGE_TIMEOUT, every: Duration::from_millis(200) };

/// API groups whose CRDs the plane does not have: their objects are checked by the tests, not
/// on the server.
pub const NOT_ON_SERVER: [&str; 2] = ["cert-manager.io/", "monitoring.coreos.com/"];

/// `charts/imagemap`.
pub fn chart_dir() -> PathBuf {
    workspace_root().join("charts/imagemap")
}

/// `PREFIX-N-PID`: a release name (at most 53 characters) unique in this test process.
pub fn unique(prefix: &str) -> String {
    crate::names::unique_name(prefix, 53)
}

/// The chart's full name for a release (no overrides): `<release>-imagemap`.
pub fn fullname(release: &str) -> String {
    format!("{release}-imagemap")
}

/// Runs helm with `args`; panics, with its output, if it fails. Returns stdout.
pub fn helm_ok(plane: &ControlPlane, args: &[&str]) -> String {
    succeeded("helm", args, &plane.helm(args))
}

/// The stdout of `program args`, which ran as `output`; panics with its status and output if
/// it failed.
pub fn succeeded(program: &str, args: &[&str], output: &Output) -> String {
    assert!(
        output.status.success(),
        "{program} {} failed ({}):\n{}{}",
        args.join(" "),
        output.status,
        text(&output.stderr),
        text(&output.stdout)
    );
    text(&output.stdout)
}

/// Values as a file for `helm -f` (JSON is YAML); removed when dropped.
pub struct ValuesFile {
    _dir: tempfile::TempDir,
    /// The file, for `-f`.
    pub path: String,
}

/// Writes `values` into a new [`ValuesFile`].
pub fn values_file(values: &Value) -> ValuesFile {
    let dir = tempfile::Builder::new().prefix("imagemap-chart-values-").tempdir().expect("a temporary folder");
    let path = dir.path().join("values.json");
    std::fs::write(&path, values.to_string()).expect("write the values file");
    ValuesFile { path: path.display().to_string(), _dir: dir }
}

/// `helm template RELEASE charts/imagemap --namespace NS -f values` as objects (without the
/// `helm test` hooks, which `tests/monitoring.rs` checks).
pub fn render(plane: &ControlPlane, release: &str, namespace: &str, values: &Value) -> Vec<Value> {
    let file = values_file(values);
    let chart = chart_dir().display().to_string();
    let args = ["template", release, &chart, "--namespace", namespace, "-f", &file.path, "--skip-tests"];
    let out = helm_ok(plane, &args);
    parse_manifests(&out)
}

/// Sends the objects the plane knows the kinds of to the API server with
/// `kubectl apply --dry-run=server`: its validation, defaulting and admission run, nothing is
/// stored. cert-manager and Prometheus Operator kinds are skipped (their CRDs are not
/// installed); the callers check those objects themselves. Returns how many were validated.
pub fn validate_on_server(plane: &ControlPlane, namespace: &str, objects: &[Value]) -> usize {
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

/// Values that keep a release's webhook configuration to namespaces labelled
/// [`TEST_LABEL`]`=<release>`.
pub fn scoped_values(release: &str, mut values: Value) -> Value {
    values["webhook"]["namespaceSelector"]["matchLabels"] = json!({ TEST_LABEL: release });
    values
}

/// `kubectl get KIND NAME -o json` (namespaced when `namespace` is given).
pub fn get_json(plane: &ControlPlane, kind: &str, name: &str, namespace: Option<&str>) -> Value {
    let mut args = vec!["get", kind, name, "--output", "json"];
    if let Some(ns) = namespace {
        args.extend(["--namespace", ns]);
    }
    serde_json::from_str(&plane.kubectl_ok(&args)).expect("kubectl get printed JSON")
}

/// Whether `kubectl get KIND NAME` says NotFound.
pub fn is_gone(plane: &ControlPlane, kind: &str, name: &str, namespace: Option<&str>) -> bool {
    let mut args = vec!["get", kind, name];
    if let Some(ns) = namespace {
        args.extend(["--namespace", ns]);
    }
    let output = plane.kubectl(&args);
    !output.status.success() && text(&output.stderr).contains("NotFound")
}

/// Creates a namespace with a unique name from `prefix` and `labels` (so it is never seen
/// unlabelled), and its `default` ServiceAccount (the ServiceAccount admission plugin needs it
/// before any Pod).
pub fn create_labelled_namespace(plane: &ControlPlane, prefix: &str, labels: &Value) -> String {
    let name = unique(prefix);
    create_namespace_named(plane, &name, labels);
    name
}

/// Creates namespace `name` with `labels`, and its `default` ServiceAccount.
pub fn create_namespace_named(plane: &ControlPlane, name: &str, labels: &Value) {
    let namespace = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}});
    let output = plane
        .kubectl_client()
        .run_with_stdin(["create", "-f", "-"], Some(&namespace.to_string()))
        .expect("kubectl runs");
    assert!(output.status.success(), "creating namespace {name}: {}", text(&output.stderr));
    let output = plane.kubectl(["create", "serviceaccount", "default", "--namespace", name]);
    assert!(
        output.status.success() || text(&output.stderr).contains("already exists"),
        "creating the default ServiceAccount in {name}: {}",
        text(&output.stderr)
    );
}

/// An ImageMap `name` in `ns` selecting `selector`, with `status.image = target`.
pub fn create_built_map(plane: &ControlPlane, ns: &str, name: &str, selector: &str, target: &str) {
    plane.apply_yaml(&image_map(ns, name, selector).to_string());
    set_status(plane.kubectl_client(), ns, name, &json!({ "image": target })).expect("set the ImageMap's status");
}

/// The user name the API server gives ServiceAccount `name` of `namespace`.
pub fn service_account(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// A chart release in its own namespace, installed from `values` (JSON) without `--wait`
/// (the plane may have no node); `helm uninstall` on drop, also when the test fails.
pub struct Release<'a> {
    plane: &'a ControlPlane,
    /// The release name.
    pub name: String,
    /// The release namespace.
    pub namespace: String,
    /// The chart's full name for this release: `<release>-imagemap`.
    pub fullname: String,
}

impl<'a> Release<'a> {
    /// Installs `charts/imagemap` as release `name` in a new namespace; panics with helm's
    /// output if it fails.
    pub fn install(plane: &'a ControlPlane, name: &str, values: &Value) -> Release<'a> {
        let name = name.to_string();
        let namespace = plane.create_namespace("chart-release");
        let dir = tempfile::Builder::new().prefix("imagemap-release-values-").tempdir().expect("a temporary folder");
        let file = dir.path().join("values.json");
        std::fs::write(&file, values.to_string()).expect("write the values file");
        let chart = chart_dir().display().to_string();
        let file = file.display().to_string();
        let output = plane.helm(["install", &name, &chart, "--namespace", &namespace, "-f", &file]);
        assert!(
            output.status.success(),
            "helm install {name} with {values} failed ({}):\n{}{}",
            output.status,
            text(&output.stderr),
            text(&output.stdout)
        );
        let fullname = format!("{name}-imagemap");
        Release { plane, name, namespace, fullname }
    }

    /// The admission server's ServiceAccount (`<fullname>`), as a user name.
    pub fn server_account(&self) -> String {
        service_account(&self.namespace, &self.fullname)
    }

    /// Installs a release named `PREFIX-N-PID` with `values`, its webhook configuration kept to
    /// namespaces labelled for it ([`scoped_values`]: none unless a test labels one).
    pub fn install_scoped(plane: &'a ControlPlane, prefix: &str, values: Value) -> Release<'a> {
        let name = unique(prefix);
        Release::install(plane, &name, &scoped_values(&name, values))
    }

    /// The controller's ServiceAccount (`<fullname>-controller`), as a user name.
    pub fn controller_account(&self) -> String {
        service_account(&self.namespace, &format!("{}-controller", self.fullname))
    }
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        let _ = self.plane.helm(["uninstall", &self.name, "--namespace", &self.namespace]);
    }
}

/// The rule lines of `kubectl auth can-i --list --as USER --namespace NS`, whitespace-normalised
/// (`RESOURCE [URLS] [NAMES] [VERBS]`).
pub fn rules_of(plane: &ControlPlane, user: &str, namespace: &str) -> BTreeSet<String> {
    let out = plane.kubectl_ok(["auth", "can-i", "--list", "--as", user, "--namespace", namespace]);
    out.lines().skip(1).map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect()
}

/// What `user` may do in `namespace` (cluster-wide rules included) beyond what any
/// ServiceAccount with no bindings may (the API server's defaults), sorted.
pub fn extra_rights(plane: &ControlPlane, user: &str, namespace: &str) -> Vec<String> {
    let nobody = service_account(namespace, "nobody-at-all");
    rules_of(plane, user, namespace).difference(&rules_of(plane, &nobody, namespace)).cloned().collect()
}

/// `kubectl ARGS --as USER` with `stdin`; any exit status.
pub fn kubectl_as(plane: &ControlPlane, user: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--as", user]);
    plane.kubectl_client().run_with_stdin(&all, stdin).expect("kubectl runs")
}

/// `PATCH` of the API path `path` (e.g. `/api/v1/namespaces/NS/pods/NAME`) as `user`, with
/// a `merge` or `json` patch; `dry_run` adds `?dryRun=All`. (`kubectl patch` reads the object
/// first, which a user allowed to patch but not to get cannot.) Exits 22 when the API server
/// refuses, with its Status on stdout.
pub fn patch_as(
    plane: &ControlPlane,
    user: &str,
    path: &str,
    patch_type: &str,
    patch: &Value,
    dry_run: bool,
) -> Output {
    let content_type = match patch_type {
        "merge" => "application/merge-patch+json",
        "json" => "application/json-patch+json",
        other => panic!("unknown patch type {other}"),
    };
    let url = format!("{}{path}{}", plane.server_url(), if dry_run { "?dryRun=All" } else { "" });
    let pki = plane.pki();
    Command::new("curl")
        .args(["--silent", "--show-error", "--fail-with-body", "--max-time", "30", "--request", "PATCH"])
        .arg("--cacert")
        .arg(&pki.server_ca.cert_path)
        .arg("--cert")
        .arg(&pki.admin.cert_path)
        .arg("--key")
        .arg(&pki.admin.key_path)
        .args(["--header", &format!("Impersonate-User: {user}")])
        .args(["--header", &format!("Content-Type: {content_type}")])
        .args(["--data-binary", &patch.to_string(), &url])
        .stdin(Stdio::null())
        .output()
        .expect("curl runs")
}

/// How long a newly installed ValidatingAdmissionPolicy may take to be enforced (the API
/// server loads policies from a watch).
pub const POLICY_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether `output` failed with `message` in its stderr or stdout.
pub fn refused_with(output: &Output, message: &str) -> bool {
    !output.status.success() && format!("{}{}", text(&output.stderr), text(&output.stdout)).contains(message)
}

/// Runs `attempt` until it is refused with `message` (a policy just installed is enforced a
/// moment later) and returns what was printed; panics with the last outcome after
/// [`POLICY_TIMEOUT`]. Attempts should be server-side dry-runs, so that one let through before
/// the policy is in force changes nothing.
pub fn wait_until_refused(what: &str, message: &str, mut attempt: impl FnMut() -> Output) -> String {
    let mut last = String::new();
    let refused = poll(POLICY_TIMEOUT, Duration::from_millis(250), || {
        let output = attempt();
        last = format!("exit {}: {}{}", output.status, text(&output.stderr), text(&output.stdout));
        refused_with(&output, message).then(|| last.clone())
    });
    refused.unwrap_or_else(|| panic!("{what} was not refused with {message:?} (last: {last})"))
}

/// Panics unless `output` was refused with `message`.
pub fn expect_refused(what: &str, message: &str, output: &Output) {
    assert!(
        refused_with(output, message),
        "{what} was not refused with {message:?}: exit {}: {}{}",
        output.status,
        text(&output.stderr),
        text(&output.stdout)
    );
}

/// Panics with the output unless `output` succeeded; returns stdout.
pub fn expect_allowed(what: &str, output: &Output) -> String {
    assert!(output.status.success(), "{what} was refused: {}{}", text(&output.stderr), text(&output.stdout));
    text(&output.stdout)
}
