//! The API server goes away (DESIGN §6, §8): the real `imagemap-webhook` in front of a real
//! kube-apiserver that the tests stop and start again (same port, certificates and etcd).
//!
//! * Started while the API server is down, the webhook is alive but not ready, retries at a
//!   bounded pace, never exits, and becomes ready once the API server is back. (The pace does
//!   not grow as a backoff should, and the cache metrics claim freshness meanwhile: the two
//!   `bug:` tests at the end.)
//! * Once synced, it keeps serving the last known maps while the API server is down (a review
//!   POSTed to it directly still swaps; it stays ready), reports the cache's age in its metrics,
//!   and reconverges when the API server returns.
//! * A watch that resumes after etcd's history was compacted (and the API server's watch cache
//!   restarted) gets `410 Gone`: the webhook lists again, so a map deleted and a map created while
//!   it was not watching are both seen.
//! * A map stored before validation existed (invalid selector) is skipped with a warning and a
//!   metric, and never blocks a Pod, even with `failurePolicy: Fail`.
//!
//! Each test has its own control plane (stopping the API server of the shared one would break
//! every other test of the binary). Reviews are POSTed to the webhook with curl, as the API
//! server would, since the API server is the part that is down. Needs the webhook binary:
//! `cargo build --workspace --bins` first (`make test` does). `RELIABILITY_LOG=info,kube_runtime=debug`
//! sets the webhooks' `--log-level` to show the watcher's decisions in their logs.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use base64::Engine as _;
use imagemap_certs::{CertificateAuthority, Sans};
use imagemap_e2e::process::{ManagedProcess, Watchdog};
use imagemap_e2e::webhook::{container, image_map, pod, pod_create_review, set_status, ServingSetup, WEBHOOK_BIN};
use imagemap_e2e::{poll, workspace_binary, ControlPlane, ControlPlaneOptions};
use serde_json::{json, Value};

/// How long the webhook may take to notice that the API server is back: its watch retries
/// with an exponential backoff capped at 30 s (kube-runtime's default), plus a relist.
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(90);

/// The real webhook binary, started by the test (not by `imagemap_e2e::Webhook`, which waits
/// for readiness: here it must start while the API server is down).
struct OwnWebhook {
    // Dropped first: the process, then its watchdog, then the folder.
    process: ManagedProcess,
    _watchdog: Watchdog,
    dir: tempfile::TempDir,
    port: u16,
    log_path: PathBuf,
}

impl OwnWebhook {
    fn start(plane: &ControlPlane) -> OwnWebhook {
        OwnWebhook::start_with(plane.kubeconfig_path())
    }

    /// The webhook watching the API server `kubeconfig` names.
    fn start_with(kubeconfig: &std::path::Path) -> OwnWebhook {
        let program = workspace_binary(WEBHOOK_BIN).expect("the webhook binary is built");
        let ServingSetup { dir, mut args, .. } =
            ServingSetup::new("imagemap-e2e-reliability-", kubeconfig).expect("certificates");
        args.extend([
            "--log-format".into(),
            "json".into(),
            "--log-level".into(),
            std::env::var("RELIABILITY_LOG").unwrap_or_else(|_| "info".into()),
        ]);
        let log_path = dir.path().join("webhook.log");
        let mut watchdog = Watchdog::spawn(Some(dir.path())).expect("a watchdog");
        let mut process =
            ManagedProcess::spawn(WEBHOOK_BIN, &program, &args, &log_path, &mut watchdog).expect("start the webhook");
        let port = process.wait_for_address().unwrap_or_else(|e| panic!("{e:#}")).port();
        let webhook = OwnWebhook { process, _watchdog: watchdog, dir, port, log_path };
        let up = poll(Duration::from_secs(30), Duration::from_millis(100), || webhook.get("/healthz").map(|_| ()));
        assert!(up.is_some(), "the webhook serves HTTPS; log:\n{}", webhook.log_tail());
        webhook
    }

    /// The URL to register: `https://127.0.0.1:PORT/mutate`.
    fn url(&self) -> String {
        format!("https://127.0.0.1:{}/mutate", self.port)
    }

