//! Filesystem work off the async runtime. A recursive removal of a large
//! emptyDir, an fsync or a big read can take seconds on a slow disk; on
//! one of the runtime's few worker threads (two on a 2-core node) it would
//! stall every probe, timer and request meanwhile. Such work runs on
//! tokio's blocking threads through [`unblock`].

use std::io;

/// Runs `work` on a blocking thread and waits for it without holding a
/// runtime thread. A panic in `work` is resumed here, as if it had run in
/// place; a runtime shutting down is an error.
pub async fn unblock<T, F>(work: F) -> io::Result<T>
where
    F: FnOnce() -> io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(io::Error::other(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn work_runs_off_the_runtime_thread_and_its_result_comes_back() {
        let runtime_thread = std::thread::current().id();
        let worker = unblock(move || Ok(std::thread::current().id()))
            .await
            .unwrap();
        assert_ne!(worker, runtime_thread);
        let error = unblock(|| Err::<(), _>(io::Error::other("no")))
            .await
            .unwrap_err();
        assert_eq!(error.to_string(), "no");
    }
}
