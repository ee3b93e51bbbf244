//! When scheduled jobs run: fixed intervals aligned to the UNIX epoch, or
//! 5-field cron expressions in UTC.
//!
//! A schedule divides time into slots, computed from the clock alone: two
//! agents that never talk to each other agree on every slot, so that the
//! one that claims a slot first runs it and the others see it taken.
//!
//! - [`Schedule::Every`]: the slots are the multiples of the interval since
//!   1970-01-01 00:00 UTC, at millisecond precision (`every = "1h"` runs
//!   on the hour, `every = "15m"` at :00, :15, :30 and :45).
//! - [`Schedule::Cron`]: the slots are the whole minutes that a cron
//!   expression matches, in UTC (see [`Cron`]).
//!
//! Finding a slot skips whole months and days that cannot match, so that
//! even an expression that matches once in years (`0 0 29 2 *`) is found
//! in a few thousand steps, not one step per minute.
//!
//! Architecture invariant: nothing here reads the clock or the local time
//! zone; the caller passes the time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds in a minute.
const MINUTE_MS: i64 = 60_000;

/// Minutes in a day (UTC has no leap seconds in UNIX time).
const DAY_MINUTES: i64 = 1_440;

/// Days in 400 Gregorian years, after which dates fall on the same
/// weekdays again: an expression that matches some day matches one in any
/// span this long, which bounds every search.
const CYCLE_DAYS: i64 = 146_097;

/// When a job runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// Once per interval, at the multiples of the interval since the UNIX
    /// epoch (in whole milliseconds; the configuration requires at least a
    /// second).
    Every(Duration),
    /// At every minute a cron expression matches, in UTC.
    Cron(Cron),
}

impl Schedule {
    /// The latest slot at or before `now` (None only if a cron expression
    /// matches no time in the year before `now`).
    ///
    /// Cron expressions are searched back up to 400 years, the length of
    /// the Gregorian cycle, so `None` in fact means that the expression
    /// matches no date at all (`0 0 30 2 *`). `None` is also the answer
    /// for an `Every` shorter than a millisecond, which has no slots, and
    /// for a time too far from 1970 to be represented.
    pub fn slot_at_or_before(&self, now: SystemTime) -> Option<SystemTime> {
        let now = millis(now)?;
        match self {
            Schedule::Every(interval) => {
                let step = step_millis(*interval)?;
                from_millis(now.div_euclid(step).checked_mul(step)?)
            }
            Schedule::Cron(cron) => {
                let minute = cron.last_at_or_before(now.div_euclid(MINUTE_MS))?;
                from_millis(minute.checked_mul(MINUTE_MS)?)
            }
        }
    }

    /// The first slot strictly after `t`.
    ///
    /// `None` when there is none: a cron expression that matches no date,
    /// an `Every` shorter than a millisecond, or a time too far from 1970
    /// to be represented.
    pub fn next_after(&self, t: SystemTime) -> Option<SystemTime> {
        let t = millis(t)?;
        match self {
            Schedule::Every(interval) => {
                let step = step_millis(*interval)?;
                let slot = t.div_euclid(step).checked_mul(step)?;
                from_millis(slot.checked_add(step)?)
            }
            Schedule::Cron(cron) => {
                let first = t.div_euclid(MINUTE_MS).checked_add(1)?;
                let minute = cron.first_at_or_after(first)?;
                from_millis(minute.checked_mul(MINUTE_MS)?)
            }
        }
    }

    /// "every 1h" / "cron 0 3 * * *" for people.
    pub fn describe(&self) -> String {
        match self {
            Schedule::Every(interval) => {
                format!("every {}", humantime::format_duration(*interval))
            }
            Schedule::Cron(cron) => format!("cron {}", cron.expression),
        }
    }
}

