//! Registry credentials from a Docker-style `config.json` (what `docker login`
//! writes), so that an operator can log in once with familiar tools and the
//! agent pulls with the same credentials.
//!
//! Only inline credentials in `auths` are supported. Credential stores and
//! helpers (`credsStore`, `credHelpers`) would mean running external programs
//! from a root daemon; they are ignored with a warning instead.

use base64::Engine as _;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// The registry host that every Docker Hub alias is stored under, and the form
/// normalized references use (`docker.io/library/busybox:1.36`).
const DOCKER_HUB: &str = "docker.io";

/// Host names that all mean Docker Hub: Docker writes `https://index.docker.io/v1/`,
/// references say `docker.io`, and the API is served from the other two.
const DOCKER_HUB_ALIASES: &[&str] = &["docker.io", "index.docker.io", "registry-1.docker.io"];

/// The key `docker login` uses for Docker Hub; it wins over other Hub aliases
/// in the same file, as in Docker's own lookup.
const DOCKER_HUB_LOGIN_KEY: &str = "https://index.docker.io/v1/";

/// Set once the "credsStore/credHelpers ignored" warning was logged, so that a
/// config that is reloaded often does not repeat it.
static HELPERS_WARNED: AtomicBool = AtomicBool::new(false);

/// Username and password per registry host (`docker.io`, `127.0.0.1:5000`).
///
/// `Debug` is written by hand so that passwords never end up in logs.
#[derive(Clone, Default)]
pub struct Credentials {
    /// Normalized host -> (username, password).
    by_host: HashMap<String, (String, String)>,
}

/// Why a credentials file could not be used. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read registry credentials file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("registry credentials file {} is not a valid Docker config.json: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("registry credentials file {}: entry {key:?} in \"auths\": {reason}", path.display())]
    Entry {
        path: PathBuf,
        key: String,
        reason: String,
    },
}

/// The parts of a Docker config.json this module reads; everything else
/// (proxies, detachKeys, ...) is ignored.
#[derive(serde::Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
}

#[derive(serde::Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default, rename = "identitytoken")]
    identity_token: Option<String>,
}

impl Credentials {
    /// Reads `auths` from a Docker config.json. A missing file is no credentials, not an error.
    ///
    /// Entries: `{"auth": base64("user:pass")}` or `{"username": .., "password": ..}` (`auth`
    /// wins when both are present); keys may be a bare host[:port] or a URL (`https://host/v1/`,
    /// `http://host:5000`). Docker Hub aliases: `docker.io`, `index.docker.io`,
    /// `registry-1.docker.io`, `https://index.docker.io/v1/` all mean Docker Hub. Empty entries
    /// (which Docker writes when a credential store holds the secret) are skipped. When two keys
    /// mean the same host, `https://index.docker.io/v1/` (Hub) or the bare host wins, otherwise
    /// the alphabetically first key.
    /// `credsStore`/`credHelpers` are not supported: a warning says once that they are ignored.
    pub fn load(path: &Path) -> Result<Credentials, CredentialsError> {
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::debug!(path = %path.display(), "no registry credentials file");
                return Ok(Credentials::default());
            }
            Err(source) => {
                return Err(CredentialsError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let config: ConfigFile =
            serde_json::from_slice(&text).map_err(|source| CredentialsError::Parse {
                path: path.to_path_buf(),
                source,
            })?;

        if (config.creds_store.is_some() || !config.cred_helpers.is_empty())
            && !HELPERS_WARNED.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                path = %path.display(),
                "credsStore/credHelpers in the registry credentials file are not supported and \
                 are ignored; only inline \"auths\" entries are used"
            );
        }

        // Sorted so that the winner among keys that mean the same host does not
        // depend on hash order.
        let mut keys: Vec<&String> = config.auths.keys().collect();
        keys.sort();
        let mut by_host: HashMap<String, (String, String)> = HashMap::new();
        // Host -> rank of the key its credentials came from (see `key_rank`).
        let mut preferred: HashMap<String, u8> = HashMap::new();
        for key in keys {
            let entry = &config.auths[key];
            let Some(pair) =
                entry_credentials(entry).map_err(|reason| CredentialsError::Entry {
                    path: path.to_path_buf(),
                    key: key.clone(),
                    reason,
                })?
            else {
                if entry.identity_token.is_some() {
                    tracing::warn!(
                        path = %path.display(),
                        key = %key,
                        "identity tokens are not supported; entry ignored"
                    );
                }
                continue;
            };
            let host = normalize_host(key);
            if host.is_empty() {
                return Err(CredentialsError::Entry {
                    path: path.to_path_buf(),
                    key: key.clone(),
                    reason: "no registry host in the key".into(),
                });
            }
            let rank = key_rank(key, &host);
            if preferred.get(&host).is_some_and(|&best| best >= rank) {
                continue;
            }
            preferred.insert(host.clone(), rank);
            by_host.insert(host, pair);
        }
        Ok(Credentials { by_host })
    }

    /// Credentials for a registry host as it appears in a normalized reference ("docker.io",
    /// "127.0.0.1:5000"). Any Docker Hub alias finds the Hub entry.
    pub fn for_registry(&self, host: &str) -> Option<(&str, &str)> {
        self.by_host
            .get(&normalize_host(host))
            .map(|(user, password)| (user.as_str(), password.as_str()))
    }

    /// True when no registry has credentials.
    pub fn is_empty(&self) -> bool {
        self.by_host.is_empty()
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut hosts: Vec<(&String, &String)> = self
            .by_host
            .iter()
            .map(|(host, (user, _))| (host, user))
            .collect();
        hosts.sort();
        f.debug_struct("Credentials")
            .field("users", &hosts)
            .finish_non_exhaustive()
    }
}

