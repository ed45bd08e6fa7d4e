//! Slow and greedy clients over real sockets on 127.0.0.1 (DESIGN §8): about 300 abusive
//! connections at a time (TCP that never starts TLS, TLS that never sends a request, idle
//! keep-alive, half-sent headers, headers trickled byte by byte, stalled bodies, bodies trickled
//! byte by byte) are each closed within a generous multiple of their configured timeout; the
//! process's file descriptors return to their baseline; and legitimate reviews keep succeeding
//! meanwhile. Their latency is measured in the same run without and with the abuse and printed
//! (`--nocapture`), never asserted: see docs/reliability.md for the figures. The real binary's
//! peak memory is probed under 40 stalled near-limit bodies (the body budget).
//!
//! Its own binary, one test at a time: it counts `/proc/self/fd`, which other tests running in
//! the same process would disturb. `make stress` runs a larger variant (about 600 connections for minutes).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{mutate_head, try_request_on, wait_closed, Client, Server, FIXTURE};
use imagemap_webhook::{http::Limits, listener::Timeouts};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// How hard to push.
#[derive(Clone, Copy)]
struct Scale {
    /// Abusive connections open at a time.
    abusers: usize,
    /// Cycles (connection, abuse, wait for the close) per abusive worker, at most.
    max_cycles: usize,
    /// Legitimate reviews measured per phase and per kind of connection.
    legit: usize,
    /// Everything must be over by then.
    deadline: Duration,
}

/// One test at a time in this binary: both count the process's file descriptors.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// "Closed within its timeout", generously.
const SLACK: u32 = 5;

fn timeouts() -> Timeouts {
    Timeouts {
        handshake: Duration::from_secs(1),
        header: Duration::from_secs(1),
        body: Duration::from_secs(1),
        idle: Duration::from_millis(1500),
        shutdown: Duration::from_secs(5),
    }
}

