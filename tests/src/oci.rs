//! Container images without a daemon: one uncompressed layer holding Debian's static busybox
//! (`/bin/busybox` from `busybox-static`, every applet a symlink in `/bin`) plus the files a test
//! gives, an OCI config and manifest, written as an OCI image layout and pushed with
//! `crane push`. Deterministic: tar entries sorted, mtime 0, uid/gid 0, JSON with sorted keys;
//! the same input gives the same digest (which is computed here, and checked against the one
//! the registry reports).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::registry::Registry;

/// Overrides where the static busybox is read from (default `/bin/busybox`).
pub const BUSYBOX_ENV: &str = "IMAGEMAP_BUSYBOX";

/// The pause (sandbox) image's repository and tag in the local registry.
pub const PAUSE_REPOSITORY: &str = "imagemap-e2e/pause";
/// See [`PAUSE_REPOSITORY`].
pub const PAUSE_TAG: &str = "1";

const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// What a container runs: the image config's `Entrypoint` and `Cmd`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Run {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
}

impl Run {
    /// `Entrypoint: ["/bin/sh", "-c", script]`.
    pub fn shell(script: &str) -> Run {
        Run { entrypoint: vec!["/bin/sh".into(), "-c".into(), script.into()], cmd: vec![] }
    }
}

/// A built image: its bytes and digests, before or after a push.
#[derive(Clone, Debug)]
pub struct Image {
    /// `sha256:...` of the manifest: the image's digest.
    pub digest: String,
    /// The manifest JSON, byte for byte as pushed.
    pub manifest: Vec<u8>,
    /// The config JSON.
    pub config: Vec<u8>,
    /// The (uncompressed) layer tar.
    pub layer: Vec<u8>,
}

/// Builds, pushes as `REGISTRY/repo:tag` and returns the digest (`sha256:...`) of an image made
/// of busybox and `files` (`(absolute path, contents)`; mode 0755 if the contents start with
/// `#!`, 0644 otherwise; parent folders are created), running `run`.
pub fn busybox_image(registry: &Registry, repo: &str, tag: &str, files: &[(&str, &str)], run: &Run) -> Result<String> {
    let image = build(files, run)?;
    push(registry, &image, repo, tag)?;
    Ok(image.digest)
}

/// The sandbox ("pause") image every Pod's sandbox runs: busybox, waiting for SIGTERM as PID 1.
/// Pushed as [`PAUSE_REPOSITORY`]:[`PAUSE_TAG`]; returns its digest.
pub fn pause_image(registry: &Registry) -> Result<String> {
    busybox_image(registry, PAUSE_REPOSITORY, PAUSE_TAG, &[], &pause_run())
}

/// `REGISTRY/PAUSE_REPOSITORY:PAUSE_TAG`.
pub fn pause_reference(registry: &Registry) -> String {
    format!("{}/{PAUSE_REPOSITORY}:{PAUSE_TAG}", registry.address())
}

fn pause_run() -> Run {
    // PID 1 ignores signals it has no handler for: trap them, and wait in a builtin so that the
    // trap runs at once.
    Run::shell("trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done")
}

/// Builds the image in memory (no push).
pub fn build(files: &[(&str, &str)], run: &Run) -> Result<Image> {
    let busybox_path = busybox_path();
    let busybox = std::fs::read(&busybox_path).with_context(|| {
        format!("reading {} (apt-get install busybox-static, or set {BUSYBOX_ENV})", busybox_path.display())
    })?;
    if has_interpreter(&busybox) {
        bail!("{} is dynamically linked; apt-get install busybox-static", busybox_path.display());
    }
    let applets = applets(&busybox_path)?;
    let layer = layer_tar(&busybox, &applets, files)?;
    let layer_digest = sha256(&layer);
    let config = serde_json::to_vec(&json!({
        "architecture": oci_architecture(),
        "os": "linux",
        "config": {
            "Env": ["PATH=/bin"],
            "Entrypoint": run.entrypoint,
            "Cmd": run.cmd,
            "WorkingDir": "/",
        },
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
        "history": [{ "created_by": "imagemap-e2e oci::build" }],
    }))?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": { "mediaType": CONFIG_MEDIA_TYPE, "digest": sha256(&config), "size": config.len() },
        "layers": [{ "mediaType": LAYER_MEDIA_TYPE, "digest": layer_digest, "size": layer.len() }],
    }))?;
    Ok(Image { digest: sha256(&manifest), manifest, config, layer })
}