/// A 5-field cron expression, matched in UTC.
///
/// The fields are minute (0-59), hour (0-23), day of month (1-31), month
/// (1-12 or `jan`-`dec`) and day of week (0-7 or `sun`-`sat`; 0 and 7 are
/// Sunday). Each is a comma-separated list of `*`, a number `a`, a range
/// `a-b`, or a step over either, `*/n` or `a-b/n` (every n-th value from
/// the start of the range).
///
/// A day matches when its month matches and, as in Vixie cron, its day of
/// month *and* its day of week match if either field starts with `*`, or
/// its day of month *or* its day of week if both are restricted:
/// `0 0 13 * 5` runs on the 13th and on every Friday, while
/// `0 0 */2 * 5` runs on Fridays that fall on an odd day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    /// The expression as written, with single spaces between fields.
    expression: String,
    /// Bit n set: minute n matches.
    minutes: u64,
    /// Bit n set: hour n matches.
    hours: u64,
    /// Bit n set: day of month n matches (bit 0 unused).
    days: u64,
    /// Bit n set: month n matches (bit 0 unused).
    months: u64,
    /// Bit n set: day of week n matches, 0 being Sunday.
    weekdays: u64,
    /// The day-of-month field starts with `*`.
    days_unrestricted: bool,
    /// The day-of-week field starts with `*`.
    weekdays_unrestricted: bool,
    /// No date matches (`0 0 31 2 *`), known when parsed so that searches
    /// end at once.
    never: bool,
}

/// The allowed values of one field, and how errors name it.
struct Field {
    name: &'static str,
    min: i64,
    max: i64,
    /// Three-letter names for the values from `min` on.
    names: &'static [&'static str],
}

const FIELDS: [Field; 5] = [
    Field {
        name: "minute",
        min: 0,
        max: 59,
        names: &[],
    },
    Field {
        name: "hour",
        min: 0,
        max: 23,
        names: &[],
    },
    Field {
        name: "day-of-month",
        min: 1,
        max: 31,
        names: &[],
    },
    Field {
        name: "month",
        min: 1,
        max: 12,
        names: &[
            "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
        ],
    },
    Field {
        name: "day-of-week",
        min: 0,
        max: 7,
        names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
    },
];

