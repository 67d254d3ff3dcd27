//! Taking over a pod that an earlier run of the agent left in containerd.
//!
//! The checkpoint file gives back restart counts and back-off; containerd
//! says what still runs. A running sandbox is kept with its network, and
//! its running containers are kept as they are (no restart). Runs the
//! agent started but had not yet noted are recognised by their IDs and
//! labels; half-made attempts and runs older than the previous one are
//! removed, so no container ever exists twice. Without a usable sandbox,
//! everything of the pod is removed and the pod starts afresh, keeping its
//! restart counts.

use std::collections::HashSet;

use tokio::time::Instant;
use tracing::{info, warn};

use super::Worker;
use crate::host::blocking;
use crate::pod::checkpoint::{Checkpoint, Clocks};
use crate::pod::runtime::{ExistingContainer, PodRuntime};
use crate::pod::state::RunState;
use crate::runtime::containerd::tasks::TaskState;
use crate::runtime::labels;
use crate::status::events::EventType;

impl<R: PodRuntime> Worker<R> {
    pub(super) async fn adopt(&mut self) {
        let loaded = match self.checkpoint_path() {
            Ok(path) => blocking::unblock(move || Ok(Checkpoint::load(&path)))
                .await
                .unwrap_or_else(|e| Err(e.to_string())),
            Err(e) => Err(e.to_string()),
        };
        match loaded {
            Ok(Some(checkpoint)) => checkpoint.restore(&mut self.record, Clocks::now()),
            Ok(None) => {}
            Err(e) => {
                warn!(pod = %self.pod.name(), "cannot use the pod's checkpoint ({e}); restart counts come from container labels");
            }
        }
        let runtime = self.ctx.runtime.clone();
        let existing = match runtime.pod_containers(self.pod.uid()).await {
            Ok(existing) => existing,
            Err(e) => {
                warn!(pod = %self.pod.name(), error = %e, "cannot list the pod's containers; starting it afresh");
                Vec::new()
            }
        };
        let sandbox = existing.iter().find(|c| c.id == self.sandbox_id);
        let sandbox_pid = match sandbox.and_then(|c| c.task) {
            Some(TaskState::Running { pid }) => Some(pid),
            _ => None,
        };
        let environment = match sandbox_pid {
            Some(_) => match runtime.adopt_sandbox(&self.pod).await {
                Ok(environment) => Some(environment),
                Err(failure) => {
                    warn!(pod = %self.pod.name(), "cannot take over the running sandbox ({}); re-creating it", failure.message);
                    None
                }
            },
            None => None,
        };
        let (Some(pid), Some(environment)) = (sandbox_pid, environment) else {
            if sandbox.is_some() {
                self.record_pod_event(
                    EventType::Normal,
                    "SandboxChanged",
                    "Pod sandbox changed, it will be killed and re-created.",
                );
            }
            if !existing.is_empty() {
                runtime.remove_pod(self.pod.uid()).await;
            }
            runtime.release_sandbox(&self.pod).await;
            self.record.sandbox_lost(Instant::now());
            return;
        };
        self.record.sandbox_pid = Some(pid);
        self.record.pod_ip = environment.facts.pod_ip.clone();
        self.record.host_ip = environment.facts.host_ip.clone();
        self.record.qos = Some(environment.qos.as_str());
        if self.record.start_time.is_none() {
            self.record.start_time = sandbox.and_then(|c| c.created_at);
        }
        self.environment = Some(environment);

        let mut keep = HashSet::from([self.sandbox_id.clone()]);
        let mut exited = Vec::new();
        let names: Vec<String> = self.record.all().map(|c| c.name.clone()).collect();
        for name in names {
            let runs: Vec<&ExistingContainer> =
                existing.iter().filter(|c| c.name == name).collect();
            let (kept, exited_task) = self.adopt_container(&name, &runs);
            keep.extend(kept);
            exited.extend(exited_task);
        }
        for id in exited {
            if let Err(e) = runtime.delete_task(&id).await {
                warn!(container = %id, error = %e, "cannot delete the exited task");
            }
        }
        for c in existing.iter().filter(|c| !keep.contains(&c.id)) {
            info!(pod = %self.pod.name(), container = %c.id, "removing a container left by an earlier run");
            if let Err(e) = runtime.remove_container(&c.id).await {
                warn!(container = %c.id, error = %e, "cannot remove container");
            }
        }
        self.watch_adopted();
        info!(pod = %self.pod.name(), uid = %self.pod.uid(), "took over the running pod");
    }

    /// Matches one container's record with its runs in containerd; returns
    /// the IDs to keep and the ID of a task that exited meanwhile.
    fn adopt_container(
        &mut self,
        name: &str,
        runs: &[&ExistingContainer],
    ) -> (Vec<String>, Option<String>) {
        let now = Instant::now();
        let Some(record) = self.record.container_mut(name) else {
            return (Vec::new(), None);
        };
        let newest = runs
            .iter()
            .filter_map(|c| Some((labels::attempt_of(&c.id)?, *c)))
            .max_by_key(|(attempt, _)| *attempt);
        if let Some((attempt, _)) = newest {
            record.attempts = record.attempts.max(attempt + 1);
        }
        let mut keep: Vec<String> = record
            .last_container_id
            .iter()
            .chain(&record.container_id)
            .cloned()
            .collect();
        let Some((_, newest)) = newest else {
            if record.is_running() {
                record.lost(now);
            }
            return (keep, None);
        };
        let known = record.container_id.as_deref() == Some(newest.id.as_str());
        let mut exited_task = None;
        match newest.task {
            Some(TaskState::Running { .. }) => {
                if !known {
                    record.adopted_run(newest.id.clone(), newest.restart_count, newest.created_at);
                }
                keep.push(newest.id.clone());
            }
            Some(TaskState::Stopped(exit)) => {
                if !known {
                    record.adopted_run(newest.id.clone(), newest.restart_count, newest.created_at);
                }
                if let RunState::Running { started_at } = record.state {
                    let state =
                        RunState::exited(exit.exit_status, false, Some(started_at), exit.exited_at);
                    record.ended(state, now);
                }
                keep.push(newest.id.clone());
                exited_task = Some(newest.id.clone());
            }
            None | Some(TaskState::Other) => {
                // Known: its exit was seen and the task deleted. Unknown:
                // an attempt the agent died making; it is removed.
                if record.is_running() {
                    record.lost(now);
                }
            }
        }
        (keep, exited_task)
    }

    pub(super) fn checkpoint_path(
        &self,
    ) -> Result<std::path::PathBuf, crate::host::UnsafeComponent> {
        Checkpoint::path(&self.ctx.state_dir, self.pod.uid())
    }
}
