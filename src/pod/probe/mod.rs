//! Probes and lifecycle hooks, as the kubelet runs them, for the pod worker
//! to drive.
//!
//! - [`handler`] performs one exec, httpGet, tcpSocket or grpc action and
//!   words its outcome as the kubelet does;
//! - [`schedule`] is the pure part: defaults, timing and the
//!   consecutive-result thresholds;
//! - [`runner`] runs a container's probes as tasks
//!   ([`ContainerProbes::spawn`]), recording `Unhealthy` events and telling
//!   the worker about transitions through [`ProbeUpdate`]s;
//! - [`hooks`] runs postStart and preStop handlers ([`run_hook`]).
//!
//! The worker owns the consequences: it keeps a [`ContainerHealth`] per
//! container run (started and ready flags for the status) and kills the
//! container when a liveness or startup probe reports `healthy: false`.

pub mod handler;
pub mod hooks;
pub mod runner;
pub mod schedule;

#[cfg(test)]
mod tests;

use k8s_openapi::api::core::v1::Container;

use crate::status::events::ObjectRef;

pub use hooks::{run_hook, Hook};
pub use runner::ContainerProbes;
pub use schedule::{kill_grace_period, ProbeKind};

/// Where a container's probes and hooks go, and for which run of it.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    /// The pod's IP; for a `hostNetwork` pod, the node's IP.
    pub pod_ip: Option<String>,
    /// Whether the pod uses the node's network; then `pod_ip` is the node's
    /// address, and without one probes go to the loopback address, which
    /// reaches the container's ports too.
    pub host_network: bool,
    /// The containerd container ID, for exec actions.
    pub container_id: String,
    pub container: Container,
    /// The container, for events.
    pub object: ObjectRef,
    /// Which run of the container (the worker's attempt number), echoed in
    /// updates so updates of an earlier run can be told apart.
    pub run: u32,
}

impl ProbeTarget {
    /// The host of httpGet, tcpSocket and grpc actions that name none: the
    /// pod IP, else the loopback address.
    pub fn default_host(&self) -> &str {
        self.pod_ip
            .as_deref()
            .filter(|ip| !ip.is_empty())
            .unwrap_or("127.0.0.1")
    }

    /// The pod as the kubelet names it in messages (`format.Pod`):
    /// `name_namespace(uid)`.
    pub fn pod_name(&self) -> String {
        format!(
            "{}_{}({})",
            self.object.name, self.object.namespace, self.object.uid
        )
    }
}

/// A change in what a container's probes say. Sent only on transitions:
/// the startup probe succeeded (`Startup`, healthy); readiness changed
/// (`Readiness`, either way); a liveness or startup probe failed
/// `failureThreshold` times in a row (`Liveness`/`Startup`, unhealthy:
/// kill the container; its probing has stopped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeUpdate {
    pub container: String,
    pub run: u32,
    pub kind: ProbeKind,
    pub healthy: bool,
    /// The last attempt's output (the failure message for kills).
    pub message: String,
}

impl ProbeUpdate {
    /// Whether the container must be killed (and restarted by policy).
    pub fn is_kill(&self) -> bool {
        !self.healthy && self.kind != ProbeKind::Readiness
    }

    /// The message of the `Killing` event for a kill verdict, as the kubelet
    /// words it (`computePodActions`); `restart` says whether the restart
    /// policy restarts the container.
    pub fn killing_message(&self, restart: bool) -> Option<String> {
        if !self.is_kill() {
            return None;
        }
        let kind = match self.kind {
            ProbeKind::Startup => "startup",
            _ => "liveness",
        };
        let mut message = format!("Container {} failed {kind} probe", self.container);
        if restart {
            message.push_str(", will be restarted");
        }
        Some(message)
    }
}

/// The `started` and `ready` flags of one run of a container, as the
/// status shows them; the worker creates one when the container starts and
/// applies the [`ProbeUpdate`]s of that run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerHealth {
    /// The startup probe succeeded, or there is none.
    pub started: bool,
    /// Started, and the readiness probe succeeded (or there is none).
    pub ready: bool,
    has_readiness_probe: bool,
}

/// A container without probes: started and ready once running.
impl Default for ContainerHealth {
    fn default() -> Self {
        ContainerHealth {
            started: true,
            ready: true,
            has_readiness_probe: false,
        }
    }
}

impl ContainerHealth {
    /// A container that has just started.
    pub fn new(container: &Container) -> ContainerHealth {
        let started = container.startup_probe.is_none();
        let has_readiness_probe = container.readiness_probe.is_some();
        ContainerHealth {
            started,
            ready: started && !has_readiness_probe,
            has_readiness_probe,
        }
    }

    pub fn apply(&mut self, update: &ProbeUpdate) {
        match (update.kind, update.healthy) {
            (ProbeKind::Startup, true) => {
                self.started = true;
                self.ready = !self.has_readiness_probe;
            }
            (ProbeKind::Readiness, healthy) => self.ready = healthy && self.started,
            // Kill verdicts: the worker stops the container; its status
            // then says so.
            (ProbeKind::Startup | ProbeKind::Liveness, _) => {}
        }
    }
}
