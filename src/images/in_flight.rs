//! Shared work by key: concurrent pulls of one image make one pull.
//!
//! The first caller for a key leads: it does the work, and the others wait
//! for its outcome. A leader's future can be dropped before it finishes
//! (`podkeeper image pull` interrupted drops the gRPC handler's future), so
//! the entry it registered is removed by a guard, not by the code after
//! the work: a caller that was waiting then leads a new run, and later
//! callers find no stale entry.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;

use tokio::sync::watch;

/// Runs in progress by key; waiters watch for the outcome.
pub struct InFlight<T> {
    runs: Mutex<HashMap<String, watch::Receiver<Option<T>>>>,
}

impl<T> Default for InFlight<T> {
    fn default() -> Self {
        InFlight {
            runs: Mutex::new(HashMap::new()),
        }
    }
}

impl<T: Clone> InFlight<T> {
    /// The outcome of `work` for `key`: run here if no run for `key` is in
    /// progress, otherwise that run's, or this one's if that run's caller
    /// goes away before it finishes.
    pub async fn run<F, W>(&self, key: &str, work: W) -> T
    where
        W: FnOnce() -> F,
        F: Future<Output = T>,
    {
        loop {
            match self.lead_or_join(key) {
                Role::Lead(lead) => {
                    let outcome = work().await;
                    lead.finish(outcome.clone());
                    return outcome;
                }
                Role::Join(mut outcome) => {
                    if let Ok(outcome) = outcome.wait_for(Option::is_some).await {
                        if let Some(outcome) = outcome.clone() {
                            return outcome;
                        }
                    }
                    // The leader went away without an outcome: lead or
                    // join anew.
                }
            }
        }
    }

    fn lead_or_join(&self, key: &str) -> Role<'_, T> {
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(outcome) = runs.get(key) {
            return Role::Join(outcome.clone());
        }
        let (tx, rx) = watch::channel(None);
        runs.insert(key.to_string(), rx);
        Role::Lead(Lead {
            runs: &self.runs,
            key: key.to_string(),
            tx,
        })
    }
}

enum Role<'a, T> {
    Lead(Lead<'a, T>),
    Join(watch::Receiver<Option<T>>),
}

/// A leader's registration: removed when the leader finishes or its future
/// is dropped, whichever comes first.
struct Lead<'a, T> {
    runs: &'a Mutex<HashMap<String, watch::Receiver<Option<T>>>>,
    key: String,
    tx: watch::Sender<Option<T>>,
}

impl<T> Lead<'_, T> {
    /// Hands `outcome` to the waiters (then the guard drops).
    fn finish(self, outcome: T) {
        self.tx.send_replace(Some(outcome));
    }
}

impl<T> Drop for Lead<'_, T> {
    fn drop(&mut self) {
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        runs.remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::FutureExt;

    use super::*;

    #[tokio::test]
    async fn concurrent_callers_share_one_run() {
        let in_flight = InFlight::<u32>::default();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let mut leader = Box::pin(in_flight.run("busybox", || async move {
            released.await.ok();
            7
        }));
        assert!((&mut leader).now_or_never().is_none());
        let mut joiner = Box::pin(in_flight.run("busybox", || async { unreachable!("joins") }));
        assert!((&mut joiner).now_or_never().is_none());
        release.send(()).unwrap();
        assert_eq!(futures::join!(leader, joiner), (7, 7));
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_whose_caller_went_away_leaves_nothing_behind() {
        let in_flight = InFlight::<Result<(), String>>::default();
        // The leader stalls (a registry that never answers) and its caller
        // gives up: its future is dropped.
        let stalled = in_flight.run("busybox", std::future::pending);
        let gave_up = tokio::time::timeout(Duration::from_secs(1), stalled).await;
        assert!(gave_up.is_err());
        let next = in_flight.run("busybox", || async { Ok(()) });
        assert_eq!(next.now_or_never(), Some(Ok(())));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_takes_over_when_the_leader_goes_away() {
        let in_flight = InFlight::<u32>::default();
        let mut leader = Box::pin(in_flight.run("busybox", std::future::pending));
        assert!((&mut leader).now_or_never().is_none());
        let mut waiter = Box::pin(in_flight.run("busybox", || async { 8 }));
        assert!((&mut waiter).now_or_never().is_none());
        drop(leader);
        assert_eq!(waiter.await, 8);
    }
}
