//! Reading a process's CPU time and memory from `/proc`.

use std::process::Command;

use anyhow::{bail, Context, Result};

/// `utime + stime` of `pid`, in clock ticks (`/proc/PID/stat` fields 14 and 15).
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading /proc/{pid}/stat"))?;
    // "PID (COMM) STATE ...": COMM may hold spaces, so split after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')' the fields start at field 3 (state): utime is field 14, stime field 15.
    let get = |n: usize| -> Result<u64> {
        fields.get(n - 3).context("short /proc/PID/stat")?.parse::<u64>().context("non-numeric /proc/PID/stat field")
    };
    Ok(get(14)? + get(15)?)
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 on Linux when that fails).
pub fn ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .filter(|t: &u64| *t > 0)
        .unwrap_or(100)
}

/// CPU seconds of `pid` so far.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    Ok(cpu_ticks(pid)? as f64 / ticks_per_second() as f64)
}

/// A `kB` field of `/proc/PID/status` (e.g. `VmHWM`, `VmRSS`), in bytes.
pub fn status_bytes(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix(field).and_then(|r| r.strip_prefix(':')) {
            let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().context("non-numeric status field")?;
            return Ok(kb * 1024);
        }
    }
    bail!("/proc/{pid}/status has no {field}")
}

/// Peak resident set size (`VmHWM`) in bytes.
pub fn peak_rss(pid: u32) -> Result<u64> {
    status_bytes(pid, "VmHWM")
}

/// Current resident set size (`VmRSS`) in bytes.
pub fn rss(pid: u32) -> Result<u64> {
    status_bytes(pid, "VmRSS")
}

/// The machine: CPU model, cores, memory, kernel.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Machine {
    /// `nproc`.
    pub nproc: usize,
    /// `model name` of the first CPU in `/proc/cpuinfo`.
    pub cpu_model: String,
    /// `MemTotal`, in bytes.
    pub memory_bytes: u64,
    /// `uname -sr`.
    pub kernel: String,
    /// `rustc --version`.
    pub rustc: String,
    /// 1-minute load average when the run started.
    pub loadavg: String,
}

impl Machine {
    /// Reads the machine's description.
    pub fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_bytes = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024);
        let run = |cmd: &str, args: &[&str]| {
            Command::new(cmd)
                .args(args)
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default()
        };
        Machine {
            // Not available_parallelism(): the bench itself runs pinned to one core.
            nproc: cpuinfo.lines().filter(|l| l.starts_with("processor")).count(),
            cpu_model,
            memory_bytes,
            kernel: run("uname", &["-sr"]),
            rustc: run("rustc", &["--version"]),
            loadavg: std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_string(),
        }
    }
}
