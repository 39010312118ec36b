//! File replay: frames from JSONL, CSV and NPY files (each optionally gzip-compressed,
//! `name.jsonl.gz`), read as a stream; whole-file matrices for training; and the
//! [`FrameWriter`] the generator writes with.
//!
//! | extension | content |
//! |-----------|---------|
//! | `.jsonl`, `.json` | one seed-format object per line: `{"data":{"feature_0":0.82,...}}`, optional `"id"`, `"timestamp"` |
//! | `.csv` | a header row of feature names (optional `id`, `timestamp` columns), one frame per row |
//! | `.npy` | a `[T, F]` array of f32 or f64, C order, columns in model feature order |

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context};

use super::decode::{
    decode_frame, parse_timestamp, KeyPolicy, MissingKeys, UnknownKeys, ENTITY_KEYS,
};
use super::{FrameSource, Pull, Sequencing, SourceError};
use crate::clock;
use crate::model::{FeatureIndex, FeatureNames};
use crate::types::{Frame, FrameMeta};

/// At most this many names are listed when a CSV header does not match the model.
const NAMES_SHOWN: usize = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Jsonl,
    Csv,
    Npy,
}

/// The format from the file name, and whether it is gzip-compressed (`.gz` suffix).
/// Whether records read from `path` can carry timestamps: JSONL and CSV can, `.npy`
/// files (and directories of them) hold values alone.
pub fn carries_timestamps(path: &Path) -> bool {
    !path.is_dir() && !matches!(format_of(path), Ok((Format::Npy, _)))
}

fn format_of(path: &Path) -> anyhow::Result<(Format, bool)> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let (stem, gz) = match name.strip_suffix(".gz") {
        Some(stem) => (stem, true),
        None => (name.as_str(), false),
    };
    let format = match stem.rsplit_once('.').map(|(_, ext)| ext) {
        Some("jsonl" | "json") => Format::Jsonl,
        Some("csv") => Format::Csv,
        Some("npy") => Format::Npy,
        _ => bail!(
            "{}: unknown file format (expected .jsonl, .json, .csv or .npy, optionally .gz)",
            path.display()
        ),
    };
    Ok((format, gz))
}

fn open_reader(path: &Path, gz: bool) -> anyhow::Result<Box<dyn BufRead + Send>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let file = BufReader::with_capacity(1 << 16, file);
    Ok(if gz {
        Box::new(BufReader::with_capacity(
            1 << 16,
            flate2::read::MultiGzDecoder::new(file),
        ))
    } else {
        Box::new(file)
    })
}

fn new_frame(values: Vec<f32>, id: Option<String>, event_ms: Option<i64>) -> Frame {
    Frame {
        seq: 0,
        meta: FrameMeta {
            received_ms: clock::unix_ms(),
            event_ms,
            id,
            source: 0,
            entity: None,
            received_us: clock::now_us(),
            ..FrameMeta::default()
        },
        values,
    }
}

/// Opens `path` as a frame source, choosing the format by extension (see the module
/// docs). Values are mapped to `index` by name (JSONL per record, CSV once at the header)
/// or by column position (NPY, whose columns must be exactly the model's features).
///
/// Fails when the file cannot be opened or its header does not fit the model; a record
/// that does not decode later is reported as [`Pull::Bad`] and the stream goes on.
pub fn open(
    path: &Path,
    index: &FeatureIndex,
    policy: KeyPolicy,
) -> anyhow::Result<Box<dyn FrameSource>> {
    let mut sources = open_split(path, index, policy, 1)?;
    Ok(sources.remove(0))
}

/// As [`open`], as up to `parts` sources that deal the file's records among themselves,
/// one per worker: JSONL and CSV records are parsed by whichever source takes them, and
/// each frame's seq is its record's number, so the frames keep the file's order (and the
/// verdicts their values) however many workers read. An NPY file, whose rows need no
/// parsing, is read by one source alone.
pub fn open_split(
    path: &Path,
    index: &FeatureIndex,
    policy: KeyPolicy,
    parts: usize,
) -> anyhow::Result<Vec<Box<dyn FrameSource>>> {
    open_keyed(path, index, policy, parts, CsvColumns::default())
}

/// The CSV columns that name a record's entity and its timestamp, when not the default
/// ones (see [`open_keyed`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct CsvColumns<'a> {
    /// The entity column (`--entity-column`).
    pub entity: Option<&'a str>,
    /// The timestamp column (`--timestamp-column`).
    pub timestamp: Option<&'a str>,
}

/// As [`open_split`], with entities: a CSV file's entity is column `columns.entity` (by
/// default the first column named like one of [`ENTITY_KEYS`]) and its timestamp column
/// `columns.timestamp` (by default one called `timestamp`, else `time`); a JSONL
/// record's are its own (see [`crate::sources::decode_frame`]), and a directory is read
/// as one entity per file ([`npy_dir`]).
pub fn open_keyed(
    path: &Path,
    index: &FeatureIndex,
    policy: KeyPolicy,
    parts: usize,
    columns: CsvColumns<'_>,
) -> anyhow::Result<Vec<Box<dyn FrameSource>>> {
    if path.is_dir() {
        return Ok(vec![Box::new(npy_dir(path, index.len())?)]);
    }
    let (format, gz) = format_of(path)?;
    let name = path.display().to_string();
    let parts = parts.max(1);
    if let (Format::Jsonl, false) = (format, gz) {
        if let Some(map) = map_file(path)? {
            let lines = Arc::new(Mutex::new(MappedLines {
                map: Arc::clone(&map),
                pos: 0,
                line: 0,
                records: 0,
            }));
            return Ok((0..parts)
                .map(|_| {
                    Box::new(JsonlSource {
                        input: JsonlInput::Mapped {
                            lines: Arc::clone(&lines),
                            map: Arc::clone(&map),
                        },
                        name: name.clone(),
                        index: index.clone(),
                        policy,
                    }) as Box<dyn FrameSource>
                })
                .collect());
        }
    }
    let reader = open_reader(path, gz)?;
    Ok(match format {
        Format::Jsonl => {
            let lines = Lines::shared(reader, 0);
            (0..parts)
                .map(|_| {
                    Box::new(JsonlSource {
                        input: JsonlInput::Read {
                            lines: Arc::clone(&lines),
                            buf: Vec::new(),
                        },
                        name: name.clone(),
                        index: index.clone(),
                        policy,
                    }) as Box<dyn FrameSource>
                })
                .collect()
        }
        Format::Csv => {
            let first = CsvSource::new(reader, name, index, policy, columns)?;
            let mut sources: Vec<Box<dyn FrameSource>> = (1..parts)
                .map(|_| Box::new(first.sibling()) as Box<dyn FrameSource>)
                .collect();
            sources.insert(0, Box::new(first));
            sources
        }
        Format::Npy => vec![npy_source(reader, name, index.len())?],
    })
}

