//! Steps 3 and 4: the release webhook over TLS on loopback against the minimal axum + rustls
//! server (`imagemap-bench-server`), each pinned to core 0 with the load on core 1; and the
//! server CPU per full TLS handshake, ECDSA P-256 against RSA 2048.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::fixtures::{fixture_maps, review_body};
use crate::process::{sibling_binary, Server, Spawn};
use crate::results::{HandshakeResults, HandshakeRun, LoadRun, TlsResults};
use crate::tls::{self, KeyType};
use crate::{procfs, quantile, ratio};

/// The core the servers run on; the load generator runs on the other (`bench.sh` pins this
/// process to core 1, and children inherit that).
pub const SERVER_CORE: usize = 0;

/// Knobs for the TLS step.
#[derive(Debug, Clone)]
pub struct TlsOptions {
    /// oha.
    pub oha: PathBuf,
    /// Keep-alive connections for the closed-loop runs.
    pub connections: usize,
    /// Seconds per run.
    pub seconds: u64,
    /// Closed-loop runs per server (alternating); the best counts.
    pub rounds: usize,
    /// Scratch folder (certificates, bodies, oha output, logs).
    pub work: PathBuf,
}

/// Runs oha against `url` and reads its JSON summary.
#[allow(clippy::too_many_arguments)]
fn oha(
    opts: &TlsOptions,
    server: &Server,
    label: &str,
    body: &Path,
    connections: usize,
    seconds: u64,
    rate: Option<f64>,
    tag: &str,
) -> Result<LoadRun> {
    let out = opts.work.join(format!("oha-{tag}.json"));
    let mut cmd = Command::new(&opts.oha);
    cmd.args(["--no-tui", "--worker-threads", "1", "-c", &connections.to_string(), "-z", &format!("{seconds}s")])
        .args(["-m", "POST", "-T", "application/json", "-D"])
        .arg(body)
        .arg("--cacert")
        .arg(&server.certs.ca)
        .args(["--output-format", "json", "-o"])
        .arg(&out);
    if let Some(rate) = rate {
        cmd.args(["-q", &format!("{rate:.0}"), "--latency-correction"]);
    }
    cmd.arg(server.url("/mutate"));
    let cpu_before = procfs::cpu_seconds(server.pid())?;
    let started = Instant::now();
    let status = cmd.status().with_context(|| format!("running {}", opts.oha.display()))?;
    let wall = started.elapsed().as_secs_f64();
    let cpu = procfs::cpu_seconds(server.pid())? - cpu_before;
    if !status.success() {
        bail!("oha failed ({status})");
    }
    let json: Value = serde_json::from_slice(&std::fs::read(&out)?).context("oha's JSON output")?;
    let total = json["summary"]["total"].as_f64().unwrap_or(wall);
    let ok = json["statusCodeDistribution"]["200"].as_u64().unwrap_or(0);
    let all_statuses: u64 =
        json["statusCodeDistribution"].as_object().map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
    // "aborted due to deadline" are the requests in flight when -z ends: not failures.
    let errors: u64 = json["errorDistribution"]
        .as_object()
        .map_or(0, |m| m.iter().filter(|(k, _)| !k.contains("deadline")).filter_map(|(_, v)| v.as_u64()).sum());
    let pct = |key: &str| json["latencyPercentiles"][key].as_f64().unwrap_or(f64::NAN) * 1000.0;
    let run = LoadRun {
        server: label.to_string(),
        connections,
        target_rate: rate,
        seconds: total,
        rps: ok as f64 / total,
        p50_ms: pct("p50"),
        p99_ms: pct("p99"),
        p999_ms: pct("p99.9"),
        ok,
        failed: all_statuses - ok + errors,
        server_cpu: cpu / wall,
        server_cpu_us_per_request: ratio(cpu * 1e6, ok as f64),
    };
    eprintln!(
        "  {label:<9} c={connections:<3} rate={:<7} {:>8.0} req/s  p50 {:.3} ms  p99 {:.3} ms  server CPU {:.0}%  {:.1} µs/req  failed {}",
        rate.map_or("max".to_string(), |r| format!("{r:.0}")),
        run.rps,
        run.p50_ms,
        run.p99_ms,
        run.server_cpu * 100.0,
        run.server_cpu_us_per_request,
        run.failed
    );
    Ok(run)
}

fn best(runs: &[LoadRun], label: &str) -> Result<LoadRun> {
    runs.iter()
        .filter(|r| r.server == label)
        .max_by(|a, b| a.rps.total_cmp(&b.rps))
        .cloned()
        .with_context(|| format!("no run of {label}"))
}

