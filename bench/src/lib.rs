//! `make bench`: the webhook measured side by side with baselines from the same run (see
//! `docs/benchmarks.md`, which `imagemap-bench report` writes). This machine's speed varies
//! between runs, so every figure is a ratio against a baseline measured in the same run; the
//! absolute numbers stand beside the ratios and nothing here is ever a test assertion.

pub mod cluster;
pub mod criterion;
pub mod fixtures;
pub mod load;
pub mod modes;
pub mod process;
pub mod procfs;
pub mod profile;
pub mod report;
pub mod results;
pub mod tls;

/// The `q`-quantile (0..=1) of `values` (sorted in place), nearest-rank; 0 when empty.
pub fn quantile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let rank = (q * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// `a / b`, or NaN when `b` is 0.
pub fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        f64::NAN
    } else {
        a / b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&mut v, 0.5), 50.0);
        assert_eq!(quantile(&mut v, 0.99), 99.0);
        assert_eq!(quantile(&mut v, 1.0), 100.0);
        assert_eq!(quantile(&mut [], 0.5), 0.0);
    }

    #[test]
    fn fixtures_have_the_requested_sizes() {
        for kb in [4, 8, 16] {
            let body = fixtures::review_body(kb, 4, 1);
            assert!(body.len() >= kb * 1024 && body.len() < kb * 1024 + 200, "{kb} KB: {}", body.len());
        }
        let idx = fixtures::index_with(100);
        let reviewed = imagemap_core::admission::review(&fixtures::review_body(8, 4, 1), &idx).expect("review");
        assert_eq!(reviewed.outcome, imagemap_core::admission::Outcome::Patched);
    }

    #[test]
    fn proc_readers_work_on_this_process() {
        let pid = std::process::id();
        assert!(procfs::peak_rss(pid).expect("hwm") > 0);
        assert!(procfs::cpu_ticks(pid).is_ok());
    }
}
