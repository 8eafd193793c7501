//! Retry delays: capped exponential backoff with full jitter, and a target's `Retry-After`
//! waited in full.

use std::time::Duration;

use rand::Rng;

/// `delay(n)` is drawn uniformly from `[0, min(max, initial × 2ⁿ)]` ("full jitter": retrying
/// clients spread out instead of hitting a recovering target in waves).
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max }
    }

    /// The upper bound of the `attempt`-th delay (0-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(31));
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The wait before retry number `attempt` (0-based). With a `Retry-After` from the target
    /// the wait is that plus a jitter of at most `initial`, so it is always honoured.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let mut rng = rand::rng();
        match retry_after {
            Some(after) => after + self.initial.mul_f64(rng.random::<f64>()),
            None => self.ceiling(attempt).mul_f64(rng.random::<f64>()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_doubles_up_to_the_cap() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(1), Duration::from_millis(200));
        assert_eq!(b.ceiling(4), Duration::from_millis(1600));
        assert_eq!(b.ceiling(5), Duration::from_secs(2));
        assert_eq!(b.ceiling(1000), Duration::from_secs(2));
    }

    #[test]
    fn delays_are_jittered_below_the_ceiling() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let delays: Vec<Duration> = (0..200).map(|_| b.delay(3, None)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(800)));
        let distinct: std::collections::BTreeSet<_> = delays.iter().collect();
        assert!(distinct.len() > 100, "full jitter spreads the delays");
    }

    #[test]
    fn retry_after_is_waited_in_full() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        for _ in 0..100 {
            let d = b.delay(0, Some(Duration::from_secs(5)));
            assert!(d >= Duration::from_secs(5) && d <= Duration::from_millis(5100), "{d:?}");
        }
    }
}
