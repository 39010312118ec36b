//! Per-frame scores to a CSV file (`replay --scores`): one line per scored frame,
//! anomalous or not, for a researcher's own metrics (the layout of `evaluate --scores`,
//! with the frame's seq and id in place of the row and label).

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;

use super::ResultHook;
use crate::types::FrameResult;

/// The header line: `seq` (the frame's number in the run), `id` (the client's or the
/// file's frame id, empty if none), `entity` (empty if none), `score` (the frame's largest
/// feature score, [`FrameResult::peak`]) and `flag` (1 if the frame alerted).
pub const HEADER: &str = "seq,id,entity,score,flag";

/// A CSV file of every verdict's score, written by worker 0 in frame order.
#[derive(Clone)]
pub struct ScoreLines {
    inner: Arc<Mutex<Inner>>,
    path: PathBuf,
}

struct Inner {
    out: BufWriter<std::fs::File>,
    /// The first write error: later lines are dropped and [`ScoreLines::finish`] reports it.
    failed: Option<std::io::Error>,
}

impl ScoreLines {
    /// Creates (or truncates) `path` and writes the header. Open it in one process only
    /// (the one hosting worker 0), so that no other process of a cluster truncates it.
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        let file = std::fs::File::create(path)
            .with_context(|| format!("creating scores file {}", path.display()))?;
        let mut out = BufWriter::new(file);
        writeln!(out, "{HEADER}")?;
        Ok(ScoreLines {
            inner: Arc::new(Mutex::new(Inner { out, failed: None })),
            path: path.to_path_buf(),
        })
    }

    /// Appends `result`'s line. Buffered: a line per frame is too many for a flush each.
    pub fn write(&self, result: &FrameResult) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.failed.is_some() {
            return;
        }
        let meta = &result.meta;
        let written = writeln!(
            inner.out,
            "{},{},{},{},{}",
            result.seq,
            csv_field(meta.id.as_deref().unwrap_or("")),
            csv_field(meta.entity.as_deref().unwrap_or("")),
            result.peak,
            u8::from(result.is_anomalous())
        );
        if let Err(e) = written {
            tracing::error!(error = %e, path = %self.path.display(), "could not write a score line; the rest are dropped");
            inner.failed = Some(e);
        }
    }

    /// This file as a hook for [`SinkSpec::on_result`](super::SinkSpec::on_result).
    pub fn hook(&self) -> ResultHook {
        let me = self.clone();
        Arc::new(move |r| me.write(r))
    }

    /// Flushes the file, and reports the first error any write met.
    pub fn finish(self) -> anyhow::Result<()> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = inner.failed.take() {
            return Err(e).with_context(|| format!("writing {}", self.path.display()));
        }
        inner
            .out
            .flush()
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

/// `s` as one CSV field: quoted, with quotes doubled, when it holds a comma, a quote or a
/// line break (RFC 4180); as it is otherwise.
fn csv_field(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\"")).into()
    } else {
        s.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{FrameMeta, Hit};

    /// Every verdict gets a line, anomalous or not, with its peak; ids with commas or
    /// quotes stay one field.
    #[test]
    fn one_line_per_verdict() {
        let dir = std::env::temp_dir().join(format!("tw-scores-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.csv");
        let lines = ScoreLines::create(&path).unwrap();
        let hook = lines.hook();
        hook(&FrameResult {
            seq: 0,
            meta: FrameMeta {
                id: Some("a,\"b\"".into()),
                entity: Some("P-1".into()),
                ..FrameMeta::default()
            },
            hits: vec![],
            peak: 0.25,
        });
        hook(&FrameResult {
            seq: 1,
            meta: FrameMeta::default(),
            hits: vec![Hit {
                feature: 3,
                score: 2.5,
            }],
            peak: 2.5,
        });
        drop(hook);
        lines.finish().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "seq,id,entity,score,flag\n0,\"a,\"\"b\"\"\",P-1,0.25,0\n1,,,2.5,1\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