/// Reads the next line into `buf`, returning its 1-based number, or `None` at the end.
fn next_line(
    reader: &mut dyn BufRead,
    buf: &mut Vec<u8>,
    line: &mut usize,
) -> io::Result<Option<usize>> {
    loop {
        buf.clear();
        if reader.read_until(b'\n', buf)? == 0 {
            return Ok(None);
        }
        *line += 1;
        if !is_blank(buf) {
            return Ok(Some(*line));
        }
    }
}

/// Blank lines (a trailing newline, an editor's padding) are not records.
fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

/// One record of a JSONL file as it is written there, for `bench --input`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawRecord {
    /// Its 1-based line number.
    pub line: usize,
    /// The line without its line ending: the bytes a client would send as a body.
    pub body: Vec<u8>,
}

/// The records of a JSONL file (`.jsonl` or `.json`, optionally `.gz`) as they are
/// written, the first `limit` of them (all with `None`), not decoded: non-blank lines,
/// as [`open`] reads them. Any other format is refused, naming the one that is read.
pub fn jsonl_records(path: &Path, limit: Option<usize>) -> anyhow::Result<Vec<RawRecord>> {
    let name = path.display().to_string();
    let format = if path.is_dir() {
        None
    } else {
        Some(format_of(path)?)
    };
    let gz = match format {
        Some((Format::Jsonl, gz)) => gz,
        other => bail!(
            "{name}: only JSONL files are read (.jsonl or .json, optionally .gz: one frame object per line), not {}",
            match other {
                None => "a directory",
                Some((Format::Csv, _)) => "CSV",
                Some(_) => "NPY",
            }
        ),
    };
    let mut reader = open_reader(path, gz)?;
    let (mut buf, mut line) = (Vec::new(), 0);
    let mut records = Vec::new();
    while limit.is_none_or(|n| records.len() < n) {
        let Some(at) = next_line(&mut reader, &mut buf, &mut line)
            .with_context(|| format!("{name}:{}: cannot read", line + 1))?
        else {
            break;
        };
        let end = buf.len()
            - buf
                .iter()
                .rev()
                .take_while(|&&b| b == b'\n' || b == b'\r')
                .count();
        records.push(RawRecord {
            line: at,
            body: buf[..end].to_vec(),
        });
    }
    Ok(records)
}

/// The lines of a text file, read in turn by one or several workers: each takes the next
/// record (and inflates it, for `.gz`) under the lock and parses it outside, so that the
/// parsing, which costs far more than reading, spreads over the workers.
struct Lines {
    reader: Box<dyn BufRead + Send>,
    /// Lines read so far (1-based numbers for messages).
    line: usize,
    /// Records (non-blank lines after any header) handed out so far.
    records: u64,
    done: bool,
}

/// The next record of a text file.
enum Record {
    /// Record number `seq` (0-based, its frame's seq), on line `line`, now in the buffer.
    Line { seq: u64, line: usize },
    /// The file is over.
    End,
    /// A read error (a truncated gzip stream) ends the file: nothing after it can be
    /// trusted.
    Broken { line: usize, error: io::Error },
}

impl Lines {
    fn shared(reader: Box<dyn BufRead + Send>, line: usize) -> Arc<Mutex<Lines>> {
        Arc::new(Mutex::new(Lines {
            reader,
            line,
            records: 0,
            done: false,
        }))
    }

    /// Reads the next record into `buf`.
    fn next(lines: &Mutex<Lines>, buf: &mut Vec<u8>) -> Record {
        let mut l = lines.lock().unwrap_or_else(|e| e.into_inner());
        if l.done {
            return Record::End;
        }
        let Lines {
            reader,
            line,
            records,
            done,
        } = &mut *l;
        let seq = *records;
        match next_line(reader, buf, line) {
            Ok(Some(line)) => {
                *records += 1;
                Record::Line { seq, line }
            }
            Ok(None) => {
                *done = true;
                Record::End
            }
            Err(error) => {
                *done = true;
                Record::Broken {
                    line: *line + 1,
                    error,
                }
            }
        }
    }
}

/// A frame numbered by its record: the same frame gets the same seq however many workers
/// read the file, and a record that does not decode leaves its seq unused.
fn numbered(mut frame: Frame, seq: u64) -> Pull {
    frame.seq = seq;
    Pull::Frame(frame)
}

fn bad_record(name: &str, line: usize, problem: String) -> Pull {
    Pull::Bad(SourceError {
        origin: format!("{name}:{line}"),
        problem,
    })
}

