//! What each step measured, as JSON files in the results folder; `imagemap-bench report` turns
//! them into `docs/benchmarks.md`.

use std::path::Path;

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::quantile;

/// Writes `value` as `dir/NAME.json`.
pub fn save<T: Serialize>(dir: &Path, name: &str, value: &T) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(value)?).with_context(|| format!("writing {}", path.display()))
}

/// Reads `dir/NAME.json` if it exists.
pub fn load<T: DeserializeOwned>(dir: &Path, name: &str) -> Result<Option<T>> {
    let path = dir.join(format!("{name}.json"));
    if !path.is_file() {
        return Ok(None);
    }
    let bytes = std::fs::read(&path)?;
    Ok(Some(serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))?))
}

/// One criterion comparison: the handler and the serde baseline on the same body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CriterionCase {
    /// `8KB-one`...
    pub case: String,
    /// Body size in bytes.
    pub body_bytes: usize,
    /// Handler time per review, ns.
    pub handler_ns: f64,
    /// Baseline time, ns.
    pub baseline_ns: f64,
    /// handler / baseline.
    pub ratio: f64,
}

/// Handler cost with a number of maps.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MapsCase {
    /// Maps in the index.
    pub maps: usize,
    /// Time per review, ns.
    pub ns: f64,
    /// Against the 10-map case.
    pub ratio: f64,
}

/// Step 1 and 2: criterion.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CriterionResults {
    /// Which point estimate (`median`).
    pub estimate: String,
    /// Handler vs baseline.
    pub review: Vec<CriterionCase>,
    /// Handler vs number of maps.
    pub maps: Vec<MapsCase>,
}

/// One load-generator run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadRun {
    /// Which server.
    pub server: String,
    /// Connections.
    pub connections: usize,
    /// Target rate (open loop), or none for as fast as possible (closed loop).
    pub target_rate: Option<f64>,
    /// Seconds.
    pub seconds: f64,
    /// Successful requests per second.
    pub rps: f64,
    /// Latency p50 (ms).
    pub p50_ms: f64,
    /// Latency p99 (ms).
    pub p99_ms: f64,
    /// Latency p99.9 (ms).
    pub p999_ms: f64,
    /// Requests answered 200.
    pub ok: u64,
    /// Other statuses and errors.
    pub failed: u64,
    /// The server's CPU use over the run (1.0 = one core busy all the time).
    pub server_cpu: f64,
    /// The server's CPU time per successful request, µs.
    pub server_cpu_us_per_request: f64,
}

/// Step 3: TLS on loopback.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TlsResults {
    /// Review body size.
    pub body_bytes: usize,
    /// Maps loaded in the webhook.
    pub maps: usize,
    /// Every closed-loop run, in order.
    pub max_runs: Vec<LoadRun>,
    /// The webhook's best closed-loop run.
    pub webhook_max: LoadRun,
    /// The baseline's best closed-loop run.
    pub baseline_max: LoadRun,
    /// webhook / baseline requests per second.
    pub throughput_ratio: f64,
    /// nginx's best closed-loop run (the same fixed answer over TLS).
    pub nginx_max: LoadRun,
    /// webhook / nginx requests per second.
    pub nginx_ratio: f64,
    /// The open-loop runs at half the webhook's maximum.
    pub fixed: Vec<LoadRun>,
    /// oha's version.
    pub oha_version: String,
}

/// One handshake measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandshakeRun {
    /// Key type.
    pub key_type: String,
    /// Full handshakes completed.
    pub handshakes: u64,
    /// Failed attempts.
    pub failed: u64,
    /// Wall time, s.
    pub seconds: f64,
    /// Server CPU over the run, s.
    pub server_cpu_s: f64,
    /// Server CPU per handshake, µs.
    pub cpu_us_per_handshake: f64,
    /// Client-observed connect + handshake time p50, ms.
    pub client_p50_ms: f64,
    /// Client-observed p99, ms.
    pub client_p99_ms: f64,
}

/// Step 4: handshakes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandshakeResults {
    /// ECDSA (the default) first, then RSA.
    pub runs: Vec<HandshakeRun>,
    /// The TLS version and cipher suite negotiated.
    pub negotiated: String,
}

/// One memory reading.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemoryPoint {
    /// ImageMaps in the cluster (and the webhook's cache).
    pub maps: usize,
    /// How they reached the webhook.
    pub how: String,
    /// Peak RSS (VmHWM), bytes.
    pub peak_rss: u64,
    /// RSS when read, bytes.
    pub rss: u64,
    /// The webhook's `imagemap_cache_maps` when read.
    pub cache_maps: f64,
    /// Seconds from start (or from the last create) until the cache held them all.
    pub sync_seconds: f64,
}

/// Step 5: memory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemoryResults {
    /// Readings, the 0-map baseline first.
    pub points: Vec<MemoryPoint>,
    /// How fast the maps were created (creates + status patches per second).
    pub create_rate: f64,
    /// Requests in flight while creating.
    pub concurrency: usize,
    /// Maps asked for and reached (a time limit may stop short).
    pub target_maps: usize,
    /// Anything that did not go as planned.
    pub notes: Vec<String>,
}

/// What one batch of Pod creates measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateStats {
    /// Pods created.
    pub pods: usize,
    /// Failed creates.
    pub failed: usize,
    /// Pods that came back with the image swapped.
    pub swapped: usize,
    /// Wall time, s.
    pub seconds: f64,
    /// Creates per second.
    pub creates_per_s: f64,
    /// Create latency p50, ms.
    pub p50_ms: f64,
    /// Create latency p99, ms.
    pub p99_ms: f64,
}

