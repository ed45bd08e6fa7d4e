//! `imagemap-bench`: the steps of `make bench` (driven by `scripts/bench.sh`). Each step writes
//! `RESULTS/<step>.json`; `report` turns them into `docs/benchmarks.md`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use imagemap_bench::results::save;
use imagemap_bench::{cluster, criterion, load, modes, procfs, profile, report};
use imagemap_e2e::{ControlPlane, ControlPlaneOptions};

#[derive(Parser)]
#[command(name = "imagemap-bench", about = "The webhook measured against same-run baselines")]
struct Cli {
    /// Folder for the steps' JSON results.
    #[arg(long, global = true, default_value = "target/bench-results")]
    results: PathBuf,
    /// Scratch folder (certificates, logs, load-generator output).
    #[arg(long, global = true, default_value = "target/bench-work")]
    work: PathBuf,
    #[command(subcommand)]
    step: Step,
}

#[derive(Subcommand)]
enum Step {
    /// Record the machine (CPU, cores, memory) and the date.
    Machine,
    /// Steps 1-2: ratios from criterion's estimates.
    Criterion {
        /// criterion's output folder.
        #[arg(long, default_value = "target/criterion")]
        dir: PathBuf,
        /// Point estimate: median or mean.
        #[arg(long, default_value = "median")]
        estimate: String,
    },
    /// Instruction counts of the handler and the baseline under callgrind.
    Profile {
        /// Reviews per loop.
        #[arg(long, default_value_t = 300)]
        iterations: usize,
    },
    /// Runs one measured loop (what `profile` runs under valgrind).
    ProfileLoop {
        /// handler or baseline.
        #[arg(long)]
        case: String,
        /// Iterations.
        #[arg(long)]
        iterations: usize,
    },
    /// Step 3: throughput and latency over TLS, webhook vs the minimal server.
    Tls {
        /// The oha binary.
        #[arg(long, default_value = "oha")]
        oha: PathBuf,
        /// Keep-alive connections for the closed-loop runs.
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// Seconds per run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Closed-loop rounds.
        #[arg(long, default_value_t = 2)]
        rounds: usize,
    },
    /// Step 4: server CPU per full TLS handshake, ECDSA P-256 and RSA 2048.
    Handshakes {
        /// Handshakes per key type (upper bound).
        #[arg(long, default_value_t = 3000)]
        count: u64,
        /// Time limit per key type, seconds.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Concurrent clients.
        #[arg(long, default_value_t = 2)]
        concurrency: usize,
    },
    /// Step 5: peak RSS with ImageMaps loaded through a real API server's watch.
    Memory {
        /// Map counts to read at.
        #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
        counts: Vec<usize>,
        /// Requests in flight while creating maps.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Time limit for creating all maps, seconds.
        #[arg(long, default_value_t = 900)]
        create_seconds: u64,
    },
    /// Step 6: Pod creates through the API server with and without the webhook.
    E2e {
        /// without/with rounds.
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// Pods per one-at-a-time run.
        #[arg(long, default_value_t = 300)]
        serial: usize,
        /// Pods per concurrent run.
        #[arg(long, default_value_t = 1000)]
        concurrent: usize,
        /// Creates in flight in a concurrent run.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Time limit per run, seconds.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Pod creates through the API server by admission mode (webhook, compiled and naive
    /// policies), as ratios against an opted-out namespace.
    Modes {
        /// Rounds; each measures every mode once.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Pods per mode per round.
        #[arg(long, default_value_t = 400)]
        pods: usize,
        /// Creates in flight.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Time limit per run, seconds.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Writes the report.
    Report {
        /// The commands file bench.sh kept.
        #[arg(long)]
        commands: PathBuf,
        /// Hand-written notes (profile-driven changes) to include.
        #[arg(long)]
        notes: PathBuf,
        /// The report.
        #[arg(long, default_value = "docs/benchmarks.md")]
        out: PathBuf,
    },
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    // One thread: the load side stays on the core bench.sh pins it to.
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

fn plane() -> Result<ControlPlane> {
    ControlPlane::start(ControlPlaneOptions::default()).context("starting the control plane")
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // Absolute, because nginx resolves relative paths in its configuration against its prefix.
    let work = &std::path::absolute(&cli.work).with_context(|| format!("the folder {}", cli.work.display()))?;
    let results = &cli.results;
    match cli.step {
        Step::Machine => {
            save(results, "machine", &procfs::Machine::read())?;
            let date = std::process::Command::new("date").arg("-u").arg("+%Y-%m-%d %H:%M UTC").output()?;
            std::fs::write(results.join("date.txt"), date.stdout)?;
        }
        Step::Criterion { dir, estimate } => {
            let r = criterion::read(&dir, &estimate)?;
            for c in &r.review {
                eprintln!(
                    "  {:<10} handler {:>8.0} ns  baseline {:>8.0} ns  {:.2}x",
                    c.case, c.handler_ns, c.baseline_ns, c.ratio
                );
            }
            for m in &r.maps {
                eprintln!("  {:>6} maps {:>8.0} ns  {:.2}x", m.maps, m.ns, m.ratio);
            }
            save(results, "criterion", &r)?;
        }
        Step::Profile { iterations } => {
            let exe = std::env::current_exe()?;
            let r = profile::profile(&exe, &work.join("profile"), iterations)?;
            eprintln!("  handler {:.0} Ir/review, baseline {:.0}: {:.2}x", r.handler_ir, r.baseline_ir, r.ratio);
            save(results, "profile", &r)?;
        }
        Step::ProfileLoop { case, iterations } => {
            let n = profile::run_loop(&case, iterations)?;
            println!("{n}");
        }
        Step::Tls { oha, connections, seconds, rounds } => {
            let opts = load::TlsOptions { oha, connections, seconds, rounds, work: work.join("tls") };
            let r = runtime()?.block_on(load::tls_throughput(&opts))?;
            eprintln!(
                "  throughput ratio {:.2}x (minimal axum server), {:.2}x (nginx)",
                r.throughput_ratio, r.nginx_ratio
            );
            save(results, "tls", &r)?;
        }
        Step::Handshakes { count, seconds, concurrency } => {
            let opts = load::HandshakeOptions { count, seconds, concurrency, work: work.join("handshakes") };
            let r = runtime()?.block_on(load::handshakes(&opts))?;
            save(results, "handshakes", &r)?;
        }
        Step::Memory { counts, concurrency, create_seconds } => {
            let plane = plane()?;
            let opts = cluster::MemoryOptions { counts, concurrency, create_seconds, work: work.join("memory") };
            let r = runtime()?.block_on(cluster::memory(&plane, &opts))?;
            save(results, "memory", &r)?;
        }
        Step::E2e { rounds, serial, concurrent, concurrency, seconds } => {
            let plane = plane()?;
            let opts = cluster::E2eOptions { rounds, serial, concurrent, concurrency, seconds, work: work.join("e2e") };
            let r = runtime()?.block_on(cluster::e2e(&plane, &opts))?;
            save(results, "e2e", &r)?;
        }
        Step::Modes { rounds, pods, concurrency, seconds } => {
            let plane = plane()?;
            let opts = modes::ModesOptions { rounds, pods, concurrency, seconds, work: work.join("modes") };
            let r = runtime()?.block_on(modes::modes(&plane, &opts))?;
            for c in &r.cases {
                eprintln!(
                    "  {:<32} {:>6.0}/s  {}  p50 {:.2} ms  p99 {:.2} ms  swapped {}/{}  failed {}{}",
                    c.case,
                    c.creates_per_s,
                    format_args!("{:.2}x", c.ratio),
                    c.p50_ms,
                    c.p99_ms,
                    c.swapped,
                    c.pods,
                    c.failed,
                    c.error.as_ref().map(|e| format!("  ({e})")).unwrap_or_default()
                );
            }
            save(results, "modes", &r)?;
        }
        Step::Report { commands, notes, out } => {
            let commands = std::fs::read_to_string(&commands).unwrap_or_default();
            let notes = std::fs::read_to_string(&notes).with_context(|| format!("reading {}", notes.display()))?;
            report::write(results, &commands, &notes, &out)?;
            eprintln!("wrote {}", out.display());
        }
    }
    Ok(())
}
