//! Prometheus metrics (DESIGN §7): reviews by outcome, swaps, latency, cache size and age,
//! unusable-map hits, certificate reloads and refused requests.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use imagemap_core::admission::Outcome;

type Labels = Vec<(&'static str, &'static str)>;

/// Every outcome, in the order of its discriminant.
const OUTCOMES: [Outcome; 3] = [Outcome::Patched, Outcome::Unchanged, Outcome::Skipped];

/// Every metric the webhook exports.
pub struct Metrics {
    registry: Registry,
    /// `reviews` by outcome, resolved once: counting a review takes no lock or allocation.
    reviews_by_outcome: [Counter; 3],
    refused: Family<Labels, Counter>,
    swaps: Counter,
    unusable_hits: Counter,
    latency: Histogram,
    cache_maps: Gauge,
    cache_invalid: Gauge,
    cache_refused: Gauge,
    cache_synced_at: Gauge,
    cache_age: Gauge<f64, AtomicU64>,
    cert_reloads: Family<Labels, Counter>,
    cert_broken: Gauge,
    file_reloads: Family<Labels, Counter>,
    scope_images: Gauge,
    watch_healthy: AtomicBool,
    body_budget_bytes: Gauge,
    body_budget_waiting: Gauge,
    body_budget_waits: Counter,
    /// The controller's metrics (`--role controller`).
    pub controller: crate::controller::metrics::ControllerMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("imagemap");
        let reviews = Family::<Labels, Counter>::default();
        let refused = Family::<Labels, Counter>::default();
        let swaps = Counter::default();
        let unusable_hits = Counter::default();
        let latency = Histogram::new([0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25, 1.0]);
        let cache_maps = Gauge::default();
        let cache_invalid = Gauge::default();
        let cache_refused = Gauge::default();
        let cache_synced_at = Gauge::default();
        let cache_age = Gauge::<f64, AtomicU64>::default();
        let cert_reloads = Family::<Labels, Counter>::default();
        let cert_broken = Gauge::default();
        let file_reloads = Family::<Labels, Counter>::default();
        let scope_images = Gauge::default();
        registry.register(
            "scope_images_condition",
            "1 while the webhook configuration's image condition is set; 0 while the scope falls back to \
             namespaces alone (a map swaps env values, or too many selector names)",
            scope_images.clone(),
        );
        registry.register("reviews", "Admission reviews answered, by outcome", reviews.clone());
        registry.register("refused_requests", "Requests refused before review, by reason", refused.clone());
        registry.register("swaps", "Fields swapped in admitted Pods", swaps.clone());
        registry.register("unusable_map_hits", "Matches on ImageMaps without a usable status", unusable_hits.clone());
        registry.register("review_duration_seconds", "Time to decide one review", latency.clone());
        registry.register("cache_maps", "ImageMaps in the cache", cache_maps.clone());
        registry.register(
            "cache_invalid_maps",
            "ImageMaps skipped because their selector is invalid",
            cache_invalid.clone(),
        );
        registry.register(
            "cache_refused_maps",
            "ImageMaps whose target is outside --allowed-registry: never applied (a warning names the flag)",
            cache_refused.clone(),
        );
        registry.register(
            "cache_last_sync_timestamp_seconds",
            "When the cache last heard from the API server",
            cache_synced_at.clone(),
        );
        registry.register(
            "cache_age_seconds",
            "Seconds since the cache last heard from the API server",
            cache_age.clone(),
        );
        registry.register("tls_reloads", "Serving certificate reloads, by result", cert_reloads.clone());
        registry.register(
            "tls_reload_broken",
            "1 while the certificate files on disk cannot be loaded",
            cert_broken.clone(),
        );
        registry.register("imagemaps_file_reloads", "--imagemaps-file reloads, by result", file_reloads.clone());
        let body_budget_bytes = Gauge::default();
        let body_budget_waiting = Gauge::default();
        let body_budget_waits = Counter::default();
        registry.register(
            "body_budget_bytes",
            "Request-body bytes buffered against --max-buffered-body-bytes now",
            body_budget_bytes.clone(),
        );
        registry.register(
            "body_budget_waiting",
            "Requests whose body reading waits for --max-buffered-body-bytes now",
            body_budget_waiting.clone(),
        );
        registry.register(
            "body_budget_waits",
            "Requests whose body reading waited for --max-buffered-body-bytes",
            body_budget_waits.clone(),
        );
        let controller = crate::controller::metrics::ControllerMetrics::register(&mut registry);
        let build_info = Family::<Labels, Gauge>::default();
        registry.register("build_info", "1, labelled with the version of the running binary", build_info.clone());
        build_info.get_or_create(&vec![("version", env!("CARGO_PKG_VERSION"))]).set(1);
        let reviews_by_outcome =
            OUTCOMES.map(|outcome| reviews.get_or_create(&vec![("outcome", outcome.as_str())]).clone());
        Metrics {
            registry,
            reviews_by_outcome,
            refused,
            swaps,
            unusable_hits,
            latency,
            cache_maps,
            cache_invalid,
            cache_refused,
            cache_synced_at,
            cache_age,
            cert_reloads,
            cert_broken,
            scope_images,
            file_reloads,
            watch_healthy: AtomicBool::new(false),
            body_budget_bytes,
            body_budget_waiting,
            body_budget_waits,
            controller,
        }
    }
}

