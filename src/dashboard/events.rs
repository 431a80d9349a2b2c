//! The content of the dashboard's event stream (`GET /api/dashboard/events`), on the
//! shard layer: a `hello`, then every [`EVENTS_POLL_INTERVAL`] the `changes` read from
//! every shard's change log (`shard::ChangesSince`, from the last sequence seen of each)
//! and every [`SUMMARY_EVERY_POLLS`] polls a `summary`, as server-sent events. No socket
//! here: the server writes what [`EventStream`] puts in its buffer, and ends the stream
//! when the client is gone, too slow, or the server shuts down.

use std::time::Duration;

use serde::Serialize;

use crate::dashboard::api::{summary_of, Summary};
use crate::dashboard::ops::{Op, Reply};
use crate::shard::{ask_all, Change, ChangesSince, Delta, Request, Shard};
use crate::{hub, pairing, registry};

/// How often the event stream gathers the shards' changes.
pub const EVENTS_POLL_INTERVAL: Duration = Duration::from_millis(500);
/// The summary (counts and per-shard counters) is pushed every this many polls.
pub const SUMMARY_EVERY_POLLS: u32 = 2;
/// Events sent in one push; more (a burst) are sent as one `resync` instead, after
/// which the page re-reads what it shows.
pub const EVENTS_PER_PUSH_MAX: usize = 256;

/// What one push of the stream says about changes.
#[derive(Serialize, Default, Debug, PartialEq)]
pub struct Changes {
    pub events: Vec<Change>,
    /// Events were dropped (a burst, or the ring moved on): re-read everything shown.
    pub resync: bool,
}

/// Folds the shards' deltas into one push, updating `seqs` (the last sequence seen per
/// shard).
pub fn fold(seqs: &mut [u64], deltas: Vec<Delta>) -> Changes {
    let mut c = Changes::default();
    for (i, d) in deltas.into_iter().enumerate() {
        if let Some(s) = seqs.get_mut(i) {
            *s = d.seq;
        }
        c.resync |= d.lost;
        c.events.extend(d.changes);
    }
    if c.events.len() > EVENTS_PER_PUSH_MAX {
        c.events.clear();
        c.resync = true;
    }
    c
}

/// Appends one server-sent event to `out`.
pub fn sse(out: &mut Vec<u8>, event: &str, data: &impl Serialize) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    // serde_json writes no raw newline, so one `data:` line carries the whole value.
    out.extend_from_slice(&serde_json::to_vec(data).unwrap_or_else(|_| b"null".to_vec()));
    out.extend_from_slice(b"\n\n");
}

/// One reader of the shards' change logs: the last sequence seen of each, the polls
/// made.
#[derive(Debug)]
pub struct EventStream {
    seqs: Vec<u64>,
    tick: u32,
}

impl EventStream {
    /// Starts a stream from now (the page reads the lists itself first): the current
    /// sequence of every shard, then `hello` and a `summary` into `out`. A shard that
    /// cannot be asked leaves its sequence at 0 (the first poll then resyncs) and the
    /// summary empty.
    pub async fn open<S: Shard>(sh: &S, out: &mut Vec<u8>) -> EventStream
    where
        ChangesSince: Request<S::Msg, Reply = Delta>,
        registry::ops::Op: Request<S::Msg, Reply = registry::ops::Reply>,
        hub::ops::Op: Request<S::Msg, Reply = hub::ops::Reply>,
        pairing::ops::Op: Request<S::Msg, Reply = pairing::ops::Reply>,
        Op: Request<S::Msg, Reply = Reply>,
    {
        let shards = sh.count();
        let mut seqs = vec![0u64; shards];
        if let Ok(deltas) = ask_all(sh, |_| ChangesSince(u64::MAX)).await {
            for (s, d) in seqs.iter_mut().zip(deltas) {
                *s = d.seq;
            }
        }
        let summary = summary_of(sh)
            .await
            .unwrap_or_else(|_| Summary::empty(sh.now().as_secs_f64()));
        sse(out, "hello", &serde_json::json!({ "shards": shards }));
        sse(out, "summary", &summary);
        EventStream { seqs, tick: 0 }
    }

    /// One poll: the changes since the last one (`changes`, when there are any), the
    /// summary every [`SUMMARY_EVERY_POLLS`] polls, else a comment line (it keeps
    /// proxies from timing the stream out and finds a client that went away). Nothing
    /// when the shards' changes could not be read (a mailbox stayed full): the next poll
    /// tries again from the same sequences.
    pub async fn poll<S: Shard>(&mut self, sh: &S, out: &mut Vec<u8>)
    where
        ChangesSince: Request<S::Msg, Reply = Delta>,
        registry::ops::Op: Request<S::Msg, Reply = registry::ops::Reply>,
        hub::ops::Op: Request<S::Msg, Reply = hub::ops::Reply>,
        pairing::ops::Op: Request<S::Msg, Reply = pairing::ops::Reply>,
        Op: Request<S::Msg, Reply = Reply>,
    {
        self.tick = self.tick.wrapping_add(1);
        let with_summary = self.tick % SUMMARY_EVERY_POLLS == 0;
        let seqs = &self.seqs;
        let Ok(deltas) = ask_all(sh, |s| ChangesSince(seqs[s])).await else {
            return;
        };
        let changes = fold(&mut self.seqs, deltas);
        if !changes.events.is_empty() || changes.resync {
            sse(out, "changes", &changes);
        }
        if with_summary {
            if let Ok(summary) = summary_of(sh).await {
                sse(out, "summary", &summary);
            }
        } else if out.is_empty() {
            out.extend_from_slice(b": tick\n\n");
        }
    }

    /// The last sequence seen of each shard.
    pub fn seqs(&self) -> &[u64] {
        &self.seqs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::Topic;

    fn ev(seq: u64) -> Change {
        Change {
            seq,
            topic: Topic::Agent,
            id: format!("a{seq}"),
        }
    }

    #[test]
    fn folding_deltas_tracks_sequences_and_bursts() {
        let mut seqs = vec![0, 0];
        let c = fold(
            &mut seqs,
            vec![
                Delta {
                    seq: 3,
                    changes: vec![ev(3)],
                    lost: false,
                },
                Delta::default(),
            ],
        );
        assert_eq!(seqs, [3, 0]);
        assert_eq!(c.events.len(), 1);
        assert!(!c.resync);
        let burst = Delta {
            seq: 1000,
            changes: (4..1000).map(ev).collect(),
            lost: false,
        };
        let c = fold(&mut seqs, vec![burst, Delta::default()]);
        assert!(c.resync && c.events.is_empty());
        assert_eq!(seqs[0], 1000);
    }

    #[test]
    fn sse_frames_are_one_data_line() {
        let mut out = Vec::new();
        sse(&mut out, "x", &serde_json::json!({"a": "b\nc"}));
        assert_eq!(out, b"event: x\ndata: {\"a\":\"b\\nc\"}\n\n");
    }
}
