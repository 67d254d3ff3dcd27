//! An in-memory [`PodRuntime`] for worker tests: images are a set of names,
//! containers a map, and every call is recorded for assertions.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

use super::runtime::{
    ExistingContainer, LabelledPod, PodRuntime, SandboxEnvironment, SandboxFailure,
};
use crate::desired::DesiredPod;
use crate::images::policy::{Ensured, ImageError, OnPull, Provenance, PullPolicy};
use crate::runtime::containerd::exec::ExecOutput;
use crate::runtime::containerd::images::ResolvedImage;
use crate::runtime::containerd::tasks::{NewContainer, TaskState};
use crate::runtime::containerd::RuntimeError;
use crate::runtime::ImageConfig;

#[derive(Default)]
struct State {
    /// Images that can be had (present or pullable).
    images: HashSet<String>,
    /// Containers: ID → what containerd would know of it.
    containers: HashMap<String, FakeContainer>,
    calls: Vec<String>,
    next_pid: u32,
    /// Scripted exec results by the command's first word, used in order;
    /// the last one repeats.
    exec_results: HashMap<String, VecDeque<Result<ExecOutput, String>>>,
    /// The next `run_container` of this container fails with this message.
    fail_next_run: Option<(String, String)>,
    /// Containers whose ID contains this cannot be removed.
    unremovable: Option<String>,
    /// Each `stop_container`: the container, signal and grace period.
    signals: Vec<(String, i32, Duration)>,
}

#[derive(Clone)]
struct FakeContainer {
    pid: u32,
    name: String,
    restart_count: Option<u32>,
    /// `None` once the task is deleted.
    task: Option<TaskState>,
    labels: HashMap<String, String>,
    /// Ignores its stop signal: only SIGKILL at the end of the grace
    /// period stops it.
    stubborn: bool,
}

pub struct FakeRuntime {
    state: Mutex<State>,
    /// Where the fake prepares (empty) volumes.
    volumes: tempfile::TempDir,
    arrivals: watch::Sender<u64>,
    sandbox: ResolvedImage,
}

pub fn image(name: &str) -> ResolvedImage {
    ResolvedImage {
        name: name.into(),
        digest: format!("sha256:{name}"),
        config: ImageConfig {
            entrypoint: vec!["/entry".into()],
            ..Default::default()
        },
        chain_id: "sha256:chain".into(),
        size: 1,
    }
}

