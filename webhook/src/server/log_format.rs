//! The webhook's log lines, plain or JSON: one line per event with an RFC 3339 UTC timestamp,
//! the level, the target, the message and the fields. The same layout as tracing-subscriber's
//! full and flattened-JSON formats, written without its per-field `Debug` escaping and (for
//! JSON) without building a map per line: a decision line per review is on the hot path.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats events as plain text (`json: false`) or one JSON object per line.
#[derive(Debug, Clone, Copy)]
pub struct LineFormat {
    /// JSON lines instead of plain text.
    pub json: bool,
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        if self.json {
            w.write_str("{\"timestamp\":\"")?;
            write_timestamp(&mut w)?;
            write!(w, "\",\"level\":\"{}\"", meta.level())?;
            event.record(&mut JsonFields { w: &mut w, result: Ok(()) });
            w.write_str(",\"target\":")?;
            json_str(&mut w, meta.target())?;
            if let Some(scope) = ctx.event_scope() {
                w.write_str(",\"spans\":[")?;
                for (i, span) in scope.from_root().enumerate() {
                    w.write_str(if i > 0 { "," } else { "" })?;
                    json_str(&mut w, span.name())?;
                }
                w.write_char(']')?;
            }
            return w.write_str("}\n");
        }
        write_timestamp(&mut w)?;
        let ansi = w.has_ansi_escapes();
        match (ansi, *meta.level()) {
            (false, level) => w.write_str(padded_level(level))?,
            (true, level) => write!(w, " \x1b[{}m{level:>5}\x1b[0m ", level_color(level))?,
        }
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                w.write_str(span.name())?;
                if let Some(fields) = span.extensions().get::<FormattedFields<N>>().filter(|f| !f.is_empty()) {
                    write!(w, "{{{fields}}}")?;
                }
                w.write_char(':')?;
            }
            w.write_char(' ')?;
        }
        write!(w, "{}: ", meta.target())?;
        let mut fields = PlainFields { w: &mut w, first: true, result: Ok(()) };
        event.record(&mut fields);
        fields.result?;
        w.write_char('\n')
    }
}

/// ` INFO ` and so on: the level right-aligned in five columns between spaces.
fn padded_level(level: Level) -> &'static str {
    match level {
        Level::ERROR => " ERROR ",
        Level::WARN => "  WARN ",
        Level::INFO => "  INFO ",
        Level::DEBUG => " DEBUG ",
        Level::TRACE => " TRACE ",
    }
}

fn level_color(level: Level) -> u8 {
    match level {
        Level::ERROR => 31,
        Level::WARN => 33,
        Level::INFO => 32,
        Level::DEBUG => 34,
        Level::TRACE => 35,
    }
}

thread_local! {
    /// The formatted date and time of the last second a line was written in.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// `2026-11-26T22:02:18.495417Z`; the part up to the second is formatted once per second.
fn write_timestamp(w: &mut impl fmt::Write) -> fmt::Result {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = now.as_secs();
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            let (days, rest) = (secs / 86_400, secs % 86_400);
            let (year, month, day) = civil_from_days(days as i64);
            cached.1.clear();
            let _ = write!(
                cached.1,
                "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
                rest / 3600,
                rest % 3600 / 60,
                rest % 60
            );
            cached.0 = secs;
        }
        w.write_str(&cached.1)
    })?;
    // `.{:06}Z` without the formatting machinery: a decision line per review comes here.
    let micros = now.subsec_micros() + 1_000_000;
    let mut digits = itoa::Buffer::new();
    w.write_char('.')?;
    w.write_str(&digits.format(micros)[1..])?;
    w.write_char('Z')
}

/// (year, month, day) of a day count since 1970-01-01 (the proleptic Gregorian calendar).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Plain fields: the message as is, then ` name=value` (strings quoted, as `Debug` would).
struct PlainFields<'a, 'w> {
    w: &'a mut Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl PlainFields<'_, '_> {
    /// ` name=` then `value` as the concatenation of `parts` (cheaper than `field`).
    fn pieces(&mut self, field: &Field, parts: &[&str]) {
        if self.result.is_err() {
            return;
        }
        let space = if std::mem::replace(&mut self.first, false) { "" } else { " " };
        self.result = [space, field.name(), "="].iter().chain(parts).try_for_each(|p| self.w.write_str(p));
    }

