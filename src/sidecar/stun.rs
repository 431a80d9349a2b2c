//! STUN Binding (RFC 5389) for server-reflexive candidates: just the request and the
//! XOR-MAPPED-ADDRESS of a success response. Sans-IO.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const MAGIC: u32 = 0x2112_A442;
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const XOR_MAPPED_ADDRESS: u16 = 0x0020;
const MAPPED_ADDRESS: u16 = 0x0001;

/// A 20-byte Binding request with transaction id `tid`.
pub fn binding_request(tid: [u8; 12]) -> Vec<u8> {
    let mut b = Vec::with_capacity(20);
    b.extend_from_slice(&BINDING_REQUEST.to_be_bytes());
    b.extend_from_slice(&0u16.to_be_bytes());
    b.extend_from_slice(&MAGIC.to_be_bytes());
    b.extend_from_slice(&tid);
    b
}

/// If `pkt` is a Binding success response for `tid`, the mapped address.
pub fn parse_binding_response(pkt: &[u8], tid: &[u8; 12]) -> Option<SocketAddr> {
    if pkt.len() < 20 || u16::from_be_bytes([pkt[0], pkt[1]]) != BINDING_SUCCESS {
        return None;
    }
    if u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]) != MAGIC || &pkt[8..20] != tid {
        return None;
    }
    let len = u16::from_be_bytes([pkt[2], pkt[3]]) as usize;
    let body = pkt.get(20..20 + len)?;
    let mut i = 0;
    let mut plain = None;
    while i + 4 <= body.len() {
        let ty = u16::from_be_bytes([body[i], body[i + 1]]);
        let alen = u16::from_be_bytes([body[i + 2], body[i + 3]]) as usize;
        let v = body.get(i + 4..i + 4 + alen)?;
        match ty {
            XOR_MAPPED_ADDRESS => return decode_addr(v, Some(&pkt[4..20])),
            MAPPED_ADDRESS => plain = decode_addr(v, None),
            _ => {}
        }
        i += 4 + alen.div_ceil(4) * 4;
    }
    plain
}

/// `xor` is the magic cookie followed by the transaction id.
fn decode_addr(v: &[u8], xor: Option<&[u8]>) -> Option<SocketAddr> {
    if v.len() < 4 {
        return None;
    }
    let mask = |i: usize| xor.map_or(0, |x| x[i]);
    let port = u16::from_be_bytes([v[2] ^ mask(0), v[3] ^ mask(1)]);
    let ip = match v[1] {
        1 if v.len() >= 8 => {
            let mut o = [0u8; 4];
            for (k, b) in o.iter_mut().enumerate() {
                *b = v[4 + k] ^ mask(k);
            }
            IpAddr::V4(Ipv4Addr::from(o))
        }
        2 if v.len() >= 20 => {
            let mut o = [0u8; 16];
            for (k, b) in o.iter_mut().enumerate() {
                *b = v[4 + k] ^ mask(k);
            }
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
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
    }
}
