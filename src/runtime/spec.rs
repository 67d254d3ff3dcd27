//! Pure OCI runtime spec builder: (pod, container, image, sandbox) → Spec.
//!
//! No I/O and no containerd: every rule about how a Kubernetes pod becomes
//! runc's config lives here and is unit-tested. The sandbox owns the pod's
//! net, ipc and uts namespaces (and pid with `shareProcessNamespace`); the
//! pod's containers join them through `/proc/<pause pid>/ns/*`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodSpec};
use oci_spec::runtime::{
    Capability, LinuxCapabilities, LinuxDeviceCgroup, LinuxNamespace, LinuxNamespaceType,
    LinuxResources, Process, Root, Spec, User,
};

use super::{ImageConfig, SandboxFacts};
use crate::desired::DesiredPod;

/// Why no spec could be built; shown as the container's waiting message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("container {0:?} has no command: neither the pod nor the image gives one")]
    NoCommand(String),
    #[error("user {user:?} of image is not numeric; set securityContext.runAsUser")]
    NonNumericUser { user: String },
    #[error("env {name}: valueFrom is not supported yet")]
    UnsupportedEnvSource { name: String },
    #[error("building the OCI spec: {0}")]
    Oci(String),
}

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

/// cgroup of one container, under podkeeper's own parent.
pub fn cgroup_path(container_id: &str) -> String {
    format!("/podkeeper/{container_id}")
}

/// Spec of the pause container that holds the pod's namespaces.
pub fn sandbox_spec(
    pod: &DesiredPod,
    image: &ImageConfig,
    container_id: &str,
) -> Result<Spec, SpecError> {
    let spec = pod_spec(pod);
    let args = [image.entrypoint.clone(), image.cmd.clone()].concat();
    if args.is_empty() {
        return Err(SpecError::NoCommand(super::labels::SANDBOX_NAME.into()));
    }
    let mut namespaces = vec![new_ns(LinuxNamespaceType::Mount)];
    if !spec.host_network.unwrap_or(false) {
        namespaces.push(new_ns(LinuxNamespaceType::Network));
        namespaces.push(new_ns(LinuxNamespaceType::Uts));
    }
    if !spec.host_ipc.unwrap_or(false) {
        namespaces.push(new_ns(LinuxNamespaceType::Ipc));
    }
    if !spec.host_pid.unwrap_or(false) {
        namespaces.push(new_ns(LinuxNamespaceType::Pid));
    }
    let mut process = base_process(args, image.env.clone(), "/".into(), User::default());
    process.set_capabilities(Some(capabilities(&[])));
    let hostname = (!spec.host_network.unwrap_or(false)).then(|| pod_hostname(pod));
    finish(process, namespaces, hostname, true, container_id)
}

