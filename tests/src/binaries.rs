//! Where the control-plane binaries are.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};

/// Overrides the bin folder (must hold `etcd`, `kube-apiserver`, `kube-controller-manager`,
/// `helm`).
pub const BIN_ENV: &str = "IMAGEMAP_CONTROLPLANE_BIN";

/// The workspace root (the parent of this crate's folder).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The bin folder: `$IMAGEMAP_CONTROLPLANE_BIN` if set, else the last stdout line of
/// `bash tests/controlplane/build.sh` (which builds into a cache on first use: 20+ minutes on two
/// cores, a second or two after). Looked up once per process.
pub fn bin_dir() -> Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| locate().map_err(|e| format!("{e:#}"))).clone().map_err(|e| anyhow!(e))
}

fn locate() -> Result<PathBuf> {
    let dir = match std::env::var_os(BIN_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => run_build_script()?,
    };
    for name in ["etcd", "kube-apiserver"] {
        if !dir.join(name).is_file() {
            bail!("{} has no {name}", dir.display());
        }
    }
    Ok(dir)
}

fn run_build_script() -> Result<PathBuf> {
    let script = workspace_root().join("tests/controlplane/build.sh");
    // stderr is the script's progress log: let it through to the terminal.
    let output = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !output.status.success() {
        bail!("{} failed ({}); set {BIN_ENV} to use prebuilt binaries", script.display(), output.status);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().map(str::trim).rfind(|l| !l.is_empty()).context("build.sh printed no bin folder")?;
    Ok(PathBuf::from(last))
}
