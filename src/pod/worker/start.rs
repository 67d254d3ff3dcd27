//! Starting containers: the image by pull policy (with the kubelet's
//! events), the container's limits, mounts and log target, then the
//! container and its task; and the bookkeeping of each attempt.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::Container;
use tokio::time::Instant;
use tracing::warn;

use super::{StartFailure, Started, Worker};
use crate::images::policy::{Ensured, ImageError, Provenance, PullPolicy};
use crate::logs;
use crate::pod::plan::PULL_ERROR_VISIBLE;
use crate::pod::runtime::PodRuntime;
use crate::pod::state::RunState;
use crate::pod::volumes;
use crate::runtime::containerd::tasks::NewContainer;
use crate::runtime::spec::{ContainerInputs, SandboxFacts};
use crate::runtime::{cgroups, labels, resources, spec};
use crate::status::events::{EventType, ObjectRef};

impl<R: PodRuntime> Worker<R> {
    /// Starts the named containers in parallel and records the outcomes.
    pub(super) async fn start_containers(&mut self, names: &[String]) {
        let (Some(pid), Some(environment)) = (self.record.sandbox_pid, &self.environment) else {
            return;
        };
        let sandbox = SandboxFacts {
            pid,
            addresses: environment.facts.clone(),
            files: environment.files.clone(),
        };
        let mut attempts = Vec::new();
        let mut superseded = Vec::new();
        for name in names {
            let Some((container, init)) = self.container_spec(name) else {
                continue;
            };
            let Some(record) = self.record.container_mut(name) else {
                continue;
            };
            let attempt = record.attempts;
            record.attempts += 1;
            superseded.extend(record.begin_attempt());
            // The kubelet names a run's log file by its restart count.
            attempts.push((container, init, attempt, record.runs));
        }
        let starts = attempts.iter().map(|(container, init, attempt, restarts)| {
            self.start_container(container, *init, *attempt, *restarts, &sandbox)
        });
        let results = futures::future::join_all(starts).await;
        let now = Instant::now();
        let mut started_names = Vec::new();
        for ((container, _, _, _), result) in attempts.iter().zip(results) {
            let Some(record) = self.record.container_mut(&container.name) else {
                continue;
            };
            match result {
                Ok(started) => {
                    record.stop_signal = started.stop_signal;
                    record.started(started.id, started.image_id, started.at);
                    started_names.push(container.name.clone());
                }
                Err(StartFailure {
                    reason: "RunContainerError",
                    message,
                    id: Some(id),
                }) => {
                    warn!(pod = %self.pod.name(), container = %container.name, file = %self.pod.source.display(), "cannot start container: {message}");
                    record.failed_to_start(id, message, now);
                }
                Err(failure) => {
                    let wait = record.retry.failed(now);
                    record.pull_backoff_at = (failure.reason == "ErrImagePull")
                        .then(|| now + PULL_ERROR_VISIBLE.min(wait / 2));
                    record.container_id = None;
                    warn!(pod = %self.pod.name(), container = %container.name, file = %self.pod.source.display(), reason = failure.reason, "cannot start container: {}; retrying in {wait:?}", failure.message);
                    record.state = RunState::Waiting {
                        reason: failure.reason.into(),
                        message: failure.message,
                    };
                }
            }
        }
        self.remove_superseded(superseded).await;
        self.after_start(&started_names).await;
    }

    /// Only the latest ended run is kept, as the kubelet's container
    /// garbage collection keeps one dead container per container.
    pub(super) async fn remove_superseded(&self, ids: impl IntoIterator<Item = String>) {
        for old in ids {
            if let Err(e) = self.ctx.runtime.remove_container(&old).await {
                warn!(container = %old, error = %e, "cannot remove the container of an earlier run");
            }
        }
    }

