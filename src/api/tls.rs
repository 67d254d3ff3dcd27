//! What the HTTPS listener needs, prepared once at start: the serving
//! certificate (the operator's, or one issued from podkeeper's CA), the
//! bearer tokens (the agent's admin token and the token file's), the
//! client CA, and the kubeconfig written for the admin. Operator files
//! that decide who gets in must be root's and not writable (the token
//! file and the key also not readable) by others; otherwise the agent
//! does not start, saying which file and how to fix it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tracing::{info, warn};

use super::auth::{token_file, Tokens, User};
use super::kubeconfig;
use super::pki::{Pki, PkiError};
use crate::config::ApiSettings;
use crate::host::private_files::{self, TrustedFileError};

/// The admin token's user: a full user, like every one outside the
/// viewers group.
pub const ADMIN_USER: &str = "podkeeper-admin";

/// Largest certificate, key or CA bundle read.
const MAX_PEM: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    File(#[from] TrustedFileError),
    #[error("token-auth-file {path}: {source}", path = .path.display())]
    TokenFile {
        path: PathBuf,
        source: token_file::TokenFileError,
    },
    #[error("{key} {path}: {reason}", path = .path.display())]
    Pem {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("the HTTPS API's TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client-ca-file {path}: {reason}", path = .path.display())]
    ClientCa { path: PathBuf, reason: String },
    #[error("writing {path}: {source}", path = .path.display())]
    Kubeconfig {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The HTTPS listener's TLS and who it lets in.
pub struct Https {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub tokens: Arc<Tokens>,
}

/// Where the agent runs, for the certificate's names and the kubeconfig.
pub struct Node<'a> {
    pub state_dir: &'a Path,
    pub name: &'a str,
    pub ip: Option<&'a str>,
    /// The group given read access to the kubeconfig, if the host has it.
    pub access_group: Option<u32>,
}

/// Prepares the listener on `listen` and writes the admin's kubeconfig.
pub fn prepare(settings: &ApiSettings, listen: SocketAddr, node: &Node) -> Result<Https, TlsError> {
    let pki = Pki::ensure(node.state_dir, node.name)?;
    let (certs, key) = match &settings.tls {
        Some((cert, key)) => operator_certificate(cert, key)?,
        None => {
            let issued = pki.issue_serving(&serving_names(listen, node))?;
            let generated = |reason: String| TlsError::Pem {
                key: "generated certificate",
                path: node.state_dir.into(),
                reason,
            };
            let certs = vec![CertificateDer::from_pem_slice(issued.cert_pem.as_bytes())
                .map_err(|e| generated(e.to_string()))?];
            let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())
                .map_err(|e| generated(e.to_string()))?;
            (certs, key)
        }
    };
    let tokens = tokens(&pki.admin_token, settings.token_auth_file.as_deref())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let mut config = match &settings.client_ca_file {
        Some(path) => {
            let roots = client_roots(path)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                // Callers without a certificate may still bring a token.
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::ClientCa {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    }
    .with_single_cert(certs, key)?;
    // HTTP/1.1 only: what the server speaks, and what kubectl's
    // WebSocket and SPDY upgrades need.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];

    let path = kubeconfig::path(node.state_dir);
    let ca = settings.tls.is_none().then_some(pki.ca_pem.as_str());
    let text = kubeconfig::render(&kubeconfig::server_url(listen), ca, &pki.admin_token);
    if kubeconfig::write(&path, &text, node.access_group).map_err(|source| {
        TlsError::Kubeconfig {
            path: path.clone(),
            source,
        }
    })? {
        info!(kubeconfig = %path.display(), "wrote the admin kubeconfig");
    }
    Ok(Https {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        tokens: Arc::new(tokens),
    })
}

/// The names the generated serving certificate is for: loopback, the
/// node's name and IP, and the listen address when it is a specific one.
fn serving_names(listen: SocketAddr, node: &Node) -> Vec<String> {
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
        node.name.to_string(),
    ];
    names.extend(node.ip.map(String::from));
    if !listen.ip().is_unspecified() {
        names.push(listen.ip().to_string());
    }
    names
}

fn operator_certificate(
    cert_path: &Path,
    key_path: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let cert_pem = private_files::read_trusted(
        cert_path,
        0o022,
        "others could replace the certificate",
        MAX_PEM,
    )?;
    let key_pem = private_files::read_trusted(
        key_path,
        0o077,
        "others could read or replace the private key",
        MAX_PEM,
    )?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error("tls-cert-file", cert_path, e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_error(
            "tls-cert-file",
            cert_path,
            "no PEM certificate".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| pem_error("tls-private-key-file", key_path, e.to_string()))?;
    Ok((certs, key))
}

fn pem_error(key: &'static str, path: &Path, reason: String) -> TlsError {
    TlsError::Pem {
        key,
        path: path.into(),
        reason,
    }
}

/// The admin token and the token file's tokens. The file's warnings name
/// records by number, never by token.
fn tokens(admin_token: &str, file: Option<&Path>) -> Result<Tokens, TlsError> {
    let mut tokens = Tokens::default();
    tokens.insert(
        admin_token,
        User {
            name: ADMIN_USER.into(),
            uid: ADMIN_USER.into(),
            groups: vec!["system:masters".into()],
        },
    );
    let Some(path) = file else {
        return Ok(tokens);
    };
    let content = private_files::read_trusted(
        path,
        0o027,
        "others could read the tokens or add their own",
        token_file::MAX_TOKEN_FILE,
    )?;
    let warnings =
        token_file::parse(&content, &mut tokens).map_err(|source| TlsError::TokenFile {
            path: path.into(),
            source,
        })?;
    for record in warnings.empty {
        warn!(file = %path.display(), record, "empty token in the token file; record skipped");
    }
    for record in warnings.duplicate {
        warn!(file = %path.display(), record, "a token repeated in the token file; the later record wins");
    }
    info!(file = %path.display(), users = tokens.len() - 1, "token file read");
    Ok(tokens)
}

fn client_roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let pem = private_files::read_trusted(
        path,
        0o022,
        "others could add a CA and log in as anyone",
        MAX_PEM,
    )?;
    let invalid = |reason: String| TlsError::ClientCa {
        path: path.into(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots
            .add(cert.map_err(|e| invalid(e.to_string()))?)
            .map_err(|e| invalid(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(invalid("no PEM certificate".into()));
    }
    Ok(roots)
}
