//! Benchmark: pull and unpack of a ~100 MB image from a registry on
//! 127.0.0.1 by podkeeper's image service, side by side with
//! `ctr images pull --plain-http` of the same image, in the same run.
//!
//! Run as root: `cargo bench --bench pull` (env PULL_BENCH_RUNS, default 5;
//! PULL_BENCH_MB, default 100). Each pull gets a fresh private containerd
//! so neither side finds content the other left. Prints a table; asserts
//! nothing about time.

#[path = "../common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::containerd::PrivateContainerd;
use common::registry::TestRegistry;
use podkeeper::images::credentials::Credentials;
use podkeeper::images::registry::RegistryClient;
use podkeeper::images::service::ImageService;
use podkeeper::runtime::containerd::Containerd;

fn main() -> anyhow::Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("the pull benchmark starts containerd: run it as root");
    }
    let runs: usize = std::env::var("PULL_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let megabytes: u64 = std::env::var("PULL_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let work = tempfile::tempdir()?;
    let archive = work.path().join("big.tar");
    common::synthetic::data_image_archive(
        &archive,
        "bench.podkeeper.test/big:v1",
        megabytes << 20,
        42,
    )?;
    let registry = TestRegistry::start()?;
    // Pushed gzip-compressed, as registries usually serve layers.
    registry.push_oci_archive_compressed(&archive, "big:v1")?;
    let reference = format!("{}/big:v1", registry.host());
    println!("image {reference}: one layer of {megabytes} MiB random data, gzip in the registry; {runs} runs each");

    let tokio = tokio::runtime::Runtime::new()?;
    let mut podkeeper_times = Vec::new();
    let mut ctr_times = Vec::new();
    for _ in 0..runs {
        let containerd = PrivateContainerd::start()?;
        let started = Instant::now();
        tokio.block_on(async {
            let runtime = Containerd::connect(containerd.socket(), "bench").await?;
            let images = ImageService::new(
                runtime.clone(),
                RegistryClient::new(Credentials::default(), vec![]),
            );
            images
                .pull(&reference)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            runtime.resolve_image(&reference).await?;
            anyhow::Ok(())
        })?;
        podkeeper_times.push(started.elapsed());
        drop(containerd);

        let containerd = PrivateContainerd::start()?;
        let started = Instant::now();
        containerd.ctr("bench", &["images", "pull", "--plain-http", &reference])?;
        ctr_times.push(started.elapsed());
        let snapshots = containerd.ctr("bench", &["snapshots", "ls"])?;
        anyhow::ensure!(
            snapshots.contains("Committed"),
            "ctr did not unpack: {snapshots}"
        );
    }
    let podkeeper = median(&mut podkeeper_times);
    let ctr = median(&mut ctr_times);
    println!(
        "{:<34} {:>10} {:>10} {:>10}",
        "pull + unpack", "median", "min", "max"
    );
    for (name, times) in [
        ("podkeeper (image service)", &podkeeper_times),
        ("ctr images pull --plain-http", &ctr_times),
    ] {
        println!(
            "{name:<34} {:>10.2?} {:>10.2?} {:>10.2?}",
            median(&mut times.clone()),
            times.iter().min().copied().unwrap_or_default(),
            times.iter().max().copied().unwrap_or_default()
        );
    }
    println!(
        "ratio podkeeper / ctr (median): {:.2}",
        podkeeper.as_secs_f64() / ctr.as_secs_f64()
    );
    Ok(())
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}
