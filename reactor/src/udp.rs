//! Batched, non-blocking UDP: many datagrams per system call (`recvmmsg`, `sendmmsg`),
//! for relays that move small datagrams at high rates (the TURN server). The sockets
//! stay the caller's (plain std or monoio sockets, non-blocking); a caller waits for
//! readiness with its runtime and then drains with [`RecvBatch::recv`].
//!
//! Each batch owns its buffers and the kernel structures that point into them, so a
//! shard keeps one of each and reuses it for every socket: memory does not grow with
//! the number of sockets.

use std::io;
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Datagrams one [`RecvBatch`] or [`SendBatch`] holds at most (`UIO_MAXIOV` is 1024;
/// 64 is where the per-call saving has flattened out for small datagrams).
pub const BATCH_MAX: usize = 64;

fn to_sockaddr(a: SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match a {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: `sockaddr_storage` is larger than and aligned for `sockaddr_in`;
            // we write one whole, initialized `sockaddr_in` at its start.
            unsafe { std::ptr::write(out as *mut _ as *mut libc::sockaddr_in, sin) };
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: as above, for `sockaddr_in6`.
            unsafe { std::ptr::write(out as *mut _ as *mut libc::sockaddr_in6, sin6) };
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

fn from_sockaddr(s: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    match i32::from(s.ss_family) {
        libc::AF_INET if len as usize >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the kernel wrote an AF_INET address of at least that size; the
            // storage is aligned for any sockaddr.
            let sin = unsafe { &*(s as *const _ as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len as usize >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for AF_INET6.
            let sin6 = unsafe { &*(s as *const _ as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn zeroed_storage() -> libc::sockaddr_storage {
    // SAFETY: `sockaddr_storage` is plain old data; all-zero is a valid value.
    unsafe { MaybeUninit::<libc::sockaddr_storage>::zeroed().assume_init() }
}

fn zeroed_mmsghdr() -> libc::mmsghdr {
    // SAFETY: `mmsghdr` is plain old data (null pointers, zero lengths are valid).
    unsafe { MaybeUninit::<libc::mmsghdr>::zeroed().assume_init() }
}

/// Datagrams received by one `recvmmsg`: up to `count` datagrams of at most `slot`
/// bytes each (a longer one is cut and reported with [`RecvBatch::truncated`]).
pub struct RecvBatch {
    slot: usize,
    buf: Vec<u8>,
    names: Vec<libc::sockaddr_storage>,
    iov: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    n: usize,
}

impl RecvBatch {
    /// A batch of `count` (at most [`BATCH_MAX`]) datagrams of `slot` bytes.
    pub fn new(count: usize, slot: usize) -> RecvBatch {
        let count = count.clamp(1, BATCH_MAX);
        RecvBatch {
            slot,
            buf: vec![0u8; count * slot],
            names: (0..count).map(|_| zeroed_storage()).collect(),
            iov: (0..count)
                .map(|_| libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                })
                .collect(),
            hdrs: (0..count).map(|_| zeroed_mmsghdr()).collect(),
            n: 0,
        }
    }

    /// Datagrams this batch takes at once.
    pub fn capacity(&self) -> usize {
        self.hdrs.len()
    }

    /// Receives what is queued on `fd` without blocking: `Ok(n)` datagrams (then
    /// [`RecvBatch::get`]), `Err(WouldBlock)` when none is queued.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.n = 0;
        let count = self.hdrs.len();
        let base = self.buf.as_mut_ptr();
        for i in 0..count {
            self.iov[i] = libc::iovec {
                // SAFETY: `i * slot` is within `buf` (its length is `count * slot`).
                iov_base: unsafe { base.add(i * self.slot) } as *mut libc::c_void,
                iov_len: self.slot,
            };
            let h = &mut self.hdrs[i];
            h.msg_hdr.msg_name = &mut self.names[i] as *mut _ as *mut libc::c_void;
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as _;
            h.msg_hdr.msg_iov = &mut self.iov[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        // SAFETY: every header points at this batch's own name and iovec entries,
        // which point into `buf`; all live (and are not moved) for the call. The call
        // is non-blocking (MSG_DONTWAIT) and writes at most `count` headers.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                count as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        self.n = r as usize;
        Ok(self.n)
    }

    /// Datagrams held from the last [`RecvBatch::recv`].
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Datagram `i`: its bytes and its source (`None` for an address family other than
    /// IPv4/IPv6, which a UDP socket never reports).
    pub fn get(&self, i: usize) -> (&[u8], Option<SocketAddr>) {
        let h = &self.hdrs[i];
        let len = (h.msg_len as usize).min(self.slot);
        let data = &self.buf[i * self.slot..i * self.slot + len];
        (data, from_sockaddr(&self.names[i], h.msg_hdr.msg_namelen))
    }

    /// Whether datagram `i` was longer than the slot (and so cut).
    pub fn truncated(&self, i: usize) -> bool {
        self.hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0
    }
}

/// Datagrams to send with one `sendmmsg`, each a list of byte slices (a header and a
/// payload, say) to one destination.
pub struct SendBatch {
    names: Vec<libc::sockaddr_storage>,
    namelens: Vec<libc::socklen_t>,
    iov: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl Default for SendBatch {
    fn default() -> Self {
        SendBatch::new()
    }
}

impl SendBatch {
    pub fn new() -> SendBatch {
        SendBatch {
            names: (0..BATCH_MAX).map(|_| zeroed_storage()).collect(),
            namelens: vec![0; BATCH_MAX],
            iov: (0..BATCH_MAX)
                .map(|_| libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                })
                .collect(),
            hdrs: (0..BATCH_MAX).map(|_| zeroed_mmsghdr()).collect(),
        }
    }

    /// Sends the datagrams of `msgs` (`(bytes, destination)`; at most [`BATCH_MAX`] are
    /// taken from it) on `fd` without blocking. `Ok(n)`: the first `n` of those taken
    /// were sent (fewer when the socket buffer filled or a datagram failed; the caller
    /// decides about the rest). `Err` only when not even the first could be sent
    /// (`WouldBlock`: the buffer is full). `Ok(0)` when `msgs` is empty.
    pub fn send<'a>(
        &mut self,
        fd: RawFd,
        msgs: impl IntoIterator<Item = (&'a [u8], SocketAddr)>,
    ) -> io::Result<usize> {
        let mut count = 0;
        for (data, to) in msgs.into_iter().take(BATCH_MAX) {
            let i = count;
            self.namelens[i] = to_sockaddr(to, &mut self.names[i]);
            self.iov[i] = libc::iovec {
                iov_base: data.as_ptr() as *mut libc::c_void,
                iov_len: data.len(),
            };
            let h = &mut self.hdrs[i];
            h.msg_hdr.msg_name = &mut self.names[i] as *mut _ as *mut libc::c_void;
            h.msg_hdr.msg_namelen = self.namelens[i];
            h.msg_hdr.msg_iov = &mut self.iov[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
            count += 1;
        }
        if count == 0 {
            return Ok(0);
        }
        // SAFETY: the first `count` headers point at this batch's names and iovecs,
        // and the iovecs at slices of lifetime 'a, which outlives this call; the kernel
        // only reads the data. Non-blocking (MSG_DONTWAIT).
        let r = unsafe {
            libc::sendmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                count as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r as usize)
    }
}

/// Sends one datagram without blocking (`sendto`); for the one-datagram case, where
/// `sendmmsg` would only add work.
pub fn send_to(fd: RawFd, data: &[u8], to: SocketAddr) -> io::Result<usize> {
    let mut name = zeroed_storage();
    let len = to_sockaddr(to, &mut name);
    // SAFETY: `data` and `name` are valid for the call; the kernel only reads them.
    let r = unsafe {
        libc::sendto(
            fd,
            data.as_ptr() as *const libc::c_void,
            data.len(),
            libc::MSG_DONTWAIT,
            &name as *const _ as *const libc::sockaddr,
            len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    #[test]
    fn batches_round_trip_on_loopback() {
        for host in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(rx) = UdpSocket::bind(host) else {
                continue; // no IPv6 loopback here
            };
            let tx = UdpSocket::bind(host).unwrap();
            rx.set_nonblocking(true).unwrap();
            let to = rx.local_addr().unwrap();
            let mut rb = RecvBatch::new(8, 64);
            assert_eq!(
                rb.recv(rx.as_raw_fd()).unwrap_err().kind(),
                io::ErrorKind::WouldBlock
            );
            let payloads: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 10 + i as usize]).collect();
            let msgs: Vec<(&[u8], SocketAddr)> = payloads.iter().map(|p| (&p[..], to)).collect();
            let mut sb = SendBatch::new();
            assert_eq!(sb.send(tx.as_raw_fd(), msgs.iter().copied()).unwrap(), 10);
            // One longer than the slot: cut and flagged.
            send_to(tx.as_raw_fd(), &[7u8; 100], to).unwrap();
            let mut got = Vec::new();
            loop {
                match rb.recv(rx.as_raw_fd()) {
                    Ok(n) => {
                        for i in 0..n {
                            let (d, from) = rb.get(i);
                            assert_eq!(from, Some(tx.local_addr().unwrap()));
                            got.push((d.to_vec(), rb.truncated(i)));
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("{e}"),
                }
            }
            assert_eq!(got.len(), 11);
            for (i, p) in payloads.iter().enumerate() {
                assert_eq!(&got[i].0, p);
                assert!(!got[i].1);
            }
            assert_eq!(got[10].0, vec![7u8; 64]);
            assert!(got[10].1);
        }
    }
}
