//! What keygate's rate-limit counters share: Kong's fixed windows aligned to UTC boundaries,
//! and the rule of `keygate:gateway/counters.hit` over one identity's counters. The keygate
//! host's counters, the in-instance adapter that stands in for them on other hosts, and the
//! guest (for `RateLimit-Reset`) all use this crate, so windows and the rule cannot drift apart.
//!
//! Times are whole seconds since the Unix epoch (UTC), Kong's `ngx.time()` resolution.

#![no_std]

extern crate alloc;

use alloc::vec::Vec;

/// A window length (`keygate:gateway/counters.period`), shortest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Period {
    Second,
    Minute,
    Hour,
    Day,
    Month,
    Year,
}

impl Period {
    pub const ALL: [Self; 6] = [
        Self::Second,
        Self::Minute,
        Self::Hour,
        Self::Day,
        Self::Month,
        Self::Year,
    ];

    /// A dense number for per-period tables.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The config field, and the `<period>` of Kong's counter key.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Second => "second",
            Self::Minute => "minute",
            Self::Hour => "hour",
            Self::Day => "day",
            Self::Month => "month",
            Self::Year => "year",
        }
    }

    /// The `<Period>` of `X-RateLimit-Limit-<Period>` / `X-RateLimit-Remaining-<Period>`.
    pub const fn header_suffix(self) -> &'static str {
        match self {
            Self::Second => "Second",
            Self::Minute => "Minute",
            Self::Hour => "Hour",
            Self::Day => "Day",
            Self::Month => "Month",
            Self::Year => "Year",
        }
    }

    /// Kong's `W` (`expiration.lua`): what `RateLimit-Reset` counts down from. Month and year
    /// are Kong's approximations (30 and 365 days); the windows themselves follow the calendar.
    pub const fn seconds(self) -> u64 {
        match self {
            Self::Second => 1,
            Self::Minute => 60,
            Self::Hour => 3_600,
            Self::Day => 86_400,
            Self::Month => 2_592_000,
            Self::Year => 31_536_000,
        }
    }

    /// The start of the window holding `now`: the second, minute, hour, day (00:00 UTC), the
    /// 1st of the month or Jan 1 (Kong's `timestamp.get_timestamps`).
    pub fn window_start(self, now: u64) -> u64 {
        match self {
            Self::Second | Self::Minute | Self::Hour | Self::Day => now - now % self.seconds(),
            Self::Month => {
                let (year, month, _) = civil_from_days(now / DAY);
                days_from_civil(year, month, 1) * DAY
            }
            Self::Year => {
                let (year, _, _) = civil_from_days(now / DAY);
                days_from_civil(year, 1, 1) * DAY
            }
        }
    }

    /// The first second after the window that starts at `start`.
    pub fn window_end(self, start: u64) -> u64 {
        match self {
            Self::Second | Self::Minute | Self::Hour | Self::Day => start + self.seconds(),
            Self::Month => {
                let (year, month, _) = civil_from_days(start / DAY);
                let (year, month) = if month == 12 {
                    (year + 1, 1)
                } else {
                    (year, month + 1)
                };
                days_from_civil(year, month, 1) * DAY
            }
            Self::Year => {
                let (year, _, _) = civil_from_days(start / DAY);
                days_from_civil(year + 1, 1, 1) * DAY
            }
        }
    }

    /// Kong's `RateLimit-Reset`: `max(1, W - whole seconds since the window started)`.
    pub fn reset(self, now: u64) -> u64 {
        let elapsed = now - self.window_start(now);
        self.seconds().saturating_sub(elapsed).max(1)
    }
}

const DAY: u64 = 86_400;

/// Days since 1970-01-01 → (year, month 1-12, day 1-31), proleptic Gregorian (H. Hinnant's
/// `civil_from_days`), for dates from 1970 on.
pub fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// (year ≥ 1970, month 1-12, day 1-31) → days since 1970-01-01.
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year / 400;
    let yoe = year - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// No window counted in this slot yet.
const UNUSED: u64 = u64::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    /// Start of the window `count` belongs to, or [`UNUSED`].
    start: u64,
    count: u64,
}

/// One identity's counters: a slot per period, each holding the count of one window. 96
/// bytes, no allocation: a window that has ended reads as 0 and is replaced by the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    slots: [Slot; 6],
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            slots: [Slot {
                start: UNUSED,
                count: 0,
            }; 6],
        }
    }
}

impl Counters {
    /// The count of `period`'s window holding `now`.
    pub fn usage(&self, period: Period, now: u64) -> u64 {
        let slot = &self.slots[period.index()];
        if slot.start == period.window_start(now) {
            slot.count
        } else {
            0
        }
    }

