//! End-to-end: nothing secret without credentials. The plain HTTP port
//! answers health checks only; the HTTPS API answers only callers with a
//! known token or a client certificate from the configured CA; a viewer
//! reads but cannot enter a container; other local users can read neither
//! the credentials the agent keeps nor the containers' logs.
//!
//! Needs root (a private containerd, and `setpriv` to act as nobody).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use common::agent::{request, start_with_busybox, Agent, NODE};
use common::containerd::e2e_enabled;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// What the pod's environment holds and its container prints: must never
/// reach a caller without credentials.
const SECRET: &str = "hunter2-not-for-anyone";

const POD: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: podkeeper.local/busybox:latest
    env: [{name: PASSWORD, value: SECRET}]
    command: [sh, -c, 'echo "password is $PASSWORD"; sleep 3600']
"#;

const VIEWER: &str = "viewer-token-0123456789";
const OPS: &str = "ops-token-0123456789";

/// Every kind of path the API serves, with the pod in it.
fn paths() -> Vec<String> {
    let pod = format!("web-{NODE}");
    [
        "/pods",
        "/api/v1/pods",
        "/api/v1/namespaces/default/pods",
        "/api/v1/namespaces/default/pods/POD",
        "/api/v1/namespaces/default/pods/POD/log",
        "/api/v1/pods?watch=true&timeoutSeconds=1",
        "/api/v1/events",
        "/describe/pods/default/POD",
        "/describe/pods/default/POD?output=json",
        "/metrics",
        "/api",
        "/api/v1",
        "/apis",
        "/version",
        "/openapi/v2",
        "/no/such/path",
    ]
    .iter()
    .map(|p| p.replace("POD", &pod))
    .collect()
}

/// A client of the agent's HTTPS API trusting the CA of its kubeconfig,
/// optionally presenting a client certificate.
struct Client {
    config: Arc<rustls::ClientConfig>,
    address: String,
}

impl Client {
    fn new(agent: &Agent, identity: Option<(&str, &str)>) -> Client {
        let kubeconfig: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(agent.kubeconfig()).unwrap()).unwrap();
        let ca = kubeconfig["clusters"][0]["cluster"]["certificate-authority-data"]
            .as_str()
            .expect("the kubeconfig embeds the CA");
        let ca = base64::engine::general_purpose::STANDARD
            .decode(ca)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(&ca).unwrap())
            .unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let config = match identity {
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        Client {
            config: Arc::new(config),
            address: agent.api_address().to_string(),
        }
    }

    /// A new TLS connection to the API.
    fn connect(&self) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
        let tcp = TcpStream::connect(&self.address).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let tls = rustls::ClientConnection::new(self.config.clone(), name).unwrap();
        rustls::StreamOwned::new(tls, tcp)
    }

    /// GET `path` with an optional bearer token: (status code, body).
    fn get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let header = token.map(|t| format!("Authorization: Bearer {t}"));
        let headers: Vec<&str> = header.iter().map(String::as_str).collect();
        request(self.connect(), path, &headers).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// Sends a raw request head and returns the status code.
    fn send(&self, head: &str) -> u16 {
        let mut stream = self.connect();
        stream.write_all(head.as_bytes()).unwrap();
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        String::from_utf8_lossy(&response)
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }
}

fn admin_token(agent: &Agent) -> String {
    std::fs::read_to_string(agent.state.join("pki/admin.token"))
        .unwrap()
        .trim()
        .to_string()
}

fn assert_refused(code: u16, body: &str, what: &str) {
    assert_eq!(code, 401, "{what}: {body}");
    assert!(body.contains("\"kind\":\"Status\""), "{what}: {body}");
    assert!(
        !body.contains(SECRET) && !body.contains(&format!("web-{NODE}")),
        "{what} leaked pod data: {body}"
    );
}