/// A plain file mapped into memory, when it is a regular file that is not empty; `None`
/// where it cannot be mapped, to be read instead.
fn map_file(path: &Path) -> anyhow::Result<Option<Arc<memmap2::Mmap>>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.len() == 0 {
        return Ok(None);
    }
    // SAFETY: the map is only read. If another process truncated the file while it is
    // replayed, reading the lost pages would raise SIGBUS; replay reads a file written
    // before it starts, as `read` would read one (a file still being written is read
    // only up to the length it had when mapped).
    Ok(unsafe { memmap2::Mmap::map(&file) }.ok().map(Arc::new))
}

/// The lines of a mapped file, taken in turn by one or several workers: each takes the
/// next record's place in the map under the lock and parses it where it lies, so no line
/// is copied (reading a 650 KB line through a buffer copied it twice).
struct MappedLines {
    map: Arc<memmap2::Mmap>,
    /// Where the next line starts.
    pos: usize,
    /// Lines taken so far (1-based numbers for messages).
    line: usize,
    /// Records (non-blank lines) handed out so far.
    records: u64,
}

impl MappedLines {
    /// The next record: its seq, line number and bytes (with their line ending, as a
    /// read line has them), skipping blank lines as [`next_line`] does.
    fn next(lines: &Mutex<MappedLines>) -> Option<(u64, usize, std::ops::Range<usize>)> {
        let mut l = lines.lock().unwrap_or_else(|e| e.into_inner());
        let len = l.map.len();
        while l.pos < len {
            let start = l.pos;
            let end = memchr::memchr(b'\n', &l.map[start..]).map_or(len, |i| start + i + 1);
            l.pos = end;
            l.line += 1;
            if !is_blank(&l.map[start..end]) {
                let seq = l.records;
                l.records += 1;
                return Some((seq, l.line, start..end));
            }
        }
        None
    }
}

/// Where a JSONL source's records come from.
enum JsonlInput {
    /// Read line by line (gzip, or a file that could not be mapped) into `buf`.
    Read {
        lines: Arc<Mutex<Lines>>,
        buf: Vec<u8>,
    },
    /// A mapped plain file, parsed where each line lies.
    Mapped {
        lines: Arc<Mutex<MappedLines>>,
        map: Arc<memmap2::Mmap>,
    },
}

struct JsonlSource {
    input: JsonlInput,
    name: String,
    index: FeatureIndex,
    policy: KeyPolicy,
}

impl FrameSource for JsonlSource {
    fn pull(&mut self) -> Pull {
        let (record, bytes): (Record, &[u8]) = match &mut self.input {
            JsonlInput::Read { lines, buf } => (Lines::next(lines, buf), &buf[..]),
            JsonlInput::Mapped { lines, map } => match MappedLines::next(lines) {
                Some((seq, line, at)) => (Record::Line { seq, line }, &map[at]),
                None => (Record::End, &[]),
            },
        };
        match record {
            Record::Line { seq, line } => {
                let mut values = Vec::with_capacity(self.index.len());
                match decode_frame(bytes, &self.index, self.policy, &mut values) {
                    Ok(d) => {
                        let mut frame = new_frame(values, d.id, d.event_ms);
                        frame.meta.entity = d.entity;
                        numbered(frame, seq)
                    }
                    Err(e) => bad_record(&self.name, line, e.to_string()),
                }
            }
            Record::End => Pull::Done,
            Record::Broken { line, error } => {
                bad_record(&self.name, line, format!("read error: {error}"))
            }
        }
    }

    fn sequencing(&self) -> Sequencing {
        Sequencing::Assigned
    }
}

/// Splits one CSV line (RFC 4180 quoting, no newlines inside fields).
fn csv_fields(line: &str) -> Result<Vec<Cow<'_, str>>, String> {
    let line = line.trim_end_matches(['\n', '\r']);
    let mut fields = Vec::new();
    let mut rest = line;
    loop {
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut field = String::new();
            let mut chars = quoted.char_indices();
            let after = loop {
                match chars.next() {
                    Some((i, '"')) if quoted[i + 1..].starts_with('"') => {
                        field.push('"');
                        chars.next();
                    }
                    Some((i, '"')) => break &quoted[i + 1..],
                    Some((_, c)) => field.push(c),
                    None => return Err("unterminated quoted field".into()),
                }
            };
            fields.push(Cow::Owned(field));
            match after.strip_prefix(',') {
                Some(r) => rest = r,
                None if after.is_empty() => return Ok(fields),
                None => return Err(format!("text after a closing quote: {after:?}")),
            }
        } else {
            match rest.split_once(',') {
                Some((field, r)) => {
                    fields.push(Cow::Borrowed(field));
                    rest = r;
                }
                None => {
                    fields.push(Cow::Borrowed(rest));
                    return Ok(fields);
                }
            }
        }
    }
}

fn csv_quote(name: &str) -> Cow<'_, str> {
    if name.contains([',', '"', '\n', '\r']) {
        Cow::Owned(format!("\"{}\"", name.replace('"', "\"\"")))
    } else {
        Cow::Borrowed(name)
    }
}