    /// The CA (PEM) that signed the serving certificate.
    fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ca.crt")).expect("ca.crt")
    }

    fn curl(&self, path: &str, post: Option<&str>) -> Output {
        let mut cmd = Command::new("curl");
        cmd.args(["--silent", "--show-error", "--max-time", "10", "--write-out", "\n%{http_code}", "--cacert"])
            .arg(self.dir.path().join("ca.crt"));
        if post.is_some() {
            cmd.args(["--header", "Content-Type: application/json", "--data-binary", "@-"]);
        }
        cmd.arg(format!("https://127.0.0.1:{}{path}", self.port));
        imagemap_e2e::kubectl::run(cmd, post).expect("curl runs")
    }

    /// `GET path`: (status, body), or None when nothing answers.
    fn get(&self, path: &str) -> Option<(u16, String)> {
        split_status(&self.curl(path, None))
    }

    /// POSTs a Pod CREATE review with one container `image` in `ns`; returns the image the
    /// patch sets, or None when the review is allowed without a patch. Panics on anything else.
    fn review(&self, ns: &str, image: &str) -> Option<String> {
        let review = pod_create_review("reliability-1", ns, "imagemap-e2e", pod(ns, "p", &[container("app", image)]));
        let out = self.curl("/mutate", Some(&review.to_string()));
        let (status, body) = split_status(&out).unwrap_or_else(|| panic!("no answer to a review: {out:?}"));
        assert_eq!(status, 200, "{body}");
        let response: Value = serde_json::from_str(&body).expect("the answer is JSON");
        assert_eq!(response["response"]["allowed"], true, "{body}");
        let b64 = response["response"]["patch"].as_str()?;
        let patch: Value = serde_json::from_slice(
            &base64::engine::general_purpose::STANDARD.decode(b64).expect("the patch is base64"),
        )
        .expect("the patch is JSON");
        patch
            .as_array()
            .into_iter()
            .flatten()
            .find(|op| op["path"] == "/spec/containers/0/image")
            .and_then(|op| op["value"].as_str())
            .map(str::to_string)
    }

    /// A metric's value (`name value` line of `/metrics`).
    fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics")?;
        body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    fn readyz(&self) -> Option<(u16, String)> {
        self.get("/readyz")
    }

    fn assert_alive(&mut self) {
        if let Err(e) = self.process.ensure_running() {
            panic!("the webhook exited: {e:#}");
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        imagemap_e2e::process::tail(&self.log_path, 30)
    }

    /// The log lines (JSON) whose message contains `text`.
    fn log_events(&self, text: &str) -> Vec<Value> {
        self.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["message"].as_str().is_some_and(|m| m.contains(text)))
            .collect()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.process.pid().to_string()).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{signal}");
    }
}

fn split_status(out: &Output) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n')?;
    let code: u16 = code.trim().parse().ok().filter(|c| *c != 0)?;
    Some((code, body.to_string()))
}

/// Seconds since midnight of a log line's RFC 3339 `timestamp` (enough to compare lines of a
/// test that lasts minutes).
fn seconds_of_day(event: &Value) -> f64 {
    let ts = event["timestamp"].as_str().unwrap_or_default();
    let time = ts.split_once('T').map_or("", |(_, t)| t.trim_end_matches('Z'));
    let time = time.split(['+', '-']).next().unwrap_or("");
    let mut parts = time.split(':').map(|p| p.parse::<f64>().unwrap_or(0.0));
    let (h, m, s) = (parts.next().unwrap_or(0.0), parts.next().unwrap_or(0.0), parts.next().unwrap_or(0.0));
    h * 3600.0 + m * 60.0 + s
}

/// Creates an ImageMap selecting `selector` and publishes `image` as its status.
fn create_map(plane: &ControlPlane, ns: &str, name: &str, selector: &str, image: &str) {
    plane.apply_yaml(&image_map(ns, name, selector).to_string());
    set_status(plane.kubectl_client(), ns, name, &json!({ "image": image })).expect("set the map's status");
}

