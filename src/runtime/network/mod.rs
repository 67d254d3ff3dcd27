//! Pod networking through CNI plugins, the way containerd's CRI plugin does
//! it: every pod gets its own network namespace, pinned by a bind mount
//! ([`netns`]), and the plugins of one network configuration list are run
//! into it (ADD on setup, DEL in reverse on teardown, CHECK on demand).
//!
//! The configuration is the first `*.conflist`/`*.conf`/`*.json` file of the
//! CNI config directory, as with containerd; without one, a built-in network
//! is used (a `bridge` with `host-local` addresses, `portmap` for hostPorts
//! and `firewall` so that a host whose FORWARD policy is DROP, as Docker
//! leaves it, still forwards pod traffic).
//!
//! Order of operations for a sandbox, and why:
//! 1. [`netns::create`] — the namespace must exist before the plugins can put
//!    an interface into it, and before the sandbox task, whose OCI spec
//!    joins it by path.
//! 2. [`Network::setup`] (CNI ADD) — the pod's IP is known before any
//!    container starts, so `/etc/hosts` and the status can carry it.
//! 3. The sandbox task, joining the namespace.
//!
//! Teardown goes the other way: stop the containers and the sandbox task,
//! then [`Network::teardown`] (CNI DEL) *while the namespace is still
//! mounted* (the bridge plugin reads the pod's addresses from it to remove
//! its masquerade rules), then [`netns::remove`].

mod cache;
mod config;
mod exec;
pub mod hostport;
mod iptables;
mod leftovers;
pub mod localnet;
pub mod netns;
mod request;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use cache::CachedResult;
use config::NetConfList;
use exec::{CniCommand, Invocation};
use request::{capability_args, cni_args, validate};

/// The interface name the pod's network device gets, as on Kubernetes.
pub const POD_INTERFACE: &str = "eth0";

/// How long one plugin may run before it is killed. Generous, because a
/// plugin may wait for the xtables lock held by another one (portmap,
/// firewall and bridge's masquerade all take it), yet bounded, because a
/// hung plugin must not hold a pod worker forever.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the network configuration and the plugins are, and where the
/// agent keeps what must survive its restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSettings {
    /// Directories searched for plugin binaries, in order: the first one
    /// holding a plugin wins. Also passed to plugins as `CNI_PATH`, which
    /// they use to find their IPAM plugin.
    pub bin_dirs: Vec<PathBuf>,
    /// The CNI configuration directory: the first `*.conflist` (or `*.conf`
    /// / `*.json`, wrapped into a list) by file name is used.
    pub conf_dir: PathBuf,
    /// The agent's state directory: network namespaces under `netns/`, the
    /// cached ADD results and the built-in network's IPAM data under `cni/`.
    pub state_dir: PathBuf,
    /// The built-in network's bridge (at most 15 bytes, a Linux interface
    /// name).
    pub default_bridge: String,
    /// The built-in network's subnet. 10.85.0.0/16 stays clear of the
    /// defaults of the runtimes most likely to share a node: Docker's
    /// 172.17.0.0/16, podman's and containerd's sample config's
    /// 10.88.0.0/16, flannel's 10.244.0.0/16 and k3s's 10.42.0.0/16 and
    /// 10.43.0.0/16. (CRI-O's sample bridge config also uses 10.85.0.0/16:
    /// change one of them when both run on a node.)
    pub default_subnet: String,
}

impl Default for NetworkSettings {
    fn default() -> Self {
        NetworkSettings {
            bin_dirs: vec![PathBuf::from("/usr/lib/cni"), PathBuf::from("/opt/cni/bin")],
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            state_dir: PathBuf::from("/var/lib/podkeeper"),
            default_bridge: "podkeeper0".to_string(),
            default_subnet: "10.85.0.0/16".to_string(),
        }
    }
}

impl NetworkSettings {
    /// Where the pods' network namespaces are pinned.
    pub fn netns_dir(&self) -> PathBuf {
        self.state_dir.join("netns")
    }

