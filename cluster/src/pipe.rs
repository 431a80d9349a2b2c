//! A shard's own connections to Redis, driven by the shard's event loop (issue 25: a relay
//! to a peer of another node). Through the link a relay crosses a thread on each node (a
//! wake-up of the link thread to write it, one of the owner shard to deliver it); these
//! two connections take both hops out of its path:
//!
//! * the **publisher** writes what the shard queued ([`Pipe::eval`]: `EVALSHA` of one
//!   script, its replies turned off with `CLIENT REPLY OFF`), everything queued in one
//!   write;
//! * the **subscriber** is subscribed (`SSUBSCRIBE`) to the shard's own channel and hands
//!   every message that arrives there to the shard ([`run_subscriber`]'s `deliver`).
//!
//! Both follow the link: they connect where the link's command connection is connected
//! ([`crate::Direct`], resolved by the link thread), once it is up, and again after each
//! new generation (a reconnect, a failover). The publisher probes the subscription (a
//! message to the shard's own channel every probe interval, and `SCRIPT LOAD` of its script
//! again, since with replies off a flushed script cache would go unnoticed); a
//! subscription that hears nothing for [`PROBE_MISSED_AFTER`] intervals is not trusted:
//! both connections are opened again. Whoever publishes to a shard's channel falls back
//! to the node's channel (the link's) when it has no subscriber, so while the subscriber
//! is down nothing is lost but the hop; while the publisher is down the shard sends
//! through the link ([`Pipe::eval`] refuses).

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::net::TcpStream;

use crate::resp::{decode_reply, encode_command, Scan};
use crate::{Direct, ShardLink, Value, LINK_KEY_LEN};

/// Bytes of commands waiting for the publisher's next write. A turn of the shard's loop
/// seldom queues more than a few hundred relays, but a relayed frame may be 64 KiB: past
/// this [`Pipe::eval`] refuses ([`Pipe::has_room`] says so first) and the caller waits
/// for the publisher to write, as for a busy link: sending through the link, another
/// connection, would let the relay overtake those queued here.
pub const PIPE_BYTES_MAX: usize = 4 << 20;

/// How long connecting and the setup's replies may take: a Redis that does not answer
/// within it is tried again after [`RETRY`], the link carrying the relays meanwhile.
const OPEN_TIMEOUT: Duration = Duration::from_secs(2);

/// How long one write may take: a Redis that stops reading (stopped, hung) ends the
/// publisher's connection after it, and the shard sends through the link.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Pause after a failed connect, and between looks while the link is down.
const RETRY: Duration = Duration::from_millis(500);

/// The longest pause between tries while they keep failing (the pause doubles from
/// [`RETRY`]): a Redis that refuses the setup (an ACL denying `CLIENT REPLY`, `SCRIPT`
/// or `SSUBSCRIBE`) is asked every 16 s per connection, not every 500 ms forever; the
/// link carries the relays meanwhile.
const RETRY_MAX: Duration = Duration::from_secs(16);

/// The pause after `fails` failures in a row.
fn backoff(fails: u32) -> Duration {
    RETRY
        .saturating_mul(1 << fails.saturating_sub(1).min(5))
        .min(RETRY_MAX)
}

/// Failures in a row of one of a shard's connections, for [`backoff`]: a connection
/// that came up and later failed starts the count again.
#[derive(Default)]
struct Failures(u32);

impl Failures {
    /// A failed attempt: waits out the backoff. `came_up`: the attempt had connected.
    async fn wait(&mut self, came_up: bool) {
        if came_up {
            self.0 = 0;
        }
        self.0 += 1;
        monoio::time::sleep(backoff(self.0)).await;
    }
}

/// Bytes one read of the subscription takes.
const READ_CHUNK: usize = 64 << 10;

/// The largest message the subscription takes: a relayed frame (at most the server's
/// 64 KiB `--ws-message-max` by default, 16 MiB at most) with its framing. A larger one,
/// or a reply that never ends, ends the connection rather than grow the buffer.
pub const MESSAGE_BYTES_MAX: usize = 17 << 20;

/// Probe intervals the subscription may stay silent before it is not trusted.
pub const PROBE_MISSED_AFTER: u32 = 3;

