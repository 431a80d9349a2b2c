//! Who acts and how much a client may store: the shared layer under the services.
//!
//! * [`principal`]: who acts on the agent and task routes, and what an agent or a task
//!   is bound to (identity binding, issue 20);
//! * [`charge`] and [`ledger`]: what an entry is charged to, and each client's share of a
//!   store's budget (per-client quotas, the anonymous share);
//! * [`FieldLimits`]: the size of every stored field and list a client chooses; each
//!   service checks its own bodies with it.
//!
//! Refusals: a field or body over its size limit is 413 (too big); an id or name a client
//! chooses that holds a control character is 422 ([`check_printable`]); each reason names
//! the field, its size and the flag that sets the limit.

mod charge;
mod ledger;
pub mod principal;
pub use charge::Charge;
pub use ledger::{share, Budget, ClientLedger, Line, Names, Refusal};
pub use principal::{Holder, Owner, Principal, ADMIN_ROLE};

use crate::shard::Error;

/// Limits on the strings and lists a client stores (`--agent-field-bytes-max`,
/// `--agent-list-items-max`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldLimits {
    /// Bytes of one stored string field (ids, names, host, status, …). Longer: 413.
    pub field_bytes_max: usize,
    /// Entries of one stored list (skills, MCP servers). More: 413. With the field
    /// limit this bounds one record.
    pub list_items_max: usize,
}

impl Default for FieldLimits {
    fn default() -> Self {
        FieldLimits {
            field_bytes_max: 256,
            list_items_max: 256,
        }
    }
}

/// 413 for a value of `len` bytes over `max` (`flag` sets it).
pub fn too_big(field: &str, len: usize, max: usize, flag: &str) -> Error {
    Error::too_large(format!(
        "field `{field}` is {len} bytes; the limit is {max} ({flag})"
    ))
}

impl FieldLimits {
    /// A string field.
    pub fn field(&self, name: &str, v: &str) -> Result<(), Error> {
        if v.len() > self.field_bytes_max {
            return Err(too_big(
                name,
                v.len(),
                self.field_bytes_max,
                "--agent-field-bytes-max",
            ));
        }
        Ok(())
    }

    /// A list of string fields.
    pub fn list(&self, name: &str, v: &[String]) -> Result<(), Error> {
        if v.len() > self.list_items_max {
            return Err(Error::too_large(format!(
                "field `{name}` has {} entries; the limit is {} (--agent-list-items-max)",
                v.len(),
                self.list_items_max
            )));
        }
        v.iter().try_for_each(|s| self.field(name, s))
    }

    /// An id or name: a [`field`](Self::field) that must be printable
    /// ([`check_printable`]).
    pub fn id(&self, name: &str, v: &str) -> Result<(), Error> {
        self.field(name, v)?;
        check_printable(name, v)
    }

    /// A list of names: each an [`id`](Self::id).
    pub fn id_list(&self, name: &str, v: &[String]) -> Result<(), Error> {
        self.list(name, v)?;
        v.iter().try_for_each(|s| check_printable(name, s))
    }
}

/// Refuses (422) an id or name a client chooses that holds a control character (C0
/// `U+0000`–`U+001F`, DEL, C1 `U+0080`–`U+009F`): the agent and task ids, skill and MCP
/// server names, `sidecar_peer_id`, pairing's `agent_name`. They are stored, shown on the
/// dashboard, written to logs and relayed to other agents, where a NUL or a line break
/// is never meant (and a line break forges log lines). Free-text fields (`hostname`,
/// `status`, …) are not ids and keep any text.
pub fn check_printable(field: &str, v: &str) -> Result<(), Error> {
    match v.chars().find(|c| c.is_control()) {
        None => Ok(()),
        Some(c) => Err(Error::unprocessable(format!(
            "field `{field}` contains the control character U+{:04X}; ids and names \
             must be printable",
            u32::from(c)
        ))),
    }
}

/// The key a client's quota is counted under when the route has no API key: its
/// source address, an IPv6 one by /64 (one host usually holds a whole /64).
pub fn client_key(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => dotted(v4),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => dotted(v4),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// `v4` as `Ipv4Addr`'s `Display` writes it (`10.0.0.1`), without the formatting
/// machinery: every request of an agent route names its client this way, and
/// `to_string` was 2% of a heartbeat's CPU (perf).
fn dotted(v4: std::net::Ipv4Addr) -> String {
    let mut s = String::with_capacity(15);
    for (i, o) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        if o >= 100 {
            s.push(char::from(b'0' + o / 100));
        }
        if o >= 10 {
            s.push(char::from(b'0' + o / 10 % 10));
        }
        s.push(char::from(b'0' + o % 10));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_keys_of_v4_addresses_are_as_display_writes_them() {
        for o in 0..=255u8 {
            for v4 in [
                std::net::Ipv4Addr::new(o, 0, 255, o),
                std::net::Ipv4Addr::new(9, o, 10, 99),
                std::net::Ipv4Addr::new(100, 1, o, 0),
            ] {
                assert_eq!(client_key(v4.into()), v4.to_string());
                assert_eq!(client_key(v4.to_ipv6_mapped().into()), v4.to_string());
            }
        }
    }

    #[test]
    fn fields_and_lists() {
        let l = FieldLimits {
            field_bytes_max: 8,
            list_items_max: 2,
        };
        assert!(l.field("hostname", "h").is_ok());
        let e = l.field("hostname", "123456789").unwrap_err();
        assert_eq!(e.kind, crate::shard::Kind::TooLarge);
        assert!(e.message.unwrap().contains("--agent-field-bytes-max"));
        let three: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        assert_eq!(
            l.list("skills", &three).unwrap_err().kind,
            crate::shard::Kind::TooLarge
        );
        let long = vec!["123456789".to_string()];
        assert_eq!(
            l.list("skills", &long).unwrap_err().kind,
            crate::shard::Kind::TooLarge
        );
    }

    #[test]
    fn ids_with_control_characters_are_refused() {
        let l = FieldLimits::default();
        for bad in [
            "a\u{0}b",
            "a\nb",
            "a\rb",
            "\u{7f}",
            "x\u{85}",
            "\u{1b}[31m",
            "\t",
        ] {
            let e = l.id("agent_id", bad).unwrap_err();
            assert_eq!(e.kind, crate::shard::Kind::Unprocessable, "{bad:?}");
        }
        let names = vec!["ok".to_string(), "b\u{0}d".to_string()];
        assert_eq!(
            l.id_list("capabilities.skills", &names).unwrap_err().kind,
            crate::shard::Kind::Unprocessable
        );
        // Printable text, any script, spaces and punctuation are fine.
        assert!(l.id("agent_id", "agent é 漢字 -_.:/@").is_ok());
        assert!(check_printable("agent_name", "my agent").is_ok());
    }
}