impl Cron {
    /// Parses `minute hour day-of-month month day-of-week`; the message of
    /// an error names the field and the value at fault.
    pub fn parse(expr: &str) -> Result<Cron, String> {
        let parts: Vec<&str> = expr.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = parts[..] else {
            return Err(format!(
                "a cron expression has 5 fields (minute hour day-of-month month day-of-week), \
                 this one has {}",
                parts.len()
            ));
        };
        let [f_minute, f_hour, f_day, f_month, f_weekday] = &FIELDS;
        let mut weekdays = parse_field(f_weekday, weekday)?;
        // Sunday is both 0 and 7.
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays & !(1 << 7)) | 1;
        }
        let mut cron = Cron {
            expression: parts.join(" "),
            minutes: parse_field(f_minute, minute)?,
            hours: parse_field(f_hour, hour)?,
            days: parse_field(f_day, day)?,
            months: parse_field(f_month, month)?,
            weekdays,
            days_unrestricted: day.starts_with('*'),
            weekdays_unrestricted: weekday.starts_with('*'),
            never: false,
        };
        cron.never = !cron.matches_some_date();
        Ok(cron)
    }

    /// Whether any date at all matches: with both day fields restricted,
    /// every month has days of every weekday, so any month does; otherwise
    /// a day of month must exist in a month (February has a 29th in leap
    /// years), and within 400 years it falls on every weekday.
    fn matches_some_date(&self) -> bool {
        if !self.days_unrestricted && !self.weekdays_unrestricted {
            return true;
        }
        (1..=12).any(|month| {
            let longest = if month == 2 {
                29
            } else {
                days_in_month(2001, month)
            };
            self.months & (1 << month) != 0 && (1..=longest).any(|d| self.days & (1 << d) != 0)
        })
    }

    /// Whether the day (`month`, `day` of month, `weekday`) matches.
    fn day_matches(&self, month: i64, day: i64, weekday: i64) -> bool {
        if self.months & (1 << month) == 0 {
            return false;
        }
        let by_day = self.days & (1 << day) != 0;
        let by_weekday = self.weekdays & (1 << weekday) != 0;
        if self.days_unrestricted || self.weekdays_unrestricted {
            by_day && by_weekday
        } else {
            by_day || by_weekday
        }
    }

    /// The first matching minute of a matching day at or after minute of
    /// the day `from`.
    fn first_time_from(&self, from: i64) -> Option<i64> {
        let mut minute = from % 60;
        for hour in from / 60..24 {
            if self.hours & (1 << hour) != 0 {
                let left = self.minutes & (u64::MAX << minute);
                if left != 0 {
                    return Some(hour * 60 + i64::from(left.trailing_zeros()));
                }
            }
            minute = 0;
        }
        None
    }

    /// The last matching minute of a matching day at or before minute of
    /// the day `until`.
    fn last_time_until(&self, until: i64) -> Option<i64> {
        let mut minute = until % 60;
        for hour in (0..=until / 60).rev() {
            if self.hours & (1 << hour) != 0 {
                let left = self.minutes & (u64::MAX >> (63 - minute));
                if left != 0 {
                    return Some(hour * 60 + 63 - i64::from(left.leading_zeros()));
                }
            }
            minute = 59;
        }
        None
    }

    /// The first matching minute (since the epoch) at or after `start`,
    /// searching at most one Gregorian cycle ahead.
    fn first_at_or_after(&self, start: i64) -> Option<i64> {
        if self.never {
            return None;
        }
        let mut day = start.div_euclid(DAY_MINUTES);
        let mut from = start.rem_euclid(DAY_MINUTES);
        let limit = day + CYCLE_DAYS + 1;
        while day <= limit {
            let (year, month, dom) = civil_from_days(day);
            if self.months & (1 << month) == 0 {
                // On to the first day of the next month.
                day += days_in_month(year, month) - dom + 1;
            } else {
                if self.day_matches(month, dom, weekday(day)) {
                    if let Some(minute) = self.first_time_from(from) {
                        return day.checked_mul(DAY_MINUTES)?.checked_add(minute);
                    }
                }
                day += 1;
            }
            from = 0;
        }
        None
    }

    /// The last matching minute (since the epoch) at or before `end`,
    /// searching at most one Gregorian cycle back.
    fn last_at_or_before(&self, end: i64) -> Option<i64> {
        if self.never {
            return None;
        }
        let mut day = end.div_euclid(DAY_MINUTES);
        let mut until = end.rem_euclid(DAY_MINUTES);
        let limit = day - CYCLE_DAYS - 1;
        while day >= limit {
            let (_, month, dom) = civil_from_days(day);
            if self.months & (1 << month) == 0 {
                // Back to the last day of the previous month.
                day -= dom;
            } else {
                if self.day_matches(month, dom, weekday(day)) {
                    if let Some(minute) = self.last_time_until(until) {
                        return day.checked_mul(DAY_MINUTES)?.checked_add(minute);
                    }
                }
                day -= 1;
            }
            until = DAY_MINUTES - 1;
        }
        None
    }
}

/// Parses one field into a bit set of its values.
fn parse_field(field: &Field, text: &str) -> Result<u64, String> {
    let mut bits = 0u64;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => (range, Some(step)),
            None => (item, None),
        };
        let (low, high) = if range == "*" {
            (field.min, field.max)
        } else if let Some((low, high)) = range.split_once('-') {
            let (low, high) = (value(field, text, low)?, value(field, text, high)?);
            if low > high {
                return Err(format!(
                    "{} field `{text}`: the range {low}-{high} runs backwards; write {high}-{low}",
                    field.name
                ));
            }
            (low, high)
        } else {
            if step.is_some() {
                return Err(format!(
                    "{} field `{text}`: a step needs a range before it, like `*/5` or `10-50/5`",
                    field.name
                ));
            }
            let one = value(field, text, range)?;
            (one, one)
        };
        let step = match step {
            None => 1,
            Some(step) => match step.parse::<i64>() {
                Ok(n) if n >= 1 && n <= field.max - field.min + 1 => n,
                _ => {
                    return Err(format!(
                        "{} field `{text}`: the step `{step}` is not a number from 1 to {}",
                        field.name,
                        field.max - field.min + 1
                    ))
                }
            },
        };
        let mut v = low;
        while v <= high {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

/// One value of a field: a number in its range, or one of its names.
fn value(field: &Field, text: &str, word: &str) -> Result<i64, String> {
    if !word.is_empty() && word.bytes().all(|b| b.is_ascii_digit()) {
        return match word.parse::<i64>() {
            Ok(n) if (field.min..=field.max).contains(&n) => Ok(n),
            _ => Err(format!(
                "{} field `{text}`: {word} is not within {}-{}",
                field.name, field.min, field.max
            )),
        };
    }
    let named = field
        .names
        .iter()
        .zip(field.min..)
        .find(|(name, _)| name.eq_ignore_ascii_case(word));
    match named {
        Some((_, n)) => Ok(n),
        None if word.is_empty() => Err(format!(
            "{} field `{text}`: a value is missing; write a number from {} to {}",
            field.name, field.min, field.max
        )),
        None => Err(format!(
            "{} field `{text}`: `{word}` is not a number from {} to {}{}",
            field.name,
            field.min,
            field.max,
            if field.names.is_empty() {
                ""
            } else {
                " or a three-letter name"
            }
        )),
    }
}

/// `t` in whole milliseconds since the epoch, rounded down (also before
/// 1970); `None` beyond ±292 million years.
fn millis(t: SystemTime) -> Option<i64> {
    match t.duration_since(UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_millis()).ok(),
        Err(before) => {
            let before = before.duration();
            let whole = i64::try_from(before.as_millis()).ok()?;
            let part = i64::from(before.as_nanos() % 1_000_000 != 0);
            whole.checked_add(part).map(|ms| -ms)
        }
    }
}

