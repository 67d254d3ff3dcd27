//! Client subcommands: thin clients of the agent's gRPC API on its unix
//! socket, printing kubectl-like output.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use futures::StreamExt;

pub mod images;

use crate::proto;
use crate::proto::agent_client::AgentClient;

/// Where to find the agent.
#[derive(Debug, Clone, Args)]
pub struct ClientFlags {
    /// The agent's state directory, which holds its API socket
    #[arg(long, global = true, default_value = "/var/lib/podkeeper")]
    pub state_dir: PathBuf,
    /// Namespace of the pod [default: every namespace for lists, "default" for one pod]
    #[arg(long, short = 'n', global = true)]
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum GetWhat {
    /// List pods, or show one (the short name without -<node> works)
    Pods {
        /// Only this pod
        name: Option<String>,
        /// Output format
        #[arg(long, short = 'o', value_enum)]
        output: Option<Output>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Output {
    Wide,
    Json,
    Yaml,
}

#[derive(Debug, Clone, Subcommand)]
pub enum DescribeWhat {
    /// Describe one pod as `kubectl describe pod` does (the short name
    /// without -<node> works)
    Pod {
        name: String,
        /// Output format: the same facts as JSON instead of text
        #[arg(long, short = 'o', value_enum)]
        output: Option<DescribeOutput>,
    },
}

/// The formats of `podkeeper describe -o`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DescribeOutput {
    Json,
}

type Client = AgentClient<tonic::transport::Channel>;

pub(crate) async fn connect(flags: &ClientFlags) -> anyhow::Result<Client> {
    let socket = crate::config::api_socket_in(&flags.state_dir);
    let channel = containerd_client::connect(&socket).await.with_context(|| {
        format!(
            "cannot reach the podkeeper agent at {} (is `podkeeper run` running, and are you root?)",
            socket.display()
        )
    })?;
    Ok(AgentClient::new(channel))
}

pub(crate) fn rpc_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", status.message())
}

/// `podkeeper get pods [NAME]`.
pub async fn get(flags: &ClientFlags, what: &GetWhat) -> anyhow::Result<()> {
    let GetWhat::Pods { name, output } = what;
    let mut client = connect(flags).await?;
    let pods = match name {
        // The agent resolves the short name, as for `describe`.
        Some(name) => {
            let request = proto::GetPodRequest {
                namespace: flags.namespace.clone().unwrap_or_else(|| "default".into()),
                name: name.clone(),
            };
            vec![client
                .get_pod(request)
                .await
                .map_err(rpc_error)?
                .into_inner()]
        }
        None => {
            let request = proto::ListPodsRequest {
                namespace: flags.namespace.clone().unwrap_or_default(),
            };
            client
                .list_pods(request)
                .await
                .map_err(rpc_error)?
                .into_inner()
                .pods
        }
    };
    let format = match output {
        Some(Output::Json) => Some(EventsOutput::Json),
        Some(Output::Yaml) => Some(EventsOutput::Yaml),
        _ => None,
    };
    if let Some(format) = format {
        let mut items: Vec<serde_json::Value> = pods
            .iter()
            .filter_map(|p| serde_json::from_str(&p.pod_json).ok())
            .collect();
        // One named pod prints as the object itself, as kubectl does.
        let value = match (&name, items.len()) {
            (Some(_), 1) => items.remove(0),
            _ => serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}),
        };
        print!("{}", format.render(&value)?);
        return Ok(());
    }
    let now = jiff::Timestamp::now();
    let wide = matches!(output, Some(Output::Wide));
    let mut rows = vec![{
        let mut header = vec!["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE"];
        if wide {
            header.extend(["IP", "MANIFEST"]);
        }
        header.into_iter().map(String::from).collect::<Vec<_>>()
    }];
    for pod in &pods {
        let ready = pod.containers.iter().filter(|c| c.ready).count();
        let restarts: i32 = pod.containers.iter().map(|c| c.restart_count).sum();
        let age = pod
            .created
            .parse::<jiff::Timestamp>()
            .map(|t| human_duration(now.duration_since(t)))
            .unwrap_or_else(|_| "<unknown>".into());
        let mut row = vec![
            pod.namespace.clone(),
            pod.name.clone(),
            format!("{ready}/{}", pod.containers.len()),
            pod_status_word(pod),
            restarts.to_string(),
            age,
        ];
        if wide {
            let ip = if pod.pod_ip.is_empty() {
                "<none>".into()
            } else {
                pod.pod_ip.clone()
            };
            row.extend([ip, pod.manifest_path.clone()]);
        }
        rows.push(row);
    }
    if pods.is_empty() {
        eprintln!("No pods found.");
        return Ok(());
    }
    print!("{}", table(&rows));
    Ok(())
}

