//! Dates as mail writes them, always in UTC: RFC 5322 `Date:` and trace
//! headers, and the asctime() form of an mbox `From ` line.

use std::time::{SystemTime, UNIX_EPOCH};

const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// A UTC calendar time, broken down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    /// The year, e.g. 2026.
    pub year: i64,
    /// 1 to 12.
    pub month: u32,
    /// 1 to 31.
    pub day: u32,
    /// 0 to 23.
    pub hour: u32,
    /// 0 to 59.
    pub minute: u32,
    /// 0 to 59.
    pub second: u32,
    /// Index into Thursday-first weekday names (1970-01-01 was a Thursday).
    weekday: usize,
}

impl Civil {
    /// Seconds since the Unix epoch (negative is before 1970).
    pub fn from_unix(secs: i64) -> Civil {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Civil {
            year,
            month,
            day,
            hour: (rem / 3600) as u32,
            minute: (rem % 3600 / 60) as u32,
            second: (rem % 60) as u32,
            weekday: days.rem_euclid(7) as usize,
        }
    }

    /// A point in time (before the epoch counts as the epoch).
    pub fn from_system(t: SystemTime) -> Civil {
        let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Civil::from_unix(i64::try_from(secs).unwrap_or(i64::MAX / 2))
    }

    /// Three-letter English weekday name.
    pub fn weekday_name(&self) -> &'static str {
        WEEKDAYS[self.weekday]
    }

    /// Three-letter English month name.
    pub fn month_name(&self) -> &'static str {
        MONTHS[(self.month - 1) as usize]
    }
}

/// RFC 5322 date-time in UTC, e.g. `Fri, 27 Nov 2026 11:30:00 +0000`.
pub fn rfc5322(t: SystemTime) -> String {
    rfc5322_civil(Civil::from_system(t))
}

/// [`rfc5322`] of Unix seconds.
pub fn rfc5322_unix(secs: u64) -> String {
    rfc5322_civil(Civil::from_unix(
        i64::try_from(secs).unwrap_or(i64::MAX / 2),
    ))
}

fn rfc5322_civil(c: Civil) -> String {
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        c.weekday_name(),
        c.day,
        c.month_name(),
        c.year,
        c.hour,
        c.minute,
        c.second
    )
}

/// The asctime() form of an mbox `From ` line, in UTC:
/// `Thu Jan  1 00:00:00 1970`.
pub fn asctime(t: SystemTime) -> String {
    let c = Civil::from_system(t);
    format!(
        "{} {} {:>2} {:02}:{:02}:{:02} {}",
        c.weekday_name(),
        c.month_name(),
        c.day,
        c.hour,
        c.minute,
        c.second,
        c.year
    )
}

/// `YYYY-MM-DD` in UTC (for listings meant for people).
pub fn iso_date(t: SystemTime) -> String {
    let c = Civil::from_system(t);
    format!("{:04}-{:02}-{:02}", c.year, c.month, c.day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc5322_dates() {
        assert_eq!(rfc5322(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 +0000");
        // 2026-11-27 11:30:05 UTC
        let t = UNIX_EPOCH + Duration::from_secs(1_795_779_005);
        assert_eq!(rfc5322(t), "Fri, 27 Nov 2026 11:30:05 +0000");
        assert_eq!(
            rfc5322_unix(1_795_779_005),
            "Fri, 27 Nov 2026 11:30:05 +0000"
        );
        // Leap day.
        assert_eq!(rfc5322_unix(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        // Before the epoch counts as the epoch.
        assert_eq!(
            rfc5322(UNIX_EPOCH - Duration::from_secs(5)),
            "Thu, 01 Jan 1970 00:00:00 +0000"
        );
    }

    #[test]
    fn asctime_and_iso() {
        assert_eq!(asctime(UNIX_EPOCH), "Thu Jan  1 00:00:00 1970");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_779_005);
        assert_eq!(asctime(t), "Fri Nov 27 11:30:05 2026");
        assert_eq!(iso_date(t), "2026-11-27");
    }

    #[test]
    fn civil_agrees_with_a_day_by_day_walk() {
        // Walk 1970..2100 one day at a time and compare.
        let (mut y, mut m, mut d) = (1970i64, 1u32, 1u32);
        let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        for day in 0..(130 * 366) {
            let c = Civil::from_unix(day * 86_400 + 3_661);
            assert_eq!((c.year, c.month, c.day), (y, m, d), "day {day}");
            assert_eq!((c.hour, c.minute, c.second), (1, 1, 1));
            let len = match m {
                2 if leap(y) => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            d += 1;
            if d > len {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }
}