#[test]
fn no_path_of_either_listener_answers_without_credentials() {
    if !e2e_enabled("no_path_of_either_listener_answers_without_credentials") {
        return;
    }
    let (_containerd, agent) = start_with_busybox("e2e-api-auth");
    agent.write_manifest("web.yaml", &POD.replace("SECRET", SECRET));
    let pod = format!("web-{NODE}");
    agent.wait_running(&pod, 1, Duration::from_secs(60));
    let admin = admin_token(&agent);
    let https = Client::new(&agent, None);

    for path in paths() {
        let (code, body) = agent.get_plain(&path, &[]).unwrap();
        assert_refused(code, &body, &format!("plain {path}"));
        assert!(body.contains("kubeconfig"), "the 401 says how: {body}");
        // The plain port never takes credentials.
        let (code, body) = agent
            .get_plain(&path, &[&format!("Authorization: Bearer {admin}")])
            .unwrap();
        assert_refused(code, &body, &format!("plain {path} with the admin token"));

        let (code, body) = https.get(&path, None);
        assert_refused(code, &body, &format!("https {path} without a token"));
        let (code, body) = https.get(&path, Some("not-a-token"));
        assert_refused(code, &body, &format!("https {path} with a wrong token"));
        let (code, body) = https.get(&path, Some(&admin[..admin.len() - 1]));
        assert_refused(code, &body, &format!("https {path} with part of the token"));
    }
    for path in ["/healthz", "/livez", "/readyz"] {
        let (code, _) = agent.get_plain(path, &[]).unwrap();
        assert_eq!(code, 200, "plain {path}");
    }

    // The admin token of the kubeconfig reads everything.
    let (code, body) = https.get("/api/v1/pods", Some(&admin));
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(SECRET), "a full user sees the spec");
    let (code, body) = https.get(
        &format!("/api/v1/namespaces/default/pods/{pod}/log"),
        Some(&admin),
    );
    // Streamed (chunked): the line is in the body.
    assert_eq!(
        (code, body.contains(&format!("password is {SECRET}\n"))),
        (200, true),
        "{body}"
    );
}

