//! The logger process: `podkeeper cri-logger <argument>`, started by the
//! runc shim for one container.
//!
//! The shim's contract (containerd 1.6 `pkg/process/io.go`,
//! `NewBinaryIO`): fd 3 is the read end of the container's stdout pipe,
//! fd 4 of its stderr pipe, fd 5 the write end of a pipe the shim blocks on
//! until we write a byte or close it. The shim closes its write ends of the
//! output pipes when the task is deleted, then sends SIGTERM and SIGKILLs
//! us 12 s later.
//!
//! The one rule: **never stop reading before both pipes reach EOF.** Once
//! the reader is gone the container's next write gets EPIPE or SIGPIPE,
//! and a full pipe blocks it. So SIGTERM is ignored (EOF comes right
//! after it anyway), a bad argument or an unwritable file still drains the
//! pipes (and drops the output), and nothing here can fail.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::cri::{format_timestamp, LineSplitter, Stream};
use super::file::RotatingFile;
use super::uri;

const STDOUT_FD: RawFd = 3;
const STDERR_FD: RawFd = 4;
const READY_FD: RawFd = 5;

/// Bytes read at once. Large enough to take a full enlarged pipe in one
/// read, so a burst costs few system calls.
const READ_SIZE: usize = 256 * 1024;

/// Pipe capacity asked for (the default is 64 KiB): room for bursts while
/// the logger is descheduled or rotating, so the container's writes rarely
/// wait. Pages are only used while data is actually queued.
const PIPE_SIZE: libc::c_int = 1024 * 1024;

/// Entry point of the hidden `cri-logger` subcommand: reads fds 3 and 4
/// until both close, writes CRI records to the file named in `argument`
/// (see [`super::logger_uri`]), rotating it; signals readiness on fd 5.
///
/// Must run before the process opens any file of its own, so fds 3–5 are
/// still the ones the shim passed (`main` calls it before setting up
/// tracing or the async runtime; the shim points the logger's stderr at
/// /dev/null anyway).
///
/// Returns an error only for an invalid argument, and only after the
/// pipes were drained.
pub fn run_logger(argument: &str) -> io::Result<()> {
    ignore_stop_signals();
    let inputs = [inherited(STDOUT_FD), inherited(STDERR_FD)];
    let ready = inherited(READY_FD);
    let target = uri::decode_argument(argument);
    let mut file = match &target {
        Ok((path, settings)) => Some(RotatingFile::open(path.clone(), *settings)),
        Err(e) => {
            // Stderr is /dev/null under the shim, but not when run by hand.
            let _ = io::Write::write_all(&mut io::stderr(), format!("podkeeper: {e}\n").as_bytes());
            None
        }
    };
    for input in inputs.iter().flatten() {
        enlarge_pipe(input);
    }
    // Ready: the file is open (or known not to be), the shim may start
    // the container.
    drop(ready);
    pump(inputs, |records| {
        if let Some(file) = file.as_mut() {
            file.write(records);
        }
    });
    target.map(drop)
}

/// Copies both inputs, as CRI records, to `write` until both reach EOF.
/// Records go out in the order their bytes were read; each read's records
/// are handed over at once, so a reader following the file sees a line as
/// soon as it is complete.
///
/// Across the two streams, "arrival order" is reading order: bytes already
/// waiting in both pipes when the logger wakes up are taken stdout first,
/// since nothing tells which of two pipes was written first (containerd's
/// CRI plugin, with a goroutine per stream, does no better).
pub(super) fn pump(inputs: [Option<OwnedFd>; 2], mut write: impl FnMut(&[u8])) {
    let mut inputs = inputs.map(|fd| fd.map(File::from));
    let mut splitters = [
        LineSplitter::new(Stream::Stdout),
        LineSplitter::new(Stream::Stderr),
    ];
    let mut buffer = vec![0; READ_SIZE];
    let mut records = Vec::with_capacity(READ_SIZE * 2);
    while inputs.iter().any(Option::is_some) {
        let mut polled = [0, 1].map(|i| libc::pollfd {
            fd: inputs[i].as_ref().map_or(-1, |f| f.as_raw_fd()),
            events: libc::POLLIN,
            revents: 0,
        });
        // SAFETY: `polled` is an array of two initialised pollfd structs
        // that lives across the call; poll ignores the negative fds.
        let ready = unsafe { libc::poll(polled.as_mut_ptr(), 2, -1) };
        if ready < 0 {
            if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                // ENOMEM and the like: back off rather than spin.
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            continue;
        }
        for (i, poll) in polled.iter().enumerate() {
            if poll.revents == 0 {
                continue;
            }
            let Some(input) = inputs[i].as_mut() else {
                continue;
            };
            match input.read(&mut buffer) {
                Ok(0) => {
                    let now = format_timestamp(jiff::Timestamp::now());
                    splitters[i].finish(&now, &mut records);
                    inputs[i] = None;
                }
                Ok(n) => {
                    let now = format_timestamp(jiff::Timestamp::now());
                    splitters[i].push(&buffer[..n], &now, &mut records);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                    ) => {}
                // A pipe that cannot be read is as good as closed.
                Err(_) => {
                    let now = format_timestamp(jiff::Timestamp::now());
                    splitters[i].finish(&now, &mut records);
                    inputs[i] = None;
                }
            }
        }
        if !records.is_empty() {
            write(&records);
            records.clear();
        }
    }
}

