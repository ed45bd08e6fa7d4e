//! Durations on command lines, as `500ms`, `5s`, `2m` or plain seconds (the webhook's flags and
//! the plugin's `--timeout`).

use std::time::Duration;

/// Parses `500ms`, `5s`, `2m` or a plain number of seconds (zero allowed). Negative, malformed
/// and out-of-range values are errors (clap names the flag).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?}: use e.g. 500ms, 5s or 2m");
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("duration {s:?} is out of range"))
}

/// Like [`parse_duration`], for intervals and timeouts where zero makes no sense.
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err(format!("duration {s:?} must be greater than zero")),
        d => Ok(d),
    }
}
