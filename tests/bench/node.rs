//! Benchmark: pod start and removal, node scale, footprint and restart
//! adoption of podkeeper, side by side in the same run with the raw cost of
//! the same tasks over containerd's gRPC API and with `podman kube play`.
//!
//! Run as root: `cargo bench --bench node` (see README, "Benchmarks").
//! Options after `--`: `--pods N` (default 110), `--containers N` per pod
//! (default 2), `--runs N` for the one-pod figures (default 10),
//! `--no-podman`, `--keep-running` (after adoption, leave the node's pods up
//! until Ctrl-C, to profile; then finish as usual). Prints tables; asserts
//! nothing about time.

#[path = "node/agent_process.rs"]
mod agent_process;
#[path = "../common/mod.rs"]
mod common;
#[path = "node/peers.rs"]
mod peers;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use agent_process::{agent_profile, footprint, Memory};
use anyhow::{bail, Context};
use common::agent::{Agent, BUSYBOX};
use common::containerd::PrivateContainerd;
use common::tasks::tasks;
use peers::{Podman, RawFloor};

const NAMESPACE: &str = "bench";

struct Options {
    pods: usize,
    containers: usize,
    runs: usize,
    podman: bool,
    keep_running: bool,
}

impl Options {
    fn parse() -> anyhow::Result<Options> {
        let mut options = Options {
            pods: 110,
            containers: 2,
            runs: 10,
            podman: true,
            keep_running: false,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut number = |name: &str| -> anyhow::Result<usize> {
                args.next()
                    .and_then(|v| v.parse().ok())
                    .with_context(|| format!("{name} needs a number"))
            };
            match arg.as_str() {
                "--pods" => options.pods = number("--pods")?,
                "--containers" => options.containers = number("--containers")?,
                "--runs" => options.runs = number("--runs")?,
                "--no-podman" => options.podman = false,
                "--keep-running" => options.keep_running = true,
                // cargo bench passes --bench; anything else is a mistake.
                "--bench" => {}
                other => bail!("unknown option {other}"),
            }
        }
        Ok(options)
    }
}

/// A pod of `containers` busybox sleepers, as one manifest.
fn manifest(name: &str, containers: usize) -> String {
    let mut text = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n"
    );
    for i in 0..containers {
        text.push_str(&format!(
            "  - {{name: c{i}, image: {BUSYBOX}, imagePullPolicy: IfNotPresent, command: [sleep, '36000']}}\n"
        ));
    }
    text
}

/// Names of pods whose every container runs, from one `/pods` read.
fn running_pods(agent: &Agent, containers: usize) -> Vec<String> {
    let Ok((200, body)) = agent.get("/pods") else {
        return Vec::new();
    };
    let Ok(list) = serde_json::from_str::<serde_json::Value>(&body) else {
        return Vec::new();
    };
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|pod| common::agent::running_containers(pod).len() == containers)
        .filter_map(|pod| pod["metadata"]["name"].as_str().map(String::from))
        .collect()
}