    /// The root of the CNI state: cached results and the built-in network's
    /// IPAM data.
    pub fn cni_state_dir(&self) -> PathBuf {
        self.state_dir.join("cni")
    }
}

/// Why a pod's network could not be set up, torn down or checked. Plugin
/// failures name the plugin, the CNI error code and message, and the
/// configuration in use.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("reading CNI config directory {}: {source}", dir.display())]
    ConfDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("reading CNI config {}: {source}", path.display())]
    ConfRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CNI config {}: {reason}", path.display())]
    ConfInvalid { path: PathBuf, reason: String },
    #[error("built-in CNI network: {0}")]
    Settings(String),
    #[error("invalid pod network request: {0}")]
    Request(String),
    #[error("CNI plugin {plugin:?} not found in {dirs} (network {conf})")]
    PluginNotFound {
        plugin: String,
        dirs: String,
        conf: String,
    },
    #[error(
        "CNI plugin {plugin} {command} failed (network {conf}): code {code} ({}): {msg}{}",
        exec::code_meaning(*code),
        if details.is_empty() { String::new() } else { format!(": {details}") }
    )]
    Plugin {
        plugin: String,
        command: &'static str,
        conf: String,
        code: u64,
        msg: String,
        details: String,
    },
    #[error("CNI plugin {plugin} {command} failed (network {conf}): {reason}")]
    PluginFailed {
        plugin: String,
        command: &'static str,
        conf: String,
        reason: String,
    },
    #[error("CNI plugin {plugin} {command} was killed after {} s (network {conf})", timeout.as_secs())]
    Timeout {
        plugin: String,
        command: &'static str,
        conf: String,
        timeout: Duration,
    },
    #[error("CNI result cache {}: {reason}", path.display())]
    Cache { path: PathBuf, reason: String },
    #[error("keeping pods off the host's 127.0.0.0/8 (iptables chain {chain}): {reason}")]
    Loopback { chain: String, reason: String },
    #[error("CNI CHECK of sandbox {sandbox}: {reason} (network {conf})")]
    Check {
        sandbox: String,
        conf: String,
        reason: String,
    },
}

/// One hostPort of a pod, serialized exactly as an entry of CNI's
/// `portMappings` runtime config.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    #[serde(rename = "hostPort")]
    pub host_port: u16,
    #[serde(rename = "containerPort")]
    pub container_port: u16,
    /// "tcp", "udp" or "sctp": lower case, as the portmap plugin wants it.
    pub protocol: String,
    /// The host address the port is bound to; "" for all of them.
    #[serde(rename = "hostIP", default, skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
}

/// Which pod a CNI operation is for.
#[derive(Debug, Clone, Copy)]
pub struct PodNetworkRequest<'a> {
    /// The sandbox container's ID: CNI's container ID, and part of the names
    /// of the plugins' iptables chains and of the result cache.
    pub sandbox_id: &'a str,
    /// The pinned network namespace (see [`netns::create`]).
    pub netns: &'a Path,
    pub pod_name: &'a str,
    pub pod_namespace: &'a str,
    pub pod_uid: &'a str,
    pub port_mappings: &'a [PortMapping],
}

/// What a pod got from its network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetwork {
    /// The pod's addresses, IPv4 before IPv6; the first is the pod IP.
    pub ips: Vec<IpAddr>,
    /// The interface inside the pod's namespace they are on.
    pub interface: String,
}

/// A loaded CNI network configuration and the plugins to run it with.
#[derive(Debug, Clone)]
pub struct Network {
    settings: NetworkSettings,
    list: NetConfList,
    /// `CNI_PATH`: the bin dirs joined by ':'.
    cni_path: String,
}

