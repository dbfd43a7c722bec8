//! A budget for log lines that clients can cause at a high rate: each kind of event gets at
//! most a few INFO lines a second, and the next line it gets says how many were left out
//! meanwhile. A client that abandons semaphores in a loop must not flood the journal (journald
//! rate-limits a service and would drop the lines that matter).
//!
//! Not here: per-request events (Grant, Revoke, creation, release), which log at DEBUG.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most `per_window` lines per [`WINDOW`] for one kind of event.
#[derive(Debug)]
pub(crate) struct LogBudget {
    per_window: u32,
    state: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    start: Option<Instant>,
    logged: u32,
    left_out: u64,
}

/// The budget's window.
const WINDOW: Duration = Duration::from_secs(1);

impl LogBudget {
    /// A budget of `per_window` lines a second.
    pub(crate) const fn new(per_window: u32) -> Self {
        Self {
            per_window,
            state: Mutex::new(Window {
                start: None,
                logged: 0,
                left_out: 0,
            }),
        }
    }

    /// Whether one more line may be logged now: `Some(n)`, `n` being how many lines were left
    /// out since the last one logged; `None` when the budget is spent (the line is counted).
    pub(crate) fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut w = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if w.start
            .is_none_or(|s| now.saturating_duration_since(s) >= WINDOW)
        {
            w.start = Some(now);
            w.logged = 0;
        }
        if w.logged >= self.per_window {
            w.left_out += 1;
            return None;
        }
        w.logged += 1;
        Some(std::mem::take(&mut w.left_out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_beyond_the_budget_are_counted_and_reported_with_the_next() {
        let b = LogBudget::new(3);
        let t = Instant::now();
        assert_eq!(b.admit_at(t), Some(0));
        assert_eq!(b.admit_at(t), Some(0));
        assert_eq!(b.admit_at(t), Some(0));
        for _ in 0..100 {
            assert_eq!(b.admit_at(t + Duration::from_millis(500)), None);
        }
        let later = t + WINDOW;
        assert_eq!(b.admit_at(later), Some(100));
        assert_eq!(b.admit_at(later), Some(0));
    }
}