impl Metrics {
    /// Counts one answered review.
    pub fn review(&self, outcome: Outcome, swaps: usize, unusable: usize, took: Duration) {
        self.reviews_by_outcome[outcome as usize].inc();
        self.swaps.inc_by(swaps as u64);
        self.unusable_hits.inc_by(unusable as u64);
        self.latency.observe(took.as_secs_f64());
    }

    /// Counts one request refused before review (`reason`: malformed, too_large, busy, ...).
    pub fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&vec![("reason", reason)]).inc();
    }

    /// Sets the cache size gauges: maps, invalid ones, and ones the guards refuse.
    pub fn set_cache(&self, maps: usize, invalid: usize, refused: usize) {
        self.cache_maps.set(maps as i64);
        self.cache_invalid.set(invalid as i64);
        self.cache_refused.set(refused as i64);
    }

    /// Records that the cache just heard from the API server: it is current until the watch fails.
    pub fn cache_heard(&self) {
        self.cache_synced_at.set(now_secs() as i64);
        self.watch_healthy.store(true, Ordering::Release);
    }

    /// Records that the watch failed: from now on the cache ages.
    pub fn cache_stale(&self) {
        self.watch_healthy.store(false, Ordering::Release);
    }

    /// Counts a certificate reload attempt.
    pub fn cert_reload(&self, ok: bool) {
        self.cert_reloads.get_or_create(&vec![("result", if ok { "success" } else { "failure" })]).inc();
        self.cert_broken.set(i64::from(!ok));
    }

    /// Whether the scope's image condition is set (`false`: the namespace-only fallback).
    pub fn scope_images(&self, set: bool) {
        self.scope_images.set(i64::from(set));
    }

    /// Counts an `--imagemaps-file` reload attempt.
    pub fn file_reload(&self, ok: bool) {
        self.file_reloads.get_or_create(&vec![("result", if ok { "success" } else { "failure" })]).inc();
    }

    /// Counts a request that starts waiting for the body budget.
    pub fn body_budget_wait(&self) {
        self.body_budget_waits.inc();
    }

    /// Sets the body budget gauges: bytes drawn from it and requests waiting for it.
    pub fn set_body_budget(&self, bytes: usize, waiting: usize) {
        self.body_budget_bytes.set(bytes as i64);
        self.body_budget_waiting.set(waiting as i64);
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        if self.watch_healthy.load(Ordering::Acquire) {
            // A healthy watch is current even when nothing changed for a while.
            self.cache_synced_at.set(now_secs() as i64);
            self.cache_age.set(0.0);
        } else if self.cache_synced_at.get() > 0 {
            self.cache_age.set((now_secs() - self.cache_synced_at.get() as f64).max(0.0));
        }
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

fn now_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histogram_and_cache_gauges() {
        let m = Metrics::default();
        m.review(Outcome::Patched, 2, 1, Duration::from_micros(300));
        m.review(Outcome::Skipped, 0, 0, Duration::from_micros(10));
        m.set_cache(5, 1, 2);
        m.cache_heard();
        let text = m.render();
        for want in [
            "imagemap_reviews_total{outcome=\"patched\"} 1",
            "imagemap_reviews_total{outcome=\"skipped\"} 1",
            "imagemap_reviews_total{outcome=\"unchanged\"} 0",
            "imagemap_swaps_total 2",
            "imagemap_unusable_map_hits_total 1",
            "imagemap_review_duration_seconds_bucket{le=\"0.0005\"} 2",
            "imagemap_cache_maps 5",
            "imagemap_cache_refused_maps 2",
            "imagemap_build_info{version=\"",
            "imagemap_cache_age_seconds 0",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
    }

    #[test]
    fn cache_ages_only_while_the_watch_is_failing() {
        let m = Metrics::default();
        m.cache_heard();
        m.cache_synced_at.set(now_secs() as i64 - 30);
        assert!(m.render().contains("imagemap_cache_age_seconds 0.0"), "healthy watch: current");
        m.cache_synced_at.set(now_secs() as i64 - 30);
        m.cache_stale();
        let text = m.render();
        let age: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("imagemap_cache_age_seconds "))
            .and_then(|v| v.trim().parse().ok())
            .expect("age line");
        assert!(age >= 29.0, "stale watch: {age}");
    }
}
