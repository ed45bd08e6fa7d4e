//! Instruction counts (callgrind) of the in-process path: the handler and the serde baseline on
//! the 8 KB review with one container matching and 10 maps, and where the handler's
//! instructions go. Counts do not depend on machine load, so this ratio is the steadiest figure
//! of the report.

use std::hint::black_box;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::fixtures::{baseline, index_with, review_body};
use crate::ratio;
use crate::results::ProfileResults;

/// The loop measured for the handler (callgrind collects inside it only).
#[inline(never)]
pub fn handler_loop(body: &[u8], index: &imagemap_core::maps::MapIndex, iterations: usize) -> usize {
    let mut total = 0;
    for _ in 0..iterations {
        total += imagemap_core::admission::review(black_box(body), index).map(|r| r.body.len()).unwrap_or(0);
    }
    total
}

/// The loop measured for the baseline.
#[inline(never)]
pub fn baseline_loop(body: &[u8], iterations: usize) -> usize {
    let mut total = 0;
    for _ in 0..iterations {
        total += baseline(black_box(body)).len();
    }
    total
}

/// Runs one loop (the child under valgrind).
pub fn run_loop(case: &str, iterations: usize) -> Result<usize> {
    let body = review_body(8, 4, 1);
    let index = index_with(10);
    // Once outside the measured loop: lazily initialised statics.
    let _ = handler_loop(&body, &index, 1);
    let _ = baseline_loop(&body, 1);
    Ok(match case {
        "handler" => handler_loop(&body, &index, iterations),
        "baseline" => baseline_loop(&body, iterations),
        _ => bail!("unknown case {case}"),
    })
}

fn callgrind(exe: &Path, work: &Path, case: &str, iterations: usize) -> Result<(f64, std::path::PathBuf)> {
    let out = work.join(format!("callgrind.{case}.out"));
    let status = Command::new("valgrind")
        .args(["--tool=callgrind", "--quiet"])
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(format!("--toggle-collect=*{case}_loop*"))
        .arg(exe)
        .args(["profile-loop", "--case", case, "--iterations", &iterations.to_string()])
        .status()
        .context("running valgrind --tool=callgrind")?;
    if !status.success() {
        bail!("valgrind failed ({status})");
    }
    let text = std::fs::read_to_string(&out)?;
    let total = text
        .lines()
        .find_map(|l| l.strip_prefix("summary:").or_else(|| l.strip_prefix("totals:")))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .context("no totals in the callgrind output")?;
    Ok((total / iterations as f64, out))
}

/// `callgrind_annotate` lines "N (P%)  file:function [object]" → (P, function), top `n`.
fn annotate(out: &Path, inclusive: bool, n: usize) -> Result<Vec<(f64, String)>> {
    let output = Command::new("callgrind_annotate")
        .arg(format!("--inclusive={}", if inclusive { "yes" } else { "no" }))
        .arg("--threshold=99")
        .arg(out)
        .output()
        .context("running callgrind_annotate")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let mut rows = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let Some((_, rest)) = line.split_once(" (") else { continue };
        let Some((pct, func)) = rest.split_once("%)") else { continue };
        let Ok(pct) = pct.trim().parse::<f64>() else { continue };
        let func = func.trim();
        if pct > 100.0 {
            // Recursion: callgrind counts a cycle once per level; such shares mean nothing.
            continue;
        }
        // Drop the "file:" prefix and the " [object]" suffix.
        let func = func.rsplit_once(" [").map_or(func, |(f, _)| f);
        let func =
            func.split_once(':').map_or(func, |(file, f)| if file.contains('/') || file == "???" { f } else { func });
        if func.is_empty() || outside_the_loop(func) {
            continue;
        }
        rows.push((pct, func.to_string()));
        if rows.len() == n {
            break;
        }
    }
    Ok(rows)
}

/// Totals and the frames above the measured loop (and recursion levels, `'2`), which say
/// nothing about the handler.
pub fn outside_the_loop(func: &str) -> bool {
    const ABOVE: [&str; 8] = [
        "PROGRAM TOTALS",
        "below main",
        "lang_start",
        "__libc_start_main",
        "imagemap_bench::main",
        "run_loop",
        "__rust_begin_short_backtrace",
        "'2",
    ];
    func == "main" || func.starts_with("0x") || ABOVE.iter().any(|a| func.contains(a))
}

/// Profiles both loops under callgrind.
pub fn profile(exe: &Path, work: &Path, iterations: usize) -> Result<ProfileResults> {
    std::fs::create_dir_all(work)?;
    let (handler_ir, out) = callgrind(exe, work, "handler", iterations)?;
    let (baseline_ir, _) = callgrind(exe, work, "baseline", iterations)?;
    Ok(ProfileResults {
        handler_ir,
        baseline_ir,
        ratio: ratio(handler_ir, baseline_ir),
        top_exclusive: annotate(&out, false, 20)?,
        top_inclusive: annotate(&out, true, 40)?,
    })
}