/// What the pipes did, for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PipeStats {
    /// Commands queued by [`Pipe::eval`].
    pub commands: u64,
    /// Writes of queued commands.
    pub writes: u64,
    /// Messages the subscription delivered (probes not counted).
    pub deliveries: u64,
    /// Connections opened (both kinds), the first ones included.
    pub connects: u64,
    /// Times the subscription heard nothing for [`PROBE_MISSED_AFTER`] intervals.
    pub probes_missed: u64,
    /// [`Pipe::eval`] refused: not connected, or [`PIPE_BYTES_MAX`] queued.
    pub refused: u64,
}

/// One shard's pair of connections (`!Send`: the shard's own). Cheap to clone.
#[derive(Clone)]
pub struct Pipe(Rc<Inner>);

struct Inner {
    /// The shard's channel.
    channel: Vec<u8>,
    /// The script [`Pipe::eval`] runs, loaded by the publisher on each connect.
    script: &'static str,
    /// Its SHA-1 as Redis answered `SCRIPT LOAD`.
    sha: RefCell<Vec<u8>>,
    /// Commands queued, RESP-encoded.
    out: RefCell<Vec<u8>>,
    /// The publisher is connected: [`Pipe::eval`] queues.
    pub_up: Cell<bool>,
    /// The subscriber is subscribed.
    sub_up: Cell<bool>,
    /// The publisher's task, waiting for commands.
    writer: RefCell<Option<Waker>>,
    /// Bumped when the subscription went silent: the publisher connects again too (its
    /// connection may be the silent one).
    restarts: Cell<u64>,
    /// Numbers the probes.
    probe_seq: Cell<u64>,
    stats: Cell<PipeStats>,
}

impl Pipe {
    /// A pipe for the shard whose channel is `channel`, running `script` ([`Pipe::eval`]).
    pub fn new(channel: Vec<u8>, script: &'static str) -> Pipe {
        Pipe(Rc::new(Inner {
            channel,
            script,
            sha: RefCell::new(Vec::new()),
            out: RefCell::new(Vec::new()),
            pub_up: Cell::new(false),
            sub_up: Cell::new(false),
            writer: RefCell::new(None),
            restarts: Cell::new(0),
            probe_seq: Cell::new(0),
            stats: Cell::new(PipeStats::default()),
        }))
    }

    /// The publisher is connected ([`Pipe::eval`] may queue).
    pub fn is_up(&self) -> bool {
        self.0.pub_up.get()
    }

    /// [`Pipe::eval`] would queue another command now ([`PIPE_BYTES_MAX`] not reached).
    pub fn has_room(&self) -> bool {
        self.0.out.borrow().len() < PIPE_BYTES_MAX
    }

    /// The subscriber is subscribed.
    pub fn is_subscribed(&self) -> bool {
        self.0.sub_up.get()
    }

    pub fn stats(&self) -> PipeStats {
        self.0.stats.get()
    }

    fn count(&self, f: impl FnOnce(&mut PipeStats)) {
        let mut s = self.0.stats.get();
        f(&mut s);
        self.0.stats.set(s);
    }

    /// Queues `EVALSHA script keys… args…`, no reply wanted; written at the publisher's
    /// next turn. `false` (counted as refused) when the publisher is not connected or
    /// [`PIPE_BYTES_MAX`] is queued: send it another way.
    pub fn eval(&self, keys: &[&[u8]], args: &[&[u8]]) -> bool {
        let inner = &*self.0;
        let mut out = inner.out.borrow_mut();
        if !inner.pub_up.get() || out.len() >= PIPE_BYTES_MAX {
            drop(out);
            self.count(|s| s.refused += 1);
            return false;
        }
        let nkeys = keys.len().to_string();
        let sha = inner.sha.borrow();
        let mut cmd: Vec<&[u8]> = Vec::with_capacity(3 + keys.len() + args.len());
        cmd.extend([b"EVALSHA".as_slice(), &sha, nkeys.as_bytes()]);
        cmd.extend_from_slice(keys);
        cmd.extend_from_slice(args);
        encode_command(&mut out, &cmd);
        drop(out);
        self.count(|s| s.commands += 1);
        if let Some(w) = inner.writer.borrow_mut().take() {
            w.wake();
        }
        true
    }
}