/// The STATUS column as kubectl shows it: a container's waiting or
/// terminated reason wins over the phase.
fn pod_status_word(pod: &proto::PodSummary) -> String {
    pod.containers
        .iter()
        .find(|c| c.state != "Running" && !c.reason.is_empty())
        .map(|c| c.reason.clone())
        .unwrap_or_else(|| pod.phase.clone())
}

/// `podkeeper describe pod NAME [-o json]`: kubectl's layout, rendered
/// here from the pod object and its events (`api::describe`).
pub async fn describe(flags: &ClientFlags, what: &DescribeWhat) -> anyhow::Result<()> {
    let DescribeWhat::Pod { name, output } = what;
    let mut client = connect(flags).await?;
    let namespace = flags.namespace.clone().unwrap_or_else(|| "default".into());
    let request = proto::GetPodRequest {
        namespace: namespace.clone(),
        name: name.clone(),
    };
    // The agent resolves the short name, as for `get pods NAME`.
    let summary = client
        .get_pod(request)
        .await
        .map_err(rpc_error)?
        .into_inner();
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_str(&summary.pod_json)
        .context("the agent sent a pod that is not a v1 Pod")?;
    let events = collect_events(&mut client, &namespace, &summary.name, false)
        .await?
        .iter()
        .map(|e| serde_json::from_str(&e.event_json))
        .collect::<Result<Vec<k8s_openapi::api::core::v1::Event>, _>>()
        .context("the agent sent an event that is not a v1 Event")?;
    // Like kubectl's event search by the pod's UID: a removed pod's events
    // outlive it, and a new pod with the same name is another pod.
    let events: Vec<_> = events
        .into_iter()
        .filter(|e| e.involved_object.uid.is_none() || e.involved_object.uid == pod.metadata.uid)
        .collect();
    let now = jiff::Timestamp::now();
    match output {
        Some(DescribeOutput::Json) => {
            let value = crate::api::describe::describe_pod_json(&pod, &events, now);
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        None => print!("{}", crate::api::describe::describe_pod(&pod, &events, now)),
    }
    Ok(())
}

/// `podkeeper events [POD] [--watch] [-o json|yaml]`: a pod is named as
/// for `get pods` (short names work), and its events stay listed after its
/// manifest is removed, until they expire.
pub async fn events(
    flags: &ClientFlags,
    pod: Option<&str>,
    watch: bool,
    output: Option<EventsOutput>,
) -> anyhow::Result<()> {
    let mut client = connect(flags).await?;
    let namespace = match (&flags.namespace, pod) {
        (Some(namespace), _) => namespace.clone(),
        (None, Some(_)) => "default".into(),
        (None, None) => String::new(),
    };
    let pod = pod.unwrap_or_default();
    if !watch {
        let events = collect_events(&mut client, &namespace, pod, false).await?;
        match output {
            Some(format) => {
                let items = events
                    .iter()
                    .map(|e| serde_json::from_str(&e.event_json))
                    .collect::<Result<Vec<serde_json::Value>, _>>()?;
                let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
                print!("{}", format.render(&list)?);
            }
            None if events.is_empty() => eprintln!("No events found."),
            None => print!("{}", events_table(&events, "")),
        }
        return Ok(());
    }
    let mut stream = event_stream(&mut client, &namespace, pod, true).await?;
    let mut first = true;
    while let Some(event) = stream.next().await {
        let event = event.map_err(rpc_error)?;
        match output {
            Some(EventsOutput::Yaml) => {
                let event: serde_json::Value = serde_json::from_str(&event.event_json)?;
                print!("---\n{}", EventsOutput::Yaml.render(&event)?);
            }
            Some(EventsOutput::Json) => {
                let event: serde_json::Value = serde_json::from_str(&event.event_json)?;
                print!("{}", EventsOutput::Json.render(&event)?);
            }
            None => {
                // The column headers once, as `kubectl get events -w`.
                let table = events_table(&[event], "");
                let skip = if first { 0 } else { 2 };
                print!(
                    "{}",
                    table
                        .lines()
                        .skip(skip)
                        .map(|l| format!("{l}\n"))
                        .collect::<String>()
                );
            }
        }
        first = false;
    }
    Ok(())
}

/// The formats of `podkeeper events -o`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum EventsOutput {
    Json,
    Yaml,
}

