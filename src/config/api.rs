//! The API's settings: its two TCP listeners and the credentials the
//! HTTPS one accepts.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::{ConfigError, FileSettings, RunFlags};

/// How the HTTP API is served and to whom.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// HTTPS with authentication: the whole API. `None`: off.
    pub api_listen: Option<SocketAddr>,
    /// Plain HTTP without authentication: health checks only. `None`: off.
    pub http_listen: Option<SocketAddr>,
    /// An operator's certificate and key instead of the generated ones.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub client_ca_file: Option<PathBuf>,
    pub token_auth_file: Option<PathBuf>,
    /// Whether `/metrics` is also served on `http_listen`.
    pub metrics_unauthenticated: bool,
}

pub(super) fn settings(flags: &RunFlags, file: &FileSettings) -> Result<ApiSettings, ConfigError> {
    let api_listen = listen(
        "api-listen",
        flags.api_listen.as_ref().or(file.api_listen.as_ref()),
        "127.0.0.1:10250",
    )?;
    let http_listen = listen(
        "http-listen",
        flags.http_listen.as_ref().or(file.http_listen.as_ref()),
        "127.0.0.1:10255",
    )?;
    if let (Some(api), Some(http)) = (api_listen, http_listen) {
        if api == http {
            return Err(ConfigError::Invalid {
                key: "api-listen",
                reason: format!("{api} is also http-listen"),
            });
        }
    }
    let pick = |flag: &Option<PathBuf>, key: &Option<PathBuf>| flag.clone().or(key.clone());
    let cert = pick(&flags.tls_cert_file, &file.tls_cert_file);
    let key = pick(&flags.tls_private_key_file, &file.tls_private_key_file);
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(_), None) => return Err(missing("tls-private-key-file", "tls-cert-file")),
        (None, Some(_)) => return Err(missing("tls-cert-file", "tls-private-key-file")),
    };
    Ok(ApiSettings {
        api_listen,
        http_listen,
        tls,
        client_ca_file: pick(&flags.client_ca_file, &file.client_ca_file),
        token_auth_file: pick(&flags.token_auth_file, &file.token_auth_file),
        metrics_unauthenticated: flags
            .metrics_unauthenticated
            .or(file.metrics_unauthenticated)
            .unwrap_or(false),
    })
}

/// An `address:port`, or `None` for an empty value (the listener is off).
fn listen(
    key: &'static str,
    given: Option<&String>,
    default: &str,
) -> Result<Option<SocketAddr>, ConfigError> {
    let value = given.map_or(default, String::as_str).trim();
    if value.is_empty() {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|e| ConfigError::Invalid {
        key,
        reason: format!("{value:?} is not an address:port ({e})"),
    })
}

fn missing(key: &'static str, with: &str) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: format!("must be given with {with}"),
    }
}
