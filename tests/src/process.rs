//! Child processes that cannot outlive the test process.
//!
//! Each control-plane binary runs as the leader of its own process group (so a signal to the
//! group reaches anything it forks, and a terminal's Ctrl-C goes to the test runner only), with
//! stdin closed and stdout/stderr in a log file. Two mechanisms stop them:
//!
//! * [`ManagedProcess::stop`], run on drop: SIGTERM to the group, a short grace period, SIGKILL,
//!   then `wait` so that no zombie is left.
//! * A [`Watchdog`]: a `sh` process, in its own process group too, that reads process-group ids
//!   on its stdin, a pipe whose only writer is the test process. When the test process exits
//!   for any reason (normal exit with a plane left in a `static`, panic with `panic = "abort"`,
//!   SIGKILL), the kernel closes the pipe, `read` sees end-of-file and the watchdog kills every
//!   group it was told about, then removes the plane's folder. No unsafe code and no
//!   `atexit`, and no polling of the parent's pid (which could be reused).

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::wait::poll;
use std::os::unix::process::CommandExt as _;

/// How long a process gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// The watchdog's script: collect group ids until end-of-file; then, newest first (the
/// apiserver before its etcd), SIGTERM a group, give its leader up to 3 s, SIGKILL the group;
/// then run the teardown script `$2` (if not empty: a node's, which stops what escaped the
/// process groups and unmounts); last, remove the folder `$1` (if not empty), never crossing
/// into another file system (a mount left behind). dash's `kill` takes `-PGID` for a process
/// group but no `--`.
const WATCHDOG_SCRIPT: &str = r#"
gone() { # whether the leader of group $1 has exited (a zombie counts: init may reap late)
  stat=""
  read -r stat < "/proc/$1/stat" 2>/dev/null
  case "$stat" in "" | *") Z "* | *") X "*) return 0 ;; *) return 1 ;; esac
}
pgids=""
while read -r g; do pgids="$g $pgids"; done
for g in $pgids; do
  kill -TERM "-$g" 2>/dev/null
  i=0
  while [ "$i" -lt 30 ] && ! gone "$g"; do sleep 0.1; i=$((i + 1)); done
  kill -KILL "-$g" 2>/dev/null
done
if [ -n "$2" ] && [ -f "$2" ]; then sh "$2" >/dev/null 2>&1; fi
if [ -n "$1" ]; then rm -rf --one-file-system -- "$1"; fi
"#;

/// Kills the process groups it guards, and removes a folder, once the test process is gone.
#[derive(Debug)]
pub struct Watchdog {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Watchdog {
    /// Starts the watchdog; it will remove `cleanup_dir` (if any) after killing the groups.
    pub fn spawn(cleanup_dir: Option<&Path>) -> Result<Watchdog> {
        Self::spawn_with_teardown(cleanup_dir, None)
    }

    /// Starts a watchdog that, after killing the groups, runs `sh TEARDOWN` (if given and still
    /// there), then removes `cleanup_dir` (if any).
    pub fn spawn_with_teardown(cleanup_dir: Option<&Path>, teardown: Option<&Path>) -> Result<Watchdog> {
        let dir = cleanup_dir.map(|d| d.as_os_str().to_owned()).unwrap_or_default();
        let teardown = teardown.map(|d| d.as_os_str().to_owned()).unwrap_or_default();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG_SCRIPT)
            .arg("imagemap-e2e-watchdog")
            .arg(dir)
            .arg(teardown)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("starting the watchdog (sh)")?;
        let stdin = child.stdin.take();
        Ok(Watchdog { child, stdin })
    }

    /// The watchdog's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Adds a process group to kill when the test process exits.
    pub fn guard(&mut self, pgid: u32) -> Result<()> {
        let stdin = self.stdin.as_mut().context("the watchdog is disarmed")?;
        writeln!(stdin, "{pgid}").context("writing to the watchdog")?;
        stdin.flush().context("writing to the watchdog")?;
        Ok(())
    }

    /// Stops the watchdog without letting it act: the caller tears down itself.
    pub fn disarm(&mut self) {
        // Kill first: closing stdin first would start the teardown script.
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stdin = None;
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.disarm();
    }
}

/// A long-running child process (etcd, kube-apiserver, ...) with its log file.
#[derive(Debug)]
pub struct ManagedProcess {
    name: String,
    child: Child,
    log_path: PathBuf,
    exited: bool,
}

