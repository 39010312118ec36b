//! Alert lines: one JSON [`Alert`] body per anomalous frame, to a JSONL file or stdout.
//! A [`ResultHook`] like the webhook and Kafka sinks, so the runtime composes it the same
//! way (on worker 0, in frame order).

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;

use super::alert::Alert;
use super::event::AlertEvent;
use super::{IncidentHook, ResultHook};
use crate::types::FrameResult;

/// Writes an alert line per anomalous frame.
pub struct AlertLines {
    out: Mutex<Box<dyn Write + Send>>,
    max_features: usize,
}

impl AlertLines {
    /// Lines to `out`, each alert listing at most `max_features` features.
    pub fn new(out: Box<dyn Write + Send>, max_features: usize) -> Self {
        AlertLines {
            out: Mutex::new(out),
            max_features,
        }
    }

    /// The writer asked for: the file at `path` (created, or truncated), else stdout if
    /// `stdout`, else none. Open it in the process that writes (worker 0's), so that no
    /// other process of a cluster truncates the file.
    pub fn open(
        path: Option<&Path>,
        stdout: bool,
        max_features: usize,
    ) -> anyhow::Result<Option<Self>> {
        let out: Box<dyn Write + Send> = match (path, stdout) {
            (Some(path), _) => Box::new(std::io::BufWriter::new(
                std::fs::File::create(path)
                    .with_context(|| format!("creating alert file {}", path.display()))?,
            )),
            (None, true) => Box::new(std::io::stdout()),
            (None, false) => return Ok(None),
        };
        Ok(Some(AlertLines::new(out, max_features)))
    }

    /// Writes `result`'s alert line if it is anomalous, and flushes it, so that a reader
    /// of the file sees each alert as it happens (anomalous frames are few: a write per
    /// alert is cheap). Errors are logged, never raised: an alert file that fails must not
    /// stop the scoring.
    pub fn write(&self, result: &FrameResult) {
        if !result.is_anomalous() {
            return;
        }
        let line = serde_json::to_string(&Alert::new(result, self.max_features))
            .expect("alerts serialise");
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = writeln!(out, "{line}") {
            tracing::error!(error = %e, seq = result.seq, "could not write an alert line");
        }
        if let Err(e) = out.flush() {
            tracing::error!(error = %e, "could not flush alert lines");
        }
    }

    /// Writes an incident event's body as one line, flushed (as [`AlertLines::write`]).
    pub fn write_event(&self, event: &AlertEvent) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let written = out
            .write_all(&event.body)
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.flush());
        if let Err(e) = written {
            tracing::error!(error = %e, seq = event.seq, incident = event.incident.as_deref(), "could not write an incident line");
        }
    }

    /// This sink as an incident hook (incident mode): one line per incident event.
    pub fn incident_hook(self) -> IncidentHook {
        Arc::new(move |_e, body| self.write_event(body))
    }

    /// This sink as a hook. The writer is closed when the hook is dropped, at the end of
    /// the run.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::io::Write;
    /// use std::sync::{Arc, Mutex};
    /// use tidewatch::sinks::file::AlertLines;
    /// use tidewatch::types::{FrameMeta, FrameResult, Hit};
    ///
    /// /// A writer into a shared buffer.
    /// struct Shared(Arc<Mutex<Vec<u8>>>);
    /// impl Write for Shared {
    ///     fn write(&mut self, b: &[u8]) -> std::io::Result<usize> { self.0.lock().unwrap().write(b) }
    ///     fn flush(&mut self) -> std::io::Result<()> { Ok(()) }
    /// }
    ///
    /// let buffer = Arc::new(Mutex::new(Vec::new()));
    /// let hook = AlertLines::new(Box::new(Shared(Arc::clone(&buffer))), 10).hook();
    /// let quiet = FrameResult { seq: 0, meta: FrameMeta::default(), hits: vec![], peak: 0.0 };
    /// let loud = FrameResult { seq: 1, meta: FrameMeta::default(), hits: vec![Hit { feature: 2, score: 5.0 }], peak: 5.0 };
    /// for r in [quiet, loud] {
    ///     hook(&r);
    /// }
    /// let text = String::from_utf8(buffer.lock().unwrap().clone()).unwrap();
    /// assert_eq!(text.lines().count(), 1, "one line per anomalous frame");
    /// let alert: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    /// assert_eq!((alert["seq"].as_u64(), alert["num_anomalous_features"].as_u64()), (Some(1), Some(1)));
    /// ```
    pub fn hook(self) -> ResultHook {
        Arc::new(move |r: &FrameResult| self.write(r))
    }
}
