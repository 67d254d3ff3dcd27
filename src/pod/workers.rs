//! The registry of pod workers: starts a worker for each desired pod, stops
//! workers of pods no longer desired, and routes containerd events to the
//! worker that owns the container.
//!
//! A pod whose previous version (same UID, or same namespace/name after an
//! edit) is still stopping waits for it, so two workers never act on the
//! same containers and an edited static pod starts only after its old
//! version is gone, as the kubelet does. That previous version may be a
//! worker's pod or an orphan: a pod whose manifest went away while the
//! agent was down, found in containerd after the first full read of the
//! manifests and stopped as its containers' labels say.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tracing::{info, warn};

use super::checkpoint::Checkpoint;
use super::runtime::{LabelledPod, PodRuntime};
use super::worker::{stop_orphan, Worker, WorkerContext};
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
    /// Pods left by an earlier run of the agent, being stopped, by the ID
    /// of the task stopping each (a task that panics still says which).
    orphans: HashMap<tokio::task::Id, LabelledPod>,
    orphan_stops: JoinSet<()>,
    /// Desired pods held back by an older version still stopping; each is
    /// logged once.
    held: HashSet<String>,
    orphans_collected: bool,
}

impl<R: PodRuntime> Workers<R> {
    pub fn new(ctx: Arc<WorkerContext<R>>) -> Workers<R> {
        Workers {
            ctx,
            workers: HashMap::new(),
            by_prefix: HashMap::new(),
            tasks: JoinSet::new(),
            orphans: HashMap::new(),
            orphan_stops: JoinSet::new(),
            held: HashSet::new(),
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
                Some(done) = self.orphan_stops.join_next_with_id() => {
                    let id = match done {
                        Ok((id, ())) => id,
                        Err(e) => e.id(),
                    };
                    self.orphans.remove(&id);
                    self.reconcile(&state).await;
                }
            }
        }
    }

    async fn reconcile(&mut self, state: &DesiredState) {
        if !state.synced {
            return;
        }
        // Before any worker starts: a new pod may have an orphan's name.
        if !self.orphans_collected {
            self.orphans_collected = true;
            self.collect_orphans(state).await;
        }
        for (uid, handle) in &mut self.workers {
            if !state.pods.contains_key(uid) {
                if let Some(stop) = handle.stop.take() {
                    info!(pod = %handle.pod.name(), uid, "pod no longer desired; stopping");
                    let _ = stop.send(());
                }
            }
        }
        self.held.retain(|uid| state.pods.contains_key(uid));
        for (uid, pod) in &state.pods {
            if self.workers.contains_key(uid) {
                continue;
            }
            if let Some(old) = self.previous_version(pod) {
                if self.held.insert(uid.clone()) {
                    info!(pod = %pod.name(), uid, old_uid = %old, "waiting for the pod's previous version to stop before starting it");
                }
                continue;
            }
            self.held.remove(uid);
            self.spawn(pod.clone());
        }
    }

    /// The UID of an older version of `pod` that is still stopping: a
    /// worker's pod of the same name, or an orphan of the same name or UID.
    fn previous_version(&self, pod: &DesiredPod) -> Option<String> {
        let same_name =
            |namespace: &str, name: &str| name == pod.name() && namespace == pod.namespace();
        let stopping_worker = self
            .workers
            .values()
            .find(|h| h.stop.is_none() && same_name(h.pod.namespace(), h.pod.name()))
            .map(|h| h.pod.uid().to_string());
        stopping_worker.or_else(|| {
            self.orphans
                .values()
                .find(|o| o.uid == pod.uid() || same_name(&o.namespace, &o.name))
                .map(|o| o.uid.clone())
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

    /// Once, after the first full read of the manifests: stops and removes
    /// pods that are not desired (left by an earlier run of the agent whose
    /// manifests were removed meanwhile), each as a pod is stopped.
    async fn collect_orphans(&mut self, state: &DesiredState) {
        let pods = match self.ctx.runtime.pods().await {
            Ok(pods) => pods,
            Err(e) => {
                warn!(error = %e, "cannot list containers to clean up");
                return;
            }
        };
        for pod in pods
            .into_iter()
            .filter(|p| !state.pods.contains_key(&p.uid))
        {
            info!(pod = %pod.name, uid = %pod.uid, "stopping a pod that is no longer desired");
            let runtime = self.ctx.runtime.clone();
            let recorder = self.ctx.recorder.clone();
            let checkpoint = Checkpoint::path(&self.ctx.state_dir, &pod.uid);
            let orphan = pod.clone();
            let task = self.orphan_stops.spawn(async move {
                // The checkpoint stays with containers that could not go.
                if !stop_orphan(runtime.as_ref(), &recorder, &orphan).await {
                    return;
                }
                let removed = checkpoint
                    .map_err(std::io::Error::other)
                    .and_then(|path| Checkpoint::remove(&path));
                if let Err(e) = removed {
                    warn!(uid = %orphan.uid, error = %e, "cannot remove the pod's checkpoint");
                }
            });
            self.orphans.insert(task.id(), pod);
        }
    }
}
