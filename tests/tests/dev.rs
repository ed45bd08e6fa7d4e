//! `make dev` (the `imagemap-dev` binary): it returns with a cluster running in the background,
//! the example it prints works exactly as printed (build, push, set-image, run, rebuild), in
//! webhook mode and in policy mode (`make dev MODE=policy`), and `make dev-down` leaves no
//! process, mount, network namespace, bridge or cgroup behind.

use std::process::Command;

use imagemap_e2e::{net, workspace_binary};

/// One dev cluster at a time: each runs a node.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn dev(args: &[&str], state: &std::path::Path, registry_port: u16) -> std::process::Output {
    let program = workspace_binary("imagemap-dev").expect("imagemap-dev is built");
    Command::new(program)
        .args(args)
        .arg(state)
        .env("IMAGEMAP_DEV_REGISTRY_PORT", registry_port.to_string())
        .output()
        .expect("imagemap-dev runs")
}

fn dir_of(node: &serde_json::Value) -> &str {
    node["dir"].as_str().expect("dir")
}

/// The indented example lines of `up`'s message, in order.
fn example(printed: &str) -> Vec<String> {
    printed.lines().filter_map(|l| l.strip_prefix("  ")).map(String::from).collect()
}

#[test]
fn make_dev_runs_its_printed_example_and_dev_down_leaves_nothing_behind() {
    runs_its_printed_example(&["up"], "webhook");
}

#[test]
fn make_dev_in_policy_mode_registers_no_webhook_and_runs_the_same_example() {
    runs_its_printed_example(&["up", "--mode=policy"], "policy");
}

fn runs_its_printed_example(up_args: &[&str], mode: &str) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let state = tempfile::tempdir().expect("state folder");
    let state = state.path().join("dev");
    let port = net::free_ports(1).expect("a free port")[0];

    let up = dev(up_args, &state, port);
    let printed = String::from_utf8_lossy(&up.stdout).into_owned();
    assert!(up.status.success(), "make dev failed:\n{printed}\n{}", String::from_utf8_lossy(&up.stderr));
    assert!(printed.contains(&format!("({mode} mode)")), "{printed}");
    assert!(printed.contains(&format!("Registry: localhost:{port}")), "{printed}");
    let exports: Vec<&str> = printed.lines().filter(|l| l.starts_with("export ")).collect();
    let node: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("node.json")).expect("node.json")).expect("json");
    assert!(exports.iter().any(|l| l.starts_with("export KUBECONFIG=")), "{printed}");

    // Everything as printed, in a shell with the printed exports; the app's folder is ours.
    let app = tempfile::tempdir().expect("app folder");
    let lines = example(&printed);
    assert!(lines.iter().any(|l| l.contains("crane append")), "{printed}");
    let script = format!(
        "set -euo pipefail\n{}\n{}\n",
        exports.join("\n"),
        lines.join("\n").replace("/tmp/app", &app.path().join("app").display().to_string())
    );
    let run = Command::new("bash").arg("-c").arg(&script).output().expect("bash runs");
    // In policy mode the API server applied the maps itself: no webhook is registered.
    let webhooks = Command::new("bash")
        .arg("-c")
        .arg(format!("{}\nkubectl get mutatingwebhookconfigurations -o name", exports.join("\n")))
        .output()
        .expect("kubectl runs");
    let webhooks = String::from_utf8_lossy(&webhooks.stdout).into_owned();
    let out = String::from_utf8_lossy(&run.stdout).into_owned();
    let err = String::from_utf8_lossy(&run.stderr).into_owned();
    let down = dev(&["down"], &state, port);
    let processes = Command::new("pgrep").args(["-f", dir_of(&node)]).output().expect("pgrep");
    assert!(
        processes.stdout.is_empty(),
        "no process names the node folder: {}",
        String::from_utf8_lossy(&processes.stdout)
    );
    assert!(run.status.success(), "the printed example failed:\n{script}\n--- stdout\n{out}\n--- stderr\n{err}");
    assert!(out.contains("hello from build 1"), "the first build ran:\n{out}");
    assert!(out.contains("hello from build 2"), "the rebuild ran:\n{out}");
    match mode {
        "policy" => assert!(webhooks.trim().is_empty(), "no webhook registered: {webhooks}"),
        _ => assert!(webhooks.contains("imagemap-dev"), "the webhook is registered: {webhooks}"),
    }

    assert!(down.status.success(), "make dev-down failed: {}", String::from_utf8_lossy(&down.stderr));
    assert!(String::from_utf8_lossy(&down.stderr).contains("nothing left behind"));
    assert!(!state.exists(), "the state folder is removed");
    // Checked here too, independently of dev-down's own check.
    let bridge = node["bridge"].as_str().expect("bridge");
    assert!(!std::path::Path::new("/sys/class/net").join(bridge).exists(), "bridge {bridge} is gone");
    let dir = node["dir"].as_str().expect("dir");
    assert!(!std::path::Path::new(dir).exists(), "node folder {dir} is gone");
    let cgroup = node["cgroup"].as_str().expect("cgroup");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mounts.contains(dir), "no mount under {dir}");
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").expect("cgroup root").flatten() {
        assert!(!hierarchy.path().join(cgroup).exists(), "cgroup {cgroup} gone from {}", hierarchy.path().display());
    }
}
