//! Which peer addresses a relay may reach.
//!
//! By default a peer in loopback, unspecified, private (RFC 1918, 100.64.0.0/10,
//! fc00::/7), link-local (169.254.0.0/16, which holds the cloud metadata address
//! 169.254.169.254, and fe80::/10), multicast, broadcast or reserved space is refused
//! (403), so the relay cannot be used to reach services inside the network it runs in.
//! IPv6 forms that carry an IPv4 address (IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible
//! `::a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are judged by that IPv4 address:
//! coturn's CVE-2020-26262 was exactly a bypass through such forms and `0.0.0.0`.
//!
//! The rules, first match wins:
//! 1. one of the server's own TURN listen addresses (ip and port): refused, always (a
//!    relay sending to its own server would loop);
//! 2. in a `--turn-deny-peer` range: refused;
//! 3. in a `--turn-allow-peer` range: allowed;
//! 4. one of the server's own addresses at a port of the relay range: allowed (two
//!    relayed clients of this server talking to each other, the common case for two
//!    relay-only agents);
//! 5. in the default-deny ranges above, or one of the server's own addresses: refused;
//! 6. otherwise allowed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// An address range `ip/prefix`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub ip: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Cidr {
        Cidr {
            ip: IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
            prefix,
        }
    }

    const fn v6(segments: [u16; 8], prefix: u8) -> Cidr {
        let s = segments;
        Cidr {
            ip: IpAddr::V6(Ipv6Addr::new(
                s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7],
            )),
            prefix,
        }
    }

    /// Whether `ip` lies in the range (an IPv4 range never holds an IPv6 address and
    /// the other way round; callers canonicalize first).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.ip, ip) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let p = u32::from(self.prefix.min(32));
                let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
                u32::from(net) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let p = u32::from(self.prefix.min(128));
                let mask = if p == 0 { 0 } else { u128::MAX << (128 - p) };
                u128::from(net) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    /// `ip/prefix`, or a bare address (a /32 or /128). IPv4-mapped IPv6 ranges are
    /// refused: write the IPv4 range (addresses are compared in canonical form).
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let ip: IpAddr = ip
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an address range (expected ip/prefix)"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix must be 0 to {max}"))?,
            None => max,
        };
        if let IpAddr::V6(v6) = ip {
            if v6.to_ipv4_mapped().is_some() && prefix >= 96 {
                return Err(format!(
                    "{s:?}: write IPv4-mapped ranges as IPv4 (addresses are compared as IPv4)"
                ));
            }
        }
        Ok(Cidr { ip, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.ip, self.prefix)
    }
}

/// The ranges refused by default (rule 5).
pub const DEFAULT_DENY: &[Cidr] = &[
    Cidr::v4(0, 0, 0, 0, 8),                     // "this network", 0.0.0.0
    Cidr::v4(10, 0, 0, 0, 8),                    // RFC 1918
    Cidr::v4(100, 64, 0, 0, 10),                 // shared address space (CGN)
    Cidr::v4(127, 0, 0, 0, 8),                   // loopback
    Cidr::v4(169, 254, 0, 0, 16),                // link-local, cloud metadata
    Cidr::v4(172, 16, 0, 0, 12),                 // RFC 1918
    Cidr::v4(192, 0, 0, 0, 24),                  // IETF protocol assignments
    Cidr::v4(192, 168, 0, 0, 16),                // RFC 1918
    Cidr::v4(198, 18, 0, 0, 15),                 // benchmarking
    Cidr::v4(224, 0, 0, 0, 4),                   // multicast
    Cidr::v4(240, 0, 0, 0, 4),                   // reserved, and 255.255.255.255 broadcast
    Cidr::v6([0, 0, 0, 0, 0, 0, 0, 0], 128),     // unspecified
    Cidr::v6([0, 0, 0, 0, 0, 0, 0, 1], 128),     // loopback
    Cidr::v6([0x0100, 0, 0, 0, 0, 0, 0, 0], 64), // discard-only
    Cidr::v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),  // unique local
    Cidr::v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), // link-local
    Cidr::v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10), // site-local (deprecated)
    Cidr::v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),  // multicast
];

