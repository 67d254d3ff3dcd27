//! Runs one container's probes: one task per probe, as the kubelet has one
//! worker per probe, so a slow liveness check never delays readiness. The
//! startup probe gates the others; a kill verdict stops them all, as the
//! kubelet puts a failed container's probes on hold until its next run.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Probe;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use super::handler::{self, Outcome};
use super::schedule::{ProbeKind, ProbeSettings, ProbeState};
use super::{ProbeTarget, ProbeUpdate};
use crate::pod::runtime::PodRuntime;
use crate::runtime::env::expand_command;
use crate::status::events::{EventType, Recorder};

/// Attempts per probe run when the probe cannot be run at all (the
/// kubelet's `maxProbeRetries`); plain failures are not retried.
const MAX_ATTEMPTS: usize = 3;

/// The running probes of one container run; dropping it stops them.
pub struct ContainerProbes {
    _tasks: JoinSet<()>,
}

/// What a container's probe tasks share.
struct Shared<R> {
    runtime: Arc<R>,
    recorder: Recorder,
    target: ProbeTarget,
    updates: mpsc::UnboundedSender<ProbeUpdate>,
    /// When the container started (when the probes were spawned).
    started_at: Instant,
    /// The startup probe succeeded, or there is none.
    started: watch::Sender<bool>,
    /// A kill verdict was given: probing stops.
    halted: watch::Sender<bool>,
}

impl ContainerProbes {
    /// Starts probing a container that has just started; `None` if it has no
    /// probes. Updates go to `updates`, events to `recorder`.
    pub fn spawn<R: PodRuntime>(
        runtime: Arc<R>,
        recorder: Recorder,
        target: ProbeTarget,
        updates: mpsc::UnboundedSender<ProbeUpdate>,
    ) -> Option<ContainerProbes> {
        let probes: Vec<(ProbeKind, Probe)> = [
            ProbeKind::Startup,
            ProbeKind::Liveness,
            ProbeKind::Readiness,
        ]
        .into_iter()
        .filter_map(|kind| Some((kind, kind.probe_of(&target.container)?.clone())))
        .collect();
        if probes.is_empty() {
            return None;
        }
        let shared = Arc::new(Shared {
            runtime,
            recorder,
            started: watch::Sender::new(target.container.startup_probe.is_none()),
            target,
            updates,
            started_at: Instant::now(),
            halted: watch::Sender::new(false),
        });
        let mut tasks = JoinSet::new();
        for (kind, probe) in probes {
            tasks.spawn(run_probe(shared.clone(), kind, probe));
        }
        Some(ContainerProbes { _tasks: tasks })
    }
}

/// One probe's loop: wait for the gate, then probe every period and count.
async fn run_probe<R: PodRuntime>(shared: Arc<Shared<R>>, kind: ProbeKind, probe: Probe) {
    let settings = ProbeSettings::new(kind, &probe);
    let mut state = ProbeState::new(settings);
    let mut halted = shared.halted.subscribe();
    if kind != ProbeKind::Startup {
        let mut started = shared.started.subscribe();
        tokio::select! {
            _ = started.wait_for(|s| *s) => {}
            _ = halted.wait_for(|h| *h) => return,
        }
    }
    let first = settings.first_due(shared.started_at, Instant::now());
    let mut ticks = tokio::time::interval_at(first, settings.period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = halted.wait_for(|h| *h) => return,
        }
        let outcome = tokio::select! {
            outcome = attempt_with_retries(&shared, &probe, settings.timeout) => outcome,
            _ = halted.wait_for(|h| *h) => return,
        };
        record_event(&shared, kind, &outcome);
        let message = match &outcome {
            Outcome::Success(m) | Outcome::Warning(m) | Outcome::Failure(m) | Outcome::Error(m) => {
                m.clone()
            }
        };
        let Some(healthy) = state.record(outcome.is_success()) else {
            continue;
        };
        let _ = shared.updates.send(ProbeUpdate {
            container: shared.target.container.name.clone(),
            run: shared.target.run,
            kind,
            healthy,
            message,
        });
        if state.is_kill() {
            shared.halted.send_replace(true);
            return;
        }
        if kind == ProbeKind::Startup {
            // Started: the startup probe has done its job.
            shared.started.send_replace(true);
            return;
        }
    }
}

/// The kubelet's events for one attempt: `Unhealthy` for failures and
/// errors, `ProbeWarning` for warnings.
fn record_event<R>(shared: &Shared<R>, kind: ProbeKind, outcome: &Outcome) {
    let kind = kind.as_str();
    let (reason, message) = match outcome {
        Outcome::Success(_) => return,
        Outcome::Warning(out) => ("ProbeWarning", format!("{kind} probe warning: {out}")),
        Outcome::Failure(out) => ("Unhealthy", format!("{kind} probe failed: {out}")),
        Outcome::Error(error) => (
            "Unhealthy",
            format!("{kind} probe errored and resulted in unknown state: {error}"),
        ),
    };
    shared.recorder.record(
        shared.target.object.clone(),
        EventType::Warning,
        reason,
        message,
    );
}

async fn attempt_with_retries<R: PodRuntime>(
    shared: &Shared<R>,
    probe: &Probe,
    timeout: Duration,
) -> Outcome {
    let mut outcome = attempt(shared, probe, timeout).await;
    for _ in 1..MAX_ATTEMPTS {
        if !matches!(outcome, Outcome::Error(_)) {
            break;
        }
        outcome = attempt(shared, probe, timeout).await;
    }
    outcome
}

/// Runs a probe's action once.
async fn attempt<R: PodRuntime>(shared: &Shared<R>, probe: &Probe, timeout: Duration) -> Outcome {
    let target = &shared.target;
    let container = &target.container;
    if let Some(exec) = &probe.exec {
        // Probe commands see the container's literal variables only
        // (`ExpandContainerCommandOnlyStatic`): `valueFrom` ones are empty.
        let variables: Vec<(String, String)> = container
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
            .collect();
        let command = match expand_command(exec.command.as_deref().unwrap_or_default(), &variables)
        {
            Ok(command) => command,
            Err(e) => return Outcome::Error(format!("exec command: {e}")),
        };
        let result = shared
            .runtime
            .exec(&target.container_id, &command, timeout)
            .await
            .map_err(|e| e.to_string());
        return handler::exec_outcome(&command, result);
    }
    if let Some(action) = &probe.http_get {
        let result = handler::http_get(
            action,
            container,
            target.default_host(),
            timeout,
            handler::PROBE_USER_AGENT,
        )
        .await;
        return handler::http_outcome(result);
    }
    if let Some(action) = &probe.tcp_socket {
        let port = match handler::resolve_port(&action.port, container) {
            Ok(port) => port,
            Err(e) => return Outcome::Error(e),
        };
        let host = action
            .host
            .as_deref()
            .filter(|h| !h.is_empty())
            .unwrap_or(target.default_host());
        return handler::tcp_probe(host, port, timeout).await;
    }
    if let Some(action) = &probe.grpc {
        let Some(port) = u16::try_from(action.port).ok().filter(|p| *p > 0) else {
            return Outcome::Error(format!("invalid port number: {}", action.port));
        };
        let service = action.service.as_deref().unwrap_or_default();
        return handler::grpc_probe(target.default_host(), port, service, timeout).await;
    }
    Outcome::Error(format!(
        "missing probe handler for {}:{}",
        target.pod_name(),
        container.name
    ))
}
