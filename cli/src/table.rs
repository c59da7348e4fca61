//! Output helpers shared by the listings: aligned tables with a header
//! row, and times as people read them ("3 min ago").

use std::{
    io::Write,
    time::{SystemTime, UNIX_EPOCH},
};

/// Writes `header` and `rows` as columns two spaces apart; the last column
/// is not padded.
pub fn print(out: &mut impl Write, header: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, cell) in cells.enumerate() {
            if i + 1 == widths.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string()
    };
    writeln!(out, "{}", line(&mut header.iter().copied()))?;
    for row in rows {
        writeln!(out, "{}", line(&mut row.iter().map(String::as_str)))?;
    }
    Ok(())
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// "12 s ago", "3 min ago", "2 h ago", "5 d ago"; "never" for 0 (unknown).
pub fn ago(now_ms: i64, then_ms: i64) -> String {
    if then_ms <= 0 {
        return "never".into();
    }
    let secs = (now_ms - then_ms).max(0) / 1000;
    match secs {
        0..=59 => format!("{secs} s ago"),
        60..=3599 => format!("{} min ago", secs / 60),
        3600..=86_399 => format!("{} h ago", secs / 3600),
        _ => format!("{} d ago", secs / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_under_their_header() {
        let mut out = Vec::new();
        let rows = vec![
            vec!["a".to_string(), "longer".to_string(), "x".to_string()],
            vec![
                "bbbb".to_string(),
                "y".to_string(),
                "last column".to_string(),
            ],
        ];
        print(&mut out, &["ONE", "TWO", "THREE"], &rows).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "ONE   TWO     THREE\na     longer  x\nbbbb  y       last column\n"
        );
    }

    #[test]
    fn times_read_as_ago() {
        let now = 10_000_000_000;
        assert_eq!(ago(now, 0), "never");
        assert_eq!(ago(now, now - 5_000), "5 s ago");
        assert_eq!(ago(now, now - 180_000), "3 min ago");
        assert_eq!(ago(now, now - 7_200_000), "2 h ago");
        assert_eq!(ago(now, now - 3 * 86_400_000), "3 d ago");
    }
}
