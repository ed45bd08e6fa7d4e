//! Faults under load, over real sockets on 127.0.0.1 (DESIGN §8): clients that stall mid-body,
//! more than the review cap, hold no review slot, so real reviews still get their patch; the serving certificate is rotated
//! (and broken, and rotated again) while clients keep sending reviews, with no failed request; the
//! real binary logs a broken pair and keeps the old one; the real binary, sent SIGTERM under load,
//! fails readiness first, finishes in-flight reviews and exits in time; and the real binary
//! answers every kind of bad request a probe from outside may send with a clear 4xx (or "allowed,
//! no patch"), never a 5xx, and keeps serving on the same and other connections.
//!
//! Every load generator here is a handful of tasks, bounded in requests and in time, that stop by
//! themselves. No assertion is on latency; the only time bounds are generous multiples of
//! configured intervals and timeouts.
#![allow(clippy::too_many_lines, reason = "a test reads top to bottom as the scenario it checks")]

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{mutate_head, pem_to_der, try_request_on, Client, Server, FIXTURE};
use imagemap_webhook::{http::Limits, listener::Timeouts};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

/// A hard cap on any load task, whatever happens.
const LOAD_DEADLINE: Duration = Duration::from_secs(60);

/// Pause between two requests of one load task: steady load that leaves CPU for the server on
/// two shared cores.
const PACE: Duration = Duration::from_millis(5);

fn timeouts() -> Timeouts {
    Timeouts {
        handshake: Duration::from_secs(2),
        header: Duration::from_secs(2),
        body: Duration::from_secs(2),
        idle: Duration::from_secs(30),
        shutdown: Duration::from_secs(5),
    }
}

async fn poll_until<F: std::future::Future<Output = bool>>(limit: Duration, mut check: impl FnMut() -> F) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `/metrics` until `imagemap_tls_reload_broken` equals `want`, for at most `limit`.
async fn broken_gauge_reaches(client: &Client, want: f64, limit: Duration) -> bool {
    poll_until(limit, || {
        let c = client.clone();
        async move { metric(&metrics(&c).await, "imagemap_tls_reload_broken") == Some(want) }
    })
    .await
}

async fn metrics(client: &Client) -> String {
    client.send("GET /metrics HTTP/1.1\r\nHost: x", b"").await.body
}

/// The value of a metric line `name{labels} value` (first match), if present.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
}

