//! End-to-end: one client cannot take the HTTP API for itself. A process
//! holding 16 kept-alive connections gets its 17th closed at once, on TCP
//! and on the unix socket, while another user (TCP) or another process
//! (unix socket) is still answered, and `/metrics` counts the refusals.
//!
//! Needs root (a private containerd, and `curl` run as `nobody`).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use common::agent::start_with_busybox;
use common::containerd::e2e_enabled;

/// What one peer may hold (`api::http::peers::PER_PEER`).
const PER_PEER: usize = 16;

/// The uid of `nobody`.
const NOBODY: u32 = 65534;

const REQUEST: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: podkeeper\r\n\r\n";

/// Sends `/healthz` on `stream` and reads the answer, leaving the
/// connection open; `None` when the server closed it instead.
fn healthz<S: Read + Write>(stream: &mut S) -> Option<String> {
    stream.write_all(REQUEST).ok()?;
    let mut answer = Vec::new();
    let mut buffer = [0u8; 1024];
    while !answer.ends_with(b"\r\n\r\nok") {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return None,
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
        }
    }
    Some(String::from_utf8_lossy(&answer).into_owned())
}

/// `curl` as `uid` with `args`: the HTTP code and the body.
fn curl(uid: u32, args: &[&str]) -> (String, String) {
    let output = Command::new("curl")
        .uid(uid)
        .args(["-s", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("running curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.to_string(), body.to_string())
}

#[test]
fn one_client_gets_sixteen_connections_and_others_still_get_answers() {
    if !e2e_enabled("one_client_gets_sixteen_connections_and_others_still_get_answers") {
        return;
    }
    let (_containerd, agent) = start_with_busybox("e2e-http-limits");
    let address = agent.http_address().to_string();
    let timeout = Some(Duration::from_secs(10));

    // TCP: the test's 16 are served, its 17th is closed at once; nobody,
    // another local user on the same 127.0.0.1, is still answered.
    let mut held: Vec<TcpStream> = (0..PER_PEER)
        .map(|_| {
            let mut stream = TcpStream::connect(&address).expect("connect");
            stream.set_read_timeout(timeout).expect("timeout");
            healthz(&mut stream).expect("one of the first 16 is served");
            stream
        })
        .collect();
    let mut extra = TcpStream::connect(&address).expect("connect");
    extra.set_read_timeout(timeout).expect("timeout");
    assert_eq!(healthz(&mut extra), None, "the 17th was served");
    let url = format!("http://{address}/readyz");
    let (code, body) = curl(NOBODY, &[&url]);
    assert_eq!(code, "200", "another user was not answered: {body}");
    held.clear();

    // The unix socket: the same for processes (all of them are root).
    let socket = agent.state.join("podkeeper-http.sock");
    let socket = socket.to_str().expect("utf-8 path");
    let mut held: Vec<UnixStream> = (0..PER_PEER)
        .map(|_| {
            let mut stream = UnixStream::connect(socket).expect("connect");
            stream.set_read_timeout(timeout).expect("timeout");
            healthz(&mut stream).expect("one of the first 16 is served");
            stream
        })
        .collect();
    let mut extra = UnixStream::connect(socket).expect("connect");
    extra.set_read_timeout(timeout).expect("timeout");
    assert_eq!(healthz(&mut extra), None, "the 17th was served");
    let (code, metrics) = curl(0, &["--unix-socket", socket, "http://podkeeper/metrics"]);
    assert_eq!(code, "200", "another process was not answered: {metrics}");
    held.clear();
    assert!(
        metrics.contains("podkeeper_http_connections_refused_total 2\n"),
        "{metrics}"
    );
}
