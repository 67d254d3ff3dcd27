//! Supervision of the agent's long-lived tasks.
//!
//! Every task the agent runs for its whole life (listeners, the manifest
//! source, the pod workers, ...) is meant to run forever: a panic or a
//! return is a bug or a broken resource. Left alone, the agent would keep
//! running half-dead while `/healthz` said ok. Each task is therefore
//! spawned here under a name and a [`Policy`]: a failure is logged with the
//! task's name and the panic message, shows in [`Health`] (which `/healthz`
//! and `/readyz` report), and either restarts the task with back-off or
//! ends the agent with an error, so that systemd starts it again and the
//! new process adopts the running pods.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{error, info};

/// First wait before a failed task is started again.
const FIRST_RESTART_DELAY: Duration = Duration::from_secs(1);

/// Longest wait between restarts of a task that keeps failing.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(60);

/// A task that ran this long before failing starts again after
/// [`FIRST_RESTART_DELAY`]: its failure is a new one, not the same one
/// repeating.
const STABLE_RUN: Duration = Duration::from_secs(600);

/// Names the one task that fails as soon as it starts, every time: a hook
/// for tests of supervision, read only by debug builds.
#[cfg(debug_assertions)]
const FAIL_TASK_ENV: &str = "PODKEEPER_TEST_FAIL_TASK";

/// What to do when a task panics or returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Start it again, after a back-off that grows while it keeps failing:
    /// for tasks that rebuild all they need when started.
    Restart,
    /// End the agent with an error: for tasks holding what cannot be
    /// rebuilt in place (the one end of a channel, the pod tasks).
    Fatal,
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskFailure {
    #[error("task {task} panicked: {message}")]
    Panicked { task: &'static str, message: String },
    #[error("task {task} ended: {how}")]
    Ended { task: &'static str, how: String },
}

impl TaskFailure {
    fn task(&self) -> &'static str {
        match self {
            TaskFailure::Panicked { task, .. } | TaskFailure::Ended { task, .. } => task,
        }
    }

    /// The failure without its message, for health checks anyone may read:
    /// a panic message can hold anything.
    fn kind(&self) -> &'static str {
        match self {
            TaskFailure::Panicked { .. } => "panicked",
            TaskFailure::Ended { .. } => "ended",
        }
    }
}

/// What a task's return says about how it ended.
pub trait Ending {
    fn describe(self) -> String;
}

impl Ending for () {
    fn describe(self) -> String {
        "returned".into()
    }
}

impl<E: Display> Ending for Result<(), E> {
    fn describe(self) -> String {
        match self {
            Ok(()) => "returned".into(),
            Err(e) => format!("failed: {e}"),
        }
    }
}

/// A task that is not running, as the health checks say it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadTask {
    pub name: &'static str,
    /// `panicked` or `ended`; never the panic message.
    pub how: &'static str,
}

impl Display for DeadTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "task {} {}", self.name, self.how)
    }
}

/// The supervised tasks that are down right now (waiting to restart, or
/// failed for good), shared with the API's health checks.
#[derive(Clone, Default)]
pub struct Health {
    dead: Arc<Mutex<BTreeMap<&'static str, &'static str>>>,
}

impl Health {
    /// The tasks down now, by name.
    pub fn dead(&self) -> Vec<DeadTask> {
        let dead = self.dead.lock().unwrap_or_else(|e| e.into_inner());
        dead.iter()
            .map(|(&name, &how)| DeadTask { name, how })
            .collect()
    }

    fn set_dead(&self, failure: &TaskFailure) {
        let mut dead = self.dead.lock().unwrap_or_else(|e| e.into_inner());
        dead.insert(failure.task(), failure.kind());
    }

    fn set_running(&self, task: &'static str) {
        let mut dead = self.dead.lock().unwrap_or_else(|e| e.into_inner());
        dead.remove(task);
    }
}

/// Spawns supervised tasks and hears of the fatal failures.
pub struct Supervisor {
    health: Health,
    fatal_tx: mpsc::UnboundedSender<TaskFailure>,
    fatal_rx: mpsc::UnboundedReceiver<TaskFailure>,
    failing: Option<String>,
}

