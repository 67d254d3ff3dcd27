//! Real image archives for tests, made with the tools operators use: the
//! busybox OCI archive of `examples/build-busybox-image.sh`, skopeo's
//! `docker save`-format copy of it, and the gzip/zstd command-line compressors.
//! Hand-built archives would only test the reader against our own idea of the
//! formats; these catch what real writers actually do (links, ordering, names).

use anyhow::{bail, Context, Result};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What to install when a tool is missing. CI installs these, so a missing tool
/// fails the test instead of skipping it.
const INSTALL_HINT: &str = "apt-get install skopeo zstd";

/// OCI archive of busybox named `reference` (wraps examples/build-busybox-image.sh).
pub fn busybox_oci(dir: &Path, reference: &str) -> Result<PathBuf> {
    let out = dir.join(format!("busybox-{}.oci.tar", file_part(reference)));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/build-busybox-image.sh");
    run(Command::new("bash").arg(&script).arg(&out).arg(reference))?;
    Ok(out)
}

/// `docker save`-format archive of the same busybox image, tagged `reference`, made with
/// `skopeo copy oci-archive:… docker-archive:OUT:reference`.
pub fn busybox_docker(dir: &Path, reference: &str) -> Result<PathBuf> {
    require_tool("skopeo")?;
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
        std::fs::remove_file(&out).with_context(|| format!("removing {}", out.display()))?;
    }
    let mut source = OsString::from("oci-archive:");
    source.push(&oci);
    let mut dest = OsString::from("docker-archive:");
    dest.push(&out);
    dest.push(format!(":{reference}"));
    // No policy.json is installed with the apt package on every system; the
    // source is a local file we just built, so there is nothing to verify.
    run(Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--quiet"])
        .arg(source)
        .arg(dest))?;
    Ok(out)
}

/// Compresses a file with gzip (the CLI tool), returning the new path (`<path>.gz`).
pub fn gzip(path: &Path) -> Result<PathBuf> {
    require_tool("gzip")?;
    let out = with_suffix(path, ".gz");
    // -n: no name or time stamp in the header, so the output is reproducible.
    run(Command::new("gzip")
        .args(["--keep", "--force", "-n"])
        .arg(path))?;
    if !out.exists() {
        bail!("gzip did not write {}", out.display());
    }
    Ok(out)
}

/// Compresses a file with zstd (the CLI tool), returning the new path (`<path>.zst`).
pub fn zstd(path: &Path) -> Result<PathBuf> {
    require_tool("zstd")?;
    let out = with_suffix(path, ".zst");
    run(Command::new("zstd")
        .args(["--quiet", "--force"])
        .arg(path)
        .arg("-o")
        .arg(&out))?;
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

/// Fails with the install hint when `tool` is not on PATH.
fn require_tool(tool: &str) -> Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path).any(|dir| dir.join(tool).is_file());
    if !found {
        bail!("{tool} not found on PATH ({INSTALL_HINT})");
    }
    Ok(())
}

/// Runs a command to completion, failing with its output when it fails.
fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let output = cmd.output().with_context(|| format!("running {shown}"))?;
    if !output.status.success() {
        bail!(
            "{shown} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}