fn parse_value(field: &str) -> Result<f32, String> {
    let v: f64 = field
        .trim()
        .parse()
        .map_err(|_| format!("{field:?} is not a number"))?;
    let f = v as f32;
    if f.is_finite() {
        Ok(f)
    } else {
        Err(format!("{field:?} is not a finite 32-bit float"))
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Column {
    Feature(usize),
    Id,
    Timestamp,
    Entity,
    Skip,
}

struct CsvSource {
    lines: Arc<Mutex<Lines>>,
    name: String,
    buf: Vec<u8>,
    columns: Arc<[Column]>,
    header: Arc<[String]>,
    n: usize,
}

impl CsvSource {
    /// Reads the header and applies the key policy to it once, for the whole file.
    fn new(
        mut reader: Box<dyn BufRead + Send>,
        name: String,
        index: &FeatureIndex,
        policy: KeyPolicy,
        named: CsvColumns<'_>,
    ) -> anyhow::Result<Self> {
        let mut buf = Vec::new();
        let mut line = 0;
        next_line(&mut reader, &mut buf, &mut line)
            .with_context(|| format!("{name}: cannot read the header"))?
            .ok_or_else(|| anyhow!("{name}: empty file, expected a header row"))?;
        let text = std::str::from_utf8(&buf).with_context(|| format!("{name}:{line}"))?;
        let header: Vec<String> = csv_fields(text)
            .map_err(|e| anyhow!("{name}:{line}: {e}"))?
            .into_iter()
            .map(|f| f.trim().to_string())
            .collect();
        let mut seen = vec![false; index.len()];
        let mut columns = Vec::with_capacity(header.len());
        let mut unknown = Vec::new();
        // the named entity column, else the first column named like an entity key
        let entity_at =
            match named.entity {
                Some(want) => Some(header.iter().position(|c| c == want).ok_or_else(|| {
                    anyhow!("{name}:{line}: no column {want:?} for --entity-column")
                })?),
                None => header
                    .iter()
                    .position(|c| index.index_of(c).is_none() && ENTITY_KEYS.contains(&c.as_str())),
            };
        // the named timestamp column, else one called `timestamp`, else `time`
        let not_feature = |c: &str| index.index_of(c).is_none();
        let timestamp_at = match named.timestamp {
            Some(want) => Some(header.iter().position(|c| c == want).ok_or_else(|| {
                anyhow!("{name}:{line}: no column {want:?} for --timestamp-column")
            })?),
            None => ["timestamp", "time"]
                .iter()
                .find_map(|t| header.iter().position(|c| c == t && not_feature(c))),
        };
        for (at, col) in header.iter().enumerate() {
            if Some(at) == entity_at {
                columns.push(Column::Entity);
                continue;
            }
            if Some(at) == timestamp_at {
                columns.push(Column::Timestamp);
                continue;
            }
            let c = match (index.index_of(col), col.as_str()) {
                (Some(i), _) => {
                    if std::mem::replace(&mut seen[i], true) {
                        bail!("{name}:{line}: column {col:?} appears more than once");
                    }
                    Column::Feature(i)
                }
                (None, "id") => Column::Id,
                (None, _) => {
                    unknown.push(col.as_str());
                    Column::Skip
                }
            };
            columns.push(c);
        }
        if !unknown.is_empty() && policy.unknown == UnknownKeys::Reject {
            bail!(
                "{name}:{line}: {} column(s) name no model feature: {}",
                unknown.len(),
                list_names(unknown.iter().copied(), unknown.len())
            );
        }
        let missing: Vec<usize> = (0..index.len()).filter(|&i| !seen[i]).collect();
        if !missing.is_empty() && policy.missing == MissingKeys::Reject {
            bail!(
                "{name}:{line}: {} model feature(s) have no column: {}",
                missing.len(),
                list_names(missing.iter().map(|&i| index.name(i)), missing.len())
            );
        }
        Ok(CsvSource {
            lines: Lines::shared(reader, line),
            name,
            buf,
            columns: columns.into(),
            header: header.into(),
            n: index.len(),
        })
    }

    /// Another reader of the same file, sharing its lines and header.
    fn sibling(&self) -> CsvSource {
        CsvSource {
            lines: Arc::clone(&self.lines),
            name: self.name.clone(),
            buf: Vec::new(),
            columns: Arc::clone(&self.columns),
            header: Arc::clone(&self.header),
            n: self.n,
        }
    }

    fn parse_row(&self) -> Result<Frame, String> {
        let text = std::str::from_utf8(&self.buf).map_err(|e| format!("not UTF-8: {e}"))?;
        let fields = csv_fields(text)?;
        if fields.len() != self.columns.len() {
            return Err(format!(
                "{} fields, the header has {}",
                fields.len(),
                self.columns.len()
            ));
        }
        // Features without a column (MissingKeys::Zero) stay 0.
        let mut values = vec![0.0f32; self.n];
        let (mut id, mut event_ms, mut entity) = (None, None, None);
        for ((field, column), col_name) in fields
            .iter()
            .zip(self.columns.iter())
            .zip(self.header.iter())
        {
            match column {
                Column::Feature(i) => {
                    values[*i] = parse_value(field).map_err(|e| format!("{col_name}: {e}"))?
                }
                Column::Id if !field.is_empty() => id = Some(field.to_string()),
                Column::Entity if !field.is_empty() => entity = Some(field.to_string()),
                Column::Timestamp if !field.trim().is_empty() => {
                    event_ms = Some(parse_timestamp(field).map_err(|e| e.to_string())?)
                }
                _ => {}
            }
        }
        let mut frame = new_frame(values, id, event_ms);
        frame.meta.entity = entity;
        Ok(frame)
    }
}

fn list_names<S: AsRef<str>>(names: impl Iterator<Item = S>, count: usize) -> String {
    let shown: Vec<String> = names
        .take(NAMES_SHOWN)
        .map(|n| format!("{:?}", n.as_ref()))
        .collect();
    let more = count.saturating_sub(shown.len());
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

impl FrameSource for CsvSource {
    fn pull(&mut self) -> Pull {
        match Lines::next(&self.lines, &mut self.buf) {
            Record::Line { seq, line } => match self.parse_row() {
                Ok(frame) => numbered(frame, seq),
                Err(problem) => bad_record(&self.name, line, problem),
            },
            Record::End => Pull::Done,
            Record::Broken { line, error } => {
                bad_record(&self.name, line, format!("read error: {error}"))
            }
        }
    }

    fn sequencing(&self) -> Sequencing {
        Sequencing::Assigned
    }
}

/// An NPY file's header, checked for what tidewatch reads: a 1-D or 2-D array of f32 or
/// f64. A 1-D array is one feature per row.
struct NpyShape {
    rows: usize,
    cols: usize,
    fortran: bool,
}

fn npy_shape(npy: &npyz::NpyFile<impl Read>, name: &str) -> anyhow::Result<NpyShape> {
    let (rows, cols) = match *npy.shape() {
        [rows] => (rows, 1),
        [rows, cols] => (rows, cols),
        ref other => bail!("{name}: array of shape {other:?}, expected [rows, features]"),
    };
    Ok(NpyShape {
        rows: rows as usize,
        cols: cols as usize,
        fortran: npy.order() == npyz::Order::Fortran,
    })
}

fn npy_source(
    reader: Box<dyn BufRead + Send>,
    name: String,
    n: usize,
) -> anyhow::Result<Box<dyn FrameSource>> {
    let npy = npyz::NpyFile::new(Box::new(reader) as Box<dyn Read + Send>)
        .with_context(|| format!("{name}: not an NPY file"))?;
    let shape = npy_shape(&npy, &name)?;
    if shape.cols != n {
        bail!("{name}: {} columns, the model has {n} features", shape.cols);
    }
    if shape.fortran && shape.rows > 1 && shape.cols > 1 {
        // Streaming row by row needs rows to be contiguous.
        bail!("{name}: Fortran-order array; save it in C order to replay it");
    }
    let dtype = npy.dtype().descr();
    let npy = match npy.try_data::<f32>() {
        Ok(data) => return Ok(Box::new(NpySource::new(data, name, shape))),
        Err(npy) => npy,
    };
    match npy.try_data::<f64>() {
        Ok(data) => Ok(Box::new(NpySource::new(data, name, shape))),
        Err(_) => bail!("{name}: dtype {dtype} is not supported (f32 or f64)"),
    }
}

struct NpySource<T: npyz::Deserialize> {
    data: npyz::NpyReader<T, Box<dyn Read + Send>>,
    name: String,
    rows: usize,
    cols: usize,
    row: usize,
}

impl<T: npyz::Deserialize> NpySource<T> {
    fn new(data: npyz::NpyReader<T, Box<dyn Read + Send>>, name: String, s: NpyShape) -> Self {
        NpySource {
            data,
            name,
            rows: s.rows,
            cols: s.cols,
            row: 0,
        }
    }
}

impl<T> FrameSource for NpySource<T>
where
    T: npyz::Deserialize + Into<f64>,
    T::TypeReader: Send,
{
    fn pull(&mut self) -> Pull {
        if self.row >= self.rows {
            return Pull::Done;
        }
        self.row += 1;
        let mut values = Vec::with_capacity(self.cols);
        let mut problem = None;
        for col in 0..self.cols {
            let v: f64 = match self.data.next() {
                Some(Ok(v)) => v.into(),
                Some(Err(e)) => {
                    // The rest of the file is unreadable: end after reporting.
                    self.rows = self.row;
                    problem = Some(format!("read error: {e}"));
                    break;
                }
                None => {
                    self.rows = self.row;
                    problem = Some("file ends before the shape in its header".into());
                    break;
                }
            };
            let f = v as f32;
            if !f.is_finite() && problem.is_none() {
                problem = Some(format!("column {col}: {v} is not a finite 32-bit float"));
            }
            values.push(f);
        }
        match problem {
            None => Pull::Frame(new_frame(values, None, None)),
            Some(problem) => Pull::Bad(SourceError {
                origin: format!("{}:row {}", self.name, self.row),
                problem,
            }),
        }
    }
}

/// The entities of a directory of `<entity>.npy` (or `.npy.gz`) files, each `[T, F]`, as
/// one stream of frames: row t of every entity (in name order) before row t + 1 of any,
/// as their telemetry would arrive, each frame keyed by its file's stem and identified
/// as `<entity>:<row>` (row from 0). Frames are
/// numbered densely in that order, so the order, and the verdicts, are the same in every
/// run. The files are read whole at start-up (SMAP's 54 test channels: 43 MB of f32).
pub fn npy_dir(dir: &Path, n: usize) -> anyhow::Result<EntityRows> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("{}", dir.display()))? {
        let path = entry?.path();
        let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
            continue;
        };
        if let Some(stem) = [".npy.gz", ".npy"]
            .iter()
            .find_map(|e| file.strip_suffix(e))
        {
            files.push((stem.to_string(), path.clone()));
        }
    }
    files.sort();
    if files.is_empty() {
        bail!(
            "{}: no .npy or .npy.gz files (one per entity)",
            dir.display()
        );
    }
    let mut entities = Vec::with_capacity(files.len());
    for (stem, path) in files {
        let m = read_matrix(&path)?;
        if m.cols != n {
            bail!(
                "{}: {} columns, the model has {n} features",
                path.display(),
                m.cols
            );
        }
        entities.push((stem, m));
    }
    Ok(EntityRows {
        entities,
        row: 0,
        next: 0,
    })
}

