//! A bound on how many lines of one kind the proxy logs per second, so that
//! a flood of refused logins (an attacker's, or a pool configured past its
//! tier's cap) cannot set the log's volume. What is not logged is counted,
//! and the next line that is logged says how many went unlogged, or, when
//! no line follows within a second, a line of its own does; the metrics
//! count every one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Lines of one kind written per second, and those held back.
#[derive(Debug)]
pub struct LogBudget {
    started: Instant,
    /// The current second (since `started`) in the high 32 bits, the lines
    /// written in it in the low 32: one word, so one compare-and-swap.
    window: AtomicU64,
    /// Lines held back since the last one written.
    unlogged: AtomicU64,
}

impl Default for LogBudget {
    fn default() -> Self {
        LogBudget {
            started: Instant::now(),
            window: AtomicU64::new(0),
            unlogged: AtomicU64::new(0),
        }
    }
}

impl LogBudget {
    /// Whether to write a line now, with at most `per_second` a second
    /// (0 = every line): `Some(n)` to write it, `n` being how many lines
    /// were held back since the last one written; `None` to hold it back.
    pub fn admit(&self, per_second: u32) -> Option<u64> {
        if per_second == 0 {
            return Some(self.unlogged.swap(0, Ordering::Relaxed));
        }
        let now = self.started.elapsed().as_secs() & 0xffff_ffff;
        let mut current = self.window.load(Ordering::Relaxed);
        loop {
            let (second, used) = (current >> 32, current & 0xffff_ffff);
            let next = if second != now {
                (now << 32) | 1
            } else if used < u64::from(per_second) {
                current + 1
            } else {
                self.unlogged.fetch_add(1, Ordering::Relaxed);
                return None;
            };
            match self.window.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(self.unlogged.swap(0, Ordering::Relaxed)),
                Err(seen) => current = seen,
            }
        }
    }

    /// The lines held back in seconds that are over, if no line written
    /// since has reported them; they count as reported.
    pub fn take_overdue(&self) -> u64 {
        let now = self.started.elapsed().as_secs() & 0xffff_ffff;
        if self.window.load(Ordering::Relaxed) >> 32 == now {
            // Still the flood's second: the next line may yet say it.
            return 0;
        }
        self.unlogged.swap(0, Ordering::Relaxed)
    }
}

/// Once a second, logs the refusals held back that no later refusal's line
/// reported: a flood that stops still has its count in the log.
/// `take_overdue` is the budget's [`LogBudget::take_overdue`], reached
/// however its owner holds it.
pub async fn report_held_back(take_overdue: impl Fn() -> u64) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let unlogged = take_overdue();
        if unlogged > 0 {
            tracing::info!(
                unlogged,
                "refusals held back from the log (log_refusals_per_second)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_cut_at_the_budget_and_the_rest_is_counted() {
        let budget = LogBudget::default();
        let written: Vec<Option<u64>> = (0..25).map(|_| budget.admit(10)).collect();
        // A second boundary may fall inside the burst: then up to twice
        // the budget is written, never more.
        let logged = written.iter().filter(|w| w.is_some()).count();
        assert!((10..=20).contains(&logged), "{written:?}");
        let held = 25 - logged as u64;
        assert_eq!(budget.unlogged.load(Ordering::Relaxed), held);
        // No budget: every line is written, and the first says how many
        // were held back before it.
        assert_eq!(budget.admit(0), Some(held));
        assert_eq!(budget.admit(0), Some(0));
    }

    #[test]
    fn held_back_lines_are_overdue_only_once_their_second_is_over() {
        let budget = LogBudget::default();
        // The budget spent in the current second, then three held back.
        let now = budget.started.elapsed().as_secs();
        budget.window.store((now << 32) | 1, Ordering::Relaxed);
        budget.unlogged.store(3, Ordering::Relaxed);
        if budget.started.elapsed().as_secs() == now {
            assert_eq!(budget.take_overdue(), 0, "the second is not over");
        }
        // The same window, a second earlier: over.
        budget
            .window
            .store(now.wrapping_sub(1) << 32 | 1, Ordering::Relaxed);
        assert_eq!(budget.take_overdue(), 3);
        assert_eq!(budget.take_overdue(), 0, "reported once");
        assert_eq!(budget.admit(10), Some(0), "and not again by the next line");
    }
}
