//! The embedded TURN server's settings, checked once at start from the flags
//! (`config::TurnFlags`) and `TURN_SECRET`, and its listening sockets, bound on the
//! control thread before the shards start.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ::turn::auth::Nonces;
use ::turn::policy::{Cidr, PeerPolicy};
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::TurnFlags;

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
    pub listen: Vec<SocketAddr>,
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
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
    /// Lifetime of the REST credentials `/api/config` hands out.
    pub credential_ttl_secs: u64,
    /// Revocations in the data directory at start `(peer, at)`: every shard refuses
    /// their older credentials.
    pub revoked_at_start: Vec<(String, u64)>,
}

fn parse_ports(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("--turn-relay-ports {s:?}: expected LO-HI, two ports with LO <= HI");
    let (lo, hi) = s.split_once('-').ok_or_else(bad)?;
    let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
    let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
    if lo == 0 || lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}

impl TurnSettings {
    /// Checks the flags; `Ok(None)` when `--turn-listen` is not given. `secret` is
    /// `TURN_SECRET`.
    pub fn from_flags(
        f: &TurnFlags,
        secret: Option<&str>,
        cores: usize,
    ) -> Result<Option<TurnSettings>, String> {
        if f.turn_listen.is_empty() {
            return Ok(None);
        }
        let secret = secret
            .filter(|s| !s.is_empty())
            .ok_or("--turn-listen needs TURN_SECRET (the TURN REST shared secret)")?;
        let relay_ip = match f.turn_public_ip {
            Some(ip) if ip.is_unspecified() => {
                return Err("--turn-public-ip must be a concrete address".into())
            }
            Some(ip) => ip,
            None => match f.turn_listen.iter().find(|a| !a.ip().is_unspecified()) {
                Some(a) if f.turn_listen.iter().all(|b| !b.ip().is_unspecified()) => a.ip(),
                _ => {
                    return Err(
                        "--turn-listen on 0.0.0.0 or [::] needs --turn-public-ip (the address put in relayed addresses)"
                            .into(),
                    )
                }
            },
        };
        let first = f.turn_listen[0].ip();
        let relay_bind = if first.is_ipv4() == relay_ip.is_ipv4() {
            first
        } else if relay_ip.is_ipv4() {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        };
        let relay_ports = parse_ports(&f.turn_relay_ports)?;
        let span = usize::from(relay_ports.1 - relay_ports.0) + 1;
        if span < cores {
            return Err(format!(
                "--turn-relay-ports {} has {span} ports: fewer than the {cores} shards",
                f.turn_relay_ports
            ));
        }
        let cidrs = |flag: &str, v: &[String]| -> Result<Vec<Cidr>, String> {
            v.iter()
                .map(|s| s.parse::<Cidr>().map_err(|e| format!("{flag}: {e}")))
                .collect()
        };
        if f.turn_lifetime_max < 1 {
            return Err("--turn-lifetime-max must be at least 1 second".into());
        }
        if f.turn_realm.is_empty() || f.turn_realm.len() > 127 {
            return Err("--turn-realm must be 1 to 127 bytes".into());
        }
        let mut nonce_key = [0u8; 32];
        getrandom::getrandom(&mut nonce_key)
            .map_err(|e| format!("no randomness for TURN nonces: {e}"))?;
        Ok(Some(TurnSettings {
            listen: f.turn_listen.clone(),
            relay_ip,
            relay_bind,
            relay_ports,
            realm: f.turn_realm.clone(),
            secret: secret.as_bytes().to_vec(),
            nonce_key,
            lifetime_max_secs: f.turn_lifetime_max,
            allocations_per_shard_max: f.turn_allocations_per_shard_max,
            allocations_per_user_max: f.turn_allocations_per_user_max,
            allocations_per_ip_max: f.turn_allocations_per_ip_max,
            permissions_max: f.turn_permissions_max,
            channels_max: f.turn_channels_max,
            bytes_per_sec_max: f.turn_allocation_bytes_per_sec_max,
            tcp_connections_max: f.turn_tcp_connections_max,
            allow: cidrs("--turn-allow-peer", &f.turn_allow_peer)?,
            deny: cidrs("--turn-deny-peer", &f.turn_deny_peer)?,
            credential_ttl_secs: crate::ice::TURN_CREDENTIAL_TTL_SECS,
            revoked_at_start: Vec::new(),
        }))
    }

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
        let mut own_ips = vec![self.relay_ip];
        own_ips.extend(
            self.listen
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
                listen: self.listen.clone(),
                own_ips,
                relay_ports: self.relay_ports,
            },
            credential_ttl_secs: self.credential_ttl_secs,
            revoked_max: REVOKED_PEERS_MAX,
        }
    }

    /// The URLs `/api/config` advertises: UDP and TCP on each listen port, at the
    /// relay IP.
    pub fn urls(&self) -> Vec<String> {
        let host = match self.relay_ip {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        };
        let mut ports: Vec<u16> = self.listen.iter().map(|a| a.port()).collect();
        ports.dedup();
        let mut out = Vec::new();
        for p in ports {
            out.push(format!("turn:{host}:{p}?transport=udp"));
            out.push(format!("turn:{host}:{p}?transport=tcp"));
        }
        out
    }
}

