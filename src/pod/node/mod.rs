//! The real [`PodRuntime`]: containerd for containers, the image service
//! for images, CNI for the network, cgroupfs for pod limits, the node's
//! filesystem for volumes and shared files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tracing::warn;

mod holdings;

use holdings::SandboxHoldings;

use super::runtime::{
    ExistingContainer, LabelledPod, PodRuntime, SandboxEnvironment, SandboxFailure,
};
use super::volumes::{self, PreparedVolumes};
use crate::desired::DesiredPod;
use crate::host::{blocking, SafePath, UnsafeComponent};
use crate::images::policy::{Ensured, ImageError, OnPull, PullPolicy};
use crate::images::service::ImageService;
use crate::logs::LogSettings;
use crate::runtime::cgroups::{self, CgroupVersion};
use crate::runtime::containerd::exec::ExecOutput;
use crate::runtime::containerd::images::ResolvedImage;
use crate::runtime::containerd::tasks::{timestamp, NewContainer, TaskState};
use crate::runtime::containerd::{Containerd, RuntimeError};
use crate::runtime::env::PodFacts;
use crate::runtime::network::{hostport, netns, Network, PodNetworkRequest, PortMapping};
use crate::runtime::pod_files::{self, PodFiles};
use crate::runtime::resources::{PodCgroup, QosClass};
use crate::runtime::{labels, resources, spec};
use k8s_openapi::api::core::v1::PodSpec;

/// Node facts and settings the node runtime needs.
pub struct NodeSettings {
    pub state_dir: PathBuf,
    pub cgroup_root: String,
    pub host_ip: Option<String>,
    pub logs: LogSettings,
    /// This executable, which containerd's shim runs as the log writer.
    pub executable: PathBuf,
}

pub struct NodeRuntime {
    pub containerd: Containerd,
    pub images: Arc<ImageService>,
    pub sandbox_image: ResolvedImage,
    pub network: Network,
    pub settings: NodeSettings,
    cgroup_version: CgroupVersion,
    node_cpus: u64,
    node_memory: u64,
    min_oom_score_adj: i32,
    /// hostPorts held by each running pod (UID → pod name, mappings).
    host_ports: Mutex<HashMap<String, (String, Vec<PortMapping>)>>,
}

impl NodeRuntime {
    /// Releases what a pod's sandbox held: its network (CNI DEL, then the
    /// namespace), hostPort claims, volumes, the pod's files, its cgroup.
    /// Only once containerd has no container of the pod left (a container
    /// that could not be removed may still run on them), and only under the
    /// state directory (the UID may come from a container's labels).
    /// Returns whether it released.
    async fn release(&self, holdings: &SandboxHoldings<'_>) -> bool {
        let uid = holdings.uid;
        match self
            .containerd
            .list_containers(&labels::pod_filter(uid))
            .await
        {
            Ok(left) if left.is_empty() => {}
            Ok(left) => {
                warn!(pod = %holdings.name, uid, containers = left.len(), "containers of the pod remain; not releasing what its sandbox holds");
                return false;
            }
            Err(e) => {
                warn!(pod = %holdings.name, uid, error = %e, "cannot list the pod's containers; not releasing what its sandbox holds");
                return false;
            }
        }
        let (path, files) = match self.netns_path(uid).and_then(|path| {
            let files = PodFiles::new(&self.settings.state_dir, uid)?;
            Ok((path, files))
        }) {
            Ok(paths) => paths,
            Err(e) => {
                warn!(pod = %holdings.name, error = %e, "not releasing a pod whose UID cannot name its directories");
                return false;
            }
        };
        let sandbox_id = labels::sandbox_id(uid);
        // Nothing to undo for a pod that never got a network (the usual case
        // when a worker starts): running the CNI DEL chain would cost
        // several plugin processes per pod start.
        let has_network = path.exists() || self.network.has_result(&sandbox_id);
        if !holdings.host_network && has_network {
            let request = PodNetworkRequest {
                sandbox_id: &sandbox_id,
                netns: &path,
                pod_name: holdings.name,
                pod_namespace: holdings.namespace,
                pod_uid: holdings.uid,
                port_mappings: &holdings.port_mappings,
            };
            if let Err(e) = self.network.teardown(&request).await {
                warn!(pod = %holdings.name, error = %e, "cannot tear down the pod network");
            }
            if let Err(e) = netns::remove(&path) {
                warn!(pod = %holdings.name, error = %e, "cannot remove the network namespace");
            }
        }
        self.release_ports(uid);
        let (name, cgroup) = (holdings.name.to_string(), holdings.cgroup.clone());
        let version = self.cgroup_version;
        let released = blocking::unblock(move || {
            holdings::release_local(&name, &files, cgroup.as_deref(), version);
            Ok(())
        });
        if let Err(e) = released.await {
            warn!(pod = %holdings.name, error = %e, "cannot release the pod's volumes, files and cgroup");
        }
        true
    }