/// The frames of [`npy_dir`].
pub struct EntityRows {
    entities: Vec<(String, Matrix)>,
    row: usize,
    next: usize,
}

impl FrameSource for EntityRows {
    fn pull(&mut self) -> Pull {
        let longest = self.entities.iter().map(|(_, m)| m.rows).max().unwrap_or(0);
        while self.row < longest {
            while self.next < self.entities.len() {
                let (name, m) = &self.entities[self.next];
                self.next += 1;
                if self.row < m.rows {
                    // the id says where the frame came from: `<entity>:<row>`
                    let id = format!("{name}:{}", self.row);
                    let mut frame = new_frame(m.row(self.row).to_vec(), Some(id), None);
                    frame.meta.entity = Some(name.clone());
                    return Pull::Frame(frame);
                }
            }
            self.next = 0;
            self.row += 1;
        }
        Pull::Done
    }
}

/// A whole data set in memory, row-major `[rows][cols]`: one row per frame.
#[derive(Clone, Debug, PartialEq)]
pub struct Matrix {
    /// Number of rows (frames).
    pub rows: usize,
    /// Number of columns (features).
    pub cols: usize,
    /// `rows * cols` values.
    pub values: Vec<f32>,
    /// Column names where the file has them (CSV header, JSONL keys); `None` for NPY.
    pub names: Option<Vec<String>>,
}

