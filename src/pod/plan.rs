//! Decide first, act second: from a pod's record and the time, what the
//! worker should do now and when to look again. Pure, so every retry and
//! back-off rule is a table test without containerd.

use std::time::Duration;

use tokio::time::Instant;

use super::state::{ContainerRecord, PodRecord, RunState};

/// First and longest delay between attempts (the kubelet's image and
/// crash-loop back-off: 10 s doubling to 300 s).
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// How long `ErrImagePull` shows before it turns into `ImagePullBackOff`,
/// at most: the kubelet shows the former right after a failed pull and the
/// latter while it waits for the next try.
pub const PULL_ERROR_VISIBLE: Duration = Duration::from_secs(5);

/// Exponential back-off of one thing being retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// No attempt before this; `None` means now.
    pub not_before: Option<Instant>,
    /// Wait after the next failure.
    pub delay: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            not_before: None,
            delay: BACKOFF_INITIAL,
        }
    }
}

impl Retry {
    /// Records a failure at `now`; returns how long until the next attempt.
    pub fn failed(&mut self, now: Instant) -> Duration {
        let wait = self.delay;
        self.not_before = Some(now + wait);
        self.delay = (self.delay * 2).min(BACKOFF_MAX);
        wait
    }

    /// Allows the next attempt at once, keeping the grown delay.
    pub fn retry_now(&mut self) {
        self.not_before = None;
    }

    pub fn due(&self, now: Instant) -> bool {
        self.not_before.is_none_or(|t| t <= now)
    }
}

/// What to do now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub create_sandbox: bool,
    /// Containers to create and start now.
    pub start: Vec<String>,
    /// Containers whose `ErrImagePull` now shows as `ImagePullBackOff`.
    pub show_pull_backoff: Vec<String>,
    /// When something next falls due; `None`: only an event can change things.
    pub wake_at: Option<Instant>,
}

/// Init containers run one at a time, in order, each to success (a sidecar
/// only needs to be running) before the next; app containers start once all
/// are done. A failed init container is retried with back-off, unless
/// `restartPolicy: Never`, which fails the pod.
pub fn plan(record: &PodRecord, now: Instant) -> Plan {
    let mut plan = Plan::default();
    if record.sandbox_pid.is_none() {
        if record.sandbox_retry.due(now) {
            plan.create_sandbox = true;
        } else {
            plan.wake(record.sandbox_retry.not_before);
        }
        return plan;
    }
    if record.init_failed_for_good() {
        return plan;
    }
    for init in &record.init_containers {
        if init.initialized() {
            continue;
        }
        if init.is_running() {
            // A regular init container still working: wait for its exit.
            return plan;
        }
        plan.consider(init, now);
        return plan;
    }
    for container in &record.containers {
        if matches!(container.state, RunState::Waiting { .. }) {
            plan.consider(container, now);
        }
    }
    plan
}

impl Plan {
    fn wake(&mut self, at: Option<Instant>) {
        if let Some(at) = at {
            self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
        }
    }

