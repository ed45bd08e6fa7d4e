//! `make release`: what it writes into DIST and pushes, checked with the tools people use.
//!
//! One release (VERSION 9.8.7) is made twice, into two folders, against a registry started for
//! this test binary; the tests share it. The first run builds the plugin for two musl targets and
//! the webhook for two glibc targets (minutes on two cores when nothing is cached); the second
//! reuses the builds and proves the bytes are the same.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use imagemap_e2e::binaries::{bin_dir, workspace_root};
use imagemap_e2e::plugin::kubectl_imagemap;
use imagemap_e2e::{net, Registry};
use serde_json::Value;

const VERSION: &str = "9.8.7";

struct Release {
    registry: Registry,
    first: tempfile::TempDir,
    second: tempfile::TempDir,
    /// What cargo compiled during the second run (its `Compiling` lines).
    compiled_again: Vec<String>,
}

impl Release {
    fn dist(&self) -> &Path {
        self.second.path()
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dist().join(name)
    }

    fn image(&self) -> String {
        format!("{}/imagemap-webhook:{VERSION}", self.registry.address())
    }

    fn digest(&self) -> String {
        std::fs::read_to_string(self.file("imagemap-webhook.digest")).expect("the digest file").trim().to_string()
    }
}

/// Runs `make release` into `dist`; returns how long it took and what cargo compiled.
fn run_release(registry: &Registry, dist: &Path) -> Result<(Duration, Vec<String>)> {
    let bin = bin_dir()?;
    let started = Instant::now();
    let output = Command::new("make")
        .arg("-s")
        .arg("release")
        .arg(format!("VERSION={VERSION}"))
        .arg(format!("DIST={}", dist.display()))
        .arg(format!("REGISTRY={}", registry.address()))
        .current_dir(workspace_root())
        .env("CRANE", bin.join("crane"))
        .env("HELM", bin.join("helm4"))
        .env("COSIGN", bin.join("cosign"))
        .output()
        .context("running make release")?;
    ensure!(
        output.status.success(),
        "make release failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let compiled = String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("Compiling "))
        .map(str::to_string)
        .collect();
    Ok((started.elapsed(), compiled))
}

fn make_release() -> Result<Release> {
    let registry = Registry::start(None)?;
    let first = tempfile::Builder::new().prefix("imagemap-release-a-").tempdir()?;
    let second = tempfile::Builder::new().prefix("imagemap-release-b-").tempdir()?;
    let (a, _) = run_release(&registry, first.path())?;
    let (b, compiled_again) = run_release(&registry, second.path())?;
    eprintln!("release: first `make release` {a:.1?}, second {b:.1?}");
    Ok(Release { registry, first, second, compiled_again })
}

fn release() -> &'static Release {
    static RELEASE: OnceLock<std::result::Result<Release, String>> = OnceLock::new();
    match RELEASE.get_or_init(|| make_release().map_err(|e| format!("{e:#}"))) {
        Ok(r) => r,
        Err(e) => panic!("the release could not be made: {e}"),
    }
}

