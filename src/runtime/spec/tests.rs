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
        stop_signal: String::new(),
    }
}

fn sandbox() -> SandboxFacts {
    SandboxFacts {
        pid: 4242,
        addresses: PodFacts {
            pod_ip: Some("10.85.0.9".into()),
            ..Default::default()
        },
        files: None,
    }
}

fn try_build(pod: &DesiredPod, image: &ImageConfig) -> Result<Spec, SpecError> {
    let container = &pod.pod.spec.as_ref().unwrap().containers[0];
    let inputs = ContainerInputs {
        cgroup_path: "/kubepods/podx/pk-x-c-app-0".into(),
        ..Default::default()
    };
    container_spec(
        pod,
        container,
        "spec.containers",
        image,
        &sandbox(),
        &inputs,
    )
}

fn build(pod: &DesiredPod, image: &ImageConfig) -> Spec {
    try_build(pod, image).unwrap()
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
    assert!(ns_paths(&spec).contains(&(LinuxNamespaceType::Pid, Some("/proc/4242/ns/pid".into()))));
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
    let pause = ImageConfig {
        entrypoint: vec!["/pause".into()],
        ..Default::default()
    };
    let inputs = SandboxInputs {
        cgroup_path: "/kubepods/podx/pk-x-pause".into(),
        oom_score_adj: Some(-998),
        ..Default::default()
    };
    let spec = sandbox_spec(&p, &pause, &inputs).unwrap();
    assert!(ns_paths(&spec).iter().all(|(_, path)| path.is_none()));
    assert_eq!(ns_paths(&spec).len(), 5);
    assert_eq!(spec.hostname().as_deref(), Some("web-node1"));
    assert_eq!(args(&spec), ["/pause"]);
    assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
    assert_eq!(spec.process().as_ref().unwrap().oom_score_adj(), Some(-998));
    let cgroup = spec.linux().as_ref().unwrap().cgroups_path().clone();
    assert_eq!(cgroup, Some(PathBuf::from("/kubepods/podx/pk-x-pause")));
    let mounts = spec.mounts().clone().unwrap();
    assert!(!mounts
        .iter()
        .any(|m| m.destination() == &PathBuf::from("/dev/shm")));
    let joined = SandboxInputs {
        netns: Some("/run/pk/netns/x".into()),
        ..inputs
    };
    let spec = sandbox_spec(&p, &pause, &joined).unwrap();
    let network = (LinuxNamespaceType::Network, Some("/run/pk/netns/x".into()));
    assert!(ns_paths(&spec).contains(&network));
}

#[test]
fn sandbox_and_containers_share_one_shim_per_pod() {
    let p = pod("", "");
    let pause = ImageConfig {
        entrypoint: vec!["/pause".into()],
        ..Default::default()
    };
    let group = |spec: &Spec| {
        spec.annotations()
            .as_ref()
            .and_then(|a| a.get(SHIM_GROUP_ANNOTATION).cloned())
    };
    let sandbox_group = group(&sandbox_spec(&p, &pause, &SandboxInputs::default()).unwrap());
    let sandbox_id = crate::runtime::labels::sandbox_id(p.uid());
    assert_eq!(sandbox_group.as_deref(), Some(sandbox_id.as_str()));
    assert_eq!(group(&build(&p, &image())), sandbox_group);
    let other = pod("", "    command: [sh]\n");
    assert_ne!(group(&build(&other, &image())), sandbox_group);
}