/// The IPv4 address an IPv6 address stands for, if it embeds one (mapped, compatible,
/// NAT64 well-known prefix, 6to4); the address itself otherwise.
pub fn canonical(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else { return ip };
    let o = v6.octets();
    let s = v6.segments();
    let v4 = |a: &[u8]| IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]));
    if let Some(m) = v6.to_ipv4_mapped() {
        return IpAddr::V4(m);
    }
    // IPv4-compatible ::a.b.c.d (but not :: and ::1, which are IPv6's own).
    if s[..6] == [0; 6] && (s[6] != 0 || s[7] > 1) {
        return v4(&o[12..]);
    }
    // NAT64 well-known prefix 64:ff9b::/96.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return v4(&o[12..]);
    }
    // 6to4 2002:AABB:CCDD::/48.
    if s[0] == 0x2002 {
        return v4(&o[2..6]);
    }
    ip
}

/// A peer's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Refused (403), with the rule that refused it.
    Denied(&'static str),
}

/// The policy of one server (immutable after start).
#[derive(Clone, Debug, Default)]
pub struct PeerPolicy {
    /// `--turn-allow-peer`.
    pub allow: Vec<Cidr>,
    /// `--turn-deny-peer`.
    pub deny: Vec<Cidr>,
    /// The server's TURN listen addresses (rule 1; an unspecified IP matches any IP
    /// at that port).
    pub listen: Vec<SocketAddr>,
    /// The server's own IPs (advertised relay address, listen IPs).
    pub own_ips: Vec<IpAddr>,
    /// The relay port range, all shards together (rule 4).
    pub relay_ports: (u16, u16),
}

impl PeerPolicy {
    fn is_own(&self, ip: IpAddr) -> bool {
        self.own_ips.iter().any(|o| canonical(*o) == ip)
    }

    /// Whether a peer *IP* may get a permission (the port is not known yet: rules 2,
    /// 3, 5, 6; rule 4's own addresses are allowed here and judged per port by
    /// [`PeerPolicy::check`] when data is sent).
    pub fn check_ip(&self, ip: IpAddr) -> Verdict {
        let ip = canonical(ip);
        if self.deny.iter().any(|c| c.contains(ip)) {
            return Verdict::Denied("--turn-deny-peer");
        }
        if self.allow.iter().any(|c| c.contains(ip)) || self.is_own(ip) {
            return Verdict::Allowed;
        }
        if DEFAULT_DENY.iter().any(|c| c.contains(ip)) {
            return Verdict::Denied(
                "a loopback, private, link-local, multicast or reserved address",
            );
        }
        Verdict::Allowed
    }