impl Default for Supervisor {
    fn default() -> Self {
        Supervisor::new()
    }
}

impl Supervisor {
    pub fn new() -> Supervisor {
        #[cfg(debug_assertions)]
        let failing = std::env::var(FAIL_TASK_ENV).ok();
        #[cfg(not(debug_assertions))]
        let failing = None;
        Supervisor::with_failing_task(failing)
    }

    fn with_failing_task(failing: Option<String>) -> Supervisor {
        let (fatal_tx, fatal_rx) = mpsc::unbounded_channel();
        Supervisor {
            health: Health::default(),
            fatal_tx,
            fatal_rx,
            failing,
        }
    }

    /// The health of the tasks spawned here, for the API.
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Runs `task` once; its failure ends the agent (see [`Supervisor::fatal`]).
    pub fn spawn_fatal<F>(&self, name: &'static str, task: F)
    where
        F: Future + Send + 'static,
        F::Output: Ending + Send,
    {
        let failing = self.fails(name);
        let health = self.health.clone();
        let fatal = self.fatal_tx.clone();
        tokio::spawn(async move {
            let failure = run_once(name, task, failing).await;
            error!(task = name, "{failure}; the agent exits");
            health.set_dead(&failure);
            let _ = fatal.send(failure);
        });
    }

    /// Runs what `start` returns, and again after a back-off each time it
    /// fails.
    pub fn spawn_restarting<S, F>(&self, name: &'static str, mut start: S)
    where
        S: FnMut() -> F + Send + 'static,
        F: Future + Send + 'static,
        F::Output: Ending + Send,
    {
        let failing = self.fails(name);
        let health = self.health.clone();
        tokio::spawn(async move {
            let mut delay = FIRST_RESTART_DELAY;
            loop {
                let started = Instant::now();
                let failure = run_once(name, start(), failing).await;
                if started.elapsed() >= STABLE_RUN {
                    delay = FIRST_RESTART_DELAY;
                }
                error!(task = name, "{failure}; restarting in {delay:?}");
                health.set_dead(&failure);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_RESTART_DELAY);
                info!(task = name, "restarting");
                health.set_running(name);
            }
        });
    }

    /// The first failure of a task spawned with [`Supervisor::spawn_fatal`];
    /// pending until there is one.
    pub async fn fatal(&mut self) -> TaskFailure {
        match self.fatal_rx.recv().await {
            Some(failure) => failure,
            // The supervisor holds a sender itself: never reached.
            None => std::future::pending().await,
        }
    }

    fn fails(&self, name: &str) -> bool {
        self.failing.as_deref() == Some(name)
    }
}

/// Runs `task` in a task of its own until it panics or returns (`failing`:
/// panics at once instead, for the test hook).
async fn run_once<F>(name: &'static str, task: F, failing: bool) -> TaskFailure
where
    F: Future + Send + 'static,
    F::Output: Ending + Send,
{
    let handle = tokio::spawn(async move {
        if failing {
            panic!("test hook: task {name} fails as it starts");
        }
        task.await
    });
    match handle.await {
        Ok(output) => TaskFailure::Ended {
            task: name,
            how: output.describe(),
        },
        Err(e) if e.is_panic() => TaskFailure::Panicked {
            task: name,
            message: panic_message(e.into_panic()),
        },
        Err(_) => TaskFailure::Ended {
            task: name,
            how: "cancelled".into(),
        },
    }
}

/// The message given to `panic!`, which is a `&str` or a `String`.
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(message) => (*message).to_string(),
            Err(_) => "(no message)".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Spawns a restarting task whose `n`th start (from 0) runs `behave(n)`,
    /// and returns the count of starts.
    fn restarting<F>(
        supervisor: &Supervisor,
        behave: impl Fn(usize) -> F + Send + 'static,
    ) -> Arc<AtomicUsize>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let starts = Arc::new(AtomicUsize::new(0));
        let counted = starts.clone();
        supervisor.spawn_restarting("worker", move || {
            behave(counted.fetch_add(1, Ordering::SeqCst))
        });
        starts
    }

