//! HTTP routes (DESIGN §8): `POST /mutate`, `GET /healthz`, `GET /readyz`, `GET /metrics`.
//! `router(state)` is exposed so tests drive it without sockets.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http_body_util::{BodyExt, Limited};

use super::AppState;
use imagemap_core::admission::{review_with, Outcome, ReviewOptions};

/// Limits applied to each request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted body in bytes.
    pub max_body_bytes: usize,
    /// Body bytes buffered at once across all requests (`--max-buffered-body-bytes`).
    pub max_buffered_body_bytes: usize,
    /// Time allowed to receive the body.
    pub body_timeout: Duration,
    /// Reviews processed at once.
    pub max_concurrent_reviews: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 3 * 1024 * 1024,
            max_buffered_body_bytes: 32 * 1024 * 1024,
            body_timeout: Duration::from_secs(10),
            max_concurrent_reviews: 512,
        }
    }
}

/// The webhook's routes; unknown paths get 404 and wrong methods 405.
pub fn router(state: Arc<AppState>) -> Router {
    routes(state, true)
}

/// The controller's routes (`--role controller`): health and metrics, no `/mutate`.
pub fn controller_router(state: Arc<AppState>) -> Router {
    routes(state, false)
}

fn routes(state: Arc<AppState>, reviews: bool) -> Router {
    let routes = if reviews { Router::new().route("/mutate", post(mutate)) } else { Router::new() };
    routes
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            plain(StatusCode::NOT_FOUND, "not found: the webhook serves POST /mutate, GET /healthz, /readyz, /metrics")
        })
        .with_state(state)
}

fn plain(status: StatusCode, message: impl Into<String>) -> Response {
    let mut text = message.into();
    text.push('\n');
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    use std::sync::atomic::Ordering::Acquire;
    if state.is_ready() {
        return plain(StatusCode::OK, "ok");
    }
    let why = if state.shutting_down.load(Acquire) {
        "shutting down"
    } else if !state.cert_loaded.load(Acquire) {
        "no serving certificate loaded"
    } else {
        "ImageMap cache not synced with the API server yet"
    };
    plain(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}"))
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let body = state.metrics.render();
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response()
}

async fn mutate(State(state): State<Arc<AppState>>, request: Request) -> Response {
    if let Some(refusal) = check_headers(request.headers(), &state) {
        return refusal;
    }
    let limits = state.limits;
    let body = match tokio::time::timeout(
        limits.body_timeout,
        Limited::new(request.into_body(), limits.max_body_bytes).collect(),
    )
    .await
    {
        Err(_) => {
            state.metrics.refused("body_timeout");
            return plain(StatusCode::REQUEST_TIMEOUT, "request body not received in time");
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return too_large(&state),
        Ok(Err(e)) => {
            state.metrics.refused("body_error");
            return plain(StatusCode::BAD_REQUEST, format!("could not read the request body: {e}"));
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    // Taken only once the whole body is here (size- and time-bounded above): a client that
    // stalls mid-body holds its connection (bounded by --max-connections), never a review slot.
    let Ok(_permit) = state.concurrency.try_acquire() else {
        state.metrics.refused("busy");
        return plain(StatusCode::SERVICE_UNAVAILABLE, "too many reviews in flight; retry");
    };
    let started = Instant::now();
    let gate_unbuilt = state.gate_unbuilt.load(std::sync::atomic::Ordering::Relaxed);
    let now = if gate_unbuilt { k8s_openapi::jiff::Timestamp::now().to_string() } else { String::new() };
    let options = ReviewOptions { gate_unbuilt, now };
    let result = state.with_index(|index| review_with(&body, index, &options));
    let took = started.elapsed();
    match result {
        Ok(reviewed) => {
            let (swaps, unusable) = reviewed.injection.as_ref().map_or((0, 0), |i| (i.swaps.len(), i.unusable.len()));
            state.metrics.review(reviewed.outcome, swaps, unusable, took);
            log_decision(&reviewed, took);
            tracing::debug!(body = %String::from_utf8_lossy(&body), "request body");
            ([(header::CONTENT_TYPE, "application/json")], Body::from(reviewed.body)).into_response()
        }
        Err(e) => {
            state.metrics.refused("malformed");
            tracing::warn!(error = %e, "refused a malformed review");
            plain(StatusCode::BAD_REQUEST, e.to_string())
        }
    }
}

fn check_headers(headers: &HeaderMap, state: &AppState) -> Option<Response> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        let media = ct.split(';').next().unwrap_or("").trim();
        if !media.eq_ignore_ascii_case("application/json") {
            state.metrics.refused("content_type");
            return Some(plain(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Type {ct:?} is not supported: send application/json"),
            ));
        }
    }
    let length = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if length.is_some_and(|n| n > state.limits.max_body_bytes as u64) {
        return Some(too_large(state));
    }
    None
}

fn too_large(state: &AppState) -> Response {
    state.metrics.refused("too_large");
    plain(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body is larger than {} bytes (--max-body-bytes)", state.limits.max_body_bytes),
    )
}

fn log_decision(r: &imagemap_core::admission::Reviewed, took: Duration) {
    if r.outcome == Outcome::Skipped {
        tracing::debug!(uid = %r.uid, object = %r.object, outcome = r.outcome.as_str(), "review");
        return;
    }
    // The line is built only when it will be written.
    if !tracing::enabled!(tracing::Level::INFO) {
        return;
    }
    let (swaps, warnings) = r.injection.as_ref().map_or((0, 0), |i| (i.swaps.len(), i.warnings.len()));
    let mut fields = String::new();
    for (i, s) in r.injection.iter().flat_map(|i| &i.swaps).enumerate() {
        let record = &s.record;
        let separator = if i > 0 { "," } else { "" };
        for part in [separator, &record.field, ":", &record.original, "->", &record.image] {
            fields.push_str(part);
        }
    }
    let micros = took.as_micros() as u64;
    tracing::info!(
        uid = %r.uid,
        object = %r.object,
        outcome = r.outcome.as_str(),
        swaps,
        warnings,
        fields,
        micros,
        "review"
    );
}
