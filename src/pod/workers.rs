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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use k8s_openapi::api::core::v1::{ExecAction, LifecycleHandler};

    use super::*;
    use crate::desired::DesiredWriter;
    use crate::pod::fake::FakeRuntime;
    use crate::runtime::containerd::exec::ExecOutput;
    use crate::runtime::stop_labels::StopLabels;
    use crate::status::events::{test_recorder, Occurrence};
    use crate::status::store::StatusStore;

    const OLD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers:\n  - {name: app, image: x:1}\n";
    const NEW: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers:\n  - {name: app, image: x:2}\n";

    fn pod(manifest: &str) -> Arc<DesiredPod> {
        let path = std::path::Path::new("/m/web.yaml");
        Arc::new(crate::manifest::parse::parse_manifest(manifest.as_bytes(), path, "n").unwrap())
    }

    struct Node {
        fake: Arc<FakeRuntime>,
        desired: DesiredWriter,
        _events: mpsc::Receiver<Occurrence>,
        _runtime_events: mpsc::Sender<RuntimeEvent>,
        _dir: tempfile::TempDir,
    }

    /// An agent coming back to `old`'s containers, left running with a
    /// preStop hook and a 30 s grace period; its app container ignores
    /// its stop signal.
    fn agent_with_orphan(old: &DesiredPod) -> Node {
        let fake = Arc::new(FakeRuntime::new(&["x:1", "x:2"]));
        let mut run = labels::for_run(old, "app", 0);
        let stop = StopLabels {
            pre_stop: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(vec!["pre".into()]),
                }),
                ..Default::default()
            }),
            grace_period: Some(Duration::from_secs(30)),
            stop_signal: Some(libc::SIGQUIT),
        };
        stop.insert_into(&mut run).unwrap();
        let sandbox = labels::for_container(old, labels::SANDBOX_NAME);
        fake.add_running(&labels::sandbox_id(old.uid()), sandbox, false);
        fake.add_running(&labels::container_id(old.uid(), "app", 0), run, true);
        let output = ExecOutput {
            exit_code: 0,
            output: String::new(),
            timed_out: false,
        };
        fake.script_exec("pre", vec![Ok(output)]);
        let dir = tempfile::tempdir().unwrap();
        let (recorder, events) = test_recorder();
        let ctx = Arc::new(WorkerContext {
            runtime: fake.clone(),
            status: Arc::new(StatusStore::default()),
            recorder,
            pod_log_dir: dir.path().join("logs"),
            state_dir: dir.path().join("state"),
        });
        let (desired, reader) = crate::desired::channel();
        let (runtime_events, runtime_events_rx) = mpsc::channel(1);
        tokio::spawn(Workers::new(ctx).run(reader, runtime_events_rx));
        Node {
            fake,
            desired,
            _events: events,
            _runtime_events: runtime_events,
            _dir: dir,
        }
    }

    fn position(calls: &[String], call: &str) -> Option<usize> {
        calls.iter().position(|c| c == call)
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_pod_of_an_orphans_name_starts_only_once_the_orphan_is_stopped_as_it_asked() {
        let (old, new) = (pod(OLD), pod(NEW));
        assert_ne!(old.uid(), new.uid());
        let node = agent_with_orphan(&old);
        node.desired
            .replace(BTreeMap::from([(new.uid().to_string(), new.clone())]));
        tokio::time::sleep(Duration::from_secs(20)).await;
        let app = labels::container_id(old.uid(), "app", 0);
        let calls = node.fake.calls();
        let prepare_new = format!("prepare {}", new.uid());
        assert!(
            position(&calls, &format!("exec {app} pre")).is_some(),
            "{calls:?}"
        );
        assert_eq!(position(&calls, &prepare_new), None, "{calls:?}");
        tokio::time::sleep(Duration::from_secs(20)).await;
        let calls = node.fake.calls();
        let removed = position(&calls, &format!("remove-pod {}", old.uid()));
        let prepared = position(&calls, &prepare_new);
        assert!(removed.is_some() && prepared.is_some(), "{calls:?}");
        assert!(removed < prepared, "{calls:?}");
        let signals = node.fake.signals();
        assert!(
            signals.contains(&(app, libc::SIGQUIT, Duration::from_secs(30))),
            "{signals:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_manifest_coming_back_waits_for_its_pod_to_finish_stopping_as_an_orphan() {
        let old = pod(OLD);
        let node = agent_with_orphan(&old);
        node.desired.replace(BTreeMap::new());
        tokio::time::sleep(Duration::from_secs(5)).await;
        node.desired
            .replace(BTreeMap::from([(old.uid().to_string(), old.clone())]));
        tokio::time::sleep(Duration::from_secs(5)).await;
        let prepare = format!("prepare {}", old.uid());
        assert_eq!(position(&node.fake.calls(), &prepare), None);
        tokio::time::sleep(Duration::from_secs(30)).await;
        let calls = node.fake.calls();
        let removed = position(&calls, &format!("remove-pod {}", old.uid()));
        assert!(
            removed.is_some() && removed < position(&calls, &prepare),
            "{calls:?}"
        );
    }

    #[tokio::test]
    async fn an_orphans_largest_grace_period_does_not_overflow_a_deadline() {
        let old = pod(OLD);
        let fake = FakeRuntime::new(&[]);
        let mut run = labels::for_run(&old, "app", 0);
        run.insert(
            crate::runtime::stop_labels::GRACE_PERIOD.into(),
            i64::MAX.to_string(),
        );
        // A closed port on loopback: the hook fails at once.
        let hook = r#"{"httpGet":{"host":"127.0.0.1","port":1,"path":"/"}}"#;
        run.insert(
            crate::runtime::stop_labels::PRE_STOP_HANDLER.into(),
            hook.into(),
        );
        let app = labels::container_id(old.uid(), "app", 0);
        fake.add_running(&app, run, false);
        let (recorder, mut events) = test_recorder();
        let orphan = LabelledPod {
            uid: old.uid().into(),
            namespace: old.namespace().into(),
            name: old.name().into(),
        };
        assert!(stop_orphan(&fake, &recorder, &orphan).await);
        let mut reasons = Vec::new();
        while let Ok(o) = events.try_recv() {
            reasons.push(o.reason);
        }
        assert_eq!(reasons, ["Killing", "FailedPreStopHook"]);
        assert_eq!(fake.signals()[0].0, app);
    }
}
