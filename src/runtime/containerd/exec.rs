//! Running a command inside a running container, as CRI's `ExecSync` does:
//! an extra process in the container's task with the container's own
//! process settings (environment, working directory, user, capabilities),
//! other arguments and no terminal. Probes and lifecycle hooks use it.
//!
//! Output comes back through two FIFOs the shim writes stdout and stderr
//! to, returned as stdout followed by stderr, as the kubelet joins them
//! (one shared FIFO would interleave them in whatever order the shim's two
//! copy loops happen to run). The read ends are opened read-write, so they
//! never report end-of-file before the shim has opened its ends, and are
//! drained until the exec process has been deleted — deleting waits for
//! the shim's copying to finish.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    DeleteProcessRequest, ExecProcessRequest, GetContainerRequest, KillRequest, StartRequest,
    WaitRequest,
};
use tokio::net::unix::pipe;
use tonic::{Code, Status};

use super::client::{rpc, Containerd, RuntimeError};

/// The most output kept, as the kubelet's `maxExecProbeOutputLength`
/// (10 KiB); the rest is read and dropped so the command never blocks on a
/// full pipe.
pub const MAX_OUTPUT: usize = 10 * 1024;

/// How long a killed exec process gets to be reaped before it is deleted
/// anyway (a process stuck in the kernel cannot be waited for forever).
const KILL_WAIT: Duration = Duration::from_secs(5);

/// The type URL containerd expects for a process spec.
const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";

/// Exec IDs made by this process; with the PID and the start time they make
/// every ID unique, also across agent restarts.
static EXEC_COUNTER: AtomicU64 = AtomicU64::new(0);

/// What a command run in a container did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecOutput {
    /// The exit status (128 + signal when killed); meaningless when
    /// `timed_out`.
    pub exit_code: i32,
    /// Combined stdout and stderr, at most [`MAX_OUTPUT`] bytes, decoded
    /// lossily.
    pub output: String,
    /// The command did not finish in time and was killed.
    pub timed_out: bool,
}

impl Containerd {
    /// Runs `command` in the running task of container `id` and waits at
    /// most `timeout` for it. On timeout the process is killed and
    /// `timed_out` is set. The exec process is deleted in every case.
    pub async fn exec(
        &self,
        id: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError> {
        let exec_id = new_exec_id();
        let process = self.exec_process_spec(id, command).await?;
        let fifos =
            OutputFifos::create(&exec_id).map_err(|e| local(id, "create exec output", e))?;
        let mut output = Collected::default();
        let outcome = self
            .run_exec(id, &exec_id, process, &fifos, &mut output, timeout)
            .await;
        // Deleting the process also waits for the shim to finish copying
        // its output into the FIFOs, so what is left can be read at once.
        let deleted = draining(&fifos, &mut output, self.delete_process(id, &exec_id)).await;
        fifos.drain(&mut output);
        drop(fifos);
        let (exit_code, timed_out) = outcome?;
        deleted?;
        Ok(ExecOutput {
            exit_code,
            output: output.joined(),
            timed_out,
        })
    }

    /// The container's process spec with `command` as its arguments and no
    /// terminal, as containerd's CRI plugin builds exec processes.
    async fn exec_process_spec(
        &self,
        id: &str,
        command: &[String],
    ) -> Result<prost_types::Any, RuntimeError> {
        let mut containers = ContainersClient::new(self.channel.clone());
        let container = containers
            .get(self.request(GetContainerRequest { id: id.into() }, None))
            .await
            .map_err(rpc("get container", id))?
            .into_inner()
            .container
            .unwrap_or_default();
        let spec: oci_spec::runtime::Spec = container
            .spec
            .as_ref()
            .ok_or_else(|| invalid(id, "the container has no OCI spec"))
            .and_then(|any| {
                serde_json::from_slice(&any.value)
                    .map_err(|e| invalid(id, &format!("reading its OCI spec: {e}")))
            })?;
        let mut process = spec
            .process()
            .clone()
            .ok_or_else(|| invalid(id, "its OCI spec has no process"))?;
        process.set_args(Some(command.to_vec()));
        process.set_terminal(Some(false));
        process.set_console_size(None);
        let value = serde_json::to_vec(&process)
            .map_err(|e| invalid(id, &format!("serializing the exec process: {e}")))?;
        Ok(prost_types::Any {
            type_url: PROCESS_TYPE_URL.into(),
            value,
        })
    }

    /// Creates, starts and waits for the exec process, reading its output
    /// meanwhile; returns the exit status and whether it timed out.
    async fn run_exec(
        &self,
        id: &str,
        exec_id: &str,
        process: prost_types::Any,
        fifos: &OutputFifos,
        output: &mut Collected,
        timeout: Duration,
    ) -> Result<(i32, bool), RuntimeError> {
        let mut tasks = TasksClient::new(self.channel.clone());
        let request = ExecProcessRequest {
            container_id: id.into(),
            stdin: String::new(),
            stdout: fifos.stdout.path.display().to_string(),
            stderr: fifos.stderr.path.display().to_string(),
            terminal: false,
            spec: Some(process),
            exec_id: exec_id.into(),
        };
        tasks
            .exec(self.request(request, None))
            .await
            .map_err(rpc("exec in", id))?;
        let start = StartRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
        };
        tasks
            .start(self.request(start, None))
            .await
            .map_err(rpc("start exec in", id))?;

        let wait = tokio::time::timeout(timeout, self.wait_process(id, exec_id));
        let waited = draining(fifos, output, wait).await;
        match waited {
            Ok(status) => Ok((status? as i32, false)),
            Err(_elapsed) => {
                let kill = KillRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                    signal: libc::SIGKILL as u32,
                    all: false,
                };
                match tasks.kill(self.request(kill, None)).await {
                    Ok(_) => {}
                    // It exited just now.
                    Err(status) if status.code() == Code::NotFound => {}
                    Err(status) => return Err(rpc("kill exec in", id)(status)),
                }
                let reaped = tokio::time::timeout(KILL_WAIT, self.wait_process(id, exec_id));
                let _ = draining(fifos, output, reaped).await;
                Ok((libc::SIGKILL + 128, true))
            }
        }
    }

    async fn wait_process(&self, id: &str, exec_id: &str) -> Result<u32, RuntimeError> {
        let mut tasks = TasksClient::new(self.channel.clone());
        let request = WaitRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
        };
        Ok(tasks
            .wait(self.request(request, None))
            .await
            .map_err(rpc("wait for exec in", id))?
            .into_inner()
            .exit_status)
    }

    /// Deletes the exec process; one that never came to be is fine.
    async fn delete_process(&self, id: &str, exec_id: &str) -> Result<(), RuntimeError> {
        let mut tasks = TasksClient::new(self.channel.clone());
        let request = DeleteProcessRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
        };
        match tasks.delete_process(self.request(request, None)).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == Code::NotFound => Ok(()),
            Err(status) => Err(rpc("delete exec process in", id)(status)),
        }
    }
}