#[test]
fn viewers_read_but_cannot_enter_and_client_certificates_log_in() {
    if !e2e_enabled("viewers_read_but_cannot_enter_and_client_certificates_log_in") {
        return;
    }
    let (containerd, mut agent) = start_with_busybox("e2e-api-viewers");
    let dir = containerd.dir().join("credentials");
    std::fs::create_dir_all(&dir).unwrap();
    let tokens = dir.join("tokens.csv");
    std::fs::write(
        &tokens,
        format!("{VIEWER},vera,1001,\"team,podkeeper:viewers\"\n{OPS},otto,1002,ops\n"),
    )
    .unwrap();
    // A token file others could read is refused: the agent does not start.
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o644)).unwrap();
    let flags = |ca: &Path| {
        vec![
            "--token-auth-file".to_string(),
            tokens.display().to_string(),
            "--client-ca-file".to_string(),
            ca.display().to_string(),
        ]
    };
    let (ca_pem, issuer) = client_ca();
    let ca = dir.join("client-ca.crt");
    std::fs::write(&ca, &ca_pem).unwrap();
    let args = flags(&ca);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let refused = agent.restart_with_flags(&args).unwrap_err().to_string();
    assert!(
        refused.contains("tokens.csv") && refused.contains("0644"),
        "{refused}"
    );
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
    agent.restart_with_flags(&args).unwrap();
    agent.write_manifest("web.yaml", &POD.replace("SECRET", SECRET));
    let pod = format!("web-{NODE}");
    agent.wait_running(&pod, 1, Duration::from_secs(60));

    let https = Client::new(&agent, None);
    let exec = format!("/api/v1/namespaces/default/pods/{pod}/exec?command=sh&stdin=true");
    let post = "POST /api/v1/namespaces/default/pods HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\nAuthorization: Bearer TOKEN\r\n\r\n";

    let (code, body) = https.get("/api/v1/pods", Some(VIEWER));
    assert_eq!(code, 200, "{body}");
    let (code, body) = https.get(&exec, Some(VIEWER));
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("vera") && body.contains("podkeeper:viewers"),
        "{body}"
    );
    assert_eq!(https.send(&post.replace("TOKEN", VIEWER)), 403);

    // A full user passes authorization (and meets what the API serves).
    let (code, body) = https.get(&exec, Some(OPS));
    assert_ne!(code, 403, "{body}");
    assert_ne!(code, 401, "{body}");
    assert_eq!(https.send(&post.replace("TOKEN", OPS)), 405);

    // Client certificates from the client CA: CN is the user, O the groups.
    let (cert, key) = client_certificate(&issuer, "carol", &["podkeeper:viewers"]);
    let carol = Client::new(&agent, Some((&cert, &key)));
    let (code, body) = carol.get("/api/v1/pods", None);
    assert_eq!(code, 200, "{body}");
    let (code, body) = carol.get(&exec, None);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("carol"), "{body}");
    let (cert, key) = client_certificate(&issuer, "dave", &[]);
    let (code, body) = Client::new(&agent, Some((&cert, &key))).get(&exec, None);
    assert!(code != 401 && code != 403, "{code} {body}");

    // A certificate from another CA gets no connection at all.
    let (_, stranger) = client_ca();
    let (cert, key) = client_certificate(&stranger, "mallory", &[]);
    let mut stream = Client::new(&agent, Some((&cert, &key))).connect();
    let sent = stream
        .write_all(b"GET /api/v1/pods HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .and_then(|()| {
            let mut response = Vec::new();
            stream.read_to_end(&mut response).map(|_| response)
        });
    assert!(
        sent.as_ref().map_or(true, |r| r.is_empty()),
        "a stranger's certificate got an answer: {:?}",
        sent.map(|r| String::from_utf8_lossy(&r).into_owned())
    );

    // Stock kubectl with a viewer's token reads pods.
    let out = Command::new("kubectl")
        .env("KUBECONFIG", agent.kubeconfig())
        .env("HOME", containerd.dir())
        .args(["--token", VIEWER, "get", "pods", "-o", "name"])
        .output()
        .expect("kubectl");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&pod),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn other_local_users_read_no_credentials_keys_or_logs() {
    if !e2e_enabled("other_local_users_read_no_credentials_keys_or_logs") {
        return;
    }
    let (_containerd, agent) = start_with_busybox("e2e-api-local-users");
    agent.write_manifest("web.yaml", &POD.replace("SECRET", SECRET));
    let pod = format!("web-{NODE}");
    agent.wait_running(&pod, 1, Duration::from_secs(60));
    let log = find_log(&agent.logs).expect("the container's log file");
    let files = [
        agent.kubeconfig(),
        agent.state.join("pki/ca.key"),
        agent.state.join("pki/admin.token"),
        log,
    ];
    for file in &files {
        let root = std::fs::read_to_string(file).unwrap();
        assert!(!root.is_empty(), "{}", file.display());
        let out = as_nobody(&["cat", &file.display().to_string()]);
        assert!(
            !out.status.success() && out.stdout.is_empty(),
            "nobody read {}",
            file.display()
        );
    }
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&agent.kubeconfig()), 0o600);
    assert_eq!(mode(&agent.state.join("pki")), 0o700);
    // The root-only socket serves the whole API; nobody cannot connect.
    let socket = agent.http_socket().display().to_string();
    let out = as_nobody(&[
        "curl",
        "-sS",
        "--unix-socket",
        &socket,
        "http://x/api/v1/pods",
    ]);
    assert!(
        !out.status.success() && !String::from_utf8_lossy(&out.stdout).contains(SECRET),
        "nobody used the root-only socket"
    );
    // Over TCP nobody gets what anyone without credentials gets: a 401.
    let url = format!("http://{}/api/v1/pods", agent.http_address());
    let out = as_nobody(&["curl", "-sS", "-w", "\n%{http_code}", &url]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("401") && !text.contains(SECRET), "{text}");
}

fn as_nobody(command: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(command)
        .output()
        .expect("setpriv")
}

/// The first `*.log` file under `dir`.
fn find_log(dir: &Path) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(dir).ok()? {
        let path = entry.ok()?.path();
        if path.is_dir() {
            if let Some(found) = find_log(&path) {
                return Some(found);
            }
        } else if path.extension().is_some_and(|e| e == "log") {
            return Some(path);
        }
    }
    None
}

/// A client CA: its PEM and an issuer for client certificates.
fn client_ca() -> (String, rcgen::Issuer<'static, rcgen::KeyPair>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test client CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), rcgen::Issuer::new(params, key))
}

/// A client certificate for `user` in `groups`: (cert PEM, key PEM).
fn client_certificate(
    issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
    user: &str,
    groups: &[&str],
) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, user);
    for group in groups {
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, *group);
    }
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}
