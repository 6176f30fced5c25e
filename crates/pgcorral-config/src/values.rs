//! Value parsers shared by the configuration files. They return the reason
//! for a refusal; the caller adds the file, line and key.

use std::time::Duration;

/// `on|yes|1|true|off|no|0|false`, case-insensitive.
/// One of two words (either case): true for `yes`, false for `no`.
pub(crate) fn parse_either(value: &str, yes: &str, no: &str) -> Result<bool, String> {
    if value.eq_ignore_ascii_case(yes) {
        Ok(true)
    } else if value.eq_ignore_ascii_case(no) {
        Ok(false)
    } else {
        Err(format!("use {yes} or {no}"))
    }
}

pub(crate) fn parse_bool(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "on" | "yes" | "1" | "true" => Ok(true),
        "off" | "no" | "0" | "false" => Ok(false),
        _ => Err("expected on, yes, 1, true, off, no, 0 or false".to_string()),
    }
}

/// A time: a non-negative integer with an optional suffix s, m, h, d or w
/// (case-insensitive); seconds when there is no suffix.
pub(crate) fn parse_time(value: &str) -> Result<Duration, String> {
    const REASON: &str =
        "expected a non-negative integer with an optional suffix s, m, h, d or w (e.g. 30s, 5m)";
    let value = value.trim();
    let (digits, unit) = match value.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&value[..i], c.to_ascii_lowercase()),
        _ => (value, 's'),
    };
    let factor: u64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3_600,
        'd' => 86_400,
        'w' => 604_800,
        _ => return Err(REASON.to_string()),
    };
    let digits = digits.trim();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(REASON.to_string());
    }
    let number: u64 = digits
        .parse()
        .map_err(|_| "the number is too large".to_string())?;
    let seconds = number
        .checked_mul(factor)
        .ok_or_else(|| "the time is too large".to_string())?;
    Ok(Duration::from_secs(seconds))
}

/// An unsigned integer in `min..=max`.
pub(crate) fn parse_uint(value: &str, min: u64, max: u64) -> Result<u64, String> {
    let reason = || format!("expected an integer between {min} and {max}");
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(reason());
    }
    match value.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(reason()),
    }
}

/// A size: a number with an optional B, K/KB, M/MB, G/GB suffix (bytes by default).
pub(crate) fn parse_size(value: &str) -> Result<u64, String> {
    let v = value.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (digits, unit) = v.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{value}' is not a size (a number with B, K, M or G)"))?;
    let mult = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" => 1 << 10,
        "M" | "MB" => 1 << 20,
        "G" | "GB" => 1 << 30,
        other => return Err(format!("unknown size unit '{other}': use B, K, M or G")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("'{value}' is too large"))
}

/// The error for a bad column of a whitespace-separated file (HBA, limits), naming file, line and column.
pub(crate) fn column_error(
    path: &std::path::Path,
    line: usize,
    n: usize,
    name: &str,
    value: &str,
    reason: &str,
) -> crate::ConfigError {
    crate::ConfigError::Syntax {
        path: path.to_path_buf(),
        line,
        message: format!("column {n} ({name}): invalid value '{value}': {reason}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bools() {
        for v in ["on", "YES", "1", "True"] {
            assert_eq!(parse_bool(v), Ok(true));
        }
        for v in ["off", "No", "0", "FALSE"] {
            assert_eq!(parse_bool(v), Ok(false));
        }
        assert!(parse_bool("maybe").is_err());
        assert!(parse_bool("").is_err());
    }

    #[test]
    fn times() {
        assert_eq!(parse_time("1"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_time("0"), Ok(Duration::ZERO));
        assert_eq!(parse_time("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_time("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_time("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_time("1d"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_time("1W"), Ok(Duration::from_secs(604800)));
        for bad in [
            "",
            "s",
            "-1",
            "1.5",
            "10x",
            "1 m s",
            "99999999999999999999",
            "1ms",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
        assert!(parse_time("18446744073709551615w").is_err());
    }

    #[test]
    fn uints() {
        assert_eq!(parse_uint("10", 1, 10), Ok(10));
        assert!(parse_uint("0", 1, 10).is_err());
        assert!(parse_uint("11", 1, 10).is_err());
        assert!(parse_uint("-1", 0, 10).is_err());
        assert!(parse_uint("+1", 0, 10).is_err());
        assert!(parse_uint("", 0, 10).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(super::parse_size("2K").unwrap(), 2048);
        assert_eq!(super::parse_size("10MB").unwrap(), 10 << 20);
        assert_eq!(super::parse_size("17").unwrap(), 17);
        assert!(super::parse_size("1T").is_err());
        assert!(super::parse_size("big").is_err());
    }
}