/// Polls until `done`; returns when it became true.
fn wait(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if done() {
            return Ok(start.elapsed());
        }
        std::thread::sleep(every);
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

fn median(values: &mut [Duration]) -> Duration {
    values.sort();
    values.get(values.len() / 2).copied().unwrap_or_default()
}

fn percentile(values: &mut [Duration], p: f64) -> Duration {
    values.sort();
    if values.is_empty() {
        return Duration::ZERO;
    }
    let index = ((values.len() as f64 - 1.0) * p).round() as usize;
    values[index]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

struct Row {
    what: String,
    podkeeper: String,
    other: String,
    ratio: String,
}

fn ratio(a: Duration, b: Duration) -> String {
    if b.is_zero() {
        return "-".into();
    }
    format!("{:.2}", a.as_secs_f64() / b.as_secs_f64())
}

fn main() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the node benchmark starts containerd: run it as root");
    }
    let options = Options::parse()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "podkeeper node benchmark: {} pods x {} containers, {} one-pod runs, {cores} cores",
        options.pods, options.containers, options.runs
    );
    let containerd = PrivateContainerd::start()?;
    containerd.import_busybox(NAMESPACE, BUSYBOX)?;
    let mut agent = Agent::start(&containerd, NAMESPACE)?;
    let podman = if options.podman {
        Some(Podman::new()?)
    } else {
        None
    };
    let work = tempfile::tempdir()?;
    let mut rows = Vec::new();

    // Idle footprint, 0 pods.
    std::thread::sleep(Duration::from_secs(2));
    let (idle_rss, idle_cpu) = footprint(agent.pid(), Duration::from_secs(10));

    // 1. One pod, manifest to every container running.
    let mut podkeeper_one = Vec::new();
    for run in 0..options.runs {
        let name = format!("one{run}");
        let file = format!("{name}.yaml");
        let started = Instant::now();
        agent.write_manifest(&file, &manifest(&name, options.containers));
        let full = format!("{name}-{}", common::agent::NODE);
        wait(
            "one pod running",
            Duration::from_secs(30),
            Duration::from_millis(2),
            || running_pods(&agent, options.containers).contains(&full),
        )?;
        podkeeper_one.push(started.elapsed());
        agent.remove_manifest(&file);
        wait(
            "one pod gone",
            Duration::from_secs(30),
            Duration::from_millis(20),
            || tasks(&containerd, NAMESPACE).is_empty(),
        )?;
    }
    let profile = agent_profile(&agent, options.runs);
    let tokio = tokio::runtime::Runtime::new()?;
    let floor = tokio.block_on(RawFloor::new(containerd.socket()))?;
    let mut raw_one = Vec::new();
    let mut raw_shared_one = Vec::new();
    for run in 0..options.runs {
        for (shared_shim, times) in [(false, &mut raw_one), (true, &mut raw_shared_one)] {
            let started = Instant::now();
            let ids = tokio.block_on(floor.run(run, options.containers, shared_shim))?;
            times.push(started.elapsed());
            tokio.block_on(floor.remove(&ids));
        }
    }
    let mut podman_one = Vec::new();
    if let Some(podman) = &podman {
        for run in 0..options.runs {
            let file = work.path().join(format!("podman-one{run}.yaml"));
            std::fs::write(&file, manifest(&format!("one{run}"), options.containers))?;
            podman_one.push(podman.play(&file)?);
            podman.down(&file)?;
        }
    }
    let one = median(&mut podkeeper_one);
    let raw = median(&mut raw_one);
    let raw_shared = median(&mut raw_shared_one);
    rows.push(Row {
        what: "one pod: manifest → all Running (median)".into(),
        podkeeper: ms(one),
        other: format!("raw containerd {}", ms(raw)),
        ratio: ratio(one, raw),
    });
    rows.push(Row {
        what: "  raw floor with one shim per pod".into(),
        podkeeper: ms(one),
        other: format!("raw containerd {}", ms(raw_shared)),
        ratio: ratio(one, raw_shared),
    });
    if !podman_one.is_empty() {
        let podman_median = median(&mut podman_one);
        rows.push(Row {
            what: "one pod vs podman kube play (median)".into(),
            podkeeper: ms(one),
            other: format!("podman {}", ms(podman_median)),
            ratio: ratio(one, podman_median),
        });
    }

    // 2. A full node, written at once. A fresh agent, so its high-water
    // mark is this start's.
    agent.restart()?;
    let names: Vec<String> = (0..options.pods).map(|i| format!("node{i}")).collect();
    let started = Instant::now();
    for name in &names {
        agent.write_manifest(&format!("{name}.yaml"), &manifest(name, options.containers));
    }
    let mut first_running: BTreeMap<String, Duration> = BTreeMap::new();
    wait(
        "every pod running",
        Duration::from_secs(600),
        Duration::from_millis(50),
        || {
            let elapsed = started.elapsed();
            for name in running_pods(&agent, options.containers) {
                first_running.entry(name).or_insert(elapsed);
            }
            first_running.len() >= options.pods
        },
    )?;
    let all_running = started.elapsed();
    let start_hwm = Memory::of(agent.pid()).high_water;
    let mut latencies: Vec<Duration> = first_running.values().copied().collect();
    let (steady_rss, steady_cpu) = footprint(agent.pid(), Duration::from_secs(60));

    // 4. Adoption: SIGKILL the agent and start it again.
    let pids_before: BTreeMap<String, u32> = tasks(&containerd, NAMESPACE)
        .into_iter()
        .map(|t| (t.id, t.pid))
        .collect();
    let restarted = Instant::now();
    agent.restart()?;
    let expected: Vec<String> = names
        .iter()
        .map(|n| format!("{n}-{}", common::agent::NODE))
        .collect();
    wait(
        "every pod adopted",
        Duration::from_secs(120),
        Duration::from_millis(20),
        || {
            let running = running_pods(&agent, options.containers);
            expected.iter().all(|n| running.contains(n))
        },
    )?;
    let adoption = restarted.elapsed();
    let pids_after: BTreeMap<String, u32> = tasks(&containerd, NAMESPACE)
        .into_iter()
        .map(|t| (t.id, t.pid))
        .collect();
    let restarted_containers = pids_before
        .iter()
        .filter(|(id, pid)| pids_after.get(*id) != Some(pid))
        .count();

    if options.keep_running {
        println!(
            "pods running; agent PID {}; Ctrl-C to remove them and print the table",
            agent.pid()
        );
        tokio.block_on(tokio::signal::ctrl_c())?;
    }

    // Removal of the whole node.
    let removing = Instant::now();
    for name in &names {
        agent.remove_manifest(&format!("{name}.yaml"));
    }
    wait(
        "every task gone",
        Duration::from_secs(600),
        Duration::from_millis(50),
        || tasks(&containerd, NAMESPACE).is_empty(),
    )?;
    let removal = removing.elapsed();

    rows.push(Row {
        what: format!("{} pods: all Running", options.pods),
        podkeeper: ms(all_running),
        other: String::new(),
        ratio: String::new(),
    });
    rows.push(Row {
        what: "  per-pod latency p50 / p99".into(),
        podkeeper: format!(
            "{} / {}",
            ms(percentile(&mut latencies, 0.5)),
            ms(percentile(&mut latencies, 0.99))
        ),
        other: String::new(),
        ratio: String::new(),
    });
    rows.push(Row {
        what: format!("{} pods: removal (grace 1 s)", options.pods),
        podkeeper: ms(removal),
        other: String::new(),
        ratio: String::new(),
    });

    if let Some(podman) = &podman {
        let files: Vec<PathBuf> = names
            .iter()
            .map(|name| -> anyhow::Result<PathBuf> {
                let file = work.path().join(format!("podman-{name}.yaml"));
                std::fs::write(&file, manifest(name, options.containers))?;
                Ok(file)
            })
            .collect::<anyhow::Result<_>>()?;
        let started = Instant::now();
        for file in &files {
            podman.play(file)?;
        }
        let podman_start = started.elapsed();
        let started = Instant::now();
        for file in &files {
            podman.down(file)?;
        }
        let podman_removal = started.elapsed();
        rows.push(Row {
            what: format!("{} pods: all Running vs podman", options.pods),
            podkeeper: ms(all_running),
            other: format!("podman {}", ms(podman_start)),
            ratio: ratio(all_running, podman_start),
        });
        rows.push(Row {
            what: format!("{} pods: removal vs podman", options.pods),
            podkeeper: ms(removal),
            other: format!("podman {}", ms(podman_removal)),
            ratio: ratio(removal, podman_removal),
        });
    }
    rows.push(Row {
        what: "agent idle, 0 pods: RSS / CPU".into(),
        podkeeper: format!("{} / {idle_cpu:.2} %", idle_rss.describe()),
        other: String::new(),
        ratio: String::new(),
    });
    rows.push(Row {
        what: format!("agent steady, {} pods, 60 s: RSS / CPU", options.pods),
        podkeeper: format!("{} / {steady_cpu:.2} %", steady_rss.describe()),
        other: String::new(),
        ratio: String::new(),
    });
    rows.push(Row {
        what: format!("agent RSS high-water mark, {}-pod start", options.pods),
        podkeeper: format!("{:.1} MiB", start_hwm as f64 / 1024.0),
        other: String::new(),
        ratio: String::new(),
    });
    rows.push(Row {
        what: format!("adoption of {} pods after SIGKILL", options.pods),
        podkeeper: format!("{} , {restarted_containers} restarted", ms(adoption)),
        other: String::new(),
        ratio: String::new(),
    });

    println!();
    println!("agent time per one-pod run (its /metrics, removal included):");
    for line in profile {
        println!("  {line}");
    }
    println!();
    println!("| measure | podkeeper | compared with | ratio |");
    println!("|---|---|---|---|");
    for row in rows {
        println!(
            "| {} | {} | {} | {} |",
            row.what, row.podkeeper, row.other, row.ratio
        );
    }
    Ok(())
}