fn run(command: &mut Command) -> Output {
    command.output().unwrap_or_else(|e| panic!("running {command:?}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_ok(what: &str, output: &Output) -> String {
    assert!(output.status.success(), "{what} failed:\n{}\n{}", text(&output.stdout), text(&output.stderr));
    text(&output.stdout)
}

#[test]
#[ignore = "builds four release targets (minutes): `make release-test` runs these"]
fn two_release_runs_write_the_same_bytes() {
    let r = release();
    let first = std::fs::read_to_string(r.first.path().join("SHA256SUMS")).expect("first SHA256SUMS");
    let second = std::fs::read_to_string(r.second.path().join("SHA256SUMS")).expect("second SHA256SUMS");
    assert_eq!(first, second, "two runs of make release gave different sums");
    let names: BTreeSet<&str> = second.lines().filter_map(|l| l.split_whitespace().nth(1)).collect();
    let expected: BTreeSet<&str> = [
        "imagemap-9.8.7.tgz",
        "imagemap-webhook.digest",
        "imagemap-webhook.spdx.json",
        "imagemap.yaml",
        "kubectl-imagemap_linux_amd64.tar.gz",
        "kubectl-imagemap_linux_arm64.tar.gz",
    ]
    .into_iter()
    .collect();
    assert_eq!(names, expected, "files in SHA256SUMS");
    for name in &expected {
        let size = std::fs::metadata(r.file(name)).map(|m| m.len()).unwrap_or(0);
        eprintln!("release: {name} {size} bytes");
    }
    let check = run(Command::new("sha256sum").arg("-c").arg("SHA256SUMS").current_dir(r.dist()));
    assert_ok("sha256sum -c SHA256SUMS", &check);
}

/// Every build in a release (the webhook images, the plugins) runs in one environment
/// (scripts/build-env.sh), so a second release reuses all of the first one's compiled units.
#[test]
#[ignore = "builds four release targets (minutes): `make release-test` runs these"]
fn a_second_release_of_the_same_source_compiles_nothing() {
    let r = release();
    assert!(r.compiled_again.is_empty(), "the second make release compiled again: {:?}", r.compiled_again);
}

#[test]
#[ignore = "builds four release targets (minutes): `make release-test` runs these"]
fn plugin_archives_hold_the_binary_and_license_with_fixed_owners_and_times() {
    let r = release();
    for arch in ["amd64", "arm64"] {
        let archive = r.file(&format!("kubectl-imagemap_linux_{arch}.tar.gz"));
        let listing = assert_ok("tar -tv", &run(Command::new("tar").arg("-tvzf").arg(&archive).arg("--numeric-owner")));
        let entries: Vec<&str> = listing.lines().collect();
        assert_eq!(entries.len(), 2, "{listing}");
        assert!(entries[0].ends_with(" LICENSE") && entries[1].ends_with(" kubectl-imagemap"), "{listing}");
        for e in &entries {
            assert!(e.contains(" 0/0 ") && e.contains(" 1970-01-01 "), "owner or time: {e}");
        }
        assert!(entries[1].starts_with("-rwxr-xr-x"), "{listing}");
    }
    // The amd64 binary runs here, is static, and knows the release's version.
    let dir = tempfile::tempdir().expect("a folder");
    let archive = r.file("kubectl-imagemap_linux_amd64.tar.gz");
    assert_ok("tar -x", &run(Command::new("tar").arg("-xzf").arg(&archive).arg("-C").arg(dir.path())));
    let binary = dir.path().join("kubectl-imagemap");
    let out = assert_ok("kubectl-imagemap version --client", &run(Command::new(&binary).args(["version", "--client"])));
    assert_eq!(out, format!("Client Version: {VERSION}\n"));
    let file = run(Command::new("file").arg(&binary));
    if file.status.success() {
        let description = text(&file.stdout);
        assert!(description.contains("statically linked") || description.contains("static-pie"), "{description}");
    }
}

#[test]
#[ignore = "builds four release targets (minutes): `make release-test` runs these"]
fn krew_installs_the_plugin_and_kubectl_runs_it_with_the_release_version() {
    let r = release();
    let bin = bin_dir().expect("the bin folder");
    let root = tempfile::Builder::new().prefix("imagemap-krew-").tempdir().expect("a KREW_ROOT");
    let started = Instant::now();
    let install = run(Command::new(bin.join("krew"))
        .arg("install")
        .arg(format!("--manifest={}", r.file("imagemap.yaml").display()))
        .arg(format!("--archive={}", r.file("kubectl-imagemap_linux_amd64.tar.gz").display()))
        .env("KREW_ROOT", root.path())
        .env("HOME", root.path()));
    assert_ok("krew install", &install);
    eprintln!("release: krew install in {:.1?}", started.elapsed());
    assert!(root.path().join("bin/kubectl-imagemap").exists(), "krew put no kubectl-imagemap in KREW_ROOT/bin");

    let path = format!(
        "{}:{}:{}",
        root.path().join("bin").display(),
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let kubectl = |args: &[&str], kubeconfig: &Path| {
        run(Command::new(bin.join("kubectl")).args(args).env("PATH", &path).env("KUBECONFIG", kubeconfig))
    };
    let out = kubectl(&["imagemap", "version", "--client"], Path::new("/nonexistent"));
    assert_eq!(assert_ok("kubectl imagemap version --client", &out), format!("Client Version: {VERSION}\n"));
    // No cluster: a note, exit 0.
    let out = kubectl(&["imagemap", "version"], &root.path().join("missing-kubeconfig"));
    let stdout = assert_ok("kubectl imagemap version without a cluster", &out);
    assert!(stdout.starts_with(&format!("Client Version: {VERSION}\nWebhook Version: unknown (")), "{stdout}");
}

#[test]
#[ignore = "builds four release targets (minutes): `make release-test` runs these"]
fn the_released_chart_installs_and_version_reads_the_webhook_version_from_it() {
    let r = release();
    let plane = imagemap_e2e::shared();
    let ns = plane.create_namespace("release");
    let chart = r.file(&format!("imagemap-{VERSION}.tgz"));
    let chart = chart.to_str().expect("a UTF-8 path");
    // The chart's defaults are the released image, by digest.
    let manifests = assert_ok("helm template", &plane.helm(["template", "imagemap-rel", chart, "-n", &ns]));
    let image = format!("image: \"{}/imagemap-webhook@{}\"", r.registry.address(), r.digest());
    assert!(manifests.contains(&image), "no `{image}` in the rendered chart");
    assert!(manifests.contains(&format!("app.kubernetes.io/version: \"{VERSION}\"")));
    let started = Instant::now();
    assert_ok("helm install", &plane.helm(["install", "imagemap-rel", chart, "-n", &ns]));
    eprintln!("release: helm install in {:.1?}", started.elapsed());

    let kubeconfig = plane.kubeconfig_path();
    let version = |args: &[&str]| {
        let mut all = vec!["version"];
        all.extend_from_slice(args);
        kubectl_imagemap(kubeconfig, &all, None)
    };
    // The debug build's version is the workspace's; ask by name and by search.
    for args in [&["--webhook-config", "imagemap-rel"][..], &[][..]] {
        let out = version(args);
        let stdout = assert_ok("kubectl-imagemap version", &out);
        assert!(
            stdout.contains(&format!("Webhook Version: {VERSION} (deployment {ns}/imagemap-rel)\n")),
            "{args:?}: {stdout}"
        );
        assert!(text(&out.stderr).contains(&format!("and the webhook ({VERSION}) differ")), "{}", text(&out.stderr));
    }
    let out = version(&["--webhook-config", "nothing-here"]);
    let stdout = assert_ok("kubectl-imagemap version", &out);
    assert!(
        stdout.contains("Webhook Version: not installed (no MutatingWebhookConfiguration nothing-here)"),
        "{stdout}"
    );
    assert_ok("helm uninstall", &plane.helm(["uninstall", "imagemap-rel", "-n", &ns]));
}

fn cosign_verify(r: &Release, reference: &str) -> Output {
    let bin = bin_dir().expect("the bin folder");
    let home = tempfile::tempdir().expect("a HOME");
    run(Command::new(bin.join("cosign"))
        .args(["verify", "--insecure-ignore-tlog=true", "--key"])
        .arg(r.file("cosign.pub"))
        .arg(reference)
        .env("HOME", home.path()))
}

#[test]
#[ignore = "builds four release targets (minutes): `make release-test` runs these"]
fn cosign_verifies_the_released_image_and_rejects_an_unsigned_one_under_the_tag() {
    let r = release();
    let out = cosign_verify(r, &r.image());
    assert_ok("cosign verify of the release", &out);
    let payload: Value = serde_json::from_slice(&out.stdout).expect("cosign verify prints JSON");
    assert_eq!(payload[0]["critical"]["image"]["docker-manifest-digest"], r.digest().as_str(), "{payload}");

    // Another image pushed to the same tag, unsigned: the tag no longer verifies.
    let dir = tempfile::tempdir().expect("a folder");
    std::fs::write(dir.path().join("marker"), "not the release\n").expect("a file");
    assert_ok("tar", &run(Command::new("tar").args(["-cf", "layer.tar", "marker"]).current_dir(dir.path())));
    let image = r.image();
    r.registry
        .crane_ok([
            "append",
            "--oci-empty-base",
            "-f",
            &dir.path().join("layer.tar").display().to_string(),
            "-t",
            &image,
        ])
        .expect("crane append");
    let out = cosign_verify(r, &image);
    assert!(!out.status.success(), "cosign verify passed for an unsigned image:\n{}", text(&out.stdout));
    // The release itself, by digest, still verifies.
    let by_digest = format!("{}/imagemap-webhook@{}", r.registry.address(), r.digest());
    assert_ok("cosign verify by digest", &cosign_verify(r, &by_digest));
}

#[test]
#[ignore = "builds four release targets (minutes): `make release-test` runs these"]
fn the_sbom_names_the_webhook_dependencies_and_is_attached_to_the_image() -> Result<()> {
    let r = release();
    let sbom: Value = serde_json::from_str(&std::fs::read_to_string(r.file("imagemap-webhook.spdx.json"))?)?;
    assert_eq!(sbom["spdxVersion"], "SPDX-2.3");
    let packages = sbom["packages"].as_array().context("packages")?;
    let names: BTreeSet<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    for wanted in ["imagemap-webhook", "kube", "rustls", "axum", "tokio", "ring"] {
        assert!(names.contains(wanted), "the SBOM does not name {wanted}");
    }
    for unwanted in ["criterion", "proptest", "imagemap-e2e", "kubectl-imagemap"] {
        assert!(!names.contains(unwanted), "the SBOM names {unwanted}, which the webhook does not link");
    }
    let root = packages.iter().find(|p| p["name"] == "imagemap-webhook").context("the root package")?;
    assert_eq!(root["versionInfo"], VERSION);
    eprintln!("release: the SBOM has {} packages", packages.len());

    // Attached: a referrer of the image index, listed by the referrers API or, for registries
    // without it (crane's own), by the OCI 1.1 fallback tag `sha256-HEX`.
    let path = format!("/v2/imagemap-webhook/referrers/{}", r.digest());
    let response = net::http_get(r.registry.port(), &path)?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let index: Value = match serde_json::from_str::<Value>(body) {
        Ok(v) if v["manifests"].is_array() => v,
        _ => {
            let tag = format!("{}/imagemap-webhook:{}", r.registry.address(), r.digest().replace(':', "-"));
            serde_json::from_str(&r.registry.crane_ok(["manifest", &tag])?)?
        }
    };
    let referrers = index["manifests"].as_array().context("manifests")?;
    let sbom_ref = referrers
        .iter()
        .find(|m| m["artifactType"] == "application/spdx+json")
        .with_context(|| format!("no SPDX referrer in {index}"))?;
    let digest = sbom_ref["digest"].as_str().context("digest")?;
    let manifest: Value = serde_json::from_str(
        &r.registry.crane_ok(["manifest", &format!("{}/imagemap-webhook@{digest}", r.registry.address())])?,
    )?;
    let layer = manifest["layers"][0]["digest"].as_str().context("the SBOM layer")?;
    let blob = r.registry.crane_ok(["blob", &format!("{}/imagemap-webhook@{layer}", r.registry.address())])?;
    assert_eq!(blob, std::fs::read_to_string(r.file("imagemap-webhook.spdx.json"))?, "the attached SBOM differs");
    Ok(())
}
