//! Running the plugin the way users do: `kubectl imagemap ...` through the real kubectl, which
//! finds `kubectl-imagemap` on PATH (the workspace's build folder first).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::webhook::workspace_binary;

/// `kubectl imagemap ARGS` with `kubeconfig`, the plugin's folder first on PATH, and `stdin`.
pub fn kubectl_imagemap(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let plugin = workspace_binary("kubectl-imagemap").expect("kubectl-imagemap is built");
    let dir = plugin.parent().expect("plugin folder");
    let path = format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default());
    // The kubectl at the API server's version (the harness's default), as users run it.
    let kubectl = crate::kubectl::Kubectl::new(kubeconfig, &std::env::temp_dir()).program().to_path_buf();
    let mut cmd = Command::new(kubectl);
    cmd.arg("imagemap").args(args).env("PATH", path).env("KUBECONFIG", kubeconfig);
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn kubectl");
    if let Some(input) = stdin {
        child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("kubectl output")
}

/// Like [`kubectl_imagemap`] without stdin; panics with stderr unless it succeeds; returns stdout.
pub fn kubectl_imagemap_ok(kubeconfig: &Path, args: &[&str]) -> String {
    let out = kubectl_imagemap(kubeconfig, args, None);
    assert!(out.status.success(), "kubectl imagemap {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}
