//! A cap on how fast the scan reads file content.
//!
//! A long-lived agent must not be felt by the workload it watches. Lowering
//! its CPU and IO priority (see `run::priority`) is not always enough: the
//! idle IO class only works under some IO schedulers, and a scan that reads
//! a whole disk at full speed still evicts the workload's page cache. So
//! `--max-read-rate` caps the bytes hashed per second with one token bucket
//! shared by every scan thread: the cap is for the agent, not per thread.
//!
//! The bucket lets a reader go into debt: a read is counted after it
//! happened and the reader then sleeps until the debt is paid back. So a
//! read of any size works (no read is ever "too big for the bucket"), the
//! first read is never delayed, and over any period the bytes read stay
//! within `rate × period + burst`, plus one buffer per thread in flight.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The longest a throttled reader sleeps before looking at the cancel flag
/// again, so that cancelling a heavily throttled scan stays prompt.
const CANCEL_CHECK: Duration = Duration::from_millis(50);

/// A token bucket in bytes, shared by all scan threads.
#[derive(Debug)]
pub struct ReadLimit {
    /// Bytes per second, at least 1.
    rate: f64,
    /// The most that can be read at once after an idle spell: a tenth of a
    /// second's worth, so bursts stay short.
    burst: f64,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    /// Negative when readers are in debt.
    tokens: f64,
    last: Instant,
}

/// The read was not paced to the end because the scan was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cancelled;

impl ReadLimit {
    /// A limit of `bytes_per_sec` (0 is taken as 1).
    pub fn new(bytes_per_sec: u64) -> ReadLimit {
        let rate = bytes_per_sec.max(1) as f64;
        let burst = rate / 10.0;
        ReadLimit {
            rate,
            burst,
            bucket: Mutex::new(Bucket {
                tokens: burst,
                last: Instant::now(),
            }),
        }
    }

    /// The limit in bytes per second.
    pub fn bytes_per_sec(&self) -> u64 {
        self.rate as u64
    }

    /// Accounts for `bytes` just read and sleeps as long as the bucket is
    /// in debt. Returns early with [`Cancelled`] once `cancel` is set.
    pub fn consume(&self, bytes: u64, cancel: Option<&AtomicBool>) -> Result<(), Cancelled> {
        let wait = {
            // A poisoned lock only means another reader panicked mid-update
            // of two floats; the values are still usable.
            let mut bucket = self
                .bucket
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let now = Instant::now();
            let refill = now.duration_since(bucket.last).as_secs_f64() * self.rate;
            bucket.tokens = (bucket.tokens + refill).min(self.burst);
            bucket.last = now;
            bucket.tokens -= bytes as f64;
            if bucket.tokens < 0.0 {
                Duration::from_secs_f64(-bucket.tokens / self.rate)
            } else {
                Duration::ZERO
            }
        };
        sleep_unless_cancelled(wait, cancel)
    }
}

/// Sleeps for `wait`, in slices, stopping early when `cancel` is set.
fn sleep_unless_cancelled(wait: Duration, cancel: Option<&AtomicBool>) -> Result<(), Cancelled> {
    let deadline = Instant::now() + wait;
    loop {
        if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(Cancelled);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(());
        }
        std::thread::sleep((deadline - now).min(CANCEL_CHECK));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Several threads reading as fast as the bucket lets them stay within
    /// the rate. The bounds are generous: sleeping can only make readers
    /// slower, so the upper bound is the real check and is not flaky; the
    /// lower bound only catches a bucket that throttles far too hard.
    #[test]
    fn shared_bucket_caps_total_throughput() {
        const RATE: u64 = 4 * 1024 * 1024;
        const CHUNK: u64 = 64 * 1024;
        let limit = Arc::new(ReadLimit::new(RATE));
        let started = Instant::now();
        let run_for = Duration::from_millis(1500);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let limit = Arc::clone(&limit);
                std::thread::spawn(move || {
                    let mut read = 0u64;
                    while started.elapsed() < run_for {
                        read += CHUNK;
                        limit.consume(CHUNK, None).unwrap();
                    }
                    read
                })
            })
            .collect();
        let total: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        let elapsed = started.elapsed().as_secs_f64();
        let ceiling = RATE as f64 * elapsed + RATE as f64 / 10.0 + 4.0 * CHUNK as f64;
        assert!(
            (total as f64) <= ceiling,
            "read {total} bytes in {elapsed:.2}s, over the cap of {ceiling:.0}"
        );
        assert!(
            (total as f64) >= RATE as f64 * 0.5,
            "read only {total} bytes in {elapsed:.2}s at a cap of {RATE}/s"
        );
    }

    #[test]
    fn a_read_larger_than_the_burst_waits_for_its_debt() {
        let limit = ReadLimit::new(1_000_000);
        let started = Instant::now();
        // 0.1 s of burst is free; the other 0.3 s is paid by sleeping.
        limit.consume(400_000, None).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(250));
    }

    #[test]
    fn cancelling_stops_the_wait() {
        let limit = ReadLimit::new(1);
        let cancel = AtomicBool::new(true);
        let started = Instant::now();
        assert_eq!(limit.consume(1_000_000, Some(&cancel)), Err(Cancelled));
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
