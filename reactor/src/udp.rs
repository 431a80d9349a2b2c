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

/// `UDP_GRO` (linux/udp.h, since 5.0): a socket option, and the control message that
/// gives the segment size of a coalesced receive.
const UDP_GRO: libc::c_int = 104;
/// `CMSG_SPACE(sizeof(int))` in u64 words (24 bytes on 64-bit Linux).
const GRO_CMSG_WORDS: usize = 3;
/// `CMSG_LEN(sizeof(int))`: a header (already aligned) and the int.
const GRO_CMSG_LEN: usize =
    std::mem::size_of::<libc::cmsghdr>() + std::mem::size_of::<libc::c_int>();

/// Bytes of one receive slot that takes coalesced datagrams ([`enable_gro`]): the
/// kernel coalesces up to an IP datagram's 64 KiB, and a slot shorter than what it
/// delivers would cut the run and lose its tail.
pub const GRO_BYTES_MAX: usize = 65_536;

/// Asks the kernel to deliver consecutive datagrams of one flow and one size on `fd`
/// as one receive (`UDP_GRO`): a sender's GSO run stays whole on loopback, and a NIC's
/// GRO coalesces runs of a flow. [`RecvBatch`] reports each message's segment size
/// and [`RecvBatch::segments`] cuts it back into datagrams. A batch that reads such a
/// socket needs slots of [`GRO_BYTES_MAX`].
pub fn enable_gro(fd: RawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: `on` is a live int for the call; the kernel copies it.
    let r = unsafe {
        libc::setsockopt(
            fd,
            SOL_UDP,
            UDP_GRO,
            &on as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Datagrams received by one `recvmmsg`: up to `count` messages of at most `slot`
/// bytes each (a longer one is cut and reported with [`RecvBatch::truncated`]). From a
/// socket with [`enable_gro`], a message may hold several datagrams of one source
/// ([`RecvBatch::segments`]).
pub struct RecvBatch {
    slot: usize,
    buf: Vec<u8>,
    names: Vec<libc::sockaddr_storage>,
    iov: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    /// Per message: room for a `UDP_GRO` control message.
    controls: Vec<[u64; GRO_CMSG_WORDS]>,
    n: usize,
}

/// The datagrams of one received message: ranges of its bytes (see
/// [`RecvBatch::segments`]).
#[derive(Clone, Debug)]
pub struct Segments {
    at: usize,
    len: usize,
    /// The segment size of a coalesced run (0 for a single datagram).
    seg: usize,
    /// A single datagram whose one range is still to be given.
    whole: bool,
}

impl Iterator for Segments {
    type Item = std::ops::Range<usize>;

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = if self.whole {
            1
        } else if self.seg == 0 {
            0
        } else {
            (self.len.saturating_sub(self.at)).div_ceil(self.seg)
        };
        (n, Some(n))
    }

    fn next(&mut self) -> Option<Self::Item> {
        if self.whole {
            self.whole = false;
            return Some(0..self.len);
        }
        if self.seg == 0 || self.at >= self.len {
            return None;
        }
        let start = self.at;
        self.at = (start + self.seg).min(self.len);
        Some(start..self.at)
    }
}

impl ExactSizeIterator for Segments {}

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
            controls: vec![[0u64; GRO_CMSG_WORDS]; count],
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
        // The raw pointers are taken once, after the last write through the vectors,
        // so none is invalidated before the call. `wrapping_add` stays inside each
        // allocation (`buf` holds `count * slot` bytes, `iov` and `names` `count`).
        let base = self.buf.as_mut_ptr();
        let iov_p = self.iov.as_mut_ptr();
        let names_p = self.names.as_mut_ptr();
        let controls_p = self.controls.as_mut_ptr();
        for i in 0..count {
            let iov = libc::iovec {
                iov_base: base.wrapping_add(i * self.slot) as *mut libc::c_void,
                iov_len: self.slot,
            };
            // SAFETY: `iov_p.add(i)` is entry `i` of `iov` (length `count`), which
            // nothing else borrows now.
            unsafe { iov_p.add(i).write(iov) };
            let h = &mut self.hdrs[i];
            h.msg_hdr.msg_name = names_p.wrapping_add(i) as *mut libc::c_void;
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as _;
            h.msg_hdr.msg_iov = iov_p.wrapping_add(i);
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = controls_p.wrapping_add(i) as *mut libc::c_void;
            h.msg_hdr.msg_controllen = (GRO_CMSG_WORDS * 8) as _;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        // SAFETY: every header points at this batch's own name, iovec and control
        // entries (the iovecs into `buf`); all live (and are not moved) for the call.
        // The call is non-blocking (MSG_DONTWAIT) and writes at most `count` headers,
        // each control message within its 24 bytes (msg_controllen).
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
        debug_assert!(i < self.n, "message {i} of a batch of {}", self.n);
        let h = &self.hdrs[i];
        let len = (h.msg_len as usize).min(self.slot);
        let data = &self.buf[i * self.slot..i * self.slot + len];
        (data, from_sockaddr(&self.names[i], h.msg_hdr.msg_namelen))
    }

    /// Whether message `i` was cut: longer than the slot, or with more control data than
    /// its buffer holds (`MSG_CTRUNC`: another control message took the room of the
    /// `UDP_GRO` one, so a coalesced run could not be told from one datagram). Callers
    /// drop such a message.
    pub fn truncated(&self, i: usize) -> bool {
        debug_assert!(i < self.n, "message {i} of a batch of {}", self.n);
        self.hdrs[i].msg_hdr.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0
    }

    /// The segment size of message `i` when the kernel delivered several datagrams of
    /// one source in it (a socket with [`enable_gro`]); `None` for a single datagram.
    // `msg_controllen` and `cmsg_len` are `size_t` in glibc, `socklen_t` in musl.
    #[allow(clippy::unnecessary_cast)]
    pub fn segment_size(&self, i: usize) -> Option<usize> {
        debug_assert!(i < self.n, "message {i} of a batch of {}", self.n);
        let h = &self.hdrs[i].msg_hdr;
        if (h.msg_controllen as usize) < GRO_CMSG_LEN {
            return None;
        }
        // SAFETY: the kernel wrote `msg_controllen` bytes of control messages into
        // this message's own 24-byte buffer (8-aligned), which `msg_control` still
        // points at; CMSG_FIRSTHDR/NXTHDR stay within that length, and the int is
        // read unaligned from inside the message it belongs to.
        unsafe {
            let mut cm = libc::CMSG_FIRSTHDR(h);
            while !cm.is_null() {
                if (*cm).cmsg_level == SOL_UDP
                    && (*cm).cmsg_type == UDP_GRO
                    && (*cm).cmsg_len as usize >= GRO_CMSG_LEN
                {
                    let seg = std::ptr::read_unaligned(libc::CMSG_DATA(cm) as *const libc::c_int);
                    return usize::try_from(seg).ok().filter(|&s| s > 0);
                }
                cm = libc::CMSG_NXTHDR(h, cm);
            }
        }
        None
    }

    /// The datagrams of message `i`, as ranges of its bytes ([`RecvBatch::get`]): one
    /// range for a single datagram, or the coalesced run cut at its segment size (the
    /// last may be shorter). Of a run cut by the slot, only its whole datagrams; a single
    /// datagram cut by the slot is given as cut ([`RecvBatch::truncated`] says so).
    pub fn segments(&self, i: usize) -> Segments {
        let mut len = (self.hdrs[i].msg_len as usize).min(self.slot);
        let seg = self.segment_size(i);
        if let Some(seg) = seg {
            if self.hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                len -= len % seg;
            }
        }
        match seg {
            Some(seg) if seg < len => Segments {
                at: 0,
                len,
                seg,
                whole: false,
            },
            _ => Segments {
                at: 0,
                len,
                seg: 0,
                whole: true,
            },
        }
    }
}

