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

/// How long a restart back-off entry lives without an update: a container
/// that ran this long since its last restart starts over at the initial
/// delay (client-go's `hasExpired`, twice the maximum).
pub const BACKOFF_RESET: Duration = Duration::from_secs(600);

/// The kubelet's crash-loop back-off of one container
/// (`kuberuntime_manager.go doBackOff` over client-go's `Backoff`): the
/// first restart is immediate; each further one waits, counted from the
/// exit, 10 s doubling to 300 s; an entry untouched for 600 s is forgotten.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CrashBackoff {
    /// Current delay and when it was last raised.
    entry: Option<(Duration, Instant)>,
}

impl CrashBackoff {
    /// For a container that exited at `finished`: when it may restart
    /// (`None`: now).
    pub fn restart_at(&self, finished: Instant, now: Instant) -> Option<Instant> {
        let (delay, updated) = self.entry?;
        if now.saturating_duration_since(updated) > BACKOFF_RESET {
            return None;
        }
        let at = finished + delay;
        (at > now).then_some(at)
    }

    /// The state to keep across agent restarts: the delay and when it was
    /// last raised.
    pub fn entry(&self) -> Option<(Duration, Instant)> {
        self.entry
    }

    pub fn restored(entry: Option<(Duration, Instant)>) -> CrashBackoff {
        CrashBackoff { entry }
    }

    /// The delay a container waiting now is waiting out, for messages.
    pub fn delay(&self) -> Duration {
        self.entry.map_or(BACKOFF_INITIAL, |(delay, _)| delay)
    }

    /// A restart after the exit at `finished` goes ahead: the next exit
    /// waits twice as long (client-go's `Next`).
    pub fn restarting(&mut self, finished: Instant) {
        self.entry = Some(match self.entry {
            Some((delay, updated))
                if finished.saturating_duration_since(updated) <= BACKOFF_RESET =>
            {
                ((delay * 2).min(BACKOFF_MAX), finished)
            }
            _ => (BACKOFF_INITIAL, finished),
        });
    }
}

/// What to do now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub create_sandbox: bool,
    /// Containers to create and start now.
    pub start: Vec<String>,
    /// Exited containers that must wait out their crash back-off: they now
    /// show `CrashLoopBackOff`.
    pub show_crash_backoff: Vec<String>,
    /// Containers whose `ErrImagePull` now shows as `ImagePullBackOff`.
    pub show_pull_backoff: Vec<String>,
    /// When something next falls due; `None`: only an event can change things.
    pub wake_at: Option<Instant>,
}

