//! The one generator of unique names for test objects (namespaces, registrations, releases).

use std::sync::atomic::{AtomicUsize, Ordering};

/// `PREFIX-N-PID`, unique in this process and across processes, as a DNS label of at most `max`
/// characters: `prefix` lowercased, other characters than letters and digits made `-`, and cut
/// so that the whole fits.
pub fn unique_name(prefix: &str, max: usize) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let suffix = format!("-{n}-{}", std::process::id());
    let mut base: String = prefix
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .take(max.saturating_sub(suffix.len()))
        .collect();
    base = base.trim_matches('-').to_string();
    if base.is_empty() {
        base.push_str("test");
    }
    format!("{base}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_dns_labels_within_the_limit() {
        let a = unique_name("My_Test.Prefix", 63);
        let b = unique_name("My_Test.Prefix", 63);
        assert_ne!(a, b);
        assert!(a.starts_with("my-test-prefix-"), "{a}");
        let long = unique_name(&"x".repeat(100), 53);
        assert!(long.len() <= 53, "{long}");
        assert!(unique_name("--", 63).starts_with("test-"));
    }
}
