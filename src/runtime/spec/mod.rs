//! Pure OCI runtime spec builder: (pod, container, image, sandbox) → Spec.
//!
//! No I/O and no containerd: every rule about how a Kubernetes pod becomes
//! runc's config lives here and is unit-tested. The sandbox owns the pod's
//! net, ipc and uts namespaces (and pid with `shareProcessNamespace`); the
//! pod's containers join them through `/proc/<pause pid>/ns/*`. What other
//! modules compute (volume mounts, cgroup limits, the CNI network namespace)
//! comes in through [`ContainerInputs`] and [`SandboxInputs`].

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Container, PodSpec};
use oci_spec::runtime::{
    Capability, LinuxCapabilities, LinuxDeviceCgroup, LinuxNamespace, LinuxNamespaceType,
    LinuxResources, Mount, Process, Root, Spec, User,
};

use super::env::{self, PodFacts};
use super::pod_files::PodFiles;
use super::ImageConfig;
use crate::desired::DesiredPod;

/// Why no spec could be built; shown as the container's waiting message
/// (`CreateContainerConfigError`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("container {0:?} has no command: neither the pod nor the image gives one")]
    NoCommand(String),
    #[error("user {user:?} of the image is not numeric; set securityContext.runAsUser")]
    NonNumericUser { user: String },
    #[error("container has runAsNonRoot and image will run as root (pod: {pod:?}, container: {container})")]
    RunsAsRoot { pod: String, container: String },
    #[error(transparent)]
    Env(#[from] env::EnvError),
    #[error("building the OCI spec: {0}")]
    Oci(String),
}

/// Spec annotation read by containerd's runc v2 shim when it starts: tasks
/// with the same value share one shim process. The pod's sandbox and its
/// containers are one group, as containerd's CRI plugin groups them (with
/// its sandbox-id annotation), so a container start does not fork and
/// connect to a new shim, and a node keeps one shim per pod, not one per
/// container.
pub const SHIM_GROUP_ANNOTATION: &str = "io.containerd.runc.v2.group";

/// The capabilities containerd gives a container by default, which is what
/// a pod without a securityContext gets on Kubernetes.
const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Every capability, for privileged containers and `add: [ALL]` (runc
/// skips those the kernel does not know).
const EVERY_CAPABILITY: [Capability; 41] = [
    Capability::AuditControl,
    Capability::AuditRead,
    Capability::AuditWrite,
    Capability::BlockSuspend,
    Capability::Bpf,
    Capability::CheckpointRestore,
    Capability::Chown,
    Capability::DacOverride,
    Capability::DacReadSearch,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::IpcLock,
    Capability::IpcOwner,
    Capability::Kill,
    Capability::Lease,
    Capability::LinuxImmutable,
    Capability::MacAdmin,
    Capability::MacOverride,
    Capability::Mknod,
    Capability::NetAdmin,
    Capability::NetBindService,
    Capability::NetBroadcast,
    Capability::NetRaw,
    Capability::Perfmon,
    Capability::Setgid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::Setuid,
    Capability::SysAdmin,
    Capability::SysBoot,
    Capability::SysChroot,
    Capability::SysModule,
    Capability::SysNice,
    Capability::SysPacct,
    Capability::SysPtrace,
    Capability::SysRawio,
    Capability::SysResource,
    Capability::SysTime,
    Capability::SysTtyConfig,
    Capability::Syslog,
    Capability::WakeAlarm,
];

/// What the pod's containers build on once the sandbox runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxFacts {
    /// PID of the pause process on the host, whose namespaces are joined.
    pub pid: u32,
    pub addresses: PodFacts,
    /// The pod's shared files (`/etc/hosts`, `/etc/resolv.conf`,
    /// `/etc/hostname`, `/dev/shm`); `None` mounts none of them.
    pub files: Option<PodFiles>,
}

/// Per-container parts computed elsewhere.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerInputs {
    pub cgroup_path: String,
    /// The container's volume mounts.
    pub mounts: Vec<Mount>,
    /// cpu and memory limits (devices are set here).
    pub resources: Option<LinuxResources>,
    pub oom_score_adj: Option<i32>,
    /// Propagation of the root mount, when a volume mount needs it
    /// (`rslave` or `rshared` for HostToContainer/Bidirectional).
    pub rootfs_propagation: Option<String>,
}