    /// Image, spec, log file, container, task: one attempt.
    async fn start_container(
        &self,
        container: &Container,
        init: bool,
        attempt: u32,
        restart_count: u32,
        sandbox: &SandboxFacts,
    ) -> Result<Started, StartFailure> {
        let object = ObjectRef::container(&self.pod, &container.name, init);
        let list = if init {
            "spec.initContainers"
        } else {
            "spec.containers"
        };
        let ensured = self.ensure_image(container, &object).await?;
        let recorder = &self.ctx.recorder;
        let fail = |reason: &'static str, message: String| {
            recorder.record(
                object.clone(),
                EventType::Warning,
                "Failed",
                format!("Error: {message}"),
            );
            StartFailure {
                reason,
                message,
                id: None,
            }
        };
        let id = labels::container_id(self.pod.uid(), &container.name, attempt);
        let image = &ensured.image;
        let inputs = self
            .container_inputs(container, init, &id, sandbox)
            .map_err(|message| fail("CreateContainerConfigError", message))?;
        let oci = spec::container_spec(&self.pod, container, list, &image.config, sandbox, &inputs)
            .map_err(|e| {
                self.release_pins(&id);
                fail("CreateContainerConfigError", e.to_string())
            })?;
        let log_file = self
            .prepare_log_file(&container.name, restart_count)
            .map_err(|e| {
                self.release_pins(&id);
                fail(
                    "CreateContainerError",
                    format!("creating the log file: {e}"),
                )
            })?;
        let log_target = self.ctx.runtime.log_target(&log_file);
        let new = NewContainer {
            id: &id,
            image: &image.name,
            chain_id: &image.chain_id,
            spec: &oci,
            labels: self.run_labels(container, restart_count, image.config.stop_signal()),
            log_target: Some(&log_target),
        };
        match self.ctx.runtime.run_container(new).await {
            Ok(_) => {}
            Err(e) => {
                let _ = self.ctx.runtime.remove_container(&id).await;
                return Err(StartFailure {
                    id: Some(id),
                    ..fail("RunContainerError", e.to_string())
                });
            }
        }
        let name = &container.name;
        recorder.record(
            object.clone(),
            EventType::Normal,
            "Created",
            format!("Created container: {name}"),
        );
        recorder.record(
            object,
            EventType::Normal,
            "Started",
            format!("Started container {name}"),
        );
        Ok(Started {
            id,
            image_id: image.digest.clone(),
            at: jiff::Timestamp::now(),
            stop_signal: image.config.stop_signal(),
        })
    }

    /// Cgroup, limits and volume mounts of one container.
    fn container_inputs(
        &self,
        container: &Container,
        init: bool,
        id: &str,
        sandbox: &SandboxFacts,
    ) -> Result<ContainerInputs, String> {
        let Some(environment) = &self.environment else {
            return Err("the pod sandbox is not ready".into());
        };
        let spec = self.pod.pod.spec.clone().unwrap_or_default();
        let list = if init {
            "spec.initContainers"
        } else {
            "spec.containers"
        };
        let limits = resources::container_resources(
            &spec,
            container,
            init,
            environment.qos,
            environment.facts.node_memory,
        )
        .map_err(|e| e.to_string())?;
        let variables = crate::runtime::env::container_variables(
            &self.pod,
            container,
            list,
            &sandbox.addresses,
        )
        .map_err(|e| e.to_string())?;
        let privileged = container
            .security_context
            .as_ref()
            .and_then(|s| s.privileged)
            .unwrap_or(false);
        let mounts = volumes::container_mounts(
            &environment.volumes,
            container,
            id,
            list,
            privileged,
            &variables.into_iter().collect(),
        )
        .map_err(|e| e.to_string())?;
        Ok(ContainerInputs {
            cgroup_path: cgroups::container_cgroup_path(&environment.cgroup_parent, id),
            rootfs_propagation: volumes::rootfs_propagation(&mounts).map(String::from),
            mounts,
            resources: Some(resources::to_oci(&limits)),
            oom_score_adj: Some(limits.oom_score_adj.max(environment.min_oom_score_adj)),
        })
    }

    /// Releases the subPaths pinned for a container that will not be
    /// created; a created one's are released when it is removed.
    fn release_pins(&self, id: &str) {
        if let Some(environment) = &self.environment {
            if let Err(e) = volumes::release_sub_paths(environment.volumes.root(), id) {
                warn!(pod = %self.pod.name(), container = id, error = %e, "cannot release the pinned subPaths");
            }
        }
    }

    /// The image by the container's pull policy, with the kubelet's events.
    async fn ensure_image(
        &self,
        container: &Container,
        object: &ObjectRef,
    ) -> Result<Ensured, StartFailure> {
        let image = container.image.clone().unwrap_or_default();
        let policy = PullPolicy::parse(container.image_pull_policy.as_deref());
        let recorder = self.ctx.recorder.clone();
        let on_pull = {
            let (recorder, object, image) = (recorder.clone(), object.clone(), image.clone());
            Box::new(move || {
                recorder.record(
                    object,
                    EventType::Normal,
                    "Pulling",
                    format!("Pulling image {image:?}"),
                );
            })
        };
        match self.ctx.runtime.ensure_image(&image, policy, on_pull).await {
            Ok(ensured) => {
                let message = match &ensured.provenance {
                    Provenance::AlreadyPresent => {
                        format!("Container image {image:?} already present on machine")
                    }
                    Provenance::Pulled { duration } => format!(
                        "Successfully pulled image {image:?} in {duration:.3?} ({duration:.3?} including waiting). Image size: {} bytes.",
                        ensured.image.size
                    ),
                    Provenance::LocalFallback { error } => {
                        recorder.record(
                            object.clone(),
                            EventType::Warning,
                            "RegistryUnreachable",
                            format!("Cannot reach the registry for {image:?} ({error}); using the image already present on machine"),
                        );
                        format!("Container image {image:?} already present on machine")
                    }
                };
                recorder.record(object.clone(), EventType::Normal, "Pulled", message);
                Ok(ensured)
            }
            Err(error) => {
                let (reason, message) = match &error {
                    ImageError::InvalidName(e) => (
                        "InspectFailed",
                        format!("Failed to apply default image tag {image:?}: {e}"),
                    ),
                    ImageError::NeverPull(_) => ("ErrImageNeverPull", error.to_string()),
                    ImageError::Pull(e) => {
                        ("Failed", format!("Failed to pull image {image:?}: {e}"))
                    }
                    ImageError::Inspect(_) => ("InspectFailed", error.to_string()),
                };
                recorder.record(object.clone(), EventType::Warning, reason, message.clone());
                if let ImageError::Pull(_) = error {
                    recorder.record(
                        object.clone(),
                        EventType::Warning,
                        "Failed",
                        "Error: ErrImagePull",
                    );
                }
                Err(StartFailure {
                    reason: error.reason(),
                    message,
                    id: None,
                })
            }
        }
    }

    /// `ErrImagePull` becomes `ImagePullBackOff` while the next pull waits.
    pub(super) fn show_pull_backoff(&mut self, name: &str) {
        let object = ObjectRef::container(&self.pod, name, false);
        let Some(record) = self.record.container_mut(name) else {
            return;
        };
        record.pull_backoff_at = None;
        let RunState::Waiting { message, .. } = &record.state else {
            return;
        };
        let image = record.image.clone();
        record.state = RunState::Waiting {
            reason: "ImagePullBackOff".into(),
            message: format!("Back-off pulling image {image:?}: {message}"),
        };
        let recorder = &self.ctx.recorder;
        recorder.record(
            object.clone(),
            EventType::Normal,
            "BackOff",
            format!("Back-off pulling image {image:?}"),
        );
        recorder.record(
            object,
            EventType::Warning,
            "Failed",
            "Error: ImagePullBackOff",
        );
    }

    /// An image arrived: containers waiting for one try again now.
    pub(super) fn retry_image_waits(&mut self) {
        for c in &mut self.record.containers {
            if let RunState::Waiting { reason, .. } = &c.state {
                if matches!(
                    reason.as_str(),
                    "ErrImagePull" | "ImagePullBackOff" | "ErrImageNeverPull"
                ) {
                    c.retry.retry_now();
                }
            }
        }
    }

    /// `<pod-log-dir>/<namespace>_<name>_<uid>/<container>/<restart>.log`,
    /// the kubelet's layout, created empty (the shim opens it without
    /// O_CREAT), 0640 in directories 0750: logs can hold secrets. Logs of
    /// runs before the previous one are removed, as the kubelet removes
    /// them with their dead containers; the previous run's stay for
    /// `logs --previous`.
    fn prepare_log_file(&self, container: &str, restart: u32) -> std::io::Result<PathBuf> {
        let pod_dir = self.pod_log_dir().map_err(std::io::Error::other)?;
        let dir = pod_dir
            .join(&[container])
            .map_err(std::io::Error::other)?
            .path();
        logs::create_log_dir(&pod_dir.path())?;
        logs::create_log_dir(&dir)?;
        let path = dir.join(format!("{restart}.log"));
        logs::open_log_file(&path)?;
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let name = entry.file_name();
            let run = name
                .to_str()
                .and_then(|n| n.split('.').next())
                .and_then(|n| n.parse::<u32>().ok());
            if run.is_some_and(|run| run + 1 < restart) {
                if let Err(e) = std::fs::remove_file(entry.path()) {
                    warn!(file = %entry.path().display(), error = %e, "cannot remove an old log file");
                }
            }
        }
        Ok(path)
    }
}
