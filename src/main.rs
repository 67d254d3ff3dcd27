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
        /// Only the last N lines
        #[arg(long, value_name = "N")]
        tail: Option<usize>,
        /// Keep printing new output until the container exits
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// The log writer containerd's shim runs next to each container (not for
    /// people: see `podkeeper::logs::logger_uri`, which builds its command line)
    #[command(name = podkeeper::logs::LOGGER_COMMAND, hide = true)]
    CriLogger { argument: String },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Command::CriLogger { argument } = &cli.command {
        // Before anything else: it must own fds 3-5 as the shim passed them
        // (an async runtime would open fds of its own), and its stderr is
        // /dev/null under the shim, so no tracing either.
        return match podkeeper::logs::run_logger(argument) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(_) => std::process::ExitCode::FAILURE,
        };
    }
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
            tail,
            follow,
        } => cli::logs(&client, &pod, container.as_deref(), tail, follow).await,
        Command::CriLogger { .. } => {
            anyhow::bail!(
                "{} is handled before the runtime starts",
                podkeeper::logs::LOGGER_COMMAND
            )
        }
    }
}
