//! The built `imagemap-webhook` binary, started the way an operator or the acceptance checks do:
//! `--no-cluster --imagemaps-file`, real TLS, file reload, SIGTERM.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Webhook {
    binary: common::Binary,
    client: common::Client,
}

const MAPS: &str = r#"{"apiVersion":"v1","kind":"List","items":[
 {"apiVersion":"tilt.dev/v1alpha1","kind":"ImageMap","metadata":{"name":"api","namespace":"dev"},
  "spec":{"selector":"my-apiserver","matchInEnvVars":true,"overrideArgs":{"args":["--dev"]}},
  "status":{"image":"localhost:5000/my-apiserver:tilt-1","imageFromCluster":"registry:5000/my-apiserver:tilt-1"}}]}"#;

async fn start() -> Webhook {
    start_with(&[]).await
}

/// Starts the binary with `extra` flags and waits until it is ready.
async fn start_with(extra: &[&str]) -> Webhook {
    let args = [&["--maps-reload-interval", "100ms"], extra].concat();
    let (binary, client) = common::launch(MAPS, &args);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if client.connect().await.is_ok() && client.send("GET /readyz HTTP/1.1\r\nHost: x", b"").await.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "webhook did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Webhook { binary, client }
}

async fn swapped_pod(w: &Webhook) -> Value {
    let review: Value = serde_json::from_str(common::FIXTURE).expect("fixture");
    let reply = w.client.post(common::FIXTURE.as_bytes()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let resp: Value = serde_json::from_str(&reply.body).expect("json");
    common::apply_response_patch(&review, &resp)
}

#[tokio::test]
async fn no_cluster_mode_swaps_from_the_maps_file_and_reloads_it() {
    let w = start().await;
    let pod = swapped_pod(&w).await;
    let web = &pod["spec"]["containers"][0];
    assert_eq!(web["image"], "registry:5000/my-apiserver:tilt-1", "imageFromCluster wins over image");
    assert_eq!(web["args"], json!(["--dev"]));
    assert_eq!(web["env"][0]["value"], "registry:5000/my-apiserver:tilt-1");
    assert_eq!(pod["spec"]["initContainers"][0]["image"], "registry:5000/my-apiserver:tilt-1");
    assert_eq!(pod["spec"]["containers"][1]["image"], "busybox:1.36");

    std::fs::write(&w.binary.maps, MAPS.replace("tilt-1", "tilt-2")).expect("rewrite maps");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pod = swapped_pod(&w).await;
        if pod["spec"]["containers"][0]["image"] == "registry:5000/my-apiserver:tilt-2" {
            break;
        }
        assert!(Instant::now() < deadline, "maps file was not reloaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A broken file keeps the previous maps, and so does an empty one (a file being rewritten).
    for content in ["{ broken", "", "\n"] {
        std::fs::write(&w.binary.maps, content).expect("break maps");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            swapped_pod(&w).await["spec"]["containers"][0]["image"],
            "registry:5000/my-apiserver:tilt-2",
            "after writing {content:?}"
        );
    }
}

/// Sends SIGTERM and waits for the process to exit (within the grace period).
async fn terminate(w: &mut Webhook) -> std::process::ExitStatus {
    let pid = w.binary.child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(exit) = w.binary.child.try_wait().expect("wait") {
            return exit;
        }
        assert!(Instant::now() < deadline, "did not exit within the grace period");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sigterm_fails_readiness_and_exits_cleanly() {
    let mut w = start().await;
    let exit = terminate(&mut w).await;
    assert!(exit.success(), "exit status {exit:?}");
}

/// One line per decision with the fields operators read (DESIGN: one structured log line per
/// decision), in both formats, and every line written by the time the process exits on SIGTERM.
#[tokio::test]
async fn logs_one_line_per_decision_in_both_formats_and_every_line_before_exit() {
    let uid = "6f5d5e6b-7a0c-4b8e-9d3e-2f1c0a9b8c7d";
    for format in ["plain", "json"] {
        let mut w = start_with(&["--log-format", format]).await;
        for _ in 0..3 {
            swapped_pod(&w).await;
        }
        let exit = terminate(&mut w).await;
        assert!(exit.success(), "exit status {exit:?}");
        let log = std::fs::read_to_string(&w.binary.log).expect("log");
        let decisions: Vec<&str> = log.lines().filter(|l| l.contains(uid)).collect();
        assert_eq!(decisions.len(), 3, "one line per review:\n{log}");
        let last = log.lines().last().unwrap_or_default();
        if format == "plain" {
            let line = decisions[0];
            let expected =
                format!(" INFO imagemap_webhook::http: review uid={uid} object=dev/web outcome=\"patched\" swaps=");
            assert!(line.contains(&expected), "{line}");
            for field in [" warnings=", " fields=\"spec.containers{web}.image:my-apiserver->", " micros="] {
                assert!(line.contains(field), "{field} in {line}");
            }
            assert!(last.ends_with("stopped"), "the last line is written before exit:\n{log}");
            continue;
        }
        let lines: Vec<Value> =
            log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
        let line = lines.iter().find(|v| v["uid"] == uid).expect("a decision line");
        assert_eq!(line["message"], "review", "{line}");
        assert_eq!(line["level"], "INFO", "{line}");
        assert_eq!(line["target"], "imagemap_webhook::http", "{line}");
        assert_eq!(line["object"], "dev/web", "{line}");
        assert_eq!(line["outcome"], "patched", "{line}");
        assert!(line["swaps"].as_u64().is_some_and(|n| n > 0), "{line}");
        assert!(line["warnings"].as_u64().is_some() && line["micros"].as_u64().is_some(), "{line}");
        assert!(line["fields"].as_str().is_some_and(|f| f.contains("->registry:5000/my-apiserver:tilt-1")), "{line}");
        assert!(line["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{line}");
        assert_eq!(lines.last().map(|v| v["message"].clone()), Some(json!("stopped")), "{log}");
    }
}

#[test]
fn refuses_to_start_with_a_broken_certificate_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("tls.crt"), "garbage").expect("write");
    std::fs::write(dir.path().join("tls.key"), "garbage").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_imagemap-webhook"))
        .args(["--no-cluster", "--listen", "127.0.0.1:0"])
        .arg("--tls-cert-file")
        .arg(dir.path().join("tls.crt"))
        .arg("--tls-private-key-file")
        .arg(dir.path().join("tls.key"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tls.crt contains no PEM certificate"), "{stderr}");
    // The log line of an error exit is written before the process ends.
    assert!(stderr.contains("ERROR imagemap_webhook: exiting error="), "{stderr}");
}

#[test]
fn bad_duration_flags_stop_the_binary_at_start_naming_the_flag() {
    for (flag, value, says) in [
        ("--tls-reload-interval", "0s", "greater than zero"),
        ("--maps-reload-interval", "0", "greater than zero"),
        ("--controller-interval", "0ms", "greater than zero"),
        ("--body-timeout", "-5s", "invalid duration"),
        ("--idle-timeout", "99999999999999999999999m", "out of range"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_imagemap-webhook"))
            .args(["--no-cluster", "--tls-cert-file", "c", "--tls-private-key-file", "k"])
            .arg(format!("{flag}={value}"))
            .output()
            .expect("runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {err}");
        assert!(err.contains(flag) && err.contains(says), "{flag} {value}: {err}");
    }
}

/// A review carrying secrets where Pods carry them: an env value, the requester's identity,
/// and `kubectl apply`'s copy of the manifest.
fn review_with_secrets() -> Vec<u8> {
    let mut review: Value = serde_json::from_str(common::FIXTURE).expect("fixture");
    let request = &mut review["request"];
    request["userInfo"] = json!({"username": "alice@example.com", "uid": "uid-4711", "groups": ["team-secret"]});
    request["object"]["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] =
        json!(r#"{"spec":{"containers":[{"env":[{"name":"TOKEN","value":"s3cr3t-token"}]}]}}"#);
    let env = request["object"]["spec"]["containers"][0]["env"].as_array_mut().expect("env");
    env.push(json!({"name": "TOKEN", "value": "s3cr3t-token"}));
    serde_json::to_vec(&review).expect("json")
}

const SECRETS: [&str; 4] = ["s3cr3t-token", "alice@example.com", "uid-4711", "team-secret"];

/// Request bodies are logged only at debug level, and then with env values, userInfo and the
/// last-applied manifest replaced by `<redacted>`; at info level no body is logged at all.
#[tokio::test]
async fn debug_logs_show_request_bodies_with_env_values_and_user_info_redacted_and_info_logs_none() {
    for level in ["debug", "info"] {
        let mut w = start_with(&["--log-level", level, "--log-format", "json"]).await;
        let reply = w.client.post(&review_with_secrets()).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert!(reply.body.contains("\"patch\""), "the review is still swapped: {}", reply.body);
        let exit = terminate(&mut w).await;
        assert!(exit.success(), "exit status {exit:?}");
        let log = std::fs::read_to_string(&w.binary.log).expect("log");
        for secret in SECRETS {
            assert!(!log.contains(secret), "{level}: {secret:?} is in the log:\n{log}");
        }
        let bodies: Vec<Value> = log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|line| line["message"] == "request body")
            .collect();
        if level == "info" {
            assert!(bodies.is_empty(), "no request body at info level:\n{log}");
            continue;
        }
        assert_eq!(bodies.len(), 1, "one request body at debug level:\n{log}");
        assert_eq!(bodies[0]["level"], "DEBUG");
        let body: Value = serde_json::from_str(bodies[0]["body"].as_str().expect("body field")).expect("body is JSON");
        let request = &body["request"];
        assert_eq!(request["userInfo"], "<redacted>");
        assert_eq!(request["uid"], "6f5d5e6b-7a0c-4b8e-9d3e-2f1c0a9b8c7d", "the rest is kept");
        let env = &request["object"]["spec"]["containers"][0]["env"];
        assert_eq!(env[0], json!({"name": "SELF_IMAGE", "value": "<redacted>"}));
        assert_eq!(env[1]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name", "valueFrom names no secret");
        assert_eq!(env[2], json!({"name": "TOKEN", "value": "<redacted>"}));
        let annotations = &request["object"]["metadata"]["annotations"];
        assert_eq!(annotations["kubectl.kubernetes.io/last-applied-configuration"], "<redacted>");
        assert_eq!(request["object"]["spec"]["containers"][0]["image"], "my-apiserver");
    }
}
