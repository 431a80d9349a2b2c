//! Wall-clock instants as plain values.
//!
//! Sans-IO modules never read the clock: the shard loop reads it once per batch and hands
//! the value in as a [`UnixTime`]. Formatting is done here, without a date library.

use std::fmt;
use std::time::Duration;

/// Nanoseconds in one second.
pub const NANOS_PER_SEC: u64 = 1_000_000_000;

const SECS_PER_DAY: u64 = 86_400;

/// An instant on the UTC wall clock: nanoseconds since 1970-01-01T00:00:00Z.
///
/// `u64` nanoseconds reach the year 2554, which is as far as this server needs to go.
/// Arithmetic saturates instead of overflowing, so no input can make it panic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixTime(pub u64 /* nanos since epoch */);

impl UnixTime {
    /// 1970-01-01T00:00:00Z.
    pub const EPOCH: UnixTime = UnixTime(0);

    /// Whole seconds since the epoch (saturating at the largest representable instant).
    pub const fn from_secs(secs: u64) -> Self {
        UnixTime(secs.saturating_mul(NANOS_PER_SEC))
    }

    /// Whole seconds since the epoch.
    /// Nanoseconds since the Unix epoch.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// `self` plus `secs` seconds, saturating.
    pub const fn saturating_add_secs(self, secs: u64) -> UnixTime {
        UnixTime(self.0.saturating_add(secs.saturating_mul(NANOS_PER_SEC)))
    }

    /// `self` plus `nanos` nanoseconds, saturating.
    pub const fn saturating_add_nanos(self, nanos: u64) -> UnixTime {
        UnixTime(self.0.saturating_add(nanos))
    }

    /// Nanoseconds from `earlier` to `self` (0 if `earlier` is later).
    pub const fn saturating_nanos_since(self, earlier: UnixTime) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    pub const fn as_secs(self) -> u64 {
        self.0 / NANOS_PER_SEC
    }

    /// The nanoseconds past the whole second.
    pub const fn subsec_nanos(self) -> u32 {
        (self.0 % NANOS_PER_SEC) as u32
    }

    /// Seconds since the epoch as a float, computed exactly like
    /// `SystemTime::duration_since(UNIX_EPOCH).as_secs_f64()` (which is what the reference
    /// server puts into `created_at` / `updated_at`).
    pub fn as_secs_f64(self) -> f64 {
        Duration::from_nanos(self.0).as_secs_f64()
    }

    /// `self + d`, saturating.
    pub fn saturating_add(self, d: Duration) -> Self {
        UnixTime(self.0.saturating_add(duration_nanos(d)))
    }

    /// `self - d`, saturating at the epoch.
    pub fn saturating_sub(self, d: Duration) -> Self {
        UnixTime(self.0.saturating_sub(duration_nanos(d)))
    }

    /// How long after `earlier` this instant is; zero if it is not later.
    pub fn saturating_duration_since(self, earlier: UnixTime) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// RFC 3339 in UTC with a `+00:00` offset, formatted like chrono's
    /// `DateTime<Utc>::to_rfc3339()` (which the reference uses): the fraction shows all
    /// non-zero sub-second digits in groups of 3 (`.123`, `.123456`, `.123456789`), and is
    /// left out when the nanoseconds are zero. For clock readings with nanosecond
    /// resolution that is 9 digits in 999 cases of 1000.
    ///
    /// Example: `2023-11-14T22:13:20.123456789+00:00`.
    pub fn to_rfc3339(self) -> String {
        self.to_string()
    }

