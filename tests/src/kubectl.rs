//! Running the real `kubectl` (and `helm`) against a plane.

use std::ffi::OsStr;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context, Result};

/// Overrides the kubectl program (default: the `kubectl` built at the API server's version in the
/// control-plane bin folder).
pub const KUBECTL_ENV: &str = "IMAGEMAP_KUBECTL";

/// A kubectl bound to one kubeconfig, with its discovery cache in the plane's folder (not in
/// `~/.kube/cache`, which would collect a folder per random port).
#[derive(Clone, Debug)]
pub struct Kubectl {
    program: PathBuf,
    kubeconfig: PathBuf,
    cache_dir: PathBuf,
}

/// The kubectl at the API server's version from the bin folder (`tests/controlplane/build.sh`
/// builds it with the control plane); `kubectl` on `PATH` only when there is no bin folder.
fn default_program() -> PathBuf {
    crate::binaries::bin_dir().map_or_else(|_| PathBuf::from("kubectl"), |dir| dir.join("kubectl"))
}

impl Kubectl {
    /// A kubectl for `kubeconfig`, caching under `cache_dir`.
    pub fn new(kubeconfig: &Path, cache_dir: &Path) -> Kubectl {
        let program =
            std::env::var_os(KUBECTL_ENV).filter(|p| !p.is_empty()).map_or_else(default_program, PathBuf::from);
        Kubectl { program, kubeconfig: kubeconfig.to_path_buf(), cache_dir: cache_dir.to_path_buf() }
    }

    /// The kubectl program this runs.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// A `kubectl --kubeconfig=... --cache-dir=...` command to add arguments to.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).arg("--cache-dir").arg(&self.cache_dir);
        cmd.env_remove("KUBECONFIG");
        cmd
    }

    /// Runs kubectl with `args` and collects its output (any exit status).
    pub fn run<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.run_with_stdin(args, None)
    }

    /// Runs kubectl with `args`, feeding `stdin` if given.
    pub fn run_with_stdin<I, S>(&self, args: I, stdin: Option<&str>) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command();
        cmd.args(args);
        run(cmd, stdin).with_context(|| format!("running {}", self.program.display()))
    }

    /// Runs kubectl and returns stdout; fails with stderr on a non-zero exit.
    pub fn ok<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<S> = args.into_iter().collect();
        let output = self.run(&args)?;
        check(&describe(&args), &output)
    }

    /// `kubectl apply -f -` with `yaml`; returns stdout.
    pub fn apply(&self, yaml: &str) -> Result<String> {
        let output = self.run_with_stdin(["apply", "-f", "-"], Some(yaml))?;
        check("kubectl apply -f -", &output)
    }
}

/// Runs `cmd` to completion with `stdin` (or none), capturing stdout and stderr.
pub fn run(mut cmd: Command, stdin: Option<&str>) -> Result<Output> {
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // Written from a thread: a large input could otherwise fill the pipe while the child
        // waits for us to read its output.
        let text = text.to_string();
        std::thread::spawn(move || {
            let _ = pipe.write_all(text.as_bytes());
        });
    }
    Ok(child.wait_with_output()?)
}

/// stdout of a successful `output`, or an error naming `what` with its stderr.
pub fn check(what: &str, output: &Output) -> Result<String> {
    if !output.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn describe<S: AsRef<OsStr>>(args: &[S]) -> String {
    let mut text = String::from("kubectl");
    for arg in args {
        text.push(' ');
        text.push_str(&arg.as_ref().to_string_lossy());
    }
    text
}

/// Bytes as text (lossy UTF-8), for kubectl's and helm's output.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `kubectl auth can-i VERB RESOURCE[/SUBRESOURCE] --as USER` in `namespace`
/// (`--all-namespaces` when `None`): "yes" or "no".
pub fn can_i(kubectl: &Kubectl, user: &str, verb: &str, resource: &str, namespace: Option<&str>) -> Result<String> {
    let (resource, subresource) = resource.split_once('/').map_or((resource, None), |(r, s)| (r, Some(s)));
    let subresource = subresource.map(|s| format!("--subresource={s}"));
    let mut args = vec!["auth", "can-i", verb, resource, "--as", user];
    args.extend(subresource.as_deref());
    match namespace {
        Some(ns) => args.extend(["--namespace", ns]),
        None => args.push("--all-namespaces"),
    }
    Ok(text(&kubectl.run(&args)?.stdout).trim().to_string())
}
