//! Sizes ("16MiB", "32MB", plain bytes) and durations ("60s", "1h30m", "500ms") as written in pipeline files.

use std::time::Duration;

/// Units accepted in sizes: decimal (powers of 1000) and binary (powers of 1024).
const SIZE_UNITS: &[(&str, u64)] = &[
    ("B", 1),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
];

/// Hint shown with every size error.
pub const SIZE_HINT: &str = "write a number with a unit, e.g. \"16MiB\", \"32MB\", \"1GiB\" \
     (KB/MB/GB = 1000-based, KiB/MiB/GiB = 1024-based), or an integer number of bytes";

/// Hint shown with every duration error.
pub const DURATION_HINT: &str =
    "write a number with a unit (ms, s, m, h, d), e.g. \"500ms\", \"60s\", \"5m\", \"1h30m\"";

/// Parses a size: `"16MiB"`, `"32MB"`, `"1.5GiB"`, `"1 KiB"`, `"1024"` (bytes).
///
/// Decimal fractions are allowed when the result is a whole number of bytes. Units are case-sensitive
/// (`MB` is 10^6 bytes, `MiB` 2^20). The error is a message naming the input.
pub fn parse_size(input: &str) -> Result<u64, String> {
    let s = input.trim();
    let bad = || format!("\"{input}\" is not a size");
    if s.is_empty() {
        return Err("the size is empty".to_string());
    }
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(num_end);
    if num.is_empty() {
        return Err(bad());
    }
    let unit = unit.trim_start();
    let mult = if unit.is_empty() {
        1
    } else {
        SIZE_UNITS
            .iter()
            .find(|(u, _)| *u == unit)
            .map(|(_, m)| *m)
            .ok_or_else(|| format!("\"{input}\" has an unknown size unit \"{unit}\""))?
    };
    let num: String = num.chars().filter(|&c| c != '_').collect();
    let (int_part, frac_part) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num.as_str(), ""),
    };
    if int_part.is_empty()
        || !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
        || (num.contains('.') && frac_part.is_empty())
    {
        return Err(bad());
    }
    if frac_part.len() > 12 {
        return Err(format!("\"{input}\" has too many decimal places"));
    }
    let too_big = || format!("\"{input}\" is too large");
    let int: u128 = int_part.parse().map_err(|_| too_big())?;
    let mut total = int.checked_mul(mult as u128).ok_or_else(too_big)?;
    if !frac_part.is_empty() {
        let frac: u128 = frac_part.parse().map_err(|_| bad())?;
        let scale = 10u128.pow(frac_part.len() as u32);
        let frac_bytes = frac * mult as u128;
        if !frac_bytes.is_multiple_of(scale) {
            return Err(format!("\"{input}\" is not a whole number of bytes"));
        }
        total += frac_bytes / scale;
    }
    u64::try_from(total).map_err(|_| too_big())
}

/// Parses a duration: one or more `<integer><unit>` parts, units `ms`, `s`, `m`, `h`, `d`
/// (`"500ms"`, `"60s"`, `"1h30m"`, `"1h 30m"`). A bare number is refused: the unit must be explicit.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("the duration is empty".to_string());
    }
    let bad = || format!("\"{input}\" is not a duration");
    let mut total: u128 = 0; // milliseconds
    let mut rest = s;
    while !rest.is_empty() {
        let digits_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits_end == 0 {
            return Err(bad());
        }
        let n: u128 = rest[..digits_end]
            .parse()
            .map_err(|_| format!("\"{input}\" is too long"))?;
        rest = rest[digits_end..].trim_start();
        let unit_end = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        let ms: u128 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" if rest.starts_with('.') => {
                return Err(format!(
                    "\"{input}\" uses a fraction; use a smaller unit instead (e.g. \"90m\", \"1500ms\")"
                ));
            }
            "" => return Err(format!("\"{input}\" has a number without a unit")),
            other => return Err(format!("\"{input}\" has an unknown unit \"{other}\"")),
        };
        total = n
            .checked_mul(ms)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("\"{input}\" is too long"))?;
        rest = rest[unit_end..].trim_start();
    }
    let ms = u64::try_from(total).map_err(|_| format!("\"{input}\" is too long"))?;
    Ok(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16MiB"), Ok(16 * 1024 * 1024));
        assert_eq!(parse_size("32MB"), Ok(32_000_000));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("512KiB"), Ok(512 * 1024));
        assert_eq!(parse_size("1KB"), Ok(1000));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("7B"), Ok(7));
        assert_eq!(parse_size("1 KiB"), Ok(1024));
        assert_eq!(parse_size("1.5KiB"), Ok(1536));
        assert_eq!(parse_size("1.5GB"), Ok(1_500_000_000));
        assert_eq!(parse_size("1_000KB"), Ok(1_000_000));
        assert_eq!(parse_size("2TiB"), Ok(2 << 40));
        assert_eq!(parse_size("0"), Ok(0));
    }

    #[test]
    fn bad_sizes() {
        for s in [
            "",
            "MiB",
            "16 MIB",
            "16mb",
            "16Mi",
            "abc",
            "-1",
            "1.5",
            "0.5B",
            "1.",
            ".5MiB",
            "16MiBs",
            "1e6",
            "99999999999999999999TiB",
        ] {
            assert!(parse_size(s).is_err(), "{s:?} should be refused");
        }
        assert!(
            parse_size("16mb")
                .unwrap_err()
                .contains("unknown size unit")
        );
        assert!(parse_size("0.5B").unwrap_err().contains("whole number"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1h 30m 5s"), Ok(Duration::from_secs(5405)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn bad_durations() {
        for s in [
            "",
            "60",
            "s",
            "1.5h",
            "5 minutes",
            "1x",
            "h1",
            "-5s",
            "1h30",
            "99999999999999999999999d",
        ] {
            assert!(parse_duration(s).is_err(), "{s:?} should be refused");
        }
        assert!(parse_duration("60").unwrap_err().contains("without a unit"));
        assert!(parse_duration("1.5h").unwrap_err().contains("fraction"));
        assert!(
            parse_duration("1 fortnight")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert_eq!(parse_duration("1 h"), Ok(Duration::from_secs(3600)));
    }
}
