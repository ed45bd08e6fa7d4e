//! Steps 5 and 6, against a real control plane (the e2e harness's etcd + kube-apiserver): the
//! release webhook's peak RSS with 0, 10 000 and 100 000 ImageMaps loaded through its watch,
//! and Pod creates through the API server with and without the webhook registered.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::{StreamExt, TryStreamExt};
use imagemap_core::types::ImageMap;
use imagemap_e2e::ControlPlane;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::{json, Value};

use crate::fixtures::image_map;
use crate::process::{sibling_binary, Server, Spawn};
use crate::procfs;
use crate::results::{CreateStats, E2eResults, E2eRun, MemoryPoint, MemoryResults};
use crate::tls::{self, KeyType};

/// A kube client with the plane's admin credentials.
pub async fn client(plane: &ControlPlane) -> Result<Client> {
    let kc = kube::config::Kubeconfig::read_from(plane.kubeconfig_path())?;
    let config = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// Starts the release webhook watching the plane (not pinned: it shares the machine with the
/// API server and etcd, as in a cluster node), with `extra` flags after `--kubeconfig`.
pub(crate) async fn start_webhook(plane: &ControlPlane, work: &Path, name: &str, extra: &[String]) -> Result<Server> {
    let certs = tls::mint(&work.join(format!("certs-{name}")), KeyType::EcdsaP256)?;
    let mut args = vec!["--kubeconfig".to_string(), plane.kubeconfig_path().display().to_string()];
    args.extend(extra.iter().cloned());
    Server::start(
        Spawn {
            name,
            program: &sibling_binary("imagemap-webhook")?,
            args,
            core: None,
            certs,
            log: work.join(format!("{name}.log")),
            webhook_flags: true,
        },
        "/readyz",
        // 100 000 maps take a while to list.
        Duration::from_secs(600),
    )
    .await
}

/// Waits until the webhook's `imagemap_cache_maps` is at least `n` (bounded by `timeout`).
pub(crate) async fn wait_cache(server: &Server, n: usize, timeout: Duration) -> Result<f64> {
    let started = Instant::now();
    loop {
        let have = server.metric("imagemap_cache_maps").await.unwrap_or(0.0);
        if have >= n as f64 {
            return Ok(have);
        }
        if started.elapsed() > timeout {
            bail!("the webhook's cache holds {have} maps, not {n}, after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub(crate) async fn create_namespace(client: &Client, name: &str, labels: &BTreeMap<String, String>) -> Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))?;
    match namespaces.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e).with_context(|| format!("creating namespace {name}")),
    }
    // The ServiceAccount admission plugin wants `default` before any Pod (no controller-manager).
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), name);
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "default"}}))?;
    match sas.create(&PostParams::default(), &sa).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e).context("creating the default ServiceAccount"),
    }
}

/// Creates `map` and sets its status (a second request: status is a subresource).
pub(crate) async fn create_map(client: &Client, map: &ImageMap) -> Result<()> {
    let ns = map.metadata.namespace.clone().unwrap_or_default();
    let name = map.metadata.name.clone().unwrap_or_default();
    let api: Api<ImageMap> = Api::namespaced(client.clone(), &ns);
    match api.create(&PostParams::default(), map).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e).with_context(|| format!("creating ImageMap {ns}/{name}")),
    }
    let status = json!({"status": map.status});
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .with_context(|| format!("setting the status of ImageMap {ns}/{name}"))?;
    Ok(())
}

/// The bench's map number `i`: 100 namespaces, half name-only, half exact.
fn bench_map(i: usize) -> ImageMap {
    image_map(&format!("ns-{}", i % 100), &format!("map-{i}"), &format!("gcr.io/team/svc-{i}:v1"), i.is_multiple_of(2))
}