/// Polls reviews of `image` in `ns` until the webhook swaps it to `expected` (None: no patch).
fn wait_for_swap(webhook: &mut OwnWebhook, ns: &str, image: &str, expected: Option<&str>, within: Duration) {
    let started = Instant::now();
    let mut last = None;
    let reached = poll(within, Duration::from_millis(250), || {
        last = webhook.review(ns, image);
        (last.as_deref() == expected).then_some(())
    });
    webhook.assert_alive();
    assert!(
        reached.is_some(),
        "a review of {image} in {ns} did not give {expected:?} within {:.1?} (last: {last:?}); log:\n{}",
        started.elapsed(),
        webhook.log_tail()
    );
}

fn dedicated_plane() -> ControlPlane {
    ControlPlane::start(ControlPlaneOptions::default()).expect("a dedicated control plane")
}

#[test]
fn the_webhook_rides_out_the_api_server_going_away_at_start_and_after_sync() {
    let mut plane = dedicated_plane();
    let ns = plane.create_namespace("outage");

    // 1. Started while the API server is down: alive, not ready, retrying with a backoff.
    plane.stop_apiserver().expect("stop the API server");
    let mut webhook = OwnWebhook::start(&plane);
    let down_for = Duration::from_secs(6);
    let started = Instant::now();
    while started.elapsed() < down_for {
        webhook.assert_alive();
        let (status, body) = webhook.readyz().expect("/readyz answers");
        assert_eq!(status, 503, "not ready while the API server is down: {body}");
        assert!(body.contains("not synced"), "{body}");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(webhook.get("/healthz").map(|(s, _)| s), Some(200), "alive");
    assert_eq!(webhook.review(&ns, "app"), None, "a review meanwhile is allowed unchanged, never blocked");
    let failures = webhook.log_events("ImageMap watch failed");
    let times: Vec<f64> = failures.iter().map(seconds_of_day).collect();
    let gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(failures.len() >= 2, "it retries: {} attempts in {down_for:?}\n{}", failures.len(), webhook.log_tail());
    assert!(failures.len() <= 15, "paced, not a hot loop: {} attempts in {down_for:?}", failures.len());
    // The gaps do not grow: see `a_webhook_that_cannot_list_backs_off_exponentially`.
    eprintln!("API server down at start: {} attempts in {down_for:?}, gaps {gaps:.1?} s", failures.len());

    // 2. The API server comes back: the webhook syncs and becomes ready.
    let boot = plane.start_apiserver().expect("start the API server");
    let back = Instant::now();
    let ready = poll(RECONNECT_TIMEOUT, Duration::from_millis(250), || {
        (webhook.readyz().map(|(s, _)| s) == Some(200)).then_some(())
    });
    webhook.assert_alive();
    assert!(ready.is_some(), "ready once the API server is back; log:\n{}", webhook.log_tail());
    let last_error = webhook.log_events("ImageMap watch failed").last().map(|e| e["error"].to_string());
    eprintln!(
        "ready {:.1?} after the API server was ready again ({boot:.1?} to start it; last error: {last_error:?})",
        back.elapsed()
    );
    create_map(&plane, &ns, "app", "app", "reg.example/app:v1");
    wait_for_swap(&mut webhook, &ns, "app", Some("reg.example/app:v1"), RECONNECT_TIMEOUT);
    // A healthy watch is current, even when nothing changes for a while.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(webhook.metric("imagemap_cache_age_seconds"), Some(0.0), "a healthy watch does not age");

    // 3. The API server goes away after sync: the last known maps keep serving, the webhook
    //    stays ready, and the cache's age grows from the moment the watch failed.
    plane.stop_apiserver().expect("stop the API server");
    let stopped = Instant::now();
    let noticed = poll(RECONNECT_TIMEOUT, Duration::from_millis(100), || {
        webhook.metric("imagemap_cache_age_seconds").filter(|age| *age > 0.0)
    });
    let first_age = noticed.expect("the cache ages once the watch fails");
    let noticed_after = stopped.elapsed();
    let synced_at = webhook.metric("imagemap_cache_last_sync_timestamp_seconds").expect("the last-sync metric");
    let since = Instant::now();
    while stopped.elapsed() < Duration::from_secs(5) {
        webhook.assert_alive();
        assert_eq!(webhook.readyz().map(|(s, _)| s), Some(200), "stays ready with the last known maps");
        assert_eq!(webhook.review(&ns, "app").as_deref(), Some("reg.example/app:v1"), "still swaps");
        std::thread::sleep(Duration::from_millis(500));
    }
    let waited = since.elapsed();
    let age = webhook.metric("imagemap_cache_age_seconds").expect("the cache-age metric");
    assert!(age >= first_age + waited.as_secs_f64() - 1.0, "the age grows with the outage: {first_age} then {age}");
    assert_eq!(webhook.metric("imagemap_cache_last_sync_timestamp_seconds"), Some(synced_at), "nothing heard");
    eprintln!(
        "API server down after sync: the cache started ageing {noticed_after:.1?} after the stop; age {first_age:.1} s, \
         then {age:.1} s; still ready and swapping"
    );

    // 4. It comes back: changes made afterwards are seen, and the cache is current again.
    let boot = plane.start_apiserver().expect("start the API server");
    let back = Instant::now();
    set_status(plane.kubectl_client(), &ns, "app", &json!({"image": "reg.example/app:v2"})).expect("status");
    create_map(&plane, &ns, "other", "other", "reg.example/other:v1");
    wait_for_swap(&mut webhook, &ns, "other", Some("reg.example/other:v1"), RECONNECT_TIMEOUT);
    wait_for_swap(&mut webhook, &ns, "app", Some("reg.example/app:v2"), RECONNECT_TIMEOUT);
    assert_eq!(webhook.metric("imagemap_cache_age_seconds"), Some(0.0), "current again");
    assert!(webhook.metric("imagemap_cache_last_sync_timestamp_seconds") > Some(synced_at));
    eprintln!("reconverged {:.1?} after the API server was ready again ({boot:.1?} to start it)", back.elapsed());
}

/// Sends SIGCONT on drop, so that a failing test never leaves the webhook stopped.
struct Paused<'a>(&'a OwnWebhook);

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        self.0.signal("CONT");
    }
}

