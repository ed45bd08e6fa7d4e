//! In-process cost of the admission decision against plain serde_json parse + re-serialize of
//! the same body (the baseline), for Pod reviews of about 4, 8 and 16 KB with 0, 1 and all
//! containers matching, and for 10 to 100 000 maps in the cache. `make bench` runs this and
//! `imagemap-bench criterion` turns criterion's estimates into same-run ratios
//! (`docs/benchmarks.md`).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use imagemap_core::admission::review;

/// The bodies and map sets, shared with `imagemap-bench` (bench/).
#[allow(dead_code)]
#[path = "../../../bench/src/fixtures.rs"]
mod fixtures;
use fixtures::{baseline, index_with, review_body};

fn sizes_and_matches(c: &mut Criterion) {
    let idx = index_with(10);
    let mut group = c.benchmark_group("review");
    for (kb, containers) in [(4usize, 2usize), (8, 4), (16, 8)] {
        for (label, matching) in [("none", 0), ("one", 1), ("all", containers)] {
            let body = review_body(kb, containers, matching);
            group.throughput(Throughput::Bytes(body.len() as u64));
            let id = format!("{kb}KB-{label}");
            group.bench_with_input(BenchmarkId::new("handler", &id), &body, |b, body| {
                b.iter(|| review(black_box(body), &idx).map(|r| r.body.len()).unwrap_or(0))
            });
            group.bench_with_input(BenchmarkId::new("serde-baseline", &id), &body, |b, body| {
                b.iter(|| baseline(black_box(body)))
            });
        }
    }
    group.finish();
}

fn map_counts(c: &mut Criterion) {
    let body = review_body(8, 4, 1);
    let mut group = c.benchmark_group("maps");
    for total in [10usize, 1_000, 10_000, 100_000] {
        let idx = index_with(total);
        group.bench_with_input(BenchmarkId::new("handler-8KB-one", total), &body, |b, body| {
            b.iter(|| review(black_box(body), &idx).map(|r| r.body.len()).unwrap_or(0))
        });
    }
    group.finish();
}

criterion_group!(benches, sizes_and_matches, map_counts);
criterion_main!(benches);
