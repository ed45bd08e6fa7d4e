//! `kubectl imagemap build NAME -- COMMAND...`: one step from source to the map's status. Names
//! the target like Tilt (DESIGN §9c), runs COMMAND with `EXPECTED_REF` and friends, asks the
//! registry for the pushed manifest's digest and writes the status pinned by it, with the time
//! the build started. A failed COMMAND changes nothing and its exit code is the plugin's.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

use anyhow::{anyhow, bail, Context, Result};
use imagemap_core::reference::Reference;
use imagemap_core::registry::{build_target, BuildTarget, LocalRegistryHosting};
use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};

use super::validate_reference;
use crate::cli::{BuildArgs, Global};
use crate::client::Cluster;

/// The environment COMMAND gets.
pub fn build_env(target: &BuildTarget, tag: &str) -> Vec<(&'static str, String)> {
    vec![
        ("EXPECTED_REF", format!("{}:{tag}", target.local_name())),
        ("EXPECTED_REGISTRY", target.host.clone()),
        ("EXPECTED_IMAGE", target.image.clone()),
        ("EXPECTED_TAG", tag.to_string()),
    ]
}

/// A fresh tag, `tilt-` and 16 hex digits (Tilt's shape), from the clock and a random seed.
pub fn fresh_tag() -> String {
    let mut h = RandomState::new().build_hasher();
    h.write_i128(Timestamp::now().as_nanosecond());
    h.write_u32(std::process::id());
    format!("tilt-{:016x}", h.finish())
}

/// `reference` without its digest, then `@digest`: `name[:tag]@digest`.
pub fn pinned(reference: &Reference, digest: &str) -> String {
    match reference.tag() {
        Some(tag) => format!("{}:{tag}@{digest}", reference.familiar_name()),
        None => format!("{}@{digest}", reference.familiar_name()),
    }
}

/// The status for a build of `pushed` (as pushed from this machine) with `digest`: every image
/// pinned; `image`/`imageFromCluster` under the runtime's host when `pushed` is under `host`.
pub fn build_status(pushed: &Reference, digest: &str, registry: &LocalRegistryHosting, started: Timestamp) -> Value {
    let local = pinned(pushed, digest);
    let cluster =
        Reference::parse(&local).ok().and_then(|r| registry.runtime_name_of(&r)).unwrap_or_else(|| local.clone());
    json!({"status": {
        "image": cluster,
        "imageFromCluster": cluster,
        "imageFromLocal": local,
        "buildStartTime": format!("{started:.6}"),
    }})
}

/// The registry to build into: `--registry` (with the advertised runtime host when it is the
/// advertised host), else the advertised one.
fn choose_registry(flag: Option<&str>, advertised: Option<LocalRegistryHosting>) -> Result<LocalRegistryHosting> {
    match (flag, advertised) {
        (Some(host), Some(adv)) if adv.host == host => Ok(adv),
        (Some(host), _) => {
            imagemap_core::registry::validate_host("--registry", host)?;
            Ok(LocalRegistryHosting { host: host.to_string(), ..Default::default() })
        }
        (None, Some(adv)) => Ok(adv),
        (None, None) => bail!(
            "the cluster advertises no registry to build into: pass --registry HOST (e.g. localhost:5000) or \
             advertise one with `{}`",
            super::registry::SET_HINT
        ),
    }
}

/// Runs `build`.
pub async fn run(global: &Global, args: &BuildArgs, out: &mut dyn std::io::Write) -> Result<()> {
    super::write(out, &text(global, args).await?)
}

/// What `run` writes.
async fn text(global: &Global, args: &BuildArgs) -> Result<String> {
    if let Some(s) = &args.selector {
        validate_reference("--selector", s)?;
    }
    if let Some(r) = &args.registry {
        imagemap_core::registry::validate_host("--registry", r)?;
    }
    let cluster = Cluster::connect(global).await?;
    let what = format!("imagemap {:?}", args.name);
    let existing = cluster.maps().get_opt(&args.name).await.map_err(|e| cluster.explain_error(e, &what))?;
    let selector = match (&existing, &args.selector) {
        (Some(map), Some(s)) if Reference::parse(s).ok() != Reference::parse(&map.spec.selector).ok() => bail!(
            "imagemap {:?} selects {:?}, not {s:?}: drop --selector, or use another map name",
            args.name,
            map.spec.selector
        ),
        (Some(map), _) => map.spec.selector.clone(),
        (None, _) if !args.create => bail!(
            "imagemap {:?} not found in namespace {:?}: pass --create (its selector: --selector REF, default {:?})",
            args.name,
            cluster.namespace,
            args.name
        ),
        (None, Some(s)) => s.clone(),
        (None, None) => args.name.clone(),
    };
    let selector_ref = Reference::parse(&selector).map_err(|e| {
        anyhow!("selector {selector:?} is not an image reference ({e}): pass --selector REF with --create")
    })?;
    let advertised = match (&args.registry, super::registry::advertised(&cluster).await) {
        (_, Ok(a)) => a,
        // An explicit registry does not need the advertisement.
        (Some(_), Err(e)) => {
            eprintln!("warning: ignoring the advertised registry: {e:#}");
            None
        }
        (None, Err(e)) => return Err(e),
    };
    // Plain HTTP only for this machine and what the cluster advertises, never for --registry.
    let trusted_plain = advertised.clone();
    let registry = choose_registry(args.registry.as_deref(), advertised)?;
    let target = build_target(&selector_ref, &registry.host, registry.runtime_host())?;
    let tag = fresh_tag();
    let env = build_env(&target, &tag);
    let expected = format!("{}:{tag}", target.local_name());

    let started = Timestamp::now();
    eprintln!("building imagemap {} (selector {selector}): expecting {expected}", args.name);
    let (program, program_args) = args.command.split_first().context("no COMMAND after --")?;
    if let Some(path) = &args.ref_file {
        // A stale file from an earlier build must not be taken for this one's result.
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                bail!("cannot clear --ref-file {}: {e}", path.display())
            }
            _ => {}
        }
    }
    // COMMAND's output streams to stderr, so that stdout holds only the result (`-o json` stays
    // parsable).
    let status = tokio::process::Command::new(program)
        .args(program_args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(std::io::stderr())
        .status()
        .await
        .with_context(|| format!("cannot run {program:?}: check that it is installed and on PATH"))?;
    if !status.success() {
        let code = exit_code(&status);
        eprintln!("error: the build command exited with code {code}; imagemap {:?} is unchanged", args.name);
        std::process::exit(code);
    }

    let pushed_text = match &args.ref_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| {
                format!(
                    "the build command succeeded but did not write --ref-file {}: have it write the reference it pushed there",
                    path.display()
                )
            })?
            .trim()
            .to_string(),
        None => expected.clone(),
    };
    let pushed = Reference::parse(&pushed_text).map_err(|e| {
        anyhow!("the pushed reference {pushed_text:?} (from --ref-file) is not an image reference: {e}")
    })?;
    let digest = crate::distribution::manifest_digest(&pushed.familiar(), trusted_plain.as_ref()).await?;
    let patch = build_status(&pushed, &digest, &registry, started);
    let create_selector = args.create.then_some(selector.as_str());
    let (_, created) = super::set_image::get_or_create(&cluster, &args.name, create_selector).await?;
    let updated = super::set_image::write_status(&cluster, &args.name, &patch).await?;
    Ok(super::set_image::summary(&args.name, created, &updated, args.output))
}