/// Spec of one of the pod's containers, joined to `sandbox`'s namespaces.
pub fn container_spec(
    pod: &DesiredPod,
    container: &Container,
    image: &ImageConfig,
    sandbox: SandboxFacts,
    container_id: &str,
) -> Result<Spec, SpecError> {
    let spec = pod_spec(pod);
    let args = command_line(container, image)?;
    let env = environment(container, image, &pod_hostname(pod))?;
    let cwd = container
        .working_dir
        .clone()
        .filter(|d| !d.is_empty())
        .or_else(|| Some(image.working_dir.clone()).filter(|d| !d.is_empty()))
        .unwrap_or_else(|| "/".into());
    let user = user(spec, container, image)?;
    let mut process = base_process(args, env, cwd, user);
    let security = container.security_context.as_ref();
    let privileged = security.and_then(|s| s.privileged).unwrap_or(false);
    let added: Vec<String> = security
        .and_then(|s| s.capabilities.as_ref())
        .and_then(|c| c.add.clone())
        .unwrap_or_default();
    process.set_capabilities(Some(capabilities(&added)));
    if let Some(false) = security.and_then(|s| s.allow_privilege_escalation) {
        process.set_no_new_privileges(Some(true));
    }

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
    let mut oci = finish(process, namespaces, None, read_only, container_id)?;
    if privileged {
        if let Some(linux) = oci.linux_mut() {
            linux.set_masked_paths(None).set_readonly_paths(None);
        }
    }
    Ok(oci)
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

/// The image's environment, overridden by the container's `env`, plus
/// `HOSTNAME` as containerd's CRI plugin sets it.
fn environment(
    container: &Container,
    image: &ImageConfig,
    hostname: &str,
) -> Result<Vec<String>, SpecError> {
    let mut order = Vec::new();
    let mut values = BTreeMap::new();
    let mut set = |name: String, value: String| {
        if values.insert(name.clone(), value).is_none() {
            order.push(name);
        }
    };
    for entry in &image.env {
        let (name, value) = entry.split_once('=').unwrap_or((entry, ""));
        set(name.into(), value.into());
    }
    set("HOSTNAME".into(), hostname.into());
    for var in container.env.iter().flatten() {
        if var.value_from.is_some() {
            return Err(SpecError::UnsupportedEnvSource {
                name: var.name.clone(),
            });
        }
        set(var.name.clone(), var.value.clone().unwrap_or_default());
    }
    Ok(order
        .into_iter()
        .map(|name| format!("{name}={}", values[&name]))
        .collect())
}

fn user(spec: &PodSpec, container: &Container, image: &ImageConfig) -> Result<User, SpecError> {
    let pod_security = spec.security_context.as_ref();
    let security = container.security_context.as_ref();
    let run_as_user = security
        .and_then(|s| s.run_as_user)
        .or_else(|| pod_security.and_then(|s| s.run_as_user));
    let run_as_group = security
        .and_then(|s| s.run_as_group)
        .or_else(|| pod_security.and_then(|s| s.run_as_group));
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
    let gid = match run_as_group {
        Some(gid) => gid as u32,
        None => image_gid.map(numeric).transpose()?.unwrap_or(0),
    };
    let mut user = User::default();
    user.set_uid(uid).set_gid(gid);
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

fn capabilities(added: &[String]) -> LinuxCapabilities {
    let mut set: std::collections::HashSet<Capability> = DEFAULT_CAPABILITIES.into_iter().collect();
    for name in added {
        let name = name.trim_start_matches("CAP_").to_ascii_uppercase();
        if let Ok(cap) = name.parse::<Capability>() {
            set.insert(cap);
        }
    }
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
/// and masked paths, deny-all devices, its cgroup.
fn finish(
    process: Process,
    namespaces: Vec<LinuxNamespace>,
    hostname: Option<String>,
    read_only_root: bool,
    container_id: &str,
) -> Result<Spec, SpecError> {
    let mut spec = Spec::default();
    let mut root = Root::default();
    root.set_path("rootfs".into())
        .set_readonly(Some(read_only_root));
    spec.set_root(Some(root))
        .set_process(Some(process))
        .set_hostname(hostname);
    let linux = spec
        .linux_mut()
        .as_mut()
        .ok_or_else(|| SpecError::Oci("default spec has no linux section".into()))?;
    let mut deny_all = LinuxDeviceCgroup::default();
    deny_all.set_allow(false).set_access(Some("rwm".into()));
    let mut resources = LinuxResources::default();
    resources.set_devices(Some(vec![deny_all]));
    linux
        .set_namespaces(Some(namespaces))
        .set_resources(Some(resources))
        .set_cgroups_path(Some(cgroup_path(container_id).into()));
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
mod tests {
    use super::*;
    use std::path::Path;

    fn pod(extra_spec: &str, container: &str) -> DesiredPod {
        let text = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: web}}\nspec:\n{extra_spec}  containers:\n  - name: app\n    image: busybox:1\n{container}"
        );
        crate::manifest::parse::parse_manifest(text.as_bytes(), Path::new("/m/web.yaml"), "node1")
            .unwrap()
    }

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["default-arg".into()],
            env: vec!["PATH=/bin".into(), "LANG=C".into()],
            working_dir: "/srv".into(),
            user: String::new(),
        }
    }

    const SANDBOX: SandboxFacts = SandboxFacts { pid: 4242 };

    fn build(pod: &DesiredPod, image: &ImageConfig) -> Spec {
        let container = &pod.pod.spec.as_ref().unwrap().containers[0];
        container_spec(pod, container, image, SANDBOX, "pk-x-c-app-0").unwrap()
    }

    fn ns_paths(spec: &Spec) -> Vec<(LinuxNamespaceType, Option<String>)> {
        let mut list: Vec<_> = spec
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| (n.typ(), n.path().as_ref().map(|p| p.display().to_string())))
            .collect();
        list.sort_by_key(|(t, _)| format!("{t:?}"));
        list
    }

    fn args(spec: &Spec) -> Vec<String> {
        spec.process().as_ref().unwrap().args().clone().unwrap()
    }

    #[test]
    fn containers_join_the_sandbox_net_ipc_uts_and_get_their_own_pid_and_mount() {
        let spec = build(&pod("", ""), &image());
        assert_eq!(
            ns_paths(&spec),
            vec![
                (LinuxNamespaceType::Ipc, Some("/proc/4242/ns/ipc".into())),
                (LinuxNamespaceType::Mount, None),
                (
                    LinuxNamespaceType::Network,
                    Some("/proc/4242/ns/net".into())
                ),
                (LinuxNamespaceType::Pid, None),
                (LinuxNamespaceType::Uts, Some("/proc/4242/ns/uts".into())),
            ]
        );
        assert_eq!(spec.hostname(), &None);
    }

    #[test]
    fn share_process_namespace_joins_the_sandbox_pid_namespace() {
        let spec = build(&pod("  shareProcessNamespace: true\n", ""), &image());
        assert!(
            ns_paths(&spec).contains(&(LinuxNamespaceType::Pid, Some("/proc/4242/ns/pid".into())))
        );
    }

    #[test]
    fn host_network_drops_net_and_uts() {
        let spec = build(&pod("  hostNetwork: true\n", ""), &image());
        let types: Vec<_> = ns_paths(&spec).into_iter().map(|(t, _)| t).collect();
        assert!(!types.contains(&LinuxNamespaceType::Network));
        assert!(!types.contains(&LinuxNamespaceType::Uts));
    }

    #[test]
    fn sandbox_owns_new_namespaces_and_the_pod_hostname() {
        let p = pod("", "");
        let spec = sandbox_spec(
            &p,
            &ImageConfig {
                entrypoint: vec!["/pause".into()],
                ..Default::default()
            },
            "pk-x-pause",
        )
        .unwrap();
        assert!(ns_paths(&spec).iter().all(|(_, path)| path.is_none()));
        assert_eq!(ns_paths(&spec).len(), 5);
        assert_eq!(spec.hostname().as_deref(), Some("web-node1"));
        assert_eq!(args(&spec), ["/pause"]);
        assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
        assert_eq!(
            spec.linux()
                .as_ref()
                .unwrap()
                .cgroups_path()
                .as_ref()
                .unwrap()
                .display()
                .to_string(),
            "/podkeeper/pk-x-pause"
        );
    }

    #[test]
    fn sandbox_without_a_command_is_refused() {
        assert!(sandbox_spec(&pod("", ""), &ImageConfig::default(), "x").is_err());
    }

    #[test]
    fn hostname_prefers_spec_hostname_and_is_at_most_63_chars() {
        assert_eq!(pod_hostname(&pod("  hostname: db\n", "")), "db");
        let long = format!("  hostname: {}\n", "a".repeat(70));
        assert_eq!(pod_hostname(&pod(&long, "")).len(), 63);
    }

    #[test]
    fn command_and_args_follow_kubernetes_rules() {
        let img = image();
        assert_eq!(args(&build(&pod("", ""), &img)), ["/entry", "default-arg"]);
        assert_eq!(
            args(&build(&pod("", "    args: [a, b]\n"), &img)),
            ["/entry", "a", "b"]
        );
        assert_eq!(args(&build(&pod("", "    command: [sh]\n"), &img)), ["sh"]);
        assert_eq!(
            args(&build(
                &pod("", "    command: [sh]\n    args: [-c, x]\n"),
                &img
            )),
            ["sh", "-c", "x"]
        );
    }

    #[test]
    fn no_command_anywhere_is_an_error() {
        let p = pod("", "");
        let container = &p.pod.spec.as_ref().unwrap().containers[0];
        let err = container_spec(&p, container, &ImageConfig::default(), SANDBOX, "x").unwrap_err();
        assert_eq!(err, SpecError::NoCommand("app".into()));
    }

    #[test]
    fn env_overrides_the_image_and_keeps_order() {
        let spec = build(
            &pod(
                "",
                "    env:\n    - {name: LANG, value: de}\n    - {name: MODE, value: prod}\n",
            ),
            &image(),
        );
        let env = spec.process().as_ref().unwrap().env().clone().unwrap();
        assert_eq!(
            env,
            ["PATH=/bin", "LANG=de", "HOSTNAME=web-node1", "MODE=prod"]
        );
    }

    #[test]
    fn env_value_from_is_reported_not_ignored() {
        let p = pod(
            "",
            "    env:\n    - name: X\n      valueFrom: {fieldRef: {fieldPath: metadata.name}}\n",
        );
        let container = &p.pod.spec.as_ref().unwrap().containers[0];
        let err = container_spec(&p, container, &image(), SANDBOX, "x").unwrap_err();
        assert_eq!(err, SpecError::UnsupportedEnvSource { name: "X".into() });
    }

    #[test]
    fn working_dir_from_container_then_image_then_root() {
        let cwd = |s: &Spec| s.process().as_ref().unwrap().cwd().display().to_string();
        assert_eq!(
            cwd(&build(&pod("", "    workingDir: /app\n"), &image())),
            "/app"
        );
        assert_eq!(cwd(&build(&pod("", ""), &image())), "/srv");
        let bare = ImageConfig {
            working_dir: String::new(),
            ..image()
        };
        assert_eq!(cwd(&build(&pod("", ""), &bare)), "/");
    }

    #[test]
    fn user_comes_from_security_context_then_image() {
        let uid = |s: &Spec| {
            let u = s.process().as_ref().unwrap().user();
            (u.uid(), u.gid())
        };
        let numeric = ImageConfig {
            user: "1000:1001".into(),
            ..image()
        };
        assert_eq!(uid(&build(&pod("", ""), &numeric)), (1000, 1001));
        let sc = "  securityContext: {runAsUser: 7, runAsGroup: 8}\n";
        assert_eq!(uid(&build(&pod(sc, ""), &numeric)), (7, 8));
        let named = ImageConfig {
            user: "nginx".into(),
            ..image()
        };
        let p = pod("", "");
        let container = &p.pod.spec.as_ref().unwrap().containers[0];
        assert!(container_spec(&p, container, &named, SANDBOX, "x").is_err());
    }

    #[test]
    fn no_rlimits_and_kubernetes_default_capabilities() {
        let spec = build(&pod("", ""), &image());
        let process = spec.process().as_ref().unwrap();
        assert_eq!(process.rlimits(), &None);
        let caps = process.capabilities().as_ref().unwrap();
        let bounding = caps.bounding().as_ref().unwrap();
        assert_eq!(bounding.len(), DEFAULT_CAPABILITIES.len());
        assert!(bounding.contains(&Capability::NetRaw));
        assert!(!bounding.contains(&Capability::SysAdmin));
    }

    #[test]
    fn added_capabilities_are_granted() {
        let spec = build(
            &pod(
                "",
                "    securityContext: {capabilities: {add: [NET_ADMIN]}}\n",
            ),
            &image(),
        );
        let caps = spec
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .clone()
            .unwrap();
        assert!(caps
            .bounding()
            .as_ref()
            .unwrap()
            .contains(&Capability::NetAdmin));
    }

    #[test]
    fn devices_are_denied_by_default() {
        let spec = build(&pod("", ""), &image());
        let devices = spec
            .linux()
            .as_ref()
            .unwrap()
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .clone()
            .unwrap();
        assert_eq!(devices.len(), 1);
        assert!(!devices[0].allow());
    }
}
