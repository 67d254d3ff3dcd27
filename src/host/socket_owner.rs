//! Which user owns the other end of a local TCP connection, asked of the
//! kernel through `NETLINK_SOCK_DIAG` (what `ss -e` shows as `uid:`).
//!
//! Why: every local client of a loopback listener has the same address,
//! and any of them can pick another one of `127.0.0.0/8`, so an address
//! tells local clients neither apart nor together; the owner of the
//! client's socket does both. The lookup names the exact socket by its
//! four-tuple, so it costs one request and one answer, never a dump.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `SOCK_DIAG_BY_FAMILY` from `linux/sock_diag.h`.
const SOCK_DIAG_BY_FAMILY: u16 = 20;

/// Length of `struct nlmsghdr`.
const NLMSG_HEADER: usize = 16;

/// Length of `struct inet_diag_req_v2`.
const REQUEST: usize = 56;

/// Length of `struct inet_diag_msg`, and where its `idiag_uid` is.
const MESSAGE: usize = 72;
const UID_AT: usize = 64;

/// The uid owning the local TCP socket whose own address is `client` and
/// whose peer is `server`: the client's end of a connection this host
/// accepted from `client` on `server`. `None` when no such socket is on
/// this host (a remote client) or the kernel does not say.
pub fn tcp_owner(client: SocketAddr, server: SocketAddr) -> Option<u32> {
    let request = request(client, server)?;
    let answer = ask(&request).ok()?;
    owner(&answer)
}

/// The whole netlink message asking for the one socket `client` ↔
/// `server`; `None` when the two are not of one address family.
fn request(client: SocketAddr, server: SocketAddr) -> Option<Vec<u8>> {
    let (family, source, destination) =
        match (client.ip().to_canonical(), server.ip().to_canonical()) {
            (IpAddr::V4(c), IpAddr::V4(s)) => {
                (libc::AF_INET, words_v4(c.octets()), words_v4(s.octets()))
            }
            (IpAddr::V6(c), IpAddr::V6(s)) => (libc::AF_INET6, c.octets(), s.octets()),
            _ => return None,
        };
    let length = NLMSG_HEADER + REQUEST;
    let mut message = Vec::with_capacity(length);
    // struct nlmsghdr
    message.extend_from_slice(&u32::try_from(length).ok()?.to_ne_bytes());
    message.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    message.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    message.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    message.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
                                                    // struct inet_diag_req_v2
    message.push(u8::try_from(family).ok()?);
    message.push(u8::try_from(libc::IPPROTO_TCP).ok()?);
    message.push(0); // no extensions
    message.push(0);
    message.extend_from_slice(&u32::MAX.to_ne_bytes()); // any state
                                                        // struct inet_diag_sockid: ports and addresses in network order
    message.extend_from_slice(&client.port().to_be_bytes());
    message.extend_from_slice(&server.port().to_be_bytes());
    message.extend_from_slice(&source);
    message.extend_from_slice(&destination);
    message.extend_from_slice(&0u32.to_ne_bytes()); // any interface
    message.extend_from_slice(&u32::MAX.to_ne_bytes()); // INET_DIAG_NOCOOKIE
    message.extend_from_slice(&u32::MAX.to_ne_bytes());
    Some(message)
}

/// An IPv4 address in the first of the four address words.
fn words_v4(octets: [u8; 4]) -> [u8; 16] {
    let mut words = [0; 16];
    words[..4].copy_from_slice(&octets);
    words
}

/// Sends `request` to the kernel and returns its answer. The kernel
/// answers an exact lookup while the request is sent, so the answer is
/// read without waiting: nothing here can hold up an accept loop.
fn ask(request: &[u8]) -> io::Result<Vec<u8>> {
    // SAFETY: plain socket(2); the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socket returned a new descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_nl is plain data; zeroed is a valid value.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: a valid descriptor, a buffer of the length given and an
    // address of the size given.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
            std::ptr::from_ref(&kernel).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut answer = vec![0u8; 1024];
    // SAFETY: a valid descriptor and a buffer of the length given.
    let received = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            answer.as_mut_ptr().cast(),
            answer.len(),
            libc::MSG_DONTWAIT,
        )
    };
    let received = usize::try_from(received).map_err(|_| io::Error::last_os_error())?;
    answer.truncate(received);
    Ok(answer)
}

/// The `idiag_uid` of an answer that is one `inet_diag_msg`; `None` for
/// an error answer (no such socket) or anything malformed.
fn owner(answer: &[u8]) -> Option<u32> {
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(answer.get(at..at + 4)?.try_into().ok()?))
    };
    let length = usize::try_from(word(0)?).ok()?;
    let kind = u16::from_ne_bytes(answer.get(4..6)?.try_into().ok()?);
    if kind != SOCK_DIAG_BY_FAMILY || length < NLMSG_HEADER + MESSAGE || length > answer.len() {
        return None;
    }
    word(NLMSG_HEADER + UID_AT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, TcpListener, TcpStream};
    use std::os::fd::AsFd;

    #[test]
    fn names_the_owner_of_the_client_end_of_a_local_connection() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let server = listener.local_addr().expect("address");
        let connected = TcpStream::connect(server).expect("connect");
        let (_accepted, client) = listener.accept().expect("accept");
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        assert_eq!(tcp_owner(client, server), Some(me));
        // The answer is about the client's socket itself: its inode.
        let answer = ask(&request(client, server).expect("request")).expect("answer");
        let inode = &answer[NLMSG_HEADER + UID_AT + 4..NLMSG_HEADER + MESSAGE];
        let st = crate::host::fd::fstat(connected.as_fd()).expect("fstat");
        assert_eq!(
            u64::from(u32::from_ne_bytes(inode.try_into().expect("word"))),
            st.st_ino
        );
    }

    #[test]
    fn knows_no_owner_for_a_socket_that_is_not_there() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let server = listener.local_addr().expect("address");
        // Port 1 of 127.0.0.9 has no socket connected to the listener.
        let nobody = SocketAddr::from((Ipv4Addr::new(127, 0, 0, 9), 1));
        assert_eq!(tcp_owner(nobody, server), None);
        assert_eq!(
            tcp_owner(nobody, "[::1]:80".parse().expect("address")),
            None
        );
    }

    #[test]
    fn a_short_or_error_answer_has_no_owner() {
        assert_eq!(owner(&[]), None);
        let length = NLMSG_HEADER + MESSAGE;
        let mut error = vec![0u8; length];
        error[..4].copy_from_slice(&u32::try_from(length).expect("length").to_ne_bytes());
        error[4..6].copy_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
        assert_eq!(owner(&error), None);
    }
}