/// Sandbox parts computed elsewhere.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SandboxInputs {
    pub cgroup_path: String,
    /// The CNI network namespace to join; `None` makes a new, empty one.
    pub netns: Option<PathBuf>,
    pub resources: Option<LinuxResources>,
    pub oom_score_adj: Option<i32>,
}

/// The pod's hostname: `spec.hostname` or the pod name, at most 63 characters.
pub fn pod_hostname(pod: &DesiredPod) -> String {
    let spec = pod_spec(pod);
    let name = spec.hostname.as_deref().unwrap_or(pod.name());
    name.chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches(['-', '.'])
        .to_string()
}

/// Spec of the pause container that holds the pod's namespaces.
pub fn sandbox_spec(
    pod: &DesiredPod,
    image: &ImageConfig,
    inputs: &SandboxInputs,
) -> Result<Spec, SpecError> {
    let spec = pod_spec(pod);
    let args = [image.entrypoint.clone(), image.cmd.clone()].concat();
    if args.is_empty() {
        return Err(SpecError::NoCommand(super::labels::SANDBOX_NAME.into()));
    }
    let mut namespaces = vec![new_ns(LinuxNamespaceType::Mount)];
    if !spec.host_network.unwrap_or(false) {
        let mut net = new_ns(LinuxNamespaceType::Network);
        net.set_path(inputs.netns.clone());
        namespaces.push(net);
        namespaces.push(new_ns(LinuxNamespaceType::Uts));
    }
    if !spec.host_ipc.unwrap_or(false) {
        namespaces.push(new_ns(LinuxNamespaceType::Ipc));
    }
    if !spec.host_pid.unwrap_or(false) {
        namespaces.push(new_ns(LinuxNamespaceType::Pid));
    }
    let mut process = base_process(args, image.env.clone(), "/".into(), User::default());
    process.set_capabilities(Some(capabilities(&[], &[])));
    process.set_oom_score_adj(inputs.oom_score_adj);
    let hostname = (!spec.host_network.unwrap_or(false)).then(|| pod_hostname(pod));
    let mut oci = finish(
        pod,
        process,
        namespaces,
        hostname,
        true,
        &inputs.cgroup_path,
        inputs.resources.clone(),
    )?;
    // The pause process needs no /dev/shm of its own: the pod's is mounted
    // into each container.
    if let Some(mounts) = oci.mounts_mut() {
        mounts.retain(|m| m.destination() != &PathBuf::from("/dev/shm"));
    }
    Ok(oci)
}