    fn field(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        if self.result.is_err() {
            return;
        }
        let space = if std::mem::replace(&mut self.first, false) { "" } else { " " };
        self.result = if field.name() == "message" {
            write!(self.w, "{space}{value}")
        } else {
            write!(self.w, "{space}{}={value}", field.name())
        };
    }
}

impl Visit for PlainFields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.field(field, format_args!("{value}"));
        } else if needs_escaping(value) {
            self.field(field, format_args!("{value:?}"));
        } else {
            self.pieces(field, &["\"", value, "\""]);
        }
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.pieces(field, &[itoa::Buffer::new().format(value)]);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, format_args!("{value}"));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, format_args!("{value}"));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.field(field, format_args!("{value:?}"));
    }
}

/// Whether `Debug` would write `s` other than between two quotes.
fn needs_escaping(s: &str) -> bool {
    s.chars().any(|c| c == '"' || c == '\\' || c.is_control())
}

/// JSON fields: `,"name":value` each, the message under `message`.
struct JsonFields<'a, 'w> {
    w: &'a mut Writer<'w>,
    result: fmt::Result,
}

impl JsonFields<'_, '_> {
    fn key(&mut self, field: &Field) {
        if self.result.is_ok() {
            self.result = self.w.write_char(',').and_then(|()| json_str(self.w, field.name()));
            self.result = self.result.and_then(|()| self.w.write_char(':'));
        }
    }
}

impl Visit for JsonFields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        self.result = self.result.and_then(|()| json_str(self.w, value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        self.result = self.result.and_then(|()| write!(self.w, "{value}"));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        self.result = self.result.and_then(|()| write!(self.w, "{value}"));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.result = self.result.and_then(|()| write!(self.w, "{value}"));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field);
        if self.result.is_ok() {
            let text = format!("{value:?}");
            self.result = json_str(self.w, &text);
        }
    }
}

/// Writes `s` as a JSON string.
fn json_str(w: &mut impl fmt::Write, s: &str) -> fmt::Result {
    let mut out = Vec::with_capacity(s.len() + 2);
    crate::json_writer::string(&mut out, s);
    // The writer only escapes ASCII, so the output is as valid UTF-8 as `s`.
    w.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
}