impl EventsOutput {
    fn render(self, value: &serde_json::Value) -> anyhow::Result<String> {
        Ok(match self {
            EventsOutput::Json => format!("{}\n", serde_json::to_string_pretty(value)?),
            EventsOutput::Yaml => serde_yaml::to_string(value)?,
        })
    }
}

/// The agent's event stream for a pod (all pods if `pod` is empty),
/// existing events first.
async fn event_stream(
    client: &mut Client,
    namespace: &str,
    pod: &str,
    follow: bool,
) -> anyhow::Result<tonic::Streaming<proto::Event>> {
    let request = proto::WatchEventsRequest {
        namespace: namespace.into(),
        pod_name: pod.into(),
        include_existing: true,
        follow,
        pod_uid: String::new(),
    };
    Ok(client
        .watch_events(request)
        .await
        .map_err(rpc_error)?
        .into_inner())
}

async fn collect_events(
    client: &mut Client,
    namespace: &str,
    pod: &str,
    follow: bool,
) -> anyhow::Result<Vec<proto::Event>> {
    let mut stream = event_stream(client, namespace, pod, follow).await?;
    let mut events = Vec::new();
    while let Some(event) = stream.next().await {
        events.push(event.map_err(rpc_error)?);
    }
    Ok(events)
}

/// `podkeeper logs POD [-c CONTAINER] [--tail N] [-f]`: prints what the
/// container wrote, from its CRI log file (without the timestamp, stream
/// and tag of each record, partial records joined). With `-f`, keeps
/// printing until the container is no longer running; it reads the file
/// directly, so an agent that goes away meanwhile does not end it.
pub async fn logs(
    flags: &ClientFlags,
    pod: &str,
    container: Option<&str>,
    tail: Option<usize>,
    follow: bool,
    previous: bool,
) -> anyhow::Result<()> {
    use std::io::Write;
    use std::time::{Duration, Instant};

    /// How often to look for new output.
    const POLL: Duration = Duration::from_millis(200);
    /// How often to ask the agent whether the container still runs.
    const CHECK: Duration = Duration::from_secs(1);
    /// After the container stopped: how long without new output before
    /// the logger is taken to be done (it may lag behind a burst).
    const SETTLE: Duration = Duration::from_secs(1);

    let mut client = connect(flags).await?;
    let namespace = flags.namespace.clone().unwrap_or_else(|| "default".into());
    let request = proto::GetPodRequest {
        namespace: namespace.clone(),
        name: pod.into(),
    };
    let pod = client
        .get_pod(request)
        .await
        .map_err(rpc_error)?
        .into_inner();
    let chosen = match container {
        Some(name) => pod.containers.iter().find(|c| c.name == name),
        None if pod.containers.len() == 1 => pod.containers.first(),
        None => {
            let names: Vec<_> = pod.containers.iter().map(|c| c.name.as_str()).collect();
            anyhow::bail!(
                "pod {} has several containers; choose one with -c: {}",
                pod.name,
                names.join(" ")
            );
        }
    };
    let chosen = chosen.with_context(|| {
        format!(
            "pod {} has no container {:?}",
            pod.name,
            container.unwrap_or("")
        )
    })?;
    if chosen.log_path.is_empty() {
        anyhow::bail!(
            "container {} of pod {} has not started yet",
            chosen.name,
            pod.name
        );
    }
    let current = Path::new(&chosen.log_path);
    // `<restart>.log`: the previous run's is the one numbered before it,
    // kept until the next restart, as the kubelet keeps one dead container.
    let previous_path = previous
        .then(|| {
            let restart: u32 = current.file_stem()?.to_str()?.parse().ok()?;
            let before = restart.checked_sub(1)?;
            Some(current.with_file_name(format!("{before}.log")))
        })
        .flatten();
    if previous && previous_path.as_ref().is_none_or(|p| !p.exists()) {
        anyhow::bail!(
            "previous terminated container {:?} in pod {:?} not found",
            chosen.name,
            pod.name
        );
    }
    let path = previous_path.as_deref().unwrap_or(current);
    let follow = follow && !previous;
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let printed: anyhow::Result<()> = async {
        let mut reader = crate::logs::read::LogReader::open(path, tail, &mut out)
            .with_context(|| format!("reading {}", path.display()))?;
        out.flush()?;
        if follow {
            let mut ended_at: Option<Instant> = None;
            let mut last_output = Instant::now();
            let mut last_check = Instant::now();
            loop {
                if reader.poll(&mut out)? {
                    out.flush()?;
                    last_output = Instant::now();
                }
                if let Some(ended) = ended_at {
                    if last_output.max(ended).elapsed() >= SETTLE {
                        break;
                    }
                } else if last_check.elapsed() >= CHECK {
                    last_check = Instant::now();
                    let request = proto::GetPodRequest {
                        namespace: namespace.clone(),
                        name: pod.name.clone(),
                    };
                    // Still running and still this log (a restart starts
                    // another file)? Other errors than NotFound: the agent is
                    // away, the logger is not, keep following.
                    let running = match client.get_pod(request).await {
                        Ok(now) => now.into_inner().containers.iter().any(|c| {
                            c.name == chosen.name
                                && c.log_path == chosen.log_path
                                && c.state == "Running"
                        }),
                        Err(status) => status.code() != tonic::Code::NotFound,
                    };
                    if !running {
                        ended_at = Some(Instant::now());
                    }
                }
                tokio::time::sleep(POLL).await;
            }
        }
        reader.finish(&mut out)?;
        out.flush()?;
        Ok(())
    }
    .await;
    match printed {
        // `podkeeper logs … | head`: the reader has seen enough.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        other => other,
    }
}