/// Opens a connection to `addr`, runs `setup` (one write) and waits for as many replies,
/// all within [`OPEN_TIMEOUT`]; the connection, the replies, and the bytes read past them.
async fn open(
    addr: SocketAddr,
    setup: &[Vec<Vec<u8>>],
) -> Result<(TcpStream, Vec<Value>, Vec<u8>), String> {
    let work = async {
        let mut stream = TcpStream::connect_addr(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let mut out = Vec::new();
        for cmd in setup {
            encode_command(&mut out, cmd);
        }
        let (r, _) = stream.write_all(out).await;
        r.map_err(|e| format!("writing to Redis: {e}"))?;
        let mut rbuf = Vec::new();
        let mut replies = Vec::with_capacity(setup.len());
        let mut chunk = Vec::with_capacity(READ_CHUNK);
        while replies.len() < setup.len() {
            if let Some((v, n)) = decode_reply(&rbuf)? {
                rbuf.drain(..n);
                replies.push(v);
                continue;
            }
            if rbuf.len() > MESSAGE_BYTES_MAX {
                return Err(format!(
                    "a reply over {MESSAGE_BYTES_MAX} bytes while connecting"
                ));
            }
            chunk.clear();
            let (r, c) = stream.read(chunk).await;
            chunk = c;
            match r {
                Ok(0) => return Err("Redis closed the connection while connecting".into()),
                Ok(n) => rbuf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("reading from Redis: {e}")),
            }
        }
        Ok((stream, replies, rbuf))
    };
    match monoio::time::timeout(OPEN_TIMEOUT, work).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no answer from Redis at {addr} within {OPEN_TIMEOUT:?}"
        )),
    }
}

/// The connection's name in `CLIENT LIST`: `chx-{node}-{kind}{shard}`, each character
/// of the node id that Redis refuses in a name (only `!` to `~`: a node id may hold any
/// other but spaces and control characters) as `?`. A refused name would fail the setup.
fn client_name(node: &str, kind: &str, shard: usize) -> String {
    let node: String = node
        .chars()
        .map(|c| if ('!'..='~').contains(&c) { c } else { '?' })
        .collect();
    format!("chx-{node}-{kind}{shard}")
}

fn args(a: &[&[u8]]) -> Vec<Vec<u8>> {
    a.iter().map(|x| x.to_vec()).collect()
}

/// The first error reply among `replies`, as a message.
fn refused(replies: &[Value]) -> Option<String> {
    replies.iter().find_map(|v| {
        v.as_error()
            .map(|e| format!("Redis refused the setup: {e}"))
    })
}

/// The publisher's task: connects where the link is, loads the script, turns replies off
/// and writes what [`Pipe::eval`] queues; probes the subscription every `probe_interval`.
/// What a turn of the shard's loop queued goes out in one write (a flush delay as the
/// link's was measured here and bought nothing: docs/BENCHMARKS.md, "Cluster"). Runs
/// until the link stops for good.
pub async fn run_publisher(link: ShardLink, pipe: Pipe, probe_interval: Duration) {
    let name = client_name(link.node_id(), "p", link.shard());
    let mut fails = Failures::default();
    while !link.is_closed() {
        let Some(d) = link.direct() else {
            monoio::time::sleep(RETRY).await;
            continue;
        };
        let restarts = pipe.0.restarts.get();
        let connects = pipe.stats().connects;
        match publish_on(&link, &pipe, &d, &name, probe_interval, restarts).await {
            // A new generation up already: what is queued goes out on the next
            // connection. The link down: dropped, as the link drops the relays it holds
            // when it goes down (they would go out seconds late, if ever).
            Ok(()) => {
                fails = Failures::default();
                if link.current_generation().is_none() {
                    pipe.0.out.borrow_mut().clear();
                }
            }
            Err(e) => {
                tracing::debug!(shard = link.shard(), error = %e, "shard's Redis publisher");
                // Not written (and no way to know when it could be): dropped, as above.
                pipe.0.out.borrow_mut().clear();
                fails.wait(pipe.stats().connects > connects).await;
            }
        }
    }
}