impl CreateStats {
    /// From the successful creates' latencies in ms (sorted in place), the failed and swapped
    /// counts and the wall time in s.
    pub fn new(latencies_ms: &mut [f64], failed: usize, swapped: usize, seconds: f64) -> Self {
        CreateStats {
            pods: latencies_ms.len(),
            failed,
            swapped,
            seconds,
            creates_per_s: latencies_ms.len() as f64 / seconds,
            p50_ms: quantile(latencies_ms, 0.5),
            p99_ms: quantile(latencies_ms, 0.99),
        }
    }
}

/// One batch of Pod creates.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct E2eRun {
    /// Round (runs alternate without/with).
    pub round: usize,
    /// Whether the webhook was registered.
    pub webhook: bool,
    /// Concurrent creates.
    pub concurrency: usize,
    /// What the batch measured.
    #[serde(flatten)]
    pub stats: CreateStats,
}

/// Step 6: end to end.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct E2eResults {
    /// Every run in order.
    pub runs: Vec<E2eRun>,
    /// Pod size in bytes (JSON).
    pub pod_bytes: usize,
    /// The webhook's own review-duration histogram, from its metrics: reviews and mean µs.
    pub webhook_reviews: f64,
    /// Mean time the webhook spent deciding, µs (its `imagemap_review_duration_seconds`).
    pub webhook_mean_decision_us: f64,
}

/// Instruction counts (callgrind) of the in-process path.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProfileResults {
    /// Instructions per review (8 KB, one container matching, 10 maps).
    pub handler_ir: f64,
    /// Instructions per serde parse + reserialize of the same body.
    pub baseline_ir: f64,
    /// handler / baseline.
    pub ratio: f64,
    /// Top functions by exclusive instructions in the handler run: (share %, function).
    pub top_exclusive: Vec<(f64, String)>,
    /// Top functions by inclusive instructions: (share %, function).
    pub top_inclusive: Vec<(f64, String)>,
}

/// One batch of Pod creates in one admission mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModesRun {
    /// Round (each round measures every mode once, in order).
    pub round: usize,
    /// The mode ([`ModesCase::case`]).
    pub case: String,
    /// What the batch measured.
    #[serde(flatten)]
    pub stats: CreateStats,
    /// Reviews the webhook answered during the run (its 10 warm-up creates included).
    pub webhook_reviews: f64,
}

/// One admission mode over all its rounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModesCase {
    /// `opted-out`, `webhook, no maps`...
    pub case: String,
    /// Its namespace.
    pub namespace: String,
    /// What stands in the Pods' path.
    pub how: String,
    /// ImageMaps in its namespace.
    pub maps: usize,
    /// For the policy modes: whether the API server accepted the policy and its binding.
    pub policy_accepted: Option<bool>,
    /// What went wrong setting it up: the API server's message for a rejected policy, or a
    /// dry-run Pod that did not come back as expected.
    pub error: Option<String>,
    /// Rounds measured (0 when the policy was rejected).
    pub rounds: usize,
    /// Pods created, all rounds.
    pub pods: usize,
    /// Failed creates, all rounds.
    pub failed: usize,
    /// Pods swapped, all rounds.
    pub swapped: usize,
    /// Webhook reviews during its runs (warm-up creates included).
    pub webhook_reviews: f64,
    /// Creates per second, mean over rounds.
    pub creates_per_s: f64,
    /// Against the opted-out mode (0 when not measured).
    pub ratio: f64,
    /// Create latency p50 over every create of every round, ms.
    pub p50_ms: f64,
    /// Create latency p99, ms.
    pub p99_ms: f64,
}

/// Pod creates through the API server by admission mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModesResults {
    /// Per mode, the opted-out baseline first.
    pub cases: Vec<ModesCase>,
    /// Every run in order.
    pub runs: Vec<ModesRun>,
    /// Rounds asked for.
    pub rounds: usize,
    /// Pods per mode per round asked for.
    pub pods_per_run: usize,
    /// Creates in flight.
    pub concurrency: usize,
    /// Time limit per run, s.
    pub seconds: u64,
    /// Pod size in bytes (JSON).
    pub pod_bytes: usize,
    /// The match conditions on the webhook registration while measuring (the controller's).
    pub webhook_conditions: Vec<String>,
    /// Reviews the webhook answered over the whole step (probes included).
    pub webhook_reviews: f64,
    /// Its mean decision time, µs (`imagemap_review_duration_seconds`).
    pub webhook_mean_decision_us: f64,
    /// The hand-written policy's JSON patch expression.
    pub naive_patch: String,
    /// Anything that did not go as planned.
    pub notes: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_keep_their_flat_json_fields() {
        let run = E2eRun {
            round: 1,
            webhook: true,
            concurrency: 8,
            stats: CreateStats::new(&mut [3.0, 1.0, 2.0, 4.0], 1, 2, 2.0),
        };
        let json = serde_json::to_value(&run).expect("json");
        assert_eq!(json["creates_per_s"], 2.0);
        assert_eq!(json["p50_ms"], 2.0);
        assert_eq!(json["p99_ms"], 4.0);
        assert!(json.get("stats").is_none(), "{json}");
        let back: E2eRun = serde_json::from_value(json).expect("reads back");
        assert_eq!((back.round, back.stats.pods, back.stats.failed, back.stats.swapped), (1, 4, 1, 2));

        // As written before the fields moved into `CreateStats`.
        let old = r#"{"round":0,"case":"opted-out","pods":10,"failed":0,"swapped":3,"seconds":1.5,
            "creates_per_s":6.5,"p50_ms":1.25,"p99_ms":9.0,"webhook_reviews":13.0}"#;
        let run: ModesRun = serde_json::from_str(old).expect("parses");
        assert_eq!((run.stats.pods, run.stats.swapped, run.stats.p99_ms, run.webhook_reviews), (10, 3, 9.0, 13.0));
    }
}
