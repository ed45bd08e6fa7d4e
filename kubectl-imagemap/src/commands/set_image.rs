//! `kubectl imagemap set-image NAME IMAGE`: how a build tool publishes a result. Writes the
//! status subresource after validating every reference.

use anyhow::{bail, Context, Result};
use imagemap_core::reference::Reference;
use imagemap_core::registry::LocalRegistryHosting;
use imagemap_core::types::{ImageMap, ImageMapSpec};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{json, Value};

use super::validate_reference;
use crate::cli::{Global, ObjectOutput, SetImageArgs};
use crate::client::Cluster;
use crate::render;

/// The status patch for the flags and `image` (every field set, so an older build's values
/// never linger). Under the advertised `host`, IMAGE is how the machine pushed it: it becomes
/// `imageFromLocal` (unless --from-local), and `image`/`imageFromCluster` name it under
/// `hostFromContainerRuntime` (unless --from-cluster).
pub fn status_patch(
    args: &SetImageArgs,
    image: &str,
    now: Timestamp,
    hosting: Option<&LocalRegistryHosting>,
) -> Result<Value> {
    validate_reference("IMAGE", image)?;
    for (flag, value) in [("--from-cluster", &args.from_cluster), ("--from-local", &args.from_local)] {
        if let Some(v) = value {
            validate_reference(flag, v)?;
        }
    }
    let started = match args.build_start_time.as_str() {
        "now" => now,
        t => t.parse::<Timestamp>().with_context(|| {
            format!("invalid --build-start-time {t:?}: use RFC 3339 (2026-11-26T10:00:00Z) or \"now\"")
        })?,
    };
    let from_runtime = hosting.and_then(|h| Reference::parse(image).ok().and_then(|r| h.runtime_name_of(&r)));
    let (injected, from_cluster, from_local) = match from_runtime {
        Some(runtime) => (
            runtime.clone(),
            args.from_cluster.clone().unwrap_or(runtime),
            args.from_local.clone().unwrap_or_else(|| image.to_string()),
        ),
        None => (
            image.to_string(),
            args.from_cluster.clone().unwrap_or_default(),
            args.from_local.clone().unwrap_or_default(),
        ),
    };
    Ok(json!({"status": {
        "image": injected,
        "imageFromCluster": from_cluster,
        "imageFromLocal": from_local,
        // UTC with exactly six fractional digits, as Kubernetes writes MicroTime.
        "buildStartTime": format!("{started:.6}"),
    }}))
}

/// The map named `name`, created with `create_selector` when it is missing and one is given;
/// returns it and whether it was created.
pub async fn get_or_create(cluster: &Cluster, name: &str, create_selector: Option<&str>) -> Result<(ImageMap, bool)> {
    let api = cluster.maps();
    let what = format!("imagemap {name:?}");
    match api.get_opt(name).await.map_err(|e| cluster.explain_error(e, &what))? {
        Some(map) => Ok((map, false)),
        None => match create_selector {
            Some(selector) => {
                let map = ImageMap::new(name, ImageMapSpec { selector: selector.to_string(), ..Default::default() });
                let created =
                    api.create(&PostParams::default(), &map).await.map_err(|e| cluster.explain_error(e, &what))?;
                Ok((created, true))
            }
            None => bail!(
                "imagemap {name:?} not found in namespace {:?}: create it first (`kubectl imagemap create {name} --selector REF`) or pass --create --selector REF",
                cluster.namespace
            ),
        },
    }
}

/// Writes `patch` to the map's status subresource, then waits (bounded) until the webhook's
/// scope or the namespace's policy covers it, warning on stderr when not.
pub async fn write_status(cluster: &Cluster, name: &str, patch: &Value) -> Result<ImageMap> {
    let what = format!("imagemap {name:?}");
    let updated = cluster
        .maps()
        .patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map_err(|e| cluster.explain_error(e, &what))?;
    if let Some(warning) = crate::scope_wait::wait(cluster).await {
        eprintln!("{warning}");
    }
    if let Some(warning) = crate::scope_wait::wait_for_policy(cluster, &updated, crate::scope_wait::TIMEOUT).await {
        eprintln!("{warning}");
    }
    Ok(updated)
}

