//! A real OCI registry for tests: Debian's Distribution 2.8
//! (`/usr/bin/docker-registry`) on 127.0.0.1 with its storage, config, logs
//! and htpasswd file in a temp dir, plus skopeo to push OCI archives into it.
//!
//! Nothing here touches a system registry service: the registry listens on a
//! free port of its own and is killed when the [`TestRegistry`] is dropped.
//! skopeo runs with `--insecure-policy` (no dependence on
//! /etc/containers/policy.json) and its own `--tmpdir`; its blob-info cache in
//! /var/lib/containers/cache is shared with other skopeo runs, which is
//! harmless (it only holds hints that skopeo verifies).
//!
//! Request counting: Distribution writes one Apache combined-format access log
//! line per request to stdout (`127.0.0.1 - - [date] "GET /v2/REPO/blobs/sha256:… HTTP/1.1"
//! 200 …`), after the response was sent. stdout goes to `access.log` in the
//! temp dir and [`TestRegistry::pull_requests`] counts those lines. The
//! application log (stderr, `registry.log`) has a "response completed" line
//! per request too, but only at level info and with a different format for
//! errors, so it is not used for counting.

use super::process::{find_tool, kill_and_wait, run_checked};
use anyhow::{anyhow, bail, Context, Result};
use std::fs::{self, File};
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// What to install when a tool is missing; CI installs these.
const INSTALL_HINT: &str =
    "the registry tests need it: apt-get install docker-registry skopeo apache2-utils";
/// How long `start`/`restart` wait for `GET /v2/` to answer.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// Upper bound for one skopeo push (or htpasswd run).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// Ports tried when the one picked was taken by someone else meanwhile.
const PORT_ATTEMPTS: usize = 5;
/// `pull_requests` waits until the access log has not grown for this long:
/// the registry logs a request only after sending the response, so the
/// client can be a little ahead of the log.
const LOG_SETTLE: Duration = Duration::from_millis(150);
/// Upper bound for that wait.
const LOG_SETTLE_MAX: Duration = Duration::from_secs(3);

/// A private Distribution registry on 127.0.0.1:<free port>.
pub struct TestRegistry {
    dir: tempfile::TempDir,
    port: u16,
    binary: PathBuf,
    credentials: Option<(String, String)>,
    child: Option<Child>,
}

impl TestRegistry {
    /// An anonymous registry (anyone may pull and push).
    pub fn start() -> Result<TestRegistry> {
        Self::start_inner(None)
    }

    /// A registry requiring HTTP basic auth (htpasswd file made with `htpasswd -B`).
    pub fn start_with_htpasswd(user: &str, password: &str) -> Result<TestRegistry> {
        Self::start_inner(Some((user.to_string(), password.to_string())))
    }

    fn start_inner(credentials: Option<(String, String)>) -> Result<TestRegistry> {
        let binary = find_tool("docker-registry", "/usr/bin/docker-registry", INSTALL_HINT)?;
        let dir = tempfile::Builder::new()
            .prefix("pkreg.")
            .tempdir()
            .context("creating the registry temp dir")?;
        fs::create_dir_all(dir.path().join("data"))?;
        if let Some((user, password)) = &credentials {
            let htpasswd = find_tool("htpasswd", "/usr/bin/htpasswd", INSTALL_HINT)?;
            let out = run_checked(
                Command::new(htpasswd).args(["-B", "-b", "-n", user, password]),
                COMMAND_TIMEOUT,
            )?;
            fs::write(dir.path().join("htpasswd"), &out.stdout)?;
        }
        let mut registry = TestRegistry {
            dir,
            port: 0,
            binary,
            credentials,
            child: None,
        };
        let mut last_err = None;
        for _ in 0..PORT_ATTEMPTS {
            registry.port = free_port()?;
            // Fresh logs per attempt, so an earlier port clash is not read as this one's.
            for log in ["access.log", "registry.log"] {
                let _ = fs::remove_file(registry.dir.path().join(log));
            }
            match registry.spawn() {
                Ok(()) => return Ok(registry),
                Err(e) => {
                    let taken = registry.log_tail().contains("address already in use");
                    registry.stop();
                    if !taken {
                        return Err(e);
                    }
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("no free port found")))
    }

    /// "127.0.0.1:PORT", as in image references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The user and password of an htpasswd registry.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(user, password)| (user.as_str(), password.as_str()))
    }

