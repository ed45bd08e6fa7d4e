//! `kubectl imagemap set-image NAME IMAGE`: how a build tool publishes a result. Writes the
//! status subresource after validating every reference.

use anyhow::{bail, Context, Result};
use imagemap_core::types::{ImageMap, ImageMapSpec};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{json, Value};

use super::validate_reference;
use crate::cli::{Global, SetImageArgs};
use crate::client::Cluster;
use crate::render;

/// The status patch for the flags (every field set, so an older build's values never linger).
pub fn status_patch(args: &SetImageArgs, now: Timestamp) -> Result<Value> {
    validate_reference("IMAGE", &args.image)?;
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
    Ok(json!({"status": {
        "image": args.image,
        "imageFromCluster": args.from_cluster.clone().unwrap_or_default(),
        "imageFromLocal": args.from_local.clone().unwrap_or_default(),
        // UTC with exactly six fractional digits, as Kubernetes writes MicroTime.
        "buildStartTime": format!("{started:.6}"),
    }}))
}

/// Runs `set-image`.
pub async fn run(global: &Global, args: &SetImageArgs) -> Result<String> {
    let patch = status_patch(args, Timestamp::now())?;
    if args.create {
        match &args.selector {
            Some(s) => validate_reference("--selector", s)?,
            None => bail!("--create needs --selector REF: the image reference Pods use"),
        }
    }
    let cluster = Cluster::connect(global).await?;
    let api = cluster.maps();
    let what = format!("imagemap {:?}", args.name);
    let mut created = false;
    match api.get_opt(&args.name).await.map_err(|e| cluster.explain_error(e, &what))? {
        Some(_) => {}
        None if args.create => {
            let selector = args.selector.clone().unwrap_or_default();
            let map = ImageMap::new(&args.name, ImageMapSpec { selector, ..Default::default() });
            api.create(&PostParams::default(), &map).await.map_err(|e| cluster.explain_error(e, &what))?;
            created = true;
        }
        None => bail!(
            "imagemap {:?} not found in namespace {:?}: create it first (`kubectl imagemap create {} --selector REF`) or pass --create --selector REF",
            args.name,
            cluster.namespace,
            args.name
        ),
    }
    let updated = api
        .patch_status(&args.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| cluster.explain_error(e, &what))?;
    if let Some(warning) = crate::scope_wait::wait(&cluster).await {
        eprintln!("{warning}");
    }
    if let Some(warning) = crate::scope_wait::wait_for_policy(&cluster, &updated, crate::scope_wait::TIMEOUT).await {
        eprintln!("{warning}");
    }
    Ok(match args.output {
        Some(format) => render::object(&updated, format),
        None => format!(
            "imagemap.tilt.dev/{} {}image set to {}\n",
            args.name,
            if created { "created and " } else { "" },
            render::usability(&updated).unwrap_or_else(|e| format!("<unusable: {e}>"))
        ),
    })
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

    #[test]
    fn patch_sets_every_status_field_with_microsecond_time() {
        let now: Timestamp = "2026-11-26T10:00:00.5Z".parse().expect("t");
        let p = status_patch(&parse(&["app", "localhost:5000/app:t", "--from-cluster", "registry:5000/app:t"]), now)
            .expect("valid");
        assert_eq!(p["status"]["image"], "localhost:5000/app:t");
        assert_eq!(p["status"]["imageFromCluster"], "registry:5000/app:t");
        assert_eq!(p["status"]["imageFromLocal"], "");
        assert_eq!(p["status"]["buildStartTime"], "2026-11-26T10:00:00.500000Z");
        let p =
            status_patch(&parse(&["app", "a:1", "--build-start-time", "2026-01-02T03:04:05Z"]), now).expect("valid");
        assert_eq!(p["status"]["buildStartTime"], "2026-01-02T03:04:05.000000Z");
        let p = status_patch(&parse(&["app", "a:1", "--build-start-time", "2026-01-02T05:04:05.1234567+02:00"]), now)
            .expect("valid");
        assert_eq!(p["status"]["buildStartTime"], "2026-01-02T03:04:05.123456Z");
    }

    #[test]
    fn invalid_references_and_times_are_refused_naming_the_flag() {
        let now = Timestamp::now();
        let e = status_patch(&parse(&["app", "Bad:Image"]), now).expect_err("bad image");
        assert!(e.to_string().starts_with("invalid IMAGE \"Bad:Image\""), "{e}");
        let e = status_patch(&parse(&["app", "a:1", "--from-cluster", "a b"]), now).expect_err("bad");
        assert!(e.to_string().contains("--from-cluster"), "{e}");
        let e = status_patch(&parse(&["app", "a:1", "--build-start-time", "yesterday"]), now).expect_err("bad");
        assert!(e.to_string().contains("--build-start-time"), "{e}");
    }
}
