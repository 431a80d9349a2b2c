//! Which skill shards a heartbeat need not ask (issue 26: the cross-shard hop made rare).
//!
//! A heartbeat asks the shard of each of its agent's skills for pending tasks
//! (`ClaimFor`), and nearly always hears "none": at `--cores N` most heartbeats would pay
//! a hop to another shard for nothing. Here the asking shard remembers a skill shard's
//! "none left" for [`SKILL_HINT_TTL`] and skips asking it again meanwhile, and the skill
//! shard tells every other shard as soon as that may no longer hold. Sans-IO, two halves:
//!
//! * [`Announcer`], on the shard that holds a skill's tasks: it answers a `ClaimFor` that
//!   leaves nothing pending for the asked skills, and no task aimed at an agent pending
//!   at all (a `ClaimFor` claims those too), with "none as of epoch E until T"
//!   ([`Announcer::none_left`]) and remembers having said so for each skill. A task of
//!   such a skill that becomes pending ([`Announcer::note_pending`]: created, put back,
//!   updated back to pending), or any task aimed at an agent
//!   ([`Announcer::note_targeted`]: every hint goes), bumps the epoch and is queued; the
//!   server tells every other shard after the message that made it and before its reply
//!   (so before the 2xx of the request that posted the task), each tell into room the
//!   server holds for it (`ShardCtx::announce_pending`: a full mailbox cannot refuse it;
//!   without room, no "none left" is said to that shard).
//! * [`SkillHints`], on the asking shard: "none" entries from replies, cleared by those
//!   tells. A reply older than a tell already heard from its shard (lower epoch: replies
//!   and tells travel on different rings), or than a put-back this shard sent there
//!   ([`SkillHints::barrier`]), is not recorded. A hint is used only while no message
//!   from its shard waits unread (`Shard::mail_waiting_from`: a tell sent before the 2xx
//!   of a post may still be in the ring when the next heartbeat runs here).
//!
//! Whatever is lost errs towards asking: a full table records nothing, and a hint lapses
//! within [`SKILL_HINT_TTL`] whatever happens (nor trusts a clock stepped back).

use std::collections::HashMap;
use std::time::Duration;

use crate::shard::ShardId;
use crate::time::UnixTime;

/// How long a "none left" is trusted by the asking shard: a bound on what an error in
/// the protocol above could cost (a task assigned through another shard's heartbeats at
/// most this late), and on the tables' entries.
pub const SKILL_HINT_TTL: Duration = Duration::from_secs(1);

/// Skills one shard remembers a "none left" for, on either side (each entry: the
/// skill's name and two words). Beyond it the skill shard says nothing (and the asker
/// keeps asking), after dropping what has lapsed: memory stays bounded whatever skill
/// names heartbeats carry.
pub const SKILL_HINTS_MAX: usize = 4096;

/// A skill shard's "none left" for the skills of one `ClaimFor`: valid as of `epoch`
/// until `until` (the skill shard's clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoneLeft {
    pub epoch: u64,
    pub until: UnixTime,
}

/// The skill shard's half: which skills it said "none left" for, and the epoch.
#[derive(Clone, Debug, Default)]
pub struct Announcer {
    /// Skill → until when an asker may trust the "none" it was told.
    told_none: HashMap<String, UnixTime>,
    /// Bumped by every skill queued in `out`.
    epoch: u64,
    /// Skills that may have a claimable task again, to tell every other shard. Bounded:
    /// each came out of `told_none`.
    out: Vec<String>,
    /// Every "none left" said must go (a task aimed at an agent became pending: a
    /// `ClaimFor` claims those too, whatever the skills asked).
    all: bool,
}

/// What a skill shard tells every other shard after a message (`Op::Pending`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    /// Skills that have a pending task again.
    pub skills: Vec<String>,
    /// The epoch as of which it holds.
    pub epoch: u64,
    /// Drop every hint from this shard, whatever the skill.
    pub all: bool,
}