    pub fn new(
        containerd: Containerd,
        images: Arc<ImageService>,
        sandbox_image: ResolvedImage,
        network: Network,
        settings: NodeSettings,
    ) -> NodeRuntime {
        NodeRuntime {
            containerd,
            images,
            sandbox_image,
            network,
            settings,
            cgroup_version: cgroups::detect(),
            node_cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
            node_memory: resources::node_memory_capacity().unwrap_or(0),
            min_oom_score_adj: lowest_oom_score_adj(),
            host_ports: Mutex::new(HashMap::new()),
        }
    }

    fn netns_path(&self, uid: &str) -> Result<PathBuf, UnsafeComponent> {
        let name = labels::sandbox_id(uid);
        Ok(SafePath::base(&self.settings.state_dir)
            .join(&["netns", &name])?
            .path())
    }

    fn claim_ports(&self, pod: &DesiredPod, wanted: &[PortMapping]) -> Result<(), String> {
        let mut held = self.host_ports.lock().unwrap_or_else(|e| e.into_inner());
        let taken: Vec<(String, Vec<PortMapping>)> = held
            .iter()
            .filter(|(uid, _)| uid.as_str() != pod.uid())
            .map(|(_, entry)| entry.clone())
            .collect();
        if let Some(conflict) = hostport::conflict(wanted, &taken) {
            return Err(conflict);
        }
        if !wanted.is_empty() {
            let name = format!("{}/{}", pod.namespace(), pod.name());
            held.insert(pod.uid().into(), (name, wanted.to_vec()));
        }
        Ok(())
    }

    /// The pod cgroup and the volumes: what preparing and adopting a
    /// sandbox both set up, idempotently.
    fn local_parts(&self, pod: &DesiredPod, spec: &PodSpec) -> Result<LocalParts, SandboxFailure> {
        let sandbox_failed = |m: String| failure("FailedCreatePodSandBox", m);
        let qos = resources::qos_class(spec).map_err(|e| sandbox_failed(e.to_string()))?;
        let cgroup = resources::pod_cgroup(pod.uid(), spec, qos, &self.settings.cgroup_root)
            .map_err(|e| sandbox_failed(e.to_string()))?;
        cgroups::ensure_pod_cgroup(&cgroup, self.cgroup_version)
            .map_err(|e| sandbox_failed(format!("creating the pod cgroup {}: {e}", cgroup.path)))?;
        let files = PodFiles::new(&self.settings.state_dir, pod.uid())
            .map_err(|e| sandbox_failed(format!("metadata.uid: {e}")))?;
        let volumes = volumes::prepare(pod, &files.volumes().path())
            .map_err(|e| failure("FailedMount", format!("MountVolume failed: {e}")))?;
        Ok(LocalParts {
            qos,
            cgroup,
            files,
            volumes,
        })
    }

    /// The node's facts for the downward API; the pod IP is added later.
    fn facts(&self) -> PodFacts {
        PodFacts {
            pod_ip: None,
            host_ip: self.settings.host_ip.clone(),
            node_cpus: self.node_cpus,
            node_memory: self.node_memory,
        }
    }

    fn release_ports(&self, uid: &str) {
        let mut held = self.host_ports.lock().unwrap_or_else(|e| e.into_inner());
        held.remove(uid);
    }
}

/// What [`NodeRuntime::local_parts`] sets up.
struct LocalParts {
    qos: QosClass,
    cgroup: PodCgroup,
    files: PodFiles,
    volumes: PreparedVolumes,
}