#[test]
fn a_watch_resumed_after_its_history_was_compacted_relists_and_sees_what_changed_meanwhile() {
    let mut plane = dedicated_plane();
    let ns = plane.create_namespace("relist");
    let mut webhook = OwnWebhook::start(&plane);
    create_map(&plane, &ns, "app", "app", "reg.example/app:v1");
    wait_for_swap(&mut webhook, &ns, "app", Some("reg.example/app:v1"), RECONNECT_TIMEOUT);
    assert!(webhook.log_events("ImageMap cache relisted").is_empty(), "no relist yet");

    // The webhook stops watching (paused, as in a long stall or a partition) and loses its
    // watch (the API server restarts). A map is deleted and another created; then etcd compacts
    // that history and the API server restarts again, so neither etcd nor its watch cache can
    // replay those changes: only a new list shows them.
    {
        let _paused = Paused(&webhook);
        webhook.signal("STOP");
        plane.stop_apiserver().expect("stop the API server");
        plane.start_apiserver().expect("start the API server");
        plane.kubectl_ok(["delete", "imagemap", "app", "--namespace", &ns]);
        create_map(&plane, &ns, "other", "other", "reg.example/other:v1");
        let revision = plane.compact_etcd().expect("compact etcd");
        plane.stop_apiserver().expect("stop the API server");
        plane.start_apiserver().expect("start the API server");
        eprintln!("changed the maps, compacted etcd at revision {revision} and restarted the API server while the webhook was paused");
    }

    // Resumed: its watch from the old resourceVersion is gone (410), so it lists again.
    let resumed = Instant::now();
    wait_for_swap(&mut webhook, &ns, "other", Some("reg.example/other:v1"), RECONNECT_TIMEOUT);
    wait_for_swap(&mut webhook, &ns, "app", None, RECONNECT_TIMEOUT);
    let converged = resumed.elapsed();
    let expired = webhook.log_events("ImageMap watch failed");
    assert!(
        expired.iter().any(|e| e["error"].as_str().is_some_and(|m| m.contains("too old resource version"))),
        "the resumed watch expired (410); log:\n{}",
        webhook.log_tail()
    );
    let relists = webhook.log_events("ImageMap cache relisted");
    assert!(!relists.is_empty(), "the webhook relisted; log:\n{}", webhook.log_tail());
    assert_eq!(webhook.readyz().map(|(s, _)| s), Some(200));
    eprintln!(
        "relisted and reconverged {converged:.1?} after resuming ({} relist(s)); the deleted map no longer swaps",
        relists.len()
    );
}

