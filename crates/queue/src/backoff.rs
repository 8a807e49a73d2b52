//! Retry delays: exponential, capped, with full jitter so that retries of
//! jobs that failed together do not come back together.

use std::time::Duration;

#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    /// The smallest delay, and the base of the exponent.
    pub base: Duration,
    /// The largest delay.
    pub max: Duration,
}

impl Backoff {
    /// The delay before the retry that follows failed attempt `attempt`
    /// (1-based): uniformly random in `[base, min(max, base * 2^(attempt-1))]`.
    /// The floor of `base` keeps a retry from ever being instant.
    pub fn delay(&self, attempt: i32) -> Duration {
        let exp = u32::try_from(attempt.saturating_sub(1))
            .unwrap_or(0)
            .min(30);
        let cap = self
            .base
            .saturating_mul(1 << exp)
            .min(self.max)
            .max(self.base);
        let spread = cap - self.base;
        let jitter = spread.mul_f64(fastrand::f64());
        self.base + jitter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_are_capped_and_jittered() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(10),
        };
        for attempt in 1..40 {
            let cap = Duration::from_millis(100)
                .saturating_mul(1 << (attempt - 1).min(30))
                .min(Duration::from_secs(10));
            for _ in 0..50 {
                let d = b.delay(attempt);
                assert!(d >= b.base, "attempt {attempt}: {d:?} below base");
                assert!(d <= cap, "attempt {attempt}: {d:?} above cap {cap:?}");
            }
        }
        let samples: std::collections::HashSet<_> = (0..20).map(|_| b.delay(8)).collect();
        assert!(samples.len() > 1, "no jitter");
    }
}
