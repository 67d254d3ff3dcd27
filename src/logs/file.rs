//! The log file, rotated by size.
//!
//! **Naming.** On rotation `N.log` is renamed to
//! `N.log.<UTC YYYYMMDD-HHMMSS>.<nanoseconds>` (e.g.
//! `0.log.20240105-134501.123456789`) and a new `N.log` is started; the
//! oldest rotated files beyond `max_files - 1` are deleted. Why timestamps
//! and not `N.log.1, .2, …`:
//! - it is the kubelet's scheme (`N.log.<YYYYMMDD-hhmmss>`), so log shippers
//!   and scripts written for `/var/log/pods` recognise the files;
//! - one rename per rotation, and a rotated file keeps its name for life:
//!   a reader or shipper holding a name never sees it change meaning, which
//!   shifting `.1 → .2 → …` would do on every rotation;
//! - the names sort lexicographically in age order, so pruning needs no
//!   stat calls.
//!
//! Differences from the kubelet, both because the logger rotates within
//! milliseconds under load where the kubelet checks every 10 s: the
//! nanosecond part keeps names unique, and UTC (not local time) keeps the
//! order across DST changes. Rotated files are not compressed.
//!
//! **Failures.** Nothing here returns an error: the logger must keep
//! draining the container's output whatever the disk does. When a write
//! fails (disk full, file system read-only, directory gone), the data is
//! dropped, the problem is reported once on stderr, and writing resumes
//! when it works again. A write cut short mid-record is followed by a
//! newline, so the torn record does not swallow the next one.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::LogSettings;

/// Permissions of log files, as containerd creates them: logs can hold
/// secrets, so not world-readable; group-readable for a log shipper's group.
pub const LOG_FILE_MODE: u32 = 0o640;
/// Permissions of the pod and container log directories: root's, entered
/// by the group, closed to others.
pub const LOG_DIR_MODE: u32 = 0o750;

/// Creates a log directory (and missing parents) 0750, tightening it if an
/// older version left it looser. The one way log directories are made.
pub fn create_log_dir(dir: &Path) -> io::Result<()> {
    crate::host::private_files::create_dir(dir, LOG_DIR_MODE)
}

/// Opens a log file for appending, created 0640 (or tightened to it), never
/// through a symlink. The one way log files are made.
pub fn open_log_file(path: &Path) -> io::Result<File> {
    crate::host::private_files::open_append(path, LOG_FILE_MODE)
}

/// How long to wait before trying again to open a file that could not be
/// opened: often enough to resume promptly, rarely enough not to spin.
const REOPEN_INTERVAL: Duration = Duration::from_secs(1);

/// Length of the rotation suffix `YYYYMMDD-HHMMSS.nnnnnnnnn`.
const SUFFIX_LEN: usize = 25;

/// The container's log file: appends whole records, rotates by size.
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    settings: LogSettings,
    file: Option<File>,
    /// Bytes in the current file.
    size: u64,
    /// Rotate before the file would grow past this. `max_size` normally;
    /// after a failed rotation, another `max_size` further on, so a rename
    /// that keeps failing is not retried on every write.
    rotate_at: u64,
    /// The last write stopped inside a record.
    torn: bool,
    /// When the file is not open: not before this instant.
    reopen_at: Option<Instant>,
    /// Bytes dropped since writing last worked; `Some` while failing.
    dropped: Option<u64>,
}

impl RotatingFile {
    /// Opens `path` for appending, creating its directory and the file. If
    /// that fails, the error is reported and the file is opened again later
    /// (then without creating directories: a directory removed since is a
    /// pod being deleted, and must not come back).
    pub fn open(path: PathBuf, settings: LogSettings) -> Self {
        let mut me = RotatingFile {
            path,
            settings,
            file: None,
            size: 0,
            rotate_at: settings.max_size,
            torn: false,
            reopen_at: None,
            dropped: None,
        };
        if let Some(dir) = me.path.parent() {
            // An error shows up as the open failing just below.
            let _ = create_log_dir(dir);
        }
        me.reopen();
        me
    }

    /// Appends `records` (whole CRI lines), rotating first whenever the
    /// next records would take the file past `max_size`. A single record
    /// larger than `max_size` gets a file of its own.
    pub fn write(&mut self, records: &[u8]) {
        if self.file.is_none() && self.reopen_at.is_none_or(|at| Instant::now() >= at) {
            self.reopen();
        }
        let mut rest = records;
        while !rest.is_empty() {
            let room = if self.settings.max_size == 0 {
                u64::MAX
            } else {
                self.rotate_at.saturating_sub(self.size)
            };
            let mut take = whole_records_within(rest, room);
            if take == 0 {
                if self.size > 0 && self.rotate() {
                    continue;
                }
                take = rest
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(rest.len(), |i| i + 1);
            }
            self.append(&rest[..take]);
            rest = &rest[take..];
        }
    }

