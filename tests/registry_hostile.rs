//! `RegistryClient` against a hostile registry on 127.0.0.1: a small HTTP
//! server that answers manifest, token and error requests with bodies that
//! never end. The client must stop reading at its caps, so the server's count
//! of what it managed to send stays far below what it offered.

use podkeeper::images::credentials::Credentials;
use podkeeper::images::registry::{RegistryClient, RegistryError};
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What the server offers as an endless body; it stops there so that a
/// client without caps ends too.
const OFFERED: u64 = 256 << 20;
/// Far above every cap (and the socket buffers between client and server),
/// far below [`OFFERED`].
const READ_AT_MOST: u64 = 32 << 20;

/// What the hostile registry does.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Manifests: 200 with an endless JSON-looking body.
    EndlessManifest,
    /// Manifests: 200 announcing a 10 GiB body.
    HugeContentLength,
    /// Manifests: 401 with a Bearer challenge; the token: an endless body.
    EndlessToken,
    /// Manifests: 404 with an endless error body.
    EndlessError,
}

struct Server {
    host: String,
    sent: Arc<AtomicU64>,
}

impl Server {
    fn start(behaviour: Behaviour) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let sent = Arc::new(AtomicU64::new(0));
        let (counter, realm_host) = (Arc::clone(&sent), host.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (counter, realm_host) = (Arc::clone(&counter), realm_host.clone());
                std::thread::spawn(move || answer(stream, behaviour, &realm_host, &counter));
            }
        });
        Server { host, sent }
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }
}

fn answer(stream: TcpStream, behaviour: Behaviour, host: &str, sent: &AtomicU64) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    reader.read_line(&mut request_line).unwrap();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
            break;
        }
    }
    let token = request_line.contains("/token");
    let mut stream = stream;
    let head = match (behaviour, token) {
        (Behaviour::EndlessManifest, _) | (Behaviour::EndlessToken, true) => {
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
                .to_string()
        }
        (Behaviour::HugeContentLength, _) => format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            10u64 << 30
        ),
        (Behaviour::EndlessToken, false) => {
            // Each connection answers one request: say so, or the client may
            // send the token request on this connection as it closes.
            let challenge = format!(
                "Bearer realm=\"http://{host}/token\",service=\"hostile\",scope=\"repository:app:pull\""
            );
            let _ = write!(
                stream,
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: {challenge}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            return;
        }
        (Behaviour::EndlessError, _) => {
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
                .to_string()
        }
    };
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    let chunk = [b' '; 64 << 10];
    let _ = stream.write_all(b"{");
    while sent.load(Ordering::SeqCst) < OFFERED {
        if stream.write_all(&chunk).is_err() {
            return;
        }
        sent.fetch_add(chunk.len() as u64, Ordering::SeqCst);
    }
}

async fn fetch(server: &Server) -> RegistryError {
    let client = RegistryClient::new(Credentials::default(), Vec::new());
    client
        .fetch_manifest(&format!("{}/app:v1", server.host))
        .await
        .unwrap_err()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endless_manifest_is_cut_off_at_its_cap() {
    let server = Server::start(Behaviour::EndlessManifest);
    let err = fetch(&server).await;
    assert!(matches!(err, RegistryError::Invalid(_)), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains(&format!(
            "registry {} sent a manifest larger than the 4194304 bytes allowed",
            server.host
        )),
        "{message}"
    );
    assert!(
        server.sent() < READ_AT_MOST,
        "the client read {} bytes",
        server.sent()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_announced_huge_manifest_is_refused_before_reading() {
    let server = Server::start(Behaviour::HugeContentLength);
    let err = fetch(&server).await;
    assert!(matches!(err, RegistryError::Invalid(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("larger than the 4194304 bytes allowed (10737418240 bytes announced)"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endless_token_response_is_cut_off_at_its_cap() {
    let server = Server::start(Behaviour::EndlessToken);
    let err = fetch(&server).await;
    assert!(matches!(err, RegistryError::Invalid(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("sent a token response larger than the 1048576 bytes allowed"),
        "{err}"
    );
    assert!(
        server.sent() < READ_AT_MOST,
        "the client read {} bytes",
        server.sent()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endless_error_body_is_read_only_in_part() {
    let server = Server::start(Behaviour::EndlessError);
    let err = fetch(&server).await;
    assert!(matches!(err, RegistryError::NotFound(_)), "{err:?}");
    assert!(err.to_string().contains(&server.host), "{err}");
    assert!(
        err.to_string().len() < 20 << 10,
        "{} bytes",
        err.to_string().len()
    );
    assert!(
        server.sent() < READ_AT_MOST,
        "the client read {} bytes",
        server.sent()
    );
}
