//! What a pod's sandbox holds on the node, for [`super::NodeRuntime`] to
//! release.

use std::path::{Component, Path};

use tracing::warn;

use crate::desired::DesiredPod;
use crate::pod::volumes;
use crate::runtime::cgroups::{self, CgroupVersion};
use crate::runtime::network::{hostport, PortMapping};
use crate::runtime::pod_files::{self, PodFiles};
use crate::runtime::{labels, resources};

/// What a pod's sandbox holds on the node besides containers, to release:
/// known from the desired pod, or, for a pod whose manifest went away while
/// the agent was down, from its sandbox container.
pub(super) struct SandboxHoldings<'a> {
    pub(super) uid: &'a str,
    pub(super) name: &'a str,
    pub(super) namespace: &'a str,
    pub(super) host_network: bool,
    /// Only a fallback: the mappings given at ADD are in the CNI cache.
    pub(super) port_mappings: Vec<PortMapping>,
    pub(super) cgroup: Option<String>,
}

impl<'a> SandboxHoldings<'a> {
    pub(super) fn of_pod(pod: &'a DesiredPod, cgroup_root: &str) -> SandboxHoldings<'a> {
        let spec = pod.pod.spec.clone().unwrap_or_default();
        let cgroup = resources::qos_class(&spec)
            .and_then(|qos| resources::pod_cgroup(pod.uid(), &spec, qos, cgroup_root))
            .ok()
            .map(|c| c.path);
        SandboxHoldings {
            uid: pod.uid(),
            name: pod.name(),
            namespace: pod.namespace(),
            host_network: spec.host_network.unwrap_or(false),
            port_mappings: hostport::port_mappings(&pod.pod),
            cgroup,
        }
    }

    /// From the sandbox container's labels and OCI spec (its cgroup's
    /// parent is the pod cgroup).
    pub(super) fn of_sandbox(
        uid: &'a str,
        sandbox: &'a containerd_client::services::v1::Container,
        cgroup_root: &str,
    ) -> SandboxHoldings<'a> {
        let label = |key: &str| sandbox.labels.get(key).map(String::as_str).unwrap_or("");
        let spec: Option<serde_json::Value> = sandbox
            .spec
            .as_ref()
            .and_then(|any| serde_json::from_slice(&any.value).ok());
        let cgroup = spec
            .as_ref()
            .and_then(|s| s["linux"]["cgroupsPath"].as_str())
            .and_then(|path| Path::new(path).parent())
            .filter(|parent| {
                let plain = |c: Component| matches!(c, Component::RootDir | Component::Normal(_));
                parent.starts_with(cgroup_root) && parent.components().all(plain)
            })
            .map(|parent| parent.to_string_lossy().into_owned());
        SandboxHoldings {
            uid,
            name: label(labels::POD_NAME),
            namespace: label(labels::POD_NAMESPACE),
            host_network: false,
            port_mappings: Vec::new(),
            cgroup,
        }
    }
}

/// Removes what the pod holds in the filesystem: its volumes, its files and
/// its cgroup, each failure logged for the pod `name`. Blocking (a walk of
/// every file of every emptyDir): run it on a blocking thread.
pub(super) fn release_local(
    name: &str,
    files: &PodFiles,
    cgroup: Option<&str>,
    version: CgroupVersion,
) {
    if let Err(e) = volumes::cleanup(files.volumes()) {
        warn!(pod = %name, error = %e, "cannot clean up the pod's volumes");
    }
    if let Err(e) = pod_files::cleanup(files) {
        warn!(pod = %name, error = %e, "cannot remove the pod's files");
    }
    if let Some(cgroup) = cgroup {
        if let Err(e) = cgroups::remove_pod_cgroup(cgroup, version) {
            warn!(pod = %name, error = %e, "cannot remove the pod cgroup");
        }
    }
}
