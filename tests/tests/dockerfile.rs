//! The Dockerfile and `scripts/image.sh`, without a container engine.
//!
//! The Dockerfile's build context: its build stage's COPY lines are replayed into a temporary
//! folder (exactly the paths they name), and there the workspace must resolve (`cargo metadata
//! --locked --offline`: every workspace member and every target file a manifest names), every
//! file a copied Rust source includes (`include_str!`, `include_bytes!`, `include!`) and every
//! repository file a RUN line names must be present. The image script: the same binary gives
//! the same digest whatever its time stamps and modes, and the Dockerfile's final stage has the
//! user, port and entrypoint of the script's image config.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use imagemap_e2e::binaries::workspace_root;
use serde_json::Value;

/// One instruction of the Dockerfile: its keyword (upper case) and the rest of the line, with
/// continuation lines joined.
#[derive(Debug, Clone)]
struct Instruction {
    keyword: String,
    args: String,
}

/// The instructions of `text`, split into stages (one per FROM, which opens its stage).
fn stages(text: &str) -> Vec<Vec<Instruction>> {
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if trimmed.starts_with('#') {
            // A comment inside a continued instruction.
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                logical.push(std::mem::take(&mut current));
            }
        }
    }
    if !current.is_empty() {
        logical.push(current);
    }
    let mut stages: Vec<Vec<Instruction>> = Vec::new();
    for line in logical {
        let (keyword, args) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let instruction = Instruction { keyword: keyword.to_ascii_uppercase(), args: args.trim().to_string() };
        if instruction.keyword == "FROM" || stages.is_empty() {
            stages.push(Vec::new());
        }
        if let Some(stage) = stages.last_mut() {
            stage.push(instruction);
        }
    }
    stages
}

