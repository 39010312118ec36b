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
    // utime and stime are fields 14 and 15.
    let utime = stat_field(14)?;
    let stime = stat_field(15)?;
    Some(utime + stime)
}

/// Minor page faults of this process so far, all threads (pages the kernel had to map,
/// and zero, on first touch); `None` where `/proc` is unavailable.
pub fn minor_faults() -> Option<u64> {
    stat_field(10)
}

/// Field `n` (1-based, as `man 5 proc` numbers them) of `/proc/self/stat`, from field 3 on.
fn stat_field(n: usize) -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces; count from the
    // closing one, after which comes field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(n.checked_sub(3)?)?.parse().ok()
}

/// Keeps the buffers the dataflow frees inside the process, for the next frame.
///
/// A window or batch of a 25,000-feature frame is 0.25–32 MB: above glibc's initial mmap
/// threshold (128 KiB), and the heap's freed top is given back to the kernel past the
/// trim threshold. With two workers (or a peer process) allocating and freeing them,
/// each frame's buffers came back from the kernel as fresh pages: 95–137 minor page
/// faults a frame and 10–16 % of the CPU time in the kernel (`bench -w 2`, `-n 2`),
/// against none with one worker. Fixed thresholds (which also stop glibc's dynamic
/// adjustment) keep them: freed memory stays for reuse up to 64 MiB at the top of a heap.
/// Call it first thing in `main`, before any thread starts. A no-op elsewhere than glibc.
pub fn keep_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // 32 MiB is the largest mmap threshold glibc accepts on 64-bit targets.
        const MMAP_THRESHOLD: libc::c_int = 32 << 20;
        const TRIM_THRESHOLD: libc::c_int = 64 << 20;
        // SAFETY: mallopt only sets allocator parameters; it is called before any other
        // thread exists, as glibc asks.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        }
    }
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
        let faults = minor_faults().expect("field 10 of /proc/self/stat");
        // touching fresh pages faults them in
        let fresh = vec![1u8; 64 << 20];
        assert!(minor_faults().unwrap() > faults, "{}", fresh.len());
        // Past the interval the next call takes a fresh sample, which has a CPU figure.
        std::thread::sleep(MIN_INTERVAL + Duration::from_millis(10));
        let second = sample();
        assert!(second.cpu_percent.is_some(), "{second:?}");
    }
}
