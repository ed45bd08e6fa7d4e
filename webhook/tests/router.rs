//! The admission routes driven without sockets (DESIGN §8), with a review shaped exactly as the
//! API server sends it.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use imagemap_core::types::ImageMap;
use imagemap_webhook::{http::Limits, router, AppState};
use serde_json::{json, Value};
use tower::ServiceExt;

fn map(ns: &str, name: &str, selector: &str, image: Option<&str>, env: bool) -> ImageMap {
    let m = ImageMap::for_selector(ns, name, selector).with_match_in_env_vars(env);
    match image {
        Some(image) => m.with_image(image),
        None => m,
    }
}

fn state_with(maps: &[ImageMap]) -> Arc<AppState> {
    let state = AppState::new(None, Limits { max_body_bytes: 64 * 1024, ..Limits::default() });
    state.update_index(|idx| idx.replace_cluster(maps.iter()));
    state.cert_loaded.store(true, Ordering::Release);
    state.synced.store(true, Ordering::Release);
    state
}

async fn call(state: &Arc<AppState>, method: Method, path: &str, body: impl Into<Body>) -> (StatusCode, String) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(body.into())
        .expect("request");
    let resp = router(state.clone()).oneshot(req).await.expect("infallible");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&bytes).to_string())
}

async fn mutate(state: &Arc<AppState>, review: &Value) -> Value {
    let (status, body) = call(state, Method::POST, "/mutate", serde_json::to_vec(review).expect("json")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    serde_json::from_str(&body).expect("response is JSON")
}

fn fixture() -> Value {
    serde_json::from_str(common::FIXTURE).expect("fixture")
}

#[tokio::test]
async fn api_server_review_gets_a_patch_that_swaps_containers_init_containers_and_env() {
    let state = state_with(&[map("dev", "api", "my-apiserver", Some("localhost:5000/my-apiserver:tilt-8f2c"), true)]);
    let review = fixture();
    let resp = mutate(&state, &review).await;
    let r = &resp["response"];
    assert_eq!(resp["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(resp["kind"], "AdmissionReview");
    assert_eq!(r["uid"], review["request"]["uid"]);
    assert_eq!(r["allowed"], true);
    assert_eq!(r["patchType"], "JSONPatch");
    let pod = common::apply_response_patch(&review, &resp);
    let mut expected = review["request"]["object"].clone();
    expected["spec"]["containers"][0]["image"] = json!("localhost:5000/my-apiserver:tilt-8f2c");
    expected["spec"]["containers"][0]["imagePullPolicy"] = json!("IfNotPresent");
    expected["spec"]["containers"][0]["env"][0]["value"] = json!("localhost:5000/my-apiserver:tilt-8f2c");
    expected["spec"]["initContainers"][0]["image"] = json!("localhost:5000/my-apiserver:tilt-8f2c");
    expected["metadata"]["annotations"]["imagemap.tilt.dev/swaps"] =
        pod["metadata"]["annotations"]["imagemap.tilt.dev/swaps"].clone();
    assert_eq!(pod, expected);
    let records: Value =
        serde_json::from_str(pod["metadata"]["annotations"]["imagemap.tilt.dev/swaps"].as_str().expect("annotation"))
            .expect("json");
    assert_eq!(records.as_array().map(Vec::len), Some(3));
    assert_eq!(r["warnings"].as_array().map(Vec::len), Some(3), "one warning per distinct swap: {r}");
    assert_eq!(r["auditAnnotations"]["swaps"], "3");
}

#[tokio::test]
async fn pod_with_nothing_to_swap_gets_no_patch_and_no_patch_type() {
    let state = state_with(&[]);
    let resp = mutate(&state, &fixture()).await;
    assert_eq!(resp["response"]["allowed"], true);
    assert!(resp["response"].get("patch").is_none());
    assert!(resp["response"].get("patchType").is_none());
    assert!(resp["response"].get("warnings").is_none());
}

#[tokio::test]
async fn ignores_unbuilt_maps_with_warning() {
    let state = state_with(&[map("dev", "api", "my-apiserver", None, false)]);
    let resp = mutate(&state, &fixture()).await;
    assert!(resp["response"].get("patch").is_none());
    let warnings = resp["response"]["warnings"].as_array().expect("warnings");
    assert!(warnings[0].as_str().expect("text").contains("ImageMap dev/api"), "{warnings:?}");
}

#[tokio::test]
async fn non_pod_non_create_subresource_and_null_object_reviews_are_allowed_unchanged() {
    let state = state_with(&[map("dev", "api", "my-apiserver", Some("r.io/a:t"), false)]);
    let mut cases = Vec::new();
    let mut other_kind = fixture();
    other_kind["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    cases.push(other_kind);
    let mut update = fixture();
    update["request"]["operation"] = json!("UPDATE");
    cases.push(update);
    let mut sub = fixture();
    sub["request"]["subResource"] = json!("ephemeralcontainers");
    cases.push(sub);
    let mut null_object = fixture();
    null_object["request"]["object"] = Value::Null;
    cases.push(null_object);
    let mut v1beta1 = fixture();
    v1beta1["apiVersion"] = json!("admission.k8s.io/v1beta1");
    v1beta1["request"]["operation"] = json!("DELETE");
    cases.push(v1beta1);
    for review in cases {
        let resp = mutate(&state, &review).await;
        assert_eq!(resp["response"]["allowed"], true, "{review}");
        assert_eq!(resp["response"]["uid"], review["request"]["uid"]);
        assert!(resp["response"].get("patch").is_none(), "{resp}");
    }
}

#[tokio::test]
async fn fields_the_decision_does_not_need_are_not_read_so_their_shape_does_not_matter() {
    let state = state_with(&[map("dev", "api", "my-apiserver", Some("r.io/a:t"), false)]);
    let mut update = fixture();
    update["request"]["operation"] = json!("UPDATE");
    update["request"]["oldObject"] = json!({"metadata": 7, "spec": {"containers": "odd"}});
    update["request"]["userInfo"] = json!(["not", "an", "object"]);
    update["request"]["options"] = json!(null);
    let resp = mutate(&state, &update).await;
    assert_eq!(resp["response"]["allowed"], true, "{resp}");
    assert!(resp["response"].get("patch").is_none(), "{resp}");
    let mut create = fixture();
    create["request"].as_object_mut().expect("request").remove("userInfo");
    let resp = mutate(&state, &create).await;
    assert_eq!(resp["response"]["patchType"], "JSONPatch", "{resp}");
    assert_eq!(
        resp["response"]["auditAnnotations"]["swapped"],
        "spec.containers{web}.image=dev/api,spec.initContainers{migrate}.image=dev/api"
    );
}

#[tokio::test]
async fn malformed_truncated_and_misshapen_bodies_get_400() {
    let state = state_with(&[]);
    let full = common::FIXTURE.as_bytes();
    for body in [
        b"{not json".to_vec(),
        full[..full.len() / 2].to_vec(),
        b"[]".to_vec(),
        b"{}".to_vec(),
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x"}}"#.to_vec(),
        b"".to_vec(),
    ] {
        let (status, text) = call(&state, Method::POST, "/mutate", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{}: {text}", String::from_utf8_lossy(&body));
        assert!(!text.is_empty());
    }
    let mut no_containers_array = fixture();
    no_containers_array["request"]["object"]["spec"]["containers"] = json!("nope");
    let resp = mutate(&state, &no_containers_array).await;
    assert_eq!(resp["response"]["allowed"], true);
    let mut no_spec = fixture();
    no_spec["request"]["object"].as_object_mut().expect("object").remove("spec");
    assert_eq!(mutate(&state, &no_spec).await["response"]["allowed"], true);
}

#[tokio::test]
async fn wrong_method_is_405_unknown_path_404_wrong_content_type_415() {
    let state = state_with(&[]);
    assert_eq!(call(&state, Method::GET, "/mutate", Body::empty()).await.0, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(call(&state, Method::POST, "/nope", Body::empty()).await.0, StatusCode::NOT_FOUND);
    let req = Request::builder()
        .method(Method::POST)
        .uri("/mutate")
        .header("content-type", "text/plain")
        .body(Body::from("x"))
        .expect("req");
    let resp = router(state.clone()).oneshot(req).await.expect("infallible");
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn oversized_bodies_get_413_by_length_and_while_streaming() {
    let state = state_with(&[]);
    let big = vec![b' '; 64 * 1024 + 1];
    assert_eq!(call(&state, Method::POST, "/mutate", big.clone()).await.0, StatusCode::PAYLOAD_TOO_LARGE);
    // No Content-Length: a streamed body is cut off at the cap.
    let chunks = futures_util_stream(big);
    let req = Request::builder()
        .method(Method::POST)
        .uri("/mutate")
        .header("content-type", "application/json")
        .body(chunks)
        .expect("req");
    let resp = router(state.clone()).oneshot(req).await.expect("infallible");
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

fn futures_util_stream(data: Vec<u8>) -> Body {
    let parts: Vec<Result<Vec<u8>, std::io::Error>> = data.chunks(4096).map(|c| Ok(c.to_vec())).collect();
    Body::from_stream(futures::stream::iter(parts))
}

#[tokio::test]
async fn healthz_always_and_readyz_only_when_synced_and_not_shutting_down() {
    let state = state_with(&[]);
    assert_eq!(call(&state, Method::GET, "/healthz", Body::empty()).await.0, StatusCode::OK);
    assert_eq!(call(&state, Method::GET, "/readyz", Body::empty()).await.0, StatusCode::OK);
    state.synced.store(false, Ordering::Release);
    let (status, text) = call(&state, Method::GET, "/readyz", Body::empty()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(text.contains("not synced"), "{text}");
    state.synced.store(true, Ordering::Release);
    state.shutting_down.store(true, Ordering::Release);
    assert_eq!(call(&state, Method::GET, "/readyz", Body::empty()).await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(call(&state, Method::GET, "/healthz", Body::empty()).await.0, StatusCode::OK);
}

#[tokio::test]
async fn metrics_count_reviews_swaps_and_refusals() {
    let state = state_with(&[map("dev", "api", "my-apiserver", Some("r.io/a:t"), false)]);
    mutate(&state, &fixture()).await;
    call(&state, Method::POST, "/mutate", "{").await;
    let (status, text) = call(&state, Method::GET, "/metrics", Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    for want in [
        "imagemap_reviews_total{outcome=\"patched\"} 1",
        "imagemap_swaps_total 2",
        "imagemap_refused_requests_total{reason=\"malformed\"} 1",
        "imagemap_cache_maps 1",
    ] {
        assert!(text.contains(want), "missing {want}:\n{text}");
    }
}

#[tokio::test]
async fn review_captured_from_the_real_api_server_is_patched() {
    let review: Value =
        serde_json::from_str(include_str!("fixtures/captured-pod-create-review.json")).expect("captured fixture");
    let ns = review["request"]["namespace"].as_str().expect("namespace").to_string();
    let state = state_with(&[map(&ns, "api", "my-apiserver", Some("localhost:5000/my-apiserver:tilt-1"), false)]);
    let resp = mutate(&state, &review).await;
    assert_eq!(resp["response"]["uid"], review["request"]["uid"]);
    let pod = common::apply_response_patch(&review, &resp);
    assert_eq!(pod["spec"]["containers"][0]["image"], "localhost:5000/my-apiserver:tilt-1");
    assert_eq!(pod["spec"]["initContainers"][0]["image"], "localhost:5000/my-apiserver:tilt-1");
    assert_eq!(pod["spec"]["containers"][1]["image"], "busybox:1.36");
}

/// A review of the fixture's Pod padded (with a long label) to `len` bytes.
fn review_of_len(len: usize) -> Vec<u8> {
    let mut review = fixture();
    review["request"]["object"]["metadata"]["labels"]["padding"] = json!("");
    let short = serde_json::to_vec(&review).expect("json").len();
    review["request"]["object"]["metadata"]["labels"]["padding"] = json!("x".repeat(len - short));
    let bytes = serde_json::to_vec(&review).expect("json");
    assert_eq!(bytes.len(), len);
    bytes
}

/// A `POST /mutate` whose body arrives through the returned sender, chunk by chunk.
fn streamed_review(len: usize) -> (Request<Body>, futures::channel::mpsc::Sender<Result<Vec<u8>, std::io::Error>>) {
    let (tx, rx) = futures::channel::mpsc::channel(0);
    let req = Request::builder()
        .method(Method::POST)
        .uri("/mutate")
        .header("content-type", "application/json")
        .header("content-length", len.to_string())
        .body(Body::from_stream(rx))
        .expect("request");
    (req, tx)
}

async fn send_chunks(tx: &mut futures::channel::mpsc::Sender<Result<Vec<u8>, std::io::Error>>, bytes: &[u8]) {
    use futures::SinkExt;
    for chunk in bytes.chunks(16 * 1024) {
        tx.send(Ok(chunk.to_vec())).await.expect("the handler reads the body");
    }
}

fn gauge(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Polls `/metrics` until `check` holds (the limit only bounds a failing test).
async fn metrics_until(app: &axum::Router, what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let req = Request::builder().uri("/metrics").body(Body::empty()).expect("request");
        let resp = app.clone().oneshot(req).await.expect("infallible");
        let text = String::from_utf8_lossy(&resp.into_body().collect().await.expect("body").to_bytes()).to_string();
        if check(&text) {
            return text;
        }
        assert!(std::time::Instant::now() < deadline, "{what} never happened:\n{text}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

async fn answered(resp: axum::response::Response) -> Value {
    assert_eq!(resp.status(), StatusCode::OK);
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let review: Value = serde_json::from_slice(&bytes).expect("a review");
    assert_eq!(review["response"]["patchType"], "JSONPatch", "swapped: {review}");
    review
}

/// Past `--max-buffered-body-bytes`, a body waits for the budget: it is neither refused nor
/// buffered beyond it, and it is read and answered once the bytes held by another request
/// return. A review within the per-request allowance is answered meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_past_the_budget_waits_for_it_and_small_reviews_pass_meanwhile() {
    use imagemap_webhook::http::UNBUDGETED_BODY_BYTES;
    const LEN: usize = 256 * 1024;
    const BUDGET: usize = LEN - UNBUDGETED_BODY_BYTES; // exactly one body past its allowance
    let state = AppState::new(
        None,
        Limits {
            max_body_bytes: LEN,
            max_buffered_body_bytes: BUDGET,
            body_timeout: std::time::Duration::from_secs(120), // a regression fails as 408, not a hang
            ..Limits::default()
        },
    );
    state.update_index(|idx| idx.replace_cluster([&map("dev", "api", "my-apiserver", Some("r.io/a:t"), false)]));
    let app = router(state.clone());
    let body = review_of_len(LEN);
    let (head, last) = body.split_at(LEN - 1024);

    // A: all but its last KiB. Past its allowance, it drew all its Content-Length needs: the
    // whole budget.
    let (req_a, mut tx_a) = streamed_review(LEN);
    let a = tokio::spawn(app.clone().oneshot(req_a));
    send_chunks(&mut tx_a, head).await;
    metrics_until(&app, "A drawing", |t| gauge(t, "imagemap_body_budget_bytes") == Some(BUDGET as u64)).await;

    // B: past its allowance it needs what A holds, so it waits.
    let (req_b, mut tx_b) = streamed_review(LEN);
    let b = tokio::spawn(app.clone().oneshot(req_b));
    let sending_b = tokio::spawn(async move {
        send_chunks(&mut tx_b, &review_of_len(LEN)).await;
        tx_b
    });
    let text = metrics_until(&app, "B waiting", |t| gauge(t, "imagemap_body_budget_waiting") == Some(1)).await;
    assert_eq!(gauge(&text, "imagemap_body_budget_bytes"), Some(BUDGET as u64), "all of it drawn, none past it");
    assert_eq!(gauge(&text, "imagemap_body_budget_waits_total"), Some(1), "{text}");
    assert!(!b.is_finished(), "B is neither answered nor refused while it waits");

    // A review within the allowance does not wait.
    let small = Request::builder()
        .method(Method::POST)
        .uri("/mutate")
        .header("content-type", "application/json")
        .body(Body::from(common::FIXTURE))
        .expect("request");
    answered(app.clone().oneshot(small).await.expect("infallible")).await;
    assert!(!b.is_finished(), "B still waits");

    // A completes and is answered; its bytes return and B is read to the end and answered.
    send_chunks(&mut tx_a, last).await;
    drop(tx_a);
    answered(a.await.expect("A's task").expect("infallible")).await;
    drop(sending_b.await.expect("B's body sent"));
    answered(b.await.expect("B's task").expect("infallible")).await;
    let text = metrics_until(&app, "every byte returned", |t| gauge(t, "imagemap_body_budget_bytes") == Some(0)).await;
    assert_eq!(gauge(&text, "imagemap_body_budget_waiting"), Some(0), "{text}");
    for refusal in ["too_large", "body_timeout", "busy"] {
        assert!(!text.contains(&format!("reason=\"{refusal}\"")), "nothing refused: {text}");
    }
}

/// A body that stalls while holding the budget is cut off at the body timeout (408), and so is
/// a body that stalls behind it; the budget then returns whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_holding_the_budget_times_out_and_returns_it() {
    use imagemap_webhook::http::UNBUDGETED_BODY_BYTES;
    const LEN: usize = 256 * 1024;
    let state = AppState::new(
        None,
        Limits {
            max_body_bytes: LEN,
            max_buffered_body_bytes: LEN - UNBUDGETED_BODY_BYTES,
            body_timeout: std::time::Duration::from_secs(1),
            ..Limits::default()
        },
    );
    let app = router(state.clone());
    let body = review_of_len(LEN);
    let mut stalled = Vec::new();
    let mut senders = Vec::new();
    for _ in 0..2 {
        let (req, mut tx) = streamed_review(LEN);
        stalled.push(tokio::spawn(app.clone().oneshot(req)));
        // Past the allowance, then nothing. The body timeout may have dropped the body first on
        // a busy machine: a refused send is fine here.
        for chunk in body[..UNBUDGETED_BODY_BYTES + 16 * 1024].chunks(16 * 1024) {
            use futures::SinkExt;
            if tx.send(Ok(chunk.to_vec())).await.is_err() {
                break;
            }
        }
        senders.push(tx);
    }
    for task in stalled {
        let resp = task.await.expect("task").expect("infallible");
        assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT);
    }
    let text = metrics_until(&app, "the budget returned", |t| gauge(t, "imagemap_body_budget_bytes") == Some(0)).await;
    assert_eq!(gauge(&text, "imagemap_body_budget_waiting"), Some(0), "{text}");
    drop(senders);
}