/// Creates maps `from..to` with `concurrency` requests in flight, stopping at `deadline`.
/// Returns how many exist afterwards (`to`, or fewer if the deadline struck).
async fn create_maps(client: &Client, from: usize, to: usize, concurrency: usize, deadline: Instant) -> Result<usize> {
    let created = futures::stream::iter(from..to)
        .take_while(|_| std::future::ready(Instant::now() < deadline))
        .map(|i| {
            let client = client.clone();
            async move { create_map(&client, &bench_map(i)).await }
        })
        .buffer_unordered(concurrency)
        .try_fold(0usize, |n, ()| async move {
            if (n + 1).is_multiple_of(10_000) {
                eprintln!("  {} maps", from + n + 1);
            }
            Ok(n + 1)
        })
        .await?;
    Ok(from + created)
}

/// Knobs for the memory step.
#[derive(Debug, Clone)]
pub struct MemoryOptions {
    /// Map counts to read at, ascending (10 000 and 100 000).
    pub counts: Vec<usize>,
    /// Requests in flight while creating maps.
    pub concurrency: usize,
    /// Time limit for creating all the maps.
    pub create_seconds: u64,
    /// Scratch folder.
    pub work: PathBuf,
}

async fn point(server: &Server, maps: usize, how: &str, sync_seconds: f64) -> Result<MemoryPoint> {
    let point = MemoryPoint {
        maps,
        how: how.to_string(),
        peak_rss: procfs::peak_rss(server.pid())?,
        rss: procfs::rss(server.pid())?,
        cache_maps: server.metric("imagemap_cache_maps").await?,
        sync_seconds,
    };
    eprintln!(
        "  {:>6} maps ({how}): peak RSS {:.1} MiB, RSS {:.1} MiB, cache {}, synced in {:.1} s",
        point.maps,
        point.peak_rss as f64 / 1048576.0,
        point.rss as f64 / 1048576.0,
        point.cache_maps,
        point.sync_seconds
    );
    Ok(point)
}

/// Step 5.
pub async fn memory(plane: &ControlPlane, opts: &MemoryOptions) -> Result<MemoryResults> {
    std::fs::create_dir_all(&opts.work)?;
    let client = client(plane).await?;
    for i in 0..100 {
        create_namespace(&client, &format!("ns-{i}"), &BTreeMap::new()).await?;
    }
    let mut notes = Vec::new();
    let mut points = Vec::new();
    let mut running = start_webhook(plane, &opts.work, "webhook-running", &[]).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    points.push(point(&running, 0, "no maps (baseline)", 0.0).await?);

    let deadline = Instant::now() + Duration::from_secs(opts.create_seconds);
    let mut have = 0usize;
    let mut requests = 0usize;
    let mut creating = Duration::ZERO;
    let target = opts.counts.last().copied().unwrap_or(0);
    for &count in &opts.counts {
        eprintln!("memory: creating maps {have}..{count} ({} in flight)", opts.concurrency);
        let started = Instant::now();
        let reached = create_maps(&client, have, count, opts.concurrency, deadline).await?;
        creating += started.elapsed();
        requests += 2 * (reached - have);
        have = reached;
        if have < count {
            notes.push(format!(
                "the {}-second time limit for creating maps struck at {have} of {count} maps; the last readings are at {have}",
                opts.create_seconds
            ));
        }
        // Every map has reached the running webhook through watch events.
        let started = Instant::now();
        wait_cache(&running, have, Duration::from_secs(300)).await?;
        running.ensure_running()?;
        points
            .push(point(&running, have, "watch events (running since 0 maps)", started.elapsed().as_secs_f64()).await?);
        // A fresh webhook loads them all in its initial list: the start-up peak.
        let started = Instant::now();
        let fresh = start_webhook(plane, &opts.work, &format!("webhook-fresh-{have}"), &[]).await?;
        wait_cache(&fresh, have, Duration::from_secs(300)).await?;
        let synced = started.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(1)).await;
        points.push(point(&fresh, have, "initial list (fresh start)", synced).await?);
        fresh.stop();
        if have < count {
            break;
        }
    }
    running.stop();
    Ok(MemoryResults {
        points,
        create_rate: requests as f64 / creating.as_secs_f64().max(1e-9),
        concurrency: opts.concurrency,
        target_maps: target,
        notes,
    })
}

