//! `kubectl imagemap` through the real `kubectl` binary (plugin found on PATH) against the real
//! API server: every command, its output formats and its error paths.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use imagemap_e2e::plugin::kubectl_imagemap;
use imagemap_e2e::{shared, workspace_binary, ControlPlane, ControlPlaneOptions};
use serde_json::Value;

/// Runs `kubectl imagemap ARGS` with `kubeconfig`, optional stdin.
fn run_with(kubeconfig: &std::path::Path, args: &[&str], stdin: Option<&str>) -> Output {
    kubectl_imagemap(kubeconfig, args, stdin)
}

fn run(plane: &ControlPlane, args: &[&str]) -> Output {
    run_with(plane.kubeconfig_path(), args, None)
}

fn ok(plane: &ControlPlane, args: &[&str]) -> String {
    let out = run(plane, args);
    assert!(out.status.success(), "kubectl imagemap {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(plane: &ControlPlane, args: &[&str]) -> String {
    let out = run(plane, args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "kubectl imagemap {args:?} should exit 1: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn create_get_list_set_image_describe_and_delete() {
    let plane = shared();
    let ns = plane.create_namespace("plugin");
    let out = ok(plane, &["create", "app", "--selector", "my-app", "-n", &ns, "--args", "--debug"]);
    assert_eq!(out, "imagemap.tilt.dev/app created\n");
    let table = ok(plane, &["list", "-n", &ns]);
    let row: Vec<&str> = table.lines().nth(1).expect("row").split_whitespace().collect();
    assert_eq!(&row[..5], ["app", "my-app", "<none>", "<none>", "False"]);

    let out = ok(
        plane,
        &[
            "set-image",
            "app",
            "localhost:5000/my-app:tilt-1",
            "--from-cluster",
            "registry:5000/my-app:tilt-1",
            "-n",
            &ns,
        ],
    );
    assert_eq!(out, "imagemap.tilt.dev/app image set to registry:5000/my-app:tilt-1\n");
    let got: Value = serde_json::from_str(&ok(plane, &["get", "app", "-n", &ns, "-o", "json"])).expect("json");
    assert_eq!(got["status"]["image"], "localhost:5000/my-app:tilt-1");
    assert_eq!(got["status"]["imageFromCluster"], "registry:5000/my-app:tilt-1");
    assert!(got["status"]["buildStartTime"].as_str().expect("time").contains('.'), "microseconds");
    assert_eq!(got["spec"]["overrideArgs"]["args"][0], "--debug");
    // Status is a subresource: plain kubectl sees the same.
    let raw = plane.kubectl_ok(["get", "imagemap", "app", "-n", &ns, "-o", "jsonpath={.status.image}"]);
    assert_eq!(raw, "localhost:5000/my-app:tilt-1");

    let wide = ok(plane, &["get", "-n", &ns, "-o", "wide"]);
    assert!(wide.lines().next().expect("header").contains("FROM-LOCAL"), "{wide}");
    assert!(wide.contains("True"), "{wide}");
    assert_eq!(ok(plane, &["get", "-n", &ns, "-o", "name"]), "imagemap.tilt.dev/app\n");
    let all = ok(plane, &["list", "-A"]);
    assert!(all.starts_with("NAMESPACE"), "{all}");
    assert!(all.contains(&ns), "{all}");
    let yaml: Value = serde_saphyr::from_str(&ok(plane, &["get", "-n", &ns, "-o", "yaml"])).expect("yaml");
    assert_eq!(yaml["kind"], "List");

    let desc = ok(plane, &["describe", "app", "-n", &ns]);
    assert!(desc.contains("Usable:               Yes: Pods get registry:5000/my-app:tilt-1"), "{desc}");

    // --create with a selector creates and publishes in one call.
    let out = ok(plane, &["set-image", "tool", "reg.io/tool:2", "--create", "--selector", "tool", "-n", &ns]);
    assert!(out.contains("created and image set"), "{out}");
    assert_eq!(
        ok(plane, &["delete", "app", "tool", "-n", &ns]),
        "imagemap.tilt.dev \"app\" deleted\nimagemap.tilt.dev \"tool\" deleted\n"
    );
    assert_eq!(ok(plane, &["get", "-n", &ns, "-o", "name"]), "");
}

#[test]
fn get_list_and_delete_select_by_label() {
    let plane = shared();
    let ns = plane.create_namespace("plugin-labels");
    for name in ["a", "b", "c"] {
        ok(plane, &["create", name, "--selector", name, "-n", &ns]);
    }
    plane.kubectl_ok(["label", "imagemap", "a", "b", "team=red", "-n", &ns]);
    assert_eq!(
        ok(plane, &["get", "-l", "team=red", "-n", &ns, "-o", "name"]),
        "imagemap.tilt.dev/a\nimagemap.tilt.dev/b\n"
    );
    assert_eq!(ok(plane, &["list", "-l", "team!=red", "-n", &ns, "-o", "name"]), "imagemap.tilt.dev/c\n");
    let deleted = ok(plane, &["delete", "-l", "team=red", "-n", &ns]);
    assert_eq!(deleted, "imagemap.tilt.dev \"a\" deleted\nimagemap.tilt.dev \"b\" deleted\n");
    assert_eq!(ok(plane, &["get", "-n", &ns, "-o", "name"]), "imagemap.tilt.dev/c\n");
    let both = run(plane, &["delete", "c", "-l", "team=red", "-n", &ns]);
    let stderr = String::from_utf8_lossy(&both.stderr);
    assert_eq!(both.status.code(), Some(2), "a usage error, as kubectl's: {stderr}");
    assert!(stderr.contains("cannot be used with"), "{stderr}");
}

#[test]
fn create_dry_runs_print_without_storing() {
    let plane = shared();
    let ns = plane.create_namespace("plugin-dry");
    let yaml = ok(plane, &["create", "app", "--selector", "app", "--dry-run=client", "-o", "yaml", "-n", &ns]);
    let obj: Value = serde_saphyr::from_str(&yaml).expect("yaml");
    assert_eq!(obj["spec"]["selector"], "app");
    let json = ok(plane, &["create", "app", "--selector", "app", "--dry-run=server", "-o", "json", "-n", &ns]);
    let obj: Value = serde_json::from_str(&json).expect("json");
    assert_eq!(obj["metadata"]["namespace"], ns.as_str());
    assert_eq!(ok(plane, &["get", "-n", &ns, "-o", "name"]), "", "nothing stored");
}

#[test]
fn errors_name_the_fix_and_exit_1() {
    let plane = shared();
    let ns = plane.create_namespace("plugin-err");
    let e = fails(plane, &["get", "nope", "-n", &ns]);
    assert!(e.contains("imagemap \"nope\" not found") && e.contains("kubectl imagemap list"), "{e}");
    let e = fails(plane, &["create", "bad", "--selector", "Not Valid", "-n", &ns]);
    assert!(e.contains("invalid --selector \"Not Valid\"") && e.contains("whitespace"), "{e}");
    let e = fails(plane, &["set-image", "nope", "reg.io/a:1", "-n", &ns]);
    assert!(e.contains("not found") && e.contains("--create --selector"), "{e}");
    let e = fails(plane, &["set-image", "nope", "reg.io/A:1", "-n", &ns]);
    assert!(e.contains("invalid IMAGE"), "{e}");
    let e = fails(plane, &["delete", "nope", "-n", &ns]);
    assert!(e.contains("not found"), "{e}");
    assert!(run(plane, &["delete", "nope", "--ignore-not-found", "-n", &ns]).status.success());
    let e = fails(plane, &["describe", "nope", "-n", &ns]);
    assert!(e.contains("not found"), "{e}");
}

#[test]
fn unreachable_api_server_is_reported_with_the_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: 'https://127.0.0.1:1', insecure-skip-tls-verify: true}\nusers:\n- name: u\n  user: {token: x}\ncontexts:\n- name: c\n  context: {cluster: c, user: u}\ncurrent-context: c\n",
    )
    .expect("write");
    let out = run_with(&kubeconfig, &["list"], None);
    assert_eq!(out.status.code(), Some(1));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("cannot reach the API server") && e.contains("--kubeconfig"), "{e}");
    // inject with --maps needs no cluster at all.
    let pod = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},"spec":{"containers":[{"name":"c","image":"app"}]}}"#;
    let maps = dir.path().join("maps.yaml");
    std::fs::write(&maps, "apiVersion: tilt.dev/v1alpha1\nkind: ImageMap\nmetadata: {name: app}\nspec: {selector: app}\nstatus: {image: 'reg.io/app:1'}\n").expect("write");
    let out =
        run_with(&kubeconfig, &["inject", "--maps", maps.to_str().expect("utf8"), "-f", "-", "-o", "json"], Some(pod));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["spec"]["containers"][0]["image"], "reg.io/app:1");
}

