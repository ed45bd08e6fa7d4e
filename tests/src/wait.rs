//! Polling with a deadline.

use std::time::{Duration, Instant};

/// Calls `f` every `interval` until it returns `Some`, or until `timeout` has passed (then
/// `None`). `f` is always called at least once.
pub fn poll<T>(timeout: Duration, interval: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = f() {
            return Some(value);
        }
        if Instant::now() + interval > deadline {
            return None;
        }
        std::thread::sleep(interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_first_some_or_none_at_the_deadline() {
        let mut n = 0;
        assert_eq!(
            poll(Duration::from_secs(5), Duration::from_millis(1), || {
                n += 1;
                (n == 3).then_some(n)
            }),
            Some(3)
        );
        assert_eq!(poll(Duration::from_millis(20), Duration::from_millis(5), || None::<()>), None);
    }
}
