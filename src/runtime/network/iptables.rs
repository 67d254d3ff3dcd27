//! Running iptables for the few rules podkeeper manages itself (the CNI
//! plugins run their own): one place for the lock wait, the time bound and
//! what is kept of the output.

use std::process::Stdio;
use std::time::Duration;

/// Bound for one iptables call (it waits for the xtables lock, which the
/// plugins of other pods may hold).
const TIMEOUT: Duration = Duration::from_secs(30);

/// Why iptables could not be run or did not answer. A rule iptables
/// refused is not one of these: see [`Outcome`].
#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error("running {binary}: {source}")]
    Spawn {
        binary: &'static str,
        source: std::io::Error,
    },
    #[error("{binary} {} did not finish within {} s", args.join(" "), TIMEOUT.as_secs())]
    Timeout {
        binary: &'static str,
        args: Vec<String>,
    },
}

/// How one call ended: iptables' exit status tells a check (`-C`) that
/// found no rule from one that found it, so a failure is an answer here.
#[derive(Debug)]
pub struct Outcome {
    pub success: bool,
    /// What iptables printed on stderr, trimmed, for error messages.
    pub stderr: String,
}

/// Runs `binary` ("iptables" or "ip6tables") with `args`, which should
/// start with `--wait` so a busy lock delays the call instead of failing
/// it. Killed when it takes longer than [`TIMEOUT`].
pub async fn run(binary: &'static str, args: &[String]) -> Result<Outcome, IptablesError> {
    let mut cmd = tokio::process::Command::new(binary);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    match tokio::time::timeout(TIMEOUT, cmd.output()).await {
        Ok(Ok(out)) => Ok(Outcome {
            success: out.status.success(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }),
        Ok(Err(source)) => Err(IptablesError::Spawn { binary, source }),
        Err(_) => Err(IptablesError::Timeout {
            binary,
            args: args.to_vec(),
        }),
    }
}