async fn publish_on(
    link: &ShardLink,
    pipe: &Pipe,
    d: &Direct,
    name: &str,
    probe_interval: Duration,
    restarts: u64,
) -> Result<(), String> {
    let inner = &*pipe.0;
    let mut setup = d.login.clone();
    setup.push(args(&[b"SELECT", d.db.to_string().as_bytes()]));
    setup.push(args(&[b"CLIENT", b"SETNAME", name.as_bytes()]));
    setup.push(args(&[b"SCRIPT", b"LOAD", inner.script.as_bytes()]));
    let (stream, replies, _) = open(d.addr, &setup).await?;
    if let Some(e) = refused(&replies) {
        return Err(e);
    }
    let sha = replies
        .last()
        .and_then(Value::as_bytes)
        .ok_or("SCRIPT LOAD answered no SHA")?
        .to_vec();
    *inner.sha.borrow_mut() = sha;
    pipe.count(|s| s.connects += 1);
    // With replies off Redis sends nothing: a read stays posted all along, and ends the
    // connection when Redis closes it (a write into it would succeed here and be lost)
    // or answers anyway (`CLIENT REPLY` refused, say by an ACL: its replies would pile
    // up at Redis, never read).
    let (mut reader, mut stream) = stream.into_split();
    let watch = async move {
        let (r, _) = reader.read(Vec::with_capacity(64)).await;
        match r {
            Ok(0) => "Redis closed the publisher's connection".to_string(),
            Ok(_) => "Redis answered the publisher although its replies are off".to_string(),
            Err(e) => format!("reading the publisher's connection: {e}"),
        }
    };
    let mut buf = Vec::new();
    encode_command(&mut buf, &[b"CLIENT".as_slice(), b"REPLY", b"OFF"]);
    inner.pub_up.set(true);
    let mut next_probe = Instant::now();
    let work = async {
        loop {
            if link.current_generation() != Some(d.generation) || inner.restarts.get() != restarts {
                break Ok(());
            }
            let now = Instant::now();
            if now >= next_probe {
                next_probe = now + probe_interval;
                let seq = inner.probe_seq.get() + 1;
                inner.probe_seq.set(seq);
                let mut probe = LINK_KEY_LEN.to_be_bytes().to_vec();
                probe.extend_from_slice(&seq.to_be_bytes());
                encode_command(
                    &mut buf,
                    &[b"SCRIPT".as_slice(), b"LOAD", inner.script.as_bytes()],
                );
                encode_command(&mut buf, &[b"SPUBLISH".as_slice(), &inner.channel, &probe]);
            }
            {
                let mut out = inner.out.borrow_mut();
                if buf.is_empty() {
                    std::mem::swap(&mut buf, &mut out);
                } else if !out.is_empty() {
                    buf.extend_from_slice(&out);
                    out.clear();
                }
            }
            if buf.is_empty() {
                // Wait for commands or the next probe.
                let wait = poll_fn(|cx| {
                    if !inner.out.borrow().is_empty() {
                        return Poll::Ready(());
                    }
                    *inner.writer.borrow_mut() = Some(cx.waker().clone());
                    Poll::Pending
                });
                let left = next_probe.saturating_duration_since(Instant::now());
                let _ = monoio::time::timeout(left, wait).await;
                continue;
            }
            let (r, b) = match monoio::time::timeout(WRITE_TIMEOUT, stream.write_all(buf)).await {
                Ok(r) => r,
                Err(_) => break Err(format!("a write took over {WRITE_TIMEOUT:?}")),
            };
            buf = b;
            buf.clear();
            if let Err(e) = r {
                break Err(format!("writing to Redis: {e}"));
            }
            pipe.count(|s| s.writes += 1);
        }
    };
    let result = monoio::select! {
        r = work => r,
        e = watch => Err(e),
    };
    inner.pub_up.set(false);
    let _ = stream.shutdown().await;
    result
}

