//! STUN for the sidecar: the Binding requests for server-reflexive candidates. The
//! message codec is the workspace's one STUN model, the `turn` crate's (`turn::stun`,
//! tested against RFC 5769's vectors there); this module re-exports what the sidecar's
//! TURN client (`super::turn`) and engine use.

use std::net::SocketAddr;

pub use turn::auth::long_term_key;
pub use turn::stun::{
    attr, fingerprint_ok, integrity_ok, is_stun, method, read_mapped_address, read_xor_address,
    xor_address, Class, Message, TransactionId, MAGIC,
};

// ---- Binding ------------------------------------------------------------------------

/// A Binding request with transaction id `tid`.
pub fn binding_request(tid: TransactionId) -> Vec<u8> {
    Message::new(method::BINDING, Class::Request, tid).encode(None, false)
}

/// If `pkt` is a Binding success response for `tid`, the mapped address
/// (XOR-MAPPED-ADDRESS, else the old MAPPED-ADDRESS).
pub fn parse_binding_response(pkt: &[u8], tid: &TransactionId) -> Option<SocketAddr> {
    let m = Message::decode(pkt)?;
    if m.method != method::BINDING || m.class != Class::Success || &m.tid != tid {
        return None;
    }
    match m.get(attr::XOR_MAPPED_ADDRESS) {
        Some(v) => read_xor_address(v, tid),
        None => m.get(attr::MAPPED_ADDRESS).and_then(read_mapped_address),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_xor_mapped() {
        let tid = [7u8; 12];
        let req = binding_request(tid);
        assert_eq!(req.len(), 20);
        // Build a response for 192.0.2.1:32853.
        let addr: SocketAddr = "192.0.2.1:32853".parse().unwrap();
        let mut resp = vec![0x01, 0x01, 0, 12];
        resp.extend_from_slice(&MAGIC.to_be_bytes());
        resp.extend_from_slice(&tid);
        let port = addr.port() ^ (MAGIC >> 16) as u16;
        let ip = u32::from_be_bytes([192, 0, 2, 1]) ^ MAGIC;
        resp.extend_from_slice(&[0x00, 0x20, 0, 8, 0, 1]);
        resp.extend_from_slice(&port.to_be_bytes());
        resp.extend_from_slice(&ip.to_be_bytes());
        assert_eq!(parse_binding_response(&resp, &tid), Some(addr));
        assert_eq!(parse_binding_response(&resp, &[0u8; 12]), None);
        assert_eq!(parse_binding_response(&req, &tid), None);
        // The old MAPPED-ADDRESS, when that is all a server sends.
        let old = Message::new(method::BINDING, Class::Success, tid)
            .with(attr::MAPPED_ADDRESS, vec![0, 1, 0x80, 0x55, 192, 0, 2, 1])
            .encode(None, false);
        assert_eq!(parse_binding_response(&old, &tid), Some(addr));
    }
}
