//! `kubectl imagemap build` on a real node, with the registry the cluster advertises
//! (`kube-public/local-registry-hosting`): the build command pushes with crane to
//! `$EXPECTED_REF`, the map's status gets the image pinned by digest and the build's start time,
//! a Deployment naming the plain selector runs it, and a rebuild rolls it. A failing command
//! changes nothing and its exit code comes through; a reference the registry does not have is an
//! error naming it.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use imagemap_e2e::plugin::{kubectl_imagemap, kubectl_imagemap_ok};
use imagemap_e2e::pods::running_build;
use imagemap_e2e::webhook::wait_until_admitted;
use imagemap_e2e::{poll, shared_cluster, Cluster, ControlPlane, ServedWebhook, WebhookOptions};
use serde_json::Value;

/// Generous: a Pod's first start pulls its image and sets up its sandbox on a busy machine.
const POD_TIMEOUT: Duration = Duration::from_secs(180);

fn json(text: &str) -> Value {
    serde_json::from_str(text).expect("kubectl printed JSON")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The admission server (holding Pods until their map is built) and, as the chart runs it, the
/// controller beside it (restarting workloads on a rebuild).
fn webhook(cluster: &Cluster, name: &str) -> ServedWebhook {
    let lease_ns = cluster.plane.create_namespace(&format!("{name}-lease"));
    let controller =
        ["--gate-unbuilt", "--restart-on-rebuild", "--controller-interval", "300ms", "--leader-election-namespace"];
    let mut controller_args: Vec<String> = controller.iter().map(|s| s.to_string()).collect();
    controller_args.push(lease_ns);
    let options = WebhookOptions {
        extra_args: vec!["--gate-unbuilt".to_string()],
        controller_args: Some(controller_args),
        ..Default::default()
    };
    ServedWebhook::start(&cluster.plane, name, options).expect("webhook")
}

/// Advertises the cluster's registry with the plugin (idempotent: every test writes the same).
fn advertise(cluster: &Cluster) {
    let host = cluster.registry.address();
    kubectl_imagemap_ok(
        cluster.plane.kubeconfig_path(),
        &["registry", "set", "--host", &host, "--help-url", imagemap_e2e::registry_hosting::HELP_URL],
    );
}

/// A folder holding `bin/busybox` and `/marker`, and the shell command that packs it and pushes
/// it with crane to `$EXPECTED_REF` as an image whose entrypoint prints the marker and waits.
fn build_context(cluster: &Cluster, dir: &Path, marker: &str) -> String {
    std::fs::create_dir_all(dir.join("bin")).expect("folder");
    std::fs::copy(busybox(), dir.join("bin/busybox")).expect("busybox copied");
    std::fs::write(dir.join("marker"), format!("{marker}\n")).expect("marker");
    let crane = cluster.registry.crane().display().to_string();
    let dir = dir.display();
    format!(
        "tar -C {dir} -cf {dir}/app.tar bin marker && \
         {crane} append --oci-empty-base -f {dir}/app.tar -t \"$EXPECTED_REF\" && \
         {crane} mutate \"$EXPECTED_REF\" --entrypoint '/bin/busybox,sh,-c,trap exit TERM; cat /marker; while true; do sleep 1; done' -t \"$EXPECTED_REF\""
    )
}

fn busybox() -> PathBuf {
    std::env::var_os(imagemap_e2e::oci::BUSYBOX_ENV)
        .filter(|v| !v.is_empty())
        .map_or_else(|| "/bin/busybox".into(), PathBuf::from)
}

fn map_json(plane: &ControlPlane, ns: &str, name: &str) -> Value {
    json(&plane.kubectl_ok(["get", "imagemap", name, "-n", ns, "-o", "json"]))
}

fn describe_pods(plane: &ControlPlane, ns: &str) -> String {
    text(&plane.kubectl(["describe", "pods", "-n", ns]).stdout)
}

/// `localhost:PORT/app:tilt-<16 hex>@sha256:<64 hex>`: returns (name:tag, digest).
fn split_pinned<'a>(image: &'a str, name: &str) -> (&'a str, &'a str) {
    let (tagged, digest) = image.split_once('@').unwrap_or_else(|| panic!("{image} is pinned by digest"));
    let tag = tagged.strip_prefix(&format!("{name}:")).unwrap_or_else(|| panic!("{image} is under {name}"));
    assert!(tag.starts_with("tilt-") && tag.len() == 21, "fresh tag in {image}");
    assert!(digest.starts_with("sha256:") && digest.len() == 71, "digest in {image}");
    (tagged, digest)
}

