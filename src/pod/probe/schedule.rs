//! The pure part of probing: a probe's settings with the kubelet's defaults,
//! when it is first due, and how consecutive results turn into a published
//! result (the kubelet's `worker.doProbe` threshold logic).

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use tokio::time::Instant;

/// Which of a container's probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    Startup,
    Liveness,
    Readiness,
}

impl ProbeKind {
    /// The word the kubelet starts its probe event messages with.
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Startup => "Startup",
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
        }
    }

    /// This kind's probe of `container`, if it has one.
    pub fn probe_of(self, container: &Container) -> Option<&Probe> {
        match self {
            ProbeKind::Startup => container.startup_probe.as_ref(),
            ProbeKind::Liveness => container.liveness_probe.as_ref(),
            ProbeKind::Readiness => container.readiness_probe.as_ref(),
        }
    }
}

/// A probe's timing and thresholds, defaulted as the API server does
/// (`SetDefaults_Probe`): values below the minimum count as unset, since
/// podkeeper has no API server to reject them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeSettings {
    pub kind: ProbeKind,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl ProbeSettings {
    pub fn new(kind: ProbeKind, probe: &Probe) -> ProbeSettings {
        let seconds = |value: Option<i32>, default: u64| {
            Duration::from_secs(value.filter(|v| *v > 0).map_or(default, |v| v as u64))
        };
        let count = |value: Option<i32>, default: u32| {
            value.filter(|v| *v > 0).map_or(default, |v| v as u32)
        };
        // Validation allows only 1 for liveness and startup probes.
        let success_threshold = match kind {
            ProbeKind::Readiness => count(probe.success_threshold, 1),
            ProbeKind::Liveness | ProbeKind::Startup => 1,
        };
        ProbeSettings {
            kind,
            initial_delay: seconds(probe.initial_delay_seconds, 0),
            period: seconds(probe.period_seconds, 10),
            timeout: seconds(probe.timeout_seconds, 1),
            success_threshold,
            failure_threshold: count(probe.failure_threshold, 3),
        }
    }

    /// When the first probe runs: `initialDelaySeconds` after the container
    /// started, but not before the probe may run at all (`gate_opened`: for
    /// liveness and readiness, when the startup probe succeeded).
    pub fn first_due(&self, container_started: Instant, gate_opened: Instant) -> Instant {
        (container_started + self.initial_delay).max(gate_opened)
    }
}

/// The grace period to use when the container is killed because its
/// liveness or startup probe failed: the probe's own
/// `terminationGracePeriodSeconds`, which then overrides the pod's.
pub fn kill_grace_period(container: &Container, kind: ProbeKind) -> Option<Duration> {
    if kind == ProbeKind::Readiness {
        return None;
    }
    let seconds = kind.probe_of(container)?.termination_grace_period_seconds?;
    Some(Duration::from_secs(seconds.max(0) as u64))
}

/// Consecutive results of one probe and the result it publishes.
#[derive(Debug, Clone)]
pub struct ProbeState {
    settings: ProbeSettings,
    /// The latest attempt's result and how many in a row had it.
    last: Option<bool>,
    run: u32,
    /// What the probe says now: readiness starts unready, liveness healthy,
    /// startup unknown.
    published: Option<bool>,
}

impl ProbeState {
    pub fn new(settings: ProbeSettings) -> ProbeState {
        let published = match settings.kind {
            ProbeKind::Readiness => Some(false),
            ProbeKind::Liveness => Some(true),
            ProbeKind::Startup => None,
        };
        ProbeState {
            settings,
            last: None,
            run: 0,
            published,
        }
    }

