//! A bound on how many lines a repeated kind of event may log: the first
//! `limit` per window one by one, the rest counted and summed up in one line.
//! A store that fills with 100 000 junk records, or 10 000 lease changes a
//! minute, then costs a few lines a minute instead of a line each.
//!
//! Sans-IO: the caller passes `now` and logs what the budget allows.

use std::time::{Duration, Instant};

/// See the module documentation.
#[derive(Debug)]
pub struct LogBudget {
    limit: usize,
    window: Duration,
    window_start: Option<Instant>,
    logged: usize,
    unlogged: usize,
    summarised: bool,
}

impl LogBudget {
    /// At most `limit` lines one by one per `window`.
    pub fn new(limit: usize, window: Duration) -> Self {
        Self {
            limit,
            window,
            window_start: None,
            logged: 0,
            unlogged: 0,
            summarised: false,
        }
    }

    /// Whether one more line may be logged now (if not, it is counted).
    pub fn admit(&mut self, now: Instant) -> bool {
        match self.window_start {
            Some(start) if now.duration_since(start) < self.window => {}
            _ => {
                self.window_start = Some(now);
                self.logged = 0;
                self.summarised = false;
            }
        }
        if self.logged < self.limit {
            self.logged += 1;
            true
        } else {
            self.unlogged += 1;
            false
        }
    }

    /// The number of events not logged, at most once per window: when the
    /// budget first runs out, and then once a window while more come.
    pub fn summary(&mut self, now: Instant) -> Option<usize> {
        if self.unlogged == 0 {
            return None;
        }
        let window_over = self
            .window_start
            .is_none_or(|start| now.duration_since(start) >= self.window);
        if self.summarised && !window_over {
            return None;
        }
        self.summarised = true;
        if window_over {
            self.window_start = Some(now);
            self.logged = 0;
        }
        Some(std::mem::take(&mut self.unlogged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_lines_per_window_however_many_events() {
        let window = Duration::from_secs(60);
        let mut budget = LogBudget::new(10, window);
        let t0 = Instant::now();
        let mut lines = 0;
        for scan in 0..1000u64 {
            let now = t0 + Duration::from_millis(scan * 30);
            lines += (0..100).filter(|_| budget.admit(now)).count();
            lines += usize::from(budget.summary(now).is_some());
        }
        // 30 s of batches of 100 events each: one window, 10 lines and the
        // summary when the budget ran out.
        assert_eq!(lines, 10 + 1);
        let later = t0 + window + Duration::from_secs(31);
        assert_eq!(budget.summary(later), Some(999 * 100));
        assert_eq!(budget.summary(later), None);
        // A new window logs one by one again.
        assert!(budget.admit(later));
    }

    #[test]
    fn under_the_limit_everything_is_logged_and_nothing_summed_up() {
        let mut budget = LogBudget::new(3, Duration::from_secs(1));
        let t0 = Instant::now();
        for i in 0..30u64 {
            let now = t0 + Duration::from_millis(i * 400);
            assert!(budget.admit(now), "event {i}");
            assert_eq!(budget.summary(now), None);
        }
    }
}