impl ManagedProcess {
    /// Starts `program args` in its own process group, logging to `log_path`, guarded by
    /// `watchdog`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        log_path: &Path,
        watchdog: &mut Watchdog,
    ) -> Result<Self> {
        let mut command = Command::new(program);
        command.args(args);
        Self::spawn_command(name, command, log_path, watchdog)
    }

    /// [`ManagedProcess::spawn`] for a prepared `command` (environment, working folder...).
    pub fn spawn_command(name: &str, mut command: Command, log_path: &Path, watchdog: &mut Watchdog) -> Result<Self> {
        let program = command.get_program().to_string_lossy().into_owned();
        crate::launch::log_to(&mut command, log_path)?;
        let child = command.process_group(0).spawn().with_context(|| format!("starting {name} ({program})"))?;
        let mut process =
            ManagedProcess { name: name.to_string(), child, log_path: log_path.to_path_buf(), exited: false };
        // If this fails the process is stopped on drop right away.
        watchdog.guard(process.pid()).inspect_err(|_| process.stop(Duration::ZERO))?;
        Ok(process)
    }

    /// The component's name, e.g. `kube-apiserver`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id (also its process-group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log file (stdout and stderr).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Fails, with the tail of the log, if the process has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => {
                self.exited = true;
                bail!(
                    "{} exited ({status}); last lines of {}:\n{}",
                    self.name,
                    self.log_path.display(),
                    self.log_tail(40)
                )
            }
            Err(e) => bail!("checking on {}: {e}", self.name),
        }
    }

    /// Waits until the process logs the address it bound (it was started with `--listen
    /// 127.0.0.1:0`, see [`crate::launch`]); fails, with its log, if it exits first or does not
    /// log one within [`crate::launch::ADDRESS_TIMEOUT`].
    pub fn wait_for_address(&mut self) -> Result<SocketAddr> {
        let log = self.log_path.clone();
        crate::launch::wait_for_address(&log, crate::launch::ADDRESS_TIMEOUT, || self.ensure_running())
            .with_context(|| format!("{} did not log the address it serves on", self.name))
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_path, lines)
    }

    /// SIGTERM to the process group, up to `grace` to exit, then SIGKILL; reaps the process.
    pub fn stop(&mut self, grace: Duration) {
        if self.exited {
            return;
        }
        let pgid = self.pid();
        if !grace.is_zero() {
            signal_group("TERM", pgid);
            let deadline = Instant::now() + grace;
            // Not `try_wait`: an exited but unreaped leader keeps its pid, and so the group id,
            // reserved until the SIGKILL below has gone out.
            while Instant::now() < deadline && process_alive(pgid) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // Whatever is left in the group (the leader, or anything it forked).
        signal_group("KILL", pgid);
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.exited = true;
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        self.stop(STOP_GRACE);
    }
}

