//! `podkeeper run`: wires the parts together and waits for a stop signal.
//! No logic of its own beyond start-up order.
//!
//! Stopping the agent leaves the pods running, as stopping the kubelet does:
//! the containers belong to containerd, not to the agent process.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::api::{self, ApiState};
use crate::config::Settings;
use crate::desired;
use crate::images::credentials::Credentials;
use crate::images::import_dir::ImportDir;
use crate::images::reference;
use crate::images::registry::RegistryClient;
use crate::images::service::ImageService;
use crate::logs::LogSettings;
use crate::manifest::source::ManifestSource;
use crate::pod::node::{NodeRuntime, NodeSettings};
use crate::pod::worker::WorkerContext;
use crate::pod::workers::Workers;
use crate::runtime::containerd::images::ResolvedImage;
use crate::runtime::containerd::Containerd;
use crate::runtime::network::{Network, NetworkSettings};
use crate::status::events::EventLog;
use crate::status::store::StatusStore;

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    info!(version = crate::VERSION, node = %settings.node_name, manifests = %settings.manifest_dir.display(), "podkeeper starting");
    create_dir(&settings.state_dir, 0o700)?;
    create_dir(&settings.pod_log_dir, 0o755)?;

    let runtime = connect(&settings).await?;
    let (runtime_events_tx, runtime_events_rx) = mpsc::channel(1024);
    let events_runtime = runtime.clone();
    tokio::spawn(async move { events_runtime.forward_events(runtime_events_tx).await });
    let sandbox_image = sandbox_image(&runtime, &settings).await?;
    let credentials = Credentials::load(&settings.registry_config)
        .with_context(|| format!("registry-config {}", settings.registry_config.display()))?;
    let registry = RegistryClient::new(credentials, settings.insecure_registries.clone());
    let images = Arc::new(ImageService::new(runtime.clone(), registry));

    let (recorder, event_log) = EventLog::start(settings.node_name.clone());
    let status = Arc::new(StatusStore::default());
    let (desired_writer, desired_reader) = desired::channel();

    let http = tokio::net::TcpListener::bind(settings.http_listen)
        .await
        .with_context(|| format!("binding the HTTP endpoint on {}", settings.http_listen))?;
    let api_state = ApiState {
        desired: desired_reader.clone(),
        status: status.clone(),
        events: event_log,
        pod_log_dir: settings.pod_log_dir.clone(),
        images: images.clone(),
        sandbox_image: sandbox_image.name.clone(),
    };
    tokio::spawn(api::http::serve(http, api_state.clone()));
    let socket = settings.api_socket();
    tokio::spawn(async move {
        if let Err(e) = api::grpc::serve(&socket, api_state).await {
            warn!(socket = %socket.display(), error = %e, "the gRPC API stopped");
        }
    });

    let source = ManifestSource::new(
        settings.manifest_dir.clone(),
        settings.node_name.clone(),
        settings.manifest_resync,
        desired_writer,
        recorder.clone(),
    );
    tokio::spawn(source.run());
    create_dir(&settings.images_dir, 0o700)?;
    let import_dir = ImportDir::new(
        settings.images_dir.clone(),
        &settings.state_dir,
        settings.manifest_resync,
        images.clone(),
        recorder.clone(),
    );
    tokio::spawn(import_dir.run());
    let network = Network::load(NetworkSettings {
        bin_dirs: settings.cni_bin_dirs.clone(),
        conf_dir: settings.cni_conf_dir.clone(),
        state_dir: settings.state_dir.clone(),
        default_bridge: settings.cni_default_bridge.clone(),
        default_subnet: settings.cni_default_subnet.clone(),
    })
    .context("loading the pod network configuration")?;
    info!(network = %network.describe(), "pod network");
    let node_settings = NodeSettings {
        state_dir: settings.state_dir.clone(),
        cgroup_root: settings.cgroup_root.clone(),
        host_ip: settings.node_ip.clone().or_else(detect_node_ip),
        logs: LogSettings {
            max_size: settings.container_log_max_size,
            max_files: settings.container_log_max_files,
        },
        executable: std::env::current_exe()
            .context("finding this executable for the log writer")?,
    };
    let node = NodeRuntime::new(runtime, images, sandbox_image, network, node_settings);
    let context = Arc::new(WorkerContext {
        runtime: Arc::new(node),
        status,
        recorder,
        pod_log_dir: settings.pod_log_dir.clone(),
        state_dir: settings.state_dir.clone(),
    });
    tokio::spawn(Workers::new(context).run(desired_reader, runtime_events_rx));
    info!(http = %settings.http_listen, api = %settings.api_socket().display(), "podkeeper running");

    wait_for_stop_signal().await?;
    info!("stopping; pods keep running and are taken over by the next start");
    Ok(())
}

/// Connects to containerd, waiting for it if it is not up yet: the agent may
/// well start before containerd at boot.
async fn connect(settings: &Settings) -> anyhow::Result<Containerd> {
    let mut delay = Duration::from_millis(250);
    loop {
        match Containerd::connect(&settings.containerd_address, &settings.containerd_namespace)
            .await
        {
            Ok(runtime) => match runtime.version().await {
                Ok(version) => {
                    info!(containerd = %version, namespace = %settings.containerd_namespace, "connected to containerd");
                    return Ok(runtime);
                }
                Err(e) => warn!(error = %e, "containerd does not answer; retrying in {delay:?}"),
            },
            Err(e) => warn!(error = %e, "retrying in {delay:?}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            result = wait_for_stop_signal() => {
                result?;
                anyhow::bail!("stopped before containerd became reachable");
            }
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

async fn sandbox_image(runtime: &Containerd, settings: &Settings) -> anyhow::Result<ResolvedImage> {
    match &settings.sandbox_image {
        None => runtime
            .ensure_pause_image()
            .await
            .context("preparing the built-in pause image"),
        Some(name) => {
            let name =
                reference::normalize(name).map_err(|e| anyhow::anyhow!("sandbox-image: {e}"))?;
            runtime.resolve_image(&name).await.with_context(|| {
                format!("sandbox-image {name} (it must already be present in containerd)")
            })
        }
    }
}

/// The address this node reaches the outside from: the source address of a
/// (never sent) UDP "connection" to a documentation address, which the
/// kernel picks by the routing table.
fn detect_node_ip() -> Option<String> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    Some(socket.local_addr().ok()?.ip().to_string())
}

/// Creates a directory (and its parents) with `mode` if it is missing; an
/// existing directory keeps the mode its owner gave it.
fn create_dir(path: &std::path::Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .with_context(|| format!("creating {}", path.display()))
}

async fn wait_for_stop_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
