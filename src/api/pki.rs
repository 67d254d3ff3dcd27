//! The API's own credentials, made at first start and kept under
//! `<state-dir>/pki/` (0700) across restarts and package upgrades: a CA
//! (`ca.crt`, `ca.key`) and the admin token (`admin.token`). The serving
//! certificate is issued from the CA at every start and kept in memory
//! only, so it always names the node's current name and address, and
//! clients that trust the CA (the kubeconfig does) never notice.

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::host::{private_files, state_file};

const PKI_DIR: &str = "pki";
const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const ADMIN_TOKEN: &str = "admin.token";

/// Years a generated certificate is valid. Long, because an appliance may
/// run for years without a restart and nothing renews a certificate in a
/// running agent; the CA's key never leaves the node.
const VALID_YEARS: i16 = 10;

/// Random bytes in the admin token (hex-encoded: 64 characters).
const TOKEN_BYTES: usize = 32;

/// Largest PKI file read back.
const MAX_PKI_FILE: u64 = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}", path = .path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {source}", path = .path.display())]
    Certificate { path: PathBuf, source: rcgen::Error },
    #[error("issuing the serving certificate: {0}")]
    Issue(rcgen::Error),
    #[error("no randomness for the admin token: {0}")]
    Random(getrandom::Error),
}

/// The kept CA and admin token.
pub struct Pki {
    pub ca_pem: String,
    pub admin_token: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key, PEM-encoded.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Pki {
    /// Loads the CA and the admin token from `<state_dir>/pki`, making
    /// what is missing. A CA with one of its two files missing (a crash
    /// between the writes) is made anew; so is a token file too short to
    /// be one podkeeper wrote.
    pub fn ensure(state_dir: &Path, node_name: &str) -> Result<Pki, PkiError> {
        let dir = state_dir.join(PKI_DIR);
        private_files::create_dir(&dir, private_files::PRIVATE_DIR_MODE).map_err(io(&dir))?;
        let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
        let kept = match (read(&cert_path)?, read(&key_path)?) {
            (Some(cert), Some(key)) => Some((cert, key)),
            _ => None,
        };
        let (ca_pem, issuer) = match kept {
            Some((cert, key)) => {
                let certificate = |source| PkiError::Certificate {
                    path: cert_path.clone(),
                    source,
                };
                let key = KeyPair::from_pem(&key).map_err(|source| PkiError::Certificate {
                    path: key_path.clone(),
                    source,
                })?;
                let issuer = Issuer::from_ca_cert_pem(&cert, key).map_err(certificate)?;
                (cert, issuer)
            }
            None => {
                let (cert, key) = new_ca(node_name).map_err(|source| PkiError::Certificate {
                    path: cert_path.clone(),
                    source,
                })?;
                private_files::write_private(&key_path, key.serialize_pem().as_bytes())
                    .map_err(io(&key_path))?;
                private_files::write_file(&cert_path, cert.as_bytes(), 0o644, None)
                    .map_err(io(&cert_path))?;
                let issuer = Issuer::from_ca_cert_pem(&cert, key).map_err(|source| {
                    PkiError::Certificate {
                        path: cert_path.clone(),
                        source,
                    }
                })?;
                (cert, issuer)
            }
        };
        let token_path = dir.join(ADMIN_TOKEN);
        let admin_token = match read(&token_path)? {
            Some(token) if token.trim().len() >= 2 * TOKEN_BYTES => token.trim().to_string(),
            _ => {
                let token = new_token()?;
                private_files::write_private(&token_path, token.as_bytes())
                    .map_err(io(&token_path))?;
                token
            }
        };
        Ok(Pki {
            ca_pem,
            admin_token,
            issuer,
        })
    }

    /// A serving certificate for `names` (DNS names and IP addresses),
    /// with a new key, signed by the CA.
    pub fn issue_serving(&self, names: &[String]) -> Result<Issued, PkiError> {
        let key = KeyPair::generate().map_err(PkiError::Issue)?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "podkeeper");
        params.subject_alt_names = subject_alt_names(names);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(PkiError::Issue)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// IP addresses as IP SANs, host names as DNS SANs; anything else (a
/// node name no client could ask for) is left out, never fatal.
fn subject_alt_names(names: &[String]) -> Vec<SanType> {
    let mut sans: Vec<SanType> = Vec::new();
    for name in names {
        let san = match name.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) if is_host_name(name) => match name.clone().try_into() {
                Ok(dns) => SanType::DnsName(dns),
                Err(_) => continue,
            },
            Err(_) => continue,
        };
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    sans
}

/// Dot-separated labels of letters, digits and inner hyphens.
fn is_host_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn new_ca(node_name: &str) -> Result<(String, KeyPair), rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("podkeeper-ca@{node_name}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key))
}

/// From yesterday (clocks of clients may lag) for [`VALID_YEARS`].
fn validity(params: &mut CertificateParams) {
    let today = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date();
    let start = today.yesterday().unwrap_or(today);
    let end = today
        .checked_add(jiff::Span::new().years(VALID_YEARS))
        .unwrap_or(today);
    let to_rcgen = |d: jiff::civil::Date| {
        rcgen::date_time_ymd(
            i32::from(d.year()),
            u8::try_from(d.month()).unwrap_or(1),
            u8::try_from(d.day()).unwrap_or(1),
        )
    };
    params.not_before = to_rcgen(start);
    params.not_after = to_rcgen(end);
}

fn new_token() -> Result<String, PkiError> {
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes).map_err(PkiError::Random)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The text of one of the PKI's own files, `None` if it does not exist or
/// is empty (cut short by a power cut; logged): what is missing is made
/// anew, as at first start.
fn read(path: &Path) -> Result<Option<String>, PkiError> {
    let Some(content) = state_file::read(path, "API credential", MAX_PKI_FILE).map_err(io(path))?
    else {
        return Ok(None);
    };
    String::from_utf8(content)
        .map(Some)
        .map_err(|e| io(path)(io::Error::new(io::ErrorKind::InvalidData, e)))
}

fn io(path: &Path) -> impl Fn(io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.into(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::host::state_file::tests::logged;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().mode() & 0o777
    }

    #[test]
    fn the_ca_and_token_are_made_once_and_kept() {
        let state = tempfile::tempdir().unwrap();
        let first = Pki::ensure(state.path(), "node1").unwrap();
        let second = Pki::ensure(state.path(), "node1").unwrap();
        assert_eq!(first.ca_pem, second.ca_pem);
        assert_eq!(first.admin_token, second.admin_token);
        assert_eq!(first.admin_token.len(), 2 * TOKEN_BYTES);
        let dir = state.path().join(PKI_DIR);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(CA_KEY)), 0o600);
        assert_eq!(mode(&dir.join(ADMIN_TOKEN)), 0o600);
        assert_eq!(mode(&dir.join(CA_CERT)), 0o644);