#[test]
fn missing_crd_is_reported_with_the_install_command() {
    let plane = ControlPlane::start(ControlPlaneOptions { install_crds: false, ..Default::default() }).expect("plane");
    let e = String::from_utf8_lossy(&run(&plane, &["list"]).stderr).into_owned();
    assert!(e.contains("CRD (imagemaps.tilt.dev) is not installed") && e.contains("helm install"), "{e}");
    let out = run(&plane, &["doctor", "--no-dry-run"]);
    assert_eq!(out.status.code(), Some(1));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("[FAIL] CRD: imagemaps.tilt.dev is not installed"), "{report}");
    assert!(report.contains("fix: install it"), "{report}");
}

#[test]
fn inject_and_explain_use_the_cluster_maps() {
    let plane = shared();
    let ns = plane.create_namespace("plugin-inject");
    ok(plane, &["set-image", "web", "reg.io/web:7", "--create", "--selector", "web", "-n", &ns]);
    ok(plane, &["create", "unbuilt", "--selector", "worker", "-n", &ns]);
    let manifests = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web, namespace: {ns}}}\nspec:\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec:\n      containers: [{{name: web, image: 'web:1'}}, {{name: worker, image: worker}}]\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec: {{ports: [{{port: 80}}]}}\n"
    );
    let out = run_with(plane.kubeconfig_path(), &["inject", "-f", "-", "-n", &ns], Some(&manifests));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let docs: Vec<Value> = text.split("---\n").map(|d| serde_saphyr::from_str(d).expect("yaml")).collect();
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[0]["spec"]["template"]["spec"]["containers"][0]["image"], "reg.io/web:7");
    assert_eq!(docs[0]["spec"]["template"]["spec"]["containers"][1]["image"], "worker");
    assert_eq!(docs[1]["kind"], "Service");
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(warnings.contains(&format!("ImageMap {ns}/unbuilt matches worker")), "{warnings}");

    let explained = ok(plane, &["explain", "web:1", "-n", &ns]);
    assert!(
        explained.contains(&format!("ImageMap {ns}/web (name-only, local, selector web): WINS: swaps to reg.io/web:7")),
        "{explained}"
    );
    let explained = run_with(plane.kubeconfig_path(), &["explain", "-f", "-", "-n", &ns], Some(&manifests));
    let text = String::from_utf8_lossy(&explained.stdout);
    assert!(text.contains("spec.containers{web}.image: web:1 -> reg.io/web:7"), "{text}");
    assert!(text.contains("but it has no built image yet"), "{text}");
}