    /// A Docker config.json granting this registry's credentials (empty `auths`
    /// for an anonymous registry).
    pub fn docker_config_json(&self) -> String {
        use base64::Engine as _;
        match self.credentials() {
            Some((user, password)) => {
                let auth =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, self.host())
            }
            None => r#"{"auths":{}}"#.to_string(),
        }
    }

    /// skopeo copy --all --preserve-digests --dest-tls-verify=false [--dest-creds]
    /// oci-archive:ARCHIVE docker://HOST/REPO:TAG; returns the manifest (or index) digest.
    ///
    /// `--all` pushes every platform of an index; `--preserve-digests` keeps the archive's
    /// uncompressed layers as they are, so the pushed digests are the archive's (without it
    /// skopeo gzips them for docker:// destinations, see [`Self::push_oci_archive_compressed`]).
    pub fn push_oci_archive(&self, archive: &Path, repo_and_tag: &str) -> Result<String> {
        self.push(archive, repo_and_tag, true)
    }

    /// Like [`Self::push_oci_archive`] but lets skopeo gzip uncompressed layers, as a plain
    /// `skopeo copy` does: the manifest then lists `application/vnd.oci.image.layer.v1.tar+gzip`
    /// layers and its digest differs from the archive's.
    pub fn push_oci_archive_compressed(
        &self,
        archive: &Path,
        repo_and_tag: &str,
    ) -> Result<String> {
        self.push(archive, repo_and_tag, false)
    }

    fn push(&self, archive: &Path, repo_and_tag: &str, preserve_digests: bool) -> Result<String> {
        let skopeo = find_tool("skopeo", "/usr/bin/skopeo", INSTALL_HINT)?;
        let tmp = self.dir.path().join("skopeo-tmp");
        fs::create_dir_all(&tmp)?;
        let digest_file = tempfile::NamedTempFile::new_in(self.dir.path())?;
        let mut cmd = Command::new(skopeo);
        cmd.arg("--insecure-policy")
            .arg("--tmpdir")
            .arg(&tmp)
            .args(["copy", "--all", "--dest-tls-verify=false"]);
        if preserve_digests {
            cmd.arg("--preserve-digests");
        }
        if let Some((user, password)) = self.credentials() {
            cmd.arg("--dest-creds").arg(format!("{user}:{password}"));
        }
        cmd.arg("--digestfile")
            .arg(digest_file.path())
            .arg(format!("oci-archive:{}", archive.display()))
            .arg(format!("docker://{}/{repo_and_tag}", self.host()));
        run_checked(&mut cmd, COMMAND_TIMEOUT)?;
        let digest = fs::read_to_string(digest_file.path())?.trim().to_string();
        if !digest.starts_with("sha256:") {
            bail!("skopeo wrote no digest for {repo_and_tag}: {digest:?}");
        }
        Ok(digest)
    }

    /// Number of GET requests for manifests+blobs of `repo` (e.g. "busybox", "team/app") seen
    /// in the registry's access log so far, whatever their status (HEAD requests, /v2/ pings
    /// and uploads are not counted). Waits until the log has been quiet for a moment, since the
    /// registry logs each request just after answering it.
    pub fn pull_requests(&self, repo: &str) -> usize {
        let manifests = format!("\"GET /v2/{repo}/manifests/");
        let blobs = format!("\"GET /v2/{repo}/blobs/");
        let count = || {
            fs::read_to_string(self.access_log())
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains(&manifests) || l.contains(&blobs))
                .count()
        };
        let deadline = Instant::now() + LOG_SETTLE_MAX;
        let mut seen = count();
        loop {
            thread::sleep(LOG_SETTLE);
            let now = count();
            if now == seen || Instant::now() >= deadline {
                return now;
            }
            seen = now;
        }
    }

    /// The registry's storage file holding blob (or manifest) `digest`, for tests that
    /// corrupt content behind the registry's back (it does not re-verify what it serves).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2.min(hex.len())])
            .join(hex)
            .join("data")
    }

    /// The temp dir holding config, storage and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last lines of the registry's access and application logs, for failure messages.
    pub fn log_tail(&self) -> String {
        let tail = |path: PathBuf| {
            let text = fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        };
        format!(
            "--- registry.log ---\n{}\n--- access.log ---\n{}",
            tail(self.dir.path().join("registry.log")),
            tail(self.access_log())
        )
    }

    /// Kills the registry (SIGKILL), for "registry down" tests. Storage and logs stay.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_wait(&mut child);
        }
    }

    /// Starts the registry again on the same port with the same storage. (Another process
    /// may have taken the port meanwhile; then this fails, with the registry's log.)
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn()
    }

    fn access_log(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }

    fn spawn(&mut self) -> Result<()> {
        let config = self.dir.path().join("config.yml");
        fs::write(&config, self.config_yaml())?;
        let open_log = |name: &str| {
            File::options()
                .create(true)
                .append(true)
                .open(self.dir.path().join(name))
                .with_context(|| format!("opening {name}"))
        };
        let mut cmd = Command::new(&self.binary);
        cmd.arg("serve")
            .arg(&config)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(open_log("access.log")?)
            .stderr(open_log("registry.log")?);
        // REGISTRY_* variables override the config file.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("REGISTRY_") {
                cmd.env_remove(name);
            }
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        self.child = Some(child);

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    bail!(
                        "docker-registry on {} exited at start ({status}):\n{}",
                        self.host(),
                        self.log_tail()
                    );
                }
            }
            match probe_v2(self.port) {
                Ok(200 | 401) => return Ok(()),
                Ok(_) | Err(_) if Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(20));
                }
                Ok(status) => bail!(
                    "docker-registry on {} answers GET /v2/ with {status}:\n{}",
                    self.host(),
                    self.log_tail()
                ),
                Err(e) => bail!(
                    "docker-registry on {} did not answer GET /v2/ within {START_TIMEOUT:?} \
                     ({e}):\n{}",
                    self.host(),
                    self.log_tail()
                ),
            }
        }
    }

    fn config_yaml(&self) -> String {
        let root = self.dir.path();
        let mut yaml = format!(
            "version: 0.1\n\
             log:\n\
             \x20 level: info\n\
             \x20 formatter: text\n\
             \x20 accesslog:\n\
             \x20   disabled: false\n\
             storage:\n\
             \x20 filesystem:\n\
             \x20   rootdirectory: {data}\n\
             \x20 delete:\n\
             \x20   enabled: true\n\
             \x20 maintenance:\n\
             \x20   uploadpurging:\n\
             \x20     enabled: false\n\
             http:\n\
             \x20 addr: 127.0.0.1:{port}\n\
             \x20 secret: podkeeper-test-registry\n",
            data = yaml_str(&root.join("data")),
            port = self.port,
        );
        if self.credentials.is_some() {
            yaml.push_str(&format!(
                "auth:\n\
                 \x20 htpasswd:\n\
                 \x20   realm: podkeeper-test\n\
                 \x20   path: {}\n",
                yaml_str(&root.join("htpasswd"))
            ));
        }
        yaml
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
        // The temp dir is removed when `dir` is dropped.
    }
}

/// The HTTP status of `GET /v2/` on 127.0.0.1:PORT.
fn probe_v2(port: u16) -> Result<u16> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    write!(
        stream,
        "GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = Vec::new();
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("not an HTTP answer: {line:?}"))
}

/// A port that was free a moment ago (the registry binds it right after).
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// A YAML double-quoted string for a path.
fn yaml_str(p: &Path) -> String {
    let s = p.to_string_lossy();
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}
