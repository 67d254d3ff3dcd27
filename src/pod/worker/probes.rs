//! What follows a container's start: its postStart hook, then its probes,
//! whose verdicts come back to the worker as [`ProbeUpdate`]s. The probes
//! only report; the worker decides (readiness in status, kills on liveness
//! or startup failure), as the kubelet's prober feeds its pod workers.

use k8s_openapi::api::core::v1::Container;
use tracing::warn;

use super::Worker;
use crate::pod::probe::{
    kill_grace_period, run_hook, ContainerHealth, ContainerProbes, Hook, ProbeTarget, ProbeUpdate,
};
use crate::pod::runtime::PodRuntime;
use crate::status::events::{EventType, ObjectRef};

impl<R: PodRuntime> Worker<R> {
    /// Where container `name`'s probes and hooks go, for its current run.
    pub(super) fn probe_target_of(&self, container: &Container) -> Option<ProbeTarget> {
        let record = self.record.all().find(|c| c.name == container.name)?;
        let init = self
            .record
            .init_containers
            .iter()
            .any(|c| c.name == container.name);
        Some(ProbeTarget {
            pod_ip: self.record.pod_ip.clone(),
            host_network: self
                .pod
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.host_network)
                .unwrap_or(false),
            container_id: record.container_id.clone()?,
            container: container.clone(),
            object: ObjectRef::container(&self.pod, &container.name, init),
            run: record.runs,
        })
    }

    /// Runs the postStart hooks of containers that just started (in
    /// parallel), then starts their probes. A failed hook kills its
    /// container, which then restarts by the restart policy.
    pub(super) async fn after_start(&mut self, names: &[String]) {
        let mut targets = Vec::new();
        for name in names {
            let Some((container, _)) = self.container_spec(name) else {
                continue;
            };
            if let Some(record) = self.record.container_mut(name) {
                record.health = ContainerHealth::new(&container);
            }
            targets.extend(self.probe_target_of(&container));
        }
        let runtime = &self.ctx.runtime;
        let hooks = targets.iter().map(|target| async move {
            match Hook::PostStart.handler_of(&target.container) {
                Some(handler) => run_hook(runtime.as_ref(), handler, target, None).await,
                None => Ok(()),
            }
        });
        let outcomes = futures::future::join_all(hooks).await;
        for (target, outcome) in targets.into_iter().zip(outcomes) {
            let name = target.container.name.clone();
            match outcome {
                Ok(()) => self.watch_probes(target),
                Err(message) => {
                    warn!(pod = %self.pod.name(), container = %name, "postStart hook failed: {message}");
                    self.ctx.recorder.record(
                        target.object.clone(),
                        EventType::Warning,
                        Hook::PostStart.event_reason(),
                        Hook::PostStart.event_message(),
                    );
                    let grace = self.grace_period(None);
                    // The details stay in the log: hook output can hold secrets.
                    self.kill_container(&name, grace, "FailedPostStartHook".into())
                        .await;
                }
            }
        }
    }

    /// Starts probing a running container (again after adoption).
    pub(super) fn watch_probes(&mut self, target: ProbeTarget) {
        let name = target.container.name.clone();
        let probes = ContainerProbes::spawn(
            self.ctx.runtime.clone(),
            self.ctx.recorder.clone(),
            target,
            self.probe_updates.clone(),
        );
        match probes {
            Some(probes) => {
                self.probes.insert(name, probes);
            }
            None => {
                self.probes.remove(&name);
            }
        }
    }

    /// Adopted running containers get fresh probes, as after a kubelet
    /// restart: readiness starts unknown (false) until the first result.
    pub(super) fn watch_adopted(&mut self) {
        let running: Vec<String> = self.record.running().map(|c| c.name.clone()).collect();
        for name in running {
            let Some((container, _)) = self.container_spec(&name) else {
                continue;
            };
            if let Some(record) = self.record.container_mut(&name) {
                record.health = ContainerHealth::new(&container);
            }
            if let Some(target) = self.probe_target_of(&container) {
                self.watch_probes(target);
            }
        }
    }

    /// A probe verdict changed for a container's run: show it, and kill the
    /// container on a liveness or startup failure.
    pub(super) async fn on_probe_update(&mut self, update: ProbeUpdate) {
        let restart_policy = self.record.restart_policy.clone();
        let Some(record) = self.record.container_mut(&update.container) else {
            return;
        };
        if !record.is_running() || record.runs != update.run {
            // A verdict about a run that already ended.
            return;
        }
        record.health.apply(&update);
        let restarts = record.sidecar || restart_policy != "Never";
        self.publish().await;
        let Some(message) = update.killing_message(restarts) else {
            return;
        };
        self.probes.remove(&update.container);
        let Some((container, _)) = self.container_spec(&update.container) else {
            return;
        };
        let grace = self.grace_period(kill_grace_period(&container, update.kind));
        self.kill_container(&update.container, grace, message).await;
    }
}
