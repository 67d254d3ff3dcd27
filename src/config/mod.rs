//! Agent settings: command-line flags over an optional YAML file over defaults.
//!
//! Every setting is both a flag and a key of the config file, with the same
//! name (`--manifest-dir` ↔ `manifest-dir:`), so operators only learn one
//! vocabulary. Unknown keys are an error: a typo must not silently fall back
//! to a default.

use std::path::{Path, PathBuf};

use clap::Args;
use serde::Deserialize;

use crate::status::events::Retention;

mod api;

pub use api::ApiSettings;

/// Where the config file is read from when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/podkeeper/config.yaml";

/// The `podkeeper run` flags. Every field is optional so that "not given on
/// the command line" can fall through to the config file.
#[derive(Debug, Default, Clone, Args)]
pub struct RunFlags {
    /// YAML config file [default: /etc/podkeeper/config.yaml if it exists]
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Directory of static pod manifests [default: /etc/podkeeper/manifests]
    #[arg(long)]
    pub manifest_dir: Option<PathBuf>,
    /// containerd's gRPC socket [default: /run/containerd/containerd.sock]
    #[arg(long)]
    pub containerd_address: Option<PathBuf>,
    /// containerd namespace that holds everything podkeeper creates [default: podkeeper]
    #[arg(long)]
    pub containerd_namespace: Option<String>,
    /// Address of the authenticated HTTPS API; empty turns it off [default: 127.0.0.1:10250]
    #[arg(long)]
    pub api_listen: Option<String>,
    /// Address of the plain HTTP port: health checks only, no credentials; empty turns it off [default: 127.0.0.1:10255]
    #[arg(long)]
    pub http_listen: Option<String>,
    /// PEM certificate (chain) the HTTPS API serves [default: one issued from podkeeper's own CA]
    #[arg(long)]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of tls-cert-file
    #[arg(long)]
    pub tls_private_key_file: Option<PathBuf>,
    /// PEM CA bundle: client certificates it signed authenticate as their CN, with their O values as groups
    #[arg(long)]
    pub client_ca_file: Option<PathBuf>,
    /// Bearer tokens as kube-apiserver's --token-auth-file: CSV lines token,user,uid,"group1,group2"
    #[arg(long)]
    pub token_auth_file: Option<PathBuf>,
    /// Also serve /metrics without credentials on http-listen [default: false]
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub metrics_unauthenticated: Option<bool>,
    /// Agent state: API socket and records [default: /var/lib/podkeeper]
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Container logs, as /var/log/pods/<ns>_<pod>_<uid>/<container>/ [default: /var/log/pods]
    #[arg(long)]
    pub pod_log_dir: Option<PathBuf>,
    /// Image archives to import [default: /var/lib/podkeeper/images]
    #[arg(long)]
    pub images_dir: Option<PathBuf>,
    /// Node name used in pod names and events [default: host name, lowercased]
    #[arg(long)]
    pub node_name: Option<String>,
    /// Image of the pod sandbox [default: the built-in podkeeper.local/pause:<version>]
    #[arg(long)]
    pub sandbox_image: Option<String>,
    /// Seconds between full re-reads of the manifest directory [default: 20]
    #[arg(long)]
    pub manifest_resync_seconds: Option<u64>,
    /// Docker-style config.json with registry credentials ("auths") [default: /root/.docker/config.json]
    #[arg(long)]
    pub registry_config: Option<PathBuf>,
    /// Registry host[:port] spoken to over plain HTTP; repeatable (localhost and 127.0.0.1 always are)
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// Directory of CNI plugins; repeatable, first holding a plugin wins [default: /usr/lib/cni, /opt/cni/bin]
    #[arg(long = "cni-bin-dir")]
    pub cni_bin_dirs: Vec<PathBuf>,
    /// Directory whose first *.conflist (by name) is the pod network [default: /etc/cni/net.d]
    #[arg(long)]
    pub cni_conf_dir: Option<PathBuf>,
    /// Bridge of the built-in network, used when cni-conf-dir has no config [default: podkeeper0]
    #[arg(long)]
    pub cni_default_bridge: Option<String>,
    /// Subnet of the built-in network [default: 10.85.0.0/16]
    #[arg(long)]
    pub cni_default_subnet: Option<String>,
    /// Parent cgroup of all pods (cgroupfs layout, as the kubelet's) [default: /kubepods]
    #[arg(long)]
    pub cgroup_root: Option<String>,
    /// The node's IP, reported as hostIP [default: the address of the default route's interface]
    #[arg(long)]
    pub node_ip: Option<String>,
    /// Rotate a container's log file past this many bytes [default: 10485760]
    #[arg(long)]
    pub container_log_max_size: Option<u64>,
    /// Log files kept per container, the current one included [default: 5]
    #[arg(long)]
    pub container_log_max_files: Option<u32>,
    /// Seconds an event is kept after it last happened, as the API server's --event-ttl [default: 3600]
    #[arg(long)]
    pub event_ttl_seconds: Option<u64>,
    /// Events kept per involved object (pod, manifest file, node); the least recently seen go first [default: 100]
    #[arg(long)]
    pub event_max_per_pod: Option<usize>,
    /// Events kept in all [default: 2048]
    #[arg(long)]
    pub event_max_total: Option<usize>,
}