impl LocalParts {
    fn environment(
        self,
        facts: PodFacts,
        netns: Option<PathBuf>,
        min_oom_score_adj: i32,
    ) -> SandboxEnvironment {
        SandboxEnvironment {
            facts,
            files: Some(self.files),
            netns,
            cgroup_parent: self.cgroup.path,
            qos: self.qos,
            volumes: self.volumes,
            warnings: Vec::new(),
            min_oom_score_adj,
        }
    }
}

/// The lowest `oom_score_adj` containers may get. Lowering it needs
/// `CAP_SYS_RESOURCE`, which some hosts (user namespaces, sandboxed VMs)
/// withhold, and runc then fails the whole container; there, containers
/// get no less than the agent's own value, as containerd's
/// `restrict_oom_score_adj` does.
fn lowest_oom_score_adj() -> i32 {
    const PATH: &str = "/proc/self/oom_score_adj";
    let Ok(current) = std::fs::read_to_string(PATH).map(|t| t.trim().parse::<i32>().unwrap_or(0))
    else {
        return 0;
    };
    if current <= -1000 || std::fs::write(PATH, (current - 1).to_string()).is_ok() {
        let _ = std::fs::write(PATH, current.to_string());
        return -1000;
    }
    warn!(oom_score_adj = current, "this host does not let podkeeper lower oom_score_adj; containers get at least the agent's own value");
    current
}

/// The CNI request for a pod: the same for ADD and DEL.
fn network_request<'a>(
    pod: &'a DesiredPod,
    sandbox_id: &'a str,
    netns: &'a Path,
    port_mappings: &'a [PortMapping],
) -> PodNetworkRequest<'a> {
    PodNetworkRequest {
        sandbox_id,
        netns,
        pod_name: pod.name(),
        pod_namespace: pod.namespace(),
        pod_uid: pod.uid(),
        port_mappings,
    }
}

fn failure(reason: &'static str, message: impl Into<String>) -> SandboxFailure {
    SandboxFailure {
        reason,
        message: message.into(),
    }
}

impl PodRuntime for NodeRuntime {
    async fn prepare_sandbox(
        &self,
        pod: &DesiredPod,
    ) -> Result<SandboxEnvironment, SandboxFailure> {
        let spec = pod.pod.spec.clone().unwrap_or_default();
        let sandbox_failed = |m: String| failure("FailedCreatePodSandBox", m);
        let parts = self.local_parts(pod, &spec)?;
        let mut facts = self.facts();
        let mut netns_path = None;
        if spec.host_network.unwrap_or(false) {
            facts.pod_ip = self.settings.host_ip.clone();
        } else {
            let mappings = hostport::port_mappings(&pod.pod);
            self.claim_ports(pod, &mappings).map_err(sandbox_failed)?;
            let path = netns::create(
                &self.settings.state_dir.join("netns"),
                &labels::sandbox_id(pod.uid()),
            )
            .map_err(|e| sandbox_failed(format!("creating the network namespace: {e}")))?;
            netns_path = Some(path);
        }
        Ok(parts.environment(facts, netns_path, self.min_oom_score_adj))
    }

