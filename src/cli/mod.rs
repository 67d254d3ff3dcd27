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
}

#[derive(Debug, Clone, Subcommand)]
pub enum DescribeWhat {
    /// Describe one pod (the short name without -<node> works)
    Pod { name: String },
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
    if let (Some(Output::Json), Some(pod)) = (output, name.as_ref().and(pods.first())) {
        // One named pod prints as the object itself, as kubectl does.
        let pod: serde_json::Value = serde_json::from_str(&pod.pod_json)?;
        println!("{}", serde_json::to_string_pretty(&pod)?);
        return Ok(());
    }
    if let Some(Output::Json) = output {
        let items: Vec<serde_json::Value> = pods
            .iter()
            .filter_map(|p| serde_json::from_str(&p.pod_json).ok())
            .collect();
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
        println!("{}", serde_json::to_string_pretty(&list)?);
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

/// `podkeeper describe pod NAME`.
pub async fn describe(flags: &ClientFlags, what: &DescribeWhat) -> anyhow::Result<()> {
    let DescribeWhat::Pod { name } = what;
    let mut client = connect(flags).await?;
    let namespace = flags.namespace.clone().unwrap_or_else(|| "default".into());
    let request = proto::GetPodRequest {
        namespace: namespace.clone(),
        name: name.clone(),
    };
    let pod = client
        .get_pod(request)
        .await
        .map_err(rpc_error)?
        .into_inner();
    let events = collect_events(&mut client, &namespace, &pod.name, false).await?;
    let mut out = String::new();
    let mut field = |k: &str, v: &str| out.push_str(&format!("{:<15}{}\n", format!("{k}:"), v));
    field("Name", &pod.name);
    field("Namespace", &pod.namespace);
    field(
        "Start Time",
        if pod.start_time.is_empty() {
            "<none>"
        } else {
            &pod.start_time
        },
    );
    field("Status", &pod.phase);
    field(
        "IP",
        if pod.pod_ip.is_empty() {
            "<none>"
        } else {
            &pod.pod_ip
        },
    );
    field("Manifest", &pod.manifest_path);
    out.push_str("Containers:\n");
    for c in &pod.containers {
        out.push_str(&format!("  {}:\n", c.name));
        let mut rows = vec![
            vec!["    Container ID:".to_string(), c.container_id.clone()],
            vec!["    Image:".into(), c.image.clone()],
            vec!["    State:".into(), c.state.clone()],
        ];
        if !c.reason.is_empty() {
            rows.push(vec!["      Reason:".into(), c.reason.clone()]);
        }
        if c.state == "Terminated" {
            rows.push(vec!["      Exit Code:".into(), c.exit_code.to_string()]);
        }
        rows.push(vec![
            "    Ready:".into(),
            if c.ready { "True" } else { "False" }.into(),
        ]);
        rows.push(vec![
            "    Restart Count:".into(),
            c.restart_count.to_string(),
        ]);
        rows.push(vec!["    Log:".into(), c.log_path.clone()]);
        out.push_str(&table(&rows));
    }
    if events.is_empty() {
        out.push_str("Events:  <none>\n");
    } else {
        out.push_str("Events:\n");
        out.push_str(&events_table(&events, "  "));
    }
    print!("{out}");
    Ok(())
}

/// `podkeeper events [POD] [--watch]`.
pub async fn events(flags: &ClientFlags, pod: Option<&str>, watch: bool) -> anyhow::Result<()> {
    let mut client = connect(flags).await?;
    let namespace = flags.namespace.clone().unwrap_or_default();
    let namespace = if pod.is_some() && namespace.is_empty() {
        "default".into()
    } else {
        namespace
    };
    let request = proto::WatchEventsRequest {
        namespace,
        pod_name: pod.unwrap_or_default().into(),
        include_existing: true,
        follow: watch,
    };
    let mut stream = client
        .watch_events(request)
        .await
        .map_err(rpc_error)?
        .into_inner();
    if !watch {
        let mut events = Vec::new();
        while let Some(event) = stream.next().await {
            events.push(event.map_err(rpc_error)?);
        }
        if events.is_empty() {
            eprintln!("No events found.");
        } else {
            print!("{}", events_table(&events, ""));
        }
        return Ok(());
    }
    while let Some(event) = stream.next().await {
        print!("{}", events_table(&[event.map_err(rpc_error)?], ""));
    }
    Ok(())
}

async fn collect_events(
    client: &mut Client,
    namespace: &str,
    pod: &str,
    follow: bool,
) -> anyhow::Result<Vec<proto::Event>> {
    let request = proto::WatchEventsRequest {
        namespace: namespace.into(),
        pod_name: pod.into(),
        include_existing: true,
        follow,
    };
    let mut stream = client
        .watch_events(request)
        .await
        .map_err(rpc_error)?
        .into_inner();
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
    let path = Path::new(&chosen.log_path);
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

/// Kubernetes' `HumanDuration` (apimachinery duration.go).
pub fn human_duration(d: jiff::SignedDuration) -> String {
    let seconds = d.as_secs();
    if seconds < -2 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    let minutes = seconds / 60;
    let hours = minutes / 60;
    let days = hours / 24;
    let years = days / 365;
    let pair = |a: i64, ua: &str, b: i64, ub: &str| {
        if b == 0 {
            format!("{a}{ua}")
        } else {
            format!("{a}{ua}{b}{ub}")
        }
    };
    match () {
        _ if seconds < 120 => format!("{seconds}s"),
        _ if minutes < 10 => pair(minutes, "m", seconds % 60, "s"),
        _ if hours < 3 => format!("{minutes}m"),
        _ if hours < 8 => pair(hours, "h", minutes % 60, "m"),
        _ if hours < 48 => format!("{hours}h"),
        _ if hours < 192 => pair(days, "d", hours % 24, "h"),
        _ if days < 730 => format!("{days}d"),
        _ if days < 365 * 8 => pair(years, "y", days % 365, "d"),
        _ => format!("{years}y"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_duration_matches_kubernetes() {
        let d = |s: i64| human_duration(jiff::SignedDuration::from_secs(s));
        assert_eq!(d(-5), "<invalid>");
        assert_eq!(d(-1), "0s");
        assert_eq!(d(59), "59s");
        assert_eq!(d(119), "119s");
        assert_eq!(d(120), "2m");
        assert_eq!(d(150), "2m30s");
        assert_eq!(d(600), "10m");
        assert_eq!(d(3 * 3600 + 60), "3h1m");
        assert_eq!(d(8 * 3600), "8h");
        assert_eq!(d(50 * 3600), "2d2h");
        assert_eq!(d(10 * 86400), "10d");
        assert_eq!(d(800 * 86400), "2y70d");
        assert_eq!(d(9 * 365 * 86400), "9y");
    }

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