/// Spec of one of the pod's containers, joined to `sandbox`'s namespaces.
/// `list` is `spec.containers` or `spec.initContainers`, for error fields.
pub fn container_spec(
    pod: &DesiredPod,
    container: &Container,
    list: &str,
    image: &ImageConfig,
    sandbox: &SandboxFacts,
    inputs: &ContainerInputs,
) -> Result<Spec, SpecError> {
    let spec = pod_spec(pod);
    let variables = env::container_variables(pod, container, list, &sandbox.addresses)?;
    let args = env::expand_command(&command_line(container, image)?, &variables)
        .map_err(|e| command_too_large(list, container, e))?;
    let env = environment(image, &pod_hostname(pod), &variables);
    let cwd = container
        .working_dir
        .clone()
        .filter(|d| !d.is_empty())
        .or_else(|| Some(image.working_dir.clone()).filter(|d| !d.is_empty()))
        .unwrap_or_else(|| "/".into());
    let user = user(pod, spec, container, image)?;
    let mut process = base_process(args, env, cwd, user);
    let security = container.security_context.as_ref();
    let privileged = security.and_then(|s| s.privileged).unwrap_or(false);
    let capability_names =
        |pick: fn(&k8s_openapi::api::core::v1::Capabilities) -> Option<Vec<String>>| {
            security
                .and_then(|s| s.capabilities.as_ref())
                .and_then(pick)
                .unwrap_or_default()
        };
    let caps = if privileged {
        all_capabilities()
    } else {
        capabilities(
            &capability_names(|c| c.add.clone()),
            &capability_names(|c| c.drop.clone()),
        )
    };
    process.set_capabilities(Some(caps));
    if !privileged && security.and_then(|s| s.allow_privilege_escalation) == Some(false) {
        process.set_no_new_privileges(Some(true));
    }
    process.set_oom_score_adj(inputs.oom_score_adj);

    let join = |typ, name: &str| {
        let mut ns = new_ns(typ);
        ns.set_path(Some(format!("/proc/{}/ns/{name}", sandbox.pid).into()));
        ns
    };
    let mut namespaces = vec![new_ns(LinuxNamespaceType::Mount)];
    if !spec.host_network.unwrap_or(false) {
        namespaces.push(join(LinuxNamespaceType::Network, "net"));
        namespaces.push(join(LinuxNamespaceType::Uts, "uts"));
    }
    if !spec.host_ipc.unwrap_or(false) {
        namespaces.push(join(LinuxNamespaceType::Ipc, "ipc"));
    }
    if spec.host_pid.unwrap_or(false) {
        // The host's PID namespace: no entry at all.
    } else if spec.share_process_namespace.unwrap_or(false) {
        namespaces.push(join(LinuxNamespaceType::Pid, "pid"));
    } else {
        namespaces.push(new_ns(LinuxNamespaceType::Pid));
    }
    let read_only = security
        .and_then(|s| s.read_only_root_filesystem)
        .unwrap_or(false);
    let mut oci = finish(
        pod,
        process,
        namespaces,
        None,
        read_only,
        &inputs.cgroup_path,
        inputs.resources.clone(),
    )?;
    let mut mounts = oci.mounts().clone().unwrap_or_default();
    if let Some(files) = &sandbox.files {
        let shared_shm = !spec.host_ipc.unwrap_or(false);
        if shared_shm {
            mounts.retain(|m| m.destination() != &PathBuf::from("/dev/shm"));
        }
        mounts.extend(pod_file_mounts(
            files,
            read_only,
            shared_shm,
            &inputs.mounts,
        ));
    }
    mounts.extend(inputs.mounts.iter().cloned());
    oci.set_mounts(Some(mounts));
    if let (Some(propagation), Some(linux)) = (&inputs.rootfs_propagation, oci.linux_mut()) {
        linux.set_rootfs_propagation(Some(propagation.clone()));
    }
    if privileged {
        if let Some(linux) = oci.linux_mut() {
            linux.set_masked_paths(None).set_readonly_paths(None);
            let mut allow_all = LinuxDeviceCgroup::default();
            allow_all.set_allow(true).set_access(Some("rwm".into()));
            if let Some(resources) = linux.resources_mut() {
                resources.set_devices(Some(vec![allow_all]));
            }
        }
        if let Some(mounts) = oci.mounts_mut() {
            for mount in mounts
                .iter_mut()
                .filter(|m| m.destination() == &PathBuf::from("/sys"))
            {
                let options = mount.options().clone().unwrap_or_default();
                mount.set_options(Some(options.into_iter().filter(|o| o != "ro").collect()));
            }
        }
    }
    Ok(oci)
}

/// Bind mounts of the pod's shared files, unless a volume already mounts
/// something at that path (as containerd's CRI plugin does).
fn pod_file_mounts(files: &PodFiles, read_only: bool, shm: bool, volumes: &[Mount]) -> Vec<Mount> {
    let taken: HashSet<PathBuf> = volumes.iter().map(|m| m.destination().clone()).collect();
    let mode = if read_only { "ro" } else { "rw" };
    let mut wanted = vec![
        ("/etc/hosts", files.hosts(), mode),
        ("/etc/resolv.conf", files.resolv_conf(), mode),
        ("/etc/hostname", files.hostname(), mode),
    ];
    if shm {
        wanted.push(("/dev/shm", files.shm(), "rw"));
    }
    wanted
        .into_iter()
        .filter(|(destination, _, _)| !taken.contains(&PathBuf::from(destination)))
        .map(|(destination, source, mode)| {
            let mut mount = Mount::default();
            mount
                .set_destination(destination.into())
                .set_typ(Some("bind".into()))
                .set_source(Some(source))
                .set_options(Some(vec!["rbind".into(), "rprivate".into(), mode.into()]));
            mount
        })
        .collect()
}