fn dockerfile() -> Result<String> {
    let path = workspace_root().join("Dockerfile");
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// The stage that builds the binary: the one whose RUN lines run cargo or the image script.
fn build_stage(stages: &[Vec<Instruction>]) -> Result<&[Instruction]> {
    let builds: Vec<&Vec<Instruction>> = stages
        .iter()
        .filter(|s| s.iter().any(|i| i.keyword == "RUN" && (i.args.contains("cargo ") || i.args.contains("image.sh"))))
        .collect();
    match builds.as_slice() {
        [one] => Ok(one),
        other => bail!("expected one stage that builds the binary, found {}", other.len()),
    }
}

/// COPY or ADD arguments: the flags (`--from=...`) and the paths (sources, then destination).
fn copy_args(args: &str) -> Result<(Vec<String>, Vec<String>)> {
    let words: Vec<String> = if args.starts_with('[') {
        serde_json::from_str(args).with_context(|| format!("COPY {args}"))?
    } else {
        args.split_whitespace().map(str::to_string).collect()
    };
    let (flags, paths): (Vec<String>, Vec<String>) = words.into_iter().partition(|w| w.starts_with("--"));
    ensure!(paths.len() >= 2, "COPY {args}: needs a source and a destination");
    Ok((flags, paths))
}

/// `base` joined with `path` (absolute or relative), with `.` and `..` resolved, as an absolute
/// path inside the image.
fn image_path(base: &Path, path: &str) -> PathBuf {
    let mut out = PathBuf::from("/");
    let joined = if path.starts_with('/') { PathBuf::from(path) } else { base.join(path) };
    for component in joined.components() {
        match component {
            Component::Normal(c) => out.push(c),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// `root` (a folder standing for the image's `/`) and an absolute image path: the host path.
fn host_path(root: &Path, image: &Path) -> PathBuf {
    root.join(image.strip_prefix("/").unwrap_or(image))
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    if from.is_dir() {
        std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
    } else {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    Ok(())
}

/// The build stage replayed into `root`: its local COPY and ADD lines copy from the repository
/// as Docker does (a folder's contents into the destination; a file into a destination ending
/// in `/` or into an existing folder, else to the destination's name). Returns the WORKDIR of the
/// build stage's last RUN and the RUN lines.
fn replay(stage: &[Instruction], context: &Path, root: &Path) -> Result<(PathBuf, Vec<String>)> {
    let mut workdir = PathBuf::from("/");
    let mut build_dir = workdir.clone();
    let mut runs = Vec::new();
    for instruction in stage {
        match instruction.keyword.as_str() {
            "WORKDIR" => workdir = image_path(&workdir, &instruction.args),
            "RUN" => {
                build_dir = workdir.clone();
                runs.push(instruction.args.clone());
            }
            "COPY" | "ADD" => {
                let (flags, paths) = copy_args(&instruction.args)?;
                if flags.iter().any(|f| f.starts_with("--from")) {
                    continue;
                }
                let (dest, sources) = paths.split_last().context("no destination")?;
                let dest_image = image_path(&workdir, dest);
                let into_folder = dest.ends_with('/') || sources.len() > 1;
                for source in sources {
                    ensure!(!source.contains(['*', '?', '[']), "COPY {source}: patterns are not replayed by this test");
                    ensure!(!source.contains("://"), "ADD {source}: URLs are not replayed by this test");
                    let from = context.join(source);
                    ensure!(from.exists(), "COPY {source}: not in the repository");
                    let to_image = if from.is_dir() {
                        dest_image.clone()
                    } else if into_folder || host_path(root, &dest_image).is_dir() {
                        dest_image.join(from.file_name().context("a file without a name")?)
                    } else {
                        dest_image.clone()
                    };
                    copy_tree(&from, &host_path(root, &to_image))?;
                }
            }
            _ => {}
        }
    }
    Ok((build_dir, runs))
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}

/// `cargo metadata --locked --offline --no-deps` in `dir`.
fn metadata(dir: &Path) -> Result<Value> {
    let output = Command::new(cargo())
        .args(["metadata", "--locked", "--offline", "--no-deps", "--format-version", "1"])
        .current_dir(dir)
        .output()
        .context("running cargo metadata")?;
    if !output.status.success() {
        bail!("cargo metadata failed in {}:\n{}", dir.display(), String::from_utf8_lossy(&output.stderr));
    }
    serde_json::from_slice(&output.stdout).context("cargo metadata's JSON")
}

/// The workspace members' folders, relative to the workspace root, and their package names.
fn members(meta: &Value) -> Result<BTreeSet<(String, PathBuf)>> {
    let root = PathBuf::from(meta["workspace_root"].as_str().context("no workspace_root")?);
    let packages = meta["packages"].as_array().context("no packages")?;
    packages
        .iter()
        .map(|p| {
            let name = p["name"].as_str().context("a package without a name")?.to_string();
            let manifest = PathBuf::from(p["manifest_path"].as_str().context("no manifest_path")?);
            let dir = manifest.parent().context("a manifest without a folder")?;
            Ok((name, dir.strip_prefix(&root).unwrap_or(dir).to_path_buf()))
        })
        .collect()
}

/// Every `.rs` file under `dir`, skipping build output and hidden folders.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(&path, out)?;
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// The string literals given to `include_str!`, `include_bytes!` and `include!` in `source`.
fn included(source: &str) -> Vec<String> {
    let mut out = Vec::new();
    for mac in ["include_str!(", "include_bytes!(", "include!("] {
        let mut rest = source;
        while let Some(at) = rest.find(mac) {
            // A macro call, not the name inside a string or a longer identifier.
            let call = rest[..at].chars().next_back().is_none_or(|c| !(c.is_alphanumeric() || "_\"".contains(c)));
            rest = &rest[at + mac.len()..];
            if !call {
                continue;
            }
            let arg = rest.trim_start();
            if let Some(literal) = arg.strip_prefix('"') {
                if let Some(end) = literal.find('"') {
                    out.push(literal[..end].to_string());
                }
            }
        }
    }
    out
}

/// What the replayed build context lacks; empty when it has everything.
fn context_problems(dockerfile: &str) -> Result<Vec<String>> {
    let repo = workspace_root();
    let stages = stages(dockerfile);
    let stage = build_stage(&stages)?;
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().join("image");
    std::fs::create_dir_all(&root)?;
    let (build_dir, runs) = replay(stage, &repo, &root)?;
    let build_dir = host_path(&root, &build_dir);
    let mut problems = Vec::new();

    // The workspace resolves: every member is there, with the files its manifest names.
    match metadata(&build_dir) {
        Ok(copied) => {
            let want = members(&metadata(&repo)?)?;
            let have = members(&copied)?;
            for (name, dir) in want.difference(&have) {
                problems.push(format!("workspace member {name} ({}) is not in the context", dir.display()));
            }
        }
        Err(e) => problems.push(format!("{e:#}")),
    }

    // Files included by copied sources.
    let mut sources = Vec::new();
    for (_, dir) in members(&metadata(&repo)?)? {
        rust_files(&repo.join(&dir), &mut sources)?;
    }
    for source in sources {
        let relative = source.strip_prefix(&repo)?;
        if !build_dir.join(relative).is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&source)?;
        for include in included(&text) {
            let target = relative.parent().unwrap_or(Path::new("")).join(&include);
            if !build_dir.join(&target).exists() {
                problems.push(format!("{} includes {include}, which is not in the context", relative.display()));
            }
        }
    }

    // Repository files that RUN lines name (scripts), other than build output.
    for run in runs {
        for word in run.split(|c: char| c.is_whitespace() || "\"'`;&|()$<>=".contains(c)) {
            if word.is_empty() || word.starts_with(['-', '/']) || word.starts_with("target/") {
                continue;
            }
            if repo.join(word).is_file() && !build_dir.join(word).is_file() {
                problems.push(format!("RUN names {word}, which is not in the context"));
            }
            if build_dir.join(word).is_file() && word.ends_with(".sh") {
                for sourced in sourced_scripts(&std::fs::read_to_string(repo.join(word))?) {
                    if !build_dir.join(&sourced).is_file() {
                        problems.push(format!("{word} sources {sourced}, which is not in the context"));
                    }
                }
            }
        }
    }
    Ok(problems)
}

/// The files a shell script sources (`. path` or `source path` at the start of a line), relative
/// to the repository, as scripts/image.sh does after changing to it.
fn sourced_scripts(script: &str) -> Vec<String> {
    script
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix(". ").or_else(|| l.trim_start().strip_prefix("source ")))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn dockerfile_context_has_everything_the_build_needs() -> Result<()> {
    let problems = context_problems(&dockerfile()?)?;
    ensure!(problems.is_empty(), "the Dockerfile's build context is incomplete:\n  {}", problems.join("\n  "));
    Ok(())
}

/// The check itself: the same Dockerfile without one of its COPY lines must fail it.
#[test]
fn a_missing_member_or_script_is_caught() -> Result<()> {
    let text = dockerfile()?;
    for dropped in ["COPY bench ", "COPY scripts/image.sh "] {
        ensure!(text.contains(dropped), "the Dockerfile has no `{dropped}` line");
        let without: String =
            text.lines().filter(|l| !l.trim_start().starts_with(dropped)).map(|l| format!("{l}\n")).collect();
        let problems = context_problems(&without)?;
        ensure!(!problems.is_empty(), "a Dockerfile without `{dropped}` passed the check");
    }
    // The script's own build environment (scripts/build-env.sh, sourced) is needed too.
    let copy = text.lines().find(|l| l.starts_with("COPY scripts/image.sh ")).context("no COPY of scripts/image.sh")?;
    let without_env = text.replace(copy, "COPY scripts/image.sh scripts/image.sh");
    ensure!(without_env != text, "the Dockerfile does not copy scripts/build-env.sh with scripts/image.sh");
    let problems = context_problems(&without_env)?;
    ensure!(
        problems.iter().any(|p| p.contains("sources scripts/build-env.sh")),
        "a Dockerfile without scripts/build-env.sh passed the check: {problems:?}"
    );
    Ok(())
}

/// Runs `scripts/image.sh layout DIR` for `binary`; returns the manifest digest it prints.
fn layout(binary: &Path, dir: &Path) -> Result<String> {
    let output = Command::new("bash")
        .arg(workspace_root().join("scripts/image.sh"))
        .arg("layout")
        .arg(dir)
        .env("IMAGEMAP_WEBHOOK_BINARY", binary)
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .context("running scripts/image.sh")?;
    ensure!(output.status.success(), "scripts/image.sh layout failed: {}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let digest = stdout.lines().last().context("no digest printed")?.trim().to_string();
    let index: Value = serde_json::from_slice(&std::fs::read(dir.join("index.json"))?)?;
    ensure!(index["manifests"][0]["digest"] == digest.as_str(), "index.json does not name {digest}");
    Ok(digest)
}

/// A blob of the layout at `dir`, by digest.
fn blob(dir: &Path, digest: &str) -> Result<Vec<u8>> {
    let hex = digest.strip_prefix("sha256:").context("not a sha256 digest")?;
    Ok(std::fs::read(dir.join("blobs/sha256").join(hex))?)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

#[test]
fn image_digest_depends_only_on_the_binary_and_matches_the_dockerfile() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    // Two copies of the same bytes, with other modes and times; then other bytes.
    let first = tmp.path().join("first/imagemap-webhook");
    let second = tmp.path().join("second/other-name");
    for path in [&first, &second] {
        std::fs::create_dir_all(path.parent().context("no parent")?)?;
        std::fs::write(path, b"\x7fELF not really a binary")?;
    }
    set_mode(&first, 0o700)?;
    set_mode(&second, 0o644)?;
    std::thread::sleep(std::time::Duration::from_millis(1100));
    std::fs::write(&second, b"\x7fELF not really a binary")?;

    let a = layout(&first, &tmp.path().join("layout-a"))?;
    let b = layout(&second, &tmp.path().join("layout-b"))?;
    ensure!(a == b, "the same binary gave two digests: {a} and {b}");
    std::fs::write(&second, b"\x7fELF another binary")?;
    let c = layout(&second, &tmp.path().join("layout-c"))?;
    ensure!(a != c, "another binary gave the same digest");

    // The config, and the Dockerfile's final stage against it.
    let dir = tmp.path().join("layout-a");
    let manifest: Value = serde_json::from_slice(&blob(&dir, &a)?)?;
    let config: Value =
        serde_json::from_slice(&blob(&dir, manifest["config"]["digest"].as_str().context("no config digest")?)?)?;
    ensure!(config["os"] == "linux" && config["architecture"] == "amd64", "platform: {config}");
    let entrypoint = &config["config"]["Entrypoint"];
    let user = config["config"]["User"].as_str().context("no User")?;
    ensure!(user == "65532:65532", "user {user}");
    let ports: Vec<&String> = config["config"]["ExposedPorts"].as_object().context("no ExposedPorts")?.keys().collect();
    ensure!(ports == ["8443/tcp"], "ports {ports:?}");

    let text = dockerfile()?;
    let stages = stages(&text);
    let last = stages.last().context("no stage")?;
    let find =
        |keyword: &str| last.iter().rev().find(|i| i.keyword == keyword).map(|i| i.args.clone()).unwrap_or_default();
    ensure!(find("USER") == user, "Dockerfile USER {} against {user}", find("USER"));
    ensure!(find("EXPOSE") == "8443", "Dockerfile EXPOSE {}", find("EXPOSE"));
    let docker_entrypoint: Value = serde_json::from_str(&find("ENTRYPOINT")).context("ENTRYPOINT in exec form")?;
    ensure!(docker_entrypoint == *entrypoint, "Dockerfile ENTRYPOINT {docker_entrypoint} against {entrypoint}");
    ensure!(
        build_stage(&stages)?.iter().any(|i| i.keyword == "RUN" && i.args.contains("scripts/image.sh binary")),
        "the Dockerfile does not build the binary with `scripts/image.sh binary` (the image's build)"
    );
    Ok(())
}
