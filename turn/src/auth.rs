//! Credentials: the long-term credential key (RFC 8489 §9.2.2), the TURN REST scheme
//! (coturn's `use-auth-secret`: user name `<expiry>:<peer>`, password
//! base64(HMAC-SHA1(secret, user name)); docs/PROTOCOL.md §6) and stateless nonces.
//!
//! A nonce is `<expiry, 8 hex digits><tag, 16 hex digits>` where the tag is the first
//! 8 bytes of HMAC-SHA256(nonce key, expiry ‖ client address): a server checks it with
//! no table, a nonce is bound to the client's address (another client cannot reuse it),
//! and it goes stale at its expiry (438 Stale Nonce, with a fresh one).

use std::net::{IpAddr, SocketAddr};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};

/// Bytes of a nonce: 8 hex digits of expiry, 16 of tag.
pub const NONCE_LEN: usize = 24;

/// The long-term credential key: MD5(username ":" realm ":" password). SASLprep/
/// OpaqueString is not applied: the TURN REST user names and passwords are ASCII.
pub fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    h.finalize().into()
}

/// The TURN REST password of `username` under `secret`: base64(HMAC-SHA1(secret,
/// username)).
pub fn rest_password(secret: &[u8], username: &str) -> String {
    let mut mac =
        <Hmac<sha1::Sha1> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(username.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// TURN REST credentials valid until `expiry_secs` (Unix seconds) for `user` (a peer
/// id): `("<expiry>:<user>", password)`.
pub fn rest_credentials(secret: &[u8], expiry_secs: u64, user: &str) -> (String, String) {
    let username = format!("{expiry_secs}:{user}");
    let password = rest_password(secret, &username);
    (username, password)
}

/// A TURN REST user name, taken apart: `<expiry>:<peer>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestUser<'a> {
    /// Unix seconds after which the credential is refused.
    pub expiry: u64,
    /// Everything after the first `:` (the peer id; `mesh` for the reference's).
    pub peer: &'a str,
}

/// Parses `<expiry digits>:<peer>`; `None` for anything else (no colon, no digits,
/// more than 20 digits, an empty peer).
pub fn parse_rest_user(username: &str) -> Option<RestUser<'_>> {
    let (exp, peer) = username.split_once(':')?;
    if exp.is_empty() || exp.len() > 20 || !exp.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if peer.is_empty() {
        return None;
    }
    Some(RestUser {
        expiry: exp.parse().ok()?,
        peer,
    })
}

/// Makes and checks nonces (see the module comment).
#[derive(Clone)]
pub struct Nonces {
    key: [u8; 32],
    /// How long a nonce stays fresh, in seconds.
    pub lifetime_secs: u64,
}

impl std::fmt::Debug for Nonces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nonces")
            .field("lifetime_secs", &self.lifetime_secs)
            .finish_non_exhaustive()
    }
}

/// What a nonce is, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonceCheck {
    Fresh,
    /// Ours, for this client, but past its expiry.
    Stale,
    /// Not ours, or not for this client.
    Invalid,
}

impl Nonces {
    pub fn new(key: [u8; 32], lifetime_secs: u64) -> Nonces {
        Nonces { key, lifetime_secs }
    }

    fn tag(&self, expiry: u32, client: SocketAddr) -> [u8; 8] {
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!());
        mac.update(&expiry.to_be_bytes());
        match client.ip() {
            IpAddr::V4(ip) => mac.update(&ip.octets()),
            IpAddr::V6(ip) => mac.update(&ip.octets()),
        }
        mac.update(&client.port().to_be_bytes());
        let out = mac.finalize().into_bytes();
        let mut t = [0u8; 8];
        t.copy_from_slice(&out[..8]);
        t
    }

    /// A nonce for `client`, fresh until `now_secs + lifetime`. (Expiry is kept in 32
    /// bits: Unix seconds until 2106.)
    pub fn make(&self, now_secs: u64, client: SocketAddr) -> [u8; NONCE_LEN] {
        let expiry = u32::try_from(now_secs.saturating_add(self.lifetime_secs)).unwrap_or(u32::MAX);
        let tag = self.tag(expiry, client);
        let mut out = [0u8; NONCE_LEN];
        hex_into(&expiry.to_be_bytes(), &mut out[..8]);
        hex_into(&tag, &mut out[8..]);
        out
    }

    /// Checks `nonce` for `client` at `now_secs`.
    pub fn check(&self, nonce: &[u8], now_secs: u64, client: SocketAddr) -> NonceCheck {
        if nonce.len() != NONCE_LEN {
            return NonceCheck::Invalid;
        }
        let (Some(exp), Some(tag)) = (unhex::<4>(&nonce[..8]), unhex::<8>(&nonce[8..])) else {
            return NonceCheck::Invalid;
        };
        let expiry = u32::from_be_bytes(exp);
        // Constant-time enough: the tag is a MAC over data the client already knows;
        // comparing it leaks nothing that helps forge another.
        if self.tag(expiry, client) != tag {
            return NonceCheck::Invalid;
        }
        if u64::from(expiry) < now_secs {
            NonceCheck::Stale
        } else {
            NonceCheck::Fresh
        }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_into(bytes: &[u8], out: &mut [u8]) {
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[(b >> 4) as usize];
        out[2 * i + 1] = HEX[(b & 15) as usize];
    }
}

fn unhex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let d = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = d(s[2 * i])? << 4 | d(s[2 * i + 1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_credentials_match_coturn() {
        // Computed independently with Python's hmac module (and the value the server's
        // /api/config test pins for "1700086400:mesh").
        assert_eq!(
            rest_credentials(b"my-secret", 1_700_086_400, "mesh"),
            (
                "1700086400:mesh".to_owned(),
                "shlk2Nr94VRbAuH0fRljVEIVdCs=".to_owned()
            )
        );
        assert_eq!(
            parse_rest_user("1700086400:peer:a"),
            Some(RestUser {
                expiry: 1_700_086_400,
                peer: "peer:a"
            })
        );
        for bad in [
            "",
            "x:y",
            ":p",
            "12:",
            "12",
            "123456789012345678901:p",
            "-1:p",
        ] {
            assert_eq!(parse_rest_user(bad), None, "{bad}");
        }
    }

    #[test]
    fn nonces_are_bound_to_client_and_time() {
        let n = Nonces::new([7; 32], 600);
        let a: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        let b: SocketAddr = "192.0.2.1:4001".parse().unwrap();
        let nonce = n.make(1000, a);
        assert_eq!(n.check(&nonce, 1000, a), NonceCheck::Fresh);
        assert_eq!(n.check(&nonce, 1600, a), NonceCheck::Fresh);
        assert_eq!(n.check(&nonce, 1601, a), NonceCheck::Stale);
        assert_eq!(n.check(&nonce, 1000, b), NonceCheck::Invalid);
        assert_eq!(
            Nonces::new([8; 32], 600).check(&nonce, 1000, a),
            NonceCheck::Invalid
        );
        let mut forged = nonce;
        forged[7] = if forged[7] == b'f' { b'e' } else { b'f' };
        assert_eq!(n.check(&forged, 1000, a), NonceCheck::Invalid);
        assert_eq!(n.check(b"short", 1000, a), NonceCheck::Invalid);
        assert_eq!(n.check(&[b'Z'; NONCE_LEN], 1000, a), NonceCheck::Invalid);
    }
}