fn assert_micro_time(t: &str) {
    // 2026-11-26T10:00:00.123456Z
    let bytes = t.as_bytes();
    assert!(t.len() == 27 && t.ends_with('Z') && bytes[19] == b'.', "buildStartTime {t} is a MicroTime");
}

#[test]
fn a_build_creates_the_map_a_deployment_runs_it_pinned_by_digest_and_a_rebuild_rolls_it() {
    let cluster = shared_cluster();
    let plane = &cluster.plane;
    let kubeconfig = plane.kubeconfig_path();
    let served = webhook(cluster, "build");
    let ns = served.create_namespace("build");
    advertise(cluster);
    let registry = cluster.registry.address();
    let shown = kubectl_imagemap_ok(kubeconfig, &["registry"]);
    assert!(shown.contains(&format!("host:                      {registry}")), "{shown}");

    let context = tempfile::tempdir().expect("folder");
    let script = build_context(cluster, context.path(), &format!("marker build-1 of {ns}"));
    let out = kubectl_imagemap_ok(kubeconfig, &["build", "app", "--create", "-n", &ns, "--", "sh", "-c", &script]);
    // stdout holds the result alone (the command's output streams to stderr).
    assert!(out.starts_with("imagemap.tilt.dev/app created and image set to ") && out.lines().count() == 1, "{out}");

    // The Tilt-named target under the advertised registry, pinned by the pushed digest.
    let map = map_json(plane, &ns, "app");
    assert_eq!(map["spec"]["selector"], "app");
    let status = &map["status"];
    let image = status["image"].as_str().expect("image");
    let (tagged, digest) = split_pinned(image, &format!("{registry}/app"));
    assert_eq!(cluster.registry.crane_ok(["digest", tagged]).expect("crane digest").trim(), digest);
    assert_eq!(status["imageFromCluster"], image);
    assert_eq!(status["imageFromLocal"], image);
    let first_start = status["buildStartTime"].as_str().expect("buildStartTime").to_string();
    assert_micro_time(&first_start);

    wait_until_admitted(plane, &ns, "app", |pod| pod["spec"]["containers"][0]["image"] == image);
    plane.kubectl_ok(["create", "deployment", "x", "-n", &ns, "--image=app"]);
    let pod = poll(POD_TIMEOUT, Duration::from_millis(500), || {
        running_build(plane, &ns, "app=x", digest, &format!("marker build-1 of {ns}"))
    })
    .unwrap_or_else(|| panic!("a Pod runs build 1:\n{}", describe_pods(plane, &ns)));
    assert_eq!(pod["spec"]["containers"][0]["image"], image);

    // Rebuild: a new marker, a new tag and digest; the controller rolls the Deployment.
    let script = build_context(cluster, context.path(), &format!("marker build-2 of {ns}"));
    kubectl_imagemap_ok(kubeconfig, &["build", "app", "-n", &ns, "--", "sh", "-c", &script]);
    let status = map_json(plane, &ns, "app")["status"].clone();
    let second = status["image"].as_str().expect("image").to_string();
    let (_, second_digest) = split_pinned(&second, &format!("{registry}/app"));
    assert_ne!(second_digest, digest);
    let second_start = status["buildStartTime"].as_str().expect("buildStartTime");
    assert_micro_time(second_start);
    assert!(second_start > first_start.as_str(), "{second_start} after {first_start}");
    poll(POD_TIMEOUT, Duration::from_millis(500), || {
        running_build(plane, &ns, "app=x", second_digest, &format!("marker build-2 of {ns}"))
    })
    .unwrap_or_else(|| panic!("the Deployment rolled to build 2:\n{}", describe_pods(plane, &ns)));

    // doctor checks the advertisement and that its host answers the registry API.
    let out = kubectl_imagemap(kubeconfig, &["doctor", "-n", &ns, "--no-dry-run"], None);
    let report = text(&out.stdout);
    assert!(report.contains(&format!("[PASS] registry: advertised host {registry}")), "{report}");
}

