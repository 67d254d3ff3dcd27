//! `podkeeper run`: wires the parts together and waits for a stop signal.
//! No logic of its own beyond start-up order.
//!
//! Stopping the agent leaves the pods running, as stopping the kubelet does:
//! the containers belong to containerd, not to the agent process.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::api::{self, kubeconfig, tls, ApiState};
use crate::config::Settings;
use crate::desired;
use crate::host::private_files::{self, PRIVATE_DIR_MODE};
use crate::images::credentials::Credentials;
use crate::images::import_dir::ImportDir;
use crate::images::reference;
use crate::images::registry::RegistryClient;
use crate::images::service::ImageService;
use crate::logs::LogSettings;
use crate::manifest::permissions;
use crate::manifest::source::ManifestSource;
use crate::notify;
use crate::pod::node::{NodeRuntime, NodeSettings};
use crate::pod::worker::WorkerContext;
use crate::pod::workers::Workers;
use crate::runtime::containerd::events::Link;
use crate::runtime::containerd::images::ResolvedImage;
use crate::runtime::containerd::{Containerd, RuntimeError};
use crate::runtime::network::{Network, NetworkSettings};
use crate::status::events::{EventLog, EventType, ObjectRef, Recorder};
use crate::status::store::StatusStore;
use crate::supervise::Supervisor;

/// The HTTP API's unix socket in the state directory, for local clients
/// that should not depend on `http-listen`.
const HTTP_SOCKET: &str = "podkeeper-http.sock";

/// Longest wait between attempts to reach containerd at start-up.
const MAX_CONNECT_DELAY: Duration = Duration::from_secs(2);

/// Runs the agent until SIGTERM or SIGINT, or until a task it cannot do
/// without fails (an error: systemd starts the agent again, which adopts
/// the running pods). Tells systemd it is ready once the manifests have
/// been read (not merely once it started), so units ordered after
/// podkeeper see the pods' set decided.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let mut stop = StopSignal::install()?;
    let mut tasks = Supervisor::new();
    let desired = tokio::select! {
        started = start(&settings, &tasks) => started?,
        () = stop.recv() => {
            info!("stopped during start-up");
            notify::stopping();
            return Ok(());
        }
    };
    let serving = async {
        tokio::select! {
            () = first_sync(desired) => notify::ready(),
            () = stop.recv() => return,
        }
        stop.recv().await;
    };
    let failed = tokio::select! {
        () = serving => None,
        failure = tasks.fatal() => Some(failure),
    };
    notify::stopping();
    match failed {
        None => {
            info!("stopping; the pods keep running under containerd");
            Ok(())
        }
        Some(failure) => Err(failure).context("exiting; the pods keep running under containerd"),
    }
}

/// Waits until the manifest source has published its first full read; never
/// returns if the source is gone before that.
async fn first_sync(mut desired: desired::DesiredReader) {
    if desired.snapshot().synced {
        return;
    }
    while let Some(state) = desired.changed().await {
        if state.synced {
            return;
        }
    }
    std::future::pending().await
}

