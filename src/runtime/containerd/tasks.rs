//! Containers and their tasks: create, start, signal, wait, remove, list.

use std::collections::HashMap;

use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{PrepareSnapshotRequest, RemoveSnapshotRequest};
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteTaskRequest, GetRequest, KillRequest, ListContainersRequest, StartRequest, WaitRequest,
};
use containerd_client::types::v1::Status as TaskStatus;

use super::client::{rpc, Containerd, RuntimeError};
use super::images::SNAPSHOTTER;

/// The runc shim, as containerd's CRI plugin uses by default.
const RUNTIME: &str = "io.containerd.runc.v2";

/// Everything needed to create one container and its task.
pub struct NewContainer<'a> {
    pub id: &'a str,
    pub image: &'a str,
    /// Parent snapshot of the rootfs: the image's top chain ID.
    pub chain_id: &'a str,
    pub spec: &'a oci_spec::runtime::Spec,
    pub labels: HashMap<String, String>,
    /// Where the task's stdout and stderr go: an existing file's path or a
    /// `binary://` logger URI; `None` discards them.
    pub log_target: Option<&'a str>,
}

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskExit {
    pub exit_status: u32,
    pub exited_at: Option<jiff::Timestamp>,
}

/// A task's state as containerd reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    Running {
        pid: u32,
    },
    Stopped(TaskExit),
    /// Created but not started, paused, or unknown.
    Other,
}

impl Containerd {
    /// Creates the container record, its rootfs snapshot and its task, and
    /// returns the task's PID. The record is made first: it references the
    /// snapshot key, which protects the snapshot from garbage collection as
    /// soon as it exists, without a lease.
    pub async fn create_container(&self, new: NewContainer<'_>) -> Result<u32, RuntimeError> {
        let spec_json = serde_json::to_vec(new.spec).map_err(|e| RuntimeError::Image {
            image: new.image.into(),
            reason: format!("serializing the OCI spec: {e}"),
        })?;
        let container = Container {
            id: new.id.into(),
            labels: new.labels,
            image: new.image.into(),
            runtime: Some(Runtime {
                name: RUNTIME.into(),
                options: None,
            }),
            spec: Some(prost_types::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
                value: spec_json,
            }),
            snapshotter: SNAPSHOTTER.into(),
            snapshot_key: new.id.into(),
            ..Default::default()
        };
        let mut containers = ContainersClient::new(self.channel.clone());
        let request = CreateContainerRequest {
            container: Some(container),
        };
        containers
            .create(self.request(request, None))
            .await
            .map_err(rpc("create container", new.id))?;

