//! Where the log lines go: tracing-appender's non-blocking writer, whose background thread
//! writes them in batches, at most once per `PAUSE`.
//!
//! A review only queues its line. Left as it is, the writer thread waits on its queue, so every
//! line wakes it: a wake-up and two context switches per review, which where reviews arrive one
//! at a time is a fifth of the webhook's CPU (docs/benchmarks.md). Here the thread pauses after
//! each write before it looks at its queue again; lines queued meanwhile do not wake it and are
//! written together. A line is written within about `PAUSE` of being logged, the queue is not
//! lossy (a burst waits for room), and dropping the guard writes every line before exit.

use std::io::{self, BufWriter, Write};
use std::time::Duration;

use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};

/// The name of the thread that writes the log lines.
pub const WRITER_THREAD: &str = "imagemap-log";

/// How long the writer thread waits after a write before it takes the next lines.
pub const PAUSE: Duration = Duration::from_millis(5);

/// How many bytes of lines the writer gathers before a write to the sink.
const BUFFER_BYTES: usize = 64 * 1024;

/// A started log writer.
pub struct LogWriter {
    /// Give this to the subscriber (`with_writer`).
    pub lines: NonBlocking,
    /// Dropping it writes every queued line and flushes the sink; keep it until exit.
    pub guard: WorkerGuard,
}

impl LogWriter {
    /// Starts the writer thread for `sink`.
    pub fn start<W: Write + Send + 'static>(sink: W) -> Self {
        Self::paced(sink, PAUSE)
    }

    fn paced<W: Write + Send + 'static>(sink: W, pause: Duration) -> Self {
        let (lines, guard) = NonBlockingBuilder::default()
            .lossy(false)
            .thread_name(WRITER_THREAD)
            .finish(Paced { buffer: BufWriter::with_capacity(BUFFER_BYTES, sink), pause });
        LogWriter { lines, guard }
    }
}

/// The writer thread's sink. The thread flushes it each time its queue is empty (and at exit):
/// the lines go out first, then the thread pauses there instead of waiting on the queue.
struct Paced<W: Write> {
    buffer: BufWriter<W>,
    pause: Duration,
}

impl<W: Write> Write for Paced<W> {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        self.buffer.write(line)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.buffer.flush()?;
        std::thread::sleep(self.pause);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

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
        let writer = LogWriter::start(sink.clone());
        let mut lines = writer.lines.clone();
        let want: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
        for line in want.split_inclusive('\n') {
            lines.write_all(line.as_bytes()).expect("queue a line");
        }
        drop(writer);
        assert_eq!(String::from_utf8(sink.0.lock().expect("sink lock").0.clone()).expect("UTF-8"), want);
    }

    #[test]
    fn lines_logged_one_by_one_are_written_at_most_once_per_pause() {
        let pause = Duration::from_millis(20);
        let sink = Shared::default();
        let writer = LogWriter::paced(sink.clone(), pause);
        let mut lines = writer.lines.clone();
        let started = Instant::now();
        for i in 0..200 {
            lines.write_all(format!("line {i}\n").as_bytes()).expect("queue a line");
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
        let writer = LogWriter::start(sink.clone());
        writer.lines.clone().write_all(b"alone\n").expect("queue a line");
        let deadline = Instant::now() + Duration::from_secs(30);
        while sink.0.lock().expect("sink lock").0.is_empty() {
            assert!(Instant::now() < deadline, "a single line was not written in 30 s");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(sink.0.lock().expect("sink lock").0, b"alone\n");
    }
}
