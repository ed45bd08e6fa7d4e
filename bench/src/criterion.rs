//! Steps 1 and 2: ratios from criterion's estimates of `webhook/core/benches/admission.rs`.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::fixtures::review_body;
use crate::ratio;
use crate::results::{CriterionCase, CriterionResults, MapsCase};

/// The review cases: (KB, containers), then (label, matching).
pub const SIZES: [(usize, usize); 3] = [(4, 2), (8, 4), (16, 8)];
/// Map counts of the `maps` group.
pub const MAP_COUNTS: [usize; 4] = [10, 1_000, 10_000, 100_000];

fn estimate(path: &Path, which: &str) -> Result<f64> {
    let file = path.join("new").join("estimates.json");
    let text = std::fs::read_to_string(&file).with_context(|| {
        format!("reading {} (did `cargo bench -p imagemap-core --bench admission` run?)", file.display())
    })?;
    let json: Value = serde_json::from_str(&text)?;
    json[which]["point_estimate"].as_f64().with_context(|| format!("{} has no {which}.point_estimate", file.display()))
}

/// Reads `dir` (`target/criterion`) with the `which` point estimate (`median` or `mean`).
pub fn read(dir: &Path, which: &str) -> Result<CriterionResults> {
    let mut review = Vec::new();
    for (kb, containers) in SIZES {
        for (label, matching) in [("none", 0), ("one", 1), ("all", containers)] {
            let case = format!("{kb}KB-{label}");
            let handler_ns = estimate(&dir.join("review").join("handler").join(&case), which)?;
            let baseline_ns = estimate(&dir.join("review").join("serde-baseline").join(&case), which)?;
            review.push(CriterionCase {
                body_bytes: review_body(kb, containers, matching).len(),
                case,
                handler_ns,
                baseline_ns,
                ratio: ratio(handler_ns, baseline_ns),
            });
        }
    }
    let mut maps = Vec::new();
    let mut first = None;
    for count in MAP_COUNTS {
        let ns = estimate(&dir.join("maps").join("handler-8KB-one").join(count.to_string()), which)?;
        let base = *first.get_or_insert(ns);
        maps.push(MapsCase { maps: count, ns, ratio: ratio(ns, base) });
    }
    Ok(CriterionResults { estimate: which.to_string(), review, maps })
}