impl Announcer {
    /// A `ClaimFor` for `skills` left none of them pending here: remembers having said so
    /// and returns what to tell the asker, or `None` when the table is full of entries
    /// still trusted (the asker then keeps asking).
    pub fn none_left(&mut self, skills: &[String], now: UnixTime) -> Option<NoneLeft> {
        let until = now.saturating_add(SKILL_HINT_TTL);
        let fresh = skills
            .iter()
            .filter(|s| !s.is_empty() && !self.told_none.contains_key(s.as_str()))
            .count();
        if self.told_none.len() + fresh > SKILL_HINTS_MAX {
            // An asker's hint lapses at `until` by its own clock, which may lag this
            // shard's by a turn of its loop: forgotten here a TTL later.
            let lapsed = now.saturating_sub(SKILL_HINT_TTL);
            self.told_none.retain(|_, u| *u > lapsed);
            if self.told_none.len() + fresh > SKILL_HINTS_MAX {
                return None;
            }
        }
        for s in skills.iter().filter(|s| !s.is_empty()) {
            match self.told_none.get_mut(s.as_str()) {
                Some(u) => *u = until,
                None => {
                    self.told_none.insert(s.clone(), until);
                }
            }
        }
        Some(NoneLeft {
            epoch: self.epoch,
            until,
        })
    }

    /// A task of `skill` became pending here: if an asker may believe none is left,
    /// queue the skill for [`Announcer::take`].
    pub fn note_pending(&mut self, skill: &str) {
        if let Some((s, _)) = self.told_none.remove_entry(skill) {
            self.epoch += 1;
            self.out.push(s);
        }
    }

    /// A task aimed at an agent became pending here: a `ClaimFor` of that agent claims
    /// it whatever the skills asked, so every "none left" said here goes.
    pub fn note_targeted(&mut self) {
        if !self.told_none.is_empty() {
            self.told_none.clear();
            self.out.clear();
            self.epoch += 1;
            self.all = true;
        }
    }

    /// What to tell every other shard, if anything.
    pub fn take(&mut self) -> Option<Announcement> {
        if self.out.is_empty() && !self.all {
            return None;
        }
        Some(Announcement {
            skills: std::mem::take(&mut self.out),
            epoch: self.epoch,
            all: std::mem::take(&mut self.all),
        })
    }
}

/// The asking shard's half: skills another shard said "none left" for.
#[derive(Clone, Debug, Default)]
pub struct SkillHints {
    /// Skill → (the shard that said it, the epoch of its reply, until when trusted).
    none: HashMap<String, (ShardId, u64, UnixTime)>,
    /// The highest epoch told by each shard (by index).
    told: Vec<u64>,
    /// Put-backs sent to each shard (by index): see [`SkillHints::barrier`].
    puts: Vec<u64>,
    /// Asks skipped thanks to a hint (for `/metrics`).
    pub skipped: u64,
}

fn at(v: &[u64], i: ShardId) -> u64 {
    v.get(i).copied().unwrap_or(0)
}

fn bump(v: &mut Vec<u64>, i: ShardId, to: impl FnOnce(u64) -> u64) {
    if v.len() <= i {
        v.resize(i + 1, 0);
    }
    v[i] = to(v[i]);
}

impl SkillHints {
    /// Whether asking for `skill` may be skipped at `now`: a "none left" for it that has
    /// not lapsed (nor lies further ahead than the TTL: a clock stepped back does not
    /// stretch it).
    pub fn none_left(&self, skill: &str, now: UnixTime) -> bool {
        self.none.get(skill).is_some_and(|&(_, _, until)| {
            now < until && until <= now.saturating_add(SKILL_HINT_TTL)
        })
    }

    /// What to pass to [`SkillHints::record`] for an ask sent to `to` now.
    pub fn asking(&self, to: ShardId) -> u64 {
        at(&self.puts, to)
    }