/// Init containers run one at a time, in order, each to success (a sidecar
/// only needs to be running) before the next; app containers start once all
/// are done. Exited containers restart as `restartPolicy` says (a sidecar
/// always does), after their crash back-off; a failed init container under
/// `restartPolicy: Never` fails the pod.
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
        plan.consider(init, &record.restart_policy, now);
        return plan;
    }
    for sidecar in record.init_containers.iter().filter(|c| c.sidecar) {
        plan.consider(sidecar, &record.restart_policy, now);
    }
    for container in &record.containers {
        plan.consider(container, &record.restart_policy, now);
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
    fn consider(&mut self, container: &ContainerRecord, policy: &str, now: Instant) {
        if let Some(finished) = container.finished {
            if !container.should_restart(policy) {
                return;
            }
            match container.crash.restart_at(finished, now) {
                None => self.start.push(container.name.clone()),
                Some(at) => {
                    if !container.in_crash_backoff() {
                        self.show_crash_backoff.push(container.name.clone());
                    }
                    self.wake(Some(at));
                }
            }
            return;
        }
        if let RunState::Waiting { reason, .. } = &container.state {
            if reason == "ErrImagePull" {
                match container.pull_backoff_at {
                    Some(at) if at <= now => self.show_pull_backoff.push(container.name.clone()),
                    at => self.wake(at),
                }
            }
        }
        if !matches!(container.state, RunState::Waiting { .. }) {
            return;
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
        let containers = states
            .into_iter()
            .enumerate()
            .map(|(i, state)| ContainerRecord::new(format!("c{i}"), "busybox".into(), state))
            .collect();
        PodRecord {
            sandbox_pid: Some(42),
            ..PodRecord::new("Always".into(), Vec::new(), containers)
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

    /// A container whose run ended at `at` with `code`.
    fn ended(record: &mut ContainerRecord, code: u32, at: Instant) {
        record.ended(RunState::exited(code, false, None, None), at);
    }

    #[test]
    fn a_failed_init_container_restarts_with_back_off_or_fails_the_pod_under_never() {
        let now = Instant::now();
        let mut r = record(vec![RunState::creating()]);
        r.init_containers = vec![init("i1", RunState::creating(), false)];
        ended(&mut r.init_containers[0], 1, now);
        assert_eq!(
            plan(&r, now).start,
            ["i1"],
            "the first restart is immediate"
        );
        let _ = r.init_containers[0].begin_attempt();
        ended(&mut r.init_containers[0], 1, now);
        let p = plan(&r, now);
        assert_eq!(p.show_crash_backoff, ["i1"]);
        assert_eq!(p.wake_at, Some(now + BACKOFF_INITIAL));
        assert_eq!(plan(&r, now + BACKOFF_INITIAL).start, ["i1"]);
        r.restart_policy = "Never".into();
        assert_eq!(plan(&r, now + BACKOFF_INITIAL), Plan::default());
        assert_eq!(r.phase(), "Failed");
    }

    #[test]
    fn crash_back_off_is_immediate_then_doubles_from_each_exit_to_the_cap() {
        let t0 = Instant::now();
        let mut backoff = CrashBackoff::default();
        assert_eq!(backoff.restart_at(t0, t0), None);
        let mut exit = t0;
        let mut waits = Vec::new();
        for _ in 0..7 {
            backoff.restarting(exit);
            // The next run fails 1 s after it starts.
            exit += Duration::from_secs(1);
            let at = backoff.restart_at(exit, exit).expect("a wait");
            waits.push((at - exit).as_secs());
            exit = at;
        }
        assert_eq!(waits, [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(backoff.delay(), BACKOFF_MAX);
    }

    #[test]
    fn crash_back_off_resets_after_ten_minutes_without_a_restart() {
        let t0 = Instant::now();
        let mut backoff = CrashBackoff::default();
        backoff.restarting(t0);
        backoff.restarting(t0 + Duration::from_secs(5));
        let long_run_end = t0 + Duration::from_secs(5) + BACKOFF_RESET + Duration::from_secs(1);
        assert_eq!(
            backoff.restart_at(long_run_end, long_run_end),
            None,
            "a run longer than 600 s restarts at once"
        );
        backoff.restarting(long_run_end);
        assert_eq!(backoff.delay(), BACKOFF_INITIAL);
        let short = long_run_end + Duration::from_secs(1);
        assert_eq!(
            backoff.restart_at(short, short),
            Some(short + BACKOFF_INITIAL)
        );
    }

    #[test]
    fn restart_policy_decides_which_exits_restart() {
        let now = Instant::now();
        for (policy, code, restarts) in [
            ("Always", 0, true),
            ("Always", 1, true),
            ("OnFailure", 0, false),
            ("OnFailure", 2, true),
            ("Never", 0, false),
            ("Never", 137, false),
        ] {
            let mut r = record(vec![RunState::creating()]);
            r.restart_policy = policy.into();
            ended(&mut r.containers[0], code, now);
            let expected: &[&str] = if restarts { &["c0"] } else { &[] };
            assert_eq!(plan(&r, now).start, expected, "{policy} exit {code}");
        }
    }

    #[test]
    fn a_crash_looping_container_waits_shows_back_off_once_then_restarts() {
        let now = Instant::now();
        let mut r = record(vec![RunState::creating()]);
        let c = &mut r.containers[0];
        ended(c, 1, now);
        let _ = c.begin_attempt();
        ended(c, 1, now);
        let p = plan(&r, now);
        assert_eq!(p.show_crash_backoff, ["c0"]);
        assert!(p.start.is_empty());
        let _ = r.containers[0].wait_crash_backoff("web-n_default(u)");
        let p = plan(&r, now + Duration::from_secs(3));
        assert!(p.show_crash_backoff.is_empty(), "shown once per exit");
        assert_eq!(p.wake_at, Some(now + BACKOFF_INITIAL));
        assert_eq!(plan(&r, now + BACKOFF_INITIAL).start, ["c0"]);
        assert_eq!(
            r.phase(),
            "Running",
            "a crash-looping container counts as stopped"
        );
    }

    #[test]
    fn an_exited_sidecar_restarts_even_under_never() {
        let now = Instant::now();
        let running = RunState::Running {
            started_at: jiff::Timestamp::UNIX_EPOCH,
        };
        let mut r = record(vec![running]);
        r.restart_policy = "Never".into();
        r.init_containers = vec![init("side", RunState::creating(), true)];
        ended(&mut r.init_containers[0], 0, now);
        assert_eq!(plan(&r, now).start, ["side"]);
    }

    #[test]
    fn terminated_containers_under_never_stay_terminated() {
        let mut r = record(vec![RunState::creating()]);
        r.restart_policy = "Never".into();
        ended(&mut r.containers[0], 1, Instant::now());
        assert_eq!(plan(&r, Instant::now()), Plan::default());
    }
}