#[test]
fn watch_prints_changes_as_they_happen() {
    let plane = shared();
    let ns = plane.create_namespace("plugin-watch");
    ok(plane, &["create", "app", "--selector", "app", "-n", &ns]);
    let dir = workspace_binary("kubectl-imagemap").expect("plugin built").parent().expect("dir").to_path_buf();
    let path = format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default());
    let mut child = Command::new("kubectl")
        .args(["imagemap", "list", "--watch", "-n", &ns])
        .env("PATH", path)
        .env("KUBECONFIG", plane.kubeconfig_path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(30)).expect("header");
    assert!(first.starts_with("NAME"), "{first}");
    rx.recv_timeout(Duration::from_secs(30)).expect("initial row");
    ok(plane, &["set-image", "app", "reg.io/app:9", "-n", &ns]);
    let changed = imagemap_e2e::poll(Duration::from_secs(30), Duration::from_millis(100), || {
        rx.try_recv().ok().filter(|l| l.contains("reg.io/app:9"))
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(changed.is_some(), "watch printed the new image");
}

#[test]
fn completion_scripts_and_help_examples() {
    let plane = shared();
    for shell in ["bash", "zsh", "fish"] {
        assert!(ok(plane, &["completion", shell]).contains("set-image"), "{shell}");
    }
    for cmd in ["create", "list", "get", "describe", "set-image", "delete", "inject", "explain", "doctor", "completion"]
    {
        let help = ok(plane, &[cmd, "--help"]);
        assert!(help.contains("Example"), "{cmd} --help has an example:\n{help}");
    }
}

#[test]
fn kubectl_completes_the_plugin_through_the_shipped_completion_script() {
    let plane = shared();
    let plugin = imagemap_e2e::webhook::workspace_binary("kubectl-imagemap").expect("built");
    let dir = tempfile::tempdir().expect("a folder");
    let script = dir.path().join("kubectl_complete-imagemap");
    std::fs::copy(imagemap_e2e::binaries::workspace_root().join("scripts/kubectl_complete-imagemap"), &script)
        .expect("copied");
    std::os::unix::fs::symlink(&plugin, dir.path().join("kubectl-imagemap")).expect("linked");
    let path = format!("{}:{}", dir.path().display(), std::env::var("PATH").unwrap_or_default());
    let kubectl = imagemap_e2e::kubectl::Kubectl::new(plane.kubeconfig_path(), &std::env::temp_dir());
    let complete = |words: &[&str]| {
        let out = std::process::Command::new(kubectl.program())
            .args(["__complete", "imagemap"])
            .args(words)
            .env("PATH", &path)
            .output()
            .expect("kubectl runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let top = complete(&["se"]);
    assert!(top.starts_with("set-image\t") && top.trim_end().ends_with(":4"), "{top}");
    let flags = complete(&["set-image", "app", "--from-c"]);
    assert!(flags.starts_with("--from-cluster\t"), "{flags}");
}
