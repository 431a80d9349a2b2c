//! Configuration from the environment (PROTOCOL.md §8): the agent spawns the sidecar
//! with env vars and no arguments.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `SIGNALING_URL` | `ws://localhost:8080/ws` | signaling WebSocket |
//! | `TOKEN_URL` | `http://localhost:8080/api/token` | API key → JWT exchange |
//! | `API_KEY` | `ak_dev_001` | sent as `x-api-key` |
//! | `IPC_SOCKET` | `/tmp/chatixia-sidecar.sock` | Unix socket for the agent (mode 0600) |
//! | `STUN_URLS` | `stun:stun.l.google.com:19302` | comma-separated `stun:host:port`; empty or `none` disables STUN (tests must) |
//! | `ICE_SERVERS` | unset | `none` is a synonym for `STUN_URLS=none` |
//! | `TURN_URL`, `TURN_SECRET` / `TURN_USERNAME`, `TURN_PASSWORD` | unset | TURN server, `turn:host[:port][?transport=udp\|tcp]` or `turns:host[:port][?transport=tcp]` (TLS; roots as for `https://`: the system's, `SSL_CERT_FILE`, `SSL_CERT_DIR`) (see [`TurnConfig`] and [`super::turn`]) |
//! | `ICE_TRANSPORT_POLICY` | `all` | `relay`: offer only the TURN relay candidate (no host/srflx) |
//! | `SIDECAR_IO_DRIVER` | `auto` | `auto`, `uring` or `epoll` |
//! | `SIDECAR_UDP_GSO` | `off` | `on`: send runs of datagrams to one peer as one UDP GSO send (less sender CPU, more receiver CPU: docs/BENCHMARKS.md "Sidecar data plane") |

use std::time::{SystemTime, UNIX_EPOCH};

use super::url::Url;

/// The public STUN server the reference sidecar uses; the default for users only.
pub const STUN_URL_DEFAULT: &str = "stun:stun.l.google.com:19302";

/// Lifetime of TURN REST credentials derived from `TURN_SECRET`, as the reference.
pub const TURN_CREDENTIAL_TTL_SECS: u64 = 86_400;

#[derive(Clone, Debug)]
pub struct SidecarConfig {
    pub signaling_url: Url,
    pub token_url: Url,
    pub api_key: String,
    pub ipc_socket: String,
    /// `(host, port)` of each STUN server.
    pub stun_servers: Vec<(String, u16)>,
    pub turn: Option<TurnConfig>,
    pub relay_only: bool,
    pub io_driver: reactor::driver::DriverChoice,
    /// `SIDECAR_UDP_GSO=on`: runs of datagrams to one destination go out as one UDP GSO
    /// send (udp_out.rs). Off by default: between two namespaces on one 2-core host it
    /// cut the sender's CPU per message by 12–24% but raised the receiver's by 4–17% and
    /// lowered msg/s by 4–14% (docs/BENCHMARKS.md, "Sidecar data plane").
    pub udp_gso: bool,
    /// The TLS client for `https://` and `wss://` URLs (roots read by `main` before the
    /// shard starts, [`super::tls::roots`]); `None` when both URLs are plain.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// The TLS client for a `turns:` TURN_URL (the same roots, ALPN `stun.turn`); `None`
    /// otherwise.
    pub turn_tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

/// TURN server settings from the env vars of the spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TurnConfig {
    pub url: String,
    pub username: String,
    pub password: String,
    /// `TURN_SECRET`, when the credentials derive from it (fresh ones are derived for
    /// each new allocation: see [`TurnConfig::credentials`]).
    pub secret: Option<String>,
}

impl TurnConfig {
    /// Credentials for a new allocation: derived afresh from the secret (so an
    /// allocation retried after [`TURN_CREDENTIAL_TTL_SECS`] is not refused) for `peer`,
    /// our peer id (`<expiry>:<peer>`, the scheme of PROTOCOL.md §6; `mesh` before we
    /// know it), else the static pair.
    pub fn credentials(&self, peer: Option<&str>) -> (String, String) {
        match &self.secret {
            Some(secret) => turn_rest_credentials(
                secret,
                unix_now(),
                TURN_CREDENTIAL_TTL_SECS,
                peer.unwrap_or("mesh"),
            ),
            None => (self.username.clone(), self.password.clone()),
        }
    }

    /// Whether the credentials carry our peer id (so the allocation waits for it).
    pub fn needs_identity(&self) -> bool {
        self.secret.is_some()
    }
}

