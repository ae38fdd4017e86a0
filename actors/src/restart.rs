//! Restart policies: OTP-style restart intensity and exponential back-off.
//!
//! Pure bookkeeping over instants supplied by the caller, so it is tested
//! without timers.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// "At most `max` restarts in `window`": past that the supervisor stops
/// restarting and escalates.
#[derive(Clone, Debug)]
pub struct RestartIntensity {
    max: u32,
    window: Duration,
    recent: VecDeque<Instant>,
}

impl RestartIntensity {
    /// A limit of `max` restarts per `window`.
    pub fn new(max: u32, window: Duration) -> RestartIntensity {
        RestartIntensity {
            max,
            window,
            recent: VecDeque::new(),
        }
    }

    /// Records a failure at `now`; returns `true` when a restart is still
    /// allowed, `false` when the intensity is exceeded.
    pub fn allow_restart(&mut self, now: Instant) -> bool {
        while let Some(first) = self.recent.front() {
            if now.saturating_duration_since(*first) >= self.window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        if self.recent.len() >= self.max as usize {
            return false;
        }
        self.recent.push_back(now);
        true
    }

    /// Restarts counted in the current window.
    pub fn recent(&self) -> usize {
        self.recent.len()
    }
}

/// Exponential back-off: `base`, `2·base`, `4·base`, … capped at `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// First delay.
    pub base: Duration,
    /// Ceiling.
    pub max: Duration,
}

impl Backoff {
    /// The delay before attempt number `attempt` (0-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intensity_allows_max_restarts_per_window() {
        let t0 = Instant::now();
        let mut i = RestartIntensity::new(3, Duration::from_secs(10));
        assert!(i.allow_restart(t0));
        assert!(i.allow_restart(t0 + Duration::from_secs(1)));
        assert!(i.allow_restart(t0 + Duration::from_secs(2)));
        assert!(!i.allow_restart(t0 + Duration::from_secs(3)));
        // the oldest restart leaves the window, making room for one more
        assert!(i.allow_restart(t0 + Duration::from_secs(10)));
        assert!(!i.allow_restart(t0 + Duration::from_secs(10)));
        assert_eq!(i.recent(), 3);
        // a quiet window forgets everything
        assert!(i.allow_restart(t0 + Duration::from_secs(30)));
        assert_eq!(i.recent(), 1);
    }

    #[test]
    fn zero_intensity_never_restarts() {
        let mut i = RestartIntensity::new(0, Duration::from_secs(1));
        assert!(!i.allow_restart(Instant::now()));
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let b = Backoff {
            base: Duration::from_secs(10),
            max: Duration::from_secs(300),
        };
        let secs: Vec<u64> = (0..7).map(|a| b.delay(a).as_secs()).collect();
        assert_eq!(secs, vec![10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(300));
        let zero = Backoff {
            base: Duration::ZERO,
            max: Duration::from_secs(1),
        };
        assert_eq!(zero.delay(5), Duration::ZERO);
    }
}