/// A webhook whose kubeconfig names an API server that never answers (a closed port on
/// 127.0.0.1), with the folder holding that kubeconfig.
fn webhook_without_api_server() -> (OwnWebhook, tempfile::TempDir) {
    let dir = tempfile::Builder::new().prefix("imagemap-e2e-no-apiserver-").tempdir().expect("a folder");
    let ca = CertificateAuthority::new("nowhere CA", 1).expect("a CA");
    let mut sans = Sans::default();
    sans.add_host("127.0.0.1");
    let client = ca.serving("nobody", &sans, 1).expect("a certificate");
    let port = imagemap_e2e::net::free_ports(1).expect("a free port")[0];
    let kubeconfig = dir.path().join("kubeconfig");
    imagemap_e2e::kubeconfig::write(
        &kubeconfig,
        "nowhere",
        &format!("https://127.0.0.1:{port}"),
        &ca.cert_pem,
        &client.cert_pem,
        &client.key_pem,
    )
    .expect("write a kubeconfig");
    (OwnWebhook::start_with(&kubeconfig), dir)
}

/// kube-runtime's watcher emits `Event::Init` before every list attempt, and `StreamBackoff`
/// resets its backoff on every item that is not an error, so while the first list keeps
/// failing the webhook retries every 0.8-1.6 s forever instead of backing off to 30 s.
#[test]
fn a_webhook_that_cannot_list_backs_off_exponentially() {
    let (mut webhook, _dir) = webhook_without_api_server();
    std::thread::sleep(Duration::from_secs(12));
    webhook.assert_alive();
    let times: Vec<f64> = webhook.log_events("ImageMap watch failed").iter().map(seconds_of_day).collect();
    let gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.len() >= 2, "it retries: {gaps:?}");
    // 0.8 s doubling with jitter below 100%: [0.8, 1.6), [1.6, 3.2), [3.2, 6.4)...
    assert!(gaps[gaps.len() - 1] > 2.0 * gaps[0], "the gaps between attempts grow: {gaps:.2?}");
}

/// `imagemap_cache_last_sync_timestamp_seconds` ("when the cache last heard from the API
/// server") is set on every item of the watch stream, including the `Event::Init` that starts
/// each failing list attempt: a webhook that never reached the API server reports a cache age
/// of about a second.
#[test]
fn a_webhook_that_never_reached_the_api_server_does_not_report_a_fresh_cache() {
    let (mut webhook, _dir) = webhook_without_api_server();
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(6));
    webhook.assert_alive();
    assert_eq!(webhook.readyz().map(|(s, _)| s), Some(503));
    let last = webhook.metric("imagemap_cache_last_sync_timestamp_seconds").unwrap_or(0.0);
    let age = webhook.metric("imagemap_cache_age_seconds");
    assert!(
        last == 0.0 && age.is_none_or(|a| a == 0.0 || a >= started.elapsed().as_secs_f64() - 1.0),
        "never heard from the API server, yet last sync {last} and cache age {age:?}"
    );
}

