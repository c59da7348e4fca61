//! Lifetimes on the command line (`--ttl 30m`, `--expires 30d`, `--since
//! 1h`): a number with s, m, h or d, one parser for every flag that takes
//! one.

use std::time::Duration;

/// Parses a lifetime such as `90s`, `30m`, `24h` or `7d` (a bare number is
/// hours).
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{text}' is not a lifetime; write e.g. 30m, 24h or 7d"))?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" | "" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "unknown unit '{unit}' in '{text}'; use s, m, h or d"
            ))
        }
    };
    match n.checked_mul(unit_secs) {
        Some(secs) if secs > 0 => Ok(Duration::from_secs(secs)),
        _ => Err(format!(
            "'{text}' must be more than zero and less than forever"
        )),
    }
}
