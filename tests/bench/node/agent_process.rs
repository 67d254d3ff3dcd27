//! What the node benchmark reads of the agent process: memory and CPU from
//! /proc, and its own latency histograms from `/metrics`.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::agent::Agent;

/// A process's resident memory from /proc, in KiB.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub rss: u64,
    pub high_water: u64,
    /// Heap, stacks and other anonymous pages.
    pub anon: u64,
    /// Mapped files: mostly the agent's own code.
    pub file: u64,
}

impl Memory {
    pub fn of(pid: u32) -> Memory {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Memory {
            rss: field("VmRSS:"),
            high_water: field("VmHWM:"),
            anon: field("RssAnon:"),
            file: field("RssFile:"),
        }
    }

    /// RSS with its anonymous / file-backed split, in MiB.
    pub fn describe(&self) -> String {
        let mib = |kib: u64| kib as f64 / 1024.0;
        format!(
            "{:.1} MiB (anon {:.1}, file {:.1})",
            mib(self.rss),
            mib(self.anon),
            mib(self.file)
        )
    }
}

/// User + system CPU time of a process.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// Memory at the end of `period` and CPU share of one core over it.
pub fn footprint(pid: u32, period: Duration) -> (Memory, f64) {
    let before = cpu_time(pid);
    std::thread::sleep(period);
    let used = cpu_time(pid).saturating_sub(before);
    (
        Memory::of(pid),
        used.as_secs_f64() / period.as_secs_f64() * 100.0,
    )
}

/// Where the agent's time went, from its own histograms in `/metrics`:
/// one line per pod worker action and containerd method with the mean
/// duration and the number of calls per `runs`.
pub fn agent_profile(agent: &Agent, runs: usize) -> Vec<String> {
    let Ok((200, text)) = agent.get("/metrics") else {
        return Vec::new();
    };
    let series = |name: &str, part: &str| -> BTreeMap<String, f64> {
        let prefix = format!("{name}_{part}{{");
        text.lines()
            .filter_map(|line| line.strip_prefix(&prefix))
            .filter_map(|rest| {
                let (labels, value) = rest.split_once("} ")?;
                Some((labels.to_string(), value.parse().ok()?))
            })
            .collect()
    };
    let mut lines = Vec::new();
    for name in [
        "podkeeper_pod_sync_duration_seconds",
        "podkeeper_containerd_call_duration_seconds",
    ] {
        let counts = series(name, "count");
        for (labels, sum) in series(name, "sum") {
            let count = counts.get(&labels).copied().unwrap_or(0.0);
            if count > 0.0 {
                lines.push(format!(
                    "{labels}: {:.1} ms mean, {:.1} per pod",
                    sum / count * 1000.0,
                    count / runs as f64
                ));
            }
        }
    }
    lines
}