/// Kubernetes' rules: `command` replaces the image's Entrypoint and drops its
/// Cmd; `args` alone replaces Cmd.
pub fn command_line(container: &Container, image: &ImageConfig) -> Result<Vec<String>, SpecError> {
    let command = container.command.clone().unwrap_or_default();
    let args = container.args.clone().unwrap_or_default();
    let line = match (command.is_empty(), args.is_empty()) {
        (true, true) => [image.entrypoint.clone(), image.cmd.clone()].concat(),
        (true, false) => [image.entrypoint.clone(), args].concat(),
        (false, _) => [command, args].concat(),
    };
    if line.is_empty() {
        return Err(SpecError::NoCommand(container.name.clone()));
    }
    Ok(line)
}

/// Names the field (`command` or `args`) whose expansion passed the
/// container's limit; words the image gives are counted with its own.
fn command_too_large(list: &str, container: &Container, e: env::CommandTooLarge) -> SpecError {
    let command = container.command.as_deref().unwrap_or_default();
    let field = if e.word < command.len() {
        "command"
    } else {
        "args"
    };
    SpecError::Env(env::EnvError {
        field: format!("{list}[{}].{field}", container.name),
        message: e.to_string(),
    })
}

/// The image's environment, then `HOSTNAME` as containerd's CRI plugin sets
/// it, then the container's variables, later ones replacing earlier ones of
/// the same name in place.
/// Names are found through an index, so that a long list costs no more
/// than its length.
fn environment(image: &ImageConfig, hostname: &str, variables: &[(String, String)]) -> Vec<String> {
    let mut merged: Vec<(String, String)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut set = |name: &str, value: &str| match index.get(name) {
        Some(&at) => merged[at].1 = value.to_string(),
        None => {
            index.insert(name.to_string(), merged.len());
            merged.push((name.to_string(), value.to_string()));
        }
    };
    for entry in &image.env {
        let (name, value) = entry.split_once('=').unwrap_or((entry, ""));
        set(name, value);
    }
    set("HOSTNAME", hostname);
    for (name, value) in variables {
        set(name, value);
    }
    merged
        .into_iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect()
}

/// uid/gid from the securityContext (container over pod) or the image,
/// checking `runAsNonRoot`; `fsGroup` and `supplementalGroups` become
/// additional groups.
fn user(
    pod: &DesiredPod,
    spec: &PodSpec,
    container: &Container,
    image: &ImageConfig,
) -> Result<User, SpecError> {
    let pod_security = spec.security_context.as_ref();
    let security = container.security_context.as_ref();
    let run_as_user = security
        .and_then(|s| s.run_as_user)
        .or_else(|| pod_security.and_then(|s| s.run_as_user));
    let run_as_group = security
        .and_then(|s| s.run_as_group)
        .or_else(|| pod_security.and_then(|s| s.run_as_group));
    let run_as_non_root = security
        .and_then(|s| s.run_as_non_root)
        .or_else(|| pod_security.and_then(|s| s.run_as_non_root))
        .unwrap_or(false);
    let (image_uid, image_gid) = match image.user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (image.user.as_str(), None),
    };
    let numeric = |s: &str| -> Result<u32, SpecError> {
        match s {
            "" | "root" => Ok(0),
            s => s.parse().map_err(|_| SpecError::NonNumericUser {
                user: image.user.clone(),
            }),
        }
    };
    let uid = match run_as_user {
        Some(uid) => uid as u32,
        None => numeric(image_uid)?,
    };
    if run_as_non_root && uid == 0 {
        return Err(SpecError::RunsAsRoot {
            pod: pod.name().into(),
            container: container.name.clone(),
        });
    }
    let gid = match run_as_group {
        Some(gid) => gid as u32,
        None => image_gid.map(numeric).transpose()?.unwrap_or(0),
    };
    let mut groups: Vec<u32> = pod_security
        .and_then(|s| s.fs_group)
        .into_iter()
        .chain(
            pod_security
                .and_then(|s| s.supplemental_groups.clone())
                .unwrap_or_default(),
        )
        .map(|g| g as u32)
        .collect();
    groups.dedup();
    let mut user = User::default();
    user.set_uid(uid)
        .set_gid(gid)
        .set_additional_gids((!groups.is_empty()).then_some(groups));
    Ok(user)
}

