//! Working days for statutory time limits: Monday to Friday, less the public holidays, plus
//! the weekend days declared working days (调休), as the catalog file lists them. Dates are
//! in China Standard Time (UTC+8), where the time limits run.

use std::collections::BTreeSet;

use time::{Date, Duration, OffsetDateTime, UtcOffset, Weekday};

/// China Standard Time.
pub const CST: UtcOffset = match UtcOffset::from_hms(8, 0, 0) {
    Ok(o) => o,
    Err(_) => UtcOffset::UTC,
};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Calendar {
    pub holidays: BTreeSet<Date>,
    pub workdays: BTreeSet<Date>,
}

impl Calendar {
    pub fn is_working_day(&self, d: Date) -> bool {
        if self.workdays.contains(&d) {
            return true;
        }
        !matches!(d.weekday(), Weekday::Saturday | Weekday::Sunday) && !self.holidays.contains(&d)
    }

    /// The date `n` working days after `start` (the day of receipt does not count): the
    /// due date of an application received on `start` with a time limit of `n` days.
    pub fn add_working_days(&self, start: Date, n: u32) -> Date {
        let mut d = start;
        let mut left = n;
        while left > 0 {
            d = d.next_day().unwrap_or(d);
            if self.is_working_day(d) {
                left -= 1;
            }
        }
        d
    }

    /// Working days after `start` up to and including `end` (0 when `end` is not after
    /// `start`): how long something received on `start` and done on `end` took.
    pub fn working_days_between(&self, start: Date, end: Date) -> u32 {
        let mut d = start;
        let mut n = 0;
        while d < end {
            d = match d.next_day() {
                Some(next) => next,
                None => break,
            };
            if self.is_working_day(d) {
                n += 1;
            }
        }
        n
    }

    /// The due date (CST) of something received at `received_ms` (Unix milliseconds).
    pub fn due_date(&self, received_ms: i64, limit_days: u32) -> Date {
        self.add_working_days(cst_date(received_ms), limit_days)
    }
}

/// The CST calendar date of a Unix-milliseconds instant.
pub fn cst_date(ms: i64) -> Date {
    let t = OffsetDateTime::UNIX_EPOCH + Duration::milliseconds(ms);
    t.to_offset(CST).date()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    #[test]
    fn weekends_holidays_and_makeup_days() {
        let c = Calendar {
            holidays: [
                date!(2026 - 10 - 01),
                date!(2026 - 10 - 02),
                date!(2026 - 10 - 05),
            ]
            .into(),
            workdays: [date!(2026 - 10 - 10)].into(),
        };
        // Friday 2026-11-20 + 1 working day = Monday 2026-11-23.
        assert_eq!(
            c.add_working_days(date!(2026 - 11 - 20), 1),
            date!(2026 - 11 - 23)
        );
        // Wednesday 2026-09-30 + 2: Oct 1, 2 holidays, 3–4 weekend, 5 holiday → 6, 7.
        assert_eq!(
            c.add_working_days(date!(2026 - 09 - 30), 2),
            date!(2026 - 10 - 07)
        );
        // Saturday 2026-10-10 is a make-up working day.
        assert_eq!(
            c.add_working_days(date!(2026 - 10 - 09), 1),
            date!(2026 - 10 - 10)
        );
        assert_eq!(
            c.add_working_days(date!(2026 - 10 - 09), 0),
            date!(2026 - 10 - 09)
        );
        // 23:30 UTC is the next day in CST.
        let ms = (date!(2026 - 11 - 22)
            .midnight()
            .assume_utc()
            .unix_timestamp()
            + 23 * 3600
            + 1800)
            * 1000;
        assert_eq!(cst_date(ms), date!(2026 - 11 - 23));
    }
}
