//! systemd's readiness protocol (`sd_notify(3)`), for `Type=notify` units.
//!
//! The protocol is one datagram of `KEY=VALUE` lines to the unix socket named
//! in `$NOTIFY_SOCKET`, so it is written here with the standard library
//! rather than taken as a dependency. Without `$NOTIFY_SOCKET` (not started
//! by systemd) every call does nothing; a failure to notify is logged and
//! never stops the agent, because systemd's start timeout already reports an
//! agent that never became ready.

use std::os::unix::net::UnixDatagram;

use tracing::{debug, warn};

/// The agent has read its manifests once and runs the pods they name.
pub fn ready() {
    send("READY=1\nSTATUS=running the manifest directory's pods");
}

/// The agent is shutting down; the pods keep running under containerd.
pub fn stopping() {
    send("STOPPING=1\nSTATUS=stopping; pods keep running under containerd");
}

fn send(message: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    match send_to(&path, message) {
        Ok(()) => debug!(message, "notified systemd"),
        Err(e) => warn!(socket = ?path, error = %e, "cannot notify systemd"),
    }
}

/// Sends one datagram to a filesystem socket path or, for a leading `@`, to
/// a Linux abstract socket (systemd uses both).
fn send_to(path: &std::ffi::OsStr, message: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::SocketAddr;

    let bytes = path.as_bytes();
    let address = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(path)?,
    };
    let socket = UnixDatagram::unbound()?;
    socket.send_to_addr(message.as_bytes(), &address)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        send_to(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("podkeeper-notify-test-{}", std::process::id());
        let address = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
        let receiver = UnixDatagram::bind_addr(&address).unwrap();
        send_to(std::ffi::OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }
}