fn limits() -> Limits {
    Limits {
        max_body_bytes: 256 * 1024,
        body_timeout: Duration::from_secs(1),
        max_concurrent_reviews: 512,
        ..Limits::default()
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).expect("/proc/self/fd")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Abuse {
    /// TCP connected, no TLS ClientHello ever: the handshake timeout.
    NoTls,
    /// TLS established, no request: the header (or idle) timeout.
    SilentTls,
    /// One request answered, then nothing on the kept-alive connection: the idle timeout.
    IdleKeepAlive,
    /// Half the request headers, then nothing: the header timeout.
    HalfHeaders,
    /// Request headers one byte every 200 ms (never idle): the header timeout.
    TrickledHeaders,
    /// Headers and a tenth of the body, then nothing: the body timeout (408).
    StalledBody,
    /// The body one byte every 200 ms (never idle): the body timeout (408).
    TrickledBody,
}

const KINDS: [Abuse; 7] = [
    Abuse::NoTls,
    Abuse::SilentTls,
    Abuse::IdleKeepAlive,
    Abuse::HalfHeaders,
    Abuse::TrickledHeaders,
    Abuse::StalledBody,
    Abuse::TrickledBody,
];

impl Abuse {
    /// The configured timeout that must close this connection.
    fn timeout(self) -> Duration {
        let (t, l) = (timeouts(), limits());
        match self {
            Abuse::NoTls => t.handshake,
            Abuse::SilentTls => t.header.max(t.idle),
            Abuse::IdleKeepAlive => t.idle,
            Abuse::HalfHeaders | Abuse::TrickledHeaders => t.header,
            Abuse::StalledBody | Abuse::TrickledBody => l.body_timeout.max(t.idle),
        }
    }
}

/// One abusive connection's fate.
struct Closed {
    kind: Abuse,
    /// From the start of the abuse (first byte of the request, or connect) to the close.
    after: Option<Duration>,
    /// What the server answered before closing, if anything (408 for stalled bodies).
    status: Option<u16>,
}

async fn trickle<S: tokio::io::AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8], limit: Duration) {
    let started = Instant::now();
    for b in bytes {
        if stream.write_all(&[*b]).await.is_err() || started.elapsed() > limit {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One cycle of one kind of abuse; `open` counts connections currently held.
async fn abuse_once(kind: Abuse, client: &Client, addr: SocketAddr, open: &AtomicUsize) -> Option<Closed> {
    let limit = kind.timeout() * SLACK;
    let head = format!("{}\r\n", mutate_head(FIXTURE.len()));
    let result = if kind == Abuse::NoTls {
        let mut tcp = TcpStream::connect(addr).await.ok()?;
        open.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let closed = wait_closed(&mut tcp, limit).await;
        Closed { kind, after: closed.ok().map(|()| started.elapsed()), status: None }
    } else {
        let mut tls = client.connect().await.ok()?;
        open.fetch_add(1, Ordering::Relaxed);
        let mut status = None;
        let started = Instant::now();
        match kind {
            Abuse::SilentTls | Abuse::NoTls => {}
            Abuse::IdleKeepAlive => {
                let r = try_request_on(&mut tls, "GET /healthz HTTP/1.1\r\nHost: x", b"", false).await;
                status = r.ok().map(|r| r.status);
            }
            Abuse::HalfHeaders => {
                let _ = tls.write_all(&head.as_bytes()[..head.len() / 2]).await;
            }
            Abuse::TrickledHeaders => trickle(&mut tls, head.as_bytes(), limit).await,
            Abuse::StalledBody | Abuse::TrickledBody => {
                let mut req = format!("{head}\r\n").into_bytes();
                req.extend_from_slice(&FIXTURE.as_bytes()[..FIXTURE.len() / 10]);
                let _ = tls.write_all(&req).await;
                if kind == Abuse::TrickledBody {
                    let rest = &FIXTURE.as_bytes()[FIXTURE.len() / 10..];
                    trickle(&mut tls, rest, limit).await;
                }
                status = common::try_read_reply(&mut tls).await.ok().map(|r| r.status);
            }
        }
        let closed = wait_closed(&mut tls, limit.saturating_sub(started.elapsed())).await;
        Closed { kind, after: closed.ok().map(|()| started.elapsed()), status }
    };
    open.fetch_sub(1, Ordering::Relaxed);
    Some(result)
}

/// Latencies of `n` reviews, each on a new connection (a full TLS handshake, as an API server
/// without a warm connection does), and of `n` on one kept-alive connection. Every review must
/// be answered 200 with a patch; returns the failures otherwise.
async fn measure(client: &Client, n: usize) -> (Vec<Duration>, Vec<Duration>, Vec<String>) {
    let mut fresh = Vec::with_capacity(n);
    let mut kept = Vec::with_capacity(n);
    let mut failures = Vec::new();
    let head = mutate_head(FIXTURE.len());
    for _ in 0..n {
        let t = Instant::now();
        let result = match client.connect().await {
            Ok(mut conn) => try_request_on(&mut conn, &head, FIXTURE.as_bytes(), true).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(r) if r.status == 200 && r.body.contains("\"patch\"") => fresh.push(t.elapsed()),
            Ok(r) => failures.push(format!("{} {}", r.status, r.body)),
            Err(e) => failures.push(e.to_string()),
        }
    }
    match client.connect().await {
        Ok(mut conn) => {
            for _ in 0..n {
                let t = Instant::now();
                match try_request_on(&mut conn, &head, FIXTURE.as_bytes(), false).await {
                    Ok(r) if r.status == 200 && r.body.contains("\"patch\"") => kept.push(t.elapsed()),
                    Ok(r) => failures.push(format!("keep-alive: {} {}", r.status, r.body)),
                    Err(e) => {
                        failures.push(format!("keep-alive: {e}"));
                        break;
                    }
                }
            }
        }
        Err(e) => failures.push(format!("keep-alive handshake: {e}")),
    }
    (fresh, kept, failures)
}

fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut s = samples.to_vec();
    s.sort();
    if s.is_empty() {
        return Duration::ZERO;
    }
    s[((s.len() as f64 * p).ceil() as usize).clamp(1, s.len()) - 1]
}

fn summary(samples: &[Duration]) -> String {
    format!(
        "p50 {:.1?}, p99 {:.1?}, max {:.1?} (n={})",
        percentile(samples, 0.50),
        percentile(samples, 0.99),
        percentile(samples, 1.0),
        samples.len()
    )
}

fn map_for_fixture() -> imagemap_core::types::ImageMap {
    imagemap_core::types::ImageMap::for_selector("dev", "api", "my-apiserver")
        .with_image("localhost:5000/my-apiserver:tilt-1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_are_closed_in_time_fds_return_to_baseline_and_reviews_keep_succeeding() {
    let _one = ONE_AT_A_TIME.lock().await;
    let scale = Scale { abusers: 301, max_cycles: 20, legit: 150, deadline: Duration::from_secs(150) };
    tokio::time::timeout(scale.deadline, run(scale)).await.expect("the whole test finishes within its deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "stress: 601 abusive connections at a time, 1000 measured reviews per phase (a few minutes)"]
async fn stress_six_hundred_slow_and_idle_clients() {
    let _one = ONE_AT_A_TIME.lock().await;
    let scale = Scale { abusers: 601, max_cycles: 200, legit: 1000, deadline: Duration::from_secs(600) };
    tokio::time::timeout(scale.deadline, run(scale)).await.expect("the whole test finishes within its deadline");
}

async fn run(scale: Scale) {
    let Scale { abusers, max_cycles, legit, .. } = scale;
    let server = Server::start(timeouts(), limits(), Duration::from_secs(5)).await;
    server.state.update_index(|idx| idx.replace_cluster([&map_for_fixture()]));
    let client = server.client();

    // Without abuse (this also warms up whatever the runtime allocates lazily).
    let (quiet_fresh, quiet_kept, failures) = measure(&client, legit).await;
    assert!(failures.is_empty(), "reviews failed without abuse: {failures:?}");
    let baseline = settled_fds().await;

    // With about 300 abusive connections open at all times.
    let stop = Arc::new(AtomicBool::new(false));
    let open = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for i in 0..abusers {
        let (client, stop, open) = (client.clone(), stop.clone(), open.clone());
        let kind = KINDS[i % KINDS.len()];
        let addr = server.addr;
        workers.push(tokio::spawn(async move {
            let mut fates = Vec::new();
            for _ in 0..max_cycles {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                match abuse_once(kind, &client, addr, &open).await {
                    Some(fate) => fates.push(fate),
                    None => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
            fates
        }));
    }
    let ramp = Instant::now();
    while open.load(Ordering::Relaxed) < abusers * 9 / 10 && ramp.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let peak_fds = open_fds();
    let held = open.load(Ordering::Relaxed);
    let (busy_fresh, busy_kept, failures) = measure(&client, legit).await;
    let held_after = open.load(Ordering::Relaxed);
    stop.store(true, Ordering::Release);
    assert!(failures.is_empty(), "reviews failed during the abuse: {failures:?}");

    let mut fates = Vec::new();
    for w in workers {
        fates.extend(w.await.expect("abusive worker"));
    }
    let mut late = Vec::new();
    let mut by_kind = std::collections::BTreeMap::<Abuse, (usize, Duration)>::new();
    for f in &fates {
        match f.after {
            Some(after) => {
                let e = by_kind.entry(f.kind).or_default();
                e.0 += 1;
                e.1 = e.1.max(after);
            }
            None => late.push(f.kind),
        }
        if matches!(f.kind, Abuse::StalledBody | Abuse::TrickledBody) {
            assert!(matches!(f.status, Some(408) | None), "{:?} got {:?}", f.kind, f.status);
        }
    }
    assert!(late.is_empty(), "{} connections were still open after {SLACK}x their timeout: {late:?}", late.len());
    assert!(fates.len() >= abusers, "every abusive worker completed at least one cycle: {}", fates.len());
    for kind in KINDS {
        assert!(by_kind.get(&kind).is_some_and(|(n, _)| *n > 0), "{kind:?} was exercised");
    }
    let stalled_408 = fates.iter().filter(|f| f.status == Some(408)).count();
    assert!(stalled_408 > 0, "stalled bodies are answered 408");

    // File descriptors back to the baseline once the abusers are gone.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut now = open_fds();
    while now > baseline && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        now = open_fds();
    }
    assert!(now <= baseline, "file descriptors: baseline {baseline}, now {now} (peak {peak_fds})");
    let reply = client.send("GET /healthz HTTP/1.1\r\nHost: x", b"").await;
    assert_eq!(reply.status, 200, "still serving");

    eprintln!("abusive connections: {} closed, held {held}..{held_after} at a time while measuring", fates.len());
    for (kind, (n, worst)) in &by_kind {
        eprintln!("  {kind:?}: {n} closed, slowest {worst:.2?} after the abuse began (timeout {:?})", kind.timeout());
    }
    eprintln!("file descriptors: baseline {baseline}, peak {peak_fds}, after {now}");
    eprintln!("reviews on new connections, quiet: {}", summary(&quiet_fresh));
    eprintln!("reviews on new connections, abused: {}", summary(&busy_fresh));
    eprintln!("reviews on one keep-alive connection, quiet: {}", summary(&quiet_kept));
    eprintln!("reviews on one keep-alive connection, abused: {}", summary(&busy_kept));
}

/// The descriptor count once it stops moving (connections of the last phase closing).
async fn settled_fds() -> usize {
    let mut last = open_fds();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = open_fds();
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

// ---------------------------------------------------------------------------------------------
// Memory under stalled near-limit bodies (the real binary)

/// The chart's memory limit for the webhook container.
const MEMORY_LIMIT_KIB: u64 = 128 * 1024;
/// Clients that each send 95% of a body just under `--max-body-bytes`, then stall.
const STALLED: usize = 40;
/// The binary's defaults.
const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;
const BUDGET_BYTES: usize = 32 * 1024 * 1024;

/// `VmRSS` and `VmHWM` (the peak) of process `pid`, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} in {status}"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0)
}

async fn get(client: &Client, path: &str) -> Option<common::Reply> {
    let mut conn = client.connect().await.ok()?;
    try_request_on(&mut conn, &format!("GET {path} HTTP/1.1\r\nHost: x"), b"", true).await.ok()
}

/// Polls until `check` holds; the limit only bounds a failing test.
async fn until<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !check().await {
        assert!(Instant::now() < deadline, "{what} never happened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What one probe measured.
struct Figures {
    body_kib: usize,
    idle: (u64, u64),
    peak_kib: u64,
    drawn: u64,
    waiting: u64,
    waits: u64,
    written: usize,
    patched: usize,
}

/// Starts the binary with `--max-body-bytes max_body` and its other limits at their defaults
/// (or in `extra`), has [`STALLED`] clients each send 95% of a body 1 KiB under `max_body` and
/// stall, waits until the server holds all it will hold, then sends 10 reviews at once and
/// reads the peak memory. `budget` is the body budget in force, for the settled state to wait
/// for (`None`: no budget to speak of).
async fn stalled_bodies_probe(max_body: usize, extra: &[&str], budget: Option<usize>) -> Figures {
    let maps = serde_json::to_string(&map_for_fixture()).expect("map");
    // Long body and header timeouts: the stalled clients are held for the whole probe.
    let max_body_flag = max_body.to_string();
    let args =
        [&["--body-timeout", "300s", "--header-timeout", "300s", "--max-body-bytes", &max_body_flag], extra].concat();
    let (binary, client) = common::launch(&maps, &args);
    let pid = binary.child.id();
    until("readiness", || async { get(&client, "/readyz").await.is_some_and(|r| r.status == 200) }).await;
    let warm = client.post(FIXTURE.as_bytes()).await;
    assert_eq!(warm.status, 200, "{}", warm.body);
    let idle = memory_kib(pid);

    let declared = max_body - 1024;
    let sent = Arc::new(vec![b' '; declared * 95 / 100]);
    let written = Arc::new(AtomicUsize::new(0));
    let mut stallers = Vec::new();
    for _ in 0..STALLED {
        let (client, sent, written) = (client.clone(), sent.clone(), written.clone());
        stallers.push(tokio::spawn(async move {
            let mut conn = client.connect().await.expect("handshake");
            let head = format!("{}\r\n\r\n", mutate_head(declared));
            conn.write_all(head.as_bytes()).await.expect("head");
            // Returns once the kernel took it all; a body the server does not read stays here.
            if conn.write_all(&sent).await.is_ok() && conn.flush().await.is_ok() {
                written.fetch_add(1, Ordering::Relaxed);
            }
            std::future::pending::<()>().await; // stalls; aborted at the end
            drop(conn);
        }));
    }

    // Settled: with a budget, as many bodies as it fits each drew all their Content-Length
    // needs past the 64 KiB allowance and every other one waits; without one, every body is
    // sent.
    let per_body = declared - imagemap_webhook::http::UNBUDGETED_BODY_BYTES;
    let metrics = || async { get(&client, "/metrics").await.map(|r| r.body).unwrap_or_default() };
    match budget {
        Some(budget) => {
            let waiters = (STALLED - budget / per_body) as u64;
            until("the budget settling", || async {
                let text = metrics().await;
                metric(&text, "imagemap_body_budget_bytes") == budget as u64
                    && metric(&text, "imagemap_body_budget_waiting") == waiters
            })
            .await;
        }
        None => until("every body sent", || async { written.load(Ordering::Relaxed) == STALLED }).await,
    }
    let settled = metrics().await;

    // Ten reviews at once meanwhile.
    let replies = futures::future::join_all((0..10).map(|_| {
        let c = client.clone();
        async move { c.post(FIXTURE.as_bytes()).await }
    }))
    .await;
    let patched = replies.iter().filter(|r| r.status == 200 && r.body.contains("\"patchType\":\"JSONPatch\"")).count();
    let (_, peak_kib) = memory_kib(pid);
    for s in &stallers {
        s.abort();
    }
    Figures {
        body_kib: sent.len() / 1024,
        idle,
        peak_kib,
        drawn: metric(&settled, "imagemap_body_budget_bytes"),
        waiting: metric(&settled, "imagemap_body_budget_waiting"),
        waits: metric(&settled, "imagemap_body_budget_waits_total"),
        written: written.load(Ordering::Relaxed),
        patched,
    }
}

fn print(label: &str, f: &Figures) {
    eprintln!(
        "{label}: idle RSS {} KiB (peak {} KiB); with {STALLED} stalled bodies of {} KiB: peak RSS (VmHWM) {} KiB \
         = {:.1} MiB; budget drawn {} KiB, {} requests waiting ({} waits), {}/{STALLED} bodies fully sent; \
         {}/10 reviews patched meanwhile",
        f.idle.0,
        f.idle.1,
        f.body_kib,
        f.peak_kib,
        f.peak_kib as f64 / 1024.0,
        f.drawn / 1024,
        f.waiting,
        f.waits,
        f.written,
        f.patched
    );
}

/// 40 clients each send 95% of a body just under `--max-body-bytes` (3 MiB) and stall: the
/// body budget (32 MiB) holds what ten of them sent, the other thirty wait having sent their
/// allowance, the binary's peak RSS stays under the chart's 128 MiB limit, and ten reviews
/// sent meanwhile are all patched. Without the budget the peak was 283 MiB (7 MiB bodies) and
/// is about 150 MiB with 3 MiB bodies (`..._without_a_budget` below).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_near_limit_bodies_keep_the_binary_under_its_memory_limit_while_reviews_are_patched() {
    let _one = ONE_AT_A_TIME.lock().await;
    let f = stalled_bodies_probe(MAX_BODY_BYTES, &[], Some(BUDGET_BYTES)).await;
    print("with the default 32 MiB body budget", &f);
    assert_eq!(f.patched, 10, "every review sent meanwhile is patched");
    assert_eq!(f.drawn, BUDGET_BYTES as u64, "the budget is all drawn, never more");
    assert!(f.waiting > 0 && f.waits >= f.waiting, "bodies past the budget wait: {} waiting", f.waiting);
    assert!(
        f.peak_kib < MEMORY_LIMIT_KIB,
        "peak RSS {} KiB is over the chart's memory limit of {MEMORY_LIMIT_KIB} KiB",
        f.peak_kib
    );
}

/// The same probe with the budget out of the way (1 GiB), and with the former 7 MiB
/// `--max-body-bytes`: the figures the budget is compared with in docs/reliability.md. Prints;
/// asserts only that the reviews are patched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: the webhook's peak memory without a body budget (up to about 300 MiB)"]
async fn stalled_near_limit_bodies_measured_with_and_without_a_budget() {
    let _one = ONE_AT_A_TIME.lock().await;
    let no_budget = ["--max-buffered-body-bytes", "1073741824"];
    for (label, max_body, extra, budget) in [
        ("3 MiB bodies, no budget", MAX_BODY_BYTES, &no_budget[..], None),
        ("7 MiB bodies, 32 MiB budget", 7 * 1024 * 1024, &[][..], Some(BUDGET_BYTES)),
        ("7 MiB bodies, no budget", 7 * 1024 * 1024, &no_budget[..], None),
    ] {
        let f = stalled_bodies_probe(max_body, extra, budget).await;
        print(label, &f);
        assert_eq!(f.patched, 10, "every review sent meanwhile is patched");
    }
}
