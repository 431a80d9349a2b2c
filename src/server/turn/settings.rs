//! The embedded TURN server's settings (checked once at start from the flags by
//! `config::TurnFlags::settings`), and its listening sockets, bound on the control
//! thread before the shards start.

use std::net::{IpAddr, SocketAddr};

use ::turn::auth::Nonces;
use ::turn::policy::{Cidr, PeerPolicy};

/// Parses `LO-HI` (`--turn-relay-ports`).
pub fn parse_ports(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("--turn-relay-ports {s:?}: expected LO-HI, two ports with LO <= HI");
    let (lo, hi) = s.split_once('-').ok_or_else(bad)?;
    let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
    let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
    if lo == 0 || lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}
use socket2::{Domain, Protocol, Socket, Type};

/// How long a nonce stays fresh (then 438 Stale Nonce and a new one), as coturn's
/// default.
pub const NONCE_LIFETIME_SECS: u64 = 600;

/// Revoked peers each shard remembers (a credential of theirs issued before the
/// revocation is refused for one credential lifetime). When full, the oldest is
/// forgotten and credentials issued before its revocation are refused for every peer
/// (see `::turn::server`): more refusals, never fewer.
pub const REVOKED_PEERS_MAX: usize = 65_536;

/// The embedded TURN server's settings (immutable after start).
#[derive(Debug, Clone)]
pub struct TurnSettings {
    /// UDP and TCP (`--turn-listen`).
    pub listen: Vec<SocketAddr>,
    /// TLS over TCP (`--turn-tls-listen`).
    pub tls_listen: Vec<SocketAddr>,
    /// The IP of relayed addresses (advertised).
    pub relay_ip: IpAddr,
    /// The IP relay sockets bind to.
    pub relay_bind: IpAddr,
    /// All shards' relay ports (inclusive).
    pub relay_ports: (u16, u16),
    pub realm: String,
    pub secret: Vec<u8>,
    /// Key of the stateless nonces (random per process: a restart makes nonces stale).
    pub nonce_key: [u8; 32],
    pub lifetime_max_secs: u64,
    pub allocations_per_shard_max: usize,
    pub allocations_per_user_max: usize,
    pub allocations_per_ip_max: usize,
    pub permissions_max: usize,
    pub channels_max: usize,
    pub bytes_per_sec_max: u64,
    pub tcp_connections_max: usize,
    /// TCP/TLS connections of one client address on one shard.
    pub tcp_connections_per_ip_max: usize,
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
    /// Lifetime of the REST credentials `/api/config` hands out.
    pub credential_ttl_secs: u64,
    /// Revocations in the data directory at start `(peer, at)`: every shard refuses
    /// their older credentials.
    pub revoked_at_start: Vec<(String, u64)>,
}

impl TurnSettings {
    /// Shard `shard`'s relay ports: the range cut into `shards` contiguous parts.
    pub fn shard_ports(&self, shard: usize, shards: usize) -> (u16, u16) {
        let (lo, hi) = (
            usize::from(self.relay_ports.0),
            usize::from(self.relay_ports.1),
        );
        let span = hi - lo + 1;
        let a = lo + span * shard / shards;
        let b = lo + span * (shard + 1) / shards - 1;
        (a as u16, b as u16)
    }

    /// The sans-IO server's settings for shard `shard` of `shards`.
    pub fn server_config(&self, shard: usize, shards: usize) -> ::turn::server::Config {
        let listen: Vec<SocketAddr> = self
            .listen
            .iter()
            .chain(&self.tls_listen)
            .copied()
            .collect();
        let mut own_ips = vec![self.relay_ip];
        own_ips.extend(
            listen
                .iter()
                .map(|a| a.ip())
                .filter(|ip| !ip.is_unspecified()),
        );
        ::turn::server::Config {
            realm: self.realm.clone(),
            secret: self.secret.clone(),
            nonces: Nonces::new(self.nonce_key, NONCE_LIFETIME_SECS),
            relay_ip: self.relay_ip,
            ports: self.shard_ports(shard, shards),
            lifetime_max_secs: self.lifetime_max_secs,
            allocations_max: self.allocations_per_shard_max,
            allocations_per_user_max: self.allocations_per_user_max,
            allocations_per_ip_max: self.allocations_per_ip_max,
            permissions_max: self.permissions_max,
            channels_max: self.channels_max,
            bytes_per_sec_max: self.bytes_per_sec_max,
            policy: PeerPolicy {
                allow: self.allow.clone(),
                deny: self.deny.clone(),
                listen,
                own_ips,
                relay_ports: self.relay_ports,
            },
            credential_ttl_secs: self.credential_ttl_secs,
            revoked_max: REVOKED_PEERS_MAX,
        }
    }

    /// The URLs `/api/config` advertises: UDP and TCP on each `--turn-listen` port, at
    /// the relay IP; `turns:` (TLS over TCP) on each `--turn-tls-listen` port, at
    /// `tls_host` (the name the client reached the server by, which the certificate
    /// names) or else the relay IP.
    pub fn urls(&self, tls_host: Option<&str>) -> Vec<String> {
        let ip = match self.relay_ip {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        };
        let mut out = Vec::new();
        let mut ports: Vec<u16> = self.listen.iter().map(|a| a.port()).collect();
        ports.dedup();
        for p in ports {
            out.push(format!("turn:{ip}:{p}?transport=udp"));
            out.push(format!("turn:{ip}:{p}?transport=tcp"));
        }
        let host = tls_host.unwrap_or(&ip);
        let mut ports: Vec<u16> = self.tls_listen.iter().map(|a| a.port()).collect();
        ports.dedup();
        for p in ports {
            out.push(format!("turns:{host}:{p}?transport=tcp"));
        }
        out
    }
}

