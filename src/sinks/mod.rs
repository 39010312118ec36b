//! Where verdicts go. The contract the runtime hands verdicts through ([`SinkSpec`],
//! [`ResultHook`]) and the alert body ([`alert`]) live here and import no sink, so that
//! the core can name them without reaching a webhook or a broker; the concrete sinks
//! (the webhook here, the Kafka producer in `kafka/`) implement the contract.

use std::path::PathBuf;
use std::sync::Arc;

use crate::types::FrameResult;

pub mod alert;
pub mod kafka;
pub mod webhook;

/// Called on worker 0 with every verdict, in frame order. Must not block: hand work to
/// another thread (a bounded channel) if it does I/O.
pub type ResultHook = Arc<dyn Fn(&FrameResult) + Send + Sync>;

/// Where verdicts go: alert lines to a file and/or stdout, and any hook.
#[derive(Clone, Default)]
pub struct SinkSpec {
    /// JSONL file of alert bodies, one per anomalous frame.
    pub alerts_path: Option<PathBuf>,
    /// Also print alert lines on stdout.
    pub stdout: bool,
    /// Also hand every verdict to this hook (webhook senders, Kafka producers, tests).
    pub on_result: Option<ResultHook>,
}
