//! `imagemap-webhook check`: the chart's `helm test`. Proves the installation end to end from
//! inside the cluster: creates a test ImageMap with a built status in a test namespace, then
//! creates server-side dry-run Pods there naming the map's selector until one comes back with
//! the map's target (through the webhook, or through the compiled policy in policy mode), and
//! deletes the map again. Exits 0 only when a Pod came back swapped; prints what it saw.
//!
//! The webhook's scope widens to a namespace only once the controller has seen a map there, and
//! the maps reach the admission servers' caches (or the compiled policies) through watches, so
//! the dry run is retried until `--timeout`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use imagemap_core::reference::Reference;
use imagemap_core::types::ImageMap;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;

use crate::config::parse_positive_duration;

/// The first argument that selects this mode.
pub const SUBCOMMAND: &str = "check";

/// `imagemap-webhook check`: prove that a Pod created in `--namespace` comes back swapped.
#[derive(Debug, Clone, Parser)]
#[command(name = "imagemap-webhook check", version)]
pub struct CheckArgs {
    /// Namespace to create the test ImageMap and the dry-run Pods in (served by the webhook or
    /// the policies; not the release namespace, which is never served).
    #[arg(long, env = "IMAGEMAP_CHECK_NAMESPACE")]
    pub namespace: String,
    /// The test map's target: the image a swapped Pod must come back with (never pulled).
    #[arg(long, env = "IMAGEMAP_CHECK_TARGET", default_value = "localhost:5000/imagemap-helm-test:check")]
    pub target: String,
    /// How long to retry the dry run before failing.
    #[arg(long, env = "IMAGEMAP_CHECK_TIMEOUT", value_parser = parse_positive_duration, default_value = "120s")]
    pub timeout: Duration,
    /// Time between two dry runs.
    #[arg(long, value_parser = parse_positive_duration, default_value = "1s")]
    pub interval: Duration,
    /// Kubeconfig (default: in-cluster, then $KUBECONFIG or ~/.kube/config).
    #[arg(long, env = "IMAGEMAP_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
}

/// Runs the check for the process's arguments (`imagemap-webhook check ...`).
pub fn main() -> anyhow::Result<()> {
    // `imagemap-webhook check ARGS`: named so in usage and errors.
    let name = std::ffi::OsString::from("imagemap-webhook check");
    let args = CheckArgs::parse_from(std::iter::once(name).chain(std::env::args_os().skip(2)));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(run(&args))
}

/// Whether the process's arguments select the check (`imagemap-webhook check ...`).
pub fn requested() -> bool {
    std::env::args_os().nth(1).is_some_and(|a| a == SUBCOMMAND)
}

/// Creates the test map, waits for a swapped dry-run Pod, deletes the map. Errors when no Pod
/// came back swapped within the timeout, naming what came back instead.
pub async fn run(args: &CheckArgs) -> anyhow::Result<()> {
    let expected = Reference::parse(&args.target)
        .map_err(|e| anyhow::anyhow!("--target {:?} is not an image reference: {e}", args.target))?
        .familiar();
    let client = crate::store::client(args.kubeconfig.as_deref()).await?;
    let suffix = format!("{}-{}", std::process::id(), unique());
    let name = format!("imagemap-check-{suffix}");
    let selector = format!("imagemap-check/probe-{suffix}");
    let maps: Api<ImageMap> = Api::namespaced(client.clone(), &args.namespace);
    let map = ImageMap::for_selector(&args.namespace, &name, &selector);
    maps.create(&PostParams::default(), &map)
        .await
        .with_context(|| format!("creating ImageMap {}/{name}", args.namespace))?;
    println!("created ImageMap {}/{name} selecting {selector}", args.namespace);
    let outcome = swap_seen(&client, &maps, args, &name, &selector, &expected).await;
    match maps.delete(&name, &DeleteParams::default()).await {
        Ok(_) => println!("deleted ImageMap {}/{name}", args.namespace),
        Err(e) => eprintln!("could not delete ImageMap {}/{name}: {e}", args.namespace),
    }
    let seen = outcome?;
    println!("PASS: a server-side dry-run Pod naming {selector} in {} came back with {seen}", args.namespace);
    Ok(())
}

async fn swap_seen(
    client: &Client,
    maps: &Api<ImageMap>,
    args: &CheckArgs,
    name: &str,
    selector: &str,
    expected: &str,
) -> anyhow::Result<String> {
    let status = json!({"status": {"image": args.target}});
    maps.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .with_context(|| format!("setting the status of ImageMap {}/{name}", args.namespace))?;
    println!("set status.image of {name} to {}; expecting dry-run Pods to come back with {expected}", args.target);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &args.namespace);
    let pod = probe_pod(selector)?;
    let deadline = tokio::time::Instant::now() + args.timeout;
    let mut last = String::new();
    loop {
        let seen = match pods.create(&PostParams { dry_run: true, ..Default::default() }, &pod).await {
            Ok(created) => {
                let image = created
                    .spec
                    .and_then(|s| s.containers.into_iter().next())
                    .and_then(|c| c.image)
                    .unwrap_or_default();
                if image == expected {
                    return Ok(image);
                }
                format!("a dry-run Pod came back with image {image} (not swapped yet)")
            }
            Err(e) => format!("the dry-run Pod create failed: {e}"),
        };
        if seen != last {
            println!("{seen}");
            last = seen;
        }
        if tokio::time::Instant::now() + args.interval > deadline {
            bail!(
                "no dry-run Pod naming {selector} in {} came back with {expected} within {:?}; last: {last}. \
                 Run `kubectl imagemap doctor --namespace {}` and read the webhook's and the controller's logs",
                args.namespace,
                args.timeout,
                args.namespace
            );
        }
        tokio::time::sleep(args.interval).await;
    }
}

/// A Pod with one container naming `image`, acceptable under the `restricted` Pod Security
/// level (only ever created as a dry run).
fn probe_pod(image: &str) -> anyhow::Result<Pod> {
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "imagemap-check-"},
        "spec": {
            "automountServiceAccountToken": false,
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "probe",
                "image": image,
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
            }],
        },
    });
    serde_json::from_value(pod).context("building the probe Pod")
}

/// A short suffix that differs between runs started in the same second.
fn unique() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{:x}", nanos % 0xff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_chart_flags_with_defaults() {
        let args = CheckArgs::parse_from(["check", "--namespace", "t", "--timeout", "30s"]);
        assert_eq!(args.namespace, "t");
        assert_eq!(args.timeout, Duration::from_secs(30));
        assert_eq!(args.target, "localhost:5000/imagemap-helm-test:check");
        assert!(CheckArgs::try_parse_from(["check"]).is_err(), "the namespace is required");
    }

    #[test]
    fn the_probe_pod_names_the_selector() {
        let pod = probe_pod("imagemap-check/probe-1").expect("a Pod");
        let spec = pod.spec.expect("a spec");
        assert_eq!(spec.containers[0].image.as_deref(), Some("imagemap-check/probe-1"));
        assert_eq!(spec.automount_service_account_token, Some(false));
    }
}
