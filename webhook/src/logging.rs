//! Where the log lines go, and the per-review decision line written at the cost it should have.
//!
//! Every line, from `tracing` (its fmt layer writes through [`Lines`]) or the decision line
//! ([`decision`]), is appended to one in-memory buffer under a lock: a copy, no allocation, no
//! wake-up. A background thread takes the whole buffer, writes it to the sink in one call, then
//! pauses `PAUSE` before it looks again, so lines logged meanwhile are written together and a
//! busy webhook pays no context switch per line. Lines keep the order they were appended in; a
//! burst beyond `LIMIT` bytes waits for room (nothing is dropped); dropping the [`LogGuard`]
//! writes every line before it returns.
//!
//! The decision line skips tracing's field visitors: it is formatted here, with a time stamp
//! cached per second, in the exact layout tracing-subscriber writes (plain or flattened JSON),
//! so both kinds of line read the same. docs/decisions.md says why this is our own code.

use std::cell::RefCell;
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use imagemap_core::admission::Reviewed;

use crate::config::LogFormat;

/// The name of the thread that writes the log lines.
pub const WRITER_THREAD: &str = "imagemap-log";

/// How long the writer thread waits after a write before it takes the next lines.
pub const PAUSE: Duration = Duration::from_millis(5);

/// How many bytes may wait to be written before a new line waits for room.
const LIMIT: usize = 1 << 20;

/// Lines waiting for the writer thread.
#[derive(Default)]
struct Pending {
    buffer: Vec<u8>,
    /// The writer thread waits on `Shared::lines` (so a new line must wake it).
    writer_waiting: bool,
    /// How many appenders wait on `Shared::room`.
    appenders_waiting: usize,
    /// The guard was dropped: write what is left and stop.
    closing: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    lines: Condvar,
    room: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding the lock leaves only bytes in a buffer: still usable.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Appends whole lines to the log; cheap to clone. Give it to the fmt layer (`with_writer`).
#[derive(Clone)]
pub struct Lines(Arc<Shared>);

impl Lines {
    /// Appends `bytes` (one or more whole lines) after every line appended before.
    pub fn append(&self, bytes: &[u8]) {
        let mut pending = self.0.lock();
        while pending.buffer.len() >= LIMIT && !pending.closing {
            pending.appenders_waiting += 1;
            pending = self.0.room.wait(pending).unwrap_or_else(PoisonError::into_inner);
            pending.appenders_waiting -= 1;
        }
        pending.buffer.extend_from_slice(bytes);
        if pending.writer_waiting {
            pending.writer_waiting = false;
            self.0.lines.notify_one();
        }
    }
}

impl Write for &Lines {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Lines {
    type Writer = &'a Lines;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

/// Dropping it writes every appended line, flushes the sink and stops the writer thread.
pub struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.lines.notify_one();
        self.shared.room.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A started log writer.
pub struct LogWriter {
    /// Give this to the subscriber (`with_writer`) and to [`install`].
    pub lines: Lines,
    /// Keep it until exit: dropping it writes every line.
    pub guard: LogGuard,
}

impl LogWriter {
    /// Starts the writer thread for `sink`.
    pub fn start<W: Write + Send + 'static>(sink: W) -> io::Result<Self> {
        Self::paced(sink, PAUSE)
    }

