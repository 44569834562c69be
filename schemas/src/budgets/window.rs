//! UTC windows of a budget period. An event belongs to the window holding its `ts` (the
//! request start, whole seconds), so a recount from ClickHouse attributes it the same way.

use super::Period;

const DAY_MS: i64 = 86_400_000;

/// One window of a period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Start, Unix ms (inclusive).
    pub start_ms: i64,
    /// End, Unix ms (exclusive); `None` for `total`.
    pub end_ms: Option<i64>,
    /// Short name used in Redis keys: `d20240501`, `w20240429`, `m202405`, `total`.
    pub label: String,
}

impl Window {
    /// The window of `period` holding `ts_ms`.
    pub fn of(period: Period, ts_ms: i64) -> Self {
        let day = ts_ms.div_euclid(DAY_MS);
        match period {
            Period::Daily => {
                let (y, m, d) = civil_from_days(day);
                Self {
                    start_ms: day * DAY_MS,
                    end_ms: Some((day + 1) * DAY_MS),
                    label: format!("d{y:04}{m:02}{d:02}"),
                }
            }
            Period::Weekly => {
                // 1970-01-01 was a Thursday; Monday = 0.
                let monday = day - (day + 3).rem_euclid(7);
                let (y, m, d) = civil_from_days(monday);
                Self {
                    start_ms: monday * DAY_MS,
                    end_ms: Some((monday + 7) * DAY_MS),
                    label: format!("w{y:04}{m:02}{d:02}"),
                }
            }
            Period::Monthly => {
                let (y, m, _) = civil_from_days(day);
                let first = days_from_civil(y, m, 1);
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                Self {
                    start_ms: first * DAY_MS,
                    end_ms: Some(days_from_civil(ny, nm, 1) * DAY_MS),
                    label: format!("m{y:04}{m:02}"),
                }
            }
            Period::Total => Self {
                start_ms: 0,
                end_ms: None,
                label: "total".into(),
            },
        }
    }

    /// Start, Unix seconds (for ClickHouse `ts`).
    pub fn start_secs(&self) -> u32 {
        u32::try_from(self.start_ms.max(0) / 1000).unwrap_or(u32::MAX)
    }

    /// End, Unix seconds (`u32::MAX` for `total`).
    pub fn end_secs(&self) -> u32 {
        self.end_ms.map_or(u32::MAX, |e| {
            u32::try_from(e.max(0) / 1000).unwrap_or(u32::MAX)
        })
    }

    /// Whether `ts_ms` lies in the window.
    pub fn contains(&self, ts_ms: i64) -> bool {
        ts_ms >= self.start_ms && self.end_ms.is_none_or(|e| ts_ms < e)
    }
}

/// `(year, month, day)` of a day number since 1970-01-01 (proleptic Gregorian).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Day number since 1970-01-01 of a civil date.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD` of a Unix ms instant (UTC).
pub fn date_string(ts_ms: i64) -> String {
    let (y, m, d) = civil_from_days(ts_ms.div_euclid(DAY_MS));
    format!("{y:04}-{m:02}-{d:02}")
}

/// Unix ms of `YYYY-MM-DD` 00:00 UTC (None when malformed).
pub fn parse_date(s: &str) -> Option<i64> {
    let mut parts = s.split('-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: u32 = parts.next()?.parse().ok()?;
    let d: u32 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&d) || s.len() != 10 {
        return None;
    }
    let days = days_from_civil(y, m, d);
    (civil_from_days(days) == (y, m, d)).then_some(days * DAY_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2024-05-15 13:00:00 UTC (a Wednesday).
    const T: i64 = 1_715_778_000_000;

    #[test]
    fn windows_are_utc_aligned() {
        let d = Window::of(Period::Daily, T);
        assert_eq!(d.label, "d20240515");
        assert_eq!(d.start_ms, 1_715_731_200_000);
        assert_eq!(d.end_ms, Some(1_715_817_600_000));
        let w = Window::of(Period::Weekly, T);
        assert_eq!(w.label, "w20240513");
        assert_eq!(w.end_ms.unwrap() - w.start_ms, 7 * DAY_MS);
        let m = Window::of(Period::Monthly, T);
        assert_eq!(m.label, "m202405");
        assert_eq!(date_string(m.start_ms), "2024-05-01");
        assert_eq!(date_string(m.end_ms.unwrap()), "2024-06-01");
        let dec = Window::of(Period::Monthly, parse_date("2023-12-31").unwrap());
        assert_eq!(date_string(dec.end_ms.unwrap()), "2024-01-01");
        let t = Window::of(Period::Total, T);
        assert!(t.contains(0) && t.contains(i64::MAX - 1));
        assert_eq!(t.end_secs(), u32::MAX);
        assert!(d.contains(d.start_ms) && !d.contains(d.end_ms.unwrap()));
    }

    #[test]
    fn dates_round_trip() {
        for s in ["1970-01-01", "2000-02-29", "2024-12-31", "2100-03-01"] {
            assert_eq!(date_string(parse_date(s).unwrap()), s);
        }
        for bad in ["2023-02-29", "2024-13-01", "2024-1-01", "x"] {
            assert!(parse_date(bad).is_none(), "{bad}");
        }
        assert_eq!(date_string(-1), "1969-12-31");
    }
}