impl Network {
    /// Loads the first configuration file (by name) from the config
    /// directory, or the built-in network when there is none. A file that
    /// cannot be read or parsed is an error naming it, not a silent fallback
    /// to the built-in network: pods would end up on a network nobody chose.
    pub fn load(settings: NetworkSettings) -> Result<Network, NetworkError> {
        let list = config::load(&settings)?;
        let cni_path = std::env::join_paths(&settings.bin_dirs)
            .map_err(|e| NetworkError::Settings(format!("CNI bin dirs: {e}")))?
            .to_string_lossy()
            .into_owned();
        Ok(Network {
            settings,
            list,
            cni_path,
        })
    }

    /// Which configuration is in use, for logs: the file, or the built-in
    /// network's bridge and subnet.
    pub fn describe(&self) -> String {
        self.list.describe()
    }

    /// The CNI network name (the `name` of the configuration list).
    pub fn name(&self) -> &str {
        &self.list.name
    }

    /// Runs CNI ADD through the plugin chain, each plugin getting the
    /// previous one's result, and caches the final result for DEL and
    /// CHECK. On failure, runs DEL through the whole chain so no address,
    /// interface or rule is left behind, then returns the ADD error.
    pub async fn setup(&self, request: &PodNetworkRequest<'_>) -> Result<PodNetwork, NetworkError> {
        validate(request)?;
        if !netns::is_netns(request.netns) {
            return Err(NetworkError::Request(format!(
                "{} is not a network namespace",
                request.netns.display()
            )));
        }
        // Before portmap can turn on route_localnet; no pod joins a
        // network whose loopback guard could not be installed.
        self.protect_host_loopback().await?;
        let started = Instant::now();
        let capability_args = capability_args(request.port_mappings);
        let netns = request.netns.to_string_lossy();
        let mut prev: Option<Value> = None;
        let mut failure = None;
        for plugin in &self.list.plugins {
            match self
                .invoke(
                    CniCommand::Add,
                    plugin,
                    request,
                    &netns,
                    prev.as_ref(),
                    &capability_args,
                )
                .await
            {
                Ok(Some(result)) => prev = Some(result),
                Ok(None) => {
                    failure =
                        Some(self.invalid_result(plugin, CniCommand::Add, "no result on stdout"));
                    break;
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let outcome = match (failure, &prev) {
            (Some(e), _) => Err(e),
            (None, None) => Err(NetworkError::Settings("the network has no plugins".into())),
            (None, Some(result)) => self.finish_setup(request, result).await,
        };
        match outcome {
            Ok(network) => {
                tracing::debug!(
                    sandbox = request.sandbox_id,
                    ips = ?network.ips,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "CNI ADD done"
                );
                Ok(network)
            }
            Err(error) => {
                if let Err(del) = self
                    .delete(request, &netns, prev.as_ref(), &capability_args)
                    .await
                {
                    tracing::warn!(
                        sandbox = request.sandbox_id,
                        error = %del,
                        "CNI DEL after a failed ADD failed too"
                    );
                }
                Err(error)
            }
        }
    }

    /// Installs (or repairs) the iptables rule that keeps pods off the
    /// host's 127.0.0.0/8 wherever this network may turn on
    /// `route_localnet`; see [`localnet`]. Run before every ADD, and at
    /// agent start for the pods already running.
    pub async fn protect_host_loopback(&self) -> Result<(), NetworkError> {
        localnet::ensure(&self.list).await
    }

    /// Caches the final ADD result and turns it into a [`PodNetwork`].
    async fn finish_setup(
        &self,
        request: &PodNetworkRequest<'_>,
        result: &Value,
    ) -> Result<PodNetwork, NetworkError> {
        let network = exec::pod_network(result, POD_INTERFACE).map_err(|reason| {
            let plugin = self.list.plugins.last().map(config::plugin_type);
            NetworkError::PluginFailed {
                plugin: plugin.unwrap_or("?").to_string(),
                command: CniCommand::Add.as_str(),
                conf: self.describe(),
                reason,
            }
        })?;
        let cached = CachedResult::new(
            &self.list.name,
            request.sandbox_id,
            POD_INTERFACE,
            request.port_mappings,
            result.clone(),
        );
        cache::write(self.results_dir(), cached).await?;
        Ok(network)
    }

    /// Runs CNI DEL through the plugin chain in reverse. Idempotent, and
    /// works when the namespace is already gone: then the plugins get an
    /// empty `CNI_NETNS`, as containerd does, and the masquerade rules the
    /// bridge plugin cannot find without the namespace are removed here.
    /// The port mappings given at ADD (from the result cache) are used, so
    /// the request's may be empty. The cached result is removed once every
    /// plugin succeeded.
    pub async fn teardown(&self, request: &PodNetworkRequest<'_>) -> Result<(), NetworkError> {
        validate(request)?;
        let started = Instant::now();
        let results_dir = self.results_dir();
        let cached = match cache::read(
            &results_dir,
            &self.list.name,
            request.sandbox_id,
            POD_INTERFACE,
        ) {
            Ok(c) => c,
            Err(e) => {
                // An unreadable cache must not make teardown impossible:
                // DEL without prevResult still releases the address.
                tracing::warn!(sandbox = request.sandbox_id, error = %e, "ignoring the CNI result cache");
                None
            }
        };
        let mappings = match &cached {
            Some(c) => c.port_mappings.as_slice(),
            None => request.port_mappings,
        };
        let capability_args = capability_args(mappings);
        let netns_live = netns::is_netns(request.netns);
        let netns = if netns_live {
            request.netns.to_string_lossy().into_owned()
        } else {
            String::new()
        };
        let prev = cached.as_ref().map(|c| &c.result);
        self.delete(request, &netns, prev, &capability_args).await?;
        if !netns_live {
            if let Some(c) = &cached {
                leftovers::remove_bridge_masquerade(&self.list, request.sandbox_id, &c.result)
                    .await;
            }
        }
        cache::remove(
            &results_dir,
            &self.list.name,
            request.sandbox_id,
            POD_INTERFACE,
        )?;
        tracing::debug!(
            sandbox = request.sandbox_id,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "CNI DEL done"
        );
        Ok(())
    }

    /// Runs CNI CHECK through the chain with the cached ADD result, and
    /// checks that `previous` still matches it. Needs a configuration of
    /// CNI version 0.4.0 or later; `disableCheck` makes it a no-op.
    ///
    /// Known limitation: portmap 1.1.1 fails CHECK for an IPv4-only pod
    /// with port mappings on a host with ip6tables ("could not check ipv6
    /// dnat: chain ... not found"), a bug of that plugin.
    pub async fn check(
        &self,
        request: &PodNetworkRequest<'_>,
        previous: &PodNetwork,
    ) -> Result<(), NetworkError> {
        validate(request)?;
        let check_error = |reason: String| NetworkError::Check {
            sandbox: request.sandbox_id.to_string(),
            conf: self.describe(),
            reason,
        };
        if self.list.disable_check {
            return Ok(());
        }
        if !config::version_at_least(&self.list.cni_version, (0, 4, 0)) {
            return Err(check_error(format!(
                "CHECK needs cniVersion 0.4.0 or later, the config has {:?}",
                self.list.cni_version
            )));
        }
        if !netns::is_netns(request.netns) {
            return Err(check_error(format!(
                "network namespace {} is gone",
                request.netns.display()
            )));
        }
        let cached = cache::read(
            &self.results_dir(),
            &self.list.name,
            request.sandbox_id,
            POD_INTERFACE,
        )?
        .ok_or_else(|| check_error("no cached ADD result".to_string()))?;
        let cached_network =
            exec::pod_network(&cached.result, POD_INTERFACE).map_err(check_error)?;
        if let Some(ip) = previous
            .ips
            .iter()
            .find(|ip| !cached_network.ips.contains(ip))
        {
            return Err(check_error(format!(
                "pod address {ip} is not in the cached result ({:?})",
                cached_network.ips
            )));
        }
        let capability_args = capability_args(&cached.port_mappings);
        let netns = request.netns.to_string_lossy();
        for plugin in &self.list.plugins {
            self.invoke(
                CniCommand::Check,
                plugin,
                request,
                &netns,
                Some(&cached.result),
                &capability_args,
            )
            .await?;
        }
        Ok(())
    }

    /// DEL through the chain in reverse; every plugin is tried (so the
    /// address is released even when, say, portmap fails) and the first
    /// error is returned.
    async fn delete(
        &self,
        request: &PodNetworkRequest<'_>,
        netns: &str,
        prev: Option<&Value>,
        capability_args: &Map<String, Value>,
    ) -> Result<(), NetworkError> {
        let mut first_error = None;
        for plugin in self.list.plugins.iter().rev() {
            if let Err(e) = self
                .invoke(
                    CniCommand::Del,
                    plugin,
                    request,
                    netns,
                    prev,
                    capability_args,
                )
                .await
            {
                tracing::warn!(sandbox = request.sandbox_id, error = %e, "CNI DEL");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Runs one plugin; returns its result, if it printed one.
    async fn invoke(
        &self,
        command: CniCommand,
        plugin: &Map<String, Value>,
        request: &PodNetworkRequest<'_>,
        netns: &str,
        prev: Option<&Value>,
        capability_args: &Map<String, Value>,
    ) -> Result<Option<Value>, NetworkError> {
        let plugin_type = config::plugin_type(plugin);
        let binary = exec::find_plugin(&self.settings.bin_dirs, plugin_type).ok_or_else(|| {
            NetworkError::PluginNotFound {
                plugin: plugin_type.to_string(),
                dirs: self
                    .settings
                    .bin_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                conf: self.describe(),
            }
        })?;
        let stdin = exec::plugin_stdin(&self.list, plugin, prev, capability_args);
        let invocation = Invocation {
            command,
            container_id: request.sandbox_id,
            netns,
            ifname: POD_INTERFACE,
            args: &cni_args(request),
            cni_path: &self.cni_path,
        };
        exec::run(&binary, &invocation, &stdin, PLUGIN_TIMEOUT)
            .await
            .map_err(|failure| failure.into_error(plugin_type, command, self.describe()))
    }

    fn invalid_result(
        &self,
        plugin: &Map<String, Value>,
        command: CniCommand,
        reason: &str,
    ) -> NetworkError {
        NetworkError::PluginFailed {
            plugin: config::plugin_type(plugin).to_string(),
            command: command.as_str(),
            conf: self.describe(),
            reason: reason.to_string(),
        }
    }

    /// The network a sandbox got from an earlier ADD, read back from the
    /// result cache, for an agent that takes over a running pod.
    pub fn adopt(&self, sandbox_id: &str) -> Result<PodNetwork, NetworkError> {
        let cached = cache::read(
            &self.results_dir(),
            &self.list.name,
            sandbox_id,
            POD_INTERFACE,
        )?
        .ok_or_else(|| {
            NetworkError::Request(format!("no cached network result for {sandbox_id}"))
        })?;
        exec::pod_network(&cached.result, POD_INTERFACE).map_err(|reason| {
            NetworkError::Request(format!("the cached result for {sandbox_id}: {reason}"))
        })
    }

    fn results_dir(&self) -> PathBuf {
        self.settings.cni_state_dir().join("results")
    }

    /// Whether a sandbox has a cached ADD result, i.e. something for
    /// [`Network::teardown`] to undo; lets callers skip running the DEL
    /// chain for sandboxes that never got a network.
    pub fn has_result(&self, sandbox_id: &str) -> bool {
        cache::path(
            &self.results_dir(),
            &self.list.name,
            sandbox_id,
            POD_INTERFACE,
        )
        .exists()
    }
}