    /// The reply of shard `from` to a `ClaimFor` of `skills` (those of them it holds),
    /// asked when [`SkillHints::asking`] said `asked`.
    pub fn record(
        &mut self,
        from: ShardId,
        skills: &[&str],
        none: NoneLeft,
        asked: u64,
        now: UnixTime,
    ) {
        if asked != at(&self.puts, from) || none.epoch < at(&self.told, from) {
            // A put-back went to `from` after the ask (the reply may predate it), or
            // `from` told of a pending task after it made this reply.
            return;
        }
        let fresh = skills
            .iter()
            .filter(|s| !self.none.contains_key(**s))
            .count();
        if self.none.len() + fresh > SKILL_HINTS_MAX {
            self.none.retain(|_, (_, _, until)| now < *until);
            if self.none.len() + fresh > SKILL_HINTS_MAX {
                return;
            }
        }
        for s in skills {
            let entry = (from, none.epoch, none.until);
            match self.none.get_mut(*s) {
                Some(e) => *e = entry,
                None => {
                    self.none.insert((*s).to_owned(), entry);
                }
            }
        }
    }

    /// Shard `from` told that `what`'s skills (or, with `all`, any) may have pending
    /// tasks again.
    pub fn pending(&mut self, from: ShardId, what: &Announcement) {
        bump(&mut self.told, from, |e| e.max(what.epoch));
        if what.all {
            self.none.retain(|_, (by, _, _)| *by != from);
        } else {
            for s in &what.skills {
                self.none.remove(s.as_str());
            }
        }
    }

    /// This shard sends `to` something that may make a task pending there again (a claim
    /// put back, an update undone): `to` will tell, but only once it has read it, and a
    /// retry here may come first. So every hint from `to` goes now, and replies to asks
    /// sent before this are not recorded (`to` reads this shard's messages in order).
    pub fn barrier(&mut self, to: ShardId) {
        bump(&mut self.puts, to, |n| n + 1);
        self.none.retain(|_, (by, _, _)| *by != to);
    }

    /// Skills hinted (lapsed ones included until pruned).
    pub fn len(&self) -> usize {
        self.none.len()
    }