/// The config file's keys; the same names as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct FileSettings {
    manifest_dir: Option<PathBuf>,
    containerd_address: Option<PathBuf>,
    containerd_namespace: Option<String>,
    api_listen: Option<String>,
    http_listen: Option<String>,
    tls_cert_file: Option<PathBuf>,
    tls_private_key_file: Option<PathBuf>,
    client_ca_file: Option<PathBuf>,
    token_auth_file: Option<PathBuf>,
    metrics_unauthenticated: Option<bool>,
    state_dir: Option<PathBuf>,
    pod_log_dir: Option<PathBuf>,
    images_dir: Option<PathBuf>,
    node_name: Option<String>,
    sandbox_image: Option<String>,
    manifest_resync_seconds: Option<u64>,
    registry_config: Option<PathBuf>,
    insecure_registries: Option<Vec<String>>,
    cni_bin_dirs: Option<Vec<PathBuf>>,
    cni_conf_dir: Option<PathBuf>,
    cni_default_bridge: Option<String>,
    cni_default_subnet: Option<String>,
    cgroup_root: Option<String>,
    node_ip: Option<String>,
    container_log_max_size: Option<u64>,
    container_log_max_files: Option<u32>,
    event_ttl_seconds: Option<u64>,
    event_max_per_pod: Option<usize>,
    event_max_total: Option<usize>,
}

/// Settings after merging, validated once at start-up.
#[derive(Debug, Clone)]
pub struct Settings {
    pub manifest_dir: PathBuf,
    pub containerd_address: PathBuf,
    pub containerd_namespace: String,
    /// The HTTP listeners and who may use them.
    pub api: ApiSettings,
    pub state_dir: PathBuf,
    pub pod_log_dir: PathBuf,
    pub images_dir: PathBuf,
    pub node_name: String,
    /// `None` means the built-in pause image.
    pub sandbox_image: Option<String>,
    pub manifest_resync: std::time::Duration,
    pub registry_config: PathBuf,
    pub insecure_registries: Vec<String>,
    pub cni_bin_dirs: Vec<PathBuf>,
    pub cni_conf_dir: PathBuf,
    pub cni_default_bridge: String,
    pub cni_default_subnet: String,
    pub cgroup_root: String,
    /// `None`: detect at start.
    pub node_ip: Option<String>,
    pub container_log_max_size: u64,
    pub container_log_max_files: u32,
    /// How long and how many events are kept (`event-*` keys).
    pub event_retention: Retention,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    #[error("{key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

impl Settings {
    /// Merges flags over the config file over defaults. The default config
    /// path is only read if it exists; an explicit `--config` must exist.
    pub fn load(flags: &RunFlags) -> Result<Settings, ConfigError> {
        let file = match &flags.config {
            Some(path) => read_file(path)?,
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                read_file(Path::new(DEFAULT_CONFIG_PATH))?
            }
            None => FileSettings::default(),
        };
        Settings::merge(flags.clone(), file)
    }

