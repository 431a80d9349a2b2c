//! TLS counters of one shard and their Prometheus series (sans-IO).

use std::cell::Cell;
use std::fmt::Write;

/// Why a TLS handshake ended without a connection (`reason` label).
pub const REFUSALS: [&str; 4] = ["timeout", "plaintext_http", "protocol", "closed"];

/// Index into [`REFUSALS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not finished within `--http-header-timeout` of the accept.
    Timeout = 0,
    /// Plain HTTP on the TLS port: answered 400 (use https).
    PlaintextHttp = 1,
    /// The client broke the protocol (garbage, no common version or suite, a bad
    /// record): closed with an alert.
    Protocol = 2,
    /// The client closed (or reset) before the handshake finished, or shutdown began.
    Closed = 3,
}

/// Counters a shard keeps about its TLS connections (shard-local cells).
#[derive(Default)]
pub struct TlsCounters {
    pub handshakes: Cell<u64>,
    pub refused: [Cell<u64>; REFUSALS.len()],
    /// Which certificate load new connections of this shard use: 1 for the one read at
    /// start, +1 per successful reload (0: no TLS).
    pub generation: Cell<u64>,
}

impl TlsCounters {
    pub fn refuse(&self, r: Refusal) {
        let c = &self.refused[r as usize];
        c.set(c.get() + 1);
    }

    pub fn snapshot(&self) -> TlsMetrics {
        TlsMetrics {
            handshakes: self.handshakes.get(),
            refused: std::array::from_fn(|i| self.refused[i].get()),
            generation: self.generation.get(),
        }
    }
}

/// A snapshot of [`TlsCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsMetrics {
    pub handshakes: u64,
    pub refused: [u64; REFUSALS.len()],
    pub generation: u64,
}

/// Appends the TLS series for `shards` (each with its shard id) to `out`.
pub fn render(out: &mut String, shards: &[(usize, TlsMetrics)]) {
    out.push_str(
        "# HELP chatixia_tls_handshakes_total TLS handshakes completed.\n\
         # TYPE chatixia_tls_handshakes_total counter\n",
    );
    for (s, m) in shards {
        let _ = writeln!(
            out,
            "chatixia_tls_handshakes_total{{shard=\"{s}\"}} {}",
            m.handshakes
        );
    }
    out.push_str(
        "# HELP chatixia_tls_handshakes_failed_total TLS connections closed before their handshake finished, by reason.\n\
         # TYPE chatixia_tls_handshakes_failed_total counter\n",
    );
    for (s, m) in shards {
        for (i, reason) in REFUSALS.iter().enumerate() {
            let _ = writeln!(
                out,
                "chatixia_tls_handshakes_failed_total{{shard=\"{s}\",reason=\"{reason}\"}} {}",
                m.refused[i]
            );
        }
    }
    out.push_str(
        "# HELP chatixia_tls_certificate_generation The certificate load new TLS connections get (1: read at start; +1 per reload).\n\
         # TYPE chatixia_tls_certificate_generation gauge\n",
    );
    for (s, m) in shards {
        let _ = writeln!(
            out,
            "chatixia_tls_certificate_generation{{shard=\"{s}\"}} {}",
            m.generation
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_per_shard_and_reason() {
        let c = TlsCounters::default();
        c.handshakes.set(3);
        c.refuse(Refusal::PlaintextHttp);
        c.generation.set(2);
        let mut out = String::new();
        render(&mut out, &[(1, c.snapshot())]);
        assert!(out.contains("chatixia_tls_handshakes_total{shard=\"1\"} 3\n"));
        assert!(out.contains(
            "chatixia_tls_handshakes_failed_total{shard=\"1\",reason=\"plaintext_http\"} 1\n"
        ));
        assert!(out
            .contains("chatixia_tls_handshakes_failed_total{shard=\"1\",reason=\"timeout\"} 0\n"));
        assert!(out.contains("chatixia_tls_certificate_generation{shard=\"1\"} 2\n"));
    }
}
