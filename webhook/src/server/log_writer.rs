//! Where log lines go. The per-review lines (info and more verbose, from the request path) go
//! to a shared buffer written out when it holds [`FLUSH_AT`] bytes or every [`INTERVAL`], so a
//! busy webhook makes one write syscall per batch of decisions instead of one per review, and no
//! thread is woken per line. Every other line (warnings, errors, the watch, reloads, the
//! controller) is written at once, after whatever was buffered before it, so order is kept and
//! nothing worth seeing waits. Nothing is dropped; the [`FlushGuard`] writes what is left when the
//! process ends.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// Buffered bytes that make the next line's writer write the batch out itself.
pub const FLUSH_AT: usize = 32 * 1024;
/// The longest a line waits in the buffer.
pub const INTERVAL: Duration = Duration::from_millis(50);

type Output = Box<dyn Write + Send>;

struct Shared {
    state: Mutex<State>,
    /// Signalled when closing.
    closing: Condvar,
    flush_at: usize,
}

struct State {
    buf: Vec<u8>,
    out: Output,
    closed: bool,
}

impl State {
    /// Writes the batch out; called with the lock held, so batches keep their order.
    fn flush(&mut self) {
        if !self.buf.is_empty() {
            // Nowhere to report a failed log write; the next batch tries again.
            let _ = self.out.write_all(&self.buf).and_then(|()| self.out.flush());
            self.buf.clear();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A `tracing_subscriber` writer (`MakeWriter`) appending to the shared buffer.
#[derive(Clone)]
pub struct BatchedWriter {
    shared: Arc<Shared>,
    /// The target whose info (and more verbose) lines are batched.
    hot_target: &'static str,
    /// This writer's line may wait in the buffer.
    batch: bool,
}

/// Stops the timer thread and writes every buffered line; keep it alive until exit.
pub struct FlushGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl BatchedWriter {
    /// Writes lines to `out` (stderr in the webhook), batching the info and more verbose lines
    /// of `hot_target`, and starts the timer thread.
    pub fn new(out: impl Write + Send + 'static, hot_target: &'static str) -> (BatchedWriter, FlushGuard) {
        Self::with(Box::new(out), hot_target, FLUSH_AT, INTERVAL)
    }

    fn with(out: Output, hot_target: &'static str, flush_at: usize, interval: Duration) -> (BatchedWriter, FlushGuard) {
        let state = State { buf: Vec::with_capacity(flush_at * 2), out, closed: false };
        let shared = Arc::new(Shared { state: Mutex::new(state), closing: Condvar::new(), flush_at });
        let timer = shared.clone();
        let thread = std::thread::Builder::new()
            .name("log-flush".into())
            .spawn(move || {
                let mut state = timer.lock();
                while !state.closed {
                    state.flush();
                    state = timer.closing.wait_timeout(state, interval).unwrap_or_else(|p| p.into_inner()).0;
                }
            })
            .ok();
        (BatchedWriter { shared: shared.clone(), hot_target, batch: false }, FlushGuard { shared, thread })
    }
}

impl BatchedWriter {
    /// Appends whole lines that may wait in the batch (lines formatted outside `tracing`).
    pub fn write_batched(&self, lines: &[u8]) {
        self.append(lines, true);
    }

    fn append(&self, bytes: &[u8], batch: bool) {
        let mut state = self.shared.lock();
        state.buf.extend_from_slice(bytes);
        if !batch || state.buf.len() >= self.shared.flush_at || state.closed {
            state.flush();
        }
    }
}

impl Write for BatchedWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.append(bytes, self.batch);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BatchedWriter {
    type Writer = BatchedWriter;

    fn make_writer(&'a self) -> BatchedWriter {
        BatchedWriter { batch: false, ..self.clone() }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> BatchedWriter {
        let batch = meta.target() == self.hot_target && *meta.level() >= tracing::Level::INFO;
        BatchedWriter { batch, ..self.clone() }
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.closed = true;
        state.flush();
        drop(state);
        self.shared.closing.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink whose bytes and write calls the test reads afterwards.
    #[derive(Clone, Default)]
    struct Sink {
        bytes: Arc<Mutex<Vec<u8>>>,
        writes: Arc<Mutex<usize>>,
    }

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            *self.writes.lock().expect("sink lock") += 1;
            self.bytes.lock().expect("sink lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn write_lines(writer: &BatchedWriter, threads: usize, lines: usize) {
        std::thread::scope(|s| {
            for t in 0..threads {
                let mut w = writer.clone();
                s.spawn(move || {
                    for i in 0..lines {
                        w.write_all(format!("thread {t} line {i}\n").as_bytes()).expect("write");
                    }
                });
            }
        });
    }

    /// Every line once, whole, and in order within each thread.
    fn assert_all_lines(text: &str, threads: usize, lines: usize) {
        let mut next = vec![0; threads];
        for line in text.lines() {
            let words: Vec<&str> = line.split(' ').collect();
            assert_eq!(words.len(), 4, "a whole line: {line:?}");
            let (t, i): (usize, usize) = (words[1].parse().expect("number"), words[3].parse().expect("number"));
            assert_eq!(i, next[t], "thread {t} in order");
            next[t] += 1;
        }
        assert_eq!(next, vec![lines; threads], "every line written");
    }

    #[test]
    fn every_line_is_written_whole_and_in_order_by_the_time_the_guard_drops() {
        let sink = Sink::default();
        let (writer, guard) = BatchedWriter::with(Box::new(sink.clone()), "hot", 4096, Duration::from_secs(3600));
        let writer = BatchedWriter { batch: true, ..writer };
        write_lines(&writer, 4, 2000);
        drop(guard);
        assert_all_lines(&String::from_utf8(sink.bytes.lock().expect("sink lock").clone()).expect("utf-8"), 4, 2000);
        let writes = *sink.writes.lock().expect("sink lock");
        assert!(writes < 8000 / 10, "lines were batched: {writes} writes for 8000 lines");
    }

    #[test]
    fn a_quiet_line_is_written_by_the_timer_without_waiting_for_more() {
        let sink = Sink::default();
        let (writer, _guard) = BatchedWriter::with(Box::new(sink.clone()), "hot", 1 << 20, Duration::from_millis(10));
        let mut writer = BatchedWriter { batch: true, ..writer };
        writer.write_all(b"thread 0 line 0\n").expect("write");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while sink.bytes.lock().expect("sink lock").is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(sink.bytes.lock().expect("sink lock").as_slice(), b"thread 0 line 0\n");
    }

    #[test]
    fn only_the_hot_targets_verbose_lines_wait_and_the_others_flush_them_in_order() {
        use tracing_subscriber::fmt::MakeWriter;
        let sink = Sink::default();
        let (writer, _guard) = BatchedWriter::with(Box::new(sink.clone()), "hot", 1 << 20, Duration::from_secs(3600));
        let text = || String::from_utf8(sink.bytes.lock().expect("sink lock").clone()).expect("utf-8");
        let decision = event("hot", tracing::Level::INFO);
        let warning = event("hot", tracing::Level::WARN);
        let elsewhere = event("cold", tracing::Level::INFO);
        writer.make_writer_for(&decision).write_all(b"decision 1\n").expect("write");
        assert_eq!(text(), "", "a decision line waits");
        writer.make_writer_for(&elsewhere).write_all(b"relisted\n").expect("write");
        assert_eq!(text(), "decision 1\nrelisted\n", "another target's line goes out at once, after it");
        writer.make_writer_for(&decision).write_all(b"decision 2\n").expect("write");
        writer.make_writer_for(&warning).write_all(b"refused\n").expect("write");
        assert_eq!(text(), "decision 1\nrelisted\ndecision 2\nrefused\n", "a warning goes out at once");
    }

    /// An event's metadata with `target` and `level`.
    fn event(target: &'static str, level: tracing::Level) -> tracing::Metadata<'static> {
        let fields = tracing::field::FieldSet::new(&[], tracing::callsite::Identifier(&CALLSITE));
        tracing::Metadata::new("event", target, level, None, None, None, fields, tracing::metadata::Kind::EVENT)
    }

    struct Callsite;
    impl tracing::callsite::Callsite for Callsite {
        fn set_interest(&self, _: tracing::subscriber::Interest) {}
        fn metadata(&self) -> &tracing::Metadata<'_> {
            unreachable!("not registered")
        }
    }
    static CALLSITE: Callsite = Callsite;
}