/// Takes ownership of an fd the shim passed, if it is open.
fn inherited(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: F_GETFD only reads the descriptor's flags.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: the fd is open, and it was inherited: run_logger runs before
    // this process opens anything, so nothing else in it owns the fd.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Best effort: a smaller pipe only means the container waits sooner.
fn enlarge_pipe(input: &OwnedFd) {
    // SAFETY: F_SETPIPE_SZ on an fd we own; it fails harmlessly on
    // anything that is not a pipe.
    unsafe {
        libc::fcntl(input.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE);
    }
}

/// SIGTERM (the shim, on task delete) and SIGHUP must not cut the drain
/// short; EOF ends the process. SIGINT is left alone for a person running
/// the logger by hand.
fn ignore_stop_signals() {
    for signal in [libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: SIG_IGN installs no handler code; it only changes the
        // disposition of the signal.
        unsafe {
            libc::signal(signal, libc::SIG_IGN);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::thread;
    use std::time::Duration;

    use super::super::cri::parse_line;
    use super::*;

    /// Runs `pump` on two fresh pipes, with `feed` writing to them.
    fn pumped(feed: impl FnOnce(io::PipeWriter, io::PipeWriter) + Send + 'static) -> Vec<u8> {
        let (out_r, out_w) = io::pipe().expect("pipe");
        let (err_r, err_w) = io::pipe().expect("pipe");
        let writer = thread::spawn(move || feed(out_w, err_w));
        let mut file = Vec::new();
        pump([Some(out_r.into()), Some(err_r.into())], |records| {
            file.extend_from_slice(records)
        });
        writer.join().expect("feeder");
        file
    }

    fn records(file: &[u8]) -> Vec<(String, bool, String)> {
        file.split_inclusive(|&b| b == b'\n')
            .map(|line| {
                let r = parse_line(line).expect("CRI record");
                (
                    r.stream.to_string(),
                    r.partial,
                    String::from_utf8_lossy(r.content).into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn both_streams_interleave_in_arrival_order() {
        let file = pumped(|mut out, mut err| {
            out.write_all(b"one\ntw").expect("write");
            thread::sleep(Duration::from_millis(50));
            err.write_all(b"oops\n").expect("write");
            thread::sleep(Duration::from_millis(50));
            out.write_all(b"o\n").expect("write");
            thread::sleep(Duration::from_millis(50));
            err.write_all(b"no newline").expect("write");
        });
        let r = |s: &str, c: &str| (s.to_string(), false, c.to_string());
        assert_eq!(
            records(&file),
            [
                r("stdout", "one"),
                r("stderr", "oops"),
                r("stdout", "two"),
                r("stderr", "no newline"),
            ]
        );
    }

    #[test]
    fn keeps_reading_until_both_streams_close() {
        let file = pumped(|mut out, mut err| {
            out.write_all(b"early\n").expect("write");
            drop(out);
            thread::sleep(Duration::from_millis(100));
            err.write_all(b"late\n").expect("write");
        });
        assert_eq!(records(&file).len(), 2);
    }

    #[test]
    fn a_burst_larger_than_the_pipe_arrives_whole() {
        let line = "x".repeat(99) + "\n";
        let file = pumped(move |mut out, _err| {
            for _ in 0..20_000 {
                out.write_all(line.as_bytes()).expect("write");
            }
        });
        let got = records(&file);
        assert_eq!(got.len(), 20_000);
        assert!(got
            .iter()
            .all(|(s, p, c)| s == "stdout" && !p && c.len() == 99));
    }
}
