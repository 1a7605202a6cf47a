//! Times and durations as people read them: local times (`2026-12-07 15:04 CET`) and
//! durations relative to now (`in 29m`, `3h ago`). `--json` keeps the raw Unix seconds; these
//! are for human output only.

/// A length of time in at most two units: `45s`, `29m`, `3h 5m`, `2d 4h`.
pub fn duration(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) if s == 0 || m >= 10 => format!("{m}m"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, 0) => format!("{h}h"),
        (0, _, _) => format!("{h}h {m}m"),
        (_, 0, _) => format!("{d}d"),
        _ => format!("{d}d {h}h"),
    }
}

/// `when` relative to `now`: `in 29m`, `3h ago`, `now`.
pub fn relative(when: u64, now: u64) -> String {
    if when == now {
        "now".to_owned()
    } else if when > now {
        format!("in {}", duration(when - now))
    } else {
        format!("{} ago", duration(now - when))
    }
}

/// `when` as a local date and time with its zone, e.g. `2026-12-07 15:04:05 CET` (UTC when the
/// local zone cannot be read).
pub fn local_time(when: u64) -> String {
    let Ok(t) = libc::time_t::try_from(when) else {
        return format!("@{when}");
    };
    // SAFETY: `tm` is plain data that localtime_r fills; both pointers are valid for the call.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: as above; localtime_r is the thread-safe variant (no shared static buffer).
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    if !ok {
        return format!("@{when}");
    }
    let zone = if tm.tm_zone.is_null() {
        String::new()
    } else {
        // SAFETY: localtime_r set tm_zone to a NUL-terminated string that lives as long as the
        // process's zone data.
        unsafe { std::ffi::CStr::from_ptr(tm.tm_zone) }
            .to_string_lossy()
            .into_owned()
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}{}{zone}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        if zone.is_empty() { "" } else { " " }
    )
}

/// `when` both ways: `2026-12-07 15:04:05 CET (in 29m)`.
pub fn at(when: u64, now: u64) -> String {
    format!("{} ({})", local_time(when), relative(when, now))
}

/// `when` as an ISO 8601 UTC string (`2026-12-07T14:04:05Z`), for extra `--json` fields.
pub fn iso_utc(when: u64) -> String {
    let days = when / 86_400;
    let rest = when % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(45), "45s");
        assert_eq!(duration(90), "1m 30s");
        assert_eq!(duration(29 * 60 + 5), "29m");
        assert_eq!(duration(3 * 3600), "3h");
        assert_eq!(duration(3 * 3600 + 300), "3h 5m");
        assert_eq!(duration(2 * 86_400 + 4 * 3600 + 59), "2d 4h");
        assert_eq!(relative(1000 + 29 * 60, 1000), "in 29m");
        assert_eq!(relative(1000, 1000 + 3 * 3600), "3h ago");
        assert_eq!(relative(5, 5), "now");
    }

    #[test]
    fn times_are_calendar_dates_not_epoch_seconds() {
        assert_eq!(iso_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso_utc(1_796_569_445), "2026-12-06T15:04:05Z");
        assert_eq!(iso_utc(951_782_400), "2000-02-29T00:00:00Z");
        let local = local_time(1_796_569_445);
        assert!(local.starts_with("2026-12-0"), "{local}");
        assert!(!local.contains("1796569445"), "{local}");
    }
}