    /// The full verdict for a peer transport address (every rule).
    pub fn check(&self, peer: SocketAddr) -> Verdict {
        let ip = canonical(peer.ip());
        let port = peer.port();
        let at_listener = |l: &SocketAddr| {
            l.port() == port
                && (canonical(l.ip()) == ip
                    || self.is_own(ip)
                    || (l.ip().is_unspecified() && ip.is_loopback()))
        };
        if self.listen.iter().any(at_listener) {
            return Verdict::Denied("the TURN server's own listen address");
        }
        if self.deny.iter().any(|c| c.contains(ip)) {
            return Verdict::Denied("--turn-deny-peer");
        }
        if self.allow.iter().any(|c| c.contains(ip)) {
            return Verdict::Allowed;
        }
        if self.is_own(ip) {
            let (lo, hi) = self.relay_ports;
            return if (lo..=hi).contains(&port) {
                Verdict::Allowed
            } else {
                Verdict::Denied("the server's own address outside the relay port range")
            };
        }
        if DEFAULT_DENY.iter().any(|c| c.contains(ip)) {
            return Verdict::Denied(
                "a loopback, private, link-local, multicast or reserved address",
            );
        }
        Verdict::Allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> PeerPolicy {
        PeerPolicy {
            allow: vec![],
            deny: vec![],
            listen: vec!["0.0.0.0:3478".parse().unwrap()],
            own_ips: vec!["203.0.113.5".parse().unwrap()],
            relay_ports: (50000, 50999),
        }
    }

    fn v(p: &PeerPolicy, a: &str) -> bool {
        p.check(a.parse().unwrap()) == Verdict::Allowed
    }

    #[test]
    fn default_denies_internal_ranges_in_every_form() {
        let p = policy();
        for a in [
            "127.0.0.1:80",
            "0.0.0.0:80",
            "10.1.2.3:80",
            "172.16.0.1:80",
            "172.31.255.255:80",
            "192.168.1.1:80",
            "100.64.0.1:80",
            "169.254.169.254:80",
            "224.0.0.1:80",
            "255.255.255.255:80",
            "[::1]:80",
            "[::]:80",
            "[fc00::1]:80",
            "[fd12::1]:80",
            "[fe80::1]:80",
            "[ff02::1]:80",
            // IPv4 in IPv6 clothing.
            "[::ffff:127.0.0.1]:80",
            "[::ffff:169.254.169.254]:80",
            "[::ffff:10.0.0.1]:80",
            "[::127.0.0.1]:80",
            "[::ffff:0.0.0.0]:80",
            "[64:ff9b::7f00:1]:80",
            "[2002:7f00:1::]:80",
            "[2002:a9fe:a9fe::1]:80",
            // The server itself: its listen port, and other ports outside the relay range.
            "203.0.113.5:3478",
            "203.0.113.5:22",
            "[::ffff:203.0.113.5]:22",
        ] {
            assert!(!v(&p, a), "{a} should be refused");
        }
        for a in [
            "8.8.8.8:53",
            "8.8.8.8:3478",
            "198.51.100.7:4000",
            "[2001:4860::8888]:53",
            "[::ffff:8.8.8.8]:53",
            "172.32.0.1:80",
            "100.128.0.1:80",
            // The server's own relay range: relay to relay.
            "203.0.113.5:50000",
            "203.0.113.5:50999",
        ] {
            assert!(v(&p, a), "{a} should be allowed");
        }
        // Permissions (IP only) allow the server's own IP; its port is judged per send.
        assert_eq!(p.check_ip("203.0.113.5".parse().unwrap()), Verdict::Allowed);
        assert_ne!(p.check_ip("127.0.0.1".parse().unwrap()), Verdict::Allowed);
    }

    #[test]
    fn allow_and_deny_ranges() {
        let mut p = policy();
        p.allow = vec!["127.0.0.0/8".parse().unwrap()];
        p.deny = vec!["8.8.8.0/24".parse().unwrap(), "127.0.0.9".parse().unwrap()];
        p.listen.push("127.0.0.1:3478".parse().unwrap());
        assert!(v(&p, "127.0.0.1:3480"));
        assert!(v(&p, "[::ffff:127.0.0.1]:3480"));
        assert!(!v(&p, "127.0.0.9:3480"), "deny wins over allow");
        assert!(!v(&p, "8.8.8.8:53"));
        assert!(
            !v(&p, "127.0.0.1:3478"),
            "own listen address, even when allowed"
        );
        assert!(!v(&p, "10.0.0.1:1"));
        assert_eq!(p.check_ip("127.0.0.2".parse().unwrap()), Verdict::Allowed);
    }

    #[test]
    fn cidr_parsing() {
        assert_eq!(
            "10.0.0.0/8".parse::<Cidr>().unwrap(),
            Cidr::v4(10, 0, 0, 0, 8)
        );
        assert_eq!("::1".parse::<Cidr>().unwrap().prefix, 128);
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("x/8".parse::<Cidr>().is_err());
        assert!("::ffff:10.0.0.0/104".parse::<Cidr>().is_err());
        let all4: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all4.contains("1.2.3.4".parse().unwrap()));
        assert!(!all4.contains("::1".parse().unwrap()));
    }
}