impl Matrix {
    /// Row `r`.
    pub fn row(&self, r: usize) -> &[f32] {
        &self.values[r * self.cols..(r + 1) * self.cols]
    }
}

/// Reads a whole NPY, CSV or JSONL file (optionally `.gz`) for training.
///
/// Every row must have every column and every value must be a finite f32; the first
/// problem fails the read with file and line. CSV `id`/`timestamp` columns are left out.
/// JSONL columns are the first record's `"data"` keys in their order; later records are
/// matched to them by name.
pub fn read_matrix(path: &Path) -> anyhow::Result<Matrix> {
    let (format, gz) = format_of(path)?;
    let reader = open_reader(path, gz)?;
    let name = path.display().to_string();
    let m = match format {
        Format::Npy => read_npy_matrix(reader, &name)?,
        Format::Csv => read_csv_matrix(reader, &name)?,
        Format::Jsonl => read_jsonl_matrix(reader, &name)?,
    };
    if m.rows == 0 || m.cols == 0 {
        bail!("{name}: no data ({} rows, {} columns)", m.rows, m.cols);
    }
    Ok(m)
}

fn read_npy_matrix(reader: Box<dyn BufRead + Send>, name: &str) -> anyhow::Result<Matrix> {
    let npy = npyz::NpyFile::new(reader).with_context(|| format!("{name}: not an NPY file"))?;
    let shape = npy_shape(&npy, name)?;
    let dtype = npy.dtype().descr();
    let values: Vec<f32> = match npy.try_data::<f32>() {
        Ok(data) => data.collect::<io::Result<_>>(),
        Err(npy) => match npy.try_data::<f64>() {
            Ok(data) => data.map(|v| v.map(|v| v as f32)).collect(),
            Err(_) => bail!("{name}: dtype {dtype} is not supported (f32 or f64)"),
        },
    }
    .with_context(|| format!("{name}: cannot read the data"))?;
    let (rows, cols) = (shape.rows, shape.cols);
    let values = if shape.fortran {
        // Column-major on disk: transpose to row-major.
        let mut t = vec![0.0; values.len()];
        for c in 0..cols {
            for r in 0..rows {
                t[r * cols + c] = values[c * rows + r];
            }
        }
        t
    } else {
        values
    };
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        bail!(
            "{name}: row {} column {}: value {} is not a finite 32-bit float",
            i / cols,
            i % cols,
            values[i]
        );
    }
    Ok(Matrix {
        rows,
        cols,
        values,
        names: None,
    })
}

fn read_csv_matrix(mut reader: Box<dyn BufRead + Send>, name: &str) -> anyhow::Result<Matrix> {
    let (mut buf, mut line) = (Vec::new(), 0);
    let read_err = |line: usize| format!("{name}:{line}");
    next_line(&mut reader, &mut buf, &mut line)
        .with_context(|| read_err(line + 1))?
        .ok_or_else(|| anyhow!("{name}: empty file, expected a header row"))?;
    let text = std::str::from_utf8(&buf).with_context(|| read_err(line))?;
    let header: Vec<String> = csv_fields(text)
        .map_err(|e| anyhow!("{name}:{line}: {e}"))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    let keep: Vec<bool> = header
        .iter()
        .map(|h| !matches!(h.as_str(), "id" | "timestamp"))
        .collect();
    let names: Vec<String> = header
        .iter()
        .zip(&keep)
        .filter(|(_, &k)| k)
        .map(|(h, _)| h.clone())
        .collect();
    let mut values = Vec::new();
    let mut rows = 0;
    while let Some(line) =
        next_line(&mut reader, &mut buf, &mut line).with_context(|| read_err(line + 1))?
    {
        let text = std::str::from_utf8(&buf).with_context(|| read_err(line))?;
        let fields = csv_fields(text).map_err(|e| anyhow!("{name}:{line}: {e}"))?;
        if fields.len() != header.len() {
            bail!(
                "{name}:{line}: {} fields, the header has {}",
                fields.len(),
                header.len()
            );
        }
        for ((field, keep), col) in fields.iter().zip(&keep).zip(&header) {
            if *keep {
                let v = parse_value(field).map_err(|e| anyhow!("{name}:{line}: {col}: {e}"))?;
                values.push(v);
            }
        }
        rows += 1;
    }
    Ok(Matrix {
        rows,
        cols: names.len(),
        values,
        names: Some(names),
    })
}

/// The keys of the `"data"` object, in the order they appear.
struct DataKeys(Vec<String>);

impl<'de> serde::Deserialize<'de> for DataKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = DataKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of feature values")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<DataKeys, A::Error> {
                let mut keys = Vec::new();
                while let Some((k, _)) = map.next_entry::<String, serde::de::IgnoredAny>()? {
                    keys.push(k);
                }
                Ok(DataKeys(keys))
            }
        }
        d.deserialize_map(V)
    }
}