    /// `keygate:gateway/counters.hit` for this identity: push each window's usage before this
    /// request onto `before` (in the order of `windows`), then count the request in every
    /// window, unless `count_refused` is false and some window is at or over its limit
    /// (`limit - usage <= 0`, Kong's test). Returns whether the request was counted.
    pub fn hit(
        &mut self,
        windows: &[(Period, f64)],
        count_refused: bool,
        now: u64,
        before: &mut Vec<u64>,
    ) -> bool {
        let mut over = false;
        for &(period, limit) in windows {
            let usage = self.usage(period, now);
            over |= limit - usage as f64 <= 0.0;
            before.push(usage);
        }
        if over && !count_refused {
            return false;
        }
        for &(period, _) in windows {
            let start = period.window_start(now);
            let slot = &mut self.slots[period.index()];
            if slot.start != start {
                *slot = Slot { start, count: 0 };
            }
            slot.count = slot.count.saturating_add(1);
        }
        true
    }

    /// Whether every window counted here has ended by `now` (nothing left worth keeping).
    pub fn expired(&self, now: u64) -> bool {
        Period::ALL.iter().all(|&period| {
            let slot = &self.slots[period.index()];
            slot.start == UNUSED || period.window_end(slot.start) <= now
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-02-29 13:45:30 UTC, a leap day.
    const LEAP: u64 = 1_709_214_330;

    #[test]
    fn windows_align_to_utc_boundaries() {
        assert_eq!(Period::Second.window_start(LEAP), LEAP);
        assert_eq!(Period::Minute.window_start(LEAP), LEAP - 30);
        assert_eq!(Period::Hour.window_start(LEAP), LEAP - 45 * 60 - 30);
        assert_eq!(Period::Day.window_start(LEAP), 1_709_164_800, "2024-02-29");
        assert_eq!(
            Period::Month.window_start(LEAP),
            1_706_745_600,
            "2024-02-01"
        );
        assert_eq!(Period::Year.window_start(LEAP), 1_704_067_200, "2024-01-01");
        assert_eq!(
            Period::Month.window_end(1_706_745_600),
            1_709_251_200,
            "2024-03-01: February has 29 days in 2024"
        );
        assert_eq!(
            Period::Month.window_end(1_733_011_200),
            1_735_689_600,
            "Dec → Jan"
        );
        assert_eq!(
            Period::Year.window_end(1_704_067_200),
            1_735_689_600,
            "2025-01-01"
        );
        assert_eq!(Period::Month.window_start(0), 0);
    }

    #[test]
    fn reset_is_kongs_w_minus_elapsed_at_least_one() {
        assert_eq!(Period::Second.reset(LEAP), 1);
        assert_eq!(Period::Minute.reset(LEAP), 30);
        assert_eq!(Period::Minute.reset(LEAP - 30), 60);
        assert_eq!(Period::Hour.reset(LEAP), 3600 - 2730);
        // Month: W is 30 days, the window started 28 days and 13:45:30 ago.
        assert_eq!(
            Period::Month.reset(LEAP),
            2_592_000 - (LEAP - 1_706_745_600)
        );
        // On the 31st, more than W has passed: Kong says 1.
        assert_eq!(Period::Month.reset(1_706_745_600 - 1), 1);
    }

    #[test]
    fn local_rule_refuses_without_counting() {
        let mut counters = Counters::default();
        let windows = [(Period::Minute, 2.0), (Period::Hour, 10.0)];
        let mut before = Vec::new();
        assert!(counters.hit(&windows, false, LEAP, &mut before));
        assert!(counters.hit(&windows, false, LEAP, &mut before));
        assert!(!counters.hit(&windows, false, LEAP, &mut before));
        assert_eq!(before, [0, 0, 1, 1, 2, 2]);
        assert_eq!(
            counters.usage(Period::Hour, LEAP),
            2,
            "the refusal used no quota"
        );
        // The next minute starts from zero; the hour goes on.
        before.clear();
        assert!(counters.hit(&windows, false, LEAP + 30, &mut before));
        assert_eq!(before, [0, 2]);
    }

    #[test]
    fn redis_rule_counts_refused_requests() {
        let mut counters = Counters::default();
        let windows = [(Period::Minute, 1.0), (Period::Hour, 10.0)];
        let mut before = Vec::new();
        assert!(counters.hit(&windows, true, LEAP, &mut before));
        assert!(counters.hit(&windows, true, LEAP, &mut before));
        assert_eq!(before, [0, 0, 1, 1]);
        assert_eq!(counters.usage(Period::Hour, LEAP), 2);
    }

    #[test]
    fn fractional_limits_refuse_once_nothing_remains() {
        let mut counters = Counters::default();
        let windows = [(Period::Second, 2.5)];
        let mut before = Vec::new();
        let allowed = (0..5)
            .filter(|_| counters.hit(&windows, false, LEAP, &mut before))
            .count();
        assert_eq!(allowed, 3, "2.5 - 2 > 0 lets a third through");
    }

    #[test]
    fn counters_expire_with_their_longest_window() {
        let mut counters = Counters::default();
        assert!(counters.expired(LEAP), "nothing counted");
        let mut before = Vec::new();
        counters.hit(
            &[(Period::Second, 5.0), (Period::Minute, 5.0)],
            false,
            LEAP,
            &mut before,
        );
        assert!(!counters.expired(LEAP));
        assert!(!counters.expired(LEAP + 1), "the minute goes on");
        assert!(counters.expired(LEAP + 30), "the minute ended");
    }
}