/// Runs `work` while reading the output as it comes, so the shim never
/// blocks on a full FIFO (deleting the process waits for its copying).
async fn draining<T>(
    fifos: &OutputFifos,
    output: &mut Collected,
    work: impl std::future::Future<Output = T>,
) -> T {
    tokio::pin!(work);
    // A FIFO that fails is not read again; the work still completes.
    let (mut stdout_ok, mut stderr_ok) = (true, true);
    loop {
        tokio::select! {
            done = &mut work => return done,
            ready = fifos.stdout.receiver.readable(), if stdout_ok => match ready {
                Ok(()) => fifos.stdout.receiver.drain(&mut output.stdout),
                Err(_) => stdout_ok = false,
            },
            ready = fifos.stderr.receiver.readable(), if stderr_ok => match ready {
                Ok(()) => fifos.stderr.receiver.drain(&mut output.stderr),
                Err(_) => stderr_ok = false,
            },
        }
    }
}

/// A new exec ID: unique and well below containerd's 76-character limit.
fn new_exec_id() -> String {
    let n = EXEC_COUNTER.fetch_add(1, Ordering::Relaxed);
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!("pk-exec-{:x}-{started:x}-{n:x}", std::process::id())
}

/// An error that did not come from containerd, in the shape of the others:
/// `RuntimeError` has no variant for local failures around a call.
fn local(id: &str, op: &'static str, error: std::io::Error) -> RuntimeError {
    rpc(op, id)(Status::internal(error.to_string()))
}

fn invalid(id: &str, reason: &str) -> RuntimeError {
    rpc("prepare exec in", id)(Status::failed_precondition(reason.to_string()))
}

/// Output read so far, each stream capped at [`MAX_OUTPUT`].
#[derive(Default)]
struct Collected {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Collected {
    /// stdout then stderr, at most [`MAX_OUTPUT`] bytes in all, decoded
    /// lossily.
    fn joined(mut self) -> String {
        self.stdout.extend_from_slice(&self.stderr);
        self.stdout.truncate(MAX_OUTPUT);
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// One FIFO and its read end.
struct Fifo {
    path: PathBuf,
    receiver: pipe::Receiver,
}

impl Fifo {
    fn create(path: PathBuf) -> std::io::Result<Fifo> {
        make_fifo(&path)?;
        // Read-write: the read end then never sees end-of-file (no writer
        // yet, or the shim closed its end), so readiness means data.
        let receiver = pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&path)?;
        Ok(Fifo { path, receiver })
    }
}

/// The FIFOs an exec process writes to, in a private directory removed
/// (with the FIFOs) on drop.
struct OutputFifos {
    dir: PathBuf,
    stdout: Fifo,
    stderr: Fifo,
}

impl OutputFifos {
    fn create(exec_id: &str) -> std::io::Result<OutputFifos> {
        let dir = std::env::temp_dir().join(format!("podkeeper-{exec_id}"));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let opened = Fifo::create(dir.join("stdout"))
            .and_then(|stdout| Ok((stdout, Fifo::create(dir.join("stderr"))?)));
        match opened {
            Ok((stdout, stderr)) => Ok(OutputFifos {
                dir,
                stdout,
                stderr,
            }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    fn drain(&self, output: &mut Collected) {
        self.stdout.receiver.drain(&mut output.stdout);
        self.stderr.receiver.drain(&mut output.stderr);
    }
}

impl Drop for OutputFifos {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn make_fifo(path: &Path) -> std::io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c_path` is a valid NUL-terminated string that outlives the call.
    if unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

trait Drain {
    /// Reads whatever is buffered now, without waiting, keeping at most
    /// [`MAX_OUTPUT`] bytes in `into`.
    fn drain(&self, into: &mut Vec<u8>);
}

impl Drain for pipe::Receiver {
    fn drain(&self, into: &mut Vec<u8>) {
        let mut buf = [0u8; 4096];
        loop {
            match self.try_read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    let room = MAX_OUTPUT.saturating_sub(into.len());
                    into.extend_from_slice(&buf[..n.min(room)]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
    }
}
