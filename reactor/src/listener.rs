//! One listening socket per shard on the same address, with SO_REUSEPORT so the kernel
//! spreads incoming connections across shards.
//!
//! SO_REUSEPORT would also let a second process (same user) bind the same port and
//! silently take half the connections. So before binding, an exclusive probe socket
//! (no SO_REUSEPORT) binds the address: it fails with EADDRINUSE if anyone, including
//! another chatixia-core, holds the port, and the start-up fails with a clear error.
//! The probe also resolves port 0 to the concrete port every shard then binds.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// Accept backlog per shard listener. The kernel caps it at `net.core.somaxconn`
/// (4096 by default on recent kernels); a large value absorbs connect storms instead
/// of dropping SYNs while a shard is busy.
pub const BACKLOG_DEFAULT: i32 = 4096;

/// Binds `n` listeners on `addr` (all on the same concrete port). Errors name the
/// address and say when the port is already in use.
pub fn bind_reuseport(addr: SocketAddr, n: usize) -> io::Result<(SocketAddr, Vec<TcpListener>)> {
    let probe = new_socket(addr)?;
    probe.set_reuse_address(true)?;
    if let Err(e) = probe.bind(&addr.into()) {
        return Err(describe(addr, e));
    }
    let bound = probe.local_addr()?.as_socket().unwrap_or(addr);
    drop(probe);
    let mut listeners = Vec::with_capacity(n);
    for _ in 0..n {
        let s = new_socket(bound)?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.set_nonblocking(true)?;
        s.bind(&bound.into()).map_err(|e| describe(bound, e))?;
        s.listen(BACKLOG_DEFAULT)?;
        listeners.push(s.into());
    }
    Ok((bound, listeners))
}

fn new_socket(addr: SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.cloexec(),
        Some(Protocol::TCP),
    )?;
    if addr.is_ipv6() {
        s.set_only_v6(false).ok();
    }
    Ok(s)
}

fn describe(addr: SocketAddr, e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::AddrInUse {
        io::Error::new(
            e.kind(),
            format!("cannot listen on {addr}: address already in use (is another server running?)"),
        )
    } else {
        io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_bind_fails_clearly() {
        let (addr, ls) = bind_reuseport("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        assert_eq!(ls.len(), 2);
        assert_ne!(addr.port(), 0);
        for l in &ls {
            assert_eq!(l.local_addr().unwrap(), addr);
        }
        let err = bind_reuseport(addr, 1).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains("already in use"), "{err}");
    }
}