// ---------------------------------------------------------------------------------------------
// Concurrency cap

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_beyond_the_review_cap_do_not_starve_real_reviews() {
    let limits = Limits {
        max_body_bytes: 256 * 1024,
        body_timeout: Duration::from_secs(20),
        max_concurrent_reviews: 2,
        ..Limits::default()
    };
    let server = Server::start(timeouts(), limits, Duration::from_secs(1)).await;
    let map: imagemap_core::types::ImageMap = serde_json::from_value(serde_json::json!({
        "apiVersion": "tilt.dev/v1alpha1", "kind": "ImageMap", "metadata": {"name": "api"},
        "spec": {"selector": "my-apiserver"}, "status": {"image": "localhost:5000/my-apiserver:tilt-1"}
    }))
    .expect("a map");
    server.state.update_index(|index| index.replace_file([&map]));
    let client = server.client();
    let body = FIXTURE.as_bytes();
    let (first, rest) = body.split_at(body.len() / 2);

    // Ten times the review cap: clients that send headers and half a body, then wait.
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut conn = client.connect().await.expect("handshake");
        let mut req = format!("{}\r\n\r\n", mutate_head(body.len())).into_bytes();
        req.extend_from_slice(first);
        conn.write_all(&req).await.expect("write the first half");
        held.push(conn);
    }
    assert_eq!(server.state.concurrency.available_permits(), 2, "a stalled body holds no review slot");

    // Real reviews meanwhile, ten at once: each answered with its patch, none refused.
    let replies = futures::future::join_all((0..10).map(|_| {
        let c = client.clone();
        async move { c.post(FIXTURE.as_bytes()).await }
    }))
    .await;
    for reply in &replies {
        assert_eq!(reply.status, 200, "{}", reply.body);
        let review: Value = serde_json::from_str(&reply.body).expect("a review");
        assert_eq!(review["response"]["allowed"], true);
        assert_eq!(review["response"]["patchType"], "JSONPatch", "swapped: {}", reply.body);
    }
    let text = metrics(&client).await;
    assert_eq!(metric(&text, "imagemap_refused_requests_total{reason=\"busy\"}").unwrap_or(0.0), 0.0, "{text}");

    // The stalled reviews complete once their bodies arrive.
    for conn in &mut held {
        conn.write_all(rest).await.expect("write the second half");
        let reply = common::try_read_reply(conn).await.expect("a reply to the held review");
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_connection_cap_wait_until_one_closes() {
    let server = Server::start_with(timeouts(), Limits::default(), Duration::from_secs(1), 2).await;
    let client = server.client();
    let mut open = vec![client.connect().await.expect("first"), client.connect().await.expect("second")];
    // The third is queued by the kernel, not handshaken, while two are open.
    let third = tokio::spawn({
        let c = client.clone();
        async move { c.connect().await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!third.is_finished(), "a third connection is not served while two are open");
    open.pop();
    let mut third = tokio::time::timeout(Duration::from_secs(20), third)
        .await
        .expect("served once one closes")
        .expect("task")
        .expect("handshake");
    let reply =
        try_request_on(&mut third, &mutate_head(FIXTURE.len()), FIXTURE.as_bytes(), true).await.expect("a reply");
    assert_eq!(reply.status, 200, "{}", reply.body);
}

// ---------------------------------------------------------------------------------------------
// Certificate rotation under load

/// What the load generator saw.
#[derive(Default)]
struct Seen {
    /// Every failed request or handshake, with why.
    failures: Vec<String>,
    /// Per new-connection task: (when, certificate DER) of each handshake, in order.
    handshakes: Vec<Vec<(Instant, Vec<u8>)>>,
    /// Reviews answered 200.
    ok: usize,
}

impl Seen {
    /// Fails the test with the first few failures, if any.
    fn assert_no_failures(&self) {
        let shown = &self.failures[..self.failures.len().min(5)];
        assert!(self.failures.is_empty(), "{} failed requests: {shown:?}", self.failures.len());
    }
}

/// Counts a reply; false when the connection failed.
fn record(seen: &Mutex<Seen>, what: &str, result: std::io::Result<common::Reply>) -> bool {
    let mut s = seen.lock().expect("lock");
    match result {
        Ok(r) if r.status == 200 => s.ok += 1,
        Ok(r) => s.failures.push(format!("{what}: {} {}", r.status, r.body)),
        Err(e) => {
            s.failures.push(format!("{what}: {e}"));
            return false;
        }
    }
    true
}

/// A keep-alive client: one connection for the whole run, reviews one after another.
async fn keep_alive_load(client: Client, stop: Arc<AtomicBool>, seen: Arc<Mutex<Seen>>, max: usize) -> usize {
    let deadline = Instant::now() + LOAD_DEADLINE;
    let mut conn = match client.connect().await {
        Ok(c) => c,
        Err(e) => {
            seen.lock().expect("lock").failures.push(format!("keep-alive handshake: {e}"));
            return 0;
        }
    };
    let mut sent = 0;
    while !stop.load(Ordering::Acquire) && sent < max && Instant::now() < deadline {
        let result = try_request_on(&mut conn, &mutate_head(FIXTURE.len()), FIXTURE.as_bytes(), false).await;
        sent += 1;
        if !record(&seen, "keep-alive review", result) {
            return sent;
        }
        tokio::time::sleep(PACE).await;
    }
    sent
}

/// A client that opens a new connection (a new handshake) for every review.
async fn new_connection_load(client: Client, stop: Arc<AtomicBool>, seen: Arc<Mutex<Seen>>, slot: usize, max: usize) {
    let deadline = Instant::now() + LOAD_DEADLINE;
    let mut sent = 0;
    while !stop.load(Ordering::Acquire) && sent < max && Instant::now() < deadline {
        sent += 1;
        let mut conn = match client.connect().await {
            Ok(c) => c,
            Err(e) => {
                seen.lock().expect("lock").failures.push(format!("handshake: {e}"));
                continue;
            }
        };
        let der = conn.get_ref().1.peer_certificates().map(|c| c[0].to_vec()).unwrap_or_default();
        seen.lock().expect("lock").handshakes[slot].push((Instant::now(), der));
        let result = try_request_on(&mut conn, &mutate_head(FIXTURE.len()), FIXTURE.as_bytes(), true).await;
        record(&seen, "review", result);
        tokio::time::sleep(PACE).await;
    }
}

/// Lets the load run for a second (each phase of the rotation test), then checks it made
/// progress.
async fn keeps_serving(served: &impl Fn() -> usize) {
    let before = served();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(poll_until(Duration::from_secs(20), || async { served() >= before + 20 }).await, "the load makes progress");
}

/// The first handshake at or after `since` that presented `der`, across tasks.
fn first_seen(seen: &Mutex<Seen>, der: &[u8], since: Instant) -> Option<Instant> {
    let s = seen.lock().expect("lock");
    s.handshakes.iter().flatten().filter(|(t, d)| *t >= since && d == der).map(|(t, _)| *t).min()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_certificate_under_load_fails_no_request_and_a_broken_pair_keeps_the_old_one() {
    let reload = Duration::from_millis(200);
    // "Within the reload interval", with room for a loaded machine: 25 intervals.
    let bound = reload * 25;
    let server = Server::start(timeouts(), Limits { max_body_bytes: 256 * 1024, ..Limits::default() }, reload).await;
    let v1 = pem_to_der(&std::fs::read_to_string(server.dir.join("..v1/tls.crt")).expect("read v1"));
    let v2_dir = server.dir.join("..v2");
    let v4_dir = server.dir.join("..v4");
    let broken_dir = server.dir.join("..v3-broken");
    for d in [&v2_dir, &v4_dir, &broken_dir] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    // v2 and v4 come from new CAs: the clients trust all three, as an API server does while
    // its caBundle holds the old and the new CA.
    let ca2 = common::mint(&v2_dir);
    let ca4 = common::mint(&v4_dir);
    // A cert from v4 with v2's key: both files load, the pair does not match.
    std::fs::copy(v4_dir.join("tls.crt"), broken_dir.join("tls.crt")).expect("copy cert");
    std::fs::copy(v2_dir.join("tls.key"), broken_dir.join("tls.key")).expect("copy key");
    let v2 = pem_to_der(&std::fs::read_to_string(v2_dir.join("tls.crt")).expect("read v2"));
    let v4 = pem_to_der(&std::fs::read_to_string(v4_dir.join("tls.crt")).expect("read v4"));
    // No TLS session resumption: a resumed handshake presents no certificate at all.
    let client = Client::without_resumption(&format!("{}{}{}", server.ca_pem, ca2.cert_pem, ca4.cert_pem), server.addr);

    let stop = Arc::new(AtomicBool::new(false));
    let new_conn_tasks = 2;
    let seen = Arc::new(Mutex::new(Seen { handshakes: vec![Vec::new(); new_conn_tasks], ..Seen::default() }));
    let mut tasks = Vec::new();
    for _ in 0..2 {
        tasks.push(tokio::spawn(keep_alive_load(client.clone(), stop.clone(), seen.clone(), 20_000)));
    }
    let mut handshakers = Vec::new();
    for slot in 0..new_conn_tasks {
        handshakers.push(tokio::spawn(new_connection_load(client.clone(), stop.clone(), seen.clone(), slot, 20_000)));
    }
    let served = || seen.lock().expect("lock").ok;
    keeps_serving(&served).await;

    // 1. A new pair: new handshakes present it within the bound.
    let swapped_at = Instant::now();
    server.swap_current(&v2_dir);
    let ok = poll_until(bound * 3, || async { first_seen(&seen, &v2, swapped_at).is_some() }).await;
    {
        let s = seen.lock().expect("lock");
        let after: Vec<_> = s
            .handshakes
            .iter()
            .flatten()
            .filter(|(t, _)| *t >= swapped_at)
            .map(|(_, d)| {
                if *d == v1 {
                    "v1"
                } else if *d == v2 {
                    "v2"
                } else {
                    "other"
                }
            })
            .collect();
        assert!(ok, "the new certificate is served; failures: {:?}; after the swap: {after:?}", s.failures);
    }
    let delay_v2 = first_seen(&seen, &v2, swapped_at).expect("seen") - swapped_at;
    assert!(delay_v2 <= bound, "new handshakes present the new certificate within {bound:?}: {delay_v2:?}");
    keeps_serving(&served).await;

    // 2. A broken pair: reported, and the previous pair keeps serving.
    let broken_at = Instant::now();
    server.swap_current(&broken_dir);
    let c = client.clone();
    assert!(broken_gauge_reaches(&c, 1.0, bound * 3).await, "the broken pair is reported in metrics");
    keeps_serving(&served).await;
    {
        let s = seen.lock().expect("lock");
        let during: Vec<_> = s.handshakes.iter().flatten().filter(|(t, _)| *t > broken_at).collect();
        assert!(!during.is_empty(), "handshakes happened while the pair on disk was broken");
        assert!(during.iter().all(|(_, d)| *d == v2), "only the last good pair was served meanwhile");
    }

    // 3. A good pair again: served, and the metric clears.
    let fixed_at = Instant::now();
    server.swap_current(&v4_dir);
    assert!(
        poll_until(bound * 3, || async { first_seen(&seen, &v4, fixed_at).is_some() }).await,
        "the next good pair is served"
    );
    let delay_v4 = first_seen(&seen, &v4, fixed_at).expect("seen") - fixed_at;
    assert!(delay_v4 <= bound, "within {bound:?}: {delay_v4:?}");
    assert_eq!(metric(&metrics(&client).await, "imagemap_tls_reload_broken"), Some(0.0));
    keeps_serving(&served).await;

    stop.store(true, Ordering::Release);
    let mut kept = Vec::new();
    for t in tasks {
        kept.push(t.await.expect("keep-alive task"));
    }
    for t in handshakers {
        t.await.expect("handshake task");
    }
    let s = seen.lock().expect("lock");
    s.assert_no_failures();
    // Each task's handshakes show the pairs in order, never an older one after a newer one.
    for (slot, hs) in s.handshakes.iter().enumerate() {
        let order: Vec<usize> =
            hs.iter().map(|(_, d)| [&v1, &v2, &v4].iter().position(|c| *c == d).unwrap_or(usize::MAX)).collect();
        assert!(order.iter().all(|o| *o != usize::MAX), "task {slot} saw an unknown certificate");
        assert!(order.windows(2).all(|w| w[0] <= w[1]), "task {slot} saw an older pair after a newer one");
    }
    let handshakes: usize = s.handshakes.iter().map(Vec::len).sum();
    eprintln!(
        "rotation under load: {} reviews OK, 0 failed; {handshakes} handshakes; keep-alive connections served {kept:?} \
         reviews each without reconnecting; new pair first served after {delay_v2:.0?} and {delay_v4:.0?} \
         (reload interval {reload:?})",
        s.ok
    );
}

// ---------------------------------------------------------------------------------------------
// Graceful shutdown of the real binary under load

const MAPS: &str = r#"{"apiVersion":"v1","kind":"List","items":[
 {"apiVersion":"tilt.dev/v1alpha1","kind":"ImageMap","metadata":{"name":"api","namespace":"dev"},
  "spec":{"selector":"my-apiserver"},"status":{"image":"localhost:5000/my-apiserver:tilt-1"}}]}"#;

/// Starts the binary with `--no-cluster`, [`MAPS`] and `extra` flags (see [`common::launch`]),
/// and returns once its `/readyz` answers 200.
async fn start_binary(extra: &[&str]) -> (common::Binary, Client) {
    let (binary, client) = common::launch(MAPS, extra);
    let c = client.clone();
    assert!(
        poll_until(Duration::from_secs(30), || {
            let c = c.clone();
            async move { status_of(&c, "/readyz").await.is_some_and(|(s, _)| s == 200) }
        })
        .await,
        "the webhook became ready"
    );
    (binary, client)
}

async fn status_of(client: &Client, path: &str) -> Option<(u16, String)> {
    let mut conn = client.connect().await.ok()?;
    let r = try_request_on(&mut conn, &format!("GET {path} HTTP/1.1\r\nHost: x"), b"", true).await.ok()?;
    Some((r.status, r.body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_fails_readiness_first_finishes_in_flight_reviews_and_exits_in_time() {
    let delay = Duration::from_secs(2);
    let drain = Duration::from_secs(10);
    // Kubernetes' default terminationGracePeriodSeconds.
    let grace = Duration::from_secs(30);
    let (mut binary, client) =
        start_binary(&["--shutdown-delay", "2s", "--shutdown-timeout", "10s", "--body-timeout", "25s"]).await;

    // Load: reviews from three clients until readiness fails (as endpoints stop routing then).
    let not_ready = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for keep_alive in [true, false, false] {
        let (client, not_ready, failures, answered) =
            (client.clone(), not_ready.clone(), failures.clone(), answered.clone());
        load.push(tokio::spawn(async move {
            let deadline = Instant::now() + LOAD_DEADLINE;
            let mut conn = None;
            while !not_ready.load(Ordering::Acquire) && Instant::now() < deadline {
                if conn.is_none() {
                    match client.connect().await {
                        Ok(c) => conn = Some(c),
                        Err(e) => {
                            failures.lock().expect("lock").push(format!("handshake: {e}"));
                            break;
                        }
                    }
                }
                let stream = conn.as_mut().expect("connected");
                let r = try_request_on(stream, &mutate_head(FIXTURE.len()), FIXTURE.as_bytes(), !keep_alive).await;
                match r {
                    Ok(r) if r.status == 200 && r.body.contains("\"patch\"") => {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures.lock().expect("lock").push(format!("review: {} {}", r.status, r.body)),
                    Err(e) => failures.lock().expect("lock").push(format!("review: {e}")),
                }
                if !keep_alive {
                    conn = None;
                }
                tokio::time::sleep(PACE).await;
            }
        }));
    }
    // A probe like the kubelet's: a new connection every 50 ms.
    let probe = {
        let (client, not_ready) = (client.clone(), not_ready.clone());
        tokio::spawn(async move {
            let deadline = Instant::now() + LOAD_DEADLINE;
            while Instant::now() < deadline {
                if let Some((503, body)) = status_of(&client, "/readyz").await {
                    not_ready.store(true, Ordering::Release);
                    return Some((Instant::now(), body));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            None
        })
    };
    // A review in flight across the whole shutdown: half its body now, the rest while draining.
    let body = FIXTURE.as_bytes();
    let (first, rest) = body.split_at(body.len() / 2);
    let mut in_flight = client.connect().await.expect("handshake");
    let mut req = format!("{}\r\n\r\n", mutate_head(body.len())).into_bytes();
    req.extend_from_slice(first);
    in_flight.write_all(&req).await.expect("write the first half");
    assert!(
        poll_until(Duration::from_secs(20), || async { answered.load(Ordering::Relaxed) >= 30 }).await,
        "load runs"
    );

    let termed = Instant::now();
    let pid = binary.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());

    let (failed_at, why) = probe.await.expect("probe task").expect("readiness failed after SIGTERM");
    assert!(why.contains("shutting down"), "{why}");
    let readiness_failed_after = failed_at - termed;
    // Still serving while not ready: the delay lets endpoints catch up before draining.
    if Instant::now() < termed + delay {
        let r = client.post(FIXTURE.as_bytes()).await;
        assert_eq!(r.status, 200, "reviews are still answered while readiness fails: {}", r.body);
        assert_eq!(status_of(&client, "/healthz").await.map(|(s, _)| s), Some(200), "still alive");
    }
    for t in load {
        t.await.expect("load task");
    }

    // Draining: the listener is closed, the review in flight still gets its answer.
    let c = client.clone();
    assert!(
        poll_until(delay * 5, || {
            let c = c.clone();
            async move { c.connect().await.is_err() }
        })
        .await,
        "new connections are refused once draining"
    );
    in_flight.write_all(rest).await.expect("write the rest while draining");
    let reply = common::try_read_reply(&mut in_flight).await.expect("the in-flight review is answered");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.body.contains("\"patch\""), "and swapped: {}", reply.body);

    let exit = loop {
        if let Some(exit) = binary.child.try_wait().expect("wait") {
            break exit;
        }
        assert!(termed.elapsed() < grace, "exited within the grace period ({grace:?})");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let exited_after = termed.elapsed();
    assert!(exit.success(), "exit status {exit:?}");
    assert!(exited_after < delay + drain + Duration::from_secs(5), "exit after the delay and drain: {exited_after:?}");
    let failures = failures.lock().expect("lock");
    assert!(failures.is_empty(), "client errors: {failures:?}");

    let log = std::fs::read_to_string(&binary.log).expect("log");
    let at = |needle: &str| log.find(needle).unwrap_or_else(|| panic!("{needle:?} in the log:\n{log}"));
    assert!(at("readiness now fails") < at("draining in-flight requests"), "{log}");
    assert!(at("draining in-flight requests") < at("stopped"), "{log}");
    eprintln!(
        "shutdown under load: {} reviews answered, 0 client errors; readiness failed {readiness_failed_after:.0?} \
         after SIGTERM; exited {exited_after:.1?} after SIGTERM (delay {delay:?}, drain timeout {drain:?})",
        answered.load(Ordering::Relaxed)
    );
}

// ---------------------------------------------------------------------------------------------
// Idle keep-alive connections

/// `--idle-timeout` (default 90 s) says how long an idle keep-alive connection is kept; the
/// header timeout (default 5 s) is for a request whose headers have started. An API server
/// keeps its connections to a webhook alive between reviews: closing them at the header
/// timeout costs a new TLS handshake per burst and opens a race where a review is sent on a
/// connection the server is closing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_kept_until_the_idle_timeout() {
    let header = Duration::from_millis(300);
    let idle = Duration::from_secs(4);
    let t = Timeouts { header, idle, ..timeouts() };
    let server = Server::start(t, Limits::default(), Duration::from_secs(1)).await;
    let mut conn = server.client().connect().await.expect("handshake");
    let r = try_request_on(&mut conn, "GET /healthz HTTP/1.1\r\nHost: x", b"", false).await.expect("reply");
    assert_eq!(r.status, 200);
    let answered = Instant::now();
    let closed = common::wait_closed(&mut conn, idle * SLACK_IDLE).await;
    let after = answered.elapsed();
    assert!(closed.is_ok(), "closed within {SLACK_IDLE}x the idle timeout");
    assert!(
        after >= idle / 2,
        "an idle keep-alive connection was closed after {after:?}: idle timeout {idle:?}, header timeout {header:?}"
    );
}

const SLACK_IDLE: u32 = 3;

// ---------------------------------------------------------------------------------------------
// Bad input to the real binary, as a probe from outside sends it

/// What a bad request must get.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// This status.
    Status(u16),
    /// 200 with `allowed: true` and no patch.
    AllowedUnchanged,
    /// 200 with `allowed: true` (the init containers may still be swapped).
    Allowed,
    /// A 4xx, or the connection closed: never a 5xx, never a hang.
    Refused,
}

/// Sends raw `bytes` on a new TLS connection and reads one reply (None: closed without one).
async fn raw(client: &Client, bytes: &[u8]) -> Option<common::Reply> {
    let mut conn = client.connect().await.expect("handshake");
    conn.write_all(bytes).await.ok()?;
    tokio::time::timeout(Duration::from_secs(20), common::try_read_reply(&mut conn)).await.expect("no hang").ok()
}

fn post_bytes(content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

fn review_with(change: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut review: Value = serde_json::from_str(FIXTURE).expect("fixture");
    change(&mut review);
    post_bytes("application/json", review.to_string().as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_binary_answers_bad_requests_clearly_and_keeps_serving() {
    let (mut binary, client) = start_binary(&[]).await;
    let full = FIXTURE.as_bytes();
    let mut huge_header = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Junk: ".to_vec();
    huge_header.extend(std::iter::repeat_n(b'a', 2 * 1024 * 1024));
    huge_header.extend_from_slice(b"\r\n\r\n");
    let cases: Vec<(&str, Vec<u8>, Want)> = vec![
        ("malformed JSON", post_bytes("application/json", b"{\"apiVersion\": tru"), Want::Status(400)),
        ("truncated review", post_bytes("application/json", &full[..full.len() / 2]), Want::Status(400)),
        ("empty body", post_bytes("application/json", b""), Want::Status(400)),
        ("binary garbage", post_bytes("application/json", &[0xff, 0x00, 0xfe, 0x7b]), Want::Status(400)),
        ("review without request", post_bytes("application/json", br#"{"kind":"AdmissionReview"}"#), Want::Status(400)),
        ("wrong Content-Type", post_bytes("text/plain", full), Want::Status(415)),
        ("GET /mutate", b"GET /mutate HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(), Want::Status(405)),
        ("unknown path", b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(), Want::Status(404)),
        (
            "declared body over the default 7 MiB cap, never sent",
            b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 8388608\r\n\r\n"
                .to_vec(),
            Want::Status(413),
        ),
        ("object null", review_with(|r| r["request"]["object"] = Value::Null), Want::AllowedUnchanged),
        (
            "no spec",
            review_with(|r| {
                r["request"]["object"].as_object_mut().map(|o| o.remove("spec"));
            }),
            Want::AllowedUnchanged,
        ),
        (
            "containers not an array",
            review_with(|r| r["request"]["object"]["spec"]["containers"] = serde_json::json!({"a": 1})),
            Want::Allowed,
        ),
        (
            "another kind",
            review_with(|r| {
                r["request"]["kind"] = serde_json::json!({"group": "apps", "version": "v1", "kind": "Deployment"})
            }),
            Want::AllowedUnchanged,
        ),
        ("UPDATE", review_with(|r| r["request"]["operation"] = serde_json::json!("UPDATE")), Want::AllowedUnchanged),
        (
            "a subresource",
            review_with(|r| r["request"]["subResource"] = serde_json::json!("ephemeralcontainers")),
            Want::AllowedUnchanged,
        ),
        (
            "admission.k8s.io/v1beta1 DELETE",
            review_with(|r| {
                r["apiVersion"] = serde_json::json!("admission.k8s.io/v1beta1");
                r["request"]["operation"] = serde_json::json!("DELETE");
            }),
            Want::AllowedUnchanged,
        ),
        ("garbage request line", b"HELLO THERE\r\n\r\n".to_vec(), Want::Refused),
        ("2 MiB header", huge_header, Want::Refused),
        (
            "two different Content-Lengths",
            b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}".to_vec(),
            Want::Refused,
        ),
        (
            "Content-Length and chunked together",
            b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            Want::Refused,
        ),
    ];
    for (what, bytes, want) in &cases {
        let reply = raw(&client, bytes).await;
        eprintln!("{what}: {}", reply.as_ref().map_or("closed".to_string(), |r| r.status.to_string()));
        match (want, &reply) {
            (Want::Status(s), Some(r)) => assert_eq!(r.status, *s, "{what}: {}", r.body),
            (Want::AllowedUnchanged, Some(r)) => {
                assert_eq!(r.status, 200, "{what}: {}", r.body);
                let v: Value = serde_json::from_str(&r.body).expect("a review");
                assert_eq!(v["response"]["allowed"], true, "{what}");
                assert!(v["response"].get("patch").is_none(), "{what}: {}", r.body);
            }
            (Want::Allowed, Some(r)) => {
                assert_eq!(r.status, 200, "{what}: {}", r.body);
                let v: Value = serde_json::from_str(&r.body).expect("a review");
                assert_eq!(v["response"]["allowed"], true, "{what}");
            }
            (Want::Refused, None) => {}
            (Want::Refused, Some(r)) => assert!((400..500).contains(&r.status), "{what}: {} {}", r.status, r.body),
            (_, None) => panic!("{what}: closed without a reply"),
        }
        if let Ok(Some(exit)) = binary.child.try_wait() {
            panic!("the webhook exited after {what}: {exit:?}");
        }
    }
    // Plain HTTP to the HTTPS port, and a bad then a good request pipelined on one connection.
    let mut tcp = tokio::net::TcpStream::connect(binary.addr).await.expect("connect");
    let _ = tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(common::wait_closed(&mut tcp, Duration::from_secs(25)).await.is_ok(), "plain HTTP is closed");
    let mut conn = client.connect().await.expect("handshake");
    let mut both = format!("{}\r\n\r\n{{bad", mutate_head(4)).into_bytes();
    both.extend_from_slice(format!("{}\r\n\r\n", mutate_head(full.len())).as_bytes());
    both.extend_from_slice(full);
    conn.write_all(&both).await.expect("write");
    // Both replies may arrive in one read: parse them from one buffer.
    let replies = read_replies(&mut conn, 2).await;
    assert_eq!(replies[0].0, 400);
    let second = common::Reply { status: replies[1].0, body: replies[1].1.clone() };
    assert_eq!(second.status, 200, "the same connection keeps serving: {}", second.body);
    assert!(second.body.contains("\"patch\""), "and swaps: {}", second.body);
    let r = client.post(full).await;
    assert!(r.status == 200 && r.body.contains("\"patch\""), "other connections too: {}", r.body);
    assert!(binary.child.try_wait().expect("wait").is_none(), "still running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "stress: 30 rotations (every third one broken) under load, about a minute"]
async fn stress_thirty_rotations_under_load_fail_no_request() {
    let reload = Duration::from_millis(200);
    let bound = reload * 10;
    let server = Server::start(timeouts(), Limits { max_body_bytes: 256 * 1024, ..Limits::default() }, reload).await;
    let ca = imagemap_certs::CertificateAuthority::new("rotation CA", 1).expect("a CA");
    let client = Client::without_resumption(&format!("{}{}", server.ca_pem, ca.cert_pem), server.addr);
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen { handshakes: vec![Vec::new(); 2], ..Seen::default() }));
    let mut tasks = Vec::new();
    for _ in 0..2 {
        tasks.push(tokio::spawn(keep_alive_load(client.clone(), stop.clone(), seen.clone(), 100_000)));
    }
    let mut handshakers = Vec::new();
    for slot in 0..2 {
        handshakers.push(tokio::spawn(new_connection_load(client.clone(), stop.clone(), seen.clone(), slot, 100_000)));
    }
    let served = || seen.lock().expect("lock").ok;
    let mut last_good = pem_to_der(&std::fs::read_to_string(server.dir.join("..v1/tls.crt")).expect("read v1"));
    let mut delays = Vec::new();
    for i in 0..30 {
        let dir = server.dir.join(format!("..r{i}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        common::write_leaf(&ca, &dir);
        let broken = i % 3 == 2;
        if broken {
            std::fs::write(
                dir.join("tls.key"),
                format!("-----BEGIN {k}-----\nAAAA\n-----END {k}-----\n", k = "PRIVATE KEY"),
            )
            .expect("break the key");
        }
        let at = Instant::now();
        server.swap_current(&dir);
        if broken {
            let c = client.clone();
            assert!(broken_gauge_reaches(&c, 1.0, bound * 3).await, "rotation {i}: the broken pair is reported");
            tokio::time::sleep(Duration::from_millis(500)).await;
            let s = seen.lock().expect("lock");
            let during: Vec<_> = s.handshakes.iter().flatten().filter(|(t, _)| *t > at).collect();
            assert!(during.iter().all(|(_, d)| *d == last_good), "rotation {i}: the last good pair keeps serving");
        } else {
            let new = pem_to_der(&std::fs::read_to_string(dir.join("tls.crt")).expect("read"));
            assert!(
                poll_until(bound * 3, || async { first_seen(&seen, &new, at).is_some() }).await,
                "rotation {i}: the new pair is served"
            );
            delays.push(first_seen(&seen, &new, at).expect("seen") - at);
            last_good = new;
        }
        keeps_serving(&served).await;
    }
    stop.store(true, Ordering::Release);
    for t in tasks {
        t.await.expect("keep-alive task");
    }
    for t in handshakers {
        t.await.expect("handshake task");
    }
    let s = seen.lock().expect("lock");
    s.assert_no_failures();
    let worst = delays.iter().max().copied().unwrap_or_default();
    assert!(worst <= bound, "new pairs served within {bound:?}: worst {worst:?}");
    eprintln!("30 rotations under load: {} reviews OK, 0 failed; new pair served after at most {worst:.0?}", s.ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_binary_logs_a_broken_pair_on_disk_and_keeps_serving_the_old_one() {
    let (mut binary, client) = start_binary(&["--tls-reload-interval", "200ms"]).await;
    let before = client.peer_certificate().await;
    let key = binary.dir.path().join("tls.key");
    std::fs::write(&key, format!("-----BEGIN {k}-----\nAAAA\n-----END {k}-----\n", k = "PRIVATE KEY"))
        .expect("break the key");
    let log = binary.log.clone();
    let logged = |needle: &'static str| {
        let log = log.clone();
        move || {
            let log = log.clone();
            async move { std::fs::read_to_string(&log).unwrap_or_default().contains(needle) }
        }
    };
    assert!(
        poll_until(Duration::from_secs(10), logged("new certificate pair is broken; still serving the previous one"))
            .await,
        "the broken pair is logged:\n{}",
        std::fs::read_to_string(&binary.log).unwrap_or_default()
    );
    let text = metrics(&client).await;
    assert_eq!(metric(&text, "imagemap_tls_reload_broken"), Some(1.0), "{text}");
    assert_eq!(client.peer_certificate().await, before, "the old pair keeps serving");
    let r = client.post(FIXTURE.as_bytes()).await;
    assert!(r.status == 200 && r.body.contains("\"patch\""), "{}", r.body);
    assert!(binary.child.try_wait().expect("wait").is_none(), "still running");
}

/// `imagemap_tls_reload_broken` is "1 while the certificate files on disk cannot be loaded".
/// After a broken pair, putting the served pair back (reverting a bad Secret) leaves it at 1:
/// `CertStore::reload` sees the bytes it loaded last and reports "unchanged", and `watch` only
/// clears the gauge after loading a changed pair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverting_a_broken_pair_to_the_served_one_clears_the_broken_metric() {
    let reload = Duration::from_millis(100);
    let server = Server::start(timeouts(), Limits::default(), reload).await;
    let client = server.client();
    let broken = server.dir.join("..broken");
    std::fs::create_dir_all(&broken).expect("mkdir");
    std::fs::copy(server.dir.join("..v1/tls.crt"), broken.join("tls.crt")).expect("copy the cert");
    std::fs::write(broken.join("tls.key"), "not a key").expect("write");
    server.swap_current(&broken);
    let c = client.clone();
    assert!(broken_gauge_reaches(&c, 1.0, reload * 50).await, "the broken pair is reported");
    server.swap_current(&server.dir.join("..v1"));
    let c = client.clone();
    assert!(
        broken_gauge_reaches(&c, 0.0, reload * 50).await,
        "the files on disk load again, yet the metric still says broken"
    );
}

/// Reads `n` pipelined replies (status, body) from one connection, whatever the read boundaries.
async fn read_replies<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, n: usize) -> Vec<(u16, String)> {
    use tokio::io::AsyncReadExt;
    let mut buf: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        while out.len() < n {
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { break };
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status line");
            let len = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() < end + 4 + len {
                break;
            }
            out.push((status, String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string()));
            buf.drain(..end + 4 + len);
        }
        if out.len() == n {
            return out;
        }
        let read = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut chunk)).await;
        let got = read.expect("replies in time").expect("read");
        assert!(got > 0, "connection closed after {} of {n} replies", out.len());
        buf.extend_from_slice(&chunk[..got]);
    }
}