fn run_plugin(cluster: &Cluster, args: &[&str]) -> Output {
    kubectl_imagemap(cluster.plane.kubeconfig_path(), args, None)
}

#[test]
fn a_failing_build_command_changes_nothing_and_its_exit_code_comes_through() {
    let cluster = shared_cluster();
    let plane = &cluster.plane;
    advertise(cluster);
    let ns = plane.create_namespace("build-fail");
    let registry = cluster.registry.address();
    let kubeconfig = plane.kubeconfig_path();
    kubectl_imagemap_ok(
        kubeconfig,
        &["set-image", "web", "gcr.io/team/web:old", "--create", "--selector", "gcr.io/team/web", "-n", &ns],
    );
    let before = map_json(plane, &ns, "web");

    let dir = tempfile::tempdir().expect("folder");
    let seen = dir.path().join("env");
    let script = format!(
        "echo \"$EXPECTED_REF $EXPECTED_REGISTRY $EXPECTED_IMAGE $EXPECTED_TAG\" > {}; echo building; exit 7",
        seen.display()
    );
    let out = run_plugin(cluster, &["build", "web", "-n", &ns, "--", "sh", "-c", &script]);
    assert_eq!(out.status.code(), Some(7), "stderr: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains("\nbuilding\n"), "the command's output streams to stderr");
    assert!(text(&out.stderr).contains("the build command exited with code 7; imagemap \"web\" is unchanged"));
    assert_eq!(map_json(plane, &ns, "web"), before, "the map is untouched");

    // The command saw the Tilt-named target: the selector's familiar name, escaped, under the registry.
    let env = std::fs::read_to_string(&seen).expect("the command ran");
    let words: Vec<&str> = env.split_whitespace().collect();
    let tag = words[3];
    assert!(tag.starts_with("tilt-"), "{env}");
    assert_eq!(
        words,
        [format!("{registry}/gcr.io_team_web:{tag}").as_str(), registry.as_str(), "gcr.io_team_web", tag]
    );

    // With --create on a missing map, a failed build creates nothing.
    let out = run_plugin(cluster, &["build", "new", "--create", "-n", &ns, "--", "false"]);
    assert_eq!(out.status.code(), Some(1));
    let missing = plane.kubectl(["get", "imagemap", "new", "-n", &ns]);
    assert!(!missing.status.success(), "no map was created");
}

#[test]
fn a_reference_the_registry_does_not_have_is_an_error_naming_it() {
    let cluster = shared_cluster();
    let plane = &cluster.plane;
    advertise(cluster);
    let ns = plane.create_namespace("build-ghost");
    let registry = cluster.registry.address();

    // The command succeeds but pushes nothing.
    let out = run_plugin(cluster, &["build", "ghost", "--create", "-n", &ns, "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains(&format!("has no image {registry}/ghost:tilt-")), "{err}");
    assert!(!plane.kubectl(["get", "imagemap", "ghost", "-n", &ns]).status.success(), "no map was created");

    // --ref-file naming an image that is not there.
    let dir = tempfile::tempdir().expect("folder");
    let ref_file = dir.path().join("ref");
    let absent = format!("{registry}/{ns}/never-pushed:v1");
    let script = format!("echo {absent} > {}", ref_file.display());
    let ref_arg = ref_file.display().to_string();
    let out = run_plugin(
        cluster,
        &["build", "ghost", "--create", "--ref-file", &ref_arg, "-n", &ns, "--", "sh", "-c", &script],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains(&format!("has no image {absent}")), "{}", text(&out.stderr));
}

#[test]
fn a_builder_that_chooses_its_own_name_reports_it_in_the_ref_file() {
    let cluster = shared_cluster();
    let plane = &cluster.plane;
    advertise(cluster);
    let ns = plane.create_namespace("build-ref");
    let registry = cluster.registry.address();
    let context = tempfile::tempdir().expect("folder");
    let own = format!("{registry}/{ns}/custom:v1");
    let script = build_context(cluster, context.path(), "custom").replace("\"$EXPECTED_REF\"", &own);
    let ref_file = context.path().join("pushed");
    let script = format!("{script} && echo {own} > {}", ref_file.display());
    let ref_arg = ref_file.display().to_string();
    kubectl_imagemap_ok(
        plane.kubeconfig_path(),
        &[
            "build",
            "custom",
            "--create",
            "--selector",
            "custom",
            "--ref-file",
            &ref_arg,
            "-n",
            &ns,
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    let digest = cluster.registry.crane_ok(["digest", own.as_str()]).expect("crane digest");
    let status = &map_json(plane, &ns, "custom")["status"];
    assert_eq!(status["image"], format!("{own}@{}", digest.trim()));
    assert_eq!(status["imageFromLocal"], format!("{own}@{}", digest.trim()));
    assert_micro_time(status["buildStartTime"].as_str().expect("buildStartTime"));
}

#[test]
fn set_image_reads_what_buildx_and_skaffold_report_they_pushed() {
    let cluster = shared_cluster();
    let plane = &cluster.plane;
    advertise(cluster);
    let ns = plane.create_namespace("build-output");
    let registry = cluster.registry.address();
    let kubeconfig = plane.kubeconfig_path();
    let repo = format!("{ns}/web");
    let run = imagemap_e2e::oci::Run::shell("exec sleep 3600");
    let digest = imagemap_e2e::oci::busybox_image(&cluster.registry, &repo, "v1", &[], &run).expect("pushed");
    let dir = tempfile::tempdir().expect("folder");

    // docker buildx build --metadata-file: one build, its names, the manifest digest.
    let buildx = dir.path().join("metadata.json");
    let metadata = serde_json::json!({
        "containerimage.digest": digest,
        "image.name": format!("{registry}/{repo}:v1,{registry}/{repo}:latest"),
    });
    std::fs::write(&buildx, metadata.to_string()).expect("written");
    let buildx_arg = buildx.display().to_string();
    kubectl_imagemap_ok(
        kubeconfig,
        &["set-image", "web", "--from-build-output", &buildx_arg, "--create", "--selector", "web", "-n", &ns],
    );
    let pinned = format!("{registry}/{repo}:v1@{digest}");
    let status = &map_json(plane, &ns, "web")["status"];
    assert_eq!(status["image"], pinned.as_str());
    // Under the advertised host: the node's name and this machine's name are both recorded.
    assert_eq!(status["imageFromCluster"], pinned.as_str());
    assert_eq!(status["imageFromLocal"], pinned.as_str());

    // skaffold build --file-output: the entry whose imageName is the map's selector.
    let skaffold = dir.path().join("builds.json");
    let builds = serde_json::json!({"builds": [
        {"imageName": "other", "tag": format!("{registry}/{ns}/other:v9@{digest}")},
        {"imageName": "web", "tag": format!("{registry}/{repo}:v1@{digest}")},
    ]});
    std::fs::write(&skaffold, builds.to_string()).expect("written");
    let skaffold_arg = skaffold.display().to_string();
    kubectl_imagemap_ok(kubeconfig, &["set-image", "web", "--from-build-output", &skaffold_arg, "-n", &ns]);
    assert_eq!(map_json(plane, &ns, "web")["status"]["image"], pinned.as_str());
}
