//! The `podkeeper` binary: `run` is the agent; the other subcommands are
//! clients of its API.

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};

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
        /// Keep printing new and updated events
        #[arg(long, short = 'w')]
        watch: bool,
        /// Print Kubernetes v1 Events instead of a table
        #[arg(long, short = 'o', value_enum)]
        output: Option<cli::EventsOutput>,
    },
    /// Manage images: ls, pull, import, rm
    Image {
        #[command(flatten)]
        client: ClientFlags,
        #[command(subcommand)]
        command: cli::images::ImageCommand,
    },
    /// Print the kubeconfig of the agent's HTTPS API (admin token and CA),
    /// which root and members of group podkeeper may read
    Kubeconfig {
        /// The agent's state directory, which holds the kubeconfig
        #[arg(long, default_value = "/var/lib/podkeeper")]
        state_dir: std::path::PathBuf,
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
        /// The previous run's output (after a restart)
        #[arg(long, short = 'p')]
        previous: bool,
    },
    /// The log writer containerd's shim runs next to each container (not for
    /// people: see `podkeeper::logs::logger_uri`, which builds its command line)
    #[command(name = podkeeper::logs::LOGGER_COMMAND, hide = true)]
    CriLogger { argument: String },
    /// Writes the man pages or a shell completion script from these very
    /// definitions, so they never drift from the binary (packaging/build.sh
    /// calls it; build.rs cannot, as it cannot see the crate it builds)
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        what: Generated,
    },
}

/// What `podkeeper generate` writes.
#[derive(Subcommand)]
enum Generated {
    /// Man pages: podkeeper.1 and one per subcommand (podkeeper-run.1, ...)
    Man {
        /// Directory to write them into (created if missing)
        dir: std::path::PathBuf,
    },
    /// A completion script for SHELL, on standard output
    Completions { shell: clap_complete::Shell },
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
        Command::Kubeconfig { state_dir } => {
            let path = podkeeper::api::kubeconfig::path(&state_dir);
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "reading {} (written by the agent at its first start with api-listen on; readable by root and group podkeeper)",
                    path.display()
                )
            })?;
            print!("{text}");
            Ok(())
        }
        Command::Get { client, what } => cli::get(&client, &what).await,
        Command::Describe { client, what } => cli::describe(&client, &what).await,
        Command::Events {
            client,
            pod,
            watch,
            output,
        } => cli::events(&client, pod.as_deref(), watch, output).await,
        Command::Image { client, command } => cli::images::run(&client, &command).await,
        Command::Logs {
            client,
            pod,
            container,
            tail,
            follow,
            previous,
        } => cli::logs(&client, &pod, container.as_deref(), tail, follow, previous).await,
        Command::Generate { what } => generate(what),
        Command::CriLogger { .. } => {
            anyhow::bail!(
                "{} is handled before the runtime starts",
                podkeeper::logs::LOGGER_COMMAND
            )
        }
    }
}

fn generate(what: Generated) -> anyhow::Result<()> {
    let command = Cli::command();
    match what {
        Generated::Man { dir } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(command, &dir)
                .with_context(|| format!("writing man pages into {}", dir.display()))
        }
        Generated::Completions { shell } => {
            let mut visible = without_hidden_subcommands(&command);
            clap_complete::generate(shell, &mut visible, "podkeeper", &mut std::io::stdout());
            Ok(())
        }
    }
}

/// The command without its hidden subcommands: clap_complete would offer
/// them (`cri-logger`, `generate`), and clap cannot remove a subcommand, so
/// the top level is rebuilt from the visible ones.
fn without_hidden_subcommands(command: &clap::Command) -> clap::Command {
    clap::Command::new("podkeeper")
        .version(podkeeper::VERSION)
        .args(command.get_arguments().cloned())
        .subcommands(
            command
                .get_subcommands()
                .filter(|s| !s.is_hide_set())
                .cloned(),
        )
}
