//! Process CPU and memory use, for the JSON logs written at inference time.
//!
//! Read by hand from `/proc` (Linux) rather than through a crate such as `sysinfo`: the
//! few numbers the logs need are a few lines of parsing, and a system-information crate
//! would pull in far more than it gives here. Elsewhere the figures are simply absent.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Samples closer together than this return the previous sample: a CPU percentage over
/// a shorter interval is mostly noise, and per-batch logging must stay cheap.
const MIN_INTERVAL: Duration = Duration::from_millis(200);

/// Clock ticks per second of `/proc/self/stat`'s CPU times. `USER_HZ` is 100 on every
/// Linux architecture the crate targets; reading it properly needs `sysconf`, i.e. libc.
const TICKS_PER_SECOND: f64 = 100.0;

/// Resource use of this process at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Resources {
    /// CPU time used since the previous sample, in percent of one core (so up to
    /// 100 × cores); `None` on the first sample or where `/proc` is unavailable.
    pub cpu_percent: Option<f64>,
    /// Resident set size in MiB.
    pub rss_mib: Option<f64>,
    /// Memory the system could still give processes, in MiB.
    pub mem_available_mib: Option<f64>,
    /// The system's memory in MiB.
    pub mem_total_mib: Option<f64>,
}

struct Last {
    at: Instant,
    cpu_ticks: u64,
    sample: Resources,
}

static LAST: Mutex<Option<Last>> = Mutex::new(None);

/// The process's resource use now, with CPU use averaged since the previous call (from
/// any thread). Cheap to call often: within 200 ms of the last sample it returns that.
pub fn sample() -> Resources {
    let now = Instant::now();
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(l) = last.as_ref() {
        if now.duration_since(l.at) < MIN_INTERVAL {
            return l.sample;
        }
    }
    let ticks = cpu_ticks();
    let cpu_percent = match (last.as_ref(), ticks) {
        (Some(l), Some(t)) => {
            let wall = now.duration_since(l.at).as_secs_f64();
            let used = t.saturating_sub(l.cpu_ticks) as f64 / TICKS_PER_SECOND;
            Some((100.0 * used / wall * 10.0).round() / 10.0)
        }
        _ => None,
    };
    let (mem_total_mib, mem_available_mib) = meminfo();
    let sample = Resources {
        cpu_percent,
        rss_mib: rss_mib(),
        mem_available_mib,
        mem_total_mib,
    };
    *last = Some(Last {
        at: now,
        cpu_ticks: ticks.unwrap_or(0),
        sample,
    });
    sample
}

/// utime + stime of this process, in clock ticks.
fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces; count from the
    // closing one. utime and stime are fields 14 and 15, i.e. 12th and 13th after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    kib_field(&status, "VmRSS:").map(kib_to_mib)
}

fn meminfo() -> (Option<f64>, Option<f64>) {
    match std::fs::read_to_string("/proc/meminfo") {
        Ok(text) => (
            kib_field(&text, "MemTotal:").map(kib_to_mib),
            kib_field(&text, "MemAvailable:").map(kib_to_mib),
        ),
        Err(_) => (None, None),
    }
}

/// CPU time (user + system) of this process so far, all threads, in seconds; `None`
/// where `/proc` is unavailable. Resolution: one clock tick (10 ms).
pub fn cpu_seconds() -> Option<f64> {
    // USER_HZ is 100 on every Linux the crate targets (reading it needs libc).
    cpu_ticks().map(|t| t as f64 / 100.0)
}

/// A `Name:   1234 kB` line of `/proc/self/status` (`VmRSS:`, `VmHWM:`), in KiB.
pub fn status_kib(name: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    kib_field(&status, name)
}

/// The value of a `Name:   1234 kB` line.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// KiB to MiB, rounded to 0.1.
pub fn kib_to_mib(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_fields_parse() {
        let text = "Name:\tx\nVmRSS:\t   20480 kB\nThreads: 3\n";
        assert_eq!(kib_field(text, "VmRSS:"), Some(20480));
        assert_eq!(kib_field(text, "VmSwap:"), None);
        assert_eq!(kib_to_mib(20480), 20.0);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn sampling_reports_this_process() {
        let first = sample();
        assert!(first.rss_mib.is_some_and(|m| m > 0.0), "{first:?}");
        assert!(cpu_ticks().is_some());
        // Past the interval the next call takes a fresh sample, which has a CPU figure.
        std::thread::sleep(MIN_INTERVAL + Duration::from_millis(10));
        let second = sample();
        assert!(second.cpu_percent.is_some(), "{second:?}");
    }
}
