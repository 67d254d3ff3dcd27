//! The CRI logger process (`podkeeper cri-logger`), on its own and as
//! containerd's runc shim runs it.
//!
//! The first tests need nothing: they start the binary with the fds the
//! shim would pass. The end-to-end tests need root: a private containerd
//! runs busybox with `ctr run --log-uri <logger_uri(..)>`. No podkeeper
//! agent runs anywhere in this file, so every record in those files was
//! written by a logger that the shim started and that needs no agent.

mod common;

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::agent::{Agent, BUSYBOX, NODE};
use common::containerd::{e2e_enabled, PrivateContainerd};
use podkeeper::logs::{logger_uri, parse_line, LogSettings, LOGGER_COMMAND};

const PODKEEPER: &str = env!("CARGO_BIN_EXE_podkeeper");

/// The argument the shim would pass: the value of the URI's one query pair.
fn logger_argument(path: &Path, settings: &LogSettings) -> String {
    let uri = logger_uri(Path::new(PODKEEPER), path, settings);
    let value = uri
        .split_once(&format!("?{LOGGER_COMMAND}="))
        .expect("one query pair")
        .1;
    // Undo the URI's encoding layer, as Go's url.Values would.
    let mut bytes = Vec::new();
    let mut rest = value.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            let hex = std::str::from_utf8(&tail[..2]).expect("ascii");
            bytes.push(u8::from_str_radix(hex, 16).expect("hex"));
            rest = &tail[2..];
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    String::from_utf8(bytes).expect("ascii argument")
}

/// A logger started the way the shim starts it: fd 3 and 4 the read ends
/// of the output pipes, fd 5 the write end of the ready pipe, and only
/// CONTAINER_ID and CONTAINER_NAMESPACE in the environment.
struct Logger {
    child: Child,
    stdout: Option<io::PipeWriter>,
    stderr: Option<io::PipeWriter>,
    ready: io::PipeReader,
}

