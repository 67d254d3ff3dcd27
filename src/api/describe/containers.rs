//! The container blocks of `kubectl describe pod` (`describeContainers`):
//! ports, command, state, resources, probes, environment and mounts.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStatus, EnvVar, Probe, ResourceRequirements, SeccompProfile,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::tabwriter::Writer;
use super::{quantity, Describer};

impl Describer<'_> {
    /// One `Containers:` or `Init Containers:` section.
    pub(super) fn containers(
        &mut self,
        label: &str,
        containers: &[Container],
        statuses: &[ContainerStatus],
    ) {
        let none = if containers.is_empty() { " <none>" } else { "" };
        self.w.write(0, &format!("{label}:{none}\n"));
        for container in containers {
            let status = statuses.iter().find(|s| s.name == container.name);
            basic_info(&mut self.w, container, status);
            command(&mut self.w, container);
            if let Some(status) = status {
                self.state("State", status.state.as_ref());
                if let Some(last) = status
                    .last_state
                    .as_ref()
                    .filter(|l| l.terminated.is_some())
                {
                    self.state("Last State", Some(last));
                }
                let ready = if status.ready { "True" } else { "False" };
                self.w.write(2, &format!("Ready:\t{ready}\n"));
                self.w
                    .write(2, &format!("Restart Count:\t{}\n", status.restart_count));
            }
            if let Some(resources) = &container.resources {
                resources_block(&mut self.w, resources, 2);
            }
            let probes = [
                ("Liveness", &container.liveness_probe),
                ("Readiness", &container.readiness_probe),
                ("Startup", &container.startup_probe),
            ];
            for (title, probe) in probes {
                if let Some(probe) = probe {
                    self.w
                        .write(2, &format!("{title}:\t{}\n", describe_probe(probe)));
                }
            }
            env_from(&mut self.w, container);
            self.env(container);
            mounts(&mut self.w, container);
        }
    }

    /// `describeStatus`.
    fn state(&mut self, title: &str, state: Option<&ContainerState>) {
        let state = state.cloned().unwrap_or_default();
        if let Some(running) = &state.running {
            self.w.write(2, &format!("{title}:\tRunning\n"));
            let started = self.time_or_zero(running.started_at.as_ref());
            self.w.write(3, &format!("Started:\t{started}\n"));
        } else if let Some(waiting) = &state.waiting {
            self.w.write(2, &format!("{title}:\tWaiting\n"));
            if let Some(reason) = waiting.reason.as_ref().filter(|r| !r.is_empty()) {
                self.w.write(3, &format!("Reason:\t{reason}\n"));
            }
        } else if let Some(t) = &state.terminated {
            self.w.write(2, &format!("{title}:\tTerminated\n"));
            for (name, value) in [("Reason", &t.reason), ("Message", &t.message)] {
                if let Some(value) = value.as_ref().filter(|v| !v.is_empty()) {
                    self.w.write(3, &format!("{name}:\t{value}\n"));
                }
            }
            self.w.write(3, &format!("Exit Code:\t{}\n", t.exit_code));
            if let Some(signal) = t.signal.filter(|s| *s > 0) {
                self.w.write(3, &format!("Signal:\t{signal}\n"));
            }
            let started = self.time_or_zero(t.started_at.as_ref());
            let finished = self.time_or_zero(t.finished_at.as_ref());
            self.w.write(3, &format!("Started:\t{started}\n"));
            self.w.write(3, &format!("Finished:\t{finished}\n"));
        } else {
            self.w.write(2, &format!("{title}:\tWaiting\n"));
        }
    }

    /// An absolute time; Go prints an unset one as its zero time in UTC.
    fn time_or_zero(
        &self,
        t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    ) -> String {
        match t {
            Some(t) => self.time(t.0),
            None => "Mon, 01 Jan 0001 00:00:00 +0000".into(),
        }
    }

    /// `describeContainerEnvVars`: values as the pod gives them. A
    /// `fieldRef` shows only what kubectl can resolve without the server's
    /// field conversions (name and namespace); secrets and config maps only
    /// by reference.
    fn env(&mut self, container: &Container) {
        let env = container.env.as_deref().unwrap_or(&[]);
        let none = if env.is_empty() { "\t<none>" } else { "" };
        self.w.write(2, &format!("Environment:{none}\n"));
        for var in env {
            for line in self.env_lines(container, var) {
                self.w.write(3, &line);
            }
        }
    }

    /// One variable's lines: a plain value shows each of its lines.
    fn env_lines(&self, container: &Container, var: &EnvVar) -> Vec<String> {
        let name = &var.name;
        let Some(source) = &var.value_from else {
            let value = var.value.as_deref().unwrap_or("");
            return value
                .split('\n')
                .enumerate()
                .map(|(i, line)| match i {
                    0 => format!("{name}:\t{line}\n"),
                    _ => format!("\t{line}\n"),
                })
                .collect();
        };
        let optional = |o: Option<bool>| o.unwrap_or(false);
        if let Some(field) = &source.field_ref {
            let meta = &self.pod.metadata;
            let value = match field.field_path.as_str() {
                "metadata.name" => meta.name.clone().unwrap_or_default(),
                "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
                _ => String::new(),
            };
            let version = field.api_version.as_deref().unwrap_or("v1");
            vec![format!(
                "{name}:\t{value} ({version}:{})\n",
                field.field_path
            )]
        } else if let Some(field) = &source.resource_field_ref {
            let resource = field.resource.as_str();
            let value = match resource_value(container, resource, field.divisor.as_ref()) {
                Some(0) if resource == "limits.cpu" || resource == "limits.memory" => {
                    "node allocatable".to_string()
                }
                Some(value) => value.to_string(),
                None => String::new(),
            };
            vec![format!("{name}:\t{value} ({resource})\n")]
        } else if let Some(key) = &source.secret_key_ref {
            vec![format!(
                "{name}:\t<set to the key '{}' in secret '{}'>\tOptional: {}\n",
                key.key,
                key.name,
                optional(key.optional)
            )]
        } else if let Some(key) = &source.config_map_key_ref {
            vec![format!(
                "{name}:\t<set to the key '{}' of config map '{}'>\tOptional: {}\n",
                key.key,
                key.name,
                optional(key.optional)
            )]
        } else {
            Vec::new()
        }
    }
}

