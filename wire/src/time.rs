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
