//! Real image archives for tests, made with the tools operators use: the
//! busybox OCI archive of `examples/build-busybox-image.sh` (and the
//! multi-platform one of `tests/fixtures/multiarch-image.sh` built on it),
//! skopeo's `docker save`-format copy of it, and the gzip/zstd command-line
//! compressors.
//! Hand-built archives would only test the reader against our own idea of the
//! formats; these catch what real writers actually do (links, ordering, names).

use super::process::{find_tool, run_checked};
use anyhow::{bail, Context, Result};
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

/// What to install when a tool is missing. CI installs these, so a missing tool
/// fails the test instead of skipping it.
const INSTALL_HINT: &str = "apt-get install skopeo zstd busybox-static";
/// Upper bound for one fixture build, conversion or compression.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// OCI archive of busybox named `reference` (wraps examples/build-busybox-image.sh),
/// written to DIR.
pub fn busybox_oci(dir: &Path, reference: &str) -> Result<PathBuf> {
    BUSYBOX.build(dir, reference)
}

/// OCI archive named `reference` whose target is an image index: linux/<host arch> busybox
/// plus a one-file image for another platform (wraps tests/fixtures/multiarch-image.sh),
/// written to DIR.
pub fn multiarch_oci(dir: &Path, reference: &str) -> Result<PathBuf> {
    MULTIARCH.build(dir, reference)
}

/// [`busybox_oci`] built once per test process and shared by its tests, which must not
/// change it.
pub fn shared_busybox_oci(reference: &str) -> Result<PathBuf> {
    BUSYBOX.shared(reference)
}

/// [`multiarch_oci`] built once per test process and shared by its tests, which must not
/// change it.
pub fn shared_multiarch_oci(reference: &str) -> Result<PathBuf> {
    MULTIARCH.shared(reference)
}

/// A fixture made by a script of this repository: `bash SCRIPT OUT REFERENCE`.
struct Fixture {
    /// Relative to the crate root.
    script: &'static str,
    /// Start of the archive's file name.
    stem: &'static str,
}

const BUSYBOX: Fixture = Fixture {
    script: "examples/build-busybox-image.sh",
    stem: "busybox",
};
const MULTIARCH: Fixture = Fixture {
    script: "tests/fixtures/multiarch-image.sh",
    stem: "multiarch",
};

/// Shared fixtures live in `<tmp>/<prefix><pid>`.
const SHARED_DIR_PREFIX: &str = "podkeeper-fixtures-";

/// Serializes shared builds, so concurrent tests wait for one build instead of racing.
static SHARED: Mutex<()> = Mutex::new(());

impl Fixture {
    fn path(&self, dir: &Path, reference: &str) -> PathBuf {
        dir.join(format!("{}-{}.oci.tar", self.stem, file_part(reference)))
    }

    fn build(&self, dir: &Path, reference: &str) -> Result<PathBuf> {
        let out = self.path(dir, reference);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(self.script);
        run_checked(
            Command::new("bash").arg(&script).arg(&out).arg(reference),
            COMMAND_TIMEOUT,
        )?;
        if !out.is_file() {
            bail!("{} did not write {}", script.display(), out.display());
        }
        Ok(out)
    }

    fn shared(&self, reference: &str) -> Result<PathBuf> {
        let _guard = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        let dir = std::env::temp_dir().join(format!("{SHARED_DIR_PREFIX}{}", std::process::id()));
        let out = self.path(&dir, reference);
        if out.is_file() {
            return Ok(out);
        }
        if !dir.exists() {
            sweep_stale_shared_dirs();
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        self.build(&dir, reference)
    }
}

/// Removes shared fixture dirs left by test processes that no longer exist
/// (nothing runs at process exit to delete them).
fn sweep_stale_shared_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(SHARED_DIR_PREFIX))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// `docker save`-format archive of the same busybox image, tagged `reference`, made with
/// `skopeo copy oci-archive:… docker-archive:OUT:reference`.
pub fn busybox_docker(dir: &Path, reference: &str) -> Result<PathBuf> {
    let skopeo = tool("skopeo")?;
    let oci = busybox_oci(dir, reference)?;
    let out = dir.join(format!("busybox-{}.docker.tar", file_part(reference)));
    for path in [&oci, &out] {
        // skopeo splits transport arguments at ':' (path:reference).
        if path.to_string_lossy().contains(':') {
            bail!(
                "{} contains ':', which skopeo cannot take in a path",
                path.display()
            );
        }
    }
    // skopeo refuses to add to an existing docker-archive.
    if out.exists() {
        fs::remove_file(&out).with_context(|| format!("removing {}", out.display()))?;
    }
    let mut source = OsString::from("oci-archive:");
    source.push(&oci);
    let mut dest = OsString::from("docker-archive:");
    dest.push(&out);
    dest.push(format!(":{reference}"));
    // No policy.json is installed with the apt package on every system; the
    // source is a local file we just built, so there is nothing to verify.
    run_checked(
        Command::new(skopeo)
            .args(["--insecure-policy", "copy", "--quiet"])
            .arg(source)
            .arg(dest),
        COMMAND_TIMEOUT,
    )?;
    Ok(out)
}

/// Compresses a file with gzip (the CLI tool), returning the new path (`<path>.gz`).
pub fn gzip(path: &Path) -> Result<PathBuf> {
    // -n: no name or time stamp in the header, so the output is reproducible.
    compress(path, "gzip", ".gz", &["--keep", "--force", "-n"])
}

/// Compresses a file with zstd (the CLI tool), returning the new path (`<path>.zst`).
pub fn zstd(path: &Path) -> Result<PathBuf> {
    compress(path, "zstd", ".zst", &["--quiet", "--force"])
}

/// Runs `TOOL ARGS PATH`, which must write `<path><suffix>` and keep PATH.
fn compress(path: &Path, name: &str, suffix: &str, args: &[&str]) -> Result<PathBuf> {
    let out = with_suffix(path, suffix);
    run_checked(
        Command::new(tool(name)?).args(args).arg(path),
        COMMAND_TIMEOUT,
    )?;
    if !out.is_file() {
        bail!("{name} did not write {}", out.display());
    }
    Ok(out)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// A file-name-safe rendering of an image reference.
fn file_part(reference: &str) -> String {
    reference
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `/usr/bin/NAME`, else NAME on PATH; fails with the install hint.
fn tool(name: &str) -> Result<PathBuf> {
    find_tool(name, &format!("/usr/bin/{name}"), INSTALL_HINT)
}