/// Datagrams to send with one `sendmmsg`, each a list of byte slices (a header and a
/// payload, say) to one destination.
pub struct SendBatch {
    names: Vec<libc::sockaddr_storage>,
    namelens: Vec<libc::socklen_t>,
    iov: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    /// Per message: a `UDP_SEGMENT` control message (GSO runs), and its datagram count.
    controls: Vec<[u64; GSO_CMSG_WORDS]>,
    segments: Vec<usize>,
    /// Per message: its segment size (the first datagram's length).
    seg_sizes: Vec<u16>,
}

/// Datagrams in one GSO send (the kernel's `UDP_MAX_SEGMENTS` is 64, 128 since 6.x;
/// 32 keeps one send's burst modest).
pub const GSO_SEGMENTS_MAX: usize = 32;
/// Bytes in one GSO send: it travels as one IP datagram until it is cut, so it stays
/// under 64 KiB with headers.
pub const GSO_BYTES_MAX: usize = 60 * 1024;
/// `SOL_UDP` and `UDP_SEGMENT` (linux/udp.h, since 4.18).
const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
/// `CMSG_SPACE(sizeof(u16))` in u64 words (24 bytes on 64-bit Linux).
const GSO_CMSG_WORDS: usize = 3;

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
            controls: vec![[0u64; GSO_CMSG_WORDS]; BATCH_MAX],
            segments: vec![0; BATCH_MAX],
            seg_sizes: vec![0; BATCH_MAX],
        }
    }

    /// Like [`SendBatch::send`], but consecutive datagrams to one destination, of one
    /// size (the last of a run may be shorter), leave as one UDP GSO send
    /// (`UDP_SEGMENT`): the kernel builds, routes and queues the run once and cuts it
    /// into datagrams at the end. At most [`BATCH_MAX`] datagrams are taken. `Ok(n)`:
    /// the first `n` datagrams were sent. An error of a GSO send the kernel cannot do
    /// (no GSO on the route's device, a segment over the path MTU) is `Err` with
    /// [`gso_refused`] true: the caller sends those datagrams with [`SendBatch::send`].
    pub fn send_gso<'a>(
        &mut self,
        fd: RawFd,
        msgs: impl IntoIterator<Item = (&'a [u8], SocketAddr)>,
    ) -> io::Result<usize> {
        let mut n_msgs = 0usize;
        // First the values (iovecs, names, segment counts and sizes); then, with no
        // write through the vectors left, the headers' raw pointers into them.
        let mut starts = [0usize; BATCH_MAX];
        // The open run: its destination, segment size, bytes, and whether it ended
        // with a shorter datagram (nothing may follow that).
        let mut run: Option<(SocketAddr, usize, usize, bool)> = None;
        for (n_iov, (data, to)) in msgs.into_iter().take(BATCH_MAX).enumerate() {
            let extend = match run {
                Some((d, seg, bytes, closed)) => {
                    !closed
                        && d == to
                        && !data.is_empty()
                        && data.len() <= seg
                        && self.segments[n_msgs - 1] < GSO_SEGMENTS_MAX
                        && bytes + data.len() <= GSO_BYTES_MAX
                }
                None => false,
            };
            self.iov[n_iov] = libc::iovec {
                iov_base: data.as_ptr() as *mut libc::c_void,
                iov_len: data.len(),
            };
            if extend {
                self.segments[n_msgs - 1] += 1;
                if let Some((_, seg, bytes, closed)) = run.as_mut() {
                    *bytes += data.len();
                    *closed = data.len() < *seg;
                }
            } else {
                let m = n_msgs;
                self.namelens[m] = to_sockaddr(to, &mut self.names[m]);
                self.segments[m] = 1;
                self.seg_sizes[m] = data.len().min(usize::from(u16::MAX)) as u16;
                starts[m] = n_iov;
                run = Some((to, data.len(), data.len(), false));
                n_msgs += 1;
            }
        }
        if n_msgs == 0 {
            return Ok(0);
        }
        for m in 0..n_msgs {
            let c = &mut self.controls[m];
            *c = [0; GSO_CMSG_WORDS];
            if self.segments[m] > 1 {
                // SAFETY: `c` is 24 bytes, 8-aligned: room for a `cmsghdr` (16 bytes)
                // and the u16 that follows it at CMSG_DATA (offset 16).
                unsafe {
                    let cm = c.as_mut_ptr() as *mut libc::cmsghdr;
                    (*cm).cmsg_len = libc::CMSG_LEN(2) as _;
                    (*cm).cmsg_level = SOL_UDP;
                    (*cm).cmsg_type = UDP_SEGMENT;
                    std::ptr::write_unaligned(libc::CMSG_DATA(cm) as *mut u16, self.seg_sizes[m]);
                }
            }
        }
        let iov_p = self.iov.as_mut_ptr();
        let names_p = self.names.as_mut_ptr();
        let controls_p = self.controls.as_mut_ptr();
        for (m, start) in starts.iter().enumerate().take(n_msgs) {
            let h = &mut self.hdrs[m];
            h.msg_hdr.msg_name = names_p.wrapping_add(m) as *mut libc::c_void;
            h.msg_hdr.msg_namelen = self.namelens[m];
            h.msg_hdr.msg_iov = iov_p.wrapping_add(*start);
            h.msg_hdr.msg_iovlen = self.segments[m] as _;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
            if self.segments[m] > 1 {
                h.msg_hdr.msg_control = controls_p.wrapping_add(m) as *mut libc::c_void;
                h.msg_hdr.msg_controllen = (GSO_CMSG_WORDS * 8) as _;
            } else {
                h.msg_hdr.msg_control = std::ptr::null_mut();
                h.msg_hdr.msg_controllen = 0;
            }
        }
        // SAFETY: the first `n_msgs` headers point at this batch's names, iovecs and
        // control buffers, and the iovecs at slices of lifetime 'a (alive for the
        // call); the kernel only reads them. Non-blocking.
        let r = unsafe {
            libc::sendmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                n_msgs as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(self.segments[..r as usize].iter().sum())
    }

    /// Datagrams in message `i` of the last [`SendBatch::send_gso`] (so a caller whose
    /// send stopped at message `k` knows how many datagrams that message held).
    pub fn last_segments(&self, i: usize) -> usize {
        self.segments.get(i).copied().unwrap_or(1)
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
        // Values first, then the headers' raw pointers (see `send_gso`).
        let mut count = 0;
        for (data, to) in msgs.into_iter().take(BATCH_MAX) {
            self.namelens[count] = to_sockaddr(to, &mut self.names[count]);
            self.iov[count] = libc::iovec {
                iov_base: data.as_ptr() as *mut libc::c_void,
                iov_len: data.len(),
            };
            count += 1;
        }
        if count == 0 {
            return Ok(0);
        }
        let iov_p = self.iov.as_mut_ptr();
        let names_p = self.names.as_mut_ptr();
        for i in 0..count {
            let h = &mut self.hdrs[i];
            h.msg_hdr.msg_name = names_p.wrapping_add(i) as *mut libc::c_void;
            h.msg_hdr.msg_namelen = self.namelens[i];
            h.msg_hdr.msg_iov = iov_p.wrapping_add(i);
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
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

/// Whether a send error says the kernel cannot do a GSO send here (no `UDP_SEGMENT`, a
/// device without checksum offload, a segment over the path MTU): EINVAL, EIO,
/// ENOPROTOOPT, EOPNOTSUPP.
pub fn gso_refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EIO | libc::ENOPROTOOPT | libc::EOPNOTSUPP)
    )
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

/// A level-triggered epoll set of sockets, for a thread that is not a shard (a load
/// generator) to wait on many sockets at once. Shards wait through their runtime.
pub struct Poller {
    fd: std::os::fd::OwnedFd,
    events: Vec<libc::epoll_event>,
}

impl Poller {
    /// A poller reporting at most `max_events` ready sockets per wait.
    pub fn new(max_events: usize) -> io::Result<Poller> {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor we own.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        Ok(Poller {
            fd,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; max_events.max(1)],
        })
    }

    /// Watches `fd` for readability, reported as `token`.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: `ev` is valid for the call; the kernel copies it.
        let r = unsafe {
            libc::epoll_ctl(
                std::os::fd::AsRawFd::as_raw_fd(&self.fd),
                libc::EPOLL_CTL_ADD,
                fd,
                &mut ev,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout_ms` (0: do not wait) and returns the tokens of ready
    /// sockets.
    pub fn wait(&mut self, timeout_ms: i32, out: &mut Vec<u64>) -> io::Result<()> {
        out.clear();
        // SAFETY: `events` has room for its length; the kernel writes at most that many.
        let n = unsafe {
            libc::epoll_wait(
                std::os::fd::AsRawFd::as_raw_fd(&self.fd),
                self.events.as_mut_ptr(),
                self.events.len() as i32,
                timeout_ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(e)
            };
        }
        out.extend(self.events[..n as usize].iter().map(|e| e.u64));
        Ok(())
    }
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
            // GSO runs: same destination and size (a shorter last) go as one send and
            // arrive as the same datagrams, in order.
            let other = UdpSocket::bind(host).unwrap();
            other.set_nonblocking(true).unwrap();
            let to2 = other.local_addr().unwrap();
            let sizes = [
                (to, 40),
                (to, 40),
                (to, 40),
                (to, 10),
                (to, 40),
                (to2, 40),
                (to2, 40),
                (to, 40),
            ];
            let data: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(i, &(_, n))| vec![i as u8; n])
                .collect();
            let msgs: Vec<(&[u8], SocketAddr)> = data
                .iter()
                .zip(sizes)
                .map(|(d, (a, _))| (&d[..], a))
                .collect();
            match sb.send_gso(tx.as_raw_fd(), msgs.iter().copied()) {
                Ok(n) => assert_eq!(n, 8),
                Err(e) if gso_refused(&e) => {
                    assert_eq!(sb.send(tx.as_raw_fd(), msgs.iter().copied()).unwrap(), 8)
                }
                Err(e) => panic!("{e}"),
            }
            let mut seen = [Vec::new(), Vec::new()];
            for (k, s) in [&rx, &other].iter().enumerate() {
                while let Ok(n) = rb.recv(s.as_raw_fd()) {
                    for i in 0..n {
                        seen[k].push(rb.get(i).0.to_vec());
                    }
                }
            }
            let want_rx: Vec<Vec<u8>> = [0, 1, 2, 3, 4, 7]
                .iter()
                .map(|&i| data[i].clone())
                .collect();
            assert_eq!(seen[0], want_rx);
            assert_eq!(seen[1], vec![data[5].clone(), data[6].clone()]);
        }
    }

    #[test]
    fn coalesced_receives_are_cut_back_into_their_datagrams() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let to = rx.local_addr().unwrap();
        enable_gro(rx.as_raw_fd()).unwrap();
        // A run of five 40-byte datagrams and a 13-byte one (one GSO send), then a
        // lone datagram, then a run of two.
        let run: Vec<Vec<u8>> = (0..6u8)
            .map(|i| vec![i; if i == 5 { 13 } else { 40 }])
            .collect();
        let lone = vec![9u8; 7];
        let pair: Vec<Vec<u8>> = vec![vec![20u8; 30], vec![21u8; 30]];
        let mut sb = SendBatch::new();
        let msgs: Vec<(&[u8], SocketAddr)> = run.iter().map(|d| (&d[..], to)).collect();
        match sb.send_gso(tx.as_raw_fd(), msgs.iter().copied()) {
            Ok(n) => assert_eq!(n, 6),
            Err(e) if gso_refused(&e) => {
                // No GSO here: nothing to coalesce. A skip must not pass under CI=true.
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "no UDP GSO under CI=true ({e})"
                );
                eprintln!("SKIPPED: no UDP GSO here ({e})");
                return;
            }
            Err(e) => panic!("{e}"),
        }
        send_to(tx.as_raw_fd(), &lone, to).unwrap();
        let msgs: Vec<(&[u8], SocketAddr)> = pair.iter().map(|d| (&d[..], to)).collect();
        assert_eq!(
            sb.send_gso(tx.as_raw_fd(), msgs.iter().copied()).unwrap(),
            2
        );

        let mut rb = RecvBatch::new(8, GRO_BYTES_MAX);
        let (mut got, mut sizes) = (Vec::new(), Vec::new());
        while let Ok(n) = rb.recv(rx.as_raw_fd()) {
            for i in 0..n {
                let (d, from) = rb.get(i);
                assert_eq!(from, Some(tx.local_addr().unwrap()));
                assert!(!rb.truncated(i));
                sizes.push(rb.segment_size(i));
                let segs = rb.segments(i);
                let k = segs.len();
                let before = got.len();
                got.extend(segs.map(|r| d[r].to_vec()));
                assert_eq!(got.len() - before, k, "len() counts the segments");
            }
        }
        let mut want = run.clone();
        want.push(lone);
        want.extend(pair);
        assert_eq!(got, want);
        // The runs arrived whole (one message each, with their segment size); the lone
        // datagram without one.
        assert_eq!(sizes, vec![Some(40), None, Some(30)]);

        // A socket without GRO gets the same runs as separate datagrams.
        let plain = UdpSocket::bind("127.0.0.1:0").unwrap();
        plain.set_nonblocking(true).unwrap();
        let to = plain.local_addr().unwrap();
        let msgs: Vec<(&[u8], SocketAddr)> = run.iter().map(|d| (&d[..], to)).collect();
        assert_eq!(
            sb.send_gso(tx.as_raw_fd(), msgs.iter().copied()).unwrap(),
            6
        );
        let mut got = Vec::new();
        while let Ok(n) = rb.recv(plain.as_raw_fd()) {
            for i in 0..n {
                assert_eq!(rb.segment_size(i), None);
                assert_eq!(rb.segments(i).count(), 1);
                got.push(rb.get(i).0.to_vec());
            }
        }
        assert_eq!(got, run);

        // An empty datagram is one empty segment.
        send_to(tx.as_raw_fd(), &[], rx.local_addr().unwrap()).unwrap();
        let n = rb.recv(rx.as_raw_fd()).unwrap();
        assert_eq!(n, 1);
        assert_eq!(rb.segments(0).collect::<Vec<_>>(), vec![0..0]);
    }
}