/// Sends `SIG<signal>` to the process group `pgid` with the shell's `kill` builtin (std has no
/// signal API but SIGKILL, and the workspace forbids the unsafe code `libc::kill` would need).
fn signal_group(signal: &str, pgid: u32) {
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!("kill -{signal} -{pgid} 2>/dev/null"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The last `lines` lines of a text file (or a note that it could not be read).
pub fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Polls `ready` every `interval` until it is true (`Ok(true)`) or `timeout` passes
/// (`Ok(false)`); fails at once, with that process's log, when one of `processes` exits.
pub fn poll_while_running(
    processes: &mut [ManagedProcess],
    timeout: Duration,
    interval: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<bool> {
    let mut exited = None;
    let outcome = poll(timeout, interval, || {
        if let Some(e) = processes.iter_mut().find_map(|p| p.ensure_running().err()) {
            exited = Some(e);
            return Some(());
        }
        ready().then_some(())
    });
    match exited {
        Some(e) => Err(e),
        None => Ok(outcome.is_some()),
    }
}

/// Runs test `name` of the current test binary in a child process (`--ignored`, with `env` set
/// to 1, so that it runs only when asked) and returns what follows `marker` on the line the child
/// printed; panics with the child's output when it fails or prints no such line. Used by tests
/// of what happens when a process exits with a resource still held in a `static`.
pub fn run_exit_helper(name: &str, env: &str, marker: &str) -> String {
    let exe = std::env::current_exe().expect("the test binary");
    let output = Command::new(exe)
        .args(["--exact", name, "--ignored", "--nocapture", "--test-threads=1"])
        .env(env, "1")
        .output()
        .expect("the helper runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "helper {name} failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    stdout
        .lines()
        .find_map(|l| l.split_once(marker).map(|(_, rest)| rest.to_string()))
        .unwrap_or_else(|| panic!("no {marker:?} line in:\n{stdout}"))
}

/// Whether a process with this pid is running, via `/proc/PID/stat`. A zombie (exited, not yet
/// reaped: an orphan whose new parent does not reap) counts as gone.
pub fn process_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "PID (COMM) STATE ...": COMM may contain spaces and parentheses, so split at the last ')'.
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, None | Some('Z' | 'X' | 'x'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_kills_and_reaps() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut watchdog = Watchdog::spawn(None).expect("watchdog");
        let mut p = ManagedProcess::spawn(
            "sleep",
            Path::new("sleep"),
            &["300".into()],
            &dir.path().join("sleep.log"),
            &mut watchdog,
        )
        .expect("spawn");
        let pid = p.pid();
        p.ensure_running().expect("running");
        p.stop(Duration::from_secs(2));
        assert!(!process_alive(pid), "pid {pid} is gone");
    }

    #[test]
    fn the_watchdog_kills_its_groups_when_its_stdin_closes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let doomed = dir.path().join("doomed");
        std::fs::create_dir(&doomed).expect("mkdir");
        let mut watchdog = Watchdog::spawn(Some(&doomed)).expect("watchdog");
        // A process the test does not reap itself: its parent is a shell that exits at once,
        // so it is reparented to init, as after the test process's own exit. It prints its pid
        // once it leads its own process group (as `process_group(0)` ensures before `spawn`
        // returns), then closes that pipe so that `output` returns.
        let out = Command::new("sh")
            .arg("-c")
            .arg(r#"setsid sh -c 'echo $$ >&3; exec sleep 300 3>&-' 3>&1 >/dev/null 2>&1 </dev/null &"#)
            .output()
            .expect("sh");
        let pid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("pid");
        watchdog.guard(pid).expect("guard");
        assert!(process_alive(pid));
        // What the kernel does when the test process exits.
        watchdog.stdin = None;
        let _ = watchdog.child.wait();
        let gone = crate::wait::poll(Duration::from_secs(10), Duration::from_millis(50), || {
            (!process_alive(pid)).then_some(())
        });
        assert!(gone.is_some(), "pid {pid} is gone");
        assert!(!doomed.exists(), "the folder is removed");
    }

    #[test]
    fn the_address_is_read_from_plain_and_json_lines() {
        let plain = "2026-01-01T00:00:00Z  INFO imagemap_webhook: serving HTTPS listen=127.0.0.1:0 \
                     address=127.0.0.1:40123 role=Serve\n";
        assert_eq!(crate::launch::bound_address(plain), Some(SocketAddr::from(([127, 0, 0, 1], 40123))));
        let json = r#"{"timestamp":"x","level":"INFO","message":"serving HTTPS","listen":"127.0.0.1:0","address":"127.0.0.1:40124","role":"Controller"}"#;
        assert_eq!(crate::launch::bound_address(json), Some(SocketAddr::from(([127, 0, 0, 1], 40124))));
        assert_eq!(
            crate::launch::bound_address("starting\naddress=127.0.0.1:1 elsewhere\n"),
            None,
            "only the serving line"
        );
    }

    #[test]
    fn a_process_that_exits_without_an_address_is_an_error_with_its_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut command = Command::new("sh");
        command.args(["-c", "echo nothing to serve >&2; exit 3"]);
        let e = crate::launch::spawn(command, &dir.path().join("log")).expect_err("no address");
        let text = format!("{e:#}");
        assert!(text.contains("nothing to serve") && text.contains('3'), "{text}");
    }

    #[test]
    fn a_process_that_logs_an_address_is_returned_running() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut command = Command::new("sh");
        command.args(["-c", "echo 'INFO serving HTTPS address=127.0.0.1:1234' >&2; exec sleep 30"]);
        let (mut child, address) = crate::launch::spawn(command, &dir.path().join("log")).expect("an address");
        assert_eq!(address.port(), 1234);
        assert!(child.try_wait().expect("try_wait").is_none(), "still running");
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn a_managed_process_reports_its_address_or_its_exit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut watchdog = Watchdog::spawn(None).expect("watchdog");
        let serve = "echo '{\"message\":\"serving HTTPS\",\"address\":\"127.0.0.1:4321\"}'; exec sleep 30";
        let args = ["-c".to_string(), serve.to_string()];
        let log = dir.path().join("serving.log");
        let mut p = ManagedProcess::spawn("serving", Path::new("sh"), &args, &log, &mut watchdog).expect("spawn");
        assert_eq!(p.wait_for_address().expect("an address").port(), 4321);
        p.stop(Duration::ZERO);
        let args = ["-c".to_string(), "exit 4".to_string()];
        let log = dir.path().join("failing.log");
        let mut p = ManagedProcess::spawn("failing", Path::new("sh"), &args, &log, &mut watchdog).expect("spawn");
        let e = format!("{:#}", p.wait_for_address().expect_err("no address"));
        assert!(e.contains("failing") && e.contains("exit status: 4"), "{e}");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        std::fs::write(&path, "a\nb\nc\n").expect("write");
        assert_eq!(tail(&path, 2), "b\nc");
        assert_eq!(tail(&path, 10), "a\nb\nc");
    }
}