    fn merge(flags: RunFlags, file: FileSettings) -> Result<Settings, ConfigError> {
        let event_retention = event_retention(&flags, &file)?;
        let api = api::settings(&flags, &file)?;
        let namespace = flags
            .containerd_namespace
            .or(file.containerd_namespace)
            .unwrap_or_else(|| "podkeeper".into());
        if namespace == "k8s.io" || namespace == "default" || namespace == "moby" {
            return Err(ConfigError::Invalid {
                key: "containerd-namespace",
                reason: format!(
                    "{namespace:?} belongs to another containerd client; podkeeper needs a namespace of its own"
                ),
            });
        }
        let node_name = match flags.node_name.or(file.node_name) {
            Some(name) => name.to_lowercase(),
            None => host_name().map_err(|reason| ConfigError::Invalid {
                key: "node-name",
                reason,
            })?,
        };
        if node_name.is_empty() {
            return Err(ConfigError::Invalid {
                key: "node-name",
                reason: "must not be empty".into(),
            });
        }
        let resync = flags
            .manifest_resync_seconds
            .or(file.manifest_resync_seconds)
            .unwrap_or(20);
        if resync == 0 {
            return Err(ConfigError::Invalid {
                key: "manifest-resync-seconds",
                reason: "must be at least 1".into(),
            });
        }
        let pick = |flag: Option<PathBuf>, key: Option<PathBuf>, default: &str| {
            flag.or(key).unwrap_or_else(|| PathBuf::from(default))
        };
        Ok(Settings {
            manifest_dir: pick(
                flags.manifest_dir,
                file.manifest_dir,
                "/etc/podkeeper/manifests",
            ),
            containerd_address: pick(
                flags.containerd_address,
                file.containerd_address,
                "/run/containerd/containerd.sock",
            ),
            containerd_namespace: namespace,
            api,
            state_dir: pick(flags.state_dir, file.state_dir, "/var/lib/podkeeper"),
            pod_log_dir: pick(flags.pod_log_dir, file.pod_log_dir, "/var/log/pods"),
            images_dir: pick(
                flags.images_dir,
                file.images_dir,
                "/var/lib/podkeeper/images",
            ),
            node_name,
            sandbox_image: flags.sandbox_image.or(file.sandbox_image),
            manifest_resync: std::time::Duration::from_secs(resync),
            registry_config: pick(
                flags.registry_config,
                file.registry_config,
                "/root/.docker/config.json",
            ),
            insecure_registries: list(flags.insecure_registries, file.insecure_registries, &[]),
            cni_bin_dirs: list(
                flags.cni_bin_dirs,
                file.cni_bin_dirs,
                &["/usr/lib/cni".into(), "/opt/cni/bin".into()],
            ),
            cni_conf_dir: pick(flags.cni_conf_dir, file.cni_conf_dir, "/etc/cni/net.d"),
            cni_default_bridge: flags
                .cni_default_bridge
                .or(file.cni_default_bridge)
                .unwrap_or_else(|| "podkeeper0".into()),
            cni_default_subnet: flags
                .cni_default_subnet
                .or(file.cni_default_subnet)
                .unwrap_or_else(|| "10.85.0.0/16".into()),
            cgroup_root: flags
                .cgroup_root
                .or(file.cgroup_root)
                .unwrap_or_else(|| "/kubepods".into()),
            node_ip: flags.node_ip.or(file.node_ip),
            container_log_max_size: flags
                .container_log_max_size
                .or(file.container_log_max_size)
                .unwrap_or(10 << 20),
            container_log_max_files: flags
                .container_log_max_files
                .or(file.container_log_max_files)
                .unwrap_or(5),
            event_retention,
        })
    }

    /// The agent's gRPC API socket.
    pub fn api_socket(&self) -> PathBuf {
        api_socket_in(&self.state_dir)
    }
}

/// The `event-*` keys; each must be at least 1, since keeping no events at
/// all is surely a mistake.
fn event_retention(flags: &RunFlags, file: &FileSettings) -> Result<Retention, ConfigError> {
    let default = Retention::default();
    let at_least_one = |key: &'static str, value: u64| {
        if value == 0 {
            Err(ConfigError::Invalid {
                key,
                reason: "must be at least 1".into(),
            })
        } else {
            Ok(value)
        }
    };
    let ttl = flags
        .event_ttl_seconds
        .or(file.event_ttl_seconds)
        .unwrap_or(default.ttl.as_secs());
    let per_pod = flags
        .event_max_per_pod
        .or(file.event_max_per_pod)
        .unwrap_or(default.max_per_object);
    let total = flags
        .event_max_total
        .or(file.event_max_total)
        .unwrap_or(default.max_total);
    Ok(Retention {
        ttl: std::time::Duration::from_secs(at_least_one("event-ttl-seconds", ttl)?),
        max_per_object: at_least_one("event-max-per-pod", per_pod as u64)? as usize,
        max_total: at_least_one("event-max-total", total as u64)? as usize,
    })
}

/// A list setting: the flag's values if any were given, else the file's,
/// else the default.
fn list<T: Clone>(flag: Vec<T>, file: Option<Vec<T>>, default: &[T]) -> Vec<T> {
    if !flag.is_empty() {
        return flag;
    }
    file.unwrap_or_else(|| default.to_vec())
}

/// Where the agent's API socket lives inside a state directory; shared by
/// the agent and the CLI so they cannot disagree.
pub fn api_socket_in(state_dir: &Path) -> PathBuf {
    state_dir.join("podkeeper.sock")
}

fn read_file(path: &Path) -> Result<FileSettings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    if text.trim().is_empty() {
        return Ok(FileSettings::default());
    }
    serde_yaml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.into(),
        source,
    })
}

fn host_name() -> Result<String, String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // within it or fails.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return Err(format!(
            "cannot read the host name: {}",
            std::io::Error::last_os_error()
        ));
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).to_lowercase())
}

#[cfg(test)]
mod tests;