/// The subscriber's task: subscribes to the shard's channel where the link is connected
/// and hands each message (its route key and body, as [`crate::frame`] framed them) to
/// `deliver`; opens it again when it ends, when the link's generation changes, or when it
/// hears nothing (not even the publisher's probes) for [`PROBE_MISSED_AFTER`] probe
/// intervals. Runs until the link stops for good.
pub async fn run_subscriber(
    link: ShardLink,
    pipe: Pipe,
    probe_interval: Duration,
    mut deliver: impl FnMut(&[u8], &[u8]),
) {
    let name = client_name(link.node_id(), "s", link.shard());
    let mut fails = Failures::default();
    while !link.is_closed() {
        let Some(d) = link.direct() else {
            monoio::time::sleep(RETRY).await;
            continue;
        };
        let connects = pipe.stats().connects;
        let r = subscribe_on(&link, &pipe, &d, &name, probe_interval, &mut deliver).await;
        pipe.0.sub_up.set(false);
        if let Err(e) = r {
            tracing::debug!(shard = link.shard(), error = %e, "shard's Redis subscription");
            fails.wait(pipe.stats().connects > connects).await;
        } else {
            fails = Failures::default();
        }
    }
}

async fn subscribe_on(
    link: &ShardLink,
    pipe: &Pipe,
    d: &Direct,
    name: &str,
    probe_interval: Duration,
    deliver: &mut impl FnMut(&[u8], &[u8]),
) -> Result<(), String> {
    let inner = &*pipe.0;
    let mut setup = d.login.clone();
    setup.push(args(&[b"CLIENT", b"SETNAME", name.as_bytes()]));
    setup.push(vec![b"SSUBSCRIBE".to_vec(), inner.channel.clone()]);
    let (mut stream, replies, rbuf) = open(d.addr, &setup).await?;
    if let Some(e) = refused(&replies) {
        return Err(e);
    }
    pipe.count(|s| s.connects += 1);
    inner.sub_up.set(true);
    let silent_max = probe_interval * PROBE_MISSED_AFTER;
    let mut chunk = Vec::with_capacity(READ_CHUNK);
    let mut inbox = Inbox::default();
    // What came after the setup's replies.
    inbox.take(&rbuf, pipe, deliver)?;
    loop {
        if link.current_generation() != Some(d.generation) {
            return Ok(());
        }
        chunk.clear();
        // A read cut short by the timeout may lose what it read: the connection is given
        // up then, never read again.
        match monoio::time::timeout(silent_max, stream.read(chunk)).await {
            Err(_) => {
                pipe.count(|s| s.probes_missed += 1);
                inner.restarts.set(inner.restarts.get() + 1);
                return Err(format!(
                    "the subscription heard nothing, not even a probe, for {silent_max:?}"
                ));
            }
            Ok((r, c)) => {
                chunk = c;
                match r {
                    Ok(0) => return Err("Redis closed the subscription".into()),
                    Ok(n) => inbox.take(&chunk[..n], pipe, deliver)?,
                    Err(e) => return Err(format!("reading the subscription: {e}")),
                }
            }
        }
    }
}

/// The payload of an `smessage` push on `channel`.
fn smessage<'a>(v: &'a Value, channel: &[u8]) -> Option<&'a [u8]> {
    let Value::Array(parts) = v else { return None };
    match parts.as_slice() {
        // The payload as Redis sends it, a bulk string: not a simple string's text,
        // which the decoder made valid UTF-8 (lossily, so not the bytes sent).
        [kind, ch, Value::Bulk(payload)]
            if kind.as_bytes() == Some(b"smessage") && ch.as_bytes() == Some(channel) =>
        {
            Some(payload.as_slice())
        }
        _ => None,
    }
}

/// A message of the shard's channel: a probe (the link's key length, nothing to deliver)
/// or `[u16 key length][key][body]`.
fn on_payload(pipe: &Pipe, payload: &[u8], deliver: &mut impl FnMut(&[u8], &[u8])) {
    let Some((len, rest)) = payload.split_first_chunk::<2>() else {
        return;
    };
    let len = u16::from_be_bytes(*len);
    if len == LINK_KEY_LEN {
        return;
    }
    let len = usize::from(len);
    if rest.len() < len {
        return;
    }
    let (key, body) = rest.split_at(len);
    pipe.count(|s| s.deliveries += 1);
    deliver(key, body);
}