#[test]
#[ignore = "stress: the API server is down for two minutes after sync (about three minutes)"]
fn stress_a_two_minute_outage_after_sync_backs_off_keeps_serving_and_relists() {
    let outage = Duration::from_secs(120);
    let mut plane = dedicated_plane();
    let ns = plane.create_namespace("long-outage");
    let mut webhook = OwnWebhook::start(&plane);
    create_map(&plane, &ns, "app", "app", "reg.example/app:v1");
    wait_for_swap(&mut webhook, &ns, "app", Some("reg.example/app:v1"), RECONNECT_TIMEOUT);

    plane.stop_apiserver().expect("stop the API server");
    let stopped = Instant::now();
    let before = webhook.log_events("ImageMap watch failed").len();
    while stopped.elapsed() < outage {
        webhook.assert_alive();
        assert_eq!(webhook.readyz().map(|(s, _)| s), Some(200), "stays ready");
        assert_eq!(webhook.review(&ns, "app").as_deref(), Some("reg.example/app:v1"), "still swaps");
        std::thread::sleep(Duration::from_secs(5));
    }
    let age = webhook.metric("imagemap_cache_age_seconds").expect("the cache-age metric");
    assert!(age >= outage.as_secs_f64() - 5.0, "the age covers the outage: {age}");
    let failures = webhook.log_events("ImageMap watch failed");
    let times: Vec<f64> = failures[before..].iter().map(seconds_of_day).collect();
    let gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    // 0.8 s doubling to 30 s: about ten attempts in two minutes; a fixed 1 s pace would be 120.
    assert!(times.len() <= 30, "{} attempts in {outage:?}: gaps {gaps:.1?}", times.len());
    assert!(gaps.iter().any(|g| *g >= 10.0), "the backoff grows: gaps {gaps:.1?}");

    let boot = plane.start_apiserver().expect("start the API server");
    let back = Instant::now();
    create_map(&plane, &ns, "other", "other", "reg.example/other:v1");
    // Up to 60 s (30 s cap, jitter up to 100%) before the next attempt, and as much again after
    // the resumed watch's 410 before the relist.
    wait_for_swap(&mut webhook, &ns, "other", Some("reg.example/other:v1"), Duration::from_secs(180));
    assert_eq!(webhook.metric("imagemap_cache_age_seconds"), Some(0.0), "current again");
    eprintln!(
        "two-minute outage: {} attempts, gaps {gaps:.1?} s, cache age {age:.0} s; reconverged {:.1?} after the \
         API server was ready again ({boot:.1?} to start it); relists: {}",
        times.len(),
        back.elapsed(),
        webhook.log_events("ImageMap cache relisted").len()
    );
}

/// Removes every `x-kubernetes-validations` from a CRD (as JSON): the CRD as it was before the
/// CEL rules existed.
fn without_validations(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.remove("x-kubernetes-validations");
            map.values_mut().for_each(without_validations);
        }
        Value::Array(items) => items.iter_mut().for_each(without_validations),
        _ => {}
    }
}