        // A CA missing its key (a crash between the writes) is made anew.
        std::fs::remove_file(dir.join(CA_KEY)).unwrap();
        let third = Pki::ensure(state.path(), "node1").unwrap();
        assert_ne!(third.ca_pem, first.ca_pem);
        assert_eq!(third.admin_token, first.admin_token);
    }

    #[test]
    fn empty_files_are_made_anew_and_logged_a_torn_key_is_refused() {
        let state = tempfile::tempdir().unwrap();
        let first = Pki::ensure(state.path(), "node1").unwrap();
        let dir = state.path().join(PKI_DIR);
        for name in [CA_KEY, CA_CERT, ADMIN_TOKEN] {
            std::fs::write(dir.join(name), "").unwrap();
            let log = logged(|| {
                let again = Pki::ensure(state.path(), "node1").unwrap();
                assert_ne!(
                    (again.ca_pem, again.admin_token),
                    (first.ca_pem.clone(), first.admin_token.clone())
                );
            });
            assert!(log.contains(name), "{log}");
        }
        // A CA key that is there but unreadable is not replaced behind the
        // operator's back: clients trust the CA it belongs to.
        let key = std::fs::read_to_string(dir.join(CA_KEY)).unwrap();
        std::fs::write(dir.join(CA_KEY), &key[..key.len() / 2]).unwrap();
        let error = Pki::ensure(state.path(), "node1").err().unwrap();
        assert!(error.to_string().contains(CA_KEY), "{error}");
    }

    #[test]
    fn a_serving_certificate_names_the_node_and_is_signed_by_the_ca() {
        let state = tempfile::tempdir().unwrap();
        let pki = Pki::ensure(state.path(), "node1").unwrap();
        let names = [
            "localhost",
            "127.0.0.1",
            "::1",
            "node1",
            "node1",
            "not a name!",
        ]
        .map(String::from);
        let issued = pki.issue_serving(&names).unwrap();
        let (_, ca_pem) = x509_parser::pem::parse_x509_pem(pki.ca_pem.as_bytes()).unwrap();
        let ca = ca_pem.parse_x509().unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(issued.cert_pem.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        assert_eq!(cert.issuer(), ca.subject());
        cert.verify_signature(Some(ca.public_key())).unwrap();
        let sans = cert.subject_alternative_name().unwrap().unwrap().value;
        let shown: Vec<String> = sans.general_names.iter().map(|n| n.to_string()).collect();
        assert_eq!(
            shown,
            [
                "DNSName(localhost)",
                "IPAddress(7f:00:00:01)",
                "IPAddress(00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:01)",
                "DNSName(node1)"
            ],
            "{shown:?}"
        );
        assert!(!issued.key_pem.contains(&pki.admin_token));
    }
}