/// What the subscription has read and not yet delivered: the bytes after the last whole
/// reply, with a scanner that has seen them (every byte is scanned once, so a large
/// message arriving over many reads is not parsed again at each; each reply is decoded
/// once, whole).
#[derive(Default)]
struct Inbox {
    buf: Vec<u8>,
    scan: Scan,
}

impl Inbox {
    /// Takes `read` (what one read brought) and hands every message of the pipe's channel
    /// now complete to `deliver`. An error (not RESP, or a message over
    /// [`MESSAGE_BYTES_MAX`]) ends the connection.
    fn take(
        &mut self,
        read: &[u8],
        pipe: &Pipe,
        deliver: &mut impl FnMut(&[u8], &[u8]),
    ) -> Result<(), String> {
        // The bytes already scanned are those held: feed only what is new.
        let mut scanned = self.buf.len();
        self.buf.extend_from_slice(read);
        let mut at = 0;
        while let Some(n) = self.scan.feed(&self.buf[scanned..])? {
            let end = scanned + n;
            if let Some((v, _)) = decode_reply(&self.buf[at..end])? {
                if let Some(payload) = smessage(&v, &pipe.0.channel) {
                    on_payload(pipe, payload, deliver);
                }
            }
            at = end;
            scanned = end;
        }
        self.buf.drain(..at);
        if self.buf.len() > MESSAGE_BYTES_MAX {
            return Err(format!("a message over {MESSAGE_BYTES_MAX} bytes"));
        }
        Ok(())
    }
}

