//! The control planes' resident memory, read from `/proc`, and the pause
//! that lets it settle before it is read.

use std::time::Duration;

/// Time for the control plane's allocations to settle before measuring.
pub const SETTLE: Duration = Duration::from_secs(2);

/// Current resident set (VmRSS, KiB) of all `pids` together; -1 when
/// there are none or one is unknown.
pub fn vm_rss_kb(pids: &[u32]) -> i64 {
    if pids.is_empty() {
        return -1;
    }
    pids.iter()
        .map(|&pid| one_vm_rss_kb(pid))
        .try_fold(0i64, |sum, kb| (kb >= 0).then_some(sum + kb))
        .unwrap_or(-1)
}

fn one_vm_rss_kb(pid: u32) -> i64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(-1)
}
