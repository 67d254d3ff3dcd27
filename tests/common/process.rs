//! Running the programs the tests drive (`ctr`, the registry, skopeo, the
//! fixture scripts...): finding them, running them with a time limit, and
//! stopping the ones that run in the background.

use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// Searched after PATH, which may lack the sbin dirs (runc, containerd) when
/// the tests run from a minimal environment.
pub const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `preferred` if it exists, else `name` looked up on PATH, then on
/// [`SYSTEM_PATH`]. The error names the packages to install (`install_hint`).
pub fn find_tool(name: &str, preferred: &str, install_hint: &str) -> Result<PathBuf> {
    let preferred = Path::new(preferred);
    if preferred.is_file() {
        return Ok(preferred.to_path_buf());
    }
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(SYSTEM_PATH.split(':'))
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("{name} not found ({install_hint})"))
}

/// Runs `cmd` with stdin closed, capturing stdout and stderr; SIGKILLs it
/// after `timeout`. Its exit status is the caller's to check.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {}", describe(cmd)))?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    let waiter = thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(res) => {
            let _ = waiter.join();
            Ok(res?)
        }
        Err(_) => {
            // The waiter has not reaped the child yet (it would have sent),
            // so the pid is still ours.
            if let Ok(pid) = libc::pid_t::try_from(pid) {
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            let _ = waiter.join();
            Err(anyhow!("{} timed out after {timeout:?}", describe(cmd)))
        }
    }
}

/// [`run_with_timeout`], failing with the command line, its exit status and
/// its output when it does not exit 0.
pub fn run_checked(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let out = run_with_timeout(cmd, timeout)?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}{}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            if out.stdout.is_empty() {
                String::new()
            } else {
                format!("\nstdout: {}", String::from_utf8_lossy(&out.stdout).trim())
            }
        );
    }
    Ok(out)
}

/// SIGKILLs `child` and reaps it. Errors are ignored: it may have exited
/// (or been reaped) already.
pub fn kill_and_wait(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The command line of `cmd`, for messages.
fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}