fn events_table(events: &[proto::Event], indent: &str) -> String {
    let now = jiff::Timestamp::now();
    let age = |s: &str| {
        s.parse::<jiff::Timestamp>()
            .map(|t| human_duration(now.duration_since(t)))
            .unwrap_or_else(|_| "<unknown>".into())
    };
    let mut rows = vec![
        ["Type", "Reason", "Age", "From", "Message"]
            .map(String::from)
            .to_vec(),
        ["----", "------", "----", "----", "-------"]
            .map(String::from)
            .to_vec(),
    ];
    for e in events {
        let interval = if e.count > 1 {
            format!(
                "{} (x{} over {})",
                age(&e.last_timestamp),
                e.count,
                age(&e.first_timestamp)
            )
        } else {
            age(&e.first_timestamp)
        };
        rows.push(vec![
            e.r#type.clone(),
            e.reason.clone(),
            interval,
            e.source_component.clone(),
            e.message.trim().into(),
        ]);
    }
    table(&rows)
        .lines()
        .map(|l| format!("{indent}{l}\n"))
        .collect()
}

/// Columns padded to their widest cell plus two spaces, like kubectl.
pub(crate) fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}", width = widths[i] + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Kubernetes' `HumanDuration`, shared with `describe`.
pub use crate::api::describe::human_duration;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let rows = vec![
            vec!["NAME".to_string(), "STATUS".into()],
            vec!["web-node1".into(), "Running".into()],
        ];
        assert_eq!(table(&rows), "NAME       STATUS\nweb-node1  Running\n");
    }

    #[test]
    fn status_word_prefers_a_container_reason() {
        let pod = proto::PodSummary {
            phase: "Pending".into(),
            containers: vec![proto::ContainerSummary {
                state: "Waiting".into(),
                reason: "ErrImagePull".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(pod_status_word(&pod), "ErrImagePull");
    }
}