/// Name, IDs, image, ports and seccomp (`describeContainerBasicInfo`).
fn basic_info(w: &mut Writer, container: &Container, status: Option<&ContainerStatus>) {
    w.write(1, &format!("{}:\n", container.name));
    if let Some(status) = status {
        let id = status.container_id.as_deref().unwrap_or("");
        w.write(2, &format!("Container ID:\t{id}\n"));
    }
    let image = container.image.as_deref().unwrap_or("");
    w.write(2, &format!("Image:\t{image}\n"));
    if let Some(status) = status {
        w.write(2, &format!("Image ID:\t{}\n", status.image_id));
    }
    let ports = container.ports.as_deref().unwrap_or(&[]);
    let list = |port: &dyn Fn(&k8s_openapi::api::core::v1::ContainerPort) -> i32| {
        ports
            .iter()
            .map(|p| format!("{}/{}", port(p), p.protocol.as_deref().unwrap_or("TCP")))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let lines = [
        ("Port", list(&|p| p.container_port)),
        ("Host Port", list(&|p| p.host_port.unwrap_or(0))),
    ];
    for (title, text) in lines {
        if text.contains(',') {
            w.write(2, &format!("{title}s:\t{text}\n"));
        } else if text.is_empty() {
            w.write(2, &format!("{title}:\t<none>\n"));
        } else {
            w.write(2, &format!("{title}:\t{text}\n"));
        }
    }
    let seccomp = container
        .security_context
        .as_ref()
        .and_then(|s| s.seccomp_profile.as_ref());
    if let Some(profile) = seccomp {
        self::seccomp(w, profile, 2, 3);
    }
}

/// `SeccompProfile:` at `level`, its localhost profile at `nested`.
pub(super) fn seccomp(w: &mut Writer, profile: &SeccompProfile, level: usize, nested: usize) {
    w.write(level, &format!("SeccompProfile:\t{}\n", profile.type_));
    if profile.type_ == "Localhost" {
        let local = profile.localhost_profile.as_deref().unwrap_or("");
        w.write(nested, &format!("LocalhostProfile:\t{local}\n"));
    }
}

/// `Command:` and `Args:`, one line per line of each word.
fn command(w: &mut Writer, container: &Container) {
    let lists = [("Command", &container.command), ("Args", &container.args)];
    for (title, words) in lists {
        let Some(words) = words.as_ref().filter(|w| !w.is_empty()) else {
            continue;
        };
        w.write(2, &format!("{title}:\n"));
        for line in words.iter().flat_map(|word| word.split('\n')) {
            w.write(3, &format!("{line}\n"));
        }
    }
}

/// `Limits:` and `Requests:` with sorted resource names
/// (`describeResources`).
pub(super) fn resources_block(w: &mut Writer, resources: &ResourceRequirements, level: usize) {
    let lists = [
        ("Limits", &resources.limits),
        ("Requests", &resources.requests),
    ];
    for (title, list) in lists {
        let Some(list) = list.as_ref().filter(|l| !l.is_empty()) else {
            continue;
        };
        w.write(level, &format!("{title}:\n"));
        for (name, value) in list {
            w.write(level + 1, &format!("{name}:\t{}\n", quantity(value)));
        }
    }
}

/// kubectl's `DescribeProbe`, with the API server's defaults for fields a
/// manifest left out (period 10s, timeout 1s, thresholds 1 and 3).
pub(super) fn describe_probe(probe: &Probe) -> String {
    let attrs = format!(
        "delay={}s timeout={}s period={}s #success={} #failure={}",
        probe.initial_delay_seconds.unwrap_or(0),
        probe.timeout_seconds.unwrap_or(1),
        probe.period_seconds.unwrap_or(10),
        probe.success_threshold.unwrap_or(1),
        probe.failure_threshold.unwrap_or(3),
    );
    if let Some(exec) = &probe.exec {
        let command = exec.command.as_deref().unwrap_or(&[]).join(" ");
        format!("exec [{command}] {attrs}")
    } else if let Some(http) = &probe.http_get {
        let scheme = http.scheme.as_deref().unwrap_or("HTTP").to_lowercase();
        let host = http.host.as_deref().unwrap_or("");
        let port = int_or_string(&http.port);
        let authority = match (port.is_empty(), host.contains(':')) {
            (true, _) => host.to_string(),
            (false, true) => format!("[{host}]:{port}"),
            (false, false) => format!("{host}:{port}"),
        };
        let path = http.path.as_deref().unwrap_or("");
        let slash = if !path.is_empty() && !path.starts_with('/') && !authority.is_empty() {
            "/"
        } else {
            ""
        };
        format!(
            "http-get {scheme}://{authority}{slash}{} {attrs}",
            escape_path(path)
        )
    } else if let Some(tcp) = &probe.tcp_socket {
        let host = tcp.host.as_deref().unwrap_or("");
        format!("tcp-socket {host}:{} {attrs}", int_or_string(&tcp.port))
    } else if let Some(grpc) = &probe.grpc {
        let service = grpc.service.as_deref().unwrap_or("");
        format!("grpc <pod>:{} {service} {attrs}", grpc.port)
    } else {
        format!("unknown {attrs}")
    }
}

fn int_or_string(value: &IntOrString) -> String {
    match value {
        IntOrString::Int(n) => n.to_string(),
        IntOrString::String(s) => s.clone(),
    }
}

/// Go's `url.PathEscape` rules for a URL path (`encodePath`), so a probe
/// path prints as `url.URL.String()` would print it.
fn escape_path(path: &str) -> String {
    let mut out = String::new();
    for byte in path.bytes() {
        let keep = byte.is_ascii_alphanumeric() || b"-_.~$&+,/:;=@".contains(&byte);
        if keep {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `ExtractContainerResourceValue` for the container itself (kubectl
/// ignores `containerName`): the request or limit divided by the divisor,
/// rounded up, 0 when unset. `None` for resources kubectl does not know.
fn resource_value(
    container: &Container,
    resource: &str,
    divisor: Option<&Quantity>,
) -> Option<i64> {
    let (list, name) = resource.split_once('.')?;
    let resources = container.resources.clone().unwrap_or_default();
    let map: BTreeMap<String, Quantity> = match list {
        "limits" => resources.limits.unwrap_or_default(),
        "requests" => resources.requests.unwrap_or_default(),
        _ => return None,
    };
    let known =
        ["cpu", "memory", "ephemeral-storage"].contains(&name) || name.starts_with("hugepages-");
    if !known {
        return None;
    }
    let parse = |q: &Quantity| crate::runtime::quantity::parse(q.0.trim()).ok();
    let amount = map.get(name).and_then(parse);
    let divisor = divisor.and_then(parse).filter(|d| !d.is_zero());
    let (amount, per) = if name == "cpu" {
        (
            amount.map_or(0, |a| a.milli_value()),
            divisor.map_or(1000, |d| d.milli_value()),
        )
    } else {
        (
            amount.map_or(0, |a| a.value()),
            divisor.map_or(1, |d| d.value()),
        )
    };
    if per <= 0 {
        return None;
    }
    Some(amount.div_euclid(per) + i64::from(amount.rem_euclid(per) != 0))
}

/// `Environment Variables from:` (only when `envFrom` is used).
fn env_from(w: &mut Writer, container: &Container) {
    let Some(sources) = container.env_from.as_ref().filter(|s| !s.is_empty()) else {
        return;
    };
    w.write(2, "Environment Variables from:\n");
    for source in sources {
        let (name, from, optional) = if let Some(r) = &source.config_map_ref {
            (r.name.as_str(), "ConfigMap", r.optional)
        } else if let Some(r) = &source.secret_ref {
            (r.name.as_str(), "Secret", r.optional)
        } else {
            ("", "", None)
        };
        let optional = optional.unwrap_or(false);
        match source.prefix.as_deref().filter(|p| !p.is_empty()) {
            None => w.write(3, &format!("{name}\t{from}\tOptional: {optional}\n")),
            Some(prefix) => w.write(
                3,
                &format!("{name}\t{from} with prefix '{prefix}'\tOptional: {optional}\n"),
            ),
        }
    }
}

/// `Mounts:` sorted by path, `(ro|rw[,path="sub"])`.
fn mounts(w: &mut Writer, container: &Container) {
    let mut list: Vec<_> = container.volume_mounts.iter().flatten().collect();
    let none = if list.is_empty() { "\t<none>" } else { "" };
    w.write(2, &format!("Mounts:{none}\n"));
    list.sort_by(|a, b| a.mount_path.cmp(&b.mount_path));
    for mount in list {
        let mut flags = vec![if mount.read_only == Some(true) {
            "ro"
        } else {
            "rw"
        }
        .to_string()];
        if let Some(sub) = mount.sub_path.as_ref().filter(|s| !s.is_empty()) {
            flags.push(format!("path={sub:?}"));
        }
        w.write(
            3,
            &format!(
                "{} from {} ({})\n",
                mount.mount_path,
                mount.name,
                flags.join(",")
            ),
        );
    }
}
