//! Machine records from a file, as frames: an AI4I CSV (`.csv`, found by its header's
//! column names) or one JSON record per line (`.jsonl`, `.json`). Read by one worker; the
//! dataflow numbers the records in file order.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{bail, Context};

use super::record::{Ai4iColumns, MachineRecord};
use crate::clock;
use crate::sources::{FrameSource, Pull, SourceError};
use crate::types::FrameMeta;

enum Format {
    /// AI4I CSV: plain comma-separated fields (its values hold no commas or quotes).
    Csv(Ai4iColumns),
    Jsonl,
}

/// A file of machine records.
pub struct RecordFile {
    lines: std::io::Lines<BufReader<File>>,
    line: usize,
    name: String,
    format: Format,
}

impl RecordFile {
    /// Opens `path`, reading the header of a CSV file.
    pub fn open(path: &Path) -> anyhow::Result<RecordFile> {
        let name = path.display().to_string();
        let file = File::open(path).with_context(|| format!("cannot open {name}"))?;
        let mut lines = BufReader::with_capacity(1 << 16, file).lines();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let (format, line) = match ext.to_ascii_lowercase().as_str() {
            "csv" => {
                let header = lines
                    .next()
                    .with_context(|| format!("{name}: empty file, expected a header row"))?
                    .with_context(|| format!("{name}: cannot read the header"))?;
                let fields: Vec<&str> = header.split(',').collect();
                let columns =
                    Ai4iColumns::new(&fields).map_err(|e| anyhow::anyhow!("{name}:1: {e}"))?;
                (Format::Csv(columns), 1)
            }
            "jsonl" | "json" => (Format::Jsonl, 0),
            _ => bail!("{name}: machine records are read from .csv or .jsonl files"),
        };
        Ok(RecordFile {
            lines,
            line,
            name,
            format,
        })
    }
}

impl FrameSource for RecordFile {
    fn pull(&mut self) -> Pull {
        loop {
            let text = match self.lines.next() {
                None => return Pull::Done,
                Some(Err(e)) => return self.bad(format!("read error: {e}")),
                Some(Ok(text)) => text,
            };
            self.line += 1;
            if text.trim().is_empty() {
                continue;
            }
            let record = match &self.format {
                Format::Csv(columns) => columns.record(&text.split(',').collect::<Vec<_>>()),
                Format::Jsonl => serde_json::from_str(&text)
                    .map_err(|e| e.to_string())
                    .and_then(|v| MachineRecord::from_json(&v)),
            };
            return match record {
                Ok(r) => Pull::Frame(r.into_frame(FrameMeta {
                    received_ms: clock::unix_ms(),
                    received_us: clock::now_us(),
                    ..FrameMeta::default()
                })),
                Err(problem) => self.bad(problem),
            };
        }
    }
}

impl RecordFile {
    fn bad(&self, problem: String) -> Pull {
        Pull::Bad(SourceError {
            origin: format!("{}:{}", self.name, self.line),
            problem,
        })
    }
}