/// How strongly a key claims its host when several keys mean the same one:
/// Docker's own Hub key first, then a bare host, then any URL form.
fn key_rank(key: &str, host: &str) -> u8 {
    if key == DOCKER_HUB_LOGIN_KEY {
        2
    } else if key.trim().eq_ignore_ascii_case(host) {
        1
    } else {
        0
    }
}

/// Username and password of one `auths` entry, `None` when it holds neither.
fn entry_credentials(entry: &AuthEntry) -> Result<Option<(String, String)>, String> {
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        // Docker writes padded standard base64; some tools drop the padding.
        let decoded = base64::engine::general_purpose::STANDARD_PAD_INDIFFERENT
            .decode(auth.trim())
            .map_err(|e| format!("\"auth\" is not valid base64: {e}"))?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| "\"auth\" does not decode to UTF-8 text".to_string())?;
        let (user, password) = decoded
            .split_once(':')
            .ok_or_else(|| "\"auth\" does not decode to \"username:password\"".to_string())?;
        return Ok(Some((user.to_string(), password.to_string())));
    }
    match (&entry.username, &entry.password) {
        (Some(user), Some(password)) if !user.is_empty() => {
            Ok(Some((user.clone(), password.clone())))
        }
        (Some(user), None) if !user.is_empty() => Err("\"username\" without \"password\"".into()),
        _ => Ok(None),
    }
}