fn read_jsonl_matrix(mut reader: Box<dyn BufRead + Send>, name: &str) -> anyhow::Result<Matrix> {
    #[derive(serde::Deserialize)]
    struct First {
        data: DataKeys,
    }
    let (mut buf, mut line) = (Vec::new(), 0);
    let first = next_line(&mut reader, &mut buf, &mut line)
        .with_context(|| format!("{name}:{}", line + 1))?
        .ok_or_else(|| anyhow!("{name}: empty file"))?;
    let names = serde_json::from_slice::<First>(&buf)
        .map_err(|e| anyhow!("{name}:{first}: {e}"))?
        .data
        .0;
    let index = FeatureIndex::new(&FeatureNames::List(names.clone()), names.len())
        .map_err(|e| anyhow!("{name}:{first}: {e}"))?;
    let mut values = Vec::new();
    let mut row = Vec::new();
    let mut rows = 0;
    let mut current = Some(first);
    while let Some(line_no) = current {
        decode_frame(&buf, &index, KeyPolicy::default(), &mut row)
            .map_err(|e| anyhow!("{name}:{line_no}: {e}"))?;
        values.extend_from_slice(&row);
        rows += 1;
        current = next_line(&mut reader, &mut buf, &mut line)
            .with_context(|| format!("{name}:{}", line + 1))?;
    }
    Ok(Matrix {
        rows,
        cols: names.len(),
        values,
        names: Some(names),
    })
}

/// The NPY header is written with room for any row count and rewritten with the real one
/// by [`FrameWriter::finish`], so frames can be streamed without knowing their number.
const NPY_HEADER_LEN: usize = 128;

fn npy_header(rows: u64, cols: usize) -> Vec<u8> {
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    let mut h = b"\x93NUMPY\x01\x00".to_vec();
    // Version 1.0: 10 bytes of preamble, then the dict padded with spaces and ended by '\n'.
    h.extend_from_slice(&((NPY_HEADER_LEN - 10) as u16).to_le_bytes());
    h.extend_from_slice(dict.as_bytes());
    h.resize(NPY_HEADER_LEN - 1, b' ');
    h.push(b'\n');
    h
}

enum Sink {
    Plain(BufWriter<File>),
    Gz(flate2::write::GzEncoder<BufWriter<File>>),
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Plain(w) => w.write(buf),
            Sink::Gz(w) => w.write(buf),
        }
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Sink::Plain(w) => w.write_all(buf),
            Sink::Gz(w) => w.write_all(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Plain(w) => w.flush(),
            Sink::Gz(w) => w.flush(),
        }
    }
}

/// Writes frames to a file in the format its extension names: `.jsonl` (also `.json`),
/// `.csv` (each optionally `.gz`) or `.npy` (f32 `[T, F]`).
///
/// JSONL lines are the seed's compact format with keys in model order,
/// `{"data":{"feature_0":0.8236497,...}}`, plus `"id"` and `"timestamp"` (epoch ms) when
/// the frame has them. CSV and NPY keep the values only. Call [`FrameWriter::finish`]:
/// it completes the gzip stream and the NPY header.
pub struct FrameWriter {
    path: PathBuf,
    format: Format,
    sink: Sink,
    cols: usize,
    rows: u64,
    /// `"name":` for each feature, JSON-escaped once rather than per frame.
    keys: Vec<Vec<u8>>,
    line: Vec<u8>,
}

impl FrameWriter {
    /// Creates (truncates) `path` for frames of the features in `names`.
    pub fn create(path: &Path, names: &FeatureIndex) -> anyhow::Result<FrameWriter> {
        let (format, gz) = format_of(path)?;
        if format == Format::Npy && gz {
            bail!(
                "{}: cannot write compressed NPY; write .npy and compress it afterwards",
                path.display()
            );
        }
        let file =
            File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        let file = BufWriter::with_capacity(1 << 16, file);
        let mut sink = if gz {
            Sink::Gz(flate2::write::GzEncoder::new(
                file,
                flate2::Compression::default(),
            ))
        } else {
            Sink::Plain(file)
        };
        let cols = names.len();
        let mut keys = Vec::new();
        match format {
            Format::Jsonl => {
                keys = (0..cols)
                    .map(|i| {
                        let mut k = serde_json::to_vec(&names.name(i)).expect("strings serialise");
                        k.push(b':');
                        k
                    })
                    .collect();
            }
            Format::Csv => {
                let header: Vec<String> = (0..cols)
                    .map(|i| csv_quote(&names.name(i)).into_owned())
                    .collect();
                writeln!(sink, "{}", header.join(","))?;
            }
            Format::Npy => sink.write_all(&npy_header(0, cols))?,
        }
        Ok(FrameWriter {
            path: path.to_path_buf(),
            format,
            sink,
            cols,
            rows: 0,
            keys,
            line: Vec::new(),
        })
    }