/// Pushes `image` as `REGISTRY/repo:tag` (an OCI layout in a temporary folder, `crane push`),
/// and checks that the registry reports the same digest.
pub fn push(registry: &Registry, image: &Image, repo: &str, tag: &str) -> Result<()> {
    let layout = tempfile::Builder::new().prefix("imagemap-oci-").tempdir()?;
    let blobs = layout.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    for blob in [&image.layer, &image.config, &image.manifest] {
        let digest = sha256(blob);
        std::fs::write(blobs.join(digest.trim_start_matches("sha256:")), blob)?;
    }
    std::fs::write(layout.path().join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{ "mediaType": MANIFEST_MEDIA_TYPE, "digest": image.digest, "size": image.manifest.len() }],
    });
    std::fs::write(layout.path().join("index.json"), serde_json::to_vec(&index)?)?;
    let reference = format!("{}/{repo}:{tag}", registry.address());
    let pushed = registry
        .crane_ok(["push".as_ref(), layout.path().as_os_str(), reference.as_ref()])
        .with_context(|| format!("pushing {reference}"))?;
    // `crane push` prints REF@sha256:...
    let reported = pushed.trim().rsplit_once('@').map(|(_, d)| d.to_string()).unwrap_or_default();
    if reported != image.digest {
        bail!("pushed {reference}: the registry says {reported:?}, the manifest's digest is {}", image.digest);
    }
    Ok(())
}

fn busybox_path() -> PathBuf {
    std::env::var_os(BUSYBOX_ENV).filter(|v| !v.is_empty()).map_or_else(|| PathBuf::from("/bin/busybox"), PathBuf::from)
}

/// Whether a 64-bit little-endian ELF file asks for a dynamic loader (has a PT_INTERP program
/// header): a dynamically linked busybox would not run in an image without libc.
fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let read = |at: usize, n: usize| -> Option<u64> {
        let bytes = elf.get(at..at + n)?;
        Some(bytes.iter().rev().fold(0u64, |v, &b| (v << 8) | u64::from(b)))
    };
    if elf.get(..4) != Some(b"\x7fELF".as_slice()) || elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return false; // not a 64-bit little-endian ELF: let the container say what is wrong
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (read(0x20, 8), read(0x36, 2), read(0x38, 2)) else {
        return false;
    };
    (0..phnum)
        .any(|i| usize::try_from(phoff + i * phentsize).ok().and_then(|at| read(at, 4)) == Some(u64::from(PT_INTERP)))
}

/// The applet names busybox was built with (`busybox --list`), sorted.
fn applets(busybox: &Path) -> Result<Vec<String>> {
    let output =
        Command::new(busybox).arg("--list").output().with_context(|| format!("{} --list", busybox.display()))?;
    if !output.status.success() {
        bail!("{} --list failed", busybox.display());
    }
    let mut names: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|n| !n.is_empty() && *n != "busybox" && !n.contains('/'))
        .map(String::from)
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// The go architecture name of this machine.
fn oci_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