/// What `set-image` and `build` print.
pub fn summary(name: &str, created: bool, updated: &ImageMap, output: Option<ObjectOutput>) -> String {
    match output {
        Some(format) => render::object(updated, format),
        None => format!(
            "imagemap.tilt.dev/{name} {}image set to {}\n",
            if created { "created and " } else { "" },
            render::usability(updated).unwrap_or_else(|e| format!("<unusable: {e}>"))
        ),
    }
}

/// Runs `set-image`.
pub async fn run(global: &Global, args: &SetImageArgs, out: &mut dyn std::io::Write) -> Result<()> {
    super::write(out, &text(global, args).await?)
}

/// What `run` writes.
async fn text(global: &Global, args: &SetImageArgs) -> Result<String> {
    if let Some(image) = &args.image {
        status_patch(args, image, Timestamp::now(), None)?;
    }
    let create_selector = match (args.create, &args.selector) {
        (false, _) => None,
        (true, Some(s)) => {
            validate_reference("--selector", s)?;
            Some(s.as_str())
        }
        (true, None) => bail!("--create needs --selector REF: the image reference Pods use"),
    };
    let build_output = match &args.from_build_output {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --from-build-output {}", path.display()))?,
        ),
        None => None,
    };
    let cluster = Cluster::connect(global).await?;
    let hosting = super::registry::advertised_or_warn(&cluster).await;
    let what = format!("imagemap {:?}", args.name);
    let existing = cluster.maps().get_opt(&args.name).await.map_err(|e| cluster.explain_error(e, &what))?;
    if existing.is_none() && create_selector.is_none() {
        // The not-found error, with its fix.
        get_or_create(&cluster, &args.name, None).await?;
    }
    // Everything is read and checked before a map is created.
    let image = match (&args.image, &build_output) {
        (Some(image), _) => image.clone(),
        (None, Some(text)) => {
            let selector = match (&existing, create_selector) {
                (Some(map), _) => map.spec.selector.clone(),
                (None, s) => s.unwrap_or_default().to_string(),
            };
            let selector = Reference::parse(&selector).map_err(|e| {
                anyhow::anyhow!(
                    "imagemap {:?} has an invalid selector {selector:?} ({e}): fix it with `kubectl edit imagemap {}`",
                    args.name,
                    args.name
                )
            })?;
            let target = hosting
                .as_ref()
                .and_then(|h| imagemap_core::registry::build_target(&selector, &h.host, h.runtime_host()).ok());
            let path = args.from_build_output.as_deref().map(|p| p.display().to_string()).unwrap_or_default();
            imagemap_core::registry::pushed_from_build_output(text, &selector, target.as_ref())
                .with_context(|| format!("--from-build-output {path}"))?
        }
        (None, None) => bail!("pass IMAGE or --from-build-output FILE"),
    };
    let patch = status_patch(args, &image, Timestamp::now(), hosting.as_ref())?;
    let (_, created) = get_or_create(&cluster, &args.name, create_selector).await?;
    let updated = write_status(&cluster, &args.name, &patch).await?;
    Ok(summary(&args.name, created, &updated, args.output))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> SetImageArgs {
        match crate::cli::Cli::parse_from(["kubectl-imagemap", "set-image"].iter().chain(args)).command {
            crate::cli::Command::SetImage(a) => a,
            _ => panic!("not set-image"),
        }
    }

    fn patch(args: &[&str], now: Timestamp, hosting: Option<&LocalRegistryHosting>) -> Result<Value> {
        let a = parse(args);
        let image = a.image.clone().expect("IMAGE given");
        status_patch(&a, &image, now, hosting)
    }

    fn kind_registry() -> LocalRegistryHosting {
        LocalRegistryHosting {
            host: "localhost:5001".into(),
            host_from_container_runtime: "kind-registry:5000".into(),
            ..Default::default()
        }
    }

    #[test]
    fn under_the_advertised_host_the_cluster_names_are_filled_in() {
        let now = Timestamp::now();
        let h = kind_registry();
        let p = patch(&["app", "localhost:5001/app:t"], now, Some(&h)).expect("valid");
        assert_eq!(p["status"]["image"], "kind-registry:5000/app:t");
        assert_eq!(p["status"]["imageFromCluster"], "kind-registry:5000/app:t");
        assert_eq!(p["status"]["imageFromLocal"], "localhost:5001/app:t");
        // Flags still win.
        let p = patch(
            &["app", "localhost:5001/app:t", "--from-cluster", "r:1/app:t", "--from-local", "l:1/app:t"],
            now,
            Some(&h),
        )
        .expect("valid");
        assert_eq!(
            (&p["status"]["imageFromCluster"], &p["status"]["imageFromLocal"]),
            (&json!("r:1/app:t"), &json!("l:1/app:t"))
        );
        // Not under the advertised host, or nothing advertised: as given.
        for hosting in [Some(&h), None] {
            let p = patch(&["app", "gcr.io/team/app:t"], now, hosting).expect("valid");
            assert_eq!(p["status"]["image"], "gcr.io/team/app:t");
            assert_eq!(p["status"]["imageFromCluster"], "");
            assert_eq!(p["status"]["imageFromLocal"], "");
        }
    }

    #[test]
    fn image_or_a_build_output_file_is_required_but_not_both() {
        let parse_err = |args: &[&str]| {
            crate::cli::Cli::try_parse_from(["kubectl-imagemap", "set-image"].iter().chain(args)).expect_err("refused")
        };
        parse_err(&["app"]);
        parse_err(&["app", "a:1", "--from-build-output", "m.json"]);
        let a = parse(&["app", "--from-build-output", "m.json"]);
        assert!(a.image.is_none());
    }

    #[test]
    fn patch_sets_every_status_field_with_microsecond_time() {
        let now: Timestamp = "2026-11-26T10:00:00.5Z".parse().expect("t");
        let p =
            patch(&["app", "localhost:5000/app:t", "--from-cluster", "registry:5000/app:t"], now, None).expect("valid");
        assert_eq!(p["status"]["image"], "localhost:5000/app:t");
        assert_eq!(p["status"]["imageFromCluster"], "registry:5000/app:t");
        assert_eq!(p["status"]["imageFromLocal"], "");
        assert_eq!(p["status"]["buildStartTime"], "2026-11-26T10:00:00.500000Z");
        let p = patch(&["app", "a:1", "--build-start-time", "2026-01-02T03:04:05Z"], now, None).expect("valid");
        assert_eq!(p["status"]["buildStartTime"], "2026-01-02T03:04:05.000000Z");
        let p = patch(&["app", "a:1", "--build-start-time", "2026-01-02T05:04:05.1234567+02:00"], now, None)
            .expect("valid");
        assert_eq!(p["status"]["buildStartTime"], "2026-01-02T03:04:05.123456Z");
    }

    #[test]
    fn invalid_references_and_times_are_refused_naming_the_flag() {
        let now = Timestamp::now();
        let e = patch(&["app", "Bad:Image"], now, None).expect_err("bad image");
        assert!(e.to_string().starts_with("invalid IMAGE \"Bad:Image\""), "{e}");
        let e = patch(&["app", "a:1", "--from-cluster", "a b"], now, None).expect_err("bad");
        assert!(e.to_string().contains("--from-cluster"), "{e}");
        let e = patch(&["app", "a:1", "--build-start-time", "yesterday"], now, None).expect_err("bad");
        assert!(e.to_string().contains("--build-start-time"), "{e}");
    }
}