/// The exit code to pass on: COMMAND's, or 128 + the signal that ended it, as shells report it.
fn exit_code(status: &std::process::ExitStatus) -> i32 {
    if let Some(code) = status.code() {
        return code;
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return 128 + signal;
        }
    }
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        Reference::parse(s).expect("valid")
    }

    const DIGEST: &str = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

    #[test]
    fn the_command_gets_the_target_in_tilts_variables() {
        let t = build_target(&r("gcr.io/team/api"), "localhost:5000", "").expect("named");
        let env = build_env(&t, "tilt-0123456789abcdef");
        assert_eq!(
            env,
            vec![
                ("EXPECTED_REF", "localhost:5000/gcr.io_team_api:tilt-0123456789abcdef".to_string()),
                ("EXPECTED_REGISTRY", "localhost:5000".to_string()),
                ("EXPECTED_IMAGE", "gcr.io_team_api".to_string()),
                ("EXPECTED_TAG", "tilt-0123456789abcdef".to_string()),
            ]
        );
    }

    #[test]
    fn fresh_tags_are_valid_and_differ() {
        let (a, b) = (fresh_tag(), fresh_tag());
        assert_ne!(a, b);
        assert!(a.starts_with("tilt-") && a.len() == 21, "{a}");
        r(&format!("app:{a}"));
    }

    #[test]
    fn the_status_pins_every_name_by_digest_with_the_start_time() {
        let registry = LocalRegistryHosting {
            host: "localhost:5001".into(),
            host_from_container_runtime: "kind-registry:5000".into(),
            ..Default::default()
        };
        let started: Timestamp = "2026-11-26T10:00:00.123456789Z".parse().expect("time");
        let p = build_status(&r("localhost:5001/app:tilt-1"), DIGEST, &registry, started);
        assert_eq!(p["status"]["image"], format!("kind-registry:5000/app:tilt-1@{DIGEST}"));
        assert_eq!(p["status"]["imageFromCluster"], format!("kind-registry:5000/app:tilt-1@{DIGEST}"));
        assert_eq!(p["status"]["imageFromLocal"], format!("localhost:5001/app:tilt-1@{DIGEST}"));
        assert_eq!(p["status"]["buildStartTime"], "2026-11-26T10:00:00.123456Z");
        // A ref the builder chose elsewhere (--ref-file): the same name everywhere; an old digest is replaced.
        let other = format!("gcr.io/team/app@sha256:{}", "0".repeat(64));
        let p = build_status(&r(&other), DIGEST, &registry, started);
        assert_eq!(p["status"]["image"], format!("gcr.io/team/app@{DIGEST}"));
        assert_eq!(p["status"]["imageFromLocal"], format!("gcr.io/team/app@{DIGEST}"));
    }

    #[test]
    fn the_registry_is_the_flag_or_the_advertised_one() {
        let adv = LocalRegistryHosting {
            host: "localhost:5001".into(),
            host_from_container_runtime: "kind-registry:5000".into(),
            ..Default::default()
        };
        assert_eq!(choose_registry(None, Some(adv.clone())).expect("advertised"), adv);
        assert_eq!(choose_registry(Some("localhost:5001"), Some(adv.clone())).expect("same host"), adv);
        let r = choose_registry(Some("gcr.io/team"), Some(adv)).expect("flag");
        assert_eq!((r.host.as_str(), r.runtime_host()), ("gcr.io/team", "gcr.io/team"));
        let e = choose_registry(None, None).expect_err("none");
        assert!(e.to_string().contains("pass --registry HOST"), "{e}");
        assert!(choose_registry(Some("team"), None).is_err());
    }
}