/// What the subscription delivers from `buf` read in two parts, split at `split` (for
/// the fuzz target): each message of `channel`, as key and body.
pub(crate) fn fuzz_messages(buf: &[u8], channel: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let pipe = Pipe::new(channel.to_vec(), "");
    let mut out = Vec::new();
    let mut inbox = Inbox::default();
    let split = buf.first().map_or(0, |&b| usize::from(b)).min(buf.len());
    let mut deliver = |k: &[u8], b: &[u8]| out.push((k.to_vec(), b.to_vec()));
    if inbox.take(&buf[..split], &pipe, &mut deliver).is_ok() {
        let _ = inbox.take(&buf[split..], &pipe, &mut deliver);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_split_into_key_and_body_and_a_probe_is_not_delivered() {
        let pipe = Pipe::new(b"ch".to_vec(), "return 1");
        let mut got = Vec::new();
        let framed = crate::frame(b"peer", b"body").unwrap();
        on_payload(&pipe, &framed, &mut |k, b| {
            got.push((k.to_vec(), b.to_vec()))
        });
        let mut probe = LINK_KEY_LEN.to_be_bytes().to_vec();
        probe.extend_from_slice(&7u64.to_be_bytes());
        on_payload(&pipe, &probe, &mut |k, b| {
            got.push((k.to_vec(), b.to_vec()))
        });
        on_payload(&pipe, &[0, 9, b'x'], &mut |k, b| {
            got.push((k.to_vec(), b.to_vec()))
        });
        assert_eq!(got, vec![(b"peer".to_vec(), b"body".to_vec())]);
        assert_eq!(pipe.stats().deliveries, 1);
        let m = Value::Array(vec![
            Value::Bulk(b"smessage".to_vec()),
            Value::Bulk(b"ch".to_vec()),
            Value::Bulk(framed.clone()),
        ]);
        assert_eq!(smessage(&m, b"ch"), Some(framed.as_slice()));
        assert_eq!(smessage(&m, b"other"), None);
        // A payload that is not a bulk string is not a message (the fuzz target found a
        // non-UTF-8 simple string delivered with its bytes replaced).
        let m = Value::Array(vec![
            Value::Bulk(b"smessage".to_vec()),
            Value::Bulk(b"ch".to_vec()),
            Value::Simple("\u{fffd}".into()),
        ]);
        assert_eq!(smessage(&m, b"ch"), None);
    }

    #[test]
    fn a_client_name_holds_only_what_redis_takes() {
        assert_eq!(client_name("a:b", "p", 3), "chx-a:b-p3");
        assert_eq!(client_name("nœud-1", "s", 0), "chx-n?ud-1-s0");
    }

    #[test]
    fn messages_cut_anywhere_between_reads_are_delivered_once_each_whole() {
        let msg = |key: &[u8], body: &[u8]| {
            let framed = crate::frame(key, body).unwrap();
            let mut out = Vec::new();
            encode_command(&mut out, &[b"smessage".as_slice(), b"ch", &framed]);
            out
        };
        let stream = [msg(b"a", b"one"), msg(b"b", &[7; 300]), msg(b"c", b"")].concat();
        let want = vec![
            (b"a".to_vec(), b"one".to_vec()),
            (b"b".to_vec(), vec![7; 300]),
            (b"c".to_vec(), Vec::new()),
        ];
        for cut in 0..=stream.len() {
            let pipe = Pipe::new(b"ch".to_vec(), "");
            let mut inbox = Inbox::default();
            let mut got = Vec::new();
            let mut deliver = |k: &[u8], b: &[u8]| got.push((k.to_vec(), b.to_vec()));
            inbox.take(&stream[..cut], &pipe, &mut deliver).unwrap();
            inbox.take(&stream[cut..], &pipe, &mut deliver).unwrap();
            assert_eq!(got, want, "cut at {cut}");
            assert!(inbox.buf.is_empty());
        }
    }

    #[test]
    fn the_pause_between_failed_tries_doubles_up_to_its_bound() {
        let ms: Vec<u128> = (1..=8).map(|f| backoff(f).as_millis()).collect();
        assert_eq!(ms, [500, 1000, 2000, 4000, 8000, 16000, 16000, 16000]);
    }

    #[test]
    fn eval_refuses_while_the_publisher_is_not_connected_and_past_its_bound() {
        let pipe = Pipe::new(b"ch".to_vec(), "return 1");
        assert!(!pipe.eval(&[b"k"], &[b"a"]));
        pipe.0.pub_up.set(true);
        *pipe.0.sha.borrow_mut() = b"abc".to_vec();
        assert!(pipe.eval(&[b"k"], &[b"a"]));
        assert_eq!(
            pipe.0.out.borrow().as_slice(),
            b"*5\r\n$7\r\nEVALSHA\r\n$3\r\nabc\r\n$1\r\n1\r\n$1\r\nk\r\n$1\r\na\r\n"
        );
        let big = vec![0u8; PIPE_BYTES_MAX];
        assert!(pipe.eval(&[], &[&big]));
        assert!(!pipe.eval(&[], &[b"x"]));
        let s = pipe.stats();
        assert_eq!((s.commands, s.refused), (2, 2));
    }

    /// What the subscription may read, however malformed, never panics: bytes decoded as
    /// replies (RESP3 pushes, nested arrays, cut frames), any array taken as a message,
    /// any payload split into key and body.
    #[test]
    fn malformed_subscription_input_never_panics() {
        let pipe = Pipe::new(b"ch".to_vec(), "return 1");
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let alphabet = b"*$+-:>%~_#,(!=|\r\n0123456789smessagech\x00\xff";
        let mut delivered = 0;
        for round in 0..20_000 {
            let len = (next() % 64) as usize;
            let mut bytes: Vec<u8> = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            if round % 3 == 0 {
                bytes.splice(
                    0..0,
                    b"*3\r\n$8\r\nsmessage\r\n$2\r\nch\r\n".iter().copied(),
                );
            }
            if let Ok(Some((v, n))) = decode_reply(&bytes) {
                assert!(n <= bytes.len());
                if let Some(p) = smessage(&v, b"ch") {
                    on_payload(&pipe, p, &mut |_, _| delivered += 1);
                }
            }
            on_payload(&pipe, &bytes, &mut |k, b| {
                assert!(k.len() + b.len() + 2 <= bytes.len());
                delivered += 1;
            });
        }
        assert_eq!(pipe.stats().deliveries, delivered);
        let nested = Value::Array(vec![
            Value::Array(vec![]),
            Value::Bulk(b"ch".to_vec()),
            Value::Nil,
        ]);
        assert_eq!(smessage(&nested, b"ch"), None);
        assert_eq!(smessage(&Value::Array(vec![]), b"ch"), None);
        assert_eq!(smessage(&Value::Error("x".into()), b"ch"), None);
    }
}
