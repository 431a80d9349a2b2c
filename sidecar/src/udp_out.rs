//! Sending the engine's datagrams: straight from the shard with non-blocking
//! `sendmsg` (the driver falls back to an awaited io_uring send only when the socket
//! buffer is full), and, with `SIDECAR_UDP_GSO=on`, runs of datagrams to one
//! destination in one UDP GSO send (`UDP_SEGMENT`): the kernel builds, routes and
//! queues the run as one buffer and cuts it into datagrams at the end, instead of
//! paying its whole UDP/IP send path per datagram (a third of a busy sender's CPU).
//! Measured between two namespaces on one host it moved work to the receiver rather
//! than saving it, so it is off by default (docs/BENCHMARKS.md "Sidecar data plane").
//!
//! A GSO send requires every datagram of the run but the last to have the same length,
//! and the last no longer; [`take_run`] picks such runs off the front of a queue. A
//! socket or kernel that refuses GSO ([`gso_unsupported`]) gets single datagrams from
//! then on.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::{SocketAddr, UdpSocket};

use socket2::{MsgHdr, SockAddr, SockRef};

/// Datagrams in one GSO send. The kernel takes at most 64 (`UDP_MAX_SEGMENTS`); 32 is a
/// drive's worth of full SCTP packets and keeps the batch the writer holds small.
pub const GSO_SEGMENTS_MAX: usize = 32;

/// Bytes in one GSO send: the run travels as one IP datagram until it is cut, so it
/// must stay under 64 KiB with headers (the kernel refuses more with EINVAL). A run
/// that would pass this ends early; the rest goes in the next send.
pub const GSO_BYTES_MAX: usize = 60 * 1024;

/// `SOL_UDP` / `IPPROTO_UDP` and `UDP_SEGMENT` from linux/udp.h (stable kernel ABI
/// since Linux 4.18).
const SOL_UDP: i32 = 17;
const UDP_SEGMENT: i32 = 103;

/// Bytes of a `cmsghdr` before its data, and the alignment of control messages (both
/// follow `size_t` on Linux: `cmsg_len` is a `size_t`, `CMSG_ALIGN` rounds to `long`).
const CMSG_WORD: usize = std::mem::size_of::<usize>();
const CMSG_HDR: usize = (CMSG_WORD + 8).div_ceil(CMSG_WORD) * CMSG_WORD;
/// `CMSG_SPACE(sizeof(u16))`.
const GSO_CMSG_SPACE: usize = CMSG_HDR + 2usize.div_ceil(CMSG_WORD) * CMSG_WORD;

/// The control message asking for segments of `segment` bytes: a `cmsghdr`
/// (`cmsg_len` = `CMSG_LEN(2)`, level `SOL_UDP`, type `UDP_SEGMENT`) and the size as
/// a native-endian u16, padded to `CMSG_SPACE(2)`. The kernel copies the control
/// buffer before parsing it, so it needs no particular alignment here.
pub fn gso_control(segment: u16) -> [u8; GSO_CMSG_SPACE] {
    let mut c = [0u8; GSO_CMSG_SPACE];
    c[..CMSG_WORD].copy_from_slice(&(CMSG_HDR + 2).to_ne_bytes());
    c[CMSG_WORD..CMSG_WORD + 4].copy_from_slice(&SOL_UDP.to_ne_bytes());
    c[CMSG_WORD + 4..CMSG_WORD + 8].copy_from_slice(&UDP_SEGMENT.to_ne_bytes());
    c[CMSG_HDR..CMSG_HDR + 2].copy_from_slice(&segment.to_ne_bytes());
    c
}

/// Moves the longest GSO-able run off the front of `queue` into `out` (which the
/// caller passes empty): datagrams to the front one's destination, all of the front
/// one's length except a shorter last one, at most [`GSO_SEGMENTS_MAX`] and
/// [`GSO_BYTES_MAX`] bytes. Without `gso`, or when the next datagram does not fit the
/// run, `out` gets just the front one. Nothing when the queue is empty.
pub fn take_run(
    queue: &mut VecDeque<(Vec<u8>, SocketAddr)>,
    out: &mut Vec<(Vec<u8>, SocketAddr)>,
    gso: bool,
) {
    let Some(first) = queue.pop_front() else {
        return;
    };
    let (seg, dest) = (first.0.len(), first.1);
    let mut bytes = seg;
    out.push(first);
    if !gso || seg == 0 || seg > usize::from(u16::MAX) {
        return;
    }
    while out.len() < GSO_SEGMENTS_MAX {
        let Some((d, to)) = queue.front() else { break };
        let n = d.len();
        if *to != dest || n > seg || n == 0 || bytes + n > GSO_BYTES_MAX {
            break;
        }
        bytes += n;
        let last = n < seg;
        if let Some(dg) = queue.pop_front() {
            out.push(dg);
        }
        if last {
            break;
        }
    }
}