/// The registry host a config key or reference host means: scheme and path
/// dropped, lower-cased, every Docker Hub alias folded into `docker.io`.
fn normalize_host(key: &str) -> String {
    let key = key.trim();
    let without_scheme = key
        .split_once("://")
        .map_or(key, |(_, rest)| rest)
        .trim_start_matches('/');
    let host = without_scheme
        .split('/')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    if DOCKER_HUB_ALIASES.contains(&host.as_str()) {
        DOCKER_HUB.to_string()
    } else {
        host
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn write_config(json: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(json.as_bytes()).unwrap();
        file
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn auth_form_is_decoded() {
        let file = write_config(&format!(
            r#"{{"auths":{{"127.0.0.1:5000":{{"auth":"{}"}}}}}}"#,
            b64("alice:s3cr:et")
        ));
        let creds = Credentials::load(file.path()).unwrap();
        // Only the first colon separates: passwords may contain colons.
        assert_eq!(
            creds.for_registry("127.0.0.1:5000"),
            Some(("alice", "s3cr:et"))
        );
        assert_eq!(creds.for_registry("127.0.0.1:5001"), None);
    }

    #[test]
    fn unpadded_auth_is_accepted() {
        let auth = b64("bob:pw").trim_end_matches('=').to_string();
        let file = write_config(&format!(
            r#"{{"auths":{{"r.example":{{"auth":"{auth}"}}}}}}"#
        ));
        let creds = Credentials::load(file.path()).unwrap();
        assert_eq!(creds.for_registry("r.example"), Some(("bob", "pw")));
    }

    #[test]
    fn username_password_form() {
        let file =
            write_config(r#"{"auths":{"registry.example.com":{"username":"u","password":"p"}}}"#);
        let creds = Credentials::load(file.path()).unwrap();
        assert_eq!(creds.for_registry("registry.example.com"), Some(("u", "p")));
    }

    #[test]
    fn auth_wins_over_username_password() {
        let file = write_config(&format!(
            r#"{{"auths":{{"r.example":{{"auth":"{}","username":"x","password":"y"}}}}}}"#,
            b64("a:b")
        ));
        let creds = Credentials::load(file.path()).unwrap();
        assert_eq!(creds.for_registry("r.example"), Some(("a", "b")));
    }

    #[test]
    fn url_keys_are_reduced_to_host() {
        let file = write_config(&format!(
            r#"{{"auths":{{
                "https://secure.example/v1/":{{"auth":"{}"}},
                "http://plain.example:5000":{{"username":"p","password":"q"}},
                "HTTPS://Upper.Example:443/v2/":{{"username":"c","password":"d"}}
            }}}}"#,
            b64("s:t")
        ));
        let creds = Credentials::load(file.path()).unwrap();
        assert_eq!(creds.for_registry("secure.example"), Some(("s", "t")));
        assert_eq!(creds.for_registry("plain.example:5000"), Some(("p", "q")));
        assert_eq!(creds.for_registry("plain.example"), None);
        assert_eq!(creds.for_registry("upper.example:443"), Some(("c", "d")));
    }

    #[test]
    fn docker_hub_aliases_are_one_registry() {
        for key in [
            "docker.io",
            "index.docker.io",
            "registry-1.docker.io",
            "https://index.docker.io/v1/",
            "https://registry-1.docker.io",
        ] {
            let file = write_config(&format!(
                r#"{{"auths":{{"{key}":{{"username":"hub","password":"pw"}}}}}}"#
            ));
            let creds = Credentials::load(file.path()).unwrap();
            for host in ["docker.io", "index.docker.io", "registry-1.docker.io"] {
                assert_eq!(
                    creds.for_registry(host),
                    Some(("hub", "pw")),
                    "{key} {host}"
                );
            }
        }
    }

    #[test]
    fn docker_login_key_wins_for_hub() {
        let file = write_config(&format!(
            r#"{{"auths":{{
                "docker.io":{{"username":"other","password":"x"}},
                "https://index.docker.io/v1/":{{"auth":"{}"}},
                "registry-1.docker.io":{{"username":"third","password":"y"}}
            }}}}"#,
            b64("login:pw")
        ));
        let creds = Credentials::load(file.path()).unwrap();
        assert_eq!(creds.for_registry("docker.io"), Some(("login", "pw")));
    }

    #[test]
    fn bare_host_key_wins_over_url_key() {
        let file = write_config(
            r#"{"auths":{
                "https://r.example/v2/":{"username":"url","password":"1"},
                "r.example":{"username":"bare","password":"2"}
            }}"#,
        );
        let creds = Credentials::load(file.path()).unwrap();
        assert_eq!(creds.for_registry("r.example"), Some(("bare", "2")));
    }

    #[test]
    fn bad_base64_is_an_error_naming_the_key() {
        let file = write_config(r#"{"auths":{"bad.example:5000":{"auth":"%%%not base64"}}}"#);
        let err = Credentials::load(file.path()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, CredentialsError::Entry { .. }), "{err:?}");
        assert!(msg.contains("bad.example:5000"), "{msg}");
        assert!(msg.contains("base64"), "{msg}");
        assert!(msg.contains(&file.path().display().to_string()), "{msg}");
    }

    #[test]
    fn auth_without_colon_is_an_error() {
        let file = write_config(&format!(
            r#"{{"auths":{{"r.example":{{"auth":"{}"}}}}}}"#,
            b64("nocolon")
        ));
        let msg = Credentials::load(file.path()).unwrap_err().to_string();
        assert!(
            msg.contains("r.example") && msg.contains("username:password"),
            "{msg}"
        );
    }

    #[test]
    fn missing_file_is_no_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let creds = Credentials::load(&dir.path().join("config.json")).unwrap();
        assert!(creds.is_empty());
        assert_eq!(creds.for_registry("docker.io"), None);
    }

    #[test]
    fn invalid_json_is_an_error_naming_the_file() {
        let file = write_config("{not json");
        let err = Credentials::load(file.path()).unwrap_err();
        assert!(matches!(err, CredentialsError::Parse { .. }), "{err:?}");
        assert!(err.to_string().contains(&file.path().display().to_string()));
    }

    #[test]
    fn helpers_and_empty_entries_are_ignored() {
        let file = write_config(
            r#"{"auths":{"docker.io":{},"r.example":{"username":"u","password":"p"}},
                "credsStore":"desktop","credHelpers":{"gcr.io":"gcloud"},
                "proxies":{"default":{}}}"#,
        );
        let creds = Credentials::load(file.path()).unwrap();
        assert_eq!(creds.for_registry("docker.io"), None);
        assert_eq!(creds.for_registry("r.example"), Some(("u", "p")));
    }

    #[test]
    fn file_without_auths_is_empty() {
        let file = write_config(r#"{"detachKeys":"ctrl-e"}"#);
        assert!(Credentials::load(file.path()).unwrap().is_empty());
    }

    #[test]
    fn debug_does_not_show_passwords() {
        let file = write_config(r#"{"auths":{"r.example":{"username":"u","password":"hunter2"}}}"#);
        let creds = Credentials::load(file.path()).unwrap();
        let shown = format!("{creds:?}");
        assert!(
            shown.contains("r.example") && shown.contains('u'),
            "{shown}"
        );
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