/// The time `ms` milliseconds after the epoch (before it when negative).
fn from_millis(ms: i64) -> Option<SystemTime> {
    let distance = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        UNIX_EPOCH.checked_add(distance)
    } else {
        UNIX_EPOCH.checked_sub(distance)
    }
}

/// An interval in whole milliseconds, `None` when shorter than one.
fn step_millis(interval: Duration) -> Option<i64> {
    i64::try_from(interval.as_millis())
        .ok()
        .filter(|&ms| ms > 0)
}

/// The (year, month 1-12, day 1-31) of a day counted from 1970-01-01, in
/// the proleptic Gregorian calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    // Count from 0000-03-01, so that the leap day ends each 4-year cycle.
    let z = days + 719_468;
    let era = z.div_euclid(CYCLE_DAYS);
    let day_of_era = z.rem_euclid(CYCLE_DAYS);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Months from March, 0-11.
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    (year_of_era + era * 400 + i64::from(month <= 2), month, day)
}

/// The day counted from 1970-01-01 of a date (the inverse of
/// [`civil_from_days`]).
#[cfg(test)]
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let shifted_month = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * shifted_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * CYCLE_DAYS + day_of_era - 719_468
}

fn is_leap_year(year: i64) -> bool {
    year.rem_euclid(4) == 0 && (year.rem_euclid(100) != 0 || year.rem_euclid(400) == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// The day of the week of a day counted from 1970-01-01 (a Thursday), 0
/// being Sunday.
fn weekday(days: i64) -> i64 {
    (days + 4).rem_euclid(7)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random sequence (Knuth's MMIX LCG), so that
    /// failures repeat.
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            self.0 >> 11
        }

        /// A value in `low..high`.
        fn within(&mut self, low: i64, high: i64) -> i64 {
            let span = u64::try_from(high - low).unwrap();
            low + i64::try_from(self.next() % span).unwrap()
        }
    }

    fn at(year: i64, month: i64, day: i64, hour: i64, minute: i64) -> SystemTime {
        let minutes = days_from_civil(year, month, day) * DAY_MINUTES + hour * 60 + minute;
        from_millis(minutes * MINUTE_MS).unwrap()
    }

    fn cron(expr: &str) -> Schedule {
        Schedule::Cron(Cron::parse(expr).unwrap())
    }

    /// Whether minute `m` since the epoch matches, computed afresh from
    /// the date of that minute.
    fn matches(cron: &Cron, m: i64) -> bool {
        let day = m.div_euclid(DAY_MINUTES);
        let time = m.rem_euclid(DAY_MINUTES);
        let (_, month, dom) = civil_from_days(day);
        cron.day_matches(month, dom, weekday(day))
            && cron.hours & (1 << (time / 60)) != 0
            && cron.minutes & (1 << (time % 60)) != 0
    }

    #[test]
    fn civil_dates_round_trip_and_known_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(days_from_civil(2000, 2, 29)), (2000, 2, 29));
        assert_eq!(
            civil_from_days(days_from_civil(2100, 2, 28) + 1),
            (2100, 3, 1)
        );
        // 2024-02-29 was a Thursday, 2024-03-03 a Sunday.
        assert_eq!(weekday(days_from_civil(2024, 2, 29)), 4);
        assert_eq!(weekday(days_from_civil(2024, 3, 3)), 0);
        let mut previous = civil_from_days(-800_001);
        for day in -800_000..800_000 {
            let date = civil_from_days(day);
            assert_eq!(days_from_civil(date.0, date.1, date.2), day);
            // Consecutive days: the next day of the month, or the 1st.
            if date.2 != 1 {
                assert_eq!((date.0, date.1, date.2 - 1), previous);
            } else {
                assert_eq!(previous.2, days_in_month(previous.0, previous.1));
            }
            previous = date;
        }
    }

    #[test]
    fn every_slots_are_multiples_of_the_interval_since_the_epoch() {
        let mut rng = Lcg(7);
        let intervals = [
            1_000, 1_500, 7_000, 60_000, 900_000, 3_600_000, 5_400_000, 86_400_000,
        ];
        for _ in 0..5_000 {
            let step = intervals[usize::try_from(rng.within(0, 8)).unwrap()];
            // From about 1900 to 2100, before the epoch too.
            let t_ms = rng.within(-2_208_988_800_000, 4_102_444_800_000);
            let t = from_millis(t_ms).unwrap() + Duration::from_nanos(rng.next() % 1_000_000);
            let schedule = Schedule::Every(Duration::from_millis(step.try_into().unwrap()));
            let slot = millis(schedule.slot_at_or_before(t).unwrap()).unwrap();
            assert_eq!(slot.rem_euclid(step), 0, "{t_ms} every {step}");
            assert!(
                slot <= t_ms && t_ms < slot + step,
                "{t_ms} every {step}: {slot}"
            );
            let next = millis(schedule.next_after(t).unwrap()).unwrap();
            assert_eq!(next, slot + step);
            // A slot itself is not after itself.
            let at_slot = from_millis(slot).unwrap();
            assert_eq!(schedule.slot_at_or_before(at_slot), Some(at_slot));
            assert_eq!(
                millis(schedule.next_after(at_slot).unwrap()),
                Some(slot + step)
            );
        }
    }

    #[test]
    fn every_has_no_slots_below_a_millisecond() {
        let schedule = Schedule::Every(Duration::from_micros(999));
        assert_eq!(schedule.slot_at_or_before(SystemTime::now()), None);
        assert_eq!(schedule.next_after(SystemTime::now()), None);
    }

    #[test]
    fn cron_slots_match_and_nothing_matches_between() {
        // Expressions whose slots are at most a few days apart, so that
        // every minute in between can be checked.
        let expressions = [
            "* * * * *",
            "*/5 * * * *",
            "7,19 */3 * * *",
            "0 9-17/2 * * 1-5",
            "30 9 * * 1-5",
            "15 14 1,15 * *",
            "0 0 1,15 * 0",
            "0 0 */2 * 5",
            "59 23 * * 7",
            "0 12 * * sat,sun",
            "45 6 * jan-jun,aug-dec *",
        ];
        let mut rng = Lcg(42);
        for expr in expressions {
            let Schedule::Cron(c) = cron(expr) else {
                unreachable!()
            };
            let schedule = Schedule::Cron(c.clone());
            for _ in 0..40 {
                // From 1960 to 2110, across leap days and 2100.
                let t_ms = rng.within(-315_619_200_000, 4_417_977_600_000);
                let t = from_millis(t_ms).unwrap();
                let slot = millis(schedule.slot_at_or_before(t).unwrap()).unwrap();
                assert!(slot <= t_ms, "{expr} at {t_ms}: slot {slot}");
                assert_eq!(slot % MINUTE_MS, 0);
                let (slot_m, now_m) = (slot / MINUTE_MS, t_ms.div_euclid(MINUTE_MS));
                assert!(matches(&c, slot_m), "{expr}: {slot_m} does not match");
                assert!(
                    now_m - slot_m < 32 * DAY_MINUTES,
                    "{expr}: gap from {slot_m} to {now_m}"
                );
                assert!(
                    (slot_m + 1..=now_m).all(|m| !matches(&c, m)),
                    "{expr}: a match between {slot_m} and {now_m}"
                );
                let next = millis(schedule.next_after(from_millis(slot).unwrap()).unwrap());
                let next = next.unwrap();
                assert!(
                    next > t_ms,
                    "{expr}: next after slot {slot} is {next}, not after {t_ms}"
                );
                assert_eq!(schedule.next_after(t).map(millis), Some(Some(next)));
                let next_m = next / MINUTE_MS;
                assert!(matches(&c, next_m));
                assert!((now_m + 1..next_m).all(|m| !matches(&c, m)));
            }
        }
    }

    #[test]
    fn rare_expressions_find_leap_days_without_scanning_minutes() {
        let schedule = cron("0 0 29 2 *");
        assert_eq!(
            schedule.slot_at_or_before(at(2025, 6, 1, 12, 0)),
            Some(at(2024, 2, 29, 0, 0))
        );
        assert_eq!(
            schedule.next_after(at(2024, 2, 29, 0, 0)),
            Some(at(2028, 2, 29, 0, 0))
        );
        // 2100 is not a leap year.
        assert_eq!(
            schedule.next_after(at(2097, 1, 1, 0, 0)),
            Some(at(2104, 2, 29, 0, 0))
        );
        assert_eq!(
            schedule.slot_at_or_before(at(2104, 2, 28, 23, 59)),
            Some(at(2096, 2, 29, 0, 0))
        );
        // Feb 29 on a Sunday: 2004, 2032, 2060, 2088, then 2128.
        let sunday = cron("0 0 29 2 */7");
        assert_eq!(
            sunday.next_after(at(2089, 1, 1, 0, 0)),
            Some(at(2128, 2, 29, 0, 0))
        );
        assert_eq!(
            sunday.slot_at_or_before(at(2127, 1, 1, 0, 0)),
            Some(at(2088, 2, 29, 0, 0))
        );
        // No date matches: no slot, answered at once.
        for never in ["0 0 30 2 *", "0 0 31 4,6,9,11 *", "0 0 31 2 */2"] {
            let schedule = cron(never);
            assert_eq!(
                schedule.slot_at_or_before(at(2025, 1, 1, 0, 0)),
                None,
                "{never}"
            );
            assert_eq!(schedule.next_after(at(2025, 1, 1, 0, 0)), None, "{never}");
        }
        // With the day of week restricted too, either day counts: the
        // Mondays of February.
        assert_eq!(
            cron("0 0 30 2 mon").next_after(at(2024, 3, 1, 0, 0)),
            Some(at(2025, 2, 3, 0, 0))
        );
    }

    #[test]
    fn rare_expressions_take_few_steps() {
        // Each search skips months and days that cannot match; a few
        // thousand steps take well under a millisecond. The bound here is
        // loose so that a busy machine does not fail the test, but a
        // minute-by-minute scan (tens of millions of steps) would.
        let schedules = [
            cron("0 0 29 2 */7"),
            cron("59 23 31 12 *"),
            cron("0 0 29 2 *"),
        ];
        let start = std::time::Instant::now();
        for schedule in &schedules {
            for year in 2000..2050 {
                assert!(schedule.next_after(at(year, 3, 1, 0, 0)).is_some());
                assert!(schedule.slot_at_or_before(at(year, 2, 28, 0, 0)).is_some());
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn known_dates() {
        // Sunday as 0 and as 7: 2024-03-03 was a Sunday.
        let sunday_0 = Cron::parse("0 12 * * 0").unwrap();
        let sunday_7 = Cron::parse("0 12 * * 7").unwrap();
        assert_eq!(sunday_0.weekdays, sunday_7.weekdays);
        for sunday in [sunday_0, sunday_7] {
            let schedule = Schedule::Cron(sunday);
            assert_eq!(
                schedule.slot_at_or_before(at(2024, 3, 6, 0, 0)),
                Some(at(2024, 3, 3, 12, 0))
            );
            assert_eq!(
                schedule.next_after(at(2024, 3, 3, 12, 0)),
                Some(at(2024, 3, 10, 12, 0))
            );
        }
        // Monday to Friday: from Saturday 2024-03-02 back to Friday and on
        // to Monday.
        let weekdays = cron("30 9 * * 1-5");
        assert_eq!(
            weekdays.slot_at_or_before(at(2024, 3, 2, 10, 0)),
            Some(at(2024, 3, 1, 9, 30))
        );
        assert_eq!(
            weekdays.next_after(at(2024, 3, 2, 10, 0)),
            Some(at(2024, 3, 4, 9, 30))
        );
        // At the slot's own minute, the slot is now; a second later too.
        let slot = at(2024, 3, 4, 9, 30);
        assert_eq!(weekdays.slot_at_or_before(slot), Some(slot));
        assert_eq!(
            weekdays.slot_at_or_before(slot + Duration::from_secs(59)),
            Some(slot)
        );
        assert_eq!(weekdays.next_after(slot), Some(at(2024, 3, 5, 9, 30)));
        // Both day fields restricted: the 13th or a Friday. 2024-06-13 was
        // a Thursday, 2024-06-07 a Friday.
        let either = cron("0 0 13 * 5");
        assert_eq!(
            either.slot_at_or_before(at(2024, 6, 13, 12, 0)),
            Some(at(2024, 6, 13, 0, 0))
        );
        assert_eq!(
            either.slot_at_or_before(at(2024, 6, 12, 12, 0)),
            Some(at(2024, 6, 7, 0, 0))
        );
        assert_eq!(
            either.next_after(at(2024, 6, 13, 0, 0)),
            Some(at(2024, 6, 14, 0, 0))
        );
        // Only Fridays when the day of month is `*`.
        assert_eq!(
            cron("0 0 * * 5").slot_at_or_before(at(2024, 6, 13, 12, 0)),
            Some(at(2024, 6, 7, 0, 0))
        );
        // Before the epoch: 1969-12-31 was a Wednesday.
        assert_eq!(
            cron("0 3 * * wed").slot_at_or_before(at(1970, 1, 1, 0, 0)),
            Some(at(1969, 12, 31, 3, 0))
        );
    }

    #[test]
    fn fields_parse_lists_ranges_steps_and_names() {
        let c = Cron::parse(" 0,10-20/5,*/30   1-3 1 Jan-MAR,dec mon-fri ").unwrap();
        assert_eq!(c.minutes, 1 | 1 << 10 | 1 << 15 | 1 << 20 | 1 << 30);
        assert_eq!(c.hours, 0b1110);
        assert_eq!(c.months, 0b1_0000_0000_1110);
        assert_eq!(c.weekdays, 0b11_1110);
        assert!(!c.days_unrestricted && !c.weekdays_unrestricted);
        assert_eq!(
            Schedule::Cron(c).describe(),
            "cron 0,10-20/5,*/30 1-3 1 Jan-MAR,dec mon-fri"
        );
        assert_eq!(
            Schedule::Every(Duration::from_secs(5_400)).describe(),
            "every 1h 30m"
        );
    }

    #[test]
    fn bad_expressions_name_the_field_and_value() {
        let cases = [
            ("61 * * * *", &["minute", "61", "0-59"][..]),
            ("* 24 * * *", &["hour", "24"]),
            ("* * 0 * *", &["day-of-month", "0", "1-31"]),
            ("* * * 13 *", &["month", "13"]),
            ("* * * * 8", &["day-of-week", "8", "0-7"]),
            (
                "* * * * mon-xyz",
                &["day-of-week", "`xyz`", "three-letter name"],
            ),
            ("5-1 * * * *", &["minute", "5-1", "backwards"]),
            ("*/0 * * * *", &["minute", "step `0`"]),
            ("5/10 * * * *", &["minute", "needs a range"]),
            ("1,,2 * * * *", &["minute", "missing"]),
            ("* * * *", &["5 fields", "has 4"]),
            ("* * * * * *", &["has 6"]),
            ("", &["has 0"]),
        ];
        for (expr, words) in cases {
            let message = Cron::parse(expr).unwrap_err();
            for word in words {
                assert!(
                    message.contains(word),
                    "{expr:?}: {message:?} lacks {word:?}"
                );
            }
        }
    }
}