    fn paced<W: Write + Send + 'static>(mut sink: W, pause: Duration) -> io::Result<Self> {
        let shared = Arc::new(Shared { pending: Mutex::default(), lines: Condvar::new(), room: Condvar::new() });
        let writer = shared.clone();
        let thread = std::thread::Builder::new().name(WRITER_THREAD.into()).spawn(move || {
            let mut batch = Vec::new();
            while take(&writer, &mut batch) {
                // Nowhere to report a failed write to: the log is the report.
                let _ = sink.write_all(&batch).and_then(|()| sink.flush());
                batch.clear();
                std::thread::sleep(pause);
            }
            let _ = sink.flush();
        })?;
        Ok(LogWriter { lines: Lines(shared.clone()), guard: LogGuard { shared, thread: Some(thread) } })
    }
}

/// Waits for lines and swaps them into `batch`; `false` once closing with nothing left.
fn take(shared: &Shared, batch: &mut Vec<u8>) -> bool {
    let mut pending = shared.lock();
    while pending.buffer.is_empty() && !pending.closing {
        pending.writer_waiting = true;
        pending = shared.lines.wait(pending).unwrap_or_else(PoisonError::into_inner);
    }
    pending.writer_waiting = false;
    if pending.buffer.is_empty() {
        return false;
    }
    std::mem::swap(&mut pending.buffer, batch);
    if pending.appenders_waiting > 0 {
        shared.room.notify_all();
    }
    true
}

/// Where [`decision`] writes, set once by the binary ([`install`]).
static DECISIONS: OnceLock<(Lines, LogFormat)> = OnceLock::new();

/// Sends decision lines to `lines` in `format`. Without it (a router in a test) none is written.
pub fn install(lines: Lines, format: LogFormat) {
    let _ = DECISIONS.set((lines, format));
}

/// The target the decision line names (the module that answers reviews).
pub const DECISION_TARGET: &str = "imagemap_webhook::http";

/// Appends the INFO `review` line of a decision; the caller checks that INFO is enabled for
/// [`DECISION_TARGET`].
pub fn decision(reviewed: &Reviewed, took: Duration) {
    let Some((lines, format)) = DECISIONS.get() else { return };
    thread_local! {
        static LINE: RefCell<(Vec<u8>, Clock)> = RefCell::new((Vec::with_capacity(512), Clock::default()));
    }
    LINE.with_borrow_mut(|(line, clock)| {
        line.clear();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        write_decision(line, clock, now, *format, reviewed, took);
        lines.append(line);
    });
}

/// One decision line, `\n`-terminated, as tracing-subscriber's fmt layer writes an
/// `info!(uid = %uid, object = %object, outcome, swaps, warnings, fields, micros, "review")`.
fn write_decision(
    line: &mut Vec<u8>,
    clock: &mut Clock,
    now: Duration,
    format: LogFormat,
    r: &Reviewed,
    took: Duration,
) {
    let swaps = r.injection.as_ref().map_or(&[][..], |i| &i.swaps[..]);
    let warnings = r.injection.as_ref().map_or(0, |i| i.warnings.len());
    let micros = took.as_micros() as u64;
    let mut number = itoa::Buffer::new();
    // `field:original->image,...` as one quoted string; escaped only when a part needs it.
    let fields = |line: &mut Vec<u8>, escape: fn(&mut Vec<u8>, &str)| {
        let parts = swaps.iter().enumerate().flat_map(|(i, s)| {
            [if i > 0 { "," } else { "" }, &s.record.field, ":", &s.record.original, "->", &s.record.image]
        });
        if parts.clone().all(needs_no_escape) {
            line.push(b'"');
            parts.for_each(|part| line.extend_from_slice(part.as_bytes()));
            line.push(b'"');
        } else {
            escape(line, &parts.collect::<String>());
        }
    };
    match format {
        LogFormat::Plain => {
            clock.write(line, now);
            line.extend_from_slice(b"  INFO ");
            line.extend_from_slice(DECISION_TARGET.as_bytes());
            line.extend_from_slice(b": review uid=");
            line.extend_from_slice(r.uid.as_bytes());
            line.extend_from_slice(b" object=");
            line.extend_from_slice(r.object.as_bytes());
            line.extend_from_slice(b" outcome=");
            debug_string(line, r.outcome.as_str());
            line.extend_from_slice(b" swaps=");
            line.extend_from_slice(number.format(swaps.len()).as_bytes());
            line.extend_from_slice(b" warnings=");
            line.extend_from_slice(number.format(warnings).as_bytes());
            line.extend_from_slice(b" fields=");
            fields(line, debug_string);
            line.extend_from_slice(b" micros=");
            line.extend_from_slice(number.format(micros).as_bytes());
        }
        LogFormat::Json => {
            line.extend_from_slice(b"{\"timestamp\":\"");
            clock.write(line, now);
            line.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"review\",\"uid\":");
            imagemap_core::json_string(line, &r.uid);
            line.extend_from_slice(b",\"object\":");
            imagemap_core::json_string(line, &r.object);
            line.extend_from_slice(b",\"outcome\":");
            imagemap_core::json_string(line, r.outcome.as_str());
            line.extend_from_slice(b",\"swaps\":");
            line.extend_from_slice(number.format(swaps.len()).as_bytes());
            line.extend_from_slice(b",\"warnings\":");
            line.extend_from_slice(number.format(warnings).as_bytes());
            line.extend_from_slice(b",\"fields\":");
            fields(line, imagemap_core::json_string);
            line.extend_from_slice(b",\"micros\":");
            line.extend_from_slice(number.format(micros).as_bytes());
            line.extend_from_slice(b",\"target\":\"");
            line.extend_from_slice(DECISION_TARGET.as_bytes());
            line.extend_from_slice(b"\"}");
        }
    }
    line.push(b'\n');
}