impl FakeRuntime {
    pub fn new(images: &[&str]) -> FakeRuntime {
        FakeRuntime {
            state: Mutex::new(State {
                images: images.iter().map(|s| s.to_string()).collect(),
                next_pid: 100,
                ..Default::default()
            }),
            arrivals: watch::channel(0).0,
            sandbox: image("pause"),
            volumes: tempfile::tempdir().expect("a temporary directory"),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// An image becomes available, as after an import.
    pub fn add_image(&self, name: &str) {
        self.state().images.insert(name.into());
        self.arrivals.send_modify(|n| *n += 1);
    }

    /// Scripts what running a command starting with `program` returns,
    /// one result per call, the last repeating; `Err` is a runtime error.
    pub fn script_exec(&self, program: &str, results: Vec<Result<ExecOutput, String>>) {
        self.state()
            .exec_results
            .insert(program.into(), results.into());
    }

    pub fn calls(&self) -> Vec<String> {
        self.state().calls.clone()
    }

    /// The task of container `id` exits with `status` behind the worker's
    /// back (as while the agent was down).
    pub fn exit_task(&self, id: &str, status: u32) {
        if let Some(c) = self.state().containers.get_mut(id) {
            c.task = Some(TaskState::Stopped(
                crate::runtime::containerd::tasks::TaskExit {
                    exit_status: status,
                    exited_at: None,
                },
            ));
        }
    }

    /// Removing container `container` fails from now on, as when
    /// containerd cannot kill or delete its task.
    pub fn make_unremovable(&self, container: &str) {
        self.state().unremovable = Some(format!("-c-{container}-"));
    }

    pub fn fail_next_run(&self, container: &str, message: &str) {
        self.state().fail_next_run = Some((format!("-c-{container}-"), message.into()));
    }

    pub fn pid_of(&self, id: &str) -> Option<u32> {
        self.state().containers.get(id).map(|c| c.pid)
    }

    /// A running container left by an earlier run of the agent, with these
    /// labels; `stubborn` ignores its stop signal.
    pub fn add_running(&self, id: &str, labels: HashMap<String, String>, stubborn: bool) {
        let mut state = self.state();
        state.next_pid += 1;
        let pid = state.next_pid;
        let container = FakeContainer {
            pid,
            name: labels
                .get(crate::runtime::labels::CONTAINER_NAME)
                .cloned()
                .unwrap_or_default(),
            restart_count: None,
            task: Some(TaskState::Running { pid }),
            labels,
            stubborn,
        };
        state.containers.insert(id.into(), container);
    }

    /// Each `stop_container` so far: the container, signal and grace.
    pub fn signals(&self) -> Vec<(String, i32, Duration)> {
        self.state().signals.clone()
    }

    pub fn live_containers(&self) -> Vec<String> {
        let mut ids: Vec<_> = self.state().containers.keys().cloned().collect();
        ids.sort();
        ids
    }
}

impl PodRuntime for FakeRuntime {
    async fn prepare_sandbox(
        &self,
        pod: &DesiredPod,
    ) -> Result<SandboxEnvironment, SandboxFailure> {
        self.state().calls.push(format!("prepare {}", pod.uid()));
        self.environment(pod)
    }

    async fn connect_sandbox(
        &self,
        pod: &DesiredPod,
        _environment: &mut SandboxEnvironment,
    ) -> Result<(), SandboxFailure> {
        self.state().calls.push(format!("connect {}", pod.uid()));
        Ok(())
    }

    async fn adopt_sandbox(&self, pod: &DesiredPod) -> Result<SandboxEnvironment, SandboxFailure> {
        self.state().calls.push(format!("adopt {}", pod.uid()));
        self.environment(pod)
    }

    async fn release_sandbox(&self, pod: &DesiredPod) -> bool {
        let prefix = crate::runtime::labels::id_prefix(pod.uid());
        let mut state = self.state();
        if state.containers.keys().any(|id| id.starts_with(&prefix)) {
            state.calls.push(format!("release-refused {}", pod.uid()));
            return false;
        }
        state.calls.push(format!("release {}", pod.uid()));
        true
    }

    fn log_target(&self, path: &std::path::Path) -> String {
        path.display().to_string()
    }

    async fn ensure_image(
        &self,
        image: &str,
        _policy: PullPolicy,
        on_pull: OnPull,
    ) -> Result<Ensured, ImageError> {
        on_pull();
        let mut state = self.state();
        state.calls.push(format!("pull {image}"));
        if state.images.contains(image) {
            Ok(Ensured {
                image: self::image(image),
                provenance: Provenance::Pulled {
                    duration: Duration::from_millis(1),
                },
            })
        } else {
            Err(ImageError::Pull(format!("{image}: not found")))
        }
    }

    fn image_arrivals(&self) -> watch::Receiver<u64> {
        self.arrivals.subscribe()
    }

    fn sandbox_image(&self) -> &ResolvedImage {
        &self.sandbox
    }

    async fn run_container(&self, new: NewContainer<'_>) -> Result<u32, RuntimeError> {
        let mut state = self.state();
        state.calls.push(format!("run {}", new.id));
        let fails =
            matches!(&state.fail_next_run, Some((part, _)) if new.id.contains(part.as_str()));
        if let Some((_, message)) = state.fail_next_run.take_if(|_| fails) {
            return Err(RuntimeError::Image {
                image: new.image.into(),
                reason: message,
            });
        }
        state.next_pid += 1;
        let pid = state.next_pid;
        let label = |key: &str| new.labels.get(key).cloned();
        let container = FakeContainer {
            pid,
            name: label(crate::runtime::labels::CONTAINER_NAME).unwrap_or_default(),
            restart_count: label(crate::runtime::labels::RESTART_COUNT)
                .and_then(|n| n.parse().ok()),
            task: Some(TaskState::Running { pid }),
            labels: new.labels.clone(),
            stubborn: false,
        };
        state.containers.insert(new.id.to_string(), container);
        Ok(pid)
    }

    async fn stop_container(&self, id: &str, signal: i32, grace: Duration) -> bool {
        let stubborn = {
            let mut state = self.state();
            state.calls.push(format!("stop {id}"));
            state.signals.push((id.to_string(), signal, grace));
            state.containers.get(id).is_some_and(|c| c.stubborn)
        };
        if stubborn {
            tokio::time::sleep(grace).await;
        }
        stubborn
    }

    async fn delete_task(&self, id: &str) -> Result<(), RuntimeError> {
        let mut state = self.state();
        state.calls.push(format!("delete-task {id}"));
        if let Some(c) = state.containers.get_mut(id) {
            c.task = None;
        }
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        let mut state = self.state();
        state.calls.push(format!("remove {id}"));
        if state
            .unremovable
            .as_ref()
            .is_some_and(|u| id.contains(u.as_str()))
        {
            return Err(RuntimeError::Rpc {
                op: "delete task",
                object: id.into(),
                status: tonic::Status::unknown("cannot kill the task"),
            });
        }
        state.containers.remove(id);
        Ok(())
    }

    async fn remove_pod(&self, uid: &str) -> bool {
        let prefix = crate::runtime::labels::id_prefix(uid);
        let mut state = self.state();
        state.calls.push(format!("remove-pod {uid}"));
        let unremovable = state.unremovable.clone();
        let stuck = |id: &str| {
            unremovable
                .as_ref()
                .is_some_and(|u| id.contains(u.as_str()))
        };
        state
            .containers
            .retain(|id, _| !id.starts_with(&prefix) || stuck(id));
        !state.containers.keys().any(|id| id.starts_with(&prefix))
    }

    async fn pod_containers(&self, uid: &str) -> Result<Vec<ExistingContainer>, RuntimeError> {
        let prefix = crate::runtime::labels::id_prefix(uid);
        let state = self.state();
        let mut existing: Vec<ExistingContainer> = state
            .containers
            .iter()
            .filter(|(id, _)| id.starts_with(&prefix))
            .map(|(id, c)| ExistingContainer {
                id: id.clone(),
                name: c.name.clone(),
                restart_count: c.restart_count,
                created_at: None,
                task: c.task,
                labels: c.labels.clone(),
            })
            .collect();
        existing.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(existing)
    }

    async fn pods(&self) -> Result<Vec<LabelledPod>, RuntimeError> {
        let state = self.state();
        let mut pods: Vec<LabelledPod> = state
            .containers
            .values()
            .filter_map(|c| {
                let label = |key: &str| c.labels.get(key).cloned().unwrap_or_default();
                Some(LabelledPod {
                    uid: c.labels.get(crate::runtime::labels::POD_UID)?.clone(),
                    namespace: label(crate::runtime::labels::POD_NAMESPACE),
                    name: label(crate::runtime::labels::POD_NAME),
                })
            })
            .collect();
        pods.sort_by(|a, b| a.uid.cmp(&b.uid));
        pods.dedup_by(|a, b| a.uid == b.uid);
        Ok(pods)
    }

    fn pod_ip(&self, _uid: &str) -> Option<String> {
        Some("10.0.0.9".into())
    }

    async fn task_state(&self, id: &str) -> Result<TaskState, RuntimeError> {
        let state = self.state();
        Ok(match state.containers.get(id).and_then(|c| c.task) {
            Some(task) => task,
            None => TaskState::Other,
        })
    }

    async fn exec(
        &self,
        id: &str,
        command: &[String],
        _timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError> {
        let mut state = self.state();
        state.calls.push(format!("exec {id} {}", command.join(" ")));
        let program = command.first().map(String::as_str).unwrap_or_default();
        let scripted = state.exec_results.get_mut(program).and_then(|results| {
            if results.len() > 1 {
                results.pop_front()
            } else {
                results.front().cloned()
            }
        });
        match scripted {
            Some(Ok(output)) => Ok(output),
            Some(Err(message)) => Err(RuntimeError::Rpc {
                op: "exec in",
                object: id.into(),
                status: tonic::Status::unknown(message),
            }),
            None => Err(RuntimeError::Rpc {
                op: "exec in",
                object: id.into(),
                status: tonic::Status::not_found(format!("{program}: not scripted")),
            }),
        }
    }
}

impl FakeRuntime {
    fn environment(&self, pod: &DesiredPod) -> Result<SandboxEnvironment, SandboxFailure> {
        let volumes =
            super::volumes::prepare(pod, &self.volumes.path().join(pod.uid())).map_err(|e| {
                SandboxFailure {
                    reason: e.reason(),
                    message: e.to_string(),
                }
            })?;
        Ok(SandboxEnvironment {
            facts: Default::default(),
            files: None,
            netns: None,
            cgroup_parent: format!("/fake/pod{}", pod.uid()),
            qos: crate::runtime::resources::QosClass::BestEffort,
            volumes,
            warnings: Vec::new(),
            min_oom_score_adj: -1000,
        })
    }
}