/// The host of a `Host` header value (`name`, `name:port`, `[v6]:port`), when it is a
/// DNS name or an IP literal; `None` for anything else (it goes into a URL).
pub fn host_name(host: &str) -> Option<&str> {
    let h = host.trim();
    let name = if h.starts_with('[') {
        let end = h.find(']')?;
        let inner = &h[1..end];
        inner.parse::<std::net::Ipv6Addr>().ok()?;
        &h[..=end]
    } else {
        match h.rsplit_once(':') {
            Some((n, port)) if port.parse::<u16>().is_ok() => n,
            _ => h,
        }
    };
    let dns = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    (name.starts_with('[') || dns).then_some(name)
}

/// One shard's listening sockets: a UDP socket and a TCP listener per `--turn-listen`
/// address, in that order, and a TCP listener per `--turn-tls-listen` address.
#[derive(Default)]
pub struct ShardSockets {
    pub udp: Vec<std::net::UdpSocket>,
    pub tcp: Vec<std::net::TcpListener>,
    pub tls: Vec<std::net::TcpListener>,
}

/// Kernel receive buffer asked for each TURN UDP socket (listening and relay); the
/// kernel caps it at net.core.rmem_max. A burst that outruns the shard is dropped by
/// the kernel past it, as any UDP relay's would be.
pub const UDP_RCVBUF_BYTES: usize = 4 << 20;

fn udp_socket(addr: SocketAddr) -> std::io::Result<Socket> {
    let s = Socket::new(
        Domain::for_address(addr),
        Type::DGRAM.cloexec(),
        Some(Protocol::UDP),
    )?;
    if addr.is_ipv6() {
        s.set_only_v6(false).ok();
    }
    Ok(s)
}

/// Binds every shard's sockets for `settings.listen` (`shards` of each): an exclusive
/// probe first (a port held by anyone, another chatixia-core included, fails the start
/// with "address already in use"), then `SO_REUSEPORT` sockets on the concrete port.
/// TCP listeners come from `reactor::listener::bind_reuseport` on the same port.
/// The addresses in `settings` become the bound ones (a port 0 the port taken), so
/// that `/api/config` and the peer policy name them.
pub fn bind(settings: &mut TurnSettings, shards: usize) -> Result<Vec<ShardSockets>, String> {
    let mut out: Vec<ShardSockets> = (0..shards).map(|_| ShardSockets::default()).collect();
    for i in 0..settings.listen.len() {
        let addr = settings.listen[i];
        let probe = udp_socket(addr).map_err(|e| format!("TURN {addr}: {e}"))?;
        probe
            .bind(&addr.into())
            .map_err(|e| format!("cannot listen for TURN on {addr} (UDP): {e}"))?;
        let bound = probe
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .unwrap_or(addr);
        drop(probe);
        for s in out.iter_mut() {
            let u = udp_socket(bound).map_err(|e| format!("TURN {bound}: {e}"))?;
            u.set_reuse_port(true)
                .and_then(|()| u.set_nonblocking(true))
                .map_err(|e| format!("TURN {bound}: {e}"))?;
            if let Err(e) = u.set_recv_buffer_size(UDP_RCVBUF_BYTES) {
                tracing::warn!(%bound, error = %e, "TURN: cannot set the UDP receive buffer size");
            }
            u.bind(&bound.into())
                .map_err(|e| format!("cannot listen for TURN on {bound} (UDP): {e}"))?;
            s.udp.push(u.into());
        }
        let (_, tcp) = reactor::listener::bind_reuseport(bound, shards)
            .map_err(|e| format!("TURN (TCP): {e}"))?;
        for (s, l) in out.iter_mut().zip(tcp) {
            s.tcp.push(l);
        }
        settings.listen[i] = bound;
        tracing::info!(%bound, relay_ip = %settings.relay_ip, ports = ?settings.relay_ports, "TURN listening (UDP and TCP)");
    }
    for i in 0..settings.tls_listen.len() {
        let addr = settings.tls_listen[i];
        let (bound, tls) = reactor::listener::bind_reuseport(addr, shards)
            .map_err(|e| format!("--turn-tls-listen: {e}"))?;
        for (s, l) in out.iter_mut().zip(tls) {
            s.tls.push(l);
        }
        settings.tls_listen[i] = bound;
        tracing::info!(%bound, relay_ip = %settings.relay_ip, ports = ?settings.relay_ports, "TURN listening (TLS)");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::host_name;

    #[test]
    fn host_names_from_host_headers() {
        assert_eq!(host_name("turn.example.com"), Some("turn.example.com"));
        assert_eq!(host_name("turn.example.com:8443"), Some("turn.example.com"));
        assert_eq!(host_name("127.0.0.1:8080"), Some("127.0.0.1"));
        assert_eq!(host_name("[::1]:8080"), Some("[::1]"));
        assert_eq!(host_name("[::1]"), Some("[::1]"));
        assert_eq!(host_name("localhost"), Some("localhost"));
        // Nothing that is not a name goes into a URL.
        for bad in [
            "",
            ":80",
            "a b",
            "evil.example/x?",
            "a..b",
            "[not-v6]:80",
            "x@y",
            "name:port:80",
        ] {
            assert_eq!(host_name(bad), None, "{bad:?}");
        }
    }
}
