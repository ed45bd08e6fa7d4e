//! Regression gate for the admission hot path: allocations and allocated bytes per review of a
//! typical 8 KB Pod review, compared with the committed baseline (`alloc-baseline.json`). Counts
//! do not depend on machine load, so this can run in `make test`; a regression of more than 20%
//! fails. Regenerate the baseline after a deliberate change with
//! `IMAGEMAP_ALLOC_BASELINE=write cargo test -p imagemap-core --test alloc_gate`.
//!
//! This file holds a single test: the counting allocator is process-wide.

use std::alloc::System;

use imagemap_core::admission::review;
use imagemap_core::maps::MapIndex;
use imagemap_core::types::{ImageMap, ImageMapSpec, ImageMapStatus};
use serde_json::Value;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const BASELINE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/alloc-baseline.json");
const ROUNDS: usize = 100;

/// 1 000 unrelated maps plus one for `selector` (the fixture's image is `my-apiserver`).
fn index(selector: &str, env: bool) -> MapIndex {
    let mut idx = MapIndex::new(None);
    let mut m =
        ImageMap::new("api", ImageMapSpec { selector: selector.into(), match_in_env_vars: env, ..Default::default() });
    m.metadata.namespace = Some("dev".into());
    m.status = Some(ImageMapStatus { image: "localhost:5000/my-apiserver:tilt-8f2c".into(), ..Default::default() });
    idx.upsert(&m).expect("valid");
    for i in 0..1000 {
        let mut m = ImageMap::new(
            &format!("m{i}"),
            ImageMapSpec { selector: format!("gcr.io/x/svc-{i}"), ..Default::default() },
        );
        m.metadata.namespace = Some(format!("ns{}", i % 10));
        m.status = Some(ImageMapStatus { image: format!("gcr.io/x/svc-{i}:1"), ..Default::default() });
        idx.upsert(&m).expect("valid");
    }
    idx
}

/// (allocations, bytes) per review, averaged over ROUNDS.
fn measure(body: &[u8], idx: &MapIndex) -> (u64, u64) {
    // Warm up lazily initialised statics.
    review(body, idx).expect("review");
    let region = Region::new(GLOBAL);
    for _ in 0..ROUNDS {
        std::hint::black_box(review(std::hint::black_box(body), idx).expect("review"));
    }
    let stats = region.change();
    ((stats.allocations / ROUNDS) as u64, (stats.bytes_allocated / ROUNDS) as u64)
}

#[test]
fn admission_allocations_stay_within_20_percent_of_the_baseline() {
    let body = include_bytes!("fixtures/pod-create-review.json");
    let cases = [
        ("unchanged", measure(body, &index("other", false))),
        ("patched", measure(body, &index("my-apiserver", true))),
    ];
    let current: Value = cases
        .iter()
        .map(|(k, (a, b))| (k.to_string(), serde_json::json!({"allocations": a, "bytes": b})))
        .collect::<serde_json::Map<_, _>>()
        .into();
    if std::env::var("IMAGEMAP_ALLOC_BASELINE").as_deref() == Ok("write") {
        std::fs::write(BASELINE, serde_json::to_string_pretty(&current).expect("json") + "\n").expect("write baseline");
        return;
    }
    let baseline: Value =
        serde_json::from_str(&std::fs::read_to_string(BASELINE).expect("baseline exists")).expect("baseline json");
    let mut report = Vec::new();
    for (case, _) in &cases {
        for metric in ["allocations", "bytes"] {
            let base = baseline[case][metric].as_u64().expect("baseline number") as f64;
            let now = current[case][metric].as_u64().expect("number") as f64;
            report.push(format!("{case}.{metric}: baseline {base}, now {now} ({:.2}x)", now / base.max(1.0)));
            assert!(
                now <= base * 1.2,
                "admission path regressed: {case}.{metric} {now} > 1.2 x baseline {base}\n{}",
                report.join("\n")
            );
        }
    }
    println!("{}", report.join("\n"));
}
