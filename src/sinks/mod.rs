//! Where verdicts go. The contract the runtime hands verdicts through ([`SinkSpec`],
//! [`ResultHook`], [`combine`]) and the alert body ([`alert`]) live here and import no
//! edge, so that the core can name them without reaching a webhook or a broker. Every
//! sink is a [`ResultHook`] called on worker 0: alert lines to a file or stdout
//! ([`file`]), the webhook ([`webhook`]) and the Kafka producer ([`kafka`]).

use std::path::PathBuf;
use std::sync::Arc;

use crate::incidents::IncidentEvent;
use crate::sinks::event::AlertEvent;
use crate::types::FrameResult;

pub mod alert;
pub mod event;
pub mod file;
pub mod kafka;
pub mod metrics_store;
pub mod outbox;
pub mod scores;
pub mod webhook;

/// Called on worker 0 with every verdict, in frame order. Must not block: hand work to
/// another thread (a bounded channel) if it does I/O.
pub type ResultHook = Arc<dyn Fn(&FrameResult) + Send + Sync>;

/// Called on worker 0 with every incident event (`--alerts incident`), in frame order,
/// with its body ready to deliver. Must not block, as a [`ResultHook`].
pub type IncidentHook = Arc<dyn Fn(&IncidentEvent, &AlertEvent) + Send + Sync>;

/// Where verdicts go: alert lines to a file and/or stdout, and any hook.
#[derive(Clone, Default)]
pub struct SinkSpec {
    /// JSONL file of alert bodies, one per anomalous frame.
    pub alerts_path: Option<PathBuf>,
    /// Also print alert lines on stdout.
    pub stdout: bool,
    /// Also hand every verdict to this hook (webhook senders, Kafka producers, tests).
    pub on_result: Option<ResultHook>,
    /// Also hand every incident event to this hook (incident mode only).
    pub on_incident: Option<IncidentHook>,
}

/// Both incident hooks, `a` then `b`, as one; either alone if the other is `None`.
pub fn combine_incident(a: Option<IncidentHook>, b: Option<IncidentHook>) -> Option<IncidentHook> {
    match (a, b) {
        (Some(a), Some(b)) => Some(Arc::new(move |e, body| {
            a(e, body);
            b(e, body);
        })),
        (a, b) => a.or(b),
    }
}

/// Both hooks, `a` then `b`, as one; either alone if the other is `None`.
pub fn combine(a: Option<ResultHook>, b: Option<ResultHook>) -> Option<ResultHook> {
    match (a, b) {
        (Some(a), Some(b)) => Some(Arc::new(move |r| {
            a(r);
            b(r);
        })),
        (a, b) => a.or(b),
    }
}