    async fn connect_sandbox(
        &self,
        pod: &DesiredPod,
        environment: &mut SandboxEnvironment,
    ) -> Result<(), SandboxFailure> {
        let spec = pod.pod.spec.clone().unwrap_or_default();
        let sandbox_failed = |m: String| failure("FailedCreatePodSandBox", m);
        if let Some(path) = &environment.netns {
            let sandbox_id = labels::sandbox_id(pod.uid());
            let mappings = hostport::port_mappings(&pod.pod);
            let request = network_request(pod, &sandbox_id, path, &mappings);
            let network = self.network.setup(&request).await.map_err(|e| {
                sandbox_failed(format!(
                    "failed to set up the pod network ({}): {e}",
                    self.network.describe()
                ))
            })?;
            environment.facts.pod_ip = network.ips.first().map(|ip| ip.to_string());
        }
        let Some(files) = &environment.files else {
            return Ok(());
        };
        let hostname = spec::pod_hostname(pod);
        let node_hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        let node_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let pod_ip = environment.facts.pod_ip.as_deref();
        let hosts = pod_files::hosts_file(pod, &hostname, pod_ip, &node_hosts);
        let resolv = pod_files::resolv_conf(&spec, &node_resolv);
        let (dir, host_ipc) = (files.clone(), spec.host_ipc.unwrap_or(false));
        let content = resolv.content.clone();
        blocking::unblock(move || pod_files::prepare(&dir, &hosts, &content, &hostname, host_ipc))
            .await
            .map_err(|e| {
                sandbox_failed(format!(
                    "writing the pod's files in {}: {e}",
                    files.dir().display()
                ))
            })?;
        if resolv.missing_cluster_dns {
            environment.warnings.push((
                "MissingClusterDNS",
                "pod: \"".to_string() + pod.name() + "\". kubelet does not have ClusterDNS IP configured and cannot create Pod using \"ClusterFirst\" policy. Falling back to \"Default\" policy.",
            ));
        }
        Ok(())
    }

    async fn adopt_sandbox(&self, pod: &DesiredPod) -> Result<SandboxEnvironment, SandboxFailure> {
        let spec = pod.pod.spec.clone().unwrap_or_default();
        let sandbox_failed = |m: String| failure("FailedCreatePodSandBox", m);
        // Idempotent: the cgroup, directories and tmpfs mounts are kept.
        let parts = self.local_parts(pod, &spec)?;
        let mut facts = self.facts();
        let mut netns_path = None;
        if spec.host_network.unwrap_or(false) {
            facts.pod_ip = self.settings.host_ip.clone();
        } else {
            let path = self
                .netns_path(pod.uid())
                .map_err(|e| sandbox_failed(format!("metadata.uid: {e}")))?;
            if !netns::is_netns(&path) {
                return Err(sandbox_failed(format!(
                    "the pod's network namespace {} is gone",
                    path.display()
                )));
            }
            let network = self
                .network
                .adopt(&labels::sandbox_id(pod.uid()))
                .map_err(|e| sandbox_failed(format!("reading the pod's network: {e}")))?;
            facts.pod_ip = network.ips.first().map(|ip| ip.to_string());
            self.claim_ports(pod, &hostport::port_mappings(&pod.pod))
                .map_err(sandbox_failed)?;
            netns_path = Some(path);
        }
        Ok(parts.environment(facts, netns_path, self.min_oom_score_adj))
    }

    async fn release_sandbox(&self, pod: &DesiredPod) -> bool {
        let holdings = SandboxHoldings::of_pod(pod, &self.settings.cgroup_root);
        self.release(&holdings).await
    }

    fn log_target(&self, path: &Path) -> String {
        crate::logs::logger_uri(&self.settings.executable, path, &self.settings.logs)
    }

    async fn ensure_image(
        &self,
        image: &str,
        policy: PullPolicy,
        on_pull: OnPull,
    ) -> Result<Ensured, ImageError> {
        self.images.ensure(image, policy, on_pull).await
    }

    fn image_arrivals(&self) -> watch::Receiver<u64> {
        self.images.arrivals()
    }

    fn sandbox_image(&self) -> &ResolvedImage {
        &self.sandbox_image
    }

    async fn run_container(&self, new: NewContainer<'_>) -> Result<u32, RuntimeError> {
        let id = new.id.to_string();
        self.containerd.create_container(new).await?;
        self.containerd.start_task(&id).await
    }

    async fn stop_container(&self, id: &str, signal: i32, grace: Duration) -> bool {
        let runtime = &self.containerd;
        if let Err(e) = runtime.kill_task(id, signal as u32, false).await {
            if !e.is_not_found() {
                warn!(container = id, signal, error = %e, "cannot send the stop signal");
            }
            return false;
        }
        if tokio::time::timeout(grace, runtime.wait_task(id))
            .await
            .is_ok()
        {
            return false;
        }
        if let Err(e) = runtime.kill_task(id, libc::SIGKILL as u32, true).await {
            if !e.is_not_found() {
                warn!(container = id, error = %e, "cannot send SIGKILL");
            }
        }
        true
    }