/// A field of a line written by [`write_line`], as `tracing` would record it.
#[derive(Debug, Clone, Copy)]
pub enum FieldValue<'a> {
    /// A `%value` field: as is in plain lines.
    Display(&'a str),
    /// A string field: quoted in plain lines.
    Str(&'a str),
    /// A number.
    U64(u64),
}

/// Writes the line that [`LineFormat`] writes for an event outside any span with `message` and
/// `fields`, without `tracing`'s dispatch and field visitors: the decision line of every review
/// is on the hot path. A test keeps the two layouts equal.
pub fn write_line(
    out: &mut String,
    json: bool,
    level: Level,
    target: &str,
    message: &str,
    fields: &[(&str, FieldValue<'_>)],
) -> fmt::Result {
    if json {
        out.push_str("{\"timestamp\":\"");
        write_timestamp(out)?;
        out.push_str("\",\"level\":\"");
        out.push_str(level.as_str());
        out.push_str("\",\"message\":");
        json_str(out, message)?;
        for (name, value) in fields {
            out.push(',');
            json_str(out, name)?;
            out.push(':');
            match value {
                FieldValue::Display(v) | FieldValue::Str(v) => json_str(out, v)?,
                FieldValue::U64(n) => out.push_str(itoa::Buffer::new().format(*n)),
            }
        }
        out.push_str(",\"target\":");
        json_str(out, target)?;
        out.push_str("}\n");
        return Ok(());
    }
    write_timestamp(out)?;
    out.push_str(padded_level(level));
    out.push_str(target);
    out.push_str(": ");
    out.push_str(message);
    for (name, value) in fields {
        out.push(' ');
        out.push_str(name);
        out.push('=');
        match value {
            FieldValue::Display(v) => out.push_str(v),
            FieldValue::Str(v) if needs_escaping(v) => write!(out, "{v:?}")?,
            FieldValue::Str(v) => {
                out.push('"');
                out.push_str(v);
                out.push('"');
            }
            FieldValue::U64(n) => out.push_str(itoa::Buffer::new().format(*n)),
        }
    }
    out.push('\n');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn capture(json: bool, emit: impl FnOnce()) -> String {
        let out = Captured::default();
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .event_format(LineFormat { json })
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = out.0.lock().expect("lock").clone();
        String::from_utf8(bytes).expect("UTF-8")
    }

    fn decision() {
        let uid = "6f5d";
        tracing::info!(uid = %uid, outcome = "patched", swaps = 1u64, ok = true, odd = "a\"b", fields = "x:y->z", "review");
    }

    #[test]
    fn plain_lines_have_timestamp_level_target_message_and_fields() {
        let line = capture(false, decision);
        let (stamp, rest) = line.split_once(' ').expect("timestamp");
        assert_eq!(stamp.len(), "2026-11-26T22:02:18.495417Z".len(), "{line}");
        assert!(stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T', "{line}");
        assert_eq!(
            rest,
            " INFO imagemap::server::log_format::tests: review uid=6f5d outcome=\"patched\" swaps=1 ok=true \
             odd=\"a\\\"b\" fields=\"x:y->z\"\n"
        );
    }

    #[test]
    fn json_lines_are_flat_objects_with_every_field() {
        let line = capture(true, decision);
        let v: serde_json::Value = serde_json::from_str(&line).expect("one JSON object");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["message"], "review");
        assert_eq!(v["uid"], "6f5d");
        assert_eq!(v["swaps"], 1);
        assert_eq!(v["ok"], true);
        assert_eq!(v["odd"], "a\"b");
        assert_eq!(v["target"], "imagemap::server::log_format::tests");
        assert!(v["timestamp"].as_str().is_some_and(|t| t.len() == 27), "{line}");
        let in_span = capture(true, || {
            let _s = tracing::info_span!("watch", kind = "ImageMap").entered();
            tracing::warn!("retrying");
        });
        let v: serde_json::Value = serde_json::from_str(&in_span).expect("one JSON object");
        assert_eq!(v["spans"], serde_json::json!(["watch"]));
        assert!(capture(false, || {
            let _s = tracing::info_span!("watch", kind = "ImageMap").entered();
            tracing::warn!("retrying");
        })
        .contains("WARN watch{kind=\"ImageMap\"}: imagemap::server::log_format::tests: retrying"));
    }

    /// The same line through `tracing` and through [`write_line`], timestamps cut off.
    #[test]
    fn lines_written_directly_match_the_tracing_layout() {
        let emit = || {
            let uid = "6f5d";
            tracing::info!(uid = %uid, outcome = "patched", swaps = 1u64, odd = "a\"b\n", "review");
        };
        let fields = [
            ("uid", FieldValue::Display("6f5d")),
            ("outcome", FieldValue::Str("patched")),
            ("swaps", FieldValue::U64(1)),
            ("odd", FieldValue::Str("a\"b\n")),
        ];
        let target = "imagemap::server::log_format::tests";
        let plain = capture(false, emit);
        let mut direct = String::new();
        write_line(&mut direct, false, Level::INFO, target, "review", &fields).expect("write");
        assert_eq!(direct[27..], plain[27..]);
        let json = capture(true, emit);
        let mut direct = String::new();
        write_line(&mut direct, true, Level::INFO, target, "review", &fields).expect("write");
        let cut = |line: &str| line.split_once("\"level\"").map(|(_, rest)| rest.to_string());
        assert_eq!(cut(&direct), cut(&json));
        assert!(cut(&direct).is_some());
    }

    #[test]
    fn dates_match_the_calendar() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_783), (2026, 11, 26));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
