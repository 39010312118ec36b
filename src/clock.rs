//! Wall-clock and monotonic time helpers shared by sources, sinks and metrics.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The Unix time of this process's monotonic clock origin, in microseconds.
fn origin() -> (Instant, u64) {
    static ORIGIN: OnceLock<(Instant, u64)> = OnceLock::new();
    *ORIGIN.get_or_init(|| {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        (Instant::now(), unix)
    })
}

/// Microseconds since the Unix epoch, read from a monotonic clock anchored to the wall
/// clock once per process: it never goes back within a process, and stamps taken by
/// different processes of one machine (a frame received in one, scored in another)
/// compare to within the clocks' agreement at start-up.
pub fn now_us() -> u64 {
    let (at, unix) = origin();
    unix + at.elapsed().as_micros() as u64
}

/// The first microsecond at or after `us` that belongs to slot `index` of `slots`
/// (`≡ index mod slots`): clock stamps taken by several workers or ingest points, each in
/// its own slot, never collide.
pub fn own_slot(us: u64, index: u64, slots: u64) -> u64 {
    let slots = slots.max(1);
    let slot = us - us % slots + index % slots;
    if slot < us {
        slot + slots
    } else {
        slot
    }
}

/// Unix time in milliseconds.
pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// This process's run id: its start time (Unix ms, hex) and 32 random bits, so that a
/// frame's `seq`, which starts again at 0 on every start, names one frame across restarts
/// as the pair (run id, seq). Alerts and ingest answers carry it.
pub fn run_id() -> &'static str {
    static RUN_ID: OnceLock<String> = OnceLock::new();
    RUN_ID.get_or_init(|| format!("{:x}-{:08x}", unix_ms(), rand::random::<u32>()))
}