    async fn delete_task(&self, id: &str) -> Result<(), RuntimeError> {
        self.containerd.delete_task(id).await
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        self.containerd.remove_container(id).await?;
        volumes::release_removed_container(&self.settings.state_dir, id);
        Ok(())
    }

    async fn remove_pod(&self, uid: &str) -> bool {
        let runtime = &self.containerd;
        let containers = match runtime.list_containers(&labels::pod_filter(uid)).await {
            Ok(containers) => containers,
            Err(e) => {
                warn!(uid, error = %e, "cannot list the pod's containers");
                return false;
            }
        };
        let (sandboxes, apps): (Vec<_>, Vec<_>) = containers.into_iter().partition(|c| {
            c.labels.get(labels::KIND).map(String::as_str) == Some(labels::KIND_SANDBOX)
        });
        let mut removed_all = true;
        for group in [&apps, &sandboxes] {
            let removals = group.iter().map(|c| runtime.remove_container(&c.id));
            for (c, result) in group.iter().zip(futures::future::join_all(removals).await) {
                if let Err(e) = result {
                    warn!(container = %c.id, error = %e, "cannot remove container");
                    removed_all = false;
                }
            }
        }
        // No desired pod to say what its sandbox held: the sandbox
        // container does. `release` refuses while any container is left.
        match sandboxes.first() {
            Some(sandbox) => {
                let holdings =
                    SandboxHoldings::of_sandbox(uid, sandbox, &self.settings.cgroup_root);
                self.release(&holdings).await
            }
            None => removed_all,
        }
    }

    async fn pod_containers(&self, uid: &str) -> Result<Vec<ExistingContainer>, RuntimeError> {
        let containers = self
            .containerd
            .list_containers(&labels::pod_filter(uid))
            .await?;
        let states = containers.iter().map(|c| self.containerd.task_state(&c.id));
        let states = futures::future::join_all(states).await;
        let mut existing = Vec::with_capacity(containers.len());
        for (container, state) in containers.into_iter().zip(states) {
            let task = match state {
                Ok(state) => Some(state),
                Err(e) if e.is_not_found() => None,
                Err(e) => return Err(e),
            };
            let label = |key: &str| container.labels.get(key).cloned();
            existing.push(ExistingContainer {
                name: label(labels::CONTAINER_NAME).unwrap_or_default(),
                restart_count: label(labels::RESTART_COUNT).and_then(|n| n.parse().ok()),
                created_at: container.created_at.and_then(timestamp),
                id: container.id,
                task,
                labels: container.labels,
            });
        }
        Ok(existing)
    }

    async fn pods(&self) -> Result<Vec<LabelledPod>, RuntimeError> {
        let containers = self
            .containerd
            .list_containers(&labels::any_pod_filter())
            .await?;
        let mut pods: Vec<LabelledPod> = containers
            .iter()
            .filter_map(|c| {
                let label = |key: &str| c.labels.get(key).cloned();
                Some(LabelledPod {
                    uid: label(labels::POD_UID)?,
                    namespace: label(labels::POD_NAMESPACE).unwrap_or_default(),
                    name: label(labels::POD_NAME).unwrap_or_default(),
                })
            })
            .collect();
        pods.sort_by(|a, b| a.uid.cmp(&b.uid));
        pods.dedup_by(|a, b| a.uid == b.uid);
        Ok(pods)
    }

    fn pod_ip(&self, uid: &str) -> Option<String> {
        let sandbox_id = labels::sandbox_id(uid);
        if self.network.has_result(&sandbox_id) {
            let network = self.network.adopt(&sandbox_id).ok()?;
            return network.ips.first().map(ToString::to_string);
        }
        // Neither a CNI result nor a namespace: the pod used the node's
        // network, where hooks reach it as a live worker's do.
        if self.netns_path(uid).ok()?.exists() {
            return None;
        }
        Some(
            self.settings
                .host_ip
                .as_deref()
                .unwrap_or("127.0.0.1")
                .to_string(),
        )
    }

    async fn task_state(&self, id: &str) -> Result<TaskState, RuntimeError> {
        self.containerd.task_state(id).await
    }

    async fn exec(
        &self,
        id: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError> {
        self.containerd.exec(id, command, timeout).await
    }
}
