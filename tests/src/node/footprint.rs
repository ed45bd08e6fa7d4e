//! What a node owns on the machine, by name ([`Footprint`]), and its teardown: `teardown.sh`
//! beside this file, which removes it all and, with `--check`, lists what is left (the one list
//! of what a node leaves behind, for [`Footprint::leftovers`], the teardown's own last step and
//! [`all_leftovers`]).

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use super::machine::{cgroup_mounts, container_log_links, processes, CNI_CACHE_DIR};
use super::{BRIDGE_PREFIX, NODE_PREFIX, POD_NETWORK_PREFIX};

/// The teardown script; its parameters come from the environment ([`Footprint::teardown_env`]).
const TEARDOWN: &str = include_str!("teardown.sh");

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
    pub(super) fn new(id: &str, dir: PathBuf, third_octet: u8) -> Footprint {
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

    /// The teardown script's parameters (`keep`: keep the folder's files).
    fn teardown_env(&self, keep: bool) -> [(&'static str, String); 5] {
        [
            ("IMAGEMAP_NODE_DIR", self.dir.to_string_lossy().into_owned()),
            ("IMAGEMAP_NODE_BRIDGE", self.bridge.clone()),
            ("IMAGEMAP_NODE_CGROUP", self.cgroup.clone()),
            ("IMAGEMAP_NODE_CNI_NETWORK", self.cni_network.clone()),
            ("IMAGEMAP_NODE_KEEP", u8::from(keep).to_string()),
        ]
    }

    /// The teardown script as written in the folder: its parameters set in the first lines, so
    /// that the watchdog (a `sh`) can run it when the test process is gone.
    pub(super) fn teardown_text(&self, keep: bool) -> String {
        let mut text = format!(
            "#!/bin/sh\n# Teardown of imagemap-e2e node {}: tests/src/node/teardown.sh with its parameters.\n",
            self.node_name
        );
        for (name, value) in self.teardown_env(keep) {
            let _ = writeln!(text, "{name}={}", shell_quote(&value));
        }
        text.push_str(TEARDOWN);
        text
    }

    /// What is left of this node on the machine, one line per item; empty when all is gone:
    /// processes whose command line names the folder or that sit in the node's cgroups, mounts
    /// under the folder, the folder itself, the bridge and any interface enslaved to it, the
    /// cgroups (every hierarchy), the kubelet's log links into the folder, libcni's cached
    /// results. `teardown.sh --check` makes the list (also after the folder is gone).
    pub fn leftovers(&self) -> Vec<String> {
        let output = Command::new("sh")
            .arg("-c")
            .arg(TEARDOWN)
            .arg("teardown.sh")
            .arg("--check")
            .envs(self.teardown_env(false))
            .stdin(Stdio::null())
            .output();
        match output {
            Ok(o) if matches!(o.status.code(), Some(0 | 1)) => {
                String::from_utf8_lossy(&o.stdout).lines().map(String::from).collect()
            }
            Ok(o) => vec![format!(
                "(teardown.sh --check failed ({}): {})",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            )],
            Err(e) => vec![format!("(teardown.sh --check did not run: {e})")],
        }
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

/// `value` as one shell word (single-quoted).
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// What is left of any imagemap-e2e node on this machine (e.g. after `make dev-down`): each
/// node named by a process's command line, a folder in `$TMPDIR`, an `imgm-*` bridge, an
/// `imagemap-node-*` cgroup, a CNI cache entry or a kubelet log link, checked as
/// [`Footprint::leftovers`] checks one; and the kubelet's device-plugin socket when no kubelet
/// runs. Empty when none.
pub fn all_leftovers() -> Vec<String> {
    let tmp = std::env::temp_dir();
    let mut found: Vec<String> = left_node_ids()
        .iter()
        .flat_map(|id| Footprint::new(id, tmp.join(format!("{NODE_PREFIX}{id}")), 0).leftovers())
        .collect();
    if Path::new(KUBELET_DEVICE_SOCKET).exists() && !processes().iter().any(|(_, c)| c.contains("kubelet")) {
        found.push(format!("{KUBELET_DEVICE_SOCKET} (no kubelet runs)"));
    }
    found
}

/// The ids of the nodes something on this machine is named after.
fn left_node_ids() -> std::collections::BTreeSet<String> {
    let mut names: Vec<String> = Vec::new();
    let marker = format!("/{NODE_PREFIX}");
    for (pid, cmdline) in processes() {
        if pid != std::process::id() && !cmdline.contains("teardown.sh") {
            names.extend(cmdline.split(&marker).skip(1).map(|rest| format!("{NODE_PREFIX}{rest}")));
        }
    }
    let entries = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|e| e.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    };
    names.extend(entries(&std::env::temp_dir()));
    names.extend(entries(Path::new(CNI_CACHE_DIR)));
    for mount in cgroup_mounts() {
        names.extend(entries(&mount));
    }
    names.extend(
        entries(Path::new("/sys/class/net"))
            .into_iter()
            .filter_map(|b| b.strip_prefix(BRIDGE_PREFIX).map(|id| format!("{NODE_PREFIX}{id}"))),
    );
    for (_, target) in container_log_links() {
        let target = target.to_string_lossy().into_owned();
        names.extend(target.split(&marker).skip(1).map(|rest| format!("{NODE_PREFIX}{rest}")));
    }
    names.iter().filter_map(|name| node_id(name)).collect()
}

/// The id in a name that starts with `imagemap-node-ID` (the id: lower-case hex digits).
fn node_id(name: &str) -> Option<String> {
    let rest = name.strip_prefix(NODE_PREFIX)?;
    let id: String = rest.chars().take_while(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()).collect();
    (!id.is_empty()).then_some(id)
}

/// The device-plugin socket every kubelet creates (a fixed path).
const KUBELET_DEVICE_SOCKET: &str = "/var/lib/kubelet/device-plugins/kubelet.sock";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_kernel_limits() {
        let f = Footprint::new("abcdef", PathBuf::from("/tmp/imagemap-node-abcdef"), 7);
        assert!(f.bridge.len() <= 15, "{}", f.bridge);
        assert_eq!(f.subnet, "10.244.7.0/24");
        assert_eq!(f.gateway, Ipv4Addr::new(10, 244, 7, 1));
        let script = f.teardown_text(false);
        assert!(script.contains("IMAGEMAP_NODE_DIR='/tmp/imagemap-node-abcdef'\n"), "{script}");
        assert!(script.contains("IMAGEMAP_NODE_KEEP='0'\n"), "{script}");
    }

    #[test]
    fn node_ids_are_read_from_names() {
        assert_eq!(node_id("imagemap-node-0a1b2c").as_deref(), Some("0a1b2c"));
        assert_eq!(node_id("imagemap-node-0a1b2c-9f8e-eth0").as_deref(), Some("0a1b2c"));
        assert_eq!(node_id("imagemap-node-0a1b2c/kubelet --x").as_deref(), Some("0a1b2c"));
        assert_eq!(node_id("imagemap-node-"), None);
        assert_eq!(node_id("imgm-0a1b2c"), None);
    }

    #[test]
    fn a_node_that_never_existed_leaves_nothing() {
        let f = Footprint::new("zz-none", std::env::temp_dir().join("imagemap-node-zz-none"), 7);
        assert_eq!(f.leftovers(), Vec::<String>::new());
    }

    #[test]
    fn values_are_quoted_for_the_shell() {
        assert_eq!(shell_quote("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