/// Starts every part of the agent in dependency order and returns once they
/// run in the background, with a reader of the desired set.
async fn start(settings: &Settings, tasks: &Supervisor) -> anyhow::Result<desired::DesiredReader> {
    info!(version = crate::VERSION, node = %settings.node_name, manifests = %settings.manifest_dir.display(), "podkeeper starting");
    // First, before anything is created: whoever can write a manifest can
    // run privileged containers.
    permissions::check_dir(&settings.manifest_dir).context("refusing to start")?;
    let access_group = private_files::group_id(kubeconfig::ACCESS_GROUP);
    secure_state_dir(&settings.state_dir, access_group)?;
    secure_dir(&settings.pod_log_dir, crate::logs::LOG_DIR_MODE)?;
    let node_ip = settings.node_ip.clone().or_else(detect_node_ip);
    // Before waiting for containerd: a bad token file or certificate is
    // the operator's to fix, and should be said at once.
    let https = match settings.api.api_listen {
        Some(listen) => {
            let node = tls::Node {
                state_dir: &settings.state_dir,
                name: &settings.node_name,
                ip: node_ip.as_deref(),
                access_group,
            };
            let https = tls::prepare(&settings.api, listen, &node)
                .context("preparing the HTTPS API (api-listen)")?;
            Some((listen, https))
        }
        None => None,
    };

    let (recorder, event_log) = EventLog::start(
        settings.node_name.clone(),
        &settings.state_dir,
        settings.event_retention,
    )?;
    let (runtime, sandbox_image) = connect(settings, &recorder).await?;
    let (runtime_events_tx, runtime_events_rx) = mpsc::channel(1024);
    let events_runtime = runtime.clone();
    let link_recorder = recorder.clone();
    let node = settings.node_name.clone();
    // Connected by now; the event stream's link keeps it up to date.
    let containerd_reachable = Arc::new(AtomicBool::new(true));
    let reachable = containerd_reachable.clone();
    // Fatal: it holds the only sender of the workers' event channel, and a
    // new subscription would miss what happened in between.
    tasks.spawn_fatal("containerd-events", async move {
        let on_link = move |link: Link| {
            reachable.store(matches!(link, Link::Restored { .. }), Ordering::Relaxed);
            record_link(&link_recorder, &node, link);
        };
        events_runtime
            .forward_events(runtime_events_tx, on_link)
            .await
    });
    let credentials = Credentials::load(&settings.registry_config)
        .with_context(|| format!("registry-config {}", settings.registry_config.display()))?;
    let registry = RegistryClient::new(credentials, settings.insecure_registries.clone());
    let images = Arc::new(ImageService::new(runtime.clone(), registry));

    let status = Arc::new(StatusStore::default());
    let (desired_writer, desired_reader) = desired::channel();

    let api_state = ApiState {
        desired: desired_reader.clone(),
        status: status.clone(),
        events: event_log,
        pod_log_dir: settings.pod_log_dir.clone(),
        images: images.clone(),
        sandbox_image: sandbox_image.name.clone(),
        containerd_reachable,
        tasks: tasks.health(),
        http: Default::default(),
    };
    serve_http(settings, https, &api_state, tasks).await?;
    // The unix sockets restart: each start binds its path afresh.
    let http_socket = settings.state_dir.join(HTTP_SOCKET);
    let http_state = api_state.clone();
    tasks.spawn_restarting("http-socket", move || {
        let (socket, state) = (http_socket.clone(), http_state.clone());
        async move { api::http::serve_unix(&socket, state).await }
    });
    let socket = settings.api_socket();
    tasks.spawn_restarting("grpc-socket", move || {
        let (socket, state) = (socket.clone(), api_state.clone());
        async move { api::grpc::serve(&socket, state).await }
    });

    let source = ManifestSource::new(
        settings.manifest_dir.clone(),
        settings.node_name.clone(),
        settings.manifest_resync,
        desired_writer,
        recorder.clone(),
    );
    // Fatal: it holds the desired set's only writer.
    tasks.spawn_fatal("manifest-source", source.run());
    create_dir(&settings.images_dir, 0o700)?;
    // Restarts: a new one reads its records and the directory again.
    let (images_dir, state_dir) = (settings.images_dir.clone(), settings.state_dir.clone());
    let (resync, import_images, import_recorder) =
        (settings.manifest_resync, images.clone(), recorder.clone());
    tasks.spawn_restarting("import-dir", move || {
        let import_dir = ImportDir::new(
            images_dir.clone(),
            &state_dir,
            resync,
            import_images.clone(),
            import_recorder.clone(),
        );
        import_dir.run()
    });
    let network = Network::load(NetworkSettings {
        bin_dirs: settings.cni_bin_dirs.clone(),
        conf_dir: settings.cni_conf_dir.clone(),
        state_dir: settings.state_dir.clone(),
        default_bridge: settings.cni_default_bridge.clone(),
        default_subnet: settings.cni_default_subnet.clone(),
    })
    .context("loading the pod network configuration")?;
    info!(network = %network.describe(), "pod network");
    // Pods kept running across a restart (or a firewall reload) need the
    // guard before the next pod's ADD reinstalls it. Not fatal: each ADD
    // tries again and refuses the pod's network if it still fails.
    if let Err(e) = network.protect_host_loopback().await {
        warn!(error = %e, "pods on this network may reach the host's loopback");
    }
    let node_settings = NodeSettings {
        state_dir: settings.state_dir.clone(),
        cgroup_root: settings.cgroup_root.clone(),
        host_ip: node_ip,
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
    // Fatal: the pod tasks are its own and end with it; a new agent adopts
    // the pods.
    let workers = Workers::new(context).run(desired_reader.clone(), runtime_events_rx);
    tasks.spawn_fatal("pod-workers", workers);
    tasks.spawn_restarting("memory-trim", crate::memory::trim_periodically);
    info!(
        https = %listening(settings.api.api_listen),
        http = %listening(settings.api.http_listen),
        api = %settings.api_socket().display(),
        "podkeeper running"
    );
    Ok(desired_reader)
}

/// Connects to containerd and prepares the sandbox image, waiting with
/// back-off while containerd is unreachable: the agent may well start before
/// containerd at boot. Until then nothing else runs, the HTTP endpoint
/// included, so a health probe sees the agent as not ready. Only an answer
/// from containerd (e.g. a configured sandbox image that is missing) is fatal.
async fn connect(
    settings: &Settings,
    recorder: &Recorder,
) -> anyhow::Result<(Containerd, ResolvedImage)> {
    let mut delay = Duration::from_millis(250);
    let mut waiting_since: Option<Instant> = None;
    loop {
        match try_connect(settings).await {
            Ok((runtime, image, version)) => {
                info!(containerd = %version, namespace = %settings.containerd_namespace, "connected to containerd");
                if let Some(since) = waiting_since {
                    let after = since.elapsed();
                    record_link(recorder, &settings.node_name, Link::Restored { after });
                }
                return Ok((runtime, image));
            }
            // Final only if containerd is there to give that answer: a
            // call broken by containerd going away is retried.
            Err(e) if !is_unavailable(&e) && answers(settings).await => return Err(e),
            Err(e) => {
                warn!(address = %settings.containerd_address.display(), "containerd is not reachable: {e:#}; retrying in {delay:?}");
                if waiting_since.is_none() {
                    waiting_since = Some(Instant::now());
                    let error = format!("{e:#}");
                    record_link(recorder, &settings.node_name, Link::Lost { error });
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_CONNECT_DELAY);
    }
}

/// One attempt of [`connect`]; also returns containerd's version.
async fn try_connect(settings: &Settings) -> anyhow::Result<(Containerd, ResolvedImage, String)> {
    let runtime =
        Containerd::connect(&settings.containerd_address, &settings.containerd_namespace).await?;
    let version = runtime.version().await?;
    let image = sandbox_image(&runtime, settings).await?;
    Ok((runtime, image, version))
}

/// Whether containerd answers a version request right now.
async fn answers(settings: &Settings) -> bool {
    match Containerd::connect(&settings.containerd_address, &settings.containerd_namespace).await {
        Ok(runtime) => runtime.version().await.is_ok(),
        Err(_) => false,
    }
}

fn is_unavailable(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<RuntimeError>()
        .is_some_and(RuntimeError::is_unavailable)
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

/// Reports containerd's reachability as an event of the node (the log line
/// is written where the change is noticed).
fn record_link(recorder: &Recorder, node: &str, link: Link) {
    let (event_type, reason, message) = match link {
        Link::Lost { error } => (
            EventType::Warning,
            "ContainerdUnavailable",
            format!("containerd is not reachable: {error}; retrying"),
        ),
        Link::Restored { after } => (
            EventType::Normal,
            "ContainerdAvailable",
            format!("containerd is reachable again after {after:.1?}"),
        ),
    };
    recorder.record(node_ref(node), event_type, reason, message);
}

/// The node, as the object of events about the node itself; Kubernetes
/// keeps such events in the `default` namespace.
fn node_ref(node: &str) -> ObjectRef {
    ObjectRef {
        kind: "Node".into(),
        namespace: "default".into(),
        name: node.into(),
        uid: node.into(),
        field_path: String::new(),
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

/// Makes the state or log directory private before anything is written
/// into it: created with `mode`, tightened to it (and said so) when an
/// older version or an operator left it open to others, refused when
/// another user owns it.
fn secure_dir(path: &std::path::Path, mode: u32) -> anyhow::Result<()> {
    let loose = private_files::secure_dir(path, mode).context("refusing to start")?;
    if let Some(old) = loose {
        warn!(dir = %path.display(), "tightened the mode of {} from {old:04o} to {:04o}: other users could read what podkeeper keeps there", path.display(), old & mode);
    }
    Ok(())
}

/// The state directory: root's alone (0700), or passable (0710) by the
/// group given access to the kubeconfig, so its members reach that one
/// file by name and nothing else.
fn secure_state_dir(path: &std::path::Path, group: Option<u32>) -> anyhow::Result<()> {
    match group {
        None => secure_dir(path, PRIVATE_DIR_MODE),
        Some(gid) => {
            secure_dir(path, PRIVATE_DIR_MODE | 0o010)?;
            private_files::open_dir_to_group(path, gid).with_context(|| {
                format!(
                    "giving group {} access to {}",
                    kubeconfig::ACCESS_GROUP,
                    path.display()
                )
            })
        }
    }
}

/// Binds the TCP listeners and serves the HTTP API on them: HTTPS to
/// authenticated callers, plain HTTP with health checks only. Their
/// failure is fatal: the ports are bound once, at start, where a port
/// taken meanwhile is said plainly.
async fn serve_http(
    settings: &Settings,
    https: Option<(std::net::SocketAddr, tls::Https)>,
    state: &ApiState,
    tasks: &Supervisor,
) -> anyhow::Result<()> {
    let bind = |key: &'static str, address| async move {
        tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("binding {key} {address}"))
    };
    let api_hint = match &https {
        Some((listen, _)) => format!(
            "this port serves only /healthz, /livez and /readyz without credentials; the API is at {} (kubectl --kubeconfig {})",
            kubeconfig::server_url(*listen),
            kubeconfig::path(&settings.state_dir).display()
        ),
        None => "this port serves only /healthz, /livez and /readyz without credentials; the API is on the root-only socket podkeeper-http.sock in the state directory".to_string(),
    };
    if let Some((listen, https)) = https {
        let listener = bind("api-listen", listen).await?;
        tasks.spawn_fatal(
            "https-listener",
            api::http::serve_tls(listener, state.clone(), https),
        );
    }
    if let Some(listen) = settings.api.http_listen {
        let listener = bind("http-listen", listen).await?;
        let access = api::http::Access::Public {
            metrics: settings.api.metrics_unauthenticated,
            hint: api_hint.into(),
        };
        tasks.spawn_fatal(
            "http-listener",
            api::http::serve(listener, state.clone(), access),
        );
    }
    Ok(())
}

/// A listener's address for the log, or that it is off.
fn listening(address: Option<std::net::SocketAddr>) -> String {
    address.map_or_else(|| "off".to_string(), |a| a.to_string())
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

/// SIGTERM and SIGINT, listened for from the very start: once tokio handles
/// a signal, the default action (exit) is gone for the whole process, so
/// listening only later would swallow a stop request made in between.
struct StopSignal {
    term: Signal,
    int: Signal,
}

impl StopSignal {
    fn install() -> anyhow::Result<StopSignal> {
        Ok(StopSignal {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