/// A string as `{:?}` writes it (quoted, escaped), without the formatter when nothing needs escaping.
fn debug_string(line: &mut Vec<u8>, s: &str) {
    if needs_no_escape(s) {
        line.push(b'"');
        line.extend_from_slice(s.as_bytes());
        line.push(b'"');
    } else {
        let _ = write!(line, "{s:?}");
    }
}

/// Printable ASCII without quotes or backslashes: the same quoted in JSON and in `{:?}`.
fn needs_no_escape(s: &str) -> bool {
    s.bytes().all(|b| (0x20..0x7f).contains(&b) && !matches!(b, b'"' | b'\\' | b'\''))
}

/// RFC 3339 UTC time stamps with microseconds (`2026-12-06T13:51:43.378745Z`), as
/// tracing-subscriber writes them; the date and time of day are formatted once per second.
#[derive(Default)]
struct Clock {
    second: u64,
    prefix: [u8; 20],
}

impl Clock {
    fn write(&mut self, line: &mut Vec<u8>, since_epoch: Duration) {
        let second = since_epoch.as_secs();
        if second != self.second || self.prefix[0] == 0 {
            self.second = second;
            self.prefix = date_time(second);
        }
        line.extend_from_slice(&self.prefix);
        let micros = since_epoch.subsec_micros();
        let mut digits = [b'0'; 6];
        let mut rest = micros;
        for d in digits.iter_mut().rev() {
            *d = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        line.extend_from_slice(&digits);
        line.push(b'Z');
    }
}

/// `YYYY-MM-DDTHH:MM:SS.` for seconds since the Unix epoch (UTC; the civil-from-days algorithm).
fn date_time(seconds: u64) -> [u8; 20] {
    let days = (seconds / 86_400) as i64;
    let of_day = seconds % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out = [0u8; 20];
    let mut put = |at: usize, value: i64, width: usize| {
        let mut v = value;
        for i in (0..width).rev() {
            out[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, year, 4);
    put(5, month, 2);
    put(8, day, 2);
    put(11, (of_day / 3600) as i64, 2);
    put(14, (of_day / 60 % 60) as i64, 2);
    put(17, (of_day % 60) as i64, 2);
    for (at, c) in [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':'), (19, b'.')] {
        out[at] = c;
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use imagemap_core::admission::Outcome;
    use imagemap_core::inject::{Injection, Swap, SwapRecord};
    use imagemap_core::maps::Scope;

    use super::*;

    /// A sink the test can read while and after the writer runs: the bytes, and how many writes.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut sink = self.0.lock().expect("sink lock");
            sink.0.extend_from_slice(buf);
            sink.1 += 1;
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_reaches_the_sink_in_order_once_the_guard_is_dropped() {
        let sink = Shared::default();
        let writer = LogWriter::start(sink.clone()).expect("start");
        let want: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
        for line in want.split_inclusive('\n') {
            writer.lines.append(line.as_bytes());
        }
        drop(writer);
        assert_eq!(String::from_utf8(sink.0.lock().expect("sink lock").0.clone()).expect("UTF-8"), want);
    }

    #[test]
    fn lines_from_many_threads_are_each_written_whole_even_past_the_limit() {
        let sink = Shared::default();
        let writer = LogWriter::start(sink.clone()).expect("start");
        let line = format!("{}\n", "x".repeat(999));
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| (0..2_000).for_each(|_| writer.lines.append(line.as_bytes())));
            }
        });
        drop(writer);
        let bytes = sink.0.lock().expect("sink lock").0.clone();
        assert!(bytes.len() > 4 * LIMIT, "the test must pass the limit");
        let text = String::from_utf8(bytes).expect("UTF-8");
        assert_eq!(text.lines().count(), 8_000);
        assert!(text.lines().all(|l| l.len() == 999), "a line was split or mixed");
    }

    #[test]
    fn lines_logged_one_by_one_are_written_at_most_once_per_pause() {
        let pause = Duration::from_millis(20);
        let sink = Shared::default();
        let writer = LogWriter::paced(sink.clone(), pause).expect("start");
        let started = Instant::now();
        for i in 0..200 {
            writer.lines.append(format!("line {i}\n").as_bytes());
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(writer);
        let elapsed = started.elapsed();
        let (bytes, writes) = sink.0.lock().expect("sink lock").clone();
        assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 200, "every line is written");
        // One write per pause at most (plus the last one at exit); unpaced, about one per line.
        let bound = (elapsed.as_secs_f64() / pause.as_secs_f64()).ceil() as usize + 1;
        assert!(writes <= bound, "{writes} writes in {elapsed:?}, at most {bound} expected");
    }

    #[test]
    fn a_single_line_is_written_without_waiting_for_more_or_for_exit() {
        let sink = Shared::default();
        let writer = LogWriter::start(sink.clone()).expect("start");
        writer.lines.append(b"alone\n");
        let deadline = Instant::now() + Duration::from_secs(30);
        while sink.0.lock().expect("sink lock").0.is_empty() {
            assert!(Instant::now() < deadline, "a single line was not written in 30 s");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(sink.0.lock().expect("sink lock").0, b"alone\n");
    }

    #[test]
    fn time_stamps_are_utc_with_microseconds() {
        let mut clock = Clock::default();
        let mut line = Vec::new();
        // 2026-12-06T13:51:43Z, then the next second, then 2000-02-29 (a leap day).
        clock.write(&mut line, Duration::new(1_796_565_103, 378_745_123));
        line.push(b' ');
        clock.write(&mut line, Duration::new(1_796_565_104, 5_000));
        line.push(b' ');
        clock.write(&mut line, Duration::new(951_782_400, 0));
        assert_eq!(
            String::from_utf8(line).expect("UTF-8"),
            "2026-12-06T13:51:43.378745Z 2026-12-06T13:51:44.000005Z 2000-02-29T00:00:00.000000Z"
        );
    }

    fn reviewed(image: &str) -> Reviewed {
        let record = SwapRecord {
            field: "spec.containers{web}.image".into(),
            original: "my-apiserver:dev".into(),
            image: image.into(),
            image_map: "default/m".into(),
        };
        let swap = Swap { record, exact: false, scope: Scope::Local, outranked: vec![] };
        Reviewed {
            body: vec![],
            outcome: Outcome::Patched,
            uid: "89373620-a985-4b9f-acc5-4fcb8ea4d908".into(),
            object: "dev/web".into(),
            injection: Some(Injection { swaps: vec![swap.clone(), swap], ..Default::default() }),
        }
    }

    fn line(format: LogFormat, r: &Reviewed) -> String {
        let mut line = Vec::new();
        let now = Duration::new(1_796_565_103, 378_745_000);
        write_decision(&mut line, &mut Clock::default(), now, format, r, Duration::from_micros(60));
        String::from_utf8(line).expect("UTF-8")
    }

    #[test]
    fn the_plain_decision_line_reads_as_tracing_writes_it() {
        assert_eq!(
            line(LogFormat::Plain, &reviewed("localhost:5000/x:1")),
            "2026-12-06T13:51:43.378745Z  INFO imagemap_webhook::http: review \
             uid=89373620-a985-4b9f-acc5-4fcb8ea4d908 object=dev/web outcome=\"patched\" swaps=2 warnings=0 \
             fields=\"spec.containers{web}.image:my-apiserver:dev->localhost:5000/x:1,\
             spec.containers{web}.image:my-apiserver:dev->localhost:5000/x:1\" micros=60\n"
        );
        let odd = line(LogFormat::Plain, &reviewed("a\"b\\c\n'"));
        assert!(odd.contains(r#"->a\"b\\c\n'""#), "{odd}");
    }

    #[test]
    fn the_json_decision_line_is_one_flat_object_as_tracing_writes_it() {
        let text = line(LogFormat::Json, &reviewed("a\"b\\c\n\u{1}"));
        assert!(text.ends_with('\n') && text.lines().count() == 1, "{text}");
        let value: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(
            value,
            serde_json::json!({
                "timestamp": "2026-12-06T13:51:43.378745Z", "level": "INFO", "message": "review",
                "uid": "89373620-a985-4b9f-acc5-4fcb8ea4d908", "object": "dev/web", "outcome": "patched",
                "swaps": 2, "warnings": 0, "micros": 60, "target": "imagemap_webhook::http",
                "fields": "spec.containers{web}.image:my-apiserver:dev->a\"b\\c\n\u{1},\
                           spec.containers{web}.image:my-apiserver:dev->a\"b\\c\n\u{1}",
            })
        );
    }
}
