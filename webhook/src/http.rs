//! HTTP routes (DESIGN §8): `POST /mutate`, `GET /healthz`, `GET /readyz`, `GET /metrics`.
//! `router(state)` is exposed so tests drive it without sockets.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

/// Body bytes each request buffers without drawing on the [`BodyBudget`]: more than a Pod
/// review usually is (the API server's review of a one-container Pod is about 4 KB).
pub const UNBUDGETED_BODY_BYTES: usize = 64 * 1024;

/// The request-body bytes buffered at once across all requests (`--max-buffered-body-bytes`):
/// past it, reading a body waits (the connection is not read meanwhile, so the client's sends
/// wait in the kernel's socket buffers) until other requests are decided, or until the body
/// timeout answers 408. Without it, clients that each send most of a body just under
/// `--max-body-bytes` and stall hold that much memory each, up to `--max-connections` of them.
///
/// - Each request's first [`UNBUDGETED_BODY_BYTES`] do not draw on the budget, so a review of
///   ordinary size never waits behind stalled big bodies. The price is that allowance per open
///   request outside the budget, bounded by `--max-connections` like the rest of what a
///   connection costs (TLS and HTTP buffers).
/// - With a `Content-Length` (the API server always sends one), a body draws all it needs past
///   its allowance at once, when its bytes first go past the allowance: a request then holds
///   everything it needs or nothing, so requests never wait for each other (a request holding
///   part of the budget while waiting for more could wait on another doing the same until
///   both time out). Headers alone never draw: a client first sends the allowance. Without a
///   `Content-Length`, a body draws as its bytes arrive, and such bodies may wait on each other
///   until the body timeout. Waiters are served in arrival order.
/// - The bytes stay drawn until the review is decided, then return with the request.
///
/// Drawn bytes and waiting requests are exported as `imagemap_body_budget_bytes` and
/// `imagemap_body_budget_waiting`; `imagemap_body_budget_waits_total` counts the waits.
#[derive(Debug)]
pub struct BodyBudget {
    bytes: Arc<Semaphore>,
    total: usize,
    waiting: AtomicUsize,
}

impl BodyBudget {
    /// A budget of `limits.max_buffered_body_bytes`, at least what one body of
    /// `limits.max_body_bytes` draws (else such a body could never be read).
    pub fn new(limits: &Limits) -> Self {
        let one_body = limits.max_body_bytes.saturating_sub(UNBUDGETED_BODY_BYTES);
        let total = limits.max_buffered_body_bytes.max(one_body).min(Semaphore::MAX_PERMITS).min(u32::MAX as usize);
        BodyBudget { bytes: Arc::new(Semaphore::new(total)), total, waiting: AtomicUsize::new(0) }
    }

