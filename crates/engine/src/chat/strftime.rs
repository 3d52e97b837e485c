//! `strftime_now(format)`: the clock HF exposes to chat templates (Llama 3 prints today's
//! date into its system prompt with `strftime_now("%d %b %Y")`).
//!
//! A small C-locale `strftime` over UTC, so the engine needs no date crate; it covers the
//! directives templates use. An unknown directive is copied through as Python does on glibc.

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// A UTC calendar time broken into fields.
struct Civil {
    year: i64,
    month: u32, // 1..=12
    day: u32,   // 1..=31
    yday: u32,  // 1..=366
    wday: u32,  // 0 = Monday
    hour: u32,
    minute: u32,
    second: u32,
}

fn civil(unix: i64) -> Civil {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400) as u32;
    // Howard Hinnant's days-from-civil inverse (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let before = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334][month as usize - 1];
    let yday = before + day + u32::from(leap && month > 2);
    // 1970-01-01 was a Thursday (index 3 with Monday = 0).
    let wday = (days + 3).rem_euclid(7) as u32;
    Civil {
        year,
        month,
        day,
        yday,
        wday,
        hour: secs / 3600,
        minute: secs / 60 % 60,
        second: secs % 60,
    }
}

/// Formats `unix` (seconds since the epoch, UTC) with a C-locale `strftime` format.
pub fn strftime(format: &str, unix: i64) -> String {
    let t = civil(unix);
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(d) = chars.next() else {
            out.push('%');
            break;
        };
        let month = MONTHS[t.month as usize - 1];
        let weekday = DAYS[t.wday as usize];
        match d {
            'Y' => out.push_str(&t.year.to_string()),
            'y' => out.push_str(&format!("{:02}", t.year.rem_euclid(100))),
            'm' => out.push_str(&format!("{:02}", t.month)),
            'd' => out.push_str(&format!("{:02}", t.day)),
            'e' => out.push_str(&format!("{:2}", t.day)),
            'j' => out.push_str(&format!("{:03}", t.yday)),
            'H' => out.push_str(&format!("{:02}", t.hour)),
            'I' => out.push_str(&format!("{:02}", (t.hour + 11) % 12 + 1)),
            'M' => out.push_str(&format!("{:02}", t.minute)),
            'S' => out.push_str(&format!("{:02}", t.second)),
            'p' => out.push_str(if t.hour < 12 { "AM" } else { "PM" }),
            'B' => out.push_str(month),
            'b' | 'h' => out.push_str(&month[..3]),
            'A' => out.push_str(weekday),
            'a' => out.push_str(&weekday[..3]),
            'u' => out.push_str(&(t.wday + 1).to_string()),
            'w' => out.push_str(&((t.wday + 1) % 7).to_string()),
            'F' => out.push_str(&format!("{}-{:02}-{:02}", t.year, t.month, t.day)),
            'T' => out.push_str(&format!("{:02}:{:02}:{:02}", t.hour, t.minute, t.second)),
            'Z' => out.push_str("UTC"),
            'z' => out.push_str("+0000"),
            '%' => out.push('%'),
            other => {
                out.push('%');
                out.push(other);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_dates() {
        // 2026-01-15 12:34:56 UTC, a Thursday (the golden files' clock).
        let t = 1_768_480_496;
        assert_eq!(strftime("%d %b %Y", t), "15 Jan 2026");
        assert_eq!(
            strftime("%Y-%m-%d %H:%M:%S %A %j %%", t),
            "2026-01-15 12:34:56 Thursday 015 %"
        );
        // 2024-02-29 00:00:00 UTC (leap day), a Thursday.
        assert_eq!(
            strftime("%F %a %B %j %I%p", 1_709_164_800),
            "2024-02-29 Thu February 060 12AM"
        );
        assert_eq!(strftime("%F", 0), "1970-01-01");
    }
}
