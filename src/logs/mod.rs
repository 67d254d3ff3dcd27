//! Container logs in the kubelet's CRI format, written by a logger process
//! that containerd's runc shim starts next to each container.
//!
//! Why a separate process: the shim hands the container's stdout and stderr
//! to a `binary://` logger (see [`logger_uri`]) that is the shim's child and
//! lives exactly as long as the container's IO. The agent can be stopped,
//! upgraded or crash while containers keep running: their output keeps
//! flowing into the log files, and a chatty container never blocks on a
//! reader that is not there (which is what happens with FIFOs).
//!
//! The files follow the kubelet's layout and format, so tools written for
//! `/var/log/pods` work unchanged:
//! `<pod-log-dir>/<ns>_<pod>_<uid>/<container>/<restartCount>.log`, one
//! record per line, `<RFC3339Nano UTC timestamp> <stdout|stderr> <P|F> <content>`
//! (see [`cri`] for the format, `file.rs` for rotation, `logger.rs` for the
//! process, [`read`] for printing them back).

use std::path::Path;

pub mod cri;
mod file;
mod logger;
pub mod read;
mod uri;

pub use cri::{parse_line, CriLine, MAX_LINE_SIZE};
pub use file::{create_log_dir, open_log_file, LOG_DIR_MODE, LOG_FILE_MODE};
pub use logger::run_logger;

/// The hidden subcommand the shim runs, which is also the one query key of
/// the logger URI: the shim turns the pair `key=value` into the two argv
/// words `key value`, so `podkeeper <LOGGER_COMMAND> <value>` is exactly
/// the command line it builds.
pub const LOGGER_COMMAND: &str = "cri-logger";

/// Size-based rotation of one container's log, with the kubelet's defaults
/// (`containerLogMaxSize` 10Mi, `containerLogMaxFiles` 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogSettings {
    /// Rotate before a write would take the current file past this many
    /// bytes. 0 disables rotation.
    pub max_size: u64,
    /// Files kept per container, the current one included (as the kubelet
    /// counts): at most `max_files - 1` rotated files survive. 0 counts as 1.
    pub max_files: u32,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            max_size: 10 * 1024 * 1024,
            max_files: 5,
        }
    }
}

/// The stdout/stderr value for containerd's `CreateTaskRequest` of a
/// container whose log file is `path`:
/// `binary://<executable>?cri-logger=<max_size>:<max_files>:<path>`, every
/// part percent-encoded so that Go's `url.Parse`/`Query` in the shim give
/// back the exact bytes (see `uri.rs` for the two layers).
///
/// Pass the same string as stdout and stderr: the 1.6 shim only parses the
/// stdout URI and gives the logger both streams.
pub fn logger_uri(executable: &Path, path: &Path, settings: &LogSettings) -> String {
    uri::logger_uri(executable, path, settings)
}