    /// Bytes drawn now.
    pub fn drawn(&self) -> usize {
        self.total - self.bytes.available_permits()
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Draws `n` bytes (at most the whole budget), waiting while they are not available.
    async fn draw(&self, n: usize, state: &AppState) -> Option<OwnedSemaphorePermit> {
        /// Counts a waiter down even when its wait is abandoned (the body timeout drops it).
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let n = u32::try_from(n.min(self.total)).unwrap_or(u32::MAX);
        if let Ok(permit) = self.bytes.clone().try_acquire_many_owned(n) {
            return Some(permit);
        }
        state.metrics.body_budget_wait();
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(&self.waiting);
        self.bytes.clone().acquire_many_owned(n).await.ok() // never closed
    }
}

/// A request body read in full, with what it drew from the [`BodyBudget`].
struct Buffered {
    bytes: Vec<u8>,
    _drawn: Option<OwnedSemaphorePermit>,
}

enum BodyError {
    TooLarge,
    Read(String),
}

/// Reads a body of at most `max_body_bytes`, drawing every byte past [`UNBUDGETED_BODY_BYTES`]
/// from `budget` before it is kept: all of `length` (the Content-Length) at once when there is
/// one, which also sizes the buffer.
async fn read_body(
    mut body: Body,
    length: Option<usize>,
    budget: &BodyBudget,
    state: &AppState,
) -> Result<Buffered, BodyError> {
    let max = state.limits.max_body_bytes;
    let mut bytes = Vec::with_capacity(length.unwrap_or(0).min(max).min(UNBUDGETED_BODY_BYTES));
    let mut drawn: Option<OwnedSemaphorePermit> = None;
    let mut drawn_bytes = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
        let Ok(chunk) = frame.into_data() else { continue }; // trailers
        let total = bytes.len() + chunk.len();
        if total > max {
            return Err(BodyError::TooLarge);
        }
        let need = total.saturating_sub(UNBUDGETED_BODY_BYTES).saturating_sub(drawn_bytes);
        if need > 0 {
            let announced = length.filter(|&l| l >= total && l <= max);
            let draw = announced.map_or(need, |l| l - UNBUDGETED_BODY_BYTES - drawn_bytes);
            let permit = budget.draw(draw, state).await.ok_or_else(|| BodyError::Read("no body budget".into()))?;
            drawn_bytes += draw;
            match &mut drawn {
                Some(held) => held.merge(permit),
                None => drawn = Some(permit),
            }
            if let Some(l) = announced {
                bytes.reserve_exact(l - bytes.len());
            }
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Buffered { bytes, _drawn: drawn })
}

/// Whether the connection a request came on presented a client certificate issued by
/// `--client-ca-file`. The listener adds it to each request only when client certificates are
/// required ([`crate::listener::serve_with_client_auth`]); `/mutate` then refuses `Missing`
/// with 403, and the other routes (the kubelet's probes present none) answer as usual.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// A certificate the client CA issued (rustls verified it during the handshake).
    Verified,
    /// No client certificate.
    Missing,
}

/// The webhook's routes; unknown paths get 404 and wrong methods 405. The router holds the
/// [`BodyBudget`] of `state.limits`: build one router per server.
pub fn router(state: Arc<AppState>) -> Router {
    routes(state, true)
}

/// The controller's routes (`--role controller`): health and metrics, no `/mutate`.
pub fn controller_router(state: Arc<AppState>) -> Router {
    routes(state, false)
}

fn routes(state: Arc<AppState>, reviews: bool) -> Router {
    let budget = Arc::new(BodyBudget::new(&state.limits));
    let for_metrics = budget.clone();
    let routes = if reviews {
        Router::new().route("/mutate", post(move |state, request| mutate(state, budget.clone(), request)))
    } else {
        Router::new()
    };
    routes
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(move |state| metrics(state, for_metrics.clone())))
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
    match state.not_ready_reason() {
        None => plain(StatusCode::OK, "ok"),
        Some(why) => plain(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}")),
    }
}

async fn metrics(State(state): State<Arc<AppState>>, budget: Arc<BodyBudget>) -> Response {
    state.metrics.set_body_budget(budget.drawn(), budget.waiting());
    let body = state.metrics.render();
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response()
}