    /// Appends one frame. Its values must be one per feature and finite.
    pub fn write(&mut self, frame: &Frame) -> anyhow::Result<()> {
        let values = &frame.values;
        if values.len() != self.cols {
            bail!(
                "{}: frame has {} values, the file has {} features",
                self.path.display(),
                values.len(),
                self.cols
            );
        }
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            bail!(
                "{}: feature {i} is {}, which the file formats cannot carry",
                self.path.display(),
                values[i]
            );
        }
        let line = &mut self.line;
        line.clear();
        match self.format {
            Format::Jsonl => {
                line.extend_from_slice(b"{\"data\":{");
                for (i, (key, v)) in self.keys.iter().zip(values).enumerate() {
                    if i > 0 {
                        line.push(b',');
                    }
                    line.extend_from_slice(key);
                    // Display prints the shortest text that reads back as the same f32.
                    write!(line, "{v}")?;
                }
                line.push(b'}');
                if let Some(id) = &frame.meta.id {
                    line.extend_from_slice(b",\"id\":");
                    serde_json::to_writer(&mut *line, id)?;
                }
                if let Some(ms) = frame.meta.event_ms {
                    write!(line, ",\"timestamp\":{ms}")?;
                }
                line.extend_from_slice(b"}\n");
            }
            Format::Csv => {
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        line.push(b',');
                    }
                    write!(line, "{v}")?;
                }
                line.push(b'\n');
            }
            Format::Npy => {
                line.reserve(values.len() * 4);
                for v in values {
                    line.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
        self.sink
            .write_all(line)
            .with_context(|| format!("cannot write {}", self.path.display()))?;
        self.rows += 1;
        Ok(())
    }

    /// Number of frames written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Flushes everything and completes the file (gzip trailer, NPY row count).
    pub fn finish(self) -> anyhow::Result<()> {
        let path = self.path.display().to_string();
        let finish = || -> io::Result<()> {
            match self.sink {
                Sink::Gz(gz) => gz.finish()?.flush(),
                Sink::Plain(w) => {
                    let mut file = w.into_inner().map_err(|e| e.into_error())?;
                    if self.format == Format::Npy {
                        file.seek(SeekFrom::Start(0))?;
                        file.write_all(&npy_header(self.rows, self.cols))?;
                    }
                    file.flush()
                }
            }
        };
        finish().with_context(|| format!("cannot finish {path}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_come_from_the_extension() {
        let f = |p: &str| format_of(Path::new(p)).ok();
        assert_eq!(f("a.jsonl"), Some((Format::Jsonl, false)));
        assert_eq!(f("dir.x/A.JSONL.GZ"), Some((Format::Jsonl, true)));
        assert_eq!(f("a.json"), Some((Format::Jsonl, false)));
        assert_eq!(f("a.csv"), Some((Format::Csv, false)));
        assert_eq!(f("P-1.npy.gz"), Some((Format::Npy, true)));
        assert_eq!(f("a.txt"), None);
        assert_eq!(f("npy"), None);
    }

    #[test]
    fn csv_fields_handle_quotes() {
        let f = csv_fields(r#"a,"b,c","say ""hi""",,d"#).unwrap();
        assert_eq!(f, ["a", "b,c", "say \"hi\"", "", "d"]);
        assert_eq!(csv_fields("x\r\n").unwrap(), ["x"]);
        assert!(csv_fields(r#""open"#).is_err());
        assert!(csv_fields(r#""a"b"#).is_err());
        assert_eq!(csv_quote("a,b"), "\"a,b\"");
    }

    /// A mapped plain file hands out the same records as one read line by line: the same
    /// seqs, line numbers (blank and whitespace-only lines counted, not handed out) and
    /// bytes, line endings included, and a last line without one.
    #[test]
    fn mapped_lines_are_the_lines_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.jsonl");
        std::fs::write(
            &path,
            "{\"a\":1}\r\n\n \t \n{\"b\":2}\nnot json\n\n{\"c\":3}",
        )
        .unwrap();
        let map = map_file(&path).unwrap().expect("a plain file is mapped");
        let mapped = Mutex::new(MappedLines {
            map: Arc::clone(&map),
            pos: 0,
            line: 0,
            records: 0,
        });
        let mut got = Vec::new();
        while let Some((seq, line, at)) = MappedLines::next(&mapped) {
            got.push((seq, line, map[at].to_vec()));
        }
        let read = Lines::shared(open_reader(&path, false).unwrap(), 0);
        let (mut want, mut buf) = (Vec::new(), Vec::new());
        while let Record::Line { seq, line } = Lines::next(&read, &mut buf) {
            want.push((seq, line, buf.clone()));
        }
        assert_eq!(got, want);
        assert_eq!(got.len(), 4);
        assert_eq!((got[3].1, &got[3].2[..]), (7, &b"{\"c\":3}"[..]));
        let empty = dir.path().join("empty.jsonl");
        std::fs::write(&empty, "").unwrap();
        assert!(
            map_file(&empty).unwrap().is_none(),
            "an empty file is read, not mapped"
        );
    }

    /// `bench --input`'s records: non-blank lines as written, without their line ending,
    /// numbered by line; `limit` takes the first ones; other formats are refused by name.
    #[test]
    fn jsonl_records_are_the_lines_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        std::fs::write(&path, "{\"a\":1}\r\n\n  \n{\"b\":2}\nnot json\n").unwrap();
        let records = jsonl_records(&path, None).unwrap();
        let got: Vec<(usize, &[u8])> = records.iter().map(|r| (r.line, &r.body[..])).collect();
        assert_eq!(
            got,
            [
                (1, &b"{\"a\":1}"[..]),
                (4, &b"{\"b\":2}"[..]),
                (5, &b"not json"[..])
            ]
        );
        assert_eq!(jsonl_records(&path, Some(2)).unwrap().len(), 2);

        let gz = dir.path().join("r.jsonl.gz");
        let mut w = flate2::write::GzEncoder::new(
            File::create(&gz).unwrap(),
            flate2::Compression::default(),
        );
        w.write_all(b"{\"a\":1}\n").unwrap();
        w.finish().unwrap();
        assert_eq!(jsonl_records(&gz, None).unwrap()[0].body, b"{\"a\":1}");

        for (name, kind) in [("r.csv", "CSV"), ("r.npy", "NPY")] {
            let p = dir.path().join(name);
            std::fs::write(&p, "x\n").unwrap();
            let e = jsonl_records(&p, None).unwrap_err().to_string();
            assert!(e.contains("only JSONL") && e.contains(kind), "{e}");
        }
        let e = jsonl_records(dir.path(), None).unwrap_err().to_string();
        assert!(e.contains("a directory"), "{e}");
    }

    #[test]
    fn npy_header_is_aligned_and_fits_any_row_count() {
        for rows in [0, u64::MAX] {
            let h = npy_header(rows, 25_000);
            assert_eq!(h.len(), NPY_HEADER_LEN);
            assert_eq!(h.len() % 64, 0);
            assert_eq!(h.last(), Some(&b'\n'));
            assert!(std::str::from_utf8(&h[10..])
                .unwrap()
                .contains(&format!("({rows}, 25000)")));
        }
    }
}