impl SidecarConfig {
    /// Reads the process environment.
    pub fn from_env() -> Result<SidecarConfig, String> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads configuration through `get` (testable without touching the environment).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<SidecarConfig, String> {
        let or = |k: &str, d: &str| get(k).unwrap_or_else(|| d.to_string());
        let signaling_url = Url::parse(&or("SIGNALING_URL", "ws://localhost:8080/ws"))?;
        let token_url = Url::parse(&or("TOKEN_URL", "http://localhost:8080/api/token"))?;
        let ice_none = get("ICE_SERVERS").is_some_and(|v| v.trim().eq_ignore_ascii_case("none"));
        let stun_raw = if ice_none {
            String::new()
        } else {
            or("STUN_URLS", STUN_URL_DEFAULT)
        };
        let mut stun_servers = Vec::new();
        for item in stun_raw.split(',').map(str::trim) {
            if item.is_empty() || item.eq_ignore_ascii_case("none") {
                continue;
            }
            stun_servers.push(parse_stun_url(item)?);
        }
        let turn = get("TURN_URL").filter(|u| !u.is_empty()).map(|url| {
            let secret = get("TURN_SECRET").filter(|s| !s.is_empty());
            let (username, password) = match &secret {
                Some(secret) => {
                    turn_rest_credentials(secret, unix_now(), TURN_CREDENTIAL_TTL_SECS, "mesh")
                }
                None => (
                    get("TURN_USERNAME").unwrap_or_default(),
                    get("TURN_PASSWORD").unwrap_or_default(),
                ),
            };
            TurnConfig {
                url,
                username,
                password,
                secret,
            }
        });
        let relay_only =
            get("ICE_TRANSPORT_POLICY").is_some_and(|p| p.eq_ignore_ascii_case("relay"));
        let io_driver = or("SIDECAR_IO_DRIVER", "auto").parse()?;
        let udp_gso = match or("SIDECAR_UDP_GSO", "off")
            .trim()
            .to_ascii_lowercase()
            .as_str()
        {
            "on" | "1" | "true" => true,
            "off" | "0" | "false" | "" => false,
            other => return Err(format!("SIDECAR_UDP_GSO={other:?}: expected on or off")),
        };
        Ok(SidecarConfig {
            signaling_url,
            token_url,
            api_key: or("API_KEY", "ak_dev_001"),
            ipc_socket: or("IPC_SOCKET", "/tmp/chatixia-sidecar.sock"),
            stun_servers,
            turn,
            relay_only,
            io_driver,
            udp_gso,
            tls: None,
            turn_tls: None,
        })
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `stun:host:port` (port defaults to 3478; `stuns:` is refused: no TLS here).
pub fn parse_stun_url(s: &str) -> Result<(String, u16), String> {
    let rest = s
        .strip_prefix("stun:")
        .ok_or_else(|| format!("STUN url {s:?}: expected stun:host[:port]"))?;
    let rest = rest.split('?').next().unwrap_or(rest);
    super::url::host_port(rest, 3478).map_err(|e| format!("STUN url {s:?}: {e}"))
}

/// TURN REST API credentials for `peer`, valid `ttl_secs` from `now_secs` (the one
/// implementation is `turn::auth::rest_credentials`, shared with the server).
pub fn turn_rest_credentials(
    secret: &str,
    now_secs: u64,
    ttl_secs: u64,
    peer: &str,
) -> (String, String) {
    turn::auth::rest_credentials(secret.as_bytes(), now_secs + ttl_secs, peer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> SidecarConfig {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        SidecarConfig::from_lookup(|k| m.get(k).cloned()).unwrap()
    }

    #[test]
    fn defaults_match_the_reference() {
        let c = cfg(&[]);
        assert_eq!(c.signaling_url.port, 8080);
        assert_eq!(c.token_url.path, "/api/token");
        assert_eq!(c.api_key, "ak_dev_001");
        assert_eq!(c.ipc_socket, "/tmp/chatixia-sidecar.sock");
        assert_eq!(
            c.stun_servers,
            vec![("stun.l.google.com".to_string(), 19302)]
        );
        assert!(c.turn.is_none());
        assert!(!c.relay_only);
        assert!(!c.udp_gso);
    }

    #[test]
    fn udp_gso_is_opt_in() {
        assert!(cfg(&[("SIDECAR_UDP_GSO", "on")]).udp_gso);
        assert!(cfg(&[("SIDECAR_UDP_GSO", "1")]).udp_gso);
        assert!(!cfg(&[("SIDECAR_UDP_GSO", "off")]).udp_gso);
        let e = SidecarConfig::from_lookup(|k| (k == "SIDECAR_UDP_GSO").then(|| "maybe".into()));
        assert!(e.unwrap_err().contains("SIDECAR_UDP_GSO"));
    }

    #[test]
    fn stun_can_be_disabled() {
        assert!(cfg(&[("STUN_URLS", "")]).stun_servers.is_empty());
        assert!(cfg(&[("STUN_URLS", "none")]).stun_servers.is_empty());
        assert!(cfg(&[("ICE_SERVERS", "none")]).stun_servers.is_empty());
        let c = cfg(&[("STUN_URLS", "stun:127.0.0.1:3478, stun:[::1]")]);
        assert_eq!(
            c.stun_servers,
            vec![("127.0.0.1".into(), 3478), ("::1".into(), 3478)]
        );
    }

    #[test]
    fn turn_credentials() {
        let c = cfg(&[
            ("TURN_URL", "turn:t:3478"),
            ("TURN_USERNAME", "u"),
            ("TURN_PASSWORD", "p"),
        ]);
        assert_eq!(c.turn.unwrap().username, "u");
        let (u, p) = turn_rest_credentials("s", 100, 10, "mesh");
        assert_eq!(u, "110:mesh");
        // The same function the server's /api/config uses for the reference's entry.
        assert_eq!(
            (u.clone(), p.clone()),
            wire::turn_rest::turn_credentials(b"s", 110)
        );
        assert_eq!(p.len(), 28); // base64 of 20 bytes
        let c = cfg(&[
            ("TURN_URL", "turn:t"),
            ("TURN_SECRET", "s"),
            ("ICE_TRANSPORT_POLICY", "relay"),
        ]);
        let t = c.turn.unwrap();
        assert!(t.username.ends_with(":mesh"));
        assert!(t.credentials(None).0.ends_with(":mesh"));
        assert!(t.credentials(Some("peer-a")).0.ends_with(":peer-a"));
        assert!(t.needs_identity());
        assert_eq!(t.secret.as_deref(), Some("s"));
        assert!(c.relay_only);
    }
}
