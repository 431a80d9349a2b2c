//! `GET /api/config`: ICE servers for WebRTC clients (STUN, plus TURN with ephemeral
//! coturn `use-auth-secret` credentials when configured). A service of its own: its
//! settings ([`Config`]) and one workflow ([`get`]) that needs no other shard.

use serde::Serialize;

use crate::shard::{Error, Outcome, Shard};
use crate::time::UnixTime;

/// What `GET /api/config` serves (`--stun-url`, `TURN_URL` and `TURN_SECRET`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// STUN URLs (may be empty).
    pub stun_urls: Vec<String>,
    /// `(TURN_URL, TURN_SECRET)` when both are set.
    pub turn: Option<(String, Vec<u8>)>,
}

impl Default for Config {
    /// The reference's: its one STUN server, no TURN.
    fn default() -> Self {
        Config {
            stun_urls: default_stun_urls(),
            turn: None,
        }
    }
}

/// `GET /api/config` at the shard's time; `embedded` is the embedded TURN server's
/// entry for this caller, if any (`crate::server::turn::ice_entry`), listed last.
pub fn get<S: Shard>(sh: &S, cfg: &Config, embedded: Option<IceServer>) -> Result<Outcome, Error> {
    let turn = cfg
        .turn
        .as_ref()
        .map(|(url, secret)| (url.as_str(), secret.as_slice()));
    let mut body = ice_config(&cfg.stun_urls, turn, sh.now());
    body.ice_servers.extend(embedded);
    Ok(Outcome::json(&body))
}

/// The reference's only STUN server.
pub const DEFAULT_STUN_URL: &str = "stun:stun.l.google.com:19302";

/// How long TURN credentials stay valid.
pub const TURN_CREDENTIAL_TTL_SECS: u64 = 86_400;

/// `[DEFAULT_STUN_URL]`.
pub fn default_stun_urls() -> Vec<String> {
    vec![DEFAULT_STUN_URL.to_owned()]
}

/// The response body: `{"iceServers":[…]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IceConfig {
    /// STUN entry first (when any STUN URL is configured), then TURN.
    #[serde(rename = "iceServers")]
    pub ice_servers: Vec<IceServer>,
}

/// One `RTCIceServer`. Keys serialize in sorted order, as the reference's `json!` objects
/// do (`credential`, `urls`, `username`); the credential fields are omitted for STUN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IceServer {
    /// TURN password: base64(HMAC-SHA1(secret, username)).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// Server URLs.
    pub urls: Vec<String>,
    /// TURN user name: `<unix expiry>:mesh`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

/// Build the config at `now`.
///
/// `stun_urls` all go into one server entry (the reference's single URL by default, see
/// [`default_stun_urls`]); an empty list omits the STUN entry. `turn` is
/// `(TURN_URL, TURN_SECRET)` when both are set; the credentials expire
/// [`TURN_CREDENTIAL_TTL_SECS`] after `now`.
pub fn ice_config(stun_urls: &[String], turn: Option<(&str, &[u8])>, now: UnixTime) -> IceConfig {
    let mut ice_servers = Vec::with_capacity(2);
    if !stun_urls.is_empty() {
        ice_servers.push(IceServer {
            credential: None,
            urls: stun_urls.to_vec(),
            username: None,
        });
    }
    if let Some((url, secret)) = turn {
        let expiry = now.as_secs().saturating_add(TURN_CREDENTIAL_TTL_SECS);
        let (username, credential) = turn_credentials(secret, expiry);
        ice_servers.push(IceServer {
            credential: Some(credential),
            urls: vec![url.to_owned()],
            username: Some(username),
        });
    }
    IceConfig { ice_servers }
}

/// coturn REST-API credentials (one function in the wire crate, shared with the sidecar).
pub use wire::turn_rest::turn_credentials;

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: UnixTime = UnixTime(1_699_999_999_999_999_999);

    #[test]
    fn stun_only() {
        let cfg = ice_config(&default_stun_urls(), None, NOW);
        assert_eq!(
            serde_json::to_string(&cfg).unwrap(),
            r#"{"iceServers":[{"urls":["stun:stun.l.google.com:19302"]}]}"#
        );
    }

    #[test]
    fn with_turn() {
        // now = 1_699_999_999.999…, expiry = 1_699_999_999 + 86_400 = 1_700_086_399.
        let cfg = ice_config(
            &default_stun_urls(),
            Some(("turn:turn.example.com:3478", b"my-secret")),
            NOW.saturating_add_nanos(1),
        );
        // Credential is HMAC-SHA1("my-secret", "1700086400:mesh") in base64, computed
        // independently with Python's hmac module.
        assert_eq!(
            serde_json::to_string(&cfg).unwrap(),
            r#"{"iceServers":[{"urls":["stun:stun.l.google.com:19302"]},{"credential":"shlk2Nr94VRbAuH0fRljVEIVdCs=","urls":["turn:turn.example.com:3478"],"username":"1700086400:mesh"}]}"#
        );
        let cfg = ice_config(&[], Some(("turn:t", b"my-secret")), NOW);
        assert_eq!(cfg.ice_servers.len(), 1);
        assert_eq!(
            cfg.ice_servers[0].username.as_deref(),
            Some("1700086399:mesh")
        );
    }

    #[test]
    fn turn_username_saturates() {
        // The HMAC vectors of the credentials are tested where they are computed
        // (wire::turn_rest); here the config's expiry must not overflow.
        // Saturation instead of overflow.
        let cfg = ice_config(&[], Some(("turn:t", b"")), UnixTime(u64::MAX));
        assert_eq!(
            cfg.ice_servers[0].username.as_deref(),
            Some("18446830473:mesh")
        );
    }

    /// The workflow answers the configuration at the shard's clock.
    #[test]
    fn the_workflow_serves_the_configuration_at_the_shards_time() {
        use crate::shard::sim::{Node, Sim};
        struct Alone;
        impl Node<()> for Alone {
            fn handle(&self, _: usize, _: (), _: UnixTime) -> Option<()> {
                None
            }
        }
        let sim = Sim::new(vec![Alone], UnixTime::from_secs(1_700_000_000), 1);
        let cfg = Config {
            turn: Some(("turn:t".into(), b"my-secret".to_vec())),
            ..Config::default()
        };
        let Ok(Outcome::Json(body)) = get(&sim.shard(0), &cfg, None) else {
            panic!("not a JSON answer")
        };
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["iceServers"][0]["urls"][0], DEFAULT_STUN_URL);
        assert_eq!(v["iceServers"][1]["username"], "1700086400:mesh");
    }

    #[test]
    fn custom_stun_list() {
        let urls = vec!["stun:a:3478".to_owned(), "stun:b:3478".to_owned()];
        assert_eq!(
            serde_json::to_string(&ice_config(&urls, None, NOW)).unwrap(),
            r#"{"iceServers":[{"urls":["stun:a:3478","stun:b:3478"]}]}"#
        );
        assert_eq!(
            serde_json::to_string(&ice_config(&[], None, NOW)).unwrap(),
            r#"{"iceServers":[]}"#
        );
    }
}