impl Logger {
    fn start(argument: &str) -> Logger {
        let (out_r, out_w) = io::pipe().expect("pipe");
        let (err_r, err_w) = io::pipe().expect("pipe");
        let (ready_r, ready_w) = io::pipe().expect("pipe");
        let passed: [RawFd; 3] = [out_r.as_raw_fd(), err_r.as_raw_fd(), ready_w.as_raw_fd()];
        let mut command = Command::new(PODKEEPER);
        command
            .arg(LOGGER_COMMAND)
            .arg(argument)
            .env_clear()
            .env("CONTAINER_ID", "test")
            .env("CONTAINER_NAMESPACE", "test")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork
        // and exec. The fds are first moved out of the way (the originals
        // may well be 3, 4 or 5 themselves), close-on-exec, then dup2'd to
        // their places, which clears close-on-exec there.
        unsafe {
            command.pre_exec(move || {
                let mut high = [0; 3];
                for (i, fd) in passed.iter().enumerate() {
                    high[i] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 100);
                    if high[i] < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                for (i, fd) in high.iter().enumerate() {
                    if libc::dup2(*fd, 3 + i as RawFd) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("spawning the logger");
        // Only the logger may hold these now: its EOF depends on it.
        drop((out_r, err_r, ready_w));
        Logger {
            child,
            stdout: Some(out_w),
            stderr: Some(err_w),
            ready: ready_r,
        }
    }

    /// Blocks until the logger closed (or wrote to) its ready fd.
    fn wait_ready(&mut self) {
        let mut byte = [0; 1];
        let _ = self.ready.read(&mut byte).expect("reading the ready pipe");
    }

    /// Closes both outputs (the container is gone), waits for the exit.
    fn finish(mut self, timeout: Duration) -> ExitStatus {
        drop((self.stdout.take(), self.stderr.take()));
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("the logger did not exit within {timeout:?} of EOF");
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) on our own unreaped child.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

impl Drop for Logger {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// (stream, partial, content) of every record of `file`, checking each
/// line is a record.
fn records(file: &[u8]) -> Vec<(String, bool, String)> {
    file.split_inclusive(|&b| b == b'\n')
        .map(|line| {
            let r = parse_line(line)
                .unwrap_or_else(|| panic!("not a CRI record: {:?}", String::from_utf8_lossy(line)));
            assert!(line.ends_with(b"\n"), "unterminated record");
            (
                r.stream.to_string(),
                r.partial,
                String::from_utf8_lossy(r.content).into_owned(),
            )
        })
        .collect()
}

fn full(stream: &str, content: &str) -> (String, bool, String) {
    (stream.to_string(), false, content.to_string())
}

/// The rotated files of `path` (oldest first), then `path`.
fn log_files(path: &Path) -> Vec<PathBuf> {
    let dir = path.parent().expect("dir");
    let prefix = format!("{}.", path.file_name().expect("name").to_string_lossy());
    let mut rotated: Vec<PathBuf> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .collect();
    rotated.sort();
    rotated.push(path.to_path_buf());
    rotated
}

#[test]
fn the_logger_keeps_the_shim_contract() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // The logger creates missing directories itself.
    let path = tmp.path().join("ns_pod_uid/c/0.log");
    let mut logger = Logger::start(&logger_argument(&path, &LogSettings::default()));
    logger.wait_ready();
    assert!(path.is_file(), "the file exists once the logger is ready");

    let (mut out, mut err) = (
        logger.stdout.take().expect("stdout"),
        logger.stderr.take().expect("stderr"),
    );
    out.write_all(b"before\n").expect("write");
    // The shim sends SIGTERM on task delete; the logger must keep
    // draining: a container write must never hit a closed pipe.
    logger.signal(libc::SIGTERM);
    logger.signal(libc::SIGHUP);
    thread::sleep(Duration::from_millis(200));
    assert!(
        logger.child.try_wait().expect("try_wait").is_none(),
        "the logger exited on a signal, before EOF"
    );
    err.write_all(b"after the signal\n").expect("write");
    drop(out);
    thread::sleep(Duration::from_millis(100));
    assert!(
        logger.child.try_wait().expect("try_wait").is_none(),
        "the logger exited with stderr still open"
    );
    err.write_all(b"tail without newline").expect("write");
    drop(err);
    let status = logger.finish(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    assert_eq!(
        records(&fs::read(&path).expect("log")),
        [
            full("stdout", "before"),
            full("stderr", "after the signal"),
            full("stderr", "tail without newline"),
        ]
    );
}

#[test]
fn a_bad_argument_still_drains_the_pipes() {
    let mut logger = Logger::start("not-an-argument");
    logger.wait_ready();
    let mut out = logger.stdout.take().expect("stdout");
    // Far more than a pipe holds: this would block if nobody read.
    for _ in 0..1000 {
        out.write_all(&[b'x'; 1024]).expect("write");
    }
    drop(out);
    let status = logger.finish(Duration::from_secs(10));
    assert!(
        !status.success(),
        "a bad argument is reported in the status"
    );
}

/// Throughput of the logger binary as built for the tests (a debug build
/// unless tests run with --release): 100-byte lines into 10 MiB files.
#[test]
fn logger_throughput() {
    const LINE: usize = 100;
    const LINES: usize = 640 * 1024; // 64 MiB
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("0.log");
    let mut logger = Logger::start(&logger_argument(&path, &LogSettings::default()));
    logger.wait_ready();
    let mut out = logger.stdout.take().expect("stdout");
    let started = Instant::now();
    let writer = thread::spawn(move || {
        let mut batch = Vec::with_capacity(LINE * 1024);
        for n in 0..LINES {
            batch.extend_from_slice(format!("{n:>width$}\n", width = LINE - 1).as_bytes());
            if batch.len() >= LINE * 1024 {
                out.write_all(&batch).expect("write");
                batch.clear();
            }
        }
        out.write_all(&batch).expect("write");
    });
    writer.join().expect("writer");
    let status = logger.finish(Duration::from_secs(120));
    let elapsed = started.elapsed();
    assert!(status.success(), "{status}");
    let mb_per_s = (LINE * LINES) as f64 / 1e6 / elapsed.as_secs_f64();
    let _ = writeln!(
        io::stderr(),
        "logger throughput: {} MB in {elapsed:?} = {mb_per_s:.0} MB/s (debug build: {})",
        LINE * LINES / 1_000_000,
        cfg!(debug_assertions)
    );
    // 5 files of 10 MiB, the newest ending with the last line.
    let files = log_files(&path);
    assert_eq!(files.len(), 5, "{files:?}");
    let current = fs::read(&path).expect("log");
    let last = records(&current).pop().expect("a record");
    assert_eq!(last.2.trim(), (LINES - 1).to_string());
}

/// Runs `script` in busybox with its output going to a logger for `path`,
/// and waits for it (`ctr run --rm` also deletes the task, which ends the
/// logger: the shim waits for it to exit before `ctr` returns).
fn ctr_run(
    containerd: &PrivateContainerd,
    namespace: &str,
    id: &str,
    path: &Path,
    settings: &LogSettings,
    script: &str,
) -> Duration {
    let uri = logger_uri(Path::new(PODKEEPER), path, settings);
    let started = Instant::now();
    containerd
        .ctr(
            namespace,
            &[
                "run",
                "--rm",
                "--log-uri",
                &uri,
                BUSYBOX,
                id,
                "sh",
                "-c",
                script,
            ],
        )
        .unwrap_or_else(|e| panic!("ctr run {id}: {e:#}"));
    started.elapsed()
}

fn setup(namespace: &str) -> PrivateContainerd {
    let containerd = PrivateContainerd::start().expect("starting containerd");
    containerd
        .import_busybox(namespace, BUSYBOX)
        .expect("importing busybox");
    containerd
}

#[test]
fn the_shim_runs_the_logger_and_it_writes_cri_records() {
    if !e2e_enabled("the_shim_runs_the_logger_and_it_writes_cri_records") {
        return;
    }
    let containerd = setup("logs-basic");
    // Spaces and a `+` on the way: the URI goes through Go's url parsing.
    let path = containerd
        .dir()
        .join("logs/default_web pod+x_1234/main 1/0.log");
    ctr_run(
        &containerd,
        "logs-basic",
        "basic",
        &path,
        &LogSettings::default(),
        "echo out; echo err >&2; printf partial",
    );
    let text = fs::read(&path).expect("the logger wrote the file");
    let all = records(&text);
    assert_eq!(all.len(), 3, "{}", String::from_utf8_lossy(&text));
    // Each stream in order. Across streams the order is the logger's
    // reading order: output queued in both pipes by the time it wakes up
    // comes stdout first, so it is not asserted here.
    let of = |stream: &str| -> Vec<_> { all.iter().filter(|r| r.0 == stream).cloned().collect() };
    assert_eq!(
        of("stdout"),
        [full("stdout", "out"), full("stdout", "partial")]
    );
    assert_eq!(of("stderr"), [full("stderr", "err")]);
    // Kubelet-style timestamps: UTC, nine fractional digits, recent.
    for line in text.split_inclusive(|&b| b == b'\n') {
        let ts = parse_line(line).expect("record").timestamp;
        assert_eq!(ts.len(), "2016-10-06T00:17:09.669794202Z".len(), "{ts}");
        let at: jiff::Timestamp = ts.parse().expect("RFC 3339");
        let age = jiff::Timestamp::now().duration_since(at);
        assert!(
            age < jiff::SignedDuration::from_secs(60) && !age.is_negative(),
            "{ts}"
        );
    }
}

#[test]
fn a_flood_finishes_in_bounded_time_and_the_files_keep_its_tail() {
    if !e2e_enabled("a_flood_finishes_in_bounded_time_and_the_files_keep_its_tail") {
        return;
    }
    const LINES: usize = 100_000;
    let containerd = setup("logs-flood");
    let path = containerd.dir().join("logs/flood/0.log");
    let settings = LogSettings {
        max_size: 1024 * 1024,
        max_files: 3,
    };
    // 100 000 numbered lines of 100 bytes: 10 MB as fast as busybox can.
    let script =
        format!("awk 'BEGIN {{ for (i = 0; i < {LINES}; i++) printf \"%08d %091d\\n\", i, 0 }}'");
    let took = ctr_run(
        &containerd,
        "logs-flood",
        "flood",
        &path,
        &settings,
        &script,
    );
    let _ = writeln!(
        io::stderr(),
        "10 MB through ctr run + logger: {took:?} ({:.0} MB/s including container start and stop)",
        10.0 / took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(60), "took {took:?}");

    let files = log_files(&path);
    assert_eq!(files.len(), 3, "rotated and capped: {files:?}");
    let mut numbers = Vec::new();
    for file in &files {
        let text = fs::read(file).expect("read");
        assert!(
            text.len() as u64 <= settings.max_size,
            "{} holds {} bytes",
            file.display(),
            text.len()
        );
        for (stream, partial, content) in records(&text) {
            assert_eq!((stream.as_str(), partial), ("stdout", false));
            assert_eq!(content.len(), 100, "{content:?}");
            let (n, zeros) = content.split_once(' ').expect("numbered line");
            assert!(zeros.bytes().all(|b| b == b'0'));
            numbers.push(n.parse::<usize>().expect("number"));
        }
    }
    // The tail, whole: consecutive numbers up to the last one.
    assert_eq!(numbers.last(), Some(&(LINES - 1)));
    let first = numbers[0];
    assert_eq!(numbers, (first..LINES).collect::<Vec<_>>());
    // Three files of (almost) 1 MiB of ~145-byte records.
    assert!(numbers.len() > 2 * (1024 * 1024 / 150), "{}", numbers.len());
}

/// The logger's process: a child of the shim, not of `ctr` or anything
/// of podkeeper; it outlives the client that created the task and ends
/// when the task is deleted.
#[test]
fn the_logger_belongs_to_the_shim_and_ends_with_the_task() {
    if !e2e_enabled("the_logger_belongs_to_the_shim_and_ends_with_the_task") {
        return;
    }
    let namespace = "logs-life";
    let containerd = setup(namespace);
    let path = containerd.dir().join("logs/life/0.log");
    let uri = logger_uri(Path::new(PODKEEPER), &path, &LogSettings::default());
    containerd
        .ctr(
            namespace,
            &[
                "run",
                "-d",
                "--log-uri",
                &uri,
                BUSYBOX,
                "ticker",
                "sh",
                "-c",
                "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.05; done",
            ],
        )
        .expect("ctr run -d");
    // `ctr run -d` has exited; the records keep coming.
    let count = || {
        fs::read(&path)
            .map(|t| records(&t).len())
            .unwrap_or_default()
    };
    thread::sleep(Duration::from_millis(300));
    let before = count();
    thread::sleep(Duration::from_millis(500));
    let after = count();
    assert!(after > before, "{before} → {after} records");

    let needle = path.to_string_lossy().into_owned();
    let logger = pids_whose_cmdline(|argv| {
        argv.get(1).is_some_and(|a| a == LOGGER_COMMAND) && argv.iter().any(|a| a.contains(&needle))
    });
    assert_eq!(logger.len(), 1, "exactly one logger process: {logger:?}");
    let logger = logger[0];
    let parent = parent_of(logger).expect("parent");
    let parent_argv = cmdline(parent);
    assert!(
        parent_argv
            .first()
            .is_some_and(|a| a.contains("containerd-shim-runc-v2")),
        "the logger's parent is {parent_argv:?}"
    );
    let _ = writeln!(
        io::stderr(),
        "logger {logger}: parent {parent_argv:?}, stderr → {:?}",
        fs::read_link(format!("/proc/{logger}/fd/2"))
    );

    containerd
        .ctr(namespace, &["tasks", "kill", "-s", "SIGKILL", "ticker"])
        .expect("kill");
    // Deleting the task closes the pipes: the logger writes what is left
    // and exits (the shim waits for it).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match containerd.ctr(namespace, &["tasks", "delete", "ticker"]) {
            Ok(_) => break,
            Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(100)),
            Err(e) => panic!("ctr tasks delete: {e:#}"),
        }
    }
    assert!(
        !Path::new(&format!("/proc/{logger}")).exists() || parent_of(logger) != Some(parent),
        "the logger outlived its task"
    );
    let final_count = count();
    thread::sleep(Duration::from_millis(200));
    assert_eq!(count(), final_count, "nothing written after the task ended");
}

fn cmdline(pid: u32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the parenthesised command name: state, then ppid.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(1)?.parse().ok()
}

fn pids_whose_cmdline(matches: impl Fn(&[String]) -> bool) -> Vec<u32> {
    fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| matches(&cmdline(*pid)))
        .collect()
}

const TALKER: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: talker
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: podkeeper.local/busybox:latest
    command: [sh, -c, 'echo one; sleep 0.3; echo two >&2; sleep 0.3; printf "%020000d\n" 0; sleep 1; for i in 1 2 3 4 5; do echo tick $i; sleep 0.3; done; echo last']
"#;

/// `podkeeper logs` through a real agent: the content without the CRI
/// prefixes, a 20 000-byte line joined from its P records, `--tail`, and
/// `-f` ending by itself once the container has exited.
///
/// The sleeps make the order across stdout and stderr certain. The last
/// line ends with a newline: an unterminated one is only written at EOF,
/// which the logger sees when the task is deleted, not when it exits.
#[test]
fn podkeeper_logs_prints_what_the_container_wrote() {
    if !e2e_enabled("podkeeper_logs_prints_what_the_container_wrote") {
        return;
    }
    let namespace = "logs-cli";
    let containerd = setup(namespace);
    let agent = Agent::start(&containerd, namespace).expect("starting the agent");
    agent.write_manifest("talker.yaml", TALKER);
    let pod = format!("talker-{NODE}");
    let state = |pod: &serde_json::Value| {
        pod["status"]["containerStatuses"][0]["state"]
            .as_object()
            .and_then(|s| s.keys().next().cloned())
    };
    agent.wait_until("the container running", Duration::from_secs(30), || {
        agent
            .pod(&pod)
            .is_some_and(|p| state(&p).as_deref() == Some("running"))
    });

    // Following from the start: ends on its own after the container did.
    let started = Instant::now();
    let followed = agent.cli(&["logs", "-f", &pod]);
    let took = started.elapsed();
    assert!(
        followed.status.success(),
        "{}",
        String::from_utf8_lossy(&followed.stderr)
    );
    let expected = format!(
        "one\ntwo\n{}\ntick 1\ntick 2\ntick 3\ntick 4\ntick 5\nlast\n",
        "0".repeat(20_000)
    );
    assert_eq!(String::from_utf8_lossy(&followed.stdout), expected);
    assert!(took < Duration::from_secs(15), "logs -f took {took:?}");

    agent.wait_until("the container terminated", Duration::from_secs(30), || {
        agent
            .pod(&pod)
            .is_some_and(|p| state(&p).as_deref() == Some("terminated"))
    });
    let all = agent.cli(&["logs", &pod]);
    assert!(
        all.status.success(),
        "{}",
        String::from_utf8_lossy(&all.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&all.stdout), expected);
    let tail = agent.cli(&["logs", "--tail", "2", &pod]);
    assert_eq!(String::from_utf8_lossy(&tail.stdout), "tick 5\nlast\n");

    // The file itself: CRI records, the long line in two P and one F.
    let log = std::fs::read_dir(&agent.logs)
        .expect("pod log dir")
        .flatten()
        .map(|d| d.path().join("main/0.log"))
        .find(|p| p.is_file())
        .expect("main/0.log");
    let text = fs::read(&log).expect("log");
    let long: Vec<(bool, usize)> = records(&text)
        .into_iter()
        .filter(|(_, _, c)| c.starts_with('0'))
        .map(|(_, partial, c)| (partial, c.len()))
        .collect();
    assert_eq!(long, [(true, 16 * 1024), (false, 20_000 - 16 * 1024)]);
}
