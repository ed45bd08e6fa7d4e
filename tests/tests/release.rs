//! `make release`: what it writes into DIST and pushes, checked with the tools people use.
//!
//! One release (VERSION 9.8.7) is made twice, into two folders, against a registry started for
//! this test binary; the tests share it. The first run builds the plugin for every platform in
//! [`PLATFORMS`] (two musl targets, Windows through MinGW) and the webhook for two glibc targets
//! (minutes on two cores when nothing is cached); the second reuses the builds and proves the
//! bytes are the same.

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

/// The plugin's platforms `make release` builds by default (scripts/release.sh PLUGIN_PLATFORMS),
/// as krew's os/arch.
const PLATFORMS: [(&str, &str); 5] =
    [("linux", "amd64"), ("linux", "arm64"), ("windows", "amd64"), ("darwin", "amd64"), ("darwin", "arm64")];

/// The archive of a platform.
fn archive_name(os: &str, arch: &str) -> String {
    match os {
        "windows" => format!("kubectl-imagemap_{os}_{arch}.zip"),
        _ => format!("kubectl-imagemap_{os}_{arch}.tar.gz"),
    }
}

/// The plugin binary and kubectl's completion script in a platform's archive.
fn archive_files(os: &str) -> (&'static str, &'static str) {
    match os {
        "windows" => ("kubectl-imagemap.exe", "kubectl_complete-imagemap.cmd"),
        _ => ("kubectl-imagemap", "kubectl_complete-imagemap"),
    }
}

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
#[ignore = "builds every release target (minutes): `make release-test` runs these"]
fn two_release_runs_write_the_same_bytes() {
    let r = release();
    let first = std::fs::read_to_string(r.first.path().join("SHA256SUMS")).expect("first SHA256SUMS");
    let second = std::fs::read_to_string(r.second.path().join("SHA256SUMS")).expect("second SHA256SUMS");
    assert_eq!(first, second, "two runs of make release gave different sums");
    let names: BTreeSet<String> =
        second.lines().filter_map(|l| l.split_whitespace().nth(1)).map(str::to_string).collect();
    let mut expected: BTreeSet<String> =
        ["imagemap-9.8.7.tgz", "imagemap-webhook.digest", "imagemap-webhook.cdx.json", "imagemap.yaml"]
            .into_iter()
            .map(str::to_string)
            .collect();
    expected.extend(PLATFORMS.iter().map(|(os, arch)| archive_name(os, arch)));
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
#[ignore = "builds every release target (minutes): `make release-test` runs these"]
fn a_second_release_of_the_same_source_compiles_nothing() {
    let r = release();
    assert!(r.compiled_again.is_empty(), "the second make release compiled again: {:?}", r.compiled_again);
}

/// Extracts a platform's archive into a new folder.
fn extract(r: &Release, os: &str, arch: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a folder");
    let archive = r.file(&archive_name(os, arch));
    let out = if os == "windows" {
        run(Command::new("unzip").arg("-q").arg(&archive).arg("-d").arg(dir.path()))
    } else {
        run(Command::new("tar").arg("-xzf").arg(&archive).arg("-C").arg(dir.path()))
    };
    assert_ok(&format!("extracting {}", archive.display()), &out);
    dir
}

#[test]
#[ignore = "builds every release target (minutes): `make release-test` runs these"]
fn plugin_archives_hold_the_binary_completion_script_and_license_with_fixed_owners_and_times() {
    let r = release();
    for (os, arch) in PLATFORMS {
        let archive = r.file(&archive_name(os, arch));
        let (binary, complete) = archive_files(os);
        let names = ["LICENSE", binary, complete];
        if os == "windows" {
            // zipinfo: mode, version, system, size, type, method, date, time, name.
            let listing = assert_ok("zipinfo", &run(Command::new("zipinfo").arg(&archive)));
            let entries: Vec<&str> = listing.lines().filter(|l| l.starts_with('-')).collect();
            assert_eq!(entries.len(), 3, "{listing}");
            for (entry, name) in entries.iter().zip(names) {
                assert!(entry.ends_with(&format!(" 80-Jan-01 00:00 {name}")), "name or time: {entry}");
            }
            assert!(entries[1].starts_with("-rwxr-xr-x"), "{listing}");
            continue;
        }
        let listing = assert_ok("tar -tv", &run(Command::new("tar").arg("-tvzf").arg(&archive).arg("--numeric-owner")));
        let entries: Vec<&str> = listing.lines().collect();
        assert_eq!(entries.len(), 3, "{listing}");
        for (entry, name) in entries.iter().zip(names) {
            assert!(entry.ends_with(&format!(" {name}")), "{listing}");
            assert!(entry.contains(" 0/0 ") && entry.contains(" 1970-01-01 "), "owner or time: {entry}");
        }
        assert!(entries[1].starts_with("-rwxr-xr-x") && entries[2].starts_with("-rwxr-xr-x"), "{listing}");
    }
    // The amd64 binary runs here, is static, and knows the release's version.
    let dir = extract(r, "linux", "amd64");
    let binary = dir.path().join("kubectl-imagemap");
    let out = assert_ok("kubectl-imagemap version --client", &run(Command::new(&binary).args(["version", "--client"])));
    assert_eq!(out, format!("Client Version: {VERSION}\n"));
    let file = run(Command::new("file").arg(&binary));
    if file.status.success() {
        let description = text(&file.stdout);
        assert!(description.contains("statically linked") || description.contains("static-pie"), "{description}");
    }
}

/// kubectl's plugin completion: `kubectl imagemap <TAB>` runs `kubectl_complete-imagemap` with the
/// words typed; the script hands them to the plugin beside it as `__complete` arguments.
#[test]
#[ignore = "builds every release target (minutes): `make release-test` runs these"]
fn the_completion_script_passes_the_typed_words_to_the_plugin_beside_it() {
    let r = release();
    let dir = extract(r, "linux", "amd64");
    // A stand-in plugin that echoes its arguments, in place of the real one.
    let plugin = dir.path().join("kubectl-imagemap");
    std::fs::write(&plugin, "#!/bin/sh\nprintf '%s|' \"$@\"\necho :4\n").expect("a stand-in plugin");
    std::fs::set_permissions(&plugin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let out = run(Command::new(dir.path().join("kubectl_complete-imagemap"))
        .args(["set-image", "app", ""])
        .env("PATH", "/usr/bin:/bin"));
    assert_eq!(assert_ok("kubectl_complete-imagemap", &out), "__complete|set-image|app||:4\n");
    let cmd = std::fs::read_to_string(extract(r, "windows", "amd64").path().join("kubectl_complete-imagemap.cmd"))
        .expect("the Windows completion script");
    assert!(cmd.contains("\"%~dp0kubectl-imagemap.exe\" __complete %*\r\n"), "{cmd}");
}

/// What a binary is, from its first bytes: ELF (e_machine), PE (COFF machine, optional header
/// magic, link time stamp) or Mach-O (magic, cputype, filetype).
#[derive(Debug, PartialEq, Eq)]
enum BinaryFormat {
    Elf64 { machine: u16 },
    Pe { machine: u16, pe32_plus: bool, timestamp: u32 },
    MachO64 { cputype: u32, filetype: u32 },
}

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn binary_format(b: &[u8]) -> Option<BinaryFormat> {
    if b.starts_with(b"\x7fELF") && b.get(4) == Some(&2) && b.get(5) == Some(&1) {
        return Some(BinaryFormat::Elf64 { machine: le_u16(b, 18)? });
    }
    if b.starts_with(b"MZ") {
        let pe = le_u32(b, 0x3c)? as usize;
        if b.get(pe..pe + 4)? != b"PE\0\0" {
            return None;
        }
        let coff = pe + 4;
        // The optional header follows the 20-byte COFF header; 0x20b is PE32+.
        return Some(BinaryFormat::Pe {
            machine: le_u16(b, coff)?,
            pe32_plus: le_u16(b, coff + 20)? == 0x20b,
            timestamp: le_u32(b, coff + 4)?,
        });
    }
    if le_u32(b, 0)? == 0xfeed_facf {
        return Some(BinaryFormat::MachO64 { cputype: le_u32(b, 4)?, filetype: le_u32(b, 12)? });
    }
    None
}

/// The format a platform's plugin must have.
fn expected_format(os: &str, arch: &str) -> BinaryFormat {
    const EM_X86_64: u16 = 62;
    const EM_AARCH64: u16 = 183;
    const IMAGE_FILE_MACHINE_AMD64: u16 = 0x8664;
    const CPU_TYPE_X86_64: u32 = 0x0100_0007;
    const CPU_TYPE_ARM64: u32 = 0x0100_000c;
    const MH_EXECUTE: u32 = 2;
    match (os, arch) {
        ("linux", "amd64") => BinaryFormat::Elf64 { machine: EM_X86_64 },
        ("linux", "arm64") => BinaryFormat::Elf64 { machine: EM_AARCH64 },
        // No link time stamp: the same source gives the same bytes.
        ("windows", "amd64") => BinaryFormat::Pe { machine: IMAGE_FILE_MACHINE_AMD64, pe32_plus: true, timestamp: 0 },
        ("darwin", "amd64") => BinaryFormat::MachO64 { cputype: CPU_TYPE_X86_64, filetype: MH_EXECUTE },
        ("darwin", "arm64") => BinaryFormat::MachO64 { cputype: CPU_TYPE_ARM64, filetype: MH_EXECUTE },
        _ => panic!("no format known for {os}/{arch}"),
    }
}

#[test]
#[ignore = "builds every release target (minutes): `make release-test` runs these"]
fn each_plugin_binary_is_an_executable_for_its_platform() {
    let r = release();
    for (os, arch) in PLATFORMS {
        let dir = extract(r, os, arch);
        let bytes = std::fs::read(dir.path().join(archive_files(os).0)).expect("the plugin binary");
        assert_eq!(binary_format(&bytes), Some(expected_format(os, arch)), "{os}/{arch}");
    }
}

/// The dynamic libraries a 64-bit little-endian Mach-O loads (`LC_LOAD_DYLIB`,
/// `LC_LOAD_WEAK_DYLIB`) and whether it carries a code signature (`LC_CODE_SIGNATURE`).
fn macho_load_commands(b: &[u8]) -> Option<(Vec<String>, bool)> {
    const LC_LOAD_DYLIB: u32 = 0xc;
    const LC_LOAD_WEAK_DYLIB: u32 = 0x8000_0018;
    const LC_CODE_SIGNATURE: u32 = 0x1d;
    let count = le_u32(b, 16)?;
    let (mut at, mut dylibs, mut signed) = (32usize, Vec::new(), false);
    for _ in 0..count {
        let (cmd, size) = (le_u32(b, at)?, le_u32(b, at + 4)? as usize);
        match cmd {
            LC_LOAD_DYLIB | LC_LOAD_WEAK_DYLIB => {
                let name = b.get(at + le_u32(b, at + 8)? as usize..at + size)?;
                let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
                dylibs.push(String::from_utf8_lossy(&name[..end]).into_owned());
            }
            LC_CODE_SIGNATURE => signed = true,
            _ => {}
        }
        at += size;
    }
    Some((dylibs, signed))
}

#[test]
#[ignore = "builds every release target (minutes): `make release-test` runs these"]
fn the_macos_plugins_load_only_system_libraries_and_are_signed() {
    let r = release();
    for arch in ["amd64", "arm64"] {
        let dir = extract(r, "darwin", arch);
        let bytes = std::fs::read(dir.path().join("kubectl-imagemap")).expect("the plugin binary");
        let (dylibs, signed) = macho_load_commands(&bytes).expect("Mach-O load commands");
        assert!(dylibs.iter().any(|d| d == "/usr/lib/libSystem.B.dylib"), "darwin/{arch}: {dylibs:?}");
        // No framework: there is no Apple SDK here to link one, and a missing one fails at launch.
        assert!(dylibs.iter().all(|d| d.starts_with("/usr/lib/")), "darwin/{arch} loads {dylibs:?}");
        // Apple silicon runs only signed code; the linker signs ad hoc.
        assert!(signed || arch == "amd64", "darwin/{arch} has no code signature");
    }
}

/// Debian's wine, if installed (`make release-test` installs wine64 when it can).
fn wine() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .flat_map(|d| [d.join("wine64"), d.join("wine")])
        .chain([PathBuf::from("/usr/lib/wine/wine64")])
        .find(|p| p.is_file())
}

/// Whether wine has bcryptprimitives.dll, whose ProcessPrng Rust's std calls on Windows (Debian
/// 12's wine 8.0 does not: it came with wine 9).
fn wine_has_bcryptprimitives() -> bool {
    ["/usr/lib/x86_64-linux-gnu/wine/x86_64-windows", "/usr/lib/wine/x86_64-windows", "/usr/lib64/wine/x86_64-windows"]
        .iter()
        .any(|d| Path::new(d).join("bcryptprimitives.dll").is_file())
}

/// For a wine without it, a bcryptprimitives.dll beside the exe whose ProcessPrng is Windows'
/// RtlGenRandom (advapi32 SystemFunction036), built with the release's MinGW.
fn bcryptprimitives_stand_in(dir: &Path) -> Result<()> {
    let source = dir.join("bcryptprimitives.c");
    std::fs::write(
        &source,
        "#include <windows.h>\n\
         BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);\n\
         BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length) {\n\
           while (length > 0) {\n\
             ULONG chunk = length > 0x10000000 ? 0x10000000 : (ULONG)length;\n\
             if (!SystemFunction036(data, chunk)) return FALSE;\n\
             data += chunk; length -= chunk;\n\
           }\n\
           return TRUE;\n\
         }\n",
    )?;
    std::fs::write(dir.join("bcryptprimitives.def"), "LIBRARY bcryptprimitives.dll\nEXPORTS\nProcessPrng\n")?;
    let out = Command::new("x86_64-w64-mingw32-gcc")
        .args([
            "-O2",
            "-shared",
            "-o",
            "bcryptprimitives.dll",
            "bcryptprimitives.c",
            "bcryptprimitives.def",
            "-ladvapi32",
        ])
        .current_dir(dir)
        .output()
        .context("running x86_64-w64-mingw32-gcc")?;
    ensure!(out.status.success(), "building bcryptprimitives.dll: {}", text(&out.stderr));
    Ok(())
}

#[test]
#[ignore = "builds every release target (minutes): `make release-test` runs these"]
fn the_windows_plugin_prints_its_version_and_help_under_wine() {
    let r = release();
    let Some(wine) = wine() else {
        eprintln!("release: SKIPPED the Windows smoke run: no wine (apt-get install wine64)");
        return;
    };
    let dir = extract(r, "windows", "amd64");
    if !wine_has_bcryptprimitives() {
        bcryptprimitives_stand_in(dir.path()).expect("the bcryptprimitives.dll stand-in");
        eprintln!("release: this wine has no bcryptprimitives.dll: using a stand-in over RtlGenRandom");
    }
    let prefix = tempfile::Builder::new().prefix("imagemap-wine-").tempdir().expect("a WINEPREFIX");
    let exe = dir.path().join("kubectl-imagemap.exe");
    let wine_run = |args: &[&str]| {
        run(Command::new(&wine)
            .arg(&exe)
            .args(args)
            .env("WINEPREFIX", prefix.path())
            .env("WINEDEBUG", "-all")
            .env("WINEDLLOVERRIDES", "mscoree,mshtml=")
            .current_dir(dir.path()))
    };
    let started = Instant::now();
    let out = assert_ok("wine kubectl-imagemap.exe version --client", &wine_run(&["version", "--client"]));
    assert_eq!(out.replace("\r\n", "\n"), format!("Client Version: {VERSION}\n"));
    let help = assert_ok("wine kubectl-imagemap.exe --help", &wine_run(&["--help"]));
    assert!(help.contains("Usage: kubectl imagemap") && help.contains("set-image"), "{help}");
    eprintln!("release: the Windows plugin ran under {} in {:.1?}", wine.display(), started.elapsed());
}

/// The krew manifest names every archive with its platform, sum, binary and files.
#[test]
#[ignore = "builds every release target (minutes): `make release-test` runs these"]
fn the_krew_manifest_lists_each_archive_with_its_platform_sum_bin_and_files() -> Result<()> {
    let r = release();
    let manifest: Value = serde_saphyr::from_str(&std::fs::read_to_string(r.file("imagemap.yaml"))?)?;
    assert_eq!(manifest["spec"]["version"], format!("v{VERSION}"));
    let sums: BTreeSet<(String, String)> = std::fs::read_to_string(r.file("SHA256SUMS"))?
        .lines()
        .filter_map(|l| l.split_once("  ").map(|(sum, name)| (name.to_string(), sum.to_string())))
        .collect();
    let platforms = manifest["spec"]["platforms"].as_array().context("platforms")?;
    assert_eq!(platforms.len(), PLATFORMS.len(), "{manifest}");
    for (os, arch) in PLATFORMS {
        let entry = platforms
            .iter()
            .find(|p| p["selector"]["matchLabels"]["os"] == os && p["selector"]["matchLabels"]["arch"] == arch)
            .with_context(|| format!("no {os}/{arch} entry in {manifest}"))?;
        let archive = archive_name(os, arch);
        let (binary, complete) = archive_files(os);
        let uri = entry["uri"].as_str().context("uri")?;
        assert!(uri.ends_with(&format!("/v{VERSION}/{archive}")), "{uri}");
        let sum = entry["sha256"].as_str().context("sha256")?.to_string();
        assert!(sums.contains(&(archive.clone(), sum)), "{os}/{arch}: the sum is not the archive's");
        assert_eq!(entry["bin"], binary);
        let files: Vec<&str> =
            entry["files"].as_array().context("files")?.iter().filter_map(|f| f["from"].as_str()).collect();
        assert_eq!(files, [binary, complete, "LICENSE"], "{os}/{arch}");
    }
    Ok(())
}

#[test]
#[ignore = "builds every release target (minutes): `make release-test` runs these"]
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
#[ignore = "builds every release target (minutes): `make release-test` runs these"]
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
    // The same chart, published as an OCI artifact in the release's registry.
    let oci = format!("oci://{}/charts/imagemap", r.registry.address());
    let pulled = plane.helm(["template", "imagemap-rel", &oci, "--version", VERSION, "--plain-http", "-n", &ns]);
    let pulled = assert_ok("helm template oci://", &pulled);
    assert!(pulled.contains(&image), "no `{image}` in the chart pulled from {oci}");
    assert!(pulled.contains(&format!("app.kubernetes.io/version: \"{VERSION}\"")), "{oci}");
    let started = Instant::now();
    assert_ok(
        "helm install",
        &plane.helm(["install", "imagemap-rel", &oci, "--version", VERSION, "--plain-http", "-n", &ns]),
    );
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
#[ignore = "builds every release target (minutes): `make release-test` runs these"]
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
#[ignore = "builds every release target (minutes): `make release-test` runs these"]
fn the_sbom_names_the_webhook_dependencies_and_is_attached_to_the_image() -> Result<()> {
    let r = release();
    let sbom_text = std::fs::read_to_string(r.file("imagemap-webhook.cdx.json"))?;
    let checkout = workspace_root().display().to_string();
    assert!(!sbom_text.contains(&checkout), "the SBOM names the checkout's folder {checkout}");
    let sbom: Value = serde_json::from_str(&sbom_text)?;
    assert_eq!(sbom["bomFormat"], "CycloneDX");
    assert_eq!(sbom["specVersion"], "1.5");
    let root = &sbom["metadata"]["component"];
    assert_eq!(root["name"], "imagemap-webhook");
    assert_eq!(root["version"], VERSION);
    let properties = sbom["metadata"]["properties"].as_array().context("metadata.properties")?;
    assert!(
        properties.iter().any(|p| p["name"] == "imagemap:image-index" && p["value"] == r.digest().as_str()),
        "the SBOM does not name the image index: {properties:?}"
    );
    let components = sbom["components"].as_array().context("components")?;
    let names: BTreeSet<&str> = components.iter().filter_map(|p| p["name"].as_str()).collect();
    for wanted in ["imagemap-core", "kube", "rustls", "axum", "tokio", "ring"] {
        assert!(names.contains(wanted), "the SBOM does not name {wanted}");
    }
    // Test-only crates, other binaries, build-time crates (cc builds ring's C code) and crates
    // only other targets link.
    for unwanted in ["criterion", "proptest", "imagemap-e2e", "kubectl-imagemap", "cc", "windows-sys"] {
        assert!(!names.contains(unwanted), "the SBOM names {unwanted}, which the webhook does not link");
    }
    // crates.io sums, as Cargo.lock has them.
    let ring = components.iter().find(|c| c["name"] == "ring").context("ring")?;
    let lock = std::fs::read_to_string(workspace_root().join("Cargo.lock"))?;
    let sum = ring["hashes"][0]["content"].as_str().context("ring's sum")?;
    assert!(lock.contains(&format!("checksum = \"{sum}\"")), "ring's sum {sum} is not Cargo.lock's");
    eprintln!("release: the SBOM has {} components", components.len());

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
        .find(|m| m["artifactType"] == "application/vnd.cyclonedx+json")
        .with_context(|| format!("no CycloneDX referrer in {index}"))?;
    let digest = sbom_ref["digest"].as_str().context("digest")?;
    let manifest: Value = serde_json::from_str(
        &r.registry.crane_ok(["manifest", &format!("{}/imagemap-webhook@{digest}", r.registry.address())])?,
    )?;
    let layer = manifest["layers"][0]["digest"].as_str().context("the SBOM layer")?;
    let blob = r.registry.crane_ok(["blob", &format!("{}/imagemap-webhook@{layer}", r.registry.address())])?;
    assert_eq!(blob, std::fs::read_to_string(r.file("imagemap-webhook.cdx.json"))?, "the attached SBOM differs");
    Ok(())
}
