//! The durable alert outbox: every alert event is appended to an on-disk log
//! ([`log::OutboxLog`], in [`record`]'s format) before its first delivery attempt, and
//! marked there once the receiver accepts it or it is given up on, so that a restart
//! delivers again exactly what was not acknowledged. The webhook sender
//! ([`crate::sinks::webhook`]) writes it; `tidewatch outbox` reads it.

use std::path::PathBuf;

pub mod log;
pub mod record;
pub mod schedule;

/// Where and how large the outbox is.
#[derive(Clone, Debug)]
pub struct OutboxConfig {
    /// The outbox directory (`--outbox-dir`, `OUTBOX_DIR`).
    pub dir: PathBuf,
    /// Bytes of segments at most; past it new events are dead-lettered at once (0: no
    /// limit).
    pub max_bytes: u64,
}

/// The default outbox directory, relative to the working directory (as the default
/// dead-letter file is).
pub const DEFAULT_DIR: &str = "tidewatch-outbox";

/// The default disk budget: 1 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;