    /// Counts one attempt; returns the new published result when it changes
    /// (a threshold of equal results in a row was reached).
    pub fn record(&mut self, success: bool) -> Option<bool> {
        if self.last == Some(success) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(success);
            self.run = 1;
        }
        let threshold = if success {
            self.settings.success_threshold
        } else {
            self.settings.failure_threshold
        };
        if self.run < threshold {
            return None;
        }
        if !success && self.settings.kind != ProbeKind::Readiness {
            // A kill verdict; a new run of the container starts counting
            // afresh.
            self.run = 0;
        }
        if self.published == Some(success) {
            return None;
        }
        self.published = Some(success);
        Some(success)
    }

    /// Whether the published result is a kill verdict.
    pub fn is_kill(&self) -> bool {
        self.settings.kind != ProbeKind::Readiness && self.published == Some(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(yaml: &str) -> Probe {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn defaults_follow_the_api_server() {
        let s = ProbeSettings::new(ProbeKind::Liveness, &probe("exec: {command: [true]}"));
        assert_eq!(
            s,
            ProbeSettings {
                kind: ProbeKind::Liveness,
                initial_delay: Duration::ZERO,
                period: Duration::from_secs(10),
                timeout: Duration::from_secs(1),
                success_threshold: 1,
                failure_threshold: 3,
            }
        );
        let s = ProbeSettings::new(
            ProbeKind::Readiness,
            &probe("{initialDelaySeconds: 5, periodSeconds: 2, timeoutSeconds: 3, successThreshold: 2, failureThreshold: 1}"),
        );
        assert_eq!(
            (s.initial_delay, s.period, s.timeout),
            (
                Duration::from_secs(5),
                Duration::from_secs(2),
                Duration::from_secs(3)
            )
        );
        assert_eq!((s.success_threshold, s.failure_threshold), (2, 1));
        // Invalid values fall back to the defaults; liveness success is 1.
        let s = ProbeSettings::new(
            ProbeKind::Liveness,
            &probe("{periodSeconds: 0, timeoutSeconds: -1, successThreshold: 4, failureThreshold: 0, initialDelaySeconds: -3}"),
        );
        assert_eq!(
            (s.period, s.timeout, s.initial_delay),
            (
                Duration::from_secs(10),
                Duration::from_secs(1),
                Duration::ZERO
            )
        );
        assert_eq!((s.success_threshold, s.failure_threshold), (1, 3));
    }

    #[test]
    fn first_due_waits_for_the_delay_and_the_gate() {
        let s = ProbeSettings::new(ProbeKind::Liveness, &probe("{initialDelaySeconds: 5}"));
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        assert_eq!(s.first_due(t0, t0), t0 + secs(5));
        assert_eq!(s.first_due(t0, t0 + secs(3)), t0 + secs(5));
        assert_eq!(s.first_due(t0, t0 + secs(8)), t0 + secs(8));
    }

    /// Feeds `results` ('s' success, 'f' failure) and returns what was
    /// published after each.
    fn run(kind: ProbeKind, yaml: &str, results: &str) -> Vec<Option<bool>> {
        let mut state = ProbeState::new(ProbeSettings::new(kind, &probe(yaml)));
        results.chars().map(|c| state.record(c == 's')).collect()
    }

    #[test]
    fn thresholds_count_consecutive_results() {
        use ProbeKind::*;
        let (t, f, n) = (Some(true), Some(false), None);
        let cases: &[(ProbeKind, &str, &str, &[Option<bool>])] = &[
            // Liveness starts healthy: only failures are news.
            (Liveness, "{}", "sssfff", &[n, n, n, n, n, f]),
            (Liveness, "{}", "ffsfff", &[n, n, n, n, n, f]),
            (Liveness, "{failureThreshold: 1}", "sf", &[n, f]),
            // Readiness starts unready; one success makes it ready.
            (Readiness, "{}", "sffsff", &[t, n, n, n, n, n]),
            (Readiness, "{}", "sfffs", &[t, n, n, f, t]),
            (
                Readiness,
                "{successThreshold: 3}",
                "ssfsss",
                &[n, n, n, n, n, t],
            ),
            (Readiness, "{}", "fffff", &[n, n, n, n, n]),
            // Startup: unknown until success or enough failures.
            (Startup, "{}", "ffs", &[n, n, t]),
            (Startup, "{failureThreshold: 2}", "sff", &[t, n, f]),
            (Startup, "{failureThreshold: 2}", "fsff", &[n, t, n, f]),
        ];
        for (kind, yaml, results, expected) in cases {
            assert_eq!(
                run(*kind, yaml, results),
                *expected,
                "{kind:?} {yaml} {results}"
            );
        }
    }

    #[test]
    fn liveness_and_startup_failures_are_kill_verdicts() {
        let mut state = ProbeState::new(ProbeSettings::new(
            ProbeKind::Liveness,
            &probe("{failureThreshold: 1}"),
        ));
        assert!(!state.is_kill());
        state.record(false);
        assert!(state.is_kill());
        let mut ready = ProbeState::new(ProbeSettings::new(
            ProbeKind::Readiness,
            &probe("{failureThreshold: 1}"),
        ));
        ready.record(false);
        assert!(!ready.is_kill());
    }

    #[test]
    fn probe_grace_period_applies_to_kills_only() {
        let container: Container = serde_yaml::from_str(
            "{name: c, livenessProbe: {terminationGracePeriodSeconds: 7}, readinessProbe: {terminationGracePeriodSeconds: 9}, startupProbe: {}}",
        )
        .unwrap();
        assert_eq!(
            kill_grace_period(&container, ProbeKind::Liveness),
            Some(Duration::from_secs(7))
        );
        assert_eq!(kill_grace_period(&container, ProbeKind::Readiness), None);
        assert_eq!(kill_grace_period(&container, ProbeKind::Startup), None);
    }
}
