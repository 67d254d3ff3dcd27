//! Gives memory freed after a burst of work back to the kernel.
//!
//! glibc keeps freed heap pages in its arenas for reuse. After a burst
//! (110 pods starting, an adoption decoding every container's spec, a large
//! HTTP answer) the agent's resident memory would stay at the burst's
//! high-water mark for good: measured with 110 pods, 2.5 MiB of the agent's
//! resident memory was free heap that `malloc_trim` returned. A trim walks
//! the arenas once and takes well under a millisecond at this heap size, so
//! a periodic one costs nothing measurable (the node benchmark reports the
//! agent's CPU).

use std::time::Duration;

/// How often freed heap is returned.
const TRIM_PERIOD: Duration = Duration::from_secs(30);

/// Runs forever, trimming the heap every [`TRIM_PERIOD`].
pub async fn trim_periodically() {
    let mut every = tokio::time::interval(TRIM_PERIOD);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        trim();
    }
}

#[cfg(target_env = "gnu")]
fn trim() {
    // SAFETY: malloc_trim only releases free memory of the allocator's own
    // arenas; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other C libraries return freed memory by themselves (musl) or have no
/// such call.
#[cfg(not(target_env = "gnu"))]
fn trim() {}
