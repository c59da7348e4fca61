//! What every case shares: timed executes, their samples, resident memory
//! and the JSON records printed on stdout.

use std::time::{Duration, Instant};

use cmdop::client::Client;

pub fn round_us(samples: &[f64]) -> Vec<f64> {
    samples
        .iter()
        .map(|v| (v * 1000.0).round() / 1000.0)
        .collect()
}

pub fn p50(samples: &[f64]) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len().saturating_sub(1) / 2).copied().unwrap_or(0.0)
}

pub fn emit(record: serde_json::Value) {
    println!("{record}");
}

pub fn emit_skip(case: &str, subject: &str, label: &str, why: &str) {
    eprintln!("cmdop-bench-cluster: {case}/{subject} not measured: {why}");
    emit(serde_json::json!({"case": case, "subject": subject, "label": label, "skipped": why}));
}

/// Current (VmRSS) or peak (VmHWM) resident set of `pid` in KiB; -1 if unknown.
pub fn rss_kb(pid: Option<u32>, field: &str) -> i64 {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".into(),
    };
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(-1)
}

/// Resets the peak resident set of `pid` (0 = this process) to its current size.
pub fn reset_peak(pid: Option<u32>) {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/clear_refs"),
        None => "/proc/self/clear_refs".into(),
    };
    let _ = std::fs::write(path, "5");
}

/// One timed `execute("true")`; `Err` with the reason when it failed.
pub async fn timed_true(client: &Client, timeout: Duration) -> Result<f64, String> {
    let t0 = Instant::now();
    match client.execute("true", Some(timeout)).await {
        Ok(out) if out.exit_code == 0 => Ok(t0.elapsed().as_secs_f64() * 1e6),
        Ok(out) => Err(format!("'true' exited with {}", out.exit_code)),
        Err(e) => Err(e.to_string()),
    }
}

pub struct Samples {
    pub us: Vec<f64>,
    pub errors: usize,
    pub first_error: Option<String>,
}

impl Samples {
    pub fn new() -> Samples {
        Samples {
            us: Vec::new(),
            errors: 0,
            first_error: None,
        }
    }
    pub fn add(&mut self, r: Result<f64, String>) {
        match r {
            Ok(us) => self.us.push(us),
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_samples() {
        assert_eq!(p50(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(p50(&[]), 0.0);
    }
}