    async fn at(seconds: f64, since: Instant) {
        tokio::time::sleep_until(since + Duration::from_secs_f64(seconds)).await;
    }

    fn dead(how: &'static str) -> Vec<DeadTask> {
        vec![DeadTask {
            name: "worker",
            how,
        }]
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_down_until_restarted_then_healthy() {
        let supervisor = Supervisor::with_failing_task(None);
        let health = supervisor.health();
        let t0 = Instant::now();
        let starts = restarting(&supervisor, |n| async move {
            if n < 2 {
                panic!("boom {n}");
            }
            std::future::pending().await
        });
        at(0.5, t0).await;
        assert_eq!(health.dead(), dead("panicked"));
        assert_eq!(starts.load(Ordering::SeqCst), 1);
        // Restarted after 1 s, panics again, waits 2 s.
        at(1.5, t0).await;
        assert_eq!(health.dead(), dead("panicked"));
        assert_eq!(starts.load(Ordering::SeqCst), 2);
        at(3.5, t0).await;
        assert_eq!(health.dead(), vec![]);
        assert_eq!(starts.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn restarts_back_off_doubling_up_to_a_minute() {
        let supervisor = Supervisor::with_failing_task(None);
        let health = supervisor.health();
        let t0 = Instant::now();
        let starts = restarting(&supervisor, |_| async {});
        // Starts at 0, 1, 3, 7, 15, 31, 63 s, then every 60 s: 123, 183.
        at(100.0, t0).await;
        assert_eq!(starts.load(Ordering::SeqCst), 7);
        assert_eq!(health.dead(), dead("ended"));
        at(200.0, t0).await;
        assert_eq!(starts.load(Ordering::SeqCst), 9);
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_run_resets_the_back_off() {
        let supervisor = Supervisor::with_failing_task(None);
        let t0 = Instant::now();
        // Fails at 0, 1 and 3 s; the start at 7 s runs for 700 s.
        let starts = restarting(&supervisor, |n| async move {
            if n == 3 {
                tokio::time::sleep(Duration::from_secs(700)).await;
            }
        });
        // Without the reset the next start would be 8 s later.
        at(709.0, t0).await;
        assert_eq!(starts.load(Ordering::SeqCst), 5);
    }

    async fn panics() {
        panic!("boom")
    }

    #[tokio::test(start_paused = true)]
    async fn a_fatal_task_panicking_is_reported_with_its_message() {
        let mut supervisor = Supervisor::with_failing_task(None);
        supervisor.spawn_fatal("worker", panics());
        let failure = supervisor.fatal().await;
        assert_eq!(
            failure,
            TaskFailure::Panicked {
                task: "worker",
                message: "boom".into()
            }
        );
        assert_eq!(failure.to_string(), "task worker panicked: boom");
        assert_eq!(supervisor.health().dead(), dead("panicked"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_fatal_task_returning_an_error_is_reported_with_it() {
        let mut supervisor = Supervisor::with_failing_task(None);
        supervisor.spawn_fatal("worker", async {
            Err::<(), _>(std::io::Error::other("socket gone"))
        });
        let failure = supervisor.fatal().await;
        assert_eq!(
            failure.to_string(),
            "task worker ended: failed: socket gone"
        );
        assert_eq!(supervisor.health().dead(), dead("ended"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_test_hook_fails_only_the_named_task() {
        let mut supervisor = Supervisor::with_failing_task(Some("worker".into()));
        supervisor.spawn_fatal("other", std::future::pending::<()>());
        supervisor.spawn_fatal("worker", std::future::pending::<()>());
        let failure = supervisor.fatal().await;
        assert_eq!(
            failure.to_string(),
            "task worker panicked: test hook: task worker fails as it starts"
        );
        assert_eq!(supervisor.health().dead(), dead("panicked"));
    }
}