async fn mutate(State(state): State<Arc<AppState>>, budget: Arc<BodyBudget>, request: Request) -> Response {
    if request.extensions().get::<ClientAuth>() == Some(&ClientAuth::Missing) {
        state.metrics.refused("no_client_certificate");
        return plain(StatusCode::FORBIDDEN, "a client certificate issued by --client-ca-file is required");
    }
    if let Some(refusal) = check_headers(request.headers(), &state) {
        return refusal;
    }
    let length = content_length(request.headers()).and_then(|n| usize::try_from(n).ok());
    let limits = state.limits;
    let reading = read_body(request.into_body(), length, &budget, &state);
    let buffered = match tokio::time::timeout(limits.body_timeout, reading).await {
        Err(_) => {
            state.metrics.refused("body_timeout");
            return plain(StatusCode::REQUEST_TIMEOUT, "request body not received in time");
        }
        Ok(Err(BodyError::TooLarge)) => return too_large(&state),
        Ok(Err(BodyError::Read(e))) => {
            state.metrics.refused("body_error");
            return plain(StatusCode::BAD_REQUEST, format!("could not read the request body: {e}"));
        }
        Ok(Ok(buffered)) => buffered,
    };
    let body = &buffered.bytes;
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
    let result = state.with_index(|index| review_with(body, index, &options));
    let took = started.elapsed();
    match result {
        Ok(reviewed) => {
            let (swaps, unusable) = reviewed.injection.as_ref().map_or((0, 0), |i| (i.swaps.len(), i.unusable.len()));
            state.metrics.review(reviewed.outcome, swaps, unusable, took);
            log_decision(&reviewed, took);
            if tracing::enabled!(tracing::Level::DEBUG) {
                tracing::debug!(body = %redacted_body(body), "request body");
            }
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
    if content_length(headers).is_some_and(|n| n > state.limits.max_body_bytes as u64) {
        return Some(too_large(state));
    }
    None
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok())
}

/// What replaces secrets in logged request bodies.
pub const REDACTED: &str = "<redacted>";

/// The annotation in which `kubectl apply` keeps the whole manifest, env values included.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// A request body as the debug log shows it (never at info): the JSON with every container
/// env `value`, every `userInfo` (who sent the request: name, uid, groups, extra) and
/// `kubectl apply`'s copy of the manifest replaced by [`REDACTED`], wherever they are (object,
/// oldObject, any container list). A body that is not JSON shows only its length.
pub fn redacted_body(body: &[u8]) -> String {
    match serde_json::from_slice::<Value>(body) {
        Ok(mut value) => {
            redact(&mut value);
            value.to_string()
        }
        Err(_) => format!("<{} bytes, not JSON>", body.len()),
    }
}

fn redact(value: &mut Value) {
    match value {
        Value::Object(fields) => {
            for (key, child) in fields.iter_mut() {
                match (key.as_str(), child) {
                    ("userInfo" | LAST_APPLIED, child) => *child = Value::String(REDACTED.into()),
                    ("env", Value::Array(vars)) => {
                        for var in vars.iter_mut() {
                            if let Some(v) = var.get_mut("value") {
                                *v = Value::String(REDACTED.into());
                            }
                            redact(var);
                        }
                    }
                    (_, child) => redact(child),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
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
    // The line is built only when it will be written; `logging` formats and appends it.
    if tracing::enabled!(target: crate::logging::DECISION_TARGET, tracing::Level::INFO) {
        crate::logging::decision(r, took);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_reaches_every_container_list_in_object_and_old_object_and_keeps_the_rest() {
        let body = serde_json::json!({"request": {
            "userInfo": {"username": "alice"},
            "object": {"spec": {
                "ephemeralContainers": [{"env": [{"name": "A", "value": "one"}]}],
                "initContainers": [{"env": [{"name": "B", "value": "two"}, {"name": "C"}]}],
            }},
            "oldObject": {"spec": {"containers": [{"image": "app", "env": [{"name": "D", "value": "three"}]}]}},
        }});
        let text = redacted_body(body.to_string().as_bytes());
        for secret in ["alice", "one", "two", "three"] {
            assert!(!text.contains(&format!("\"{secret}\"")), "{secret} in {text}");
        }
        let back: Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(back["request"]["userInfo"], REDACTED);
        assert_eq!(back["request"]["object"]["spec"]["initContainers"][0]["env"][1], serde_json::json!({"name": "C"}));
        assert_eq!(back["request"]["oldObject"]["spec"]["containers"][0]["image"], "app");
    }

    #[test]
    fn a_body_that_is_not_json_is_logged_as_its_length_only() {
        assert_eq!(redacted_body(b"password=hunter2"), "<16 bytes, not JSON>");
    }
}