fn base_process(args: Vec<String>, env: Vec<String>, cwd: String, user: User) -> Process {
    let mut process = Process::default();
    process
        .set_terminal(Some(false))
        .set_args(Some(args))
        .set_env(Some(env))
        .set_cwd(cwd.into())
        .set_user(user)
        // Kubernetes allows privilege escalation unless asked not to.
        .set_no_new_privileges(Some(false))
        // runc refuses rlimits above the host's hard limits; none were asked for.
        .set_rlimits(None);
    process
}

/// containerd's default set with `add` and `drop` applied (`ALL` works in
/// both, and `drop` wins, as in Kubernetes).
fn capabilities(add: &[String], drop: &[String]) -> LinuxCapabilities {
    let parse = |name: &String| {
        name.trim_start_matches("CAP_")
            .to_ascii_uppercase()
            .parse::<Capability>()
            .ok()
    };
    let is_all = |names: &[String]| names.iter().any(|n| n.eq_ignore_ascii_case("ALL"));
    let mut set: HashSet<Capability> = if is_all(add) {
        every_capability()
    } else {
        DEFAULT_CAPABILITIES
            .into_iter()
            .chain(add.iter().filter_map(parse))
            .collect()
    };
    if is_all(drop) {
        set = add.iter().filter_map(parse).collect();
    } else {
        for cap in drop.iter().filter_map(parse) {
            set.remove(&cap);
        }
    }
    capability_sets(set)
}

fn all_capabilities() -> LinuxCapabilities {
    capability_sets(every_capability())
}

fn every_capability() -> HashSet<Capability> {
    EVERY_CAPABILITY.into_iter().collect()
}

fn capability_sets(set: HashSet<Capability>) -> LinuxCapabilities {
    let mut caps = LinuxCapabilities::default();
    caps.set_bounding(Some(set.clone()))
        .set_effective(Some(set.clone()))
        .set_permitted(Some(set))
        .set_inheritable(None)
        .set_ambient(None);
    caps
}

fn new_ns(typ: LinuxNamespaceType) -> LinuxNamespace {
    let mut ns = LinuxNamespace::default();
    ns.set_typ(typ);
    ns
}

/// Fills in what every podkeeper container shares: runc-like default mounts
/// and masked paths, deny-all devices, its cgroup and limits, and its pod's
/// shim group.
fn finish(
    pod: &DesiredPod,
    process: Process,
    namespaces: Vec<LinuxNamespace>,
    hostname: Option<String>,
    read_only_root: bool,
    cgroup_path: &str,
    resources: Option<LinuxResources>,
) -> Result<Spec, SpecError> {
    let mut spec = Spec::default();
    let mut root = Root::default();
    root.set_path("rootfs".into())
        .set_readonly(Some(read_only_root));
    spec.set_root(Some(root))
        .set_process(Some(process))
        .set_hostname(hostname)
        .set_annotations(Some(HashMap::from([(
            SHIM_GROUP_ANNOTATION.to_string(),
            super::labels::sandbox_id(pod.uid()),
        )])));
    let linux = spec
        .linux_mut()
        .as_mut()
        .ok_or_else(|| SpecError::Oci("default spec has no linux section".into()))?;
    let mut deny_all = LinuxDeviceCgroup::default();
    deny_all.set_allow(false).set_access(Some("rwm".into()));
    let mut resources = resources.unwrap_or_default();
    resources.set_devices(Some(vec![deny_all]));
    linux
        .set_namespaces(Some(namespaces))
        .set_resources(Some(resources))
        .set_cgroups_path((!cgroup_path.is_empty()).then(|| cgroup_path.into()));
    Ok(spec)
}

fn pod_spec(pod: &DesiredPod) -> &PodSpec {
    // The parser refuses pods without a spec, so this is always present.
    static EMPTY: std::sync::OnceLock<PodSpec> = std::sync::OnceLock::new();
    pod.pod
        .spec
        .as_ref()
        .unwrap_or_else(|| EMPTY.get_or_init(PodSpec::default))
}

#[cfg(test)]
mod tests;
