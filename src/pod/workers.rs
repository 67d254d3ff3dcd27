//! The registry of pod workers: starts a worker for each desired pod, stops
//! workers of pods no longer desired, and routes containerd events to the
//! worker that owns the container.
//!
//! A pod whose previous worker (same UID, or same namespace/name after an
//! edit) is still stopping waits for it, so two workers never act on the
//! same containers and an edited static pod starts only after its old
//! version is gone, as the kubelet does.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tracing::{info, warn};

use super::checkpoint::Checkpoint;
use super::runtime::PodRuntime;
use super::worker::{Worker, WorkerContext};
use crate::desired::{DesiredPod, DesiredReader, DesiredState};
use crate::runtime::containerd::events::RuntimeEvent;
use crate::runtime::labels;

struct Handle {
    pod: Arc<DesiredPod>,
    events: mpsc::UnboundedSender<RuntimeEvent>,
    /// Taken when the worker is told to stop.
    stop: Option<oneshot::Sender<()>>,
}

pub struct Workers<R> {
    ctx: Arc<WorkerContext<R>>,
    workers: HashMap<String, Handle>,
    /// Pod UID by container-ID prefix, for routing events.
    by_prefix: HashMap<String, String>,
    tasks: JoinSet<String>,
    orphans_collected: bool,
}

impl<R: PodRuntime> Workers<R> {
    pub fn new(ctx: Arc<WorkerContext<R>>) -> Workers<R> {
        Workers {
            ctx,
            workers: HashMap::new(),
            by_prefix: HashMap::new(),
            tasks: JoinSet::new(),
            orphans_collected: false,
        }
    }

    /// Follows the desired set and the runtime's events until the desired
    /// set's writer is gone.
    pub async fn run(
        mut self,
        mut desired: DesiredReader,
        mut runtime_events: mpsc::Receiver<RuntimeEvent>,
    ) {
        let mut state = desired.snapshot();
        self.reconcile(&state).await;
        loop {
            tokio::select! {
                changed = desired.changed() => match changed {
                    Some(next) => {
                        state = next;
                        self.reconcile(&state).await;
                    }
                    None => return,
                },
                Some(event) = runtime_events.recv() => self.route(event),
                Some(done) = self.tasks.join_next() => {
                    if let Ok(uid) = done {
                        self.forget(&uid);
                    }
                    self.reconcile(&state).await;
                }
            }
        }
    }

    async fn reconcile(&mut self, state: &DesiredState) {
        if !state.synced {
            return;
        }
        for (uid, handle) in &mut self.workers {
            if !state.pods.contains_key(uid) {
                if let Some(stop) = handle.stop.take() {
                    info!(pod = %handle.pod.name(), uid, "pod no longer desired; stopping");
                    let _ = stop.send(());
                }
            }
        }
        for (uid, pod) in &state.pods {
            if self.workers.contains_key(uid) || self.blocked_by_same_name(pod) {
                continue;
            }
            self.spawn(pod.clone());
        }
        if !self.orphans_collected {
            self.orphans_collected = true;
            self.collect_orphans(state).await;
        }
    }

    /// True while a stopping worker holds a pod of the same name.
    fn blocked_by_same_name(&self, pod: &DesiredPod) -> bool {
        self.workers.values().any(|h| {
            h.stop.is_none() && h.pod.name() == pod.name() && h.pod.namespace() == pod.namespace()
        })
    }

    fn spawn(&mut self, pod: Arc<DesiredPod>) {
        let uid = pod.uid().to_string();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let worker = Worker::new(self.ctx.clone(), pod.clone(), events_rx, stop_rx);
        let done_uid = uid.clone();
        self.tasks.spawn(async move {
            worker.run().await;
            done_uid
        });
        self.by_prefix.insert(labels::id_prefix(&uid), uid.clone());
        self.workers.insert(
            uid,
            Handle {
                pod,
                events: events_tx,
                stop: Some(stop_tx),
            },
        );
    }

    fn forget(&mut self, uid: &str) {
        self.workers.remove(uid);
        self.by_prefix.retain(|_, u| u != uid);
    }

    fn route(&self, event: RuntimeEvent) {
        match event.container_id() {
            Some(id) => {
                let uid = labels::prefix_of(id).and_then(|p| self.by_prefix.get(p));
                if let Some(handle) = uid.and_then(|uid| self.workers.get(uid)) {
                    let _ = handle.events.send(event);
                }
            }
            None => {
                for handle in self.workers.values() {
                    let _ = handle.events.send(event.clone());
                }
            }
        }
    }

    /// Once, after the first full read of the manifests: removes containers
    /// of pods that are not desired (left by an earlier run of the agent
    /// whose manifests were removed meanwhile).
    async fn collect_orphans(&self, state: &DesiredState) {
        let uids = match self.ctx.runtime.pod_uids().await {
            Ok(uids) => uids,
            Err(e) => {
                warn!(error = %e, "cannot list containers to clean up");
                return;
            }
        };
        for uid in uids.into_iter().filter(|uid| !state.pods.contains_key(uid)) {
            info!(uid = %uid, "removing a pod that is no longer desired");
            let runtime = self.ctx.runtime.clone();
            let checkpoint = Checkpoint::path(&self.ctx.state_dir, &uid);
            tokio::spawn(async move {
                // The checkpoint stays with containers that could not go.
                if !runtime.remove_pod(&uid).await {
                    return;
                }
                let removed = checkpoint
                    .map_err(std::io::Error::other)
                    .and_then(|path| Checkpoint::remove(&path));
                if let Err(e) = removed {
                    warn!(uid = %uid, error = %e, "cannot remove the pod's checkpoint");
                }
            });
        }
    }
}