    /// Writes `bytes` to the open file, or drops them.
    fn append(&mut self, bytes: &[u8]) {
        let Some(file) = self.file.as_mut() else {
            self.dropped(bytes.len(), None);
            return;
        };
        if self.torn {
            match file.write(b"\n") {
                Ok(1) => {
                    self.torn = false;
                    self.size += 1;
                }
                Ok(_) => {}
                Err(e) => {
                    self.dropped(bytes.len(), Some(&e));
                    return;
                }
            }
        }
        let mut written = 0;
        let mut error = None;
        while written < bytes.len() {
            match file.write(&bytes[written..]) {
                Ok(0) => {
                    error = Some(io::Error::from(io::ErrorKind::WriteZero));
                    break;
                }
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        self.size += written as u64;
        match error {
            None => self.recovered(),
            Some(e) => {
                self.torn = written > 0;
                self.dropped(bytes.len() - written, Some(&e));
            }
        }
    }

    /// Renames the current file away, starts a new one and prunes old ones.
    /// False if the rename failed (writing goes on into the current file).
    fn rotate(&mut self) -> bool {
        let rotated = rotated_path(&self.path, jiff::Timestamp::now());
        match fs::rename(&self.path, &rotated) {
            Ok(()) => {}
            // Deleted under us: nothing to keep, just start a new file.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                report(
                    &self.path,
                    format_args!("cannot rotate to {}: {e}", rotated.display()),
                );
                self.rotate_at = self.size.saturating_add(self.settings.max_size);
                return false;
            }
        }
        // Not a single write more into the renamed file.
        self.file = None;
        self.torn = false;
        self.reopen();
        self.prune();
        true
    }

    /// Opens (creates) the current file; on failure arranges a retry.
    fn reopen(&mut self) {
        let opened = open_log_file(&self.path).and_then(|file| Ok((file.metadata()?.len(), file)));
        match opened {
            Ok((size, file)) => {
                self.file = Some(file);
                self.size = size;
                self.rotate_at = self.settings.max_size;
                self.reopen_at = None;
            }
            Err(e) => {
                self.file = None;
                self.size = 0;
                self.reopen_at = Some(Instant::now() + REOPEN_INTERVAL);
                self.failing(&e);
            }
        }
    }

    /// Deletes the oldest rotated files beyond `max_files - 1`.
    fn prune(&self) {
        let keep = self.settings.max_files.max(1) as usize - 1;
        let (Some(dir), Some(name)) = (self.path.parent(), self.path.file_name()) else {
            return;
        };
        let prefix = format!("{}.", name.to_string_lossy());
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        let mut rotated: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.strip_prefix(&prefix).is_some_and(is_rotation_suffix))
            .collect();
        if rotated.len() <= keep {
            return;
        }
        rotated.sort();
        for old in &rotated[..rotated.len() - keep] {
            if let Err(e) = fs::remove_file(dir.join(old)) {
                if e.kind() != io::ErrorKind::NotFound {
                    report(&self.path, format_args!("cannot remove {old}: {e}"));
                }
            }
        }
    }

    fn dropped(&mut self, bytes: usize, error: Option<&io::Error>) {
        if let Some(e) = error {
            self.failing(e);
        }
        let dropped = self.dropped.get_or_insert(0);
        *dropped += bytes as u64;
    }

    /// Reports the first failure of a run of failures.
    fn failing(&mut self, error: &io::Error) {
        if self.dropped.is_none() {
            report(
                &self.path,
                format_args!("{error}; dropping output until writing works again"),
            );
            self.dropped = Some(0);
        }
    }

    fn recovered(&mut self) {
        if let Some(bytes) = self.dropped.take() {
            report(
                &self.path,
                format_args!("writing works again; {bytes} bytes of output were dropped"),
            );
        }
    }
}

/// The length of the longest run of whole records at the start of
/// `records` that fits in `room` bytes.
fn whole_records_within(records: &[u8], room: u64) -> usize {
    if records.len() as u64 <= room {
        return records.len();
    }
    let room = usize::try_from(room).unwrap_or(usize::MAX);
    records[..room]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1)
}

