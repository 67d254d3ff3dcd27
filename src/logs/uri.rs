//! The logger URI and its one argument.
//!
//! Two layers, because two parsers sit between us and the logger:
//! 1. the **argument** `<max_size>:<max_files>:<path>`, with the path
//!    percent-encoded, is plain ASCII whatever bytes the path holds, so it
//!    survives argv and clap's `String` and reads well in `ps`;
//! 2. the **URI** `binary://<executable>?cri-logger=<argument>` encodes the
//!    executable path and the argument once more, for Go's `url.Parse` and
//!    `url.Values` in the shim, which decode `%XX` (and `+` as a space in
//!    the query) before building the logger's argv.
//!
//! The path comes last in the argument, so it may hold `:`.

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use super::{LogSettings, LOGGER_COMMAND};

/// RFC 3986 unreserved characters: never encoded.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn percent_encode(bytes: &[u8], keep: impl Fn(u8) -> bool) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if keep(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    out
}

/// Decodes `%XX`; anything else is taken literally. None on a malformed escape.
fn percent_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// The logger's argument (layer 1).
pub(super) fn encode_argument(path: &Path, settings: &LogSettings) -> String {
    let path = percent_encode(path.as_os_str().as_bytes(), |b| unreserved(b) || b == b'/');
    format!("{}:{}:{path}", settings.max_size, settings.max_files)
}

/// Inverse of [`encode_argument`]; the path must be absolute, since the
/// logger runs in the shim's working directory, which is nobody's business.
pub(super) fn decode_argument(argument: &str) -> io::Result<(PathBuf, LogSettings)> {
    let invalid = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{LOGGER_COMMAND} argument {argument:?}: {what}"),
        )
    };
    let mut parts = argument.splitn(3, ':');
    let max_size = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("bad max size"))?;
    let max_files = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("bad max files"))?;
    let path = parts
        .next()
        .and_then(percent_decode)
        .map(|bytes| PathBuf::from(OsString::from_vec(bytes)))
        .ok_or_else(|| invalid("bad path"))?;
    if !path.is_absolute() {
        return Err(invalid("the path is not absolute"));
    }
    Ok((
        path,
        LogSettings {
            max_size,
            max_files,
        },
    ))
}

/// The full URI (layer 2). `/` and `:` may stay literal in a query value
/// (RFC 3986 `query`), which keeps the URI readable in `ctr tasks` output;
/// `%`, `+`, `&`, `=`, `;` and `#` are what Go's query parser would
/// otherwise act on.
pub(super) fn logger_uri(executable: &Path, path: &Path, settings: &LogSettings) -> String {
    let executable = percent_encode(executable.as_os_str().as_bytes(), |b| {
        unreserved(b) || b == b'/'
    });
    let argument = percent_encode(encode_argument(path, settings).as_bytes(), |b| {
        unreserved(b) || b == b'/' || b == b':'
    });
    format!("binary://{executable}?{LOGGER_COMMAND}={argument}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the 1.6 shim does with the URI (`url.Parse`, then
    /// `NewBinaryCmd`): the decoded path is the program, each query pair
    /// becomes two argv words; in the query `+` means a space.
    fn as_shim_would(uri: &str) -> (PathBuf, Vec<String>) {
        let rest = uri.strip_prefix("binary://").expect("binary scheme");
        let (path, query) = rest.split_once('?').expect("a query");
        let program = PathBuf::from(OsString::from_vec(percent_decode(path).expect("path")));
        let mut argv = Vec::new();
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').expect("key=value");
            for word in [k, v] {
                let bytes = percent_decode(&word.replace('+', " ")).expect("query escape");
                argv.push(String::from_utf8(bytes).expect("argv is ASCII"));
            }
        }
        (program, argv)
    }

    fn round_trip(executable: &Path, path: &Path) {
        let settings = LogSettings {
            max_size: 1234,
            max_files: 7,
        };
        let uri = logger_uri(executable, path, &settings);
        assert!(
            uri.is_ascii() && !uri.contains(' '),
            "not a clean URI: {uri}"
        );
        let (program, argv) = as_shim_would(&uri);
        assert_eq!(program, executable);
        assert_eq!(argv.len(), 2, "{argv:?}");
        assert_eq!(argv[0], LOGGER_COMMAND);
        let (decoded, decoded_settings) = decode_argument(&argv[1]).expect("decodes");
        assert_eq!(decoded, path);
        assert_eq!(decoded_settings, settings);
    }

    #[test]
    fn plain_paths_round_trip_and_read_well() {
        let path = Path::new("/var/log/pods/default_web_1234/nginx/0.log");
        round_trip(Path::new("/usr/bin/podkeeper"), path);
        assert_eq!(
            logger_uri(
                Path::new("/usr/bin/podkeeper"),
                path,
                &LogSettings::default()
            ),
            "binary:///usr/bin/podkeeper?cri-logger=10485760:5:/var/log/pods/default_web_1234/nginx/0.log"
        );
    }

    #[test]
    fn odd_characters_round_trip() {
        for path in [
            "/tmp/with space/and+plus/0.log",
            "/tmp/100%/a&b=c;d#e?f/0.log",
            "/tmp/colon:here/x:1:2/0.log",
            "/tmp/ünïcødé/日本/0.log",
            "/tmp/%41%zz%/0.log",
        ] {
            round_trip(
                Path::new("/opt/pod keeper/bin+x/podkeeper"),
                Path::new(path),
            );
        }
        // Not UTF-8 at all.
        let raw = PathBuf::from(OsString::from_vec(b"/tmp/\xff\xfe/\x01\n.log".to_vec()));
        round_trip(Path::new("/usr/bin/podkeeper"), &raw);
    }

    #[test]
    fn bad_arguments_are_refused() {
        for bad in [
            "",
            "10",
            "10:5",
            "x:5:/a",
            "10:y:/a",
            "10:5:relative/0.log",
            "10:5:/a%zz",
            "10:5:/a%4",
        ] {
            assert!(decode_argument(bad).is_err(), "{bad:?} accepted");
        }
    }
}
