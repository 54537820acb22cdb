//! Cron schedules as Dapr's `bindings.cron` reads them (robfig/cron with optional seconds and
//! descriptors):
//!
//! - five fields `min hour dom month dow`, or six with seconds first;
//! - `*`, `?`, numbers, names (`JAN`–`DEC`, `SUN`–`SAT`), ranges `a-b`, steps `*/n`, `a-b/n`,
//!   `a/n`, lists `a,b`;
//! - day-of-month and day-of-week: when both are restricted, either may match;
//! - descriptors `@yearly` (`@annually`), `@monthly`, `@weekly`, `@daily` (`@midnight`),
//!   `@hourly`, and `@every <duration>` (Go durations: `1h30m`, `15s`, `500ms`);
//! - a time zone prefix `CRON_TZ=<zone>` or `TZ=<zone>` (IANA names; the default is the
//!   machine's local zone).

use std::time::Duration;

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan, Zoned};

/// A parsed schedule.
#[derive(Clone, Debug)]
pub enum Schedule {
    /// A fixed interval from the start (`@every`).
    Every(Duration),
    /// Calendar fields in a time zone.
    Fields(Box<Fields>),
}

/// The calendar fields of a schedule, as bit sets.
#[derive(Clone, Debug)]
pub struct Fields {
    seconds: u64,
    minutes: u64,
    hours: u64,
    dom: u64,
    months: u64,
    dow: u64,
    dom_star: bool,
    dow_star: bool,
    tz: TimeZone,
}

struct Range {
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const SECONDS: Range = Range {
    min: 0,
    max: 59,
    names: &[],
};
const MINUTES: Range = SECONDS;
const HOURS: Range = Range {
    min: 0,
    max: 23,
    names: &[],
};
const DOM: Range = Range {
    min: 1,
    max: 31,
    names: &[],
};
const MONTHS: Range = Range {
    min: 1,
    max: 12,
    names: &[
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ],
};
const DOW: Range = Range {
    min: 0,
    max: 6,
    names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
};

fn value(s: &str, r: &Range) -> Result<u32, String> {
    if let Some(i) = r.names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
        return Ok(r.min + i as u32);
    }
    let v: u32 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number or a name"))?;
    if v < r.min || v > r.max {
        return Err(format!("{v} is outside {}-{}", r.min, r.max));
    }
    Ok(v)
}

/// Parses one field into a bit set; the flag says whether it was `*` or `?`.
fn field(spec: &str, r: &Range) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    let mut star = false;
    for part in spec.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step.parse().map_err(|_| format!("invalid step '{step}'"))?;
                if step == 0 {
                    return Err("a step must be positive".into());
                }
                (range, Some(step))
            }
            None => (part, None),
        };
        let (lo, hi) = if range == "*" || range == "?" {
            if step.is_none() {
                star = true;
            }
            (r.min, r.max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a, r)?, value(b, r)?)
        } else {
            let v = value(range, r)?;
            // `a/n` runs from a to the end of the range.
            (v, if step.is_some() { r.max } else { v })
        };
        if lo > hi {
            return Err(format!("range {lo}-{hi} is backwards"));
        }
        let step = step.unwrap_or(1);
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, star))
}

impl Schedule {
    /// Parses a schedule.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut spec = spec.trim();
        let mut tz = None;
        for prefix in ["CRON_TZ=", "TZ="] {
            if let Some(rest) = spec.strip_prefix(prefix) {
                let (zone, fields) = rest
                    .split_once(char::is_whitespace)
                    .ok_or("a time zone prefix must be followed by a schedule")?;
                tz = Some(
                    TimeZone::get(zone).map_err(|e| format!("unknown time zone '{zone}': {e}"))?,
                );
                spec = fields.trim();
            }
        }
        let tz = tz.unwrap_or_else(TimeZone::system);
        if let Some(every) = spec.strip_prefix("@every") {
            let d = tandem_components::metadata::parse_duration(every.trim())
                .map_err(|e| format!("@every: {e}"))?;
            if d.is_zero() {
                return Err("@every needs a positive duration".into());
            }
            return Ok(Self::Every(d));
        }
        let expanded = match spec.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 0 1 1 *".to_owned(),
            "@monthly" => "0 0 0 1 * *".to_owned(),
            "@weekly" => "0 0 0 * * 0".to_owned(),
            "@daily" | "@midnight" => "0 0 0 * * *".to_owned(),
            "@hourly" => "0 0 * * * *".to_owned(),
            s if s.starts_with('@') => return Err(format!("unknown descriptor '{spec}'")),
            _ => spec.to_owned(),
        };
        let parts: Vec<&str> = expanded.split_whitespace().collect();
        let parts: Vec<&str> = match parts.len() {
            5 => std::iter::once("0").chain(parts).collect(),
            6 => parts,
            n => return Err(format!("expected 5 or 6 fields, found {n}")),
        };
        let named = |i: usize, r: &Range, what: &str| {
            field(parts[i], r).map_err(|e| format!("{what} field '{}': {e}", parts[i]))
        };
        let (seconds, _) = named(0, &SECONDS, "seconds")?;
        let (minutes, _) = named(1, &MINUTES, "minutes")?;
        let (hours, _) = named(2, &HOURS, "hours")?;
        let (dom, dom_star) = named(3, &DOM, "day-of-month")?;
        let (months, _) = named(4, &MONTHS, "month")?;
        // 7 is Sunday too.
        let (dow7, dow_star) = named(5, &Range { max: 7, ..DOW }, "day-of-week")?;
        let dow = (dow7 & 0x7f) | ((dow7 >> 7) & 1);
        Ok(Self::Fields(Box::new(Fields {
            seconds,
            minutes,
            hours,
            dom,
            months,
            dow,
            dom_star,
            dow_star,
            tz,
        })))
    }

    /// The first firing strictly after `after`, or `None` if there is none within five years.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        match self {
            Self::Every(d) => {
                let d = jiff::SignedDuration::try_from(*d).ok()?;
                after.checked_add(d).ok()
            }
            Self::Fields(f) => f.next_after(after),
        }
    }
}