/// `N.log.<YYYYMMDD-HHMMSS>.<nanoseconds>` in UTC, not yet taken (a later
/// nanosecond if it is).
fn rotated_path(path: &Path, mut at: jiff::Timestamp) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    loop {
        let candidate = path.with_file_name(format!(
            "{name}.{}.{:09}",
            at.strftime("%Y%m%d-%H%M%S"),
            at.subsec_nanosecond()
        ));
        if fs::symlink_metadata(&candidate).is_err() {
            return candidate;
        }
        match at.checked_add(jiff::SignedDuration::from_nanos(1)) {
            Ok(next) => at = next,
            Err(_) => return candidate,
        }
    }
}

/// Whether `suffix` is what [`rotated_path`] appends: only such files are
/// ever pruned, never anything else that happens to share the prefix.
fn is_rotation_suffix(suffix: &str) -> bool {
    suffix.len() == SUFFIX_LEN
        && suffix.bytes().enumerate().all(|(i, b)| match i {
            8 => b == b'-',
            15 => b == b'.',
            _ => b.is_ascii_digit(),
        })
}

/// The logger's stderr is wherever the shim points it (/dev/null for the
/// 1.6 runc shim); a failure to report is not worth dying for.
fn report(path: &Path, message: std::fmt::Arguments<'_>) {
    let line = format!(
        "podkeeper {}: {}: {message}\n",
        super::LOGGER_COMMAND,
        path.display()
    );
    if cfg!(test) {
        // Captured by the test harness, unlike writes to the raw stderr.
        eprint!("{line}");
    } else {
        let _ = io::stderr().write_all(line.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: usize, len: usize) -> Vec<u8> {
        let mut r = format!("{n:04}").into_bytes();
        r.resize(len - 1, b'.');
        r.push(b'\n');
        r
    }

    /// (name, content) of every file in `dir`, sorted by name.
    fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut list: Vec<_> = fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| {
                let e = e.expect("entry");
                (
                    e.file_name().into_string().expect("utf-8"),
                    fs::read(e.path()).expect("read"),
                )
            })
            .collect();
        list.sort();
        list
    }

    #[test]
    fn rotates_by_size_and_caps_the_count() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("pod/c/0.log");
        let settings = LogSettings {
            max_size: 100,
            max_files: 3,
        };
        let mut file = RotatingFile::open(path.clone(), settings);
        assert!(file.file.is_some(), "creates the directories and the file");
        // 20 records of 30 bytes: 3 fit in 100 bytes, so 7 files were
        // written; the current one and the two newest rotated ones stay.
        for n in 0..20 {
            file.write(&record(n, 30));
        }
        let list = files(path.parent().expect("dir"));
        let names: Vec<&str> = list.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert_eq!(names[0], "0.log", "{names:?}");
        for name in &names[1..] {
            let suffix = name.strip_prefix("0.log.").expect("rotated name");
            assert!(is_rotation_suffix(suffix), "{name}");
        }
        // Oldest first after the current file: records 12..15, 15..18,
        // and the current file 18..20. Every file holds whole records.
        let content = |i: usize| list[i].1.clone();
        assert_eq!(content(1), [12, 13, 14].map(|n| record(n, 30)).concat());
        assert_eq!(content(2), [15, 16, 17].map(|n| record(n, 30)).concat());
        assert_eq!(content(0), [18, 19].map(|n| record(n, 30)).concat());
    }

    #[test]
    fn one_write_is_split_at_record_boundaries() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("0.log");
        let settings = LogSettings {
            max_size: 100,
            max_files: 10,
        };
        let mut file = RotatingFile::open(path.clone(), settings);
        let batch: Vec<u8> = (0..10).flat_map(|n| record(n, 30)).collect();
        file.write(&batch);
        let list = files(tmp.path());
        // 3 + 3 + 3 in rotated files, 1 in the current one.
        assert_eq!(list.len(), 4);
        assert_eq!(list[0].1, record(9, 30));
        let all: Vec<u8> = list[1..]
            .iter()
            .flat_map(|(_, c)| c.clone())
            .chain(list[0].1.clone())
            .collect();
        assert_eq!(all, batch, "nothing lost, nothing reordered");
        assert!(list.iter().all(|(_, c)| c.len() <= 100));
    }

    #[test]
    fn a_record_larger_than_the_maximum_gets_its_own_file() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("0.log");
        let settings = LogSettings {
            max_size: 50,
            max_files: 5,
        };
        let mut file = RotatingFile::open(path.clone(), settings);
        file.write(&record(0, 10));
        file.write(&record(1, 80));
        file.write(&record(2, 10));
        let list = files(tmp.path());
        let contents: Vec<&[u8]> = list.iter().map(|(_, c)| c.as_slice()).collect();
        assert_eq!(
            contents,
            [&record(2, 10)[..], &record(0, 10)[..], &record(1, 80)[..]]
        );
    }

    #[test]
    fn appends_to_an_existing_file_and_counts_it() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("0.log");
        fs::write(&path, record(0, 90)).expect("write");
        let settings = LogSettings {
            max_size: 100,
            max_files: 2,
        };
        let mut file = RotatingFile::open(path.clone(), settings);
        file.write(&record(1, 20));
        let list = files(tmp.path());
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].1, record(1, 20));
        assert_eq!(list[1].1, record(0, 90));
    }

    #[test]
    fn zero_max_size_never_rotates_and_one_file_means_none_kept() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let unlimited = LogSettings {
            max_size: 0,
            max_files: 1,
        };
        let mut file = RotatingFile::open(tmp.path().join("a.log"), unlimited);
        for n in 0..100 {
            file.write(&record(n, 30));
        }
        assert_eq!(files(tmp.path()).len(), 1);

        let single = LogSettings {
            max_size: 100,
            max_files: 1,
        };
        let mut file = RotatingFile::open(tmp.path().join("b.log"), single);
        for n in 0..10 {
            file.write(&record(n, 30));
        }
        let list = files(tmp.path());
        let names: Vec<&str> = list.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a.log", "b.log"]);
        assert_eq!(list[1].1, record(9, 30));
    }

    #[test]
    fn pruning_leaves_other_files_alone() {
        let tmp = tempfile::tempdir().expect("tempdir");
        for name in [
            "0.log.bak",
            "0.log.20200101-000000",
            "10.log.20200101-000000.000000000",
            "1.log",
        ] {
            fs::write(tmp.path().join(name), b"keep").expect("write");
        }
        let settings = LogSettings {
            max_size: 10,
            max_files: 1,
        };
        let mut file = RotatingFile::open(tmp.path().join("0.log"), settings);
        for n in 0..5 {
            file.write(&record(n, 10));
        }
        let names: Vec<String> = files(tmp.path()).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "0.log",
                "0.log.20200101-000000",
                "0.log.bak",
                "1.log",
                "10.log.20200101-000000.000000000"
            ]
        );
    }

    #[test]
    fn rotated_names_sort_by_age_and_never_collide() {
        let at: jiff::Timestamp = "2024-01-05T13:45:01.000000007Z".parse().expect("ts");
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("3.log");
        let first = rotated_path(&path, at);
        assert_eq!(
            first.file_name().and_then(|n| n.to_str()),
            Some("3.log.20240105-134501.000000007")
        );
        fs::write(&first, b"").expect("write");
        let second = rotated_path(&path, at);
        assert_eq!(
            second.file_name().and_then(|n| n.to_str()),
            Some("3.log.20240105-134501.000000008")
        );
        let later = rotated_path(&path, "2024-01-05T13:45:02Z".parse().expect("ts"));
        assert!(first < second && second < later);
    }

    #[test]
    fn write_failures_drop_data_and_recover() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("gone");
        let path = dir.join("0.log");
        let settings = LogSettings {
            max_size: 100,
            max_files: 2,
        };
        let mut file = RotatingFile::open(path.clone(), settings);
        file.write(&record(0, 60));
        // The directory disappears: rotation cannot create the new file.
        fs::remove_dir_all(&dir).expect("rm");
        file.write(&record(1, 60));
        assert!(file.file.is_none());
        // Dropped, without blocking or panicking.
        file.write(&record(2, 60));
        // It comes back (without the logger re-creating the directory).
        fs::create_dir_all(&dir).expect("mkdir");
        file.reopen_at = Some(Instant::now());
        file.write(&record(3, 60));
        assert!(file.file.is_some());
        assert_eq!(fs::read(&path).expect("read"), record(3, 60));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_full_disk_drops_data_and_tears_no_following_record() {
        // /dev/full fails every write with ENOSPC, like a full disk.
        let full = Path::new("/dev/full");
        if !full.exists() {
            return;
        }
        let mut file = RotatingFile {
            path: full.into(),
            settings: LogSettings::default(),
            file: fs::OpenOptions::new().append(true).open(full).ok(),
            size: 0,
            rotate_at: LogSettings::default().max_size,
            torn: false,
            reopen_at: None,
            dropped: None,
        };
        file.write(&record(0, 30));
        file.write(&record(1, 30));
        assert_eq!(file.dropped, Some(60));
        assert!(!file.torn);
    }
}
