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