/// One shard's listening sockets: a UDP socket and a TCP listener per `--turn-listen`
/// address, in that order.
#[derive(Default)]
pub struct ShardSockets {
    pub udp: Vec<std::net::UdpSocket>,
    pub tcp: Vec<std::net::TcpListener>,
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
pub fn bind(settings: &TurnSettings, shards: usize) -> Result<Vec<ShardSockets>, String> {
    let mut out: Vec<ShardSockets> = (0..shards).map(|_| ShardSockets::default()).collect();
    for &addr in &settings.listen {
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
        tracing::info!(%bound, relay_ip = %settings.relay_ip, ports = ?settings.relay_ports, "TURN listening (UDP and TCP)");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn flags(args: &[&str]) -> TurnFlags {
        let mut v = vec!["chatixia-core"];
        v.extend_from_slice(args);
        crate::config::Cli::parse_from(v).turn
    }

    #[test]
    fn settings_are_checked() {
        assert!(TurnSettings::from_flags(&flags(&[]), None, 2)
            .unwrap()
            .is_none());
        let f = flags(&["--turn-listen", "127.0.0.1:3478"]);
        let e = TurnSettings::from_flags(&f, None, 2).unwrap_err();
        assert!(e.contains("TURN_SECRET"), "{e}");
        let s = TurnSettings::from_flags(&f, Some("s"), 2).unwrap().unwrap();
        assert_eq!(s.relay_ip, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(s.relay_ports, (49152, 65535));
        assert_eq!(s.shard_ports(0, 2), (49152, 57343));
        assert_eq!(s.shard_ports(1, 2), (57344, 65535));
        assert_eq!(
            s.urls(),
            vec![
                "turn:127.0.0.1:3478?transport=udp",
                "turn:127.0.0.1:3478?transport=tcp"
            ]
        );
        let f = flags(&["--turn-listen", "0.0.0.0:3478"]);
        let e = TurnSettings::from_flags(&f, Some("s"), 1).unwrap_err();
        assert!(e.contains("--turn-public-ip"), "{e}");
        let f = flags(&[
            "--turn-listen",
            "0.0.0.0:3478",
            "--turn-public-ip",
            "203.0.113.5",
            "--turn-relay-ports",
            "50000-50002",
            "--turn-allow-peer",
            "127.0.0.0/8",
        ]);
        let s = TurnSettings::from_flags(&f, Some("s"), 3).unwrap().unwrap();
        assert_eq!(s.relay_bind, "0.0.0.0".parse::<IpAddr>().unwrap());
        for i in 0..3 {
            let (a, b) = s.shard_ports(i, 3);
            assert_eq!(a, b);
            assert_eq!(a, 50000 + i as u16);
        }
        assert!(
            TurnSettings::from_flags(&f, Some("s"), 4).is_err(),
            "3 ports for 4 shards"
        );
        for bad in ["1-0", "x-2", "5", "0-10"] {
            let f = flags(&["--turn-listen", "127.0.0.1:1", "--turn-relay-ports", bad]);
            assert!(TurnSettings::from_flags(&f, Some("s"), 1).is_err(), "{bad}");
        }
        let f = flags(&["--turn-listen", "127.0.0.1:1", "--turn-allow-peer", "nope"]);
        let e = TurnSettings::from_flags(&f, Some("s"), 1).unwrap_err();
        assert!(e.contains("--turn-allow-peer"), "{e}");
    }
}
