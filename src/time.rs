//! Wall-clock instants as plain values.
//!
//! Sans-IO: nothing in this crate's service modules reads the clock. The shard loop reads
//! it once per batch of work and passes the result down as a [`UnixTime`].

use std::fmt::Write as _;

const NANOS_PER_SEC: u64 = 1_000_000_000;
const SECS_PER_DAY: u64 = 86_400;

/// An instant as nanoseconds since the Unix epoch (1970-01-01T00:00:00Z), UTC.
///
/// A `u64` of nanoseconds covers 1970 to the year 2554. Arithmetic helpers saturate
/// instead of overflowing, so no input can make them panic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixTime(pub u64 /* nanos */);

impl UnixTime {
    /// 1970-01-01T00:00:00Z.
    pub const EPOCH: UnixTime = UnixTime(0);

    /// Whole seconds since the epoch (saturates at the largest representable instant).
    pub const fn from_secs(secs: u64) -> UnixTime {
        UnixTime(secs.saturating_mul(NANOS_PER_SEC))
    }

    /// Nanoseconds since the epoch.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Whole seconds since the epoch (truncated).
    pub const fn as_secs(self) -> u64 {
        self.0 / NANOS_PER_SEC
    }

    /// The nanoseconds past the whole second, `0..1_000_000_000`.
    pub const fn subsec_nanos(self) -> u32 {
        (self.0 % NANOS_PER_SEC) as u32
    }

    /// Seconds since the epoch as a float, computed the way `Duration::as_secs_f64` does
    /// (whole seconds plus nanos / 1e9), so the values match the reference's `created_at`.
    pub fn as_secs_f64(self) -> f64 {
        self.as_secs() as f64 + f64::from(self.subsec_nanos()) / NANOS_PER_SEC as f64
    }

    /// `self + secs`, saturating.
    pub const fn saturating_add_secs(self, secs: u64) -> UnixTime {
        UnixTime(self.0.saturating_add(secs.saturating_mul(NANOS_PER_SEC)))
    }

    /// `self + nanos`, saturating.
    pub const fn saturating_add_nanos(self, nanos: u64) -> UnixTime {
        UnixTime(self.0.saturating_add(nanos))
    }

    /// Nanoseconds from `earlier` to `self`; 0 when `earlier` is later (clock stepped back).
    pub const fn saturating_nanos_since(self, earlier: UnixTime) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// RFC 3339 in UTC with nine fractional digits and a `+00:00` offset, e.g.
    /// `2026-11-21T05:41:29.123456789+00:00`.
    pub fn to_rfc3339(self) -> String {
        let secs = self.as_secs();
        let (year, month, day) = civil_from_days(secs / SECS_PER_DAY);
        let sod = secs % SECS_PER_DAY;
        let mut out = String::with_capacity(35);
        // Writing to a String cannot fail.
        let _ = write!(
            out,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}+00:00",
            sod / 3600,
            sod % 3600 / 60,
            sod % 60,
            self.subsec_nanos()
        );
        out
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day).
///
/// Howard Hinnant's `civil_from_days`, restricted to non-negative day counts (which is all a
/// `u64` of nanoseconds can express), so it needs only unsigned arithmetic.
fn civil_from_days(days: u64) -> (u64, u32, u32) {
    // Shift the epoch to 0000-03-01 so leap days fall at the end of each year.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097; // day of era, [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, nanos: u64) -> UnixTime {
        UnixTime(secs * NANOS_PER_SEC + nanos)
    }

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(
            UnixTime::EPOCH.to_rfc3339(),
            "1970-01-01T00:00:00.000000000+00:00"
        );
        // Leap day in a year divisible by 400.
        assert_eq!(
            at(951_782_400, 0).to_rfc3339(),
            "2000-02-29T00:00:00.000000000+00:00"
        );
        // Leap day in an ordinary leap year.
        assert_eq!(
            at(1_709_210_096, 1).to_rfc3339(),
            "2024-02-29T12:34:56.000000001+00:00"
        );
        assert_eq!(
            at(1_767_225_600, 0).to_rfc3339(),
            "2026-01-01T00:00:00.000000000+00:00"
        );
        assert_eq!(
            at(1_795_239_689, 123_456_789).to_rfc3339(),
            "2026-11-21T05:41:29.123456789+00:00"
        );
        assert_eq!(
            at(1_798_761_599, 999_999_999).to_rfc3339(),
            "2026-12-31T23:59:59.999999999+00:00"
        );
        // 2100 is not a leap year: the day after 02-28 is 03-01.
        assert_eq!(
            at(4_107_542_400 - 86_400, 0).to_rfc3339(),
            "2100-02-28T00:00:00.000000000+00:00"
        );
        assert_eq!(
            at(4_107_542_400, 0).to_rfc3339(),
            "2100-03-01T00:00:00.000000000+00:00"
        );
        assert_eq!(
            UnixTime(u64::MAX).to_rfc3339(),
            "2554-07-21T23:34:33.709551615+00:00"
        );
    }

    #[test]
    fn every_day_of_2024_round_trips_month_lengths() {
        // Walk 2024 (leap) day by day and check month lengths.
        let start = 1_704_067_200u64 / SECS_PER_DAY; // 2024-01-01
        let mut counts = [0u32; 13];
        for d in start..start + 366 {
            let (y, m, _) = civil_from_days(d);
            assert_eq!(y, 2024);
            counts[m as usize] += 1;
        }
        assert_eq!(
            &counts[1..],
            &[31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
        );
        assert_eq!(civil_from_days(start + 366), (2025, 1, 1));
    }

    #[test]
    fn accessors_and_saturation() {
        let t = at(1_700_000_000, 250_000_000);
        assert_eq!(t.as_secs(), 1_700_000_000);
        assert_eq!(t.subsec_nanos(), 250_000_000);
        assert_eq!(t.as_secs_f64(), 1_700_000_000.25);
        assert_eq!(UnixTime::from_secs(5), UnixTime(5_000_000_000));
        assert_eq!(UnixTime::from_secs(u64::MAX), UnixTime(u64::MAX));
        assert_eq!(t.saturating_add_secs(1), at(1_700_000_001, 250_000_000));
        assert_eq!(
            UnixTime(u64::MAX).saturating_add_secs(1),
            UnixTime(u64::MAX)
        );
        assert_eq!(t.saturating_nanos_since(at(1_700_000_000, 0)), 250_000_000);
        assert_eq!(at(1, 0).saturating_nanos_since(at(2, 0)), 0);
    }
}