/// Knobs for the end-to-end step.
#[derive(Debug, Clone)]
pub struct E2eOptions {
    /// without/with rounds.
    pub rounds: usize,
    /// Pods per serial (one at a time) run.
    pub serial: usize,
    /// Pods per concurrent run.
    pub concurrent: usize,
    /// Creates in flight in a concurrent run.
    pub concurrency: usize,
    /// Time limit per run.
    pub seconds: u64,
    /// Scratch folder.
    pub work: PathBuf,
}

const E2E_NS: &str = "bench-e2e";
/// The namespace label the bench's webhook registrations select on.
pub(crate) const SERVED_LABEL: &str = "imagemap-bench/served";
/// The status image of the bench's `app` map: what a swapped Pod's first container gets.
pub(crate) const TARGET_IMAGE: &str = "localhost:5000/app:tilt-1";

/// A Pod like a Deployment's: two containers, the first (`app`) matched by the map.
fn bench_pod(name: &str) -> Result<Pod> {
    pod_with_env(E2E_NS, name, 10)
}

/// [`bench_pod`] in `namespace` with `env` env vars per container (more for a larger Pod).
pub(crate) fn pod_with_env(namespace: &str, name: &str, env: usize) -> Result<Pod> {
    let env: Vec<Value> =
        (0..env).map(|i| json!({"name": format!("SETTING_{i}"), "value": format!("value-number-{i}")})).collect();
    let container = |name: &str, image: &str| {
        json!({"name": name, "image": image, "imagePullPolicy": "IfNotPresent", "env": env,
               "ports": [{"containerPort": 8080}],
               "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}, "requests": {"cpu": "100m", "memory": "64Mi"}}})
    };
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": "web", "bench": "e2e"}},
        "spec": {"containers": [container("app", "app"), container("sidecar", "busybox:1.36")]},
    }))?)
}

pub(crate) fn swapped(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.containers.first()).and_then(|c| c.image.as_deref()) == Some(TARGET_IMAGE)
}