    /// Parses what [`to_rfc3339`](Self::to_rfc3339) and
    /// [`to_rfc3339_nanos`](Self::to_rfc3339_nanos) write (UTC: `Z` or `+00:00`, 0 to 9
    /// fraction digits, years 1970 to 9999); `None` for anything else (another node's
    /// record that is not ours).
    pub fn parse_rfc3339(s: &str) -> Option<UnixTime> {
        let b = s.as_bytes();
        let num = |r: std::ops::Range<usize>| -> Option<u64> {
            let d = b.get(r)?;
            if d.is_empty() || !d.iter().all(u8::is_ascii_digit) {
                return None;
            }
            std::str::from_utf8(d).ok()?.parse().ok()
        };
        if b.len() < 20
            || b[4] != b'-'
            || b[7] != b'-'
            || b[10] != b'T'
            || b[13] != b':'
            || b[16] != b':'
        {
            return None;
        }
        let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (h, m, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
        if year < 1970
            || !(1..=12).contains(&month)
            || !(1..=31).contains(&day)
            || h > 23
            || m > 59
            || sec > 59
        {
            return None;
        }
        let mut i = 19;
        let mut nanos = 0u64;
        if b.get(i) == Some(&b'.') {
            let start = i + 1;
            let mut end = start;
            while b.get(end).is_some_and(u8::is_ascii_digit) {
                end += 1;
            }
            let digits = end - start;
            if digits == 0 || digits > 9 {
                return None;
            }
            nanos = num(start..end)? * 10u64.pow(9 - digits as u32);
            i = end;
        }
        match &b[i..] {
            b"Z" | b"+00:00" => {}
            _ => return None,
        }
        let days = days_from_civil(year, month, day)?;
        let secs = days * SECS_PER_DAY + h * 3600 + m * 60 + sec;
        Some(UnixTime(
            secs.checked_mul(NANOS_PER_SEC)?.checked_add(nanos)?,
        ))
    }

    /// RFC 3339 with always exactly 9 fraction digits and `+00:00`
    /// (chrono's `SecondsFormat::Nanos`).
    pub fn to_rfc3339_nanos(self) -> String {
        let mut s = String::with_capacity(35);
        // Writing into a String cannot fail.
        let _ = write_rfc3339(&mut s, self, Fraction::Nanos);
        s
    }
}

/// Formats as [`UnixTime::to_rfc3339`], without an intermediate allocation.
impl fmt::Display for UnixTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_rfc3339(f, *self, Fraction::AutoSi)
    }
}

#[derive(Clone, Copy)]
enum Fraction {
    AutoSi,
    Nanos,
}

fn write_rfc3339(w: &mut impl fmt::Write, t: UnixTime, fraction: Fraction) -> fmt::Result {
    let secs = t.as_secs();
    let nanos = t.subsec_nanos();
    let (year, month, day) = civil_from_days(secs / SECS_PER_DAY);
    let sod = secs % SECS_PER_DAY;
    write!(
        w,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )?;
    match fraction {
        Fraction::Nanos => write!(w, ".{nanos:09}")?,
        Fraction::AutoSi => {
            if nanos == 0 {
            } else if nanos % 1_000_000 == 0 {
                write!(w, ".{:03}", nanos / 1_000_000)?;
            } else if nanos % 1_000 == 0 {
                write!(w, ".{:06}", nanos / 1_000)?;
            } else {
                write!(w, ".{nanos:09}")?;
            }
        }
    }
    w.write_str("+00:00")
}

/// Proleptic Gregorian (year, month 1..=12, day 1..=31) of the day `days` after
/// 1970-01-01 (Howard Hinnant's `civil_from_days`, restricted to non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shift the epoch to 0000-03-01 so that leap days fall at the end of a year.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097; // day of era, [0, 146096]
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // March-based month, [0, 11]
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = era * 400 + yoe + u64::from(month <= 2);
    (year, month, day)
}

