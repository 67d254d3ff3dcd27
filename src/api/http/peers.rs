//! Connections per peer: each client may hold at most [`PER_PEER`] of a
//! listener's connections, so one that opens many kept-alive connections
//! cannot take the whole listener and starve everyone else's `/readyz`.
//!
//! Who a peer is depends on the listener (see [`Peer`]): on the unix
//! socket a process, on TCP the user owning a local client's socket, or a
//! remote client's address. Any listener uses the same two steps: wait for
//! a free connection in the listener's total, then, with the peer known
//! after `accept`, [`PeerLimits::try_acquire`]; a peer over its share is
//! closed at once, without holding a connection of the total.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::net::UnixStream;

use crate::host::socket_owner;

/// Connections one peer may hold on one listener: a quarter of its
/// total, so at least four clients always have room.
pub const PER_PEER: usize = 16;

/// Whom a connection comes from, as far as limits go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Peer {
    /// A process on the unix socket, by pid (`SO_PEERCRED`). Only root
    /// may open that socket, so every client has the same uid: only the
    /// process tells them apart.
    Process(i32),
    /// A local user: the owner of the client's socket of a TCP connection
    /// from this host. Every local client has the same address, and any
    /// of them can pick another of `127.0.0.0/8`; the owner is what they
    /// cannot choose.
    User(u32),
    /// A remote client's IPv4 address, or its IPv6 `/64` (one host
    /// commonly has a whole `/64` to pick addresses from).
    Address(IpAddr),
    /// A peer the kernel would not name: all of them count as one.
    Unknown,
}

impl Peer {
    /// The peer of a connection accepted on the unix socket.
    pub fn of_unix(stream: &UnixStream) -> Peer {
        match stream.peer_cred() {
            Ok(cred) => cred.pid().map_or(Peer::User(cred.uid()), Peer::Process),
            Err(_) => Peer::Unknown,
        }
    }

    /// The peer of a TCP connection accepted on `local` from `remote`:
    /// the owner of the client's socket when it is on this host, else the
    /// remote address.
    pub fn of_tcp(local: SocketAddr, remote: SocketAddr) -> Peer {
        let ip = remote.ip().to_canonical();
        if ip.is_loopback() || ip == local.ip().to_canonical() {
            if let Some(uid) = socket_owner::tcp_owner(remote, local) {
                return Peer::User(uid);
            }
        }
        match ip {
            IpAddr::V4(_) => Peer::Address(ip),
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & (u128::MAX << 64);
                Peer::Address(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
        }
    }
}

/// How many connections each peer holds on one listener. Peers holding
/// none are forgotten, so this holds at most as many entries as the
/// listener has connections.
#[derive(Debug, Clone)]
pub struct PeerLimits {
    per_peer: usize,
    held: Arc<Mutex<HashMap<Peer, usize>>>,
}

impl PeerLimits {
    pub fn new(per_peer: usize) -> Self {
        PeerLimits {
            per_peer,
            held: Arc::default(),
        }
    }

    /// One more connection for `peer`, held until the permit is dropped,
    /// or `None` when the peer holds its share already.
    pub fn try_acquire(&self, peer: Peer) -> Option<PeerPermit> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let count = held.entry(peer).or_default();
        if *count >= self.per_peer {
            return None;
        }
        *count += 1;
        Some(PeerPermit {
            held: self.held.clone(),
            peer,
        })
    }
}

/// One connection of a peer; dropping it gives the connection back.
#[derive(Debug)]
pub struct PeerPermit {
    held: Arc<Mutex<HashMap<Peer, usize>>>,
    peer: Peer,
}

impl Drop for PeerPermit {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = held.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn a_peer_gets_its_share_and_others_keep_theirs() {
        let limits = PeerLimits::new(2);
        let greedy = Peer::Process(100);
        let first = limits.try_acquire(greedy).expect("first");
        let _second = limits.try_acquire(greedy).expect("second");
        assert!(limits.try_acquire(greedy).is_none());
        let _other = limits.try_acquire(Peer::Process(200)).expect("other");
        drop(first);
        let _again = limits.try_acquire(greedy).expect("given back");
        assert!(limits.try_acquire(greedy).is_none());
    }

    #[test]
    fn peers_holding_nothing_are_forgotten() {
        let limits = PeerLimits::new(1);
        for pid in 0..1000 {
            drop(limits.try_acquire(Peer::Process(pid)).expect("permit"));
        }
        let kept = limits.clone();
        let _held = limits.try_acquire(Peer::User(0)).expect("permit");
        assert_eq!(kept.held.lock().expect("lock").len(), 1);
    }

    #[test]
    fn local_tcp_clients_are_told_apart_by_user_not_address() {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let local = listener.local_addr().expect("address");
        let _client = std::net::TcpStream::connect(local).expect("connect");
        let (_accepted, remote) = listener.accept().expect("accept");
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        assert_eq!(Peer::of_tcp(local, remote), Peer::User(me));
    }

    #[test]
    fn remote_clients_are_their_address_or_their_ipv6_prefix() {
        let local: SocketAddr = "192.0.2.1:10255".parse().expect("address");
        let v4: SocketAddr = "198.51.100.7:4000".parse().expect("address");
        assert_eq!(Peer::of_tcp(local, v4), Peer::Address(v4.ip()));
        let a: SocketAddr = "[2001:db8:1:2:aaaa::1]:4000".parse().expect("address");
        let b: SocketAddr = "[2001:db8:1:2:bbbb::2]:4001".parse().expect("address");
        assert_eq!(Peer::of_tcp(local, a), Peer::of_tcp(local, b));
        let mapped: SocketAddr = "[::ffff:198.51.100.7]:4000".parse().expect("address");
        assert_eq!(Peer::of_tcp(local, mapped), Peer::Address(v4.ip()));
    }

    #[tokio::test]
    async fn unix_clients_are_told_apart_by_process() {
        let (ours, _theirs) = UnixStream::pair().expect("pair");
        assert_eq!(
            Peer::of_unix(&ours),
            Peer::Process(i32::try_from(std::process::id()).expect("pid"))
        );
    }
}