    /// A container that is not running and should be: start it when its
    /// back-off allows.
    fn consider(&mut self, container: &ContainerRecord, now: Instant) {
        if let RunState::Waiting { reason, .. } = &container.state {
            if reason == "ErrImagePull" {
                match container.pull_backoff_at {
                    Some(at) if at <= now => self.show_pull_backoff.push(container.name.clone()),
                    at => self.wake(at),
                }
            }
        }
        if container.retry.due(now) {
            self.start.push(container.name.clone());
        } else {
            self.wake(container.retry.not_before);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(states: Vec<RunState>) -> PodRecord {
        PodRecord {
            restart_policy: "Always".into(),
            host_ip: None,
            pod_ip: None,
            qos: None,
            start_time: None,
            sandbox_pid: Some(42),
            sandbox_retry: Retry::default(),
            init_containers: Vec::new(),
            containers: states
                .into_iter()
                .enumerate()
                .map(|(i, state)| ContainerRecord::new(format!("c{i}"), "busybox".into(), state))
                .collect(),
        }
    }

    fn waiting(reason: &str) -> RunState {
        RunState::Waiting {
            reason: reason.into(),
            message: String::new(),
        }
    }

    #[test]
    fn retry_doubles_to_the_cap() {
        let now = Instant::now();
        let mut retry = Retry::default();
        let waits: Vec<u64> = (0..7).map(|_| retry.failed(now).as_secs()).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(retry.not_before, Some(now + BACKOFF_MAX));
        assert!(!retry.due(now));
        retry.retry_now();
        assert!(retry.due(now));
    }

    #[test]
    fn no_sandbox_means_create_it_first_and_nothing_else() {
        let now = Instant::now();
        let mut r = record(vec![RunState::creating()]);
        r.sandbox_pid = None;
        assert_eq!(
            plan(&r, now),
            Plan {
                create_sandbox: true,
                ..Default::default()
            }
        );
        r.sandbox_retry.failed(now);
        let p = plan(&r, now);
        assert!(!p.create_sandbox);
        assert_eq!(p.wake_at, Some(now + BACKOFF_INITIAL));
    }

    #[test]
    fn waiting_containers_start_when_due_running_ones_are_left_alone() {
        let now = Instant::now();
        let running = RunState::Running {
            started_at: jiff::Timestamp::UNIX_EPOCH,
        };
        let mut r = record(vec![
            RunState::creating(),
            running,
            waiting("CreateContainerError"),
        ]);
        r.containers[2].retry.failed(now);
        let p = plan(&r, now);
        assert_eq!(p.start, ["c0"]);
        assert_eq!(p.wake_at, Some(now + BACKOFF_INITIAL));
        assert_eq!(plan(&r, now + BACKOFF_INITIAL).start, ["c0", "c2"]);
    }

    #[test]
    fn a_failed_pull_shows_backoff_after_a_while_then_retries() {
        let now = Instant::now();
        let mut r = record(vec![waiting("ErrImagePull")]);
        r.containers[0].retry.failed(now);
        r.containers[0].pull_backoff_at = Some(now + PULL_ERROR_VISIBLE);
        let p = plan(&r, now);
        assert!(p.start.is_empty() && p.show_pull_backoff.is_empty());
        assert_eq!(p.wake_at, Some(now + PULL_ERROR_VISIBLE));
        let p = plan(&r, now + PULL_ERROR_VISIBLE);
        assert_eq!(p.show_pull_backoff, ["c0"]);
        assert_eq!(p.wake_at, Some(now + BACKOFF_INITIAL));
    }

    fn init(name: &str, state: RunState, sidecar: bool) -> ContainerRecord {
        ContainerRecord {
            sidecar,
            ..ContainerRecord::new(name.into(), "busybox".into(), state)
        }
    }

    #[test]
    fn init_containers_run_one_at_a_time_before_the_app() {
        let now = Instant::now();
        let running = RunState::Running {
            started_at: jiff::Timestamp::UNIX_EPOCH,
        };
        let mut r = record(vec![RunState::creating()]);
        r.init_containers = vec![
            init("i1", RunState::creating(), false),
            init("i2", RunState::creating(), false),
        ];
        assert_eq!(plan(&r, now).start, ["i1"]);
        r.init_containers[0].state = running.clone();
        assert_eq!(plan(&r, now), Plan::default());
        r.init_containers[0].state = RunState::exited(0, false, None, None);
        assert_eq!(plan(&r, now).start, ["i2"]);
        r.init_containers[1].state = RunState::exited(0, false, None, None);
        assert_eq!(plan(&r, now).start, ["c0"]);
    }

    #[test]
    fn a_sidecar_runs_on_while_the_next_init_container_starts() {
        let now = Instant::now();
        let running = RunState::Running {
            started_at: jiff::Timestamp::UNIX_EPOCH,
        };
        let mut r = record(vec![RunState::creating()]);
        r.init_containers = vec![
            init("side", running, true),
            init("i2", RunState::creating(), false),
        ];
        assert_eq!(plan(&r, now).start, ["i2"]);
    }

    #[test]
    fn a_failed_init_container_backs_off_or_fails_the_pod_under_never() {
        let now = Instant::now();
        let mut r = record(vec![RunState::creating()]);
        r.init_containers = vec![init("i1", RunState::exited(1, false, None, None), false)];
        r.init_containers[0].retry.failed(now);
        let p = plan(&r, now);
        assert!(p.start.is_empty());
        assert_eq!(p.wake_at, Some(now + BACKOFF_INITIAL));
        assert_eq!(plan(&r, now + BACKOFF_INITIAL).start, ["i1"]);
        r.restart_policy = "Never".into();
        assert_eq!(plan(&r, now + BACKOFF_INITIAL), Plan::default());
        assert_eq!(r.phase(), "Failed");
    }

    #[test]
    fn terminated_containers_are_not_restarted_here() {
        let r = record(vec![RunState::exited(1, false, None, None)]);
        assert_eq!(plan(&r, Instant::now()), Plan::default());
    }
}
