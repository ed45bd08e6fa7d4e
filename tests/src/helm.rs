//! Helpers for the chart's tests (`tests/chart.rs`): a release installed with Helm 4 and
//! uninstalled on drop, the exact rights of a ServiceAccount as the API server reports them, and
//! kubectl run as that ServiceAccount (impersonation), to see what RBAC and the chart's
//! ValidatingAdmissionPolicies let it do.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use std::time::Duration;

use serde_json::Value;

use crate::binaries::workspace_root;
use crate::kubectl::text;
use crate::{poll, ControlPlane};

/// `charts/imagemap`.
pub fn chart_dir() -> PathBuf {
    workspace_root().join("charts/imagemap")
}

/// `PREFIX-N-PID`: a release name (at most 53 characters) unique in this test process.
pub fn unique(prefix: &str) -> String {
    crate::names::unique_name(prefix, 53)
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