    /// Whether no skill is hinted.
    pub fn is_empty(&self) -> bool {
        self.none.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> UnixTime {
        UnixTime::from_secs(1_800_000_000).saturating_add(Duration::from_millis(ms))
    }

    fn skills(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_none_left_is_trusted_until_it_lapses_or_a_task_is_told() {
        let (mut a, mut h) = (Announcer::default(), SkillHints::default());
        let none = a.none_left(&skills(&["x", "y"]), t(0)).unwrap();
        h.record(1, &["x", "y"], none, h.asking(1), t(1));
        assert!(h.none_left("x", t(2)) && h.none_left("y", t(999)));
        assert!(!h.none_left("x", t(1000)), "lapsed after the TTL");
        assert!(!h.none_left("z", t(2)), "never said");
        let earlier = UnixTime::from_secs(1_799_999_000);
        assert!(
            !h.none_left("x", earlier),
            "a clock stepped back does not stretch it"
        );
        // A task of `x` becomes pending: told, and the hint goes.
        a.note_pending("x");
        a.note_pending("q"); // nobody was told "none" for q: nothing to tell
        let told = a.take().unwrap();
        assert_eq!((told.skills.clone(), told.all), (skills(&["x"]), false));
        assert!(a.take().is_none());
        h.pending(1, &told);
        assert!(!h.none_left("x", t(3)) && h.none_left("y", t(3)));
        // A second task of `x` tells nothing more until `x` is said "none" again.
        a.note_pending("x");
        assert!(a.take().is_none());
    }

    #[test]
    fn a_reply_overtaken_by_a_later_tell_is_not_recorded() {
        let (mut a, mut h) = (Announcer::default(), SkillHints::default());
        // The reply is made, then a task of `x` is posted and told; the tell is read
        // first (replies and tells travel on different rings).
        let stale = a.none_left(&skills(&["x"]), t(0)).unwrap();
        a.note_pending("x");
        let told = a.take().unwrap();
        h.pending(0, &told);
        h.record(0, &["x"], stale, h.asking(0), t(1));
        assert!(
            !h.none_left("x", t(2)),
            "a stale none must not hide the task"
        );
        // A newer reply is recorded again; an epoch told by another shard is not this one's.
        let fresh = a.none_left(&skills(&["x"]), t(5)).unwrap();
        assert!(fresh.epoch > stale.epoch);
        let other = Announcement {
            skills: skills(&["w"]),
            epoch: 1_000,
            all: false,
        };
        h.pending(1, &other);
        h.record(0, &["x"], fresh, h.asking(0), t(6));
        assert!(h.none_left("x", t(7)));
    }

    #[test]
    fn a_targeted_task_drops_every_hint_of_its_shard() {
        let (mut a, mut h) = (Announcer::default(), SkillHints::default());
        let mut b = Announcer::default();
        let none = a.none_left(&skills(&["x", "y"]), t(0)).unwrap();
        h.record(0, &["x", "y"], none, h.asking(0), t(0));
        let none_b = b.none_left(&skills(&["z"]), t(0)).unwrap();
        h.record(1, &["z"], none_b, h.asking(1), t(0));
        a.note_targeted();
        let told = a.take().unwrap();
        assert!(told.all && told.skills.is_empty());
        h.pending(0, &told);
        assert!(!h.none_left("x", t(1)) && !h.none_left("y", t(1)));
        assert!(h.none_left("z", t(1)), "another shard's hints stay");
        // Nothing said since: nothing more to tell.
        a.note_targeted();
        assert!(a.take().is_none());
    }

    #[test]
    fn a_put_back_drops_the_hints_of_its_shard_and_older_replies() {
        let (mut a, mut h) = (Announcer::default(), SkillHints::default());
        let asked = h.asking(0);
        let none = a.none_left(&skills(&["x"]), t(0)).unwrap();
        h.record(0, &["x"], none, asked, t(0));
        assert!(h.none_left("x", t(1)));
        // A claim is put back to shard 0: the hint goes at once.
        h.barrier(0);
        assert!(!h.none_left("x", t(1)));
        // A reply to an ask sent before the put-back is not recorded ...
        let late = a.none_left(&skills(&["x"]), t(2)).unwrap();
        h.record(0, &["x"], late, asked, t(2));
        assert!(!h.none_left("x", t(3)));
        // ... one to an ask sent after it is.
        let after = h.asking(0);
        h.record(0, &["x"], late, after, t(3));
        assert!(h.none_left("x", t(4)));
    }

    #[test]
    fn both_tables_stay_bounded_and_err_towards_asking() {
        let (mut a, mut h) = (Announcer::default(), SkillHints::default());
        let many: Vec<String> = (0..SKILL_HINTS_MAX).map(|i| format!("s{i}")).collect();
        let none = a.none_left(&many, t(0)).unwrap();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        h.record(0, &refs, none, 0, t(0));
        assert_eq!(h.len(), SKILL_HINTS_MAX);
        // Full of trusted entries: nothing more is said or recorded.
        assert!(a.none_left(&skills(&["new"]), t(10)).is_none());
        h.record(0, &["new"], none, 0, t(10));
        assert!(!h.none_left("new", t(11)) && h.len() == SKILL_HINTS_MAX);
        // Skills already told are renewed, not counted again.
        assert!(a.none_left(&skills(&["s1"]), t(10)).is_some());
        // Once lapsed (the announcer a TTL later than the asker), room again.
        let later = t(2 * SKILL_HINT_TTL.as_millis() as u64 + 20);
        let n2 = a.none_left(&skills(&["new"]), later).unwrap();
        h.record(0, &["new"], n2, 0, later);
        assert!(h.none_left("new", later));
        assert!(h.len() <= SKILL_HINTS_MAX);
    }
}