/// `sha256:HEX` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut hex = String::with_capacity(71);
    hex.push_str("sha256:");
    for b in digest.as_ref() {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// An entry of the layer.
enum Entry<'a> {
    Dir(u32),
    File(u32, &'a [u8]),
    Symlink(&'a str),
}

/// The layer: folders `bin`, `etc`, `tmp` (1777), `/bin/busybox`, applet symlinks, a minimal
/// `/etc/passwd` and `/etc/group`, and `files` (which win over everything else).
fn layer_tar(busybox: &[u8], applets: &[String], files: &[(&str, &str)]) -> Result<Vec<u8>> {
    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
    const GROUP: &str = "root:x:0:\nnobody:x:65534:\n";
    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    for dir in ["bin", "etc", "root"] {
        entries.insert(dir.into(), Entry::Dir(0o755));
    }
    entries.insert("tmp".into(), Entry::Dir(0o1777));
    entries.insert("bin/busybox".into(), Entry::File(0o755, busybox));
    for applet in applets {
        entries.insert(format!("bin/{applet}"), Entry::Symlink("busybox"));
    }
    entries.insert("etc/passwd".into(), Entry::File(0o644, PASSWD.as_bytes()));
    entries.insert("etc/group".into(), Entry::File(0o644, GROUP.as_bytes()));
    for (path, contents) in files {
        let path = path.trim_start_matches('/');
        if path.is_empty() || path.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            bail!("bad file path {path:?} for an image");
        }
        let mut parent = String::new();
        for component in path.split('/').collect::<Vec<_>>().split_last().map(|(_, p)| p).unwrap_or_default() {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(component);
            entries.entry(parent.clone()).or_insert(Entry::Dir(0o755));
        }
        let mode = if contents.starts_with("#!") { 0o755 } else { 0o644 };
        entries.insert(path.to_string(), Entry::File(mode, contents.as_bytes()));
    }
    let mut tar = Vec::with_capacity(busybox.len() + 512 * (entries.len() + 4));
    for (path, entry) in &entries {
        match entry {
            Entry::Dir(mode) => tar_entry(&mut tar, &format!("{path}/"), *mode, b'5', "", &[])?,
            Entry::File(mode, data) => tar_entry(&mut tar, path, *mode, b'0', "", data)?,
            Entry::Symlink(target) => tar_entry(&mut tar, path, 0o777, b'2', target, &[])?,
        }
    }
    tar.extend_from_slice(&[0u8; 1024]);
    Ok(tar)
}

/// Appends one ustar entry (header, data, padding to 512 bytes).
fn tar_entry(tar: &mut Vec<u8>, name: &str, mode: u32, kind: u8, link: &str, data: &[u8]) -> Result<()> {
    if name.len() > 100 || link.len() > 100 {
        bail!("tar name too long: {name}");
    }
    let mut header = [0u8; 512];
    header[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut header[100..108], u64::from(mode));
    octal(&mut header[108..116], 0); // uid
    octal(&mut header[116..124], 0); // gid
    octal(&mut header[124..136], data.len() as u64);
    octal(&mut header[136..148], 0); // mtime
    header[148..156].copy_from_slice(b"        "); // checksum, as spaces while summing
    header[156] = kind;
    header[157..157 + link.len()].copy_from_slice(link.as_bytes());
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    header[265..269].copy_from_slice(b"root");
    header[297..301].copy_from_slice(b"root");
    let sum: u64 = header.iter().map(|&b| u64::from(b)).sum();
    let checksum = format!("{sum:06o}\0 ");
    header[148..156].copy_from_slice(checksum.as_bytes());
    tar.extend_from_slice(&header);
    tar.extend_from_slice(data);
    let pad = (512 - data.len() % 512) % 512;
    tar.extend(std::iter::repeat_n(0u8, pad));
    Ok(())
}

/// Writes `value` as zero-padded octal with a trailing NUL, filling `field`.
fn octal(field: &mut [u8], value: u64) {
    let width = field.len() - 1;
    let digits = format!("{value:0width$o}");
    field[..width].copy_from_slice(&digits.as_bytes()[digits.len() - width..]);
    field[width] = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_input_gives_the_same_digest() {
        if !busybox_path().is_file() {
            eprintln!("no busybox, skipping");
            return;
        }
        let files = [("/srv/marker", "hello\n"), ("/srv/run.sh", "#!/bin/sh\necho hi\n")];
        let a = build(&files, &Run::shell("cat /srv/marker")).expect("build");
        let b = build(&files, &Run::shell("cat /srv/marker")).expect("build");
        assert_eq!(a.digest, b.digest);
        assert!(a.digest.starts_with("sha256:") && a.digest.len() == 71);
        let c = build(&[("/srv/marker", "other\n")], &Run::shell("cat /srv/marker")).expect("build");
        assert_ne!(a.digest, c.digest);
    }

    #[test]
    fn a_dynamic_executable_is_told_from_a_static_one() {
        let sh = std::fs::read("/bin/sh").expect("/bin/sh");
        assert!(has_interpreter(&sh), "/bin/sh is dynamically linked");
        assert!(!has_interpreter(b"#!/bin/sh\n"));
    }

    #[test]
    fn tar_headers_have_valid_checksums_and_sorted_names() {
        let mut tar = Vec::new();
        tar_entry(&mut tar, "a/", 0o755, b'5', "", &[]).expect("dir");
        tar_entry(&mut tar, "a/b", 0o644, b'0', "", b"xyz").expect("file");
        assert_eq!(tar.len(), 512 + 512 + 512);
        let header = &tar[512..1024];
        let stored = u64::from_str_radix(std::str::from_utf8(&header[148..154]).expect("utf8"), 8).expect("octal");
        let sum: u64 =
            header.iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { 32 } else { u64::from(b) }).sum();
        assert_eq!(stored, sum);
        assert_eq!(&header[124..135], b"00000000003");
    }
}
