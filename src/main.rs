//! The `podkeeper` binary: `run` is the agent; the other subcommands are
//! clients of its API.

use clap::{Parser, Subcommand};

use podkeeper::cli::{self, ClientFlags, DescribeWhat, GetWhat};
use podkeeper::config::{RunFlags, Settings};

#[derive(Parser)]
#[command(name = "podkeeper", version = podkeeper::VERSION, about = "Runs static Kubernetes pods on containerd, without a control plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node agent
    Run(Box<RunFlags>),
    /// Print the version
    Version,
    /// List resources (pods)
    Get {
        #[command(flatten)]
        client: ClientFlags,
        #[command(subcommand)]
        what: GetWhat,
    },
    /// Show details of a pod, with its events
    Describe {
        #[command(flatten)]
        client: ClientFlags,
        #[command(subcommand)]
        what: DescribeWhat,
    },
    /// Show events, of all pods or of one
    Events {
        #[command(flatten)]
        client: ClientFlags,
        /// Only events of this pod
        pod: Option<String>,
        /// Keep printing new events
        #[arg(long, short = 'w')]
        watch: bool,
    },
    /// Manage images: ls, pull, import, rm
    Image {
        #[command(flatten)]
        client: ClientFlags,
        #[command(subcommand)]
        command: cli::images::ImageCommand,
    },
    /// Print a container's log
    Logs {
        #[command(flatten)]
        client: ClientFlags,
        pod: String,
        /// Container name (needed when the pod has several)
        #[arg(long, short = 'c')]
        container: Option<String>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("podkeeper: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("podkeeper: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run(flags) => podkeeper::agent::run(Settings::load(&flags)?).await,
        Command::Version => {
            println!("podkeeper {}", podkeeper::VERSION);
            Ok(())
        }
        Command::Get { client, what } => cli::get(&client, &what).await,
        Command::Describe { client, what } => cli::describe(&client, &what).await,
        Command::Events { client, pod, watch } => cli::events(&client, pod.as_deref(), watch).await,
        Command::Image { client, command } => cli::images::run(&client, &command).await,
        Command::Logs {
            client,
            pod,
            container,
        } => cli::logs(&client, &pod, container.as_deref()).await,
    }
}