/// Server-side dry-run creates until the webhook does (or does not) swap, at most 60 s: the
/// API server picks up a (de)registration asynchronously.
async fn wait_registration(pods: &Api<Pod>, registered: bool) -> Result<()> {
    let started = Instant::now();
    let params = PostParams { dry_run: true, ..Default::default() };
    loop {
        if let Ok(pod) = pods.create(&params, &bench_pod("probe")?).await {
            if swapped(&pod) == registered {
                // One more after a pause: every API server watch has caught up.
                tokio::time::sleep(Duration::from_millis(500)).await;
                return Ok(());
            }
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!(
                "the webhook registration did not {} within 60 s",
                if registered { "take effect" } else { "go away" }
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) async fn delete_pods(pods: &Api<Pod>) -> Result<()> {
    pods.delete_collection(&DeleteParams::default(), &ListParams::default()).await?;
    let started = Instant::now();
    // Unscheduled Pods go at once; wait so that the next run starts from an empty namespace.
    while !pods.list(&ListParams::default().limit(1)).await?.items.is_empty() {
        if started.elapsed() > Duration::from_secs(60) {
            bail!("Pods in {} were not deleted within 60 s", pods.namespace().unwrap_or_default());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Creates `n` Pods made by `pod` (from a name), `concurrency` at a time, within `seconds`:
/// (latencies in ms, failed, swapped, wall seconds).
pub(crate) async fn create_pods(
    pods: &Api<Pod>,
    pod: &dyn Fn(&str) -> Result<Pod>,
    tag: &str,
    n: usize,
    concurrency: usize,
    seconds: u64,
) -> Result<(Vec<f64>, usize, usize, f64)> {
    // Warm-up: connections to the API server (and from it to the webhook) are open.
    for i in 0..10 {
        pods.create(&PostParams::default(), &pod(&format!("{tag}-warm-{i}"))?).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let results: Vec<Result<(f64, bool)>> = futures::stream::iter(0..n)
        .take_while(|_| std::future::ready(Instant::now() < deadline))
        .map(|i| {
            let pods = pods.clone();
            let made = pod(&format!("{tag}-{i}"));
            async move {
                let pod = made?;
                let t = Instant::now();
                let created = pods.create(&PostParams::default(), &pod).await?;
                Ok((t.elapsed().as_secs_f64() * 1000.0, swapped(&created)))
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let wall = started.elapsed().as_secs_f64();
    let mut latencies = Vec::new();
    let (mut failed, mut swaps) = (0, 0);
    for r in results {
        match r {
            Ok((ms, s)) => {
                latencies.push(ms);
                swaps += usize::from(s);
            }
            Err(e) => {
                if failed == 0 {
                    eprintln!("  create failed: {e:#}");
                }
                failed += 1;
            }
        }
    }
    Ok((latencies, failed, swaps, wall))
}

/// Step 6.
pub async fn e2e(plane: &ControlPlane, opts: &E2eOptions) -> Result<E2eResults> {
    std::fs::create_dir_all(&opts.work)?;
    let client = client(plane).await?;
    let labels = BTreeMap::from([(SERVED_LABEL.to_string(), "e2e".to_string())]);
    create_namespace(&client, E2E_NS, &labels).await?;
    let mut map = image_map(E2E_NS, "app", "app", false);
    if let Some(status) = map.status.as_mut() {
        status.image = TARGET_IMAGE.to_string();
    }
    create_map(&client, &map).await?;
    let webhook = start_webhook(plane, &opts.work, "webhook-e2e", &[]).await?;
    wait_cache(&webhook, 1, Duration::from_secs(60)).await?;
    let ca_pem = std::fs::read_to_string(&webhook.certs.ca)?;
    let config_json =
        imagemap_e2e::webhook::webhook_configuration("imagemap-bench", &webhook.url("/mutate"), &ca_pem, &labels);
    let configuration: MutatingWebhookConfiguration = serde_json::from_value(config_json)?;
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), E2E_NS);
    let pod_bytes = serde_json::to_vec(&bench_pod("p")?)?.len();

    let mut runs = Vec::new();
    for round in 0..opts.rounds {
        for registered in [false, true] {
            if registered {
                configs.create(&PostParams::default(), &configuration).await.context("registering the webhook")?;
            } else {
                let _ = configs.delete("imagemap-bench", &DeleteParams::default()).await;
            }
            wait_registration(&pods, registered).await?;
            for (concurrency, n) in [(1, opts.serial), (opts.concurrency, opts.concurrent)] {
                let tag = format!("r{round}-{}-c{concurrency}", if registered { "with" } else { "without" });
                let (mut latencies, failed, swapped, wall) =
                    create_pods(&pods, &bench_pod, &tag, n, concurrency, opts.seconds).await?;
                let run = E2eRun {
                    round,
                    webhook: registered,
                    concurrency,
                    stats: CreateStats::new(&mut latencies, failed, swapped, wall),
                };
                let s = &run.stats;
                eprintln!(
                    "  round {round} webhook {:<5} c={concurrency:<2} {} pods in {:.1} s = {:.0}/s  p50 {:.2} ms  p99 {:.2} ms  swapped {}  failed {}",
                    registered, s.pods, s.seconds, s.creates_per_s, s.p50_ms, s.p99_ms, s.swapped, s.failed
                );
                runs.push(run);
                delete_pods(&pods).await?;
            }
        }
    }
    let _ = configs.delete("imagemap-bench", &DeleteParams::default()).await;
    let reviews = webhook.metric("imagemap_review_duration_seconds_count").await.unwrap_or(0.0);
    let sum = webhook.metric("imagemap_review_duration_seconds_sum").await.unwrap_or(0.0);
    webhook.stop();
    Ok(E2eResults {
        runs,
        pod_bytes,
        webhook_reviews: reviews,
        webhook_mean_decision_us: if reviews > 0.0 { sum / reviews * 1e6 } else { 0.0 },
    })
}