#[test]
fn a_map_stored_before_validation_existed_is_skipped_with_a_warning_and_a_metric_and_never_blocks_a_pod() {
    // Its own plane: the CRD is replaced, and the registration uses failurePolicy Fail.
    let plane = ControlPlane::start(ControlPlaneOptions { install_crds: false, ..ControlPlaneOptions::default() })
        .expect("a dedicated control plane");
    let crd_path = imagemap_e2e::binaries::workspace_root().join(imagemap_e2e::controlplane::IMAGEMAP_CRD_FILE);
    let crd_yaml = std::fs::read_to_string(&crd_path).expect("the CRD file");
    let mut old_crd: Value = serde_saphyr::from_str(&crd_yaml).expect("the CRD is YAML");
    without_validations(&mut old_crd);
    let apply_crd = |crd: &str| {
        let out = plane
            .kubectl_client()
            .run_with_stdin(["apply", "--server-side", "--force-conflicts", "-f", "-"], Some(crd))
            .expect("kubectl runs");
        assert!(out.status.success(), "applying the CRD: {}", String::from_utf8_lossy(&out.stderr));
        plane.kubectl_ok(["wait", "--for=condition=established", "--timeout=60s", "crd/imagemaps.tilt.dev"]);
    };
    apply_crd(&old_crd.to_string());

    // Written while nothing validated them: an unparsable selector, and a good map beside it.
    let ns = plane.create_namespace("legacy");
    let labels = std::collections::BTreeMap::from([("imagemap-e2e/legacy".to_string(), ns.clone())]);
    plane.kubectl_ok(["label", "namespace", &ns, &format!("imagemap-e2e/legacy={ns}")]);
    let bad = image_map(&ns, "bad", "Not Valid");
    let out = plane.kubectl_client().run_with_stdin(["create", "-f", "-"], Some(&bad.to_string())).expect("kubectl");
    assert!(out.status.success(), "stored before validation: {}", String::from_utf8_lossy(&out.stderr));
    set_status(plane.kubectl_client(), &ns, "bad", &json!({"image": "reg.example/bad:v1"})).expect("status");
    create_map(&plane, &ns, "good", "app", "reg.example/app:v1");

    // Validation arrives; the stored map stays as it was.
    apply_crd(&crd_yaml);
    let refused = plane
        .kubectl_client()
        .run_with_stdin(["create", "-f", "-"], Some(&image_map(&ns, "new", "Bad Too").to_string()));
    assert!(!refused.expect("kubectl").status.success(), "new invalid maps are refused now");
    plane.kubectl_ok(["get", "imagemap", "bad", "--namespace", &ns]);

    let mut webhook = OwnWebhook::start(&plane);
    let ready = poll(RECONNECT_TIMEOUT, Duration::from_millis(250), || {
        (webhook.readyz().map(|(s, _)| s) == Some(200)).then_some(())
    });
    assert!(ready.is_some(), "ready; log:\n{}", webhook.log_tail());
    wait_for_swap(&mut webhook, &ns, "app", Some("reg.example/app:v1"), RECONNECT_TIMEOUT);
    assert_eq!(webhook.metric("imagemap_cache_invalid_maps"), Some(1.0), "counted in the metrics");
    let names_the_map = |w: &Value| w["error"].as_str().is_some_and(|e| e.contains(&format!("{ns}/bad")));
    let warned = poll(Duration::from_secs(10), Duration::from_millis(100), || {
        webhook.log_events("skipping ImageMap with an invalid selector").into_iter().find(names_the_map)
    });
    assert!(warned.is_some(), "a warning names the map; log:\n{}", webhook.log_tail());

    // Through the API server, with failurePolicy Fail: Pods are admitted, the good map applies.
    let mut config =
        imagemap_e2e::webhook::webhook_configuration("legacy-maps", &webhook.url(), &webhook.ca_pem(), &labels);
    config["webhooks"][0]["failurePolicy"] = json!("Fail");
    plane.apply_yaml(&config.to_string());
    let pod_json = |name: &str, image: &str| {
        imagemap_e2e::webhook::pod(&ns, name, &[imagemap_e2e::webhook::container("c", image)])
    };
    let swapped = poll(Duration::from_secs(30), Duration::from_millis(250), || {
        let created = imagemap_e2e::webhook::dry_run_create(plane.kubectl_client(), &pod_json("probe", "app")).ok()?;
        (created["spec"]["containers"][0]["image"] == "reg.example/app:v1").then_some(())
    });
    assert!(swapped.is_some(), "the registration is in effect; log:\n{}", webhook.log_tail());
    for (name, image) in [("app", "app"), ("other", "busybox:1.36"), ("odd", "not valid/ANY")] {
        let out = plane
            .kubectl_client()
            .run_with_stdin(["create", "-f", "-"], Some(&pod_json(name, image).to_string()))
            .expect("kubectl runs");
        assert!(
            out.status.success(),
            "a Pod with image {image:?} is admitted: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stored =
        plane.kubectl_ok(["get", "pod", "app", "--namespace", &ns, "-o", "jsonpath={.spec.containers[0].image}"]);
    assert_eq!(stored, "reg.example/app:v1");
    plane.kubectl_ok(["delete", "mutatingwebhookconfiguration", "legacy-maps"]);
}