/// The maps file the webhook serves from (`--imagemaps-file`, no cluster): the criterion
/// bench's 10 maps.
fn write_maps(path: &Path, total: usize) -> Result<()> {
    let items: Vec<Value> = fixture_maps(total).iter().map(serde_json::to_value).collect::<Result<_, _>>()?;
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
    std::fs::write(path, serde_json::to_vec(&list)?)?;
    Ok(())
}

/// Starts the release webhook on [`SERVER_CORE`] with the maps file and no cluster.
async fn start_webhook(work: &Path, key: KeyType, name: &str, extra: &[&str]) -> Result<Server> {
    let certs = tls::mint(&work.join(format!("certs-{name}")), key)?;
    let maps = work.join("maps.json");
    let mut args = vec!["--no-cluster".to_string(), "--imagemaps-file".into(), maps.display().to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    Server::start(
        Spawn {
            name,
            program: &sibling_binary("imagemap-webhook")?,
            args,
            core: Some(SERVER_CORE),
            certs,
            log: work.join(format!("{name}.log")),
            webhook_flags: true,
        },
        "/readyz",
        Duration::from_secs(30),
    )
    .await
}

async fn start_baseline(work: &Path) -> Result<Server> {
    let certs = tls::mint(&work.join("certs-baseline"), KeyType::EcdsaP256)?;
    Server::start(
        Spawn {
            name: "imagemap-bench-server",
            program: &sibling_binary("imagemap-bench-server")?,
            args: vec![],
            core: Some(SERVER_CORE),
            certs,
            log: work.join("baseline.log"),
            webhook_flags: false,
        },
        "/readyz",
        Duration::from_secs(30),
    )
    .await
}

/// Names the nginx binary of the reference fixed TLS answer (`bench.sh` unpacks Debian's).
pub const NGINX_ENV: &str = "IMAGEMAP_BENCH_NGINX";

async fn start_nginx(work: &Path) -> Result<Server> {
    let nginx = std::env::var_os(NGINX_ENV)
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .with_context(|| format!("{NGINX_ENV} must name an nginx binary (`make bench` unpacks Debian's)"))?;
    let certs = tls::mint(&work.join("certs-nginx"), KeyType::EcdsaP256)?;
    let answer = std::str::from_utf8(crate::fixtures::ALLOWED_REVIEW)?;
    Server::start_nginx(&nginx, work, SERVER_CORE, certs, answer).await
}

/// Step 3.
pub async fn tls_throughput(opts: &TlsOptions) -> Result<TlsResults> {
    std::fs::create_dir_all(&opts.work)?;
    let body = review_body(8, 4, 1);
    let body_path = opts.work.join("review-8KB-one.json");
    std::fs::write(&body_path, &body)?;
    write_maps(&opts.work.join("maps.json"), 10)?;
    let webhook = start_webhook(&opts.work, KeyType::EcdsaP256, "webhook", &[]).await?;
    let baseline = start_baseline(&opts.work).await?;
    let nginx = start_nginx(&opts.work).await?;
    // A quiet webhook: the same server without its per-review info log line, to show what
    // logging costs. Its start-up lines stay at info: the launcher reads the port from one.
    let quiet_level = "warn,imagemap_webhook=info,imagemap_webhook::http=warn";
    let quiet = start_webhook(&opts.work, KeyType::EcdsaP256, "webhook-quiet", &["--log-level", quiet_level]).await?;

    // The webhook must actually patch this review, or the comparison means nothing.
    check_patches(&webhook, &body).await?;

    eprintln!("TLS: warm-up");
    for (server, label) in [(&webhook, "webhook"), (&baseline, "baseline"), (&nginx, "nginx")] {
        oha(opts, server, label, &body_path, opts.connections, 2, None, &format!("warmup-{label}"))?;
    }
    eprintln!("TLS: closed loop, {} keep-alive connections, {} s per run", opts.connections, opts.seconds);
    let mut max_runs = Vec::new();
    for round in 0..opts.rounds {
        for (server, label) in
            [(&webhook, "webhook"), (&baseline, "baseline"), (&nginx, "nginx"), (&quiet, "webhook-quiet")]
        {
            let tag = format!("max-{label}-{round}");
            max_runs.push(oha(opts, server, label, &body_path, opts.connections, opts.seconds, None, &tag)?);
        }
    }
    let webhook_max = best(&max_runs, "webhook")?;
    let baseline_max = best(&max_runs, "baseline")?;
    let nginx_max = best(&max_runs, "nginx")?;
    let half = (webhook_max.rps / 2.0).floor();
    eprintln!("TLS: open loop at {half:.0} req/s (half the webhook's maximum)");
    let mut fixed = Vec::new();
    for (server, label) in [(&webhook, "webhook"), (&baseline, "baseline")] {
        fixed.push(open_loop(server, label, &body, opts.connections, half, opts.seconds).await?);
    }
    // oha's own fixed rate (-q with --latency-correction), for comparison: its tails come from
    // the generator (they are as long against the idle baseline).
    for (server, label) in [(&webhook, "webhook (oha -q)"), (&baseline, "baseline (oha -q)")] {
        let tag = format!("fixed-{}", label.split(' ').next().unwrap_or(label));
        fixed.push(oha(opts, server, label, &body_path, opts.connections, opts.seconds, Some(half), &tag)?);
    }
    let oha_version = Command::new(&opts.oha)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    quiet.stop();
    nginx.stop();
    baseline.stop();
    webhook.stop();
    Ok(TlsResults {
        body_bytes: body.len(),
        maps: 10,
        throughput_ratio: ratio(webhook_max.rps, baseline_max.rps),
        nginx_ratio: ratio(webhook_max.rps, nginx_max.rps),
        nginx_max,
        max_runs,
        webhook_max,
        baseline_max,
        fixed,
        oha_version,
    })
}

/// POSTs `body` once and checks that the answer carries a patch.
async fn check_patches(server: &Server, body: &[u8]) -> Result<()> {
    use tokio::io::AsyncReadExt;
    let mut stream = tls::connect(server.client(), server.addr).await?;
    let head = format!(
        "POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut buf = Vec::new();
    let _ = stream.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf);
    if !text.contains("\"patchType\":\"JSONPatch\"") {
        bail!("the webhook did not patch the benchmark review: {}", text.chars().take(400).collect::<String>());
    }
    Ok(())
}

/// Knobs for the handshake step.
#[derive(Debug, Clone)]
pub struct HandshakeOptions {
    /// Handshakes per key type (upper bound).
    pub count: u64,
    /// Time limit per key type.
    pub seconds: u64,
    /// Concurrent clients.
    pub concurrency: usize,
    /// Scratch folder.
    pub work: PathBuf,
}

/// Step 4: `count` full handshakes (no resumption, no keep-alive) against the release webhook
/// with each key type; server CPU from `/proc/PID/stat` before and after.
pub async fn handshakes(opts: &HandshakeOptions) -> Result<HandshakeResults> {
    std::fs::create_dir_all(&opts.work)?;
    write_maps(&opts.work.join("maps.json"), 10)?;
    let mut runs = Vec::new();
    let mut negotiated = String::new();
    for key in [KeyType::EcdsaP256, KeyType::Rsa2048] {
        let name = if key == KeyType::EcdsaP256 { "webhook-ecdsa" } else { "webhook-rsa" };
        let server = start_webhook(&opts.work, key, name, &[]).await?;
        {
            let stream = tls::connect(server.client(), server.addr).await?;
            let conn = stream.get_ref().1;
            negotiated = format!(
                "{:?}, {:?}, key exchange {:?}",
                conn.protocol_version().context("no version")?,
                conn.negotiated_cipher_suite().map(|s| s.suite()).context("no suite")?,
                conn.negotiated_key_exchange_group().map(|g| g.name()).context("no group")?,
            );
        }
        // Warm-up.
        hammer(&server, 50, 10, 2).await?;
        let cpu_before = procfs::cpu_seconds(server.pid())?;
        let started = Instant::now();
        let (done, failed, mut latencies) = hammer(&server, opts.count, opts.seconds, opts.concurrency).await?;
        let seconds = started.elapsed().as_secs_f64();
        let cpu = procfs::cpu_seconds(server.pid())? - cpu_before;
        let run = HandshakeRun {
            key_type: key.label().to_string(),
            handshakes: done,
            failed,
            seconds,
            server_cpu_s: cpu,
            cpu_us_per_handshake: ratio(cpu * 1e6, done as f64),
            client_p50_ms: quantile(&mut latencies, 0.5),
            client_p99_ms: quantile(&mut latencies, 0.99),
        };
        eprintln!(
            "  {:<12} {} handshakes in {:.1} s, server CPU {:.3} s = {:.0} µs each, client p50 {:.2} ms",
            run.key_type, run.handshakes, run.seconds, run.server_cpu_s, run.cpu_us_per_handshake, run.client_p50_ms
        );
        runs.push(run);
        server.stop();
    }
    Ok(HandshakeResults { runs, negotiated })
}

/// Up to `count` handshakes in `seconds` from `concurrency` clients: (done, failed, latencies ms).
async fn hammer(server: &Server, count: u64, seconds: u64, concurrency: usize) -> Result<(u64, u64, Vec<f64>)> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let remaining = Arc::new(std::sync::atomic::AtomicU64::new(count));
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let config = server.client().clone();
        let addr = server.addr;
        let remaining = remaining.clone();
        tasks.push(tokio::spawn(async move {
            let (mut done, mut failed, mut latencies) = (0u64, 0u64, Vec::new());
            while Instant::now() < deadline
                && remaining
                    .fetch_update(std::sync::atomic::Ordering::AcqRel, std::sync::atomic::Ordering::Acquire, |n| {
                        n.checked_sub(1)
                    })
                    .is_ok()
            {
                let started = Instant::now();
                match tls::connect(&config, addr).await {
                    Ok(mut stream) => {
                        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
                        done += 1;
                        // close_notify, then FIN: the server sees a clean close.
                        let _ = stream.shutdown().await;
                    }
                    Err(_) => failed += 1,
                }
            }
            (done, failed, latencies)
        }));
    }
    let (mut done, mut failed, mut latencies) = (0, 0, Vec::new());
    for task in tasks {
        let (d, f, l) = task.await?;
        done += d;
        failed += f;
        latencies.extend(l);
    }
    Ok((done, failed, latencies))
}

