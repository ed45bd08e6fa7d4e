//! Where maps come from: the cluster (a kube-runtime watch into the index) and
//! `--imagemaps-file` (polled, reloaded on change, the previous maps kept when it breaks).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};

use super::AppState;
use imagemap_core::maps::MapIndex;
use imagemap_core::mapsfile::parse_maps;
use imagemap_core::types::ImageMap;

/// A client from `--kubeconfig`, else in-cluster, else the default kubeconfig.
pub async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading --kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("using --kubeconfig {}", path.display()))?
        }
        None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
            kube::Config::incluster().context("reading the in-cluster service account config")?
        }
        None => kube::Config::infer()
            .await
            .context("no Kubernetes config found: pass --kubeconfig, set KUBECONFIG, or use --no-cluster")?,
    };
    Client::try_from(config).context("building the Kubernetes client")
}

/// Watches ImageMaps in every namespace into the index, forever. The first full list marks the
/// cache synced; while the API server is away the last known maps keep serving, and the watcher
/// retries with backoff and relists when its watch expires.
pub async fn watch_cluster(client: Client, state: Arc<AppState>) {
    let api: Api<ImageMap> = Api::all(client);
    // Backoff is ours, not `default_backoff()`: that one resets on every item, including the
    // `Init` that precedes each list attempt, so a failing list would be retried about every
    // second forever. Here only real progress (an object, or a completed list) resets it.
    let mut stream = watcher::watcher(api, watcher::Config::default()).boxed();
    let mut backoff = Backoff::default();
    // A (re)list is compiled into a fresh index as it arrives, then swapped in whole: the raw
    // objects of a large list are never all held at once.
    let mut buffer: Option<MapIndex> = None;
    while let Some(event) = stream.next().await {
        match event {
            Ok(event) => {
                // `Init` only announces a list attempt: nothing has been heard yet.
                if !matches!(event, Event::Init) {
                    state.metrics.cache_heard();
                    backoff.reset();
                }
                apply(event, &mut buffer, &state);
            }
            Err(e) => {
                state.metrics.cache_stale();
                let wait = backoff.next();
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "ImageMap watch failed; serving the last known maps and retrying");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Exponential backoff between failed watch attempts: 0.8 s doubling to 16 s, with jitter.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(800);
    const MAX: Duration = Duration::from_secs(16);

    fn next(&mut self) -> Duration {
        let base = Self::FIRST.saturating_mul(1 << self.failures.min(5)).min(Self::MAX);
        self.failures = self.failures.saturating_add(1);
        // Up to 25% jitter, from the clock's nanoseconds (no randomness source needed).
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        base + base.mul_f64(f64::from(nanos % 1000) / 4000.0)
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

fn apply(event: Event<ImageMap>, buffer: &mut Option<MapIndex>, state: &AppState) {
    match event {
        // The fresh list is compiled under the same guards as the live index.
        Event::Init => *buffer = Some(state.with_index(MapIndex::empty_like)),
        Event::InitApply(map) => {
            if let Err(e) = buffer.get_or_insert_with(|| state.with_index(MapIndex::empty_like)).upsert(&map) {
                tracing::warn!(error = %e, "skipping ImageMap with an invalid selector");
            }
        }
        Event::InitDone => {
            let fresh = buffer.take().unwrap_or_else(|| state.with_index(MapIndex::empty_like));
            state.update_index(|idx| idx.replace_cluster_with(fresh));
            let count = state.with_index(|idx| idx.len());
            if !state.synced.swap(true, Ordering::AcqRel) {
                tracing::info!(maps = count, "ImageMap cache synced");
            } else {
                tracing::info!(maps = count, "ImageMap cache relisted");
            }
        }
        Event::Apply(map) => {
            if let Err(e) = state.update_index(|idx| idx.upsert(&map)) {
                tracing::warn!(error = %e, "skipping ImageMap with an invalid selector");
            }
        }
        Event::Delete(map) => {
            let ns = map.metadata.namespace.clone().unwrap_or_default();
            let name = map.metadata.name.clone().unwrap_or_default();
            state.update_index(|idx| idx.remove(&ns, &name));
        }
    }
}

/// Loads `--imagemaps-file` into the index; an unreadable or invalid file is an error.
pub fn load_file_once(path: &Path, state: &AppState) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    load_text(path, &text, state)
}

fn load_text(path: &Path, text: &str, state: &AppState) -> anyhow::Result<()> {
    let maps = parse_maps(text, &path.display().to_string())?;
    let invalid = state.update_index(|idx| idx.replace_file(maps.iter()));
    for e in &invalid {
        tracing::warn!(error = %e, file = %path.display(), "skipping ImageMap with an invalid selector");
    }
    tracing::info!(file = %path.display(), maps = maps.len() - invalid.len(), "loaded --imagemaps-file");
    Ok(())
}

/// Polls `--imagemaps-file` and reloads it when its contents change; a broken file keeps the
/// previous maps (an error), and so does an empty or blank one (a warning): an editor or `>`
/// truncates a file before writing it, and a poll in between must not drop every map. An empty
/// `List` removes them all. At start-up there is nothing to keep, so an empty file is no maps.
pub async fn watch_file(path: PathBuf, interval: Duration, state: Arc<AppState>) {
    let mut last = std::fs::read(&path).ok();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = std::fs::read(&path).ok();
        if now == last {
            continue;
        }
        let result = match &now {
            Some(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => {
                tracing::warn!(
                    file = %path.display(),
                    "--imagemaps-file is empty (perhaps being written); keeping the previous maps \
                     (an empty List removes them all)"
                );
                last = now;
                continue;
            }
            Some(bytes) => std::str::from_utf8(bytes)
                .with_context(|| format!("reading {}: not UTF-8", path.display()))
                .and_then(|text| load_text(&path, text, &state)),
            None => load_file_once(&path, &state),
        };
        last = now;
        match result {
            Ok(()) => state.metrics.file_reload(true),
            Err(e) => {
                state.metrics.file_reload(false);
                tracing::error!(error = format!("{e:#}"), "--imagemaps-file is broken; keeping the previous maps");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Backoff;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_to_a_cap_and_resets() {
        let mut b = Backoff::default();
        let waits: Vec<Duration> = (0..8).map(|_| b.next()).collect();
        assert!(waits[0] >= Duration::from_millis(800) && waits[0] < Duration::from_millis(1000));
        assert!(waits[1] >= Duration::from_millis(1600));
        assert!(waits[7] >= Duration::from_secs(16) && waits[7] <= Duration::from_secs(20));
        b.reset();
        assert!(b.next() < Duration::from_secs(1));
    }
}
