//! When to try a failed delivery again, and when to stop.
//!
//! Exponential backoff with full jitter: after the `n`th failed attempt the
//! next one waits a uniformly random time between zero and
//! `min(1 s × 2^(n-1), 10 min)`. The ceiling reaches the 10 minute cap at
//! the 11th attempt, after which the mean wait is 5 minutes. Jitter spreads
//! the retries of many alerts that failed together (a receiver that was
//! down) instead of sending them in bursts.
//!
//! A delivery is given up (dead-lettered, kept for an operator, never sent
//! again by itself) after a permanent failure, or after [`MAX_ATTEMPTS`]
//! retryable failures: about 24 hours of trying. The expected total wait
//! over 300 attempts is ≈ 8.5 min for the first ten plus 290 × 5 min ≈
//! 24.2 h, with a standard deviation of under an hour.

use std::time::Duration;

/// The first retry's ceiling.
pub const INITIAL: Duration = Duration::from_secs(1);

/// The largest ceiling.
pub const CAP: Duration = Duration::from_secs(600);

/// Failed attempts after which a delivery is dead-lettered (≈ 24 h).
pub const MAX_ATTEMPTS: u32 = 300;

/// The wait before the next attempt, `attempts` being the number of
/// attempts that have failed so far (0 is treated as 1).
pub fn retry_delay(attempts: u32) -> Duration {
    retry_delay_with(&mut fastrand::Rng::new(), attempts)
}

/// [`retry_delay`] with a given random source (seeded in tests).
pub fn retry_delay_with(rng: &mut fastrand::Rng, attempts: u32) -> Duration {
    let ceiling = ceiling(attempts).as_millis() as u64;
    Duration::from_millis(rng.u64(0..=ceiling))
}

/// The un-jittered upper bound of [`retry_delay`].
pub fn ceiling(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(31);
    INITIAL.saturating_mul(1 << doublings).min(CAP)
}

/// Whether a delivery that has failed `attempts` times (retryably) should
/// be given up.
pub fn exhausted(attempts: u32) -> bool {
    attempts >= MAX_ATTEMPTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_from_one_second_to_ten_minutes() {
        let secs: Vec<u64> = (0..=12).map(|n| ceiling(n).as_secs()).collect();
        assert_eq!(secs, [1, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600]);
        assert_eq!(ceiling(u32::MAX), CAP);
    }

    #[test]
    fn delays_are_jittered_within_the_ceiling() {
        let mut rng = fastrand::Rng::with_seed(7);
        for attempts in [1, 2, 5, 11, 200, u32::MAX] {
            let samples: Vec<Duration> = (0..200)
                .map(|_| retry_delay_with(&mut rng, attempts))
                .collect();
            assert!(samples.iter().all(|d| *d <= ceiling(attempts)));
            let distinct: std::collections::HashSet<_> = samples.iter().collect();
            assert!(distinct.len() > 50, "jittered: {attempts}");
        }
        assert!(retry_delay(3) <= Duration::from_secs(4));
    }

    #[test]
    fn giving_up_comes_after_about_a_day() {
        let mut rng = fastrand::Rng::with_seed(42);
        for _ in 0..20 {
            let total: Duration = (1..MAX_ATTEMPTS)
                .map(|n| retry_delay_with(&mut rng, n))
                .sum();
            let hours = total.as_secs_f64() / 3600.0;
            assert!((20.0..28.0).contains(&hours), "{hours} h");
        }
        assert!(!exhausted(MAX_ATTEMPTS - 1));
        assert!(exhausted(MAX_ATTEMPTS));
    }
}