#[test]
fn sandbox_without_a_command_is_refused() {
    assert!(sandbox_spec(
        &pod("", ""),
        &ImageConfig::default(),
        &SandboxInputs::default()
    )
    .is_err());
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
    let err = try_build(&pod("", ""), &ImageConfig::default()).unwrap_err();
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
fn env_field_refs_and_expansion_reach_the_process() {
    let container = concat!(
        "    command: [echo, '$(IP)']\n",
        "    env:\n",
        "    - name: IP\n",
        "      valueFrom: {fieldRef: {fieldPath: status.podIP}}\n",
        "    - {name: URL, value: 'http://$(IP):80'}\n",
    );
    let spec = build(&pod("", container), &image());
    let env = spec.process().as_ref().unwrap().env().clone().unwrap();
    assert!(env.contains(&"IP=10.85.0.9".to_string()), "{env:?}");
    assert!(
        env.contains(&"URL=http://10.85.0.9:80".to_string()),
        "{env:?}"
    );
    assert_eq!(args(&spec), ["echo", "10.85.0.9"]);
}

#[test]
fn a_secret_env_source_is_a_config_error_naming_the_field() {
    let container = "    env:\n    - name: X\n      valueFrom: {secretKeyRef: {name: s, key: k}}\n";
    let err = try_build(&pod("", container), &image()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("spec.containers[app].env[0].valueFrom:"),
        "{text}"
    );
}

#[test]
fn a_command_line_expanding_past_the_limit_names_its_field() {
    let big = "x".repeat(env::MAX_CONTAINER_CONFIG_BYTES / 4);
    let refs = "$(BIG)".repeat(4);
    let fields = [
        (format!("    command: [sh, '{refs}']\n"), "command"),
        (
            format!("    command: [sh]\n    args: [-c, '{refs}']\n"),
            "args",
        ),
        (format!("    args: ['{refs}']\n"), "args"),
    ];
    for (line, field) in fields {
        let container = format!("{line}    env:\n    - {{name: BIG, value: {big}}}\n");
        let text = try_build(&pod("", &container), &image())
            .unwrap_err()
            .to_string();
        let expected = format!("spec.containers[app].{field}: word ");
        assert!(text.starts_with(&expected), "{text}");
    }
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
    assert!(try_build(&pod("", ""), &named).is_err());
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
fn dropped_capabilities_go_and_drop_all_keeps_only_the_added() {
    let caps = |container: &str| {
        let spec = build(&pod("", container), &image());
        spec.process()
            .as_ref()
            .unwrap()
            .capabilities()
            .clone()
            .unwrap()
            .bounding()
            .clone()
            .unwrap()
    };
    let dropped = caps("    securityContext: {capabilities: {drop: [NET_RAW, CAP_CHOWN]}}\n");
    assert!(!dropped.contains(&Capability::NetRaw) && !dropped.contains(&Capability::Chown));
    assert_eq!(dropped.len(), DEFAULT_CAPABILITIES.len() - 2);
    let minimal =
        caps("    securityContext: {capabilities: {drop: [ALL], add: [NET_BIND_SERVICE]}}\n");
    assert_eq!(minimal, HashSet::from([Capability::NetBindService]));
}

#[test]
fn privileged_containers_get_everything() {
    let spec = build(
        &pod("", "    securityContext: {privileged: true}\n"),
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
        .contains(&Capability::SysAdmin));
    let linux = spec.linux().as_ref().unwrap();
    assert_eq!(linux.masked_paths(), &None);
    assert!(linux
        .resources()
        .as_ref()
        .unwrap()
        .devices()
        .as_ref()
        .unwrap()[0]
        .allow());
    let sys = spec
        .mounts()
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.destination() == &PathBuf::from("/sys"))
        .unwrap();
    assert!(!sys.options().as_ref().unwrap().contains(&"ro".to_string()));
}

#[test]
fn run_as_non_root_refuses_root_and_groups_are_added() {
    let err = try_build(
        &pod("  securityContext: {runAsNonRoot: true}\n", ""),
        &image(),
    )
    .unwrap_err();
    assert!(matches!(err, SpecError::RunsAsRoot { .. }), "{err}");
    let ok = build(
        &pod("  securityContext: {runAsNonRoot: true, runAsUser: 1000, fsGroup: 2000, supplementalGroups: [3000]}\n", ""),
        &image(),
    );
    let user = ok.process().as_ref().unwrap().user().clone();
    assert_eq!(user.uid(), 1000);
    assert_eq!(user.additional_gids().clone().unwrap(), [2000, 3000]);
}

#[test]
fn pod_files_are_bound_in_unless_a_volume_takes_the_path() {
    let p = pod("", "");
    let container = &p.pod.spec.as_ref().unwrap().containers[0];
    let sandbox = SandboxFacts {
        files: Some(PodFiles::new(Path::new("/state"), "uid").unwrap()),
        ..sandbox()
    };
    let mut volume = Mount::default();
    volume
        .set_destination("/etc/resolv.conf".into())
        .set_source(Some("/elsewhere".into()));
    let inputs = ContainerInputs {
        mounts: vec![volume],
        ..Default::default()
    };
    let spec = container_spec(
        &p,
        container,
        "spec.containers",
        &image(),
        &sandbox,
        &inputs,
    )
    .unwrap();
    let sources: Vec<(String, String)> = spec
        .mounts()
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m.destination().display().to_string(),
                m.source()
                    .as_ref()
                    .map(|s| s.display().to_string())
                    .unwrap_or_default(),
            )
        })
        .collect();
    assert!(sources.contains(&("/etc/hosts".into(), "/state/pods/uid/etc-hosts".into())));
    assert!(sources.contains(&("/dev/shm".into(), "/state/pods/uid/shm".into())));
    assert!(sources.contains(&("/etc/resolv.conf".into(), "/elsewhere".into())));
    assert_eq!(sources.iter().filter(|(d, _)| d == "/dev/shm").count(), 1);
    assert_eq!(
        sources
            .iter()
            .filter(|(d, _)| d == "/etc/resolv.conf")
            .count(),
        1
    );
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