fn has(bits: u64, v: i8) -> bool {
    v >= 0 && bits & (1 << v) != 0
}

impl Fields {
    fn day_matches(&self, d: Date) -> bool {
        let dom = has(self.dom, d.day());
        let dow = has(self.dow, d.weekday().to_sunday_zero_offset());
        if self.dom_star || self.dow_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        // Work in civil time of the schedule's zone, whole seconds, starting one second on.
        let start = after
            .checked_add(1.second())
            .ok()?
            .to_zoned(self.tz.clone());
        let mut t: DateTime = start.datetime().with().subsec_nanosecond(0).build().ok()?;
        let limit = t.year() + 5;
        loop {
            if t.year() > limit {
                return None;
            }
            if !has(self.months, t.month()) {
                t = first_of_next_month(t)?;
                continue;
            }
            if !self.day_matches(t.date()) {
                t = t.date().tomorrow().ok()?.to_datetime(Time::midnight());
                continue;
            }
            if !has(self.hours, t.hour()) {
                t = next_hour(t)?;
                continue;
            }
            if !has(self.minutes, t.minute()) {
                t = next_minute(t)?;
                continue;
            }
            if !has(self.seconds, t.second()) {
                t = t.checked_add(1.second()).ok()?;
                continue;
            }
            let z: Zoned = t.to_zoned(self.tz.clone()).ok()?;
            let ts = z.timestamp();
            if ts > after {
                return Some(ts);
            }
            t = t.checked_add(1.second()).ok()?;
        }
    }
}

fn first_of_next_month(t: DateTime) -> Option<DateTime> {
    let first = t.date().first_of_month();
    Some(
        first
            .checked_add(1.month())
            .ok()?
            .to_datetime(Time::midnight()),
    )
}

fn next_hour(t: DateTime) -> Option<DateTime> {
    t.with()
        .minute(0)
        .second(0)
        .build()
        .ok()?
        .checked_add(1.hour())
        .ok()
}

fn next_minute(t: DateTime) -> Option<DateTime> {
    t.with()
        .second(0)
        .build()
        .ok()?
        .checked_add(1.minute())
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn utc(spec: &str) -> Schedule {
        Schedule::parse(&format!("CRON_TZ=UTC {spec}")).unwrap()
    }

    #[test]
    fn seconds_minutes_and_steps() {
        let s = utc("*/15 * * * * *");
        assert_eq!(
            s.next_after(ts("2026-01-01T00:00:01Z")),
            Some(ts("2026-01-01T00:00:15Z"))
        );
        assert_eq!(
            s.next_after(ts("2026-01-01T00:00:45Z")),
            Some(ts("2026-01-01T00:01:00Z"))
        );
        let five = utc("30 9 * * MON-FRI");
        // 2026-01-03 is a Saturday: the next weekday 09:30 is Monday the 5th.
        assert_eq!(
            five.next_after(ts("2026-01-02T10:00:00Z")),
            Some(ts("2026-01-05T09:30:00Z"))
        );
    }

    #[test]
    fn descriptors_every_and_time_zones() {
        assert_eq!(
            utc("@daily").next_after(ts("2026-03-04T05:06:07Z")),
            Some(ts("2026-03-05T00:00:00Z"))
        );
        assert_eq!(
            utc("@monthly").next_after(ts("2026-12-15T00:00:00Z")),
            Some(ts("2027-01-01T00:00:00Z"))
        );
        let every = Schedule::parse("@every 1m30s").unwrap();
        assert_eq!(
            every.next_after(ts("2026-01-01T00:00:00Z")),
            Some(ts("2026-01-01T00:01:30Z"))
        );
        // 06:00 in Tokyo is 21:00 UTC the day before.
        let tokyo = Schedule::parse("CRON_TZ=Asia/Tokyo 0 6 * * *").unwrap();
        assert_eq!(
            tokyo.next_after(ts("2026-01-01T00:00:00Z")),
            Some(ts("2026-01-01T21:00:00Z"))
        );
    }

    #[test]
    fn day_of_month_or_day_of_week() {
        // The 13th, or any Friday.
        let s = utc("0 0 0 13 * FRI");
        assert_eq!(
            s.next_after(ts("2026-02-01T00:00:00Z")),
            Some(ts("2026-02-06T00:00:00Z"))
        );
        assert_eq!(
            s.next_after(ts("2026-02-12T00:00:00Z")),
            Some(ts("2026-02-13T00:00:00Z"))
        );
        // Sunday as 7.
        let sun = utc("0 0 * * 7");
        assert_eq!(
            sun.next_after(ts("2026-01-01T00:00:00Z")),
            Some(ts("2026-01-04T00:00:00Z"))
        );
    }

    #[test]
    fn bad_schedules_are_refused() {
        for bad in [
            "",
            "* * *",
            "61 * * * * *",
            "*/0 * * * *",
            "@fortnightly",
            "@every",
            "CRON_TZ=Nowhere/Land * * * * *",
            "5-1 * * * *",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