/// Days since 1970-01-01 of a civil date (the inverse of [`civil_from_days`]); `None`
/// for a day the month does not have.
fn days_from_civil(year: u64, month: u64, day: u64) -> Option<u64> {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    (civil_from_days(days) == (year, month, day)).then_some(days)
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, nanos: u64) -> UnixTime {
        UnixTime(secs * NANOS_PER_SEC + nanos)
    }

    #[test]
    fn rfc3339_parses_what_it_writes() {
        for t in [
            at(0, 0),
            at(1_795_239_689, 512_345_600),
            at(951_782_400, 1),
            at(4_102_444_799, 999_999_999),
            at(1_709_164_800, 0),
        ] {
            assert_eq!(UnixTime::parse_rfc3339(&t.to_rfc3339()), Some(t), "{t}");
            assert_eq!(
                UnixTime::parse_rfc3339(&t.to_rfc3339_nanos()),
                Some(t),
                "{t}"
            );
        }
        for bad in [
            "",
            "2026-02-30T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "1969-12-31T23:59:59Z",
            "2026-01-01T00:00:00",
            "2026-01-01T00:00:00+01:00",
            "2026-01-01T00:00:00.Z",
            "2026-01-01T00:00:00.1234567891Z",
            "2026-01-01 00:00:00Z",
            "２026-01-01T00:00:00Z",
        ] {
            assert_eq!(UnixTime::parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn epoch() {
        assert_eq!(UnixTime::EPOCH.to_rfc3339(), "1970-01-01T00:00:00+00:00");
        assert_eq!(
            UnixTime::EPOCH.to_rfc3339_nanos(),
            "1970-01-01T00:00:00.000000000+00:00"
        );
    }

    #[test]
    fn known_dates() {
        // `date -u -d @N` for each.
        let cases = [
            (951_782_400, "2000-02-29T00:00:00+00:00"),
            (951_868_799, "2000-02-29T23:59:59+00:00"),
            (951_868_800, "2000-03-01T00:00:00+00:00"),
            (1_700_000_000, "2023-11-14T22:13:20+00:00"),
            (1_709_164_800, "2024-02-29T00:00:00+00:00"),
            (1_735_689_599, "2024-12-31T23:59:59+00:00"),
            (1_735_689_600, "2025-01-01T00:00:00+00:00"),
            (4_102_444_800, "2100-01-01T00:00:00+00:00"),
            (4_107_542_400, "2100-03-01T00:00:00+00:00"), // 2100 is not a leap year
        ];
        for (secs, want) in cases {
            assert_eq!(UnixTime::from_secs(secs).to_rfc3339(), want, "{secs}");
        }
    }

    #[test]
    fn fraction_follows_chrono_auto_si() {
        let t = 1_700_000_000;
        assert_eq!(
            at(t, 123_456_789).to_rfc3339(),
            "2023-11-14T22:13:20.123456789+00:00"
        );
        assert_eq!(
            at(t, 123_456_000).to_rfc3339(),
            "2023-11-14T22:13:20.123456+00:00"
        );
        assert_eq!(
            at(t, 120_000_000).to_rfc3339(),
            "2023-11-14T22:13:20.120+00:00"
        );
        assert_eq!(at(t, 1).to_rfc3339(), "2023-11-14T22:13:20.000000001+00:00");
        assert_eq!(
            at(t, 120_000_000).to_rfc3339_nanos(),
            "2023-11-14T22:13:20.120000000+00:00"
        );
    }

    #[test]
    fn largest_instant_formats() {
        assert_eq!(
            UnixTime(u64::MAX).to_rfc3339(),
            "2554-07-21T23:34:33.709551615+00:00"
        );
    }

    #[test]
    fn conversions() {
        let t = at(1_700_000_000, 500_000_000);
        assert_eq!(t.as_secs(), 1_700_000_000);
        assert_eq!(t.subsec_nanos(), 500_000_000);
        assert_eq!(t.as_secs_f64(), 1_700_000_000.5);
        assert_eq!(
            t.as_secs_f64(),
            Duration::new(1_700_000_000, 500_000_000).as_secs_f64()
        );
        assert_eq!(UnixTime::from_secs(u64::MAX), UnixTime(u64::MAX));
    }

    #[test]
    fn saturating_arithmetic() {
        let t = UnixTime::from_secs(10);
        assert_eq!(
            t.saturating_add(Duration::from_secs(5)),
            UnixTime::from_secs(15)
        );
        assert_eq!(t.saturating_add(Duration::MAX), UnixTime(u64::MAX));
        assert_eq!(t.saturating_sub(Duration::from_secs(11)), UnixTime::EPOCH);
        assert_eq!(
            t.saturating_duration_since(UnixTime::from_secs(4)),
            Duration::from_secs(6)
        );
        assert_eq!(
            UnixTime::from_secs(4).saturating_duration_since(t),
            Duration::ZERO
        );
    }

    #[test]
    fn every_day_round_trips_through_the_calendar() {
        // Walk day by day across 600 years and check the calendar advances by exactly one day.
        let mut prev = civil_from_days(0);
        assert_eq!(prev, (1970, 1, 1));
        for days in 1..(600 * 366) {
            let cur = civil_from_days(days);
            let (py, pm, pd) = prev;
            let leap = (py % 4 == 0 && py % 100 != 0) || py % 400 == 0;
            let month_len = match pm {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            let want = if pd < month_len {
                (py, pm, pd + 1)
            } else if pm < 12 {
                (py, pm + 1, 1)
            } else {
                (py + 1, 1, 1)
            };
            assert_eq!(cur, want, "day {days}");
            prev = cur;
        }
    }
}