/// Sends `run` (from [`take_run`]) without blocking: one datagram with a plain
/// `sendto`, several as one GSO `sendmsg`. `WouldBlock` when the socket buffer is full
/// (nothing was sent).
pub fn send_run(sock: &UdpSocket, run: &[(Vec<u8>, SocketAddr)]) -> io::Result<()> {
    match run {
        [] => Ok(()),
        [(data, dest)] => sock.send_to(data, dest).map(|_| ()),
        [(first, dest), ..] => {
            let seg = u16::try_from(first.len())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "datagram too long"))?;
            let iov: Vec<IoSlice<'_>> = run.iter().map(|(d, _)| IoSlice::new(d)).collect();
            let addr = SockAddr::from(*dest);
            let control = gso_control(seg);
            let msg = MsgHdr::new()
                .with_addr(&addr)
                .with_buffers(&iov)
                .with_control(&control);
            SockRef::from(sock).sendmsg(&msg, 0).map(|_| ())
        }
    }
}

/// An error of a GSO send that says this socket or kernel cannot do GSO at all (no
/// `UDP_SEGMENT`, a device without checksum offload, a path through IPsec), as opposed
/// to one about the destination (unreachable and the like, which a single send would
/// hit as well).
pub fn gso_unsupported(e: &io::Error) -> bool {
    // EINVAL, EIO, ENOPROTOOPT, EOPNOTSUPP on Linux.
    matches!(e.raw_os_error(), Some(22 | 5 | 92 | 95))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dg(n: usize, to: u16) -> (Vec<u8>, SocketAddr) {
        (vec![n as u8; n], SocketAddr::from(([127, 0, 0, 1], to)))
    }

    fn runs(q: Vec<(Vec<u8>, SocketAddr)>, gso: bool) -> Vec<Vec<usize>> {
        let mut q: VecDeque<_> = q.into();
        let mut out = Vec::new();
        let mut all = Vec::new();
        loop {
            out.clear();
            take_run(&mut q, &mut out, gso);
            if out.is_empty() {
                return all;
            }
            all.push(out.iter().map(|(d, _)| d.len()).collect());
        }
    }

    #[test]
    fn runs_are_one_destination_one_size_and_a_shorter_last() {
        let q = vec![
            dg(100, 1),
            dg(100, 1),
            dg(60, 1), // shorter: ends the run
            dg(100, 1),
            dg(100, 2), // other destination
            dg(100, 2),
            dg(120, 2), // longer: cannot follow 100s
            dg(120, 2),
        ];
        assert_eq!(
            runs(q.clone(), true),
            vec![
                vec![100, 100, 60],
                vec![100],
                vec![100, 100],
                vec![120, 120]
            ]
        );
        assert_eq!(runs(q, false).len(), 8);
    }

    #[test]
    fn runs_stop_at_the_segment_and_byte_limits() {
        let q: Vec<_> = (0..GSO_SEGMENTS_MAX + 5).map(|_| dg(10, 1)).collect();
        assert_eq!(
            runs(q, true).iter().map(Vec::len).collect::<Vec<_>>(),
            vec![GSO_SEGMENTS_MAX, 5]
        );
        let q: Vec<_> = (0..10).map(|_| dg(9000, 1)).collect();
        let r = runs(q, true);
        assert!(r.iter().all(|r| r.iter().sum::<usize>() <= GSO_BYTES_MAX));
        assert_eq!(r.iter().map(Vec::len).sum::<usize>(), 10);
    }

    #[test]
    fn control_message_layout() {
        let c = gso_control(1200);
        assert_eq!(c.len(), if CMSG_WORD == 8 { 24 } else { 16 });
        assert_eq!(
            usize::from_ne_bytes(c[..CMSG_WORD].try_into().unwrap()),
            CMSG_HDR + 2
        );
        assert_eq!(u16::from_ne_bytes([c[CMSG_HDR], c[CMSG_HDR + 1]]), 1200);
    }

    /// A GSO send over loopback arrives as separate datagrams of the right sizes and
    /// contents, in order (or, on a kernel without GSO, fails with an error that
    /// [`gso_unsupported`] recognises, and single sends work).
    #[test]
    fn gso_send_arrives_as_datagrams() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let run: Vec<(Vec<u8>, SocketAddr)> = [(1, 300), (2, 300), (3, 300), (4, 120)]
            .iter()
            .map(|&(b, n)| (vec![b; n], to))
            .collect();
        match send_run(&tx, &run) {
            Ok(()) => {}
            Err(e) if gso_unsupported(&e) => {
                for d in &run {
                    send_run(&tx, std::slice::from_ref(d)).unwrap();
                }
            }
            Err(e) => panic!("GSO send failed: {e}"),
        }
        let mut buf = [0u8; 2048];
        for (want, _) in &run {
            let (n, from) = rx.recv_from(&mut buf).unwrap();
            assert_eq!(from, tx.local_addr().unwrap());
            assert_eq!(&buf[..n], &want[..]);
        }
        // One datagram: a plain send.
        send_run(&tx, &[(b"one".to_vec(), to)]).unwrap();
        let (n, _) = rx.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"one");
    }
}