        let mut snapshots = SnapshotsClient::new(self.channel.clone());
        let prepare = PrepareSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: new.id.into(),
            parent: new.chain_id.into(),
            labels: HashMap::new(),
        };
        let mounts = snapshots
            .prepare(self.request(prepare, None))
            .await
            .map_err(rpc("prepare rootfs", new.id))?
            .into_inner()
            .mounts;

        let log = new.log_target.unwrap_or_default().to_string();
        let mut tasks = TasksClient::new(self.channel.clone());
        let request = CreateTaskRequest {
            container_id: new.id.into(),
            rootfs: mounts,
            stdout: log.clone(),
            stderr: log,
            ..Default::default()
        };
        let created = tasks
            .create(self.request(request, None))
            .await
            .map_err(rpc("create task", new.id))?;
        Ok(created.into_inner().pid)
    }

    pub async fn start_task(&self, id: &str) -> Result<u32, RuntimeError> {
        let mut tasks = TasksClient::new(self.channel.clone());
        let request = StartRequest {
            container_id: id.into(),
            exec_id: String::new(),
        };
        let started = tasks
            .start(self.request(request, None))
            .await
            .map_err(rpc("start task", id))?;
        Ok(started.into_inner().pid)
    }

    /// Sends `signal` to the task's init process (`all`: to every process).
    pub async fn kill_task(&self, id: &str, signal: u32, all: bool) -> Result<(), RuntimeError> {
        let mut tasks = TasksClient::new(self.channel.clone());
        let request = KillRequest {
            container_id: id.into(),
            exec_id: String::new(),
            signal,
            all,
        };
        tasks
            .kill(self.request(request, None))
            .await
            .map_err(rpc("kill task", id))?;
        Ok(())
    }

    /// Waits until the task exits (immediately if it already has).
    pub async fn wait_task(&self, id: &str) -> Result<TaskExit, RuntimeError> {
        let mut tasks = TasksClient::new(self.channel.clone());
        let request = WaitRequest {
            container_id: id.into(),
            exec_id: String::new(),
        };
        let response = tasks
            .wait(self.request(request, None))
            .await
            .map_err(rpc("wait task", id))?
            .into_inner();
        Ok(TaskExit {
            exit_status: response.exit_status,
            exited_at: response.exited_at.and_then(timestamp),
        })
    }

    pub async fn task_state(&self, id: &str) -> Result<TaskState, RuntimeError> {
        let mut tasks = TasksClient::new(self.channel.clone());
        let request = GetRequest {
            container_id: id.into(),
            exec_id: String::new(),
        };
        let process = tasks
            .get(self.request(request, None))
            .await
            .map_err(rpc("get task", id))?
            .into_inner()
            .process
            .unwrap_or_default();
        Ok(match TaskStatus::try_from(process.status) {
            Ok(TaskStatus::Running) => TaskState::Running { pid: process.pid },
            Ok(TaskStatus::Stopped) => TaskState::Stopped(TaskExit {
                exit_status: process.exit_status,
                exited_at: process.exited_at.and_then(timestamp),
            }),
            _ => TaskState::Other,
        })
    }

    /// Removes a container completely: its task (killed if still running),
    /// the container record and its rootfs snapshot. Parts already gone are
    /// skipped, so this is safe to repeat.
    pub async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        let mut tasks = TasksClient::new(self.channel.clone());
        let delete = || DeleteTaskRequest {
            container_id: id.into(),
        };
        match tasks.delete(self.request(delete(), None)).await {
            Ok(_) => {}
            Err(status) if status.code() == tonic::Code::NotFound => {}
            Err(_) => {
                // Still running (containerd 1.6 says so with code Unknown):
                // kill everything in it, wait for the exit, then delete.
                ignore_not_found(self.kill_task(id, libc::SIGKILL as u32, true).await)?;
                ignore_not_found(self.wait_task(id).await.map(drop))?;
                ignore_not_found(
                    tasks
                        .delete(self.request(delete(), None))
                        .await
                        .map(drop)
                        .map_err(rpc("delete task", id)),
                )?;
            }
        }
        let mut containers = ContainersClient::new(self.channel.clone());
        let request = DeleteContainerRequest { id: id.into() };
        ignore_not_found(
            containers
                .delete(self.request(request, None))
                .await
                .map(drop)
                .map_err(rpc("delete container", id)),
        )?;
        let mut snapshots = SnapshotsClient::new(self.channel.clone());
        let request = RemoveSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: id.into(),
        };
        ignore_not_found(
            snapshots
                .remove(self.request(request, None))
                .await
                .map(drop)
                .map_err(rpc("remove snapshot", id)),
        )
    }

    /// Deletes a task that has exited, releasing its shim (and the log
    /// writer the shim runs, which only sees end-of-file then). The
    /// container record and its snapshot stay.
    pub async fn delete_task(&self, id: &str) -> Result<(), RuntimeError> {
        let mut tasks = TasksClient::new(self.channel.clone());
        let request = DeleteTaskRequest {
            container_id: id.into(),
        };
        ignore_not_found(
            tasks
                .delete(self.request(request, None))
                .await
                .map(drop)
                .map_err(rpc("delete task", id)),
        )
    }

    /// Containers matching a containerd filter (e.g. a label selector).
    pub async fn list_containers(&self, filter: &str) -> Result<Vec<Container>, RuntimeError> {
        let mut containers = ContainersClient::new(self.channel.clone());
        let request = ListContainersRequest {
            filters: vec![filter.into()],
        };
        Ok(containers
            .list(self.request(request, None))
            .await
            .map_err(rpc("list containers", filter))?
            .into_inner()
            .containers)
    }
}

fn ignore_not_found(result: Result<(), RuntimeError>) -> Result<(), RuntimeError> {
    match result {
        Err(e) if e.is_not_found() => Ok(()),
        other => other,
    }
}

/// containerd's zero time (year 1) means "not set".
pub(crate) fn timestamp(t: prost_types::Timestamp) -> Option<jiff::Timestamp> {
    if t.seconds <= 0 {
        return None;
    }
    jiff::Timestamp::new(t.seconds, t.nanos).ok()
}