/// An open-loop run: request `i` is due at `start + i / rate` whatever happened before, and
/// its latency counts from that instant, so a slow answer delays the requests queued behind
/// it and shows in their latency (no coordinated omission). `connections` keep-alive
/// connections take the due requests in order; the client's timer is made exact by sleeping
/// until 1 ms before the due time and yielding after that.
pub async fn open_loop(
    server: &Server,
    label: &str,
    body: &[u8],
    connections: usize,
    rate: f64,
    seconds: u64,
) -> Result<LoadRun> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let total = (rate * seconds as f64) as u64;
    let next = Arc::new(AtomicU64::new(0));
    let head = Arc::new(format!(
        "POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    ));
    let body = Arc::new(body.to_vec());
    let mut streams = Vec::new();
    for _ in 0..connections {
        streams.push(tls::connect(server.client(), server.addr).await?);
    }
    let cpu_before = procfs::cpu_seconds(server.pid())?;
    let start = tokio::time::Instant::now() + Duration::from_millis(20);
    let mut tasks = Vec::new();
    for mut stream in streams {
        let (next, head, body) = (next.clone(), head.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failed = 0u64;
            let mut buf = Vec::with_capacity(4096);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                if let Some(early) = due.checked_sub(Duration::from_millis(1)) {
                    tokio::time::sleep_until(early).await;
                }
                while tokio::time::Instant::now() < due {
                    tokio::task::yield_now().await;
                }
                let sent = async {
                    stream.write_all(head.as_bytes()).await?;
                    stream.write_all(&body).await?;
                    read_response(&mut stream, &mut buf).await
                };
                match tokio::time::timeout(Duration::from_secs(10), sent).await {
                    Ok(Ok(200)) => latencies.push(due.elapsed().as_secs_f64() * 1000.0),
                    Ok(Ok(_)) => failed += 1,
                    // The connection is unusable after an error or a timeout.
                    _ => {
                        failed += total;
                        break;
                    }
                }
            }
            (latencies, failed)
        }));
    }
    let (mut latencies, mut failed) = (Vec::new(), 0u64);
    for task in tasks {
        let (l, f) = task.await?;
        latencies.extend(l);
        failed += f;
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = procfs::cpu_seconds(server.pid())? - cpu_before;
    let ok = latencies.len() as u64;
    let run = LoadRun {
        server: label.to_string(),
        connections,
        target_rate: Some(rate),
        seconds: wall,
        rps: ok as f64 / wall,
        p50_ms: quantile(&mut latencies, 0.5),
        p99_ms: quantile(&mut latencies, 0.99),
        p999_ms: quantile(&mut latencies, 0.999),
        ok,
        failed: failed.min(total),
        server_cpu: cpu / wall,
        server_cpu_us_per_request: ratio(cpu * 1e6, ok as f64),
    };
    eprintln!(
        "  {label:<9} c={connections:<3} rate={rate:<7.0} {:>8.0} req/s  p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  server CPU {:.0}%  (imagemap-bench open loop)",
        run.rps,
        run.p50_ms,
        run.p99_ms,
        run.p999_ms,
        run.server_cpu * 100.0
    );
    Ok(run)
}

/// Reads one `Content-Length` HTTP/1.1 response; returns its status.
async fn read_response<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Result<u16> {
    use tokio::io::AsyncReadExt;
    buf.clear();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).context("response head")?;
            let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("status")?;
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse::<usize>().ok()).flatten()
                })
                .context("no Content-Length")?;
            while buf.len() < end + 4 + len {
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    bail!("connection closed mid-body");
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok(status);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed before a response");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
