//! Decoding one frame of the seed's JSON (`{"data": {"feature_0": 0.82, ...}}`, optionally
//! gzip-compressed) into model feature order.
//!
//! Values are placed by feature NAME, never by their position in the object: the seed
//! re-ordered features by dictionary iteration order, which silently scored feature i with
//! feature j's model. The decoder streams the object with serde and writes each value
//! straight into the output vector, so a 25,000-key frame builds no map of strings.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::io::Read;
use std::time::{SystemTime, UNIX_EPOCH};

use libdeflater::Decompressor;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::model::FeatureIndex;

mod depth;
mod plain;

pub use depth::MAX_DEPTH;

/// At most this many feature names are quoted in an unknown/missing-features error;
/// the count says how many there were in all.
const NAMES_SHOWN: usize = 10;

/// Why a frame could not be decoded. Every message names the problem (and the key, where
/// there is one) so that a client can fix its request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// The body starts like gzip (`1f 8b`) but does not inflate.
    #[error("body looks like gzip but does not inflate: {0}")]
    BadGzip(String),
    /// The gzip body inflates past the decompressed size limit.
    #[error("gzip body inflates to more than {limit} bytes")]
    TooLarge {
        /// The decompressed size limit in bytes.
        limit: usize,
    },
    /// The body is empty (or only whitespace).
    #[error("empty body")]
    Empty,
    /// The body is not valid JSON.
    #[error("invalid JSON: {0}")]
    BadJson(String),
    /// Arrays and objects nest deeper than [`MAX_DEPTH`]: refused before parsing, because
    /// the parser recurses once per level and a deep enough body would overflow its stack.
    #[error("JSON nests {depth} levels deep; at most {limit} are allowed")]
    TooDeep {
        /// The deepest nesting in the body.
        depth: usize,
        /// The limit ([`MAX_DEPTH`]).
        limit: usize,
    },
    /// The body is JSON but not an object.
    #[error("expected a JSON object, found {found}")]
    NotAnObject {
        /// What the body is instead ("an array", "a string", ...).
        found: &'static str,
    },
    /// The object has no `"data"` key.
    #[error("no \"data\" object")]
    NoData,
    /// `"data"` is not an object.
    #[error("\"data\" must be an object, found {found}")]
    DataNotObject {
        /// What `"data"` is instead.
        found: &'static str,
    },
    /// A feature's value is not a JSON number.
    #[error("feature {key:?}: value is {found}, not a number")]
    NotANumber {
        /// The feature name.
        key: String,
        /// What the value is instead (for a string, the string itself).
        found: String,
    },
    /// A feature's value is a number that does not fit a finite f32.
    #[error("feature {key:?}: value {value} is not a finite 32-bit float")]
    NotFinite {
        /// The feature name.
        key: String,
        /// The value as parsed.
        value: f64,
    },
    /// Keys under `"data"` that name no model feature (under [`UnknownKeys::Reject`]).
    #[error("{count} unknown feature name(s): {}", quote_names(names, *count))]
    UnknownFeatures {
        /// The first few unknown names, in the order they appeared.
        names: Vec<String>,
        /// How many unknown names there were in all.
        count: usize,
    },
    /// Model features absent from `"data"` (under [`MissingKeys::Reject`]).
    #[error("{count} feature(s) missing: {}", quote_names(names, *count))]
    MissingFeatures {
        /// The first few missing names, in model order.
        names: Vec<String>,
        /// How many features were missing in all.
        count: usize,
    },
    /// The same key appears twice.
    #[error("key {key:?} appears more than once")]
    DuplicateKey {
        /// The repeated key (a feature name, or `data`/`id`/`timestamp`).
        key: String,
    },
    /// `"timestamp"` is neither an ISO 8601 string nor epoch milliseconds.
    #[error("timestamp {found}: {reason}")]
    BadTimestamp {
        /// The value as given.
        found: String,
        /// Why it was not understood.
        reason: String,
    },
    /// `"id"` is neither a string nor a number.
    #[error("\"id\" must be a string or a number, found {found}")]
    BadId {
        /// What the id is instead.
        found: &'static str,
    },
    /// A machine record that lacks a field or has one of the wrong kind.
    #[error("machine record: {0}")]
    BadRecord(String),
    /// An entity key (`"entity"`, `"machine_id"`, `"source_id"`, `"channel"`) is neither a
    /// string nor a number.
    #[error("{key:?} must be a string or a number, found {found}")]
    BadEntity {
        /// The key.
        key: &'static str,
        /// What its value is instead.
        found: &'static str,
    },
}

impl DecodeError {
    /// A short, stable reason for metrics labels and status-code mapping.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::BadGzip(_) => "bad_gzip",
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::Empty => "empty",
            DecodeError::BadJson(_) => "bad_json",
            DecodeError::TooDeep { .. } => "too_deep",
            DecodeError::NotAnObject { .. } => "not_an_object",
            DecodeError::NoData | DecodeError::DataNotObject { .. } => "no_data",
            DecodeError::NotANumber { .. } => "not_a_number",
            DecodeError::NotFinite { .. } => "not_finite",
            DecodeError::UnknownFeatures { .. } => "unknown_features",
            DecodeError::MissingFeatures { .. } => "missing_features",
            DecodeError::DuplicateKey { .. } => "duplicate_key",
            DecodeError::BadTimestamp { .. } => "bad_timestamp",
            DecodeError::BadId { .. } => "bad_id",
            DecodeError::BadEntity { .. } => "bad_entity",
            DecodeError::BadRecord(_) => "bad_record",
        }
    }
}

/// A name quoted in an error is cut to this many characters: the names come from the
/// client, and a megabyte-long key must not come back as a megabyte-long answer.
const NAME_CHARS_SHOWN: usize = 64;

fn quote_names(names: &[String], count: usize) -> String {
    let mut s = names
        .iter()
        .map(|n| match n.char_indices().nth(NAME_CHARS_SHOWN) {
            Some((cut, _)) => format!("{:?}... ({} bytes)", &n[..cut], n.len()),
            None => format!("{n:?}"),
        })
        .collect::<Vec<_>>()
        .join(", ");
    if count > names.len() {
        s.push_str(&format!(" and {} more", count - names.len()));
    }
    s
}

/// Inflates `bytes` if they start with the gzip magic (`1f 8b`), whatever the headers
/// said (the seed's client sends gzip with no `Content-Encoding`); other bytes are
/// returned as they are.
///
/// A body that inflates past `max_inflated` bytes is refused with
/// [`DecodeError::TooLarge`] after at most the limit's worth of work, so a small body
/// that inflates to gigabytes costs little.
///
/// Allocates the inflated body; [`inflate_if_gzip_into`] reuses a caller's buffer.
pub fn inflate_if_gzip(bytes: &[u8], max_inflated: usize) -> Result<Cow<'_, [u8]>, DecodeError> {
    if !is_gzip(bytes) {
        return Ok(Cow::Borrowed(bytes));
    }
    let mut out = Vec::new();
    inflate_gzip(bytes, max_inflated, &mut out)?;
    Ok(Cow::Owned(out))
}

/// Calls `f` with the body inflated (if it is gzip) into a buffer this thread keeps from
/// frame to frame, so that a decoder thread allocates no inflate buffer per frame.
pub fn with_inflated<R>(
    bytes: &[u8],
    max_inflated: usize,
    f: impl FnOnce(&[u8]) -> R,
) -> Result<R, DecodeError> {
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        let json = inflate_if_gzip_into(bytes, max_inflated, &mut buf)?;
        Ok(f(json))
    })
}

/// Inflates (if gzip) and decodes one frame into `values`: [`with_inflated`] and
/// [`decode_frame`], as HTTP ingest and `bench` do for every frame.
pub fn decode_body(
    bytes: &[u8],
    max_inflated: usize,
    index: &FeatureIndex,
    policy: KeyPolicy,
    values: &mut Vec<f32>,
) -> Result<Decoded, DecodeError> {
    with_inflated(bytes, max_inflated, |json| {
        decode_frame(json, index, policy, values)
    })?
}

/// [`inflate_if_gzip`] into `buf`, whose allocation is reused from frame to frame: gzip
/// bodies are inflated into `buf` (replacing what it held), other bodies are returned
/// as they are and `buf` is left alone. On error `buf` holds garbage.
pub fn inflate_if_gzip_into<'a>(
    bytes: &'a [u8],
    max_inflated: usize,
    buf: &'a mut Vec<u8>,
) -> Result<&'a [u8], DecodeError> {
    if !is_gzip(bytes) {
        return Ok(bytes);
    }
    inflate_gzip(bytes, max_inflated, buf)?;
    Ok(buf)
}

fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x1f, 0x8b])
}

/// The smallest gzip member: a 10-byte header, an empty DEFLATE block, an 8-byte trailer.
const GZIP_MIN_LEN: usize = 20;

/// DEFLATE's largest expansion: a 258-byte match coded in 2 bits is at most 1032:1. A
/// trailer that claims more than this for its body did not come from a compressor.
const DEFLATE_MAX_RATIO: usize = 1032;

thread_local! {
    // A decompressor holds ~10 KB of tables: allocating one per frame is wasted work.
    static LIBDEFLATE: RefCell<Decompressor> = RefCell::new(Decompressor::new());
}

/// Inflates the gzip `bytes` into `out` (replacing its contents).
///
/// libdeflate inflates in one call (over twice as fast as flate2 here), but it needs the
/// output size up front and inflates only the first gzip member. The size comes from the
/// last member's trailer (ISIZE, the size mod 2^32); whenever that hint or libdeflate's
/// answer leaves any doubt (several members, a lying or truncated trailer, a body over
/// 4 GiB, corrupt data) the body is inflated again by flate2's streaming decoder, which
/// decides the result and the error as before libdeflate was added.
fn inflate_gzip(bytes: &[u8], max_inflated: usize, out: &mut Vec<u8>) -> Result<(), DecodeError> {
    if bytes.len() >= GZIP_MIN_LEN {
        let trailer: [u8; 4] = bytes[bytes.len() - 4..].try_into().expect("4 bytes");
        let hint = u32::from_le_bytes(trailer) as usize;
        // A hint no compressor could have written (a truncated body ends in arbitrary
        // bytes) is left to flate2: its error says the body is corrupt rather than too
        // large, and a tiny body cannot make us zero a buffer of the limit's size.
        if hint <= bytes.len().saturating_mul(DEFLATE_MAX_RATIO) {
            if hint > max_inflated {
                // A bomb is refused before any work.
                return Err(DecodeError::TooLarge {
                    limit: max_inflated,
                });
            }
            if inflate_one_member(bytes, hint, out) {
                return Ok(());
            }
        }
    }
    inflate_streaming(bytes, max_inflated, out)
}

/// libdeflate's attempt: true when `bytes` is exactly one gzip member that inflates to
/// `size` bytes, now in `out`; false (with `out` holding garbage) when flate2 must decide.
fn inflate_one_member(bytes: &[u8], size: usize, out: &mut Vec<u8>) -> bool {
    // libdeflate writes through `&mut [u8]`, so the buffer must be initialised; growing
    // only (never clearing) leaves a reused buffer with nothing to zero.
    if out.len() < size {
        out.resize(size, 0);
    }
    let inflated = LIBDEFLATE.with_borrow_mut(|d| d.gzip_decompress(bytes, &mut out[..size]));
    // libdeflate checked the first member's CRC and ISIZE, but it ignores whatever
    // follows that member, where flate2 inflates further members or rejects garbage.
    if inflated != Ok(size) || !is_sole_member(bytes, &out[..size]) {
        return false;
    }
    out.truncate(size);
    true
}

/// Whether the first gzip member of `bytes`, which libdeflate inflated to `inflated`,
/// ends where `bytes` does.
///
/// That member ends with the trailer `CRC32(inflated) ++ len(inflated)` (little-endian).
/// If `bytes` ends with those 8 bytes and they occur nowhere earlier, the member's own
/// trailer can only be the one at the end. libdeflate does not report how much input it
/// consumed (its `_ex` functions do, but the `libdeflater` wrapper does not expose them),
/// hence this check: a CRC over the output and one scan of the input, both small next to
/// inflating.
fn is_sole_member(bytes: &[u8], inflated: &[u8]) -> bool {
    let mut trailer = [0u8; 8];
    trailer[..4].copy_from_slice(&libdeflater::crc32(inflated).to_le_bytes());
    trailer[4..].copy_from_slice(&(inflated.len() as u32).to_le_bytes());
    // An earlier copy of the trailer may overlap the one at the end, so the search covers
    // everything but the last byte.
    bytes.ends_with(&trailer) && !contains_8(&bytes[..bytes.len() - 1], &trailer)
}

/// Whether `needle` occurs in `hay`.
///
/// A naive window-by-window compare costs about a cycle per byte; filtering on the first
/// two bytes in fixed-size blocks lets the compiler vectorise the common case (no
/// candidate in the block). The crate has no substring-search dependency to do this.
fn contains_8(hay: &[u8], needle: &[u8; 8]) -> bool {
    const BLOCK: usize = 64;
    let Some(last_start) = hay.len().checked_sub(needle.len()) else {
        return false;
    };
    let (b0, b1) = (needle[0], needle[1]);
    let mut start = 0;
    while start <= last_start {
        let end = (start + BLOCK).min(last_start + 1);
        let candidate = hay[start..end]
            .iter()
            .zip(&hay[start + 1..end + 1])
            .fold(false, |any, (&a, &b)| any | ((a == b0) & (b == b1)));
        if candidate && (start..end).any(|i| hay[i..i + needle.len()] == needle[..]) {
            return true;
        }
        start = end;
    }
    false
}

/// flate2's streaming inflate, for what libdeflate leaves undecided: inflates every
/// member and stops reading at `max_inflated` bytes.
fn inflate_streaming(
    bytes: &[u8],
    max_inflated: usize,
    out: &mut Vec<u8>,
) -> Result<(), DecodeError> {
    out.clear();
    // Frames compress about 3:1; guessing the size saves most reallocations.
    out.reserve(bytes.len().saturating_mul(3).min(max_inflated));
    // One byte past the limit tells "exactly at the limit" from "over it".
    let mut reader = flate2::read::MultiGzDecoder::new(bytes).take(max_inflated as u64 + 1);
    reader
        .read_to_end(out)
        .map_err(|e| DecodeError::BadGzip(e.to_string()))?;
    if out.len() > max_inflated {
        return Err(DecodeError::TooLarge {
            limit: max_inflated,
        });
    }
    Ok(())
}

/// What to do with keys under `"data"` that name no model feature.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum UnknownKeys {
    /// Reject the frame, naming the keys.
    #[default]
    Reject,
    /// Skip them.
    Ignore,
}

/// What to do when model features are absent from `"data"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum MissingKeys {
    /// Reject the frame, naming the features.
    #[default]
    Reject,
    /// Score them as 0.
    Zero,
}

/// How strictly frame keys must match the model's features. The default rejects both
/// unknown and missing features: a frame that does not match the model is more likely a
/// client bug than something to score.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyPolicy {
    /// Keys that name no model feature.
    pub unknown: UnknownKeys,
    /// Model features absent from the frame.
    pub missing: MissingKeys,
    /// What a body holds: a frame of named features, or a machine record.
    pub body: BodyKind,
}

/// What one body (a request, a message, a line) holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BodyKind {
    /// The client's frame: `{"data": {name: value, ...}, ...}`.
    #[default]
    Frame,
    /// Seed 002's machine record (`machine_id`, `type`, five sensor values; see
    /// [`crate::machines::record::MachineRecord::from_json`]), for `--dataflow machines`:
    /// its values are the record's frame fields.
    MachineRecord,
}

/// The fields of a frame other than its values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decoded {
    /// The client's frame id (`"id"`); a numeric id becomes its decimal text.
    pub id: Option<String>,
    /// The event time (`"timestamp"`) in Unix milliseconds.
    pub event_ms: Option<i64>,
    /// The entity the frame observes: the first of [`ENTITY_KEYS`] the frame gives (a
    /// numeric one becomes its decimal text).
    pub entity: Option<String>,
    /// A machine record's machine id ([`BodyKind::MachineRecord`] only).
    pub machine_id: Option<String>,
}

/// Top-level keys that name a frame's entity, the first one present winning: seeds 002
/// and 004 say `machine_id` and `source_id`, SMAP replays say `channel`.
pub const ENTITY_KEYS: [&str; 4] = ["entity", "machine_id", "source_id", "channel"];

/// The entity of a frame, from its values under each of [`ENTITY_KEYS`] (in that order).
fn first_entity(found: [Option<String>; 4]) -> Option<String> {
    found.into_iter().flatten().next()
}

/// Decodes one frame into `values` (resized to `index.len()`, model order).
///
/// Keys outside `"data"` other than `"id"`, `"timestamp"` and [`ENTITY_KEYS`] are
/// ignored, so clients may add fields. On error `values` holds garbage.
pub fn decode_frame(
    json: &[u8],
    index: &FeatureIndex,
    policy: KeyPolicy,
    values: &mut Vec<f32>,
) -> Result<Decoded, DecodeError> {
    start(json, index, values)?;
    if policy.body == BodyKind::MachineRecord {
        return decode_record(json, values);
    }
    if let Some(decoded) = plain::decode_plain(json, index, values) {
        return Ok(decoded);
    }
    // The plain shape's path gave up somewhere; the serde path decides from the start.
    values.fill(f32::NAN);
    decode_with_serde(json, index, policy, values)
}

/// [`decode_frame`] without the fast path for the client's plain frames: the decoder the
/// fast path must agree with, byte for byte, on every input. For fuzzing and tests.
#[doc(hidden)]
pub fn decode_frame_general(
    json: &[u8],
    index: &FeatureIndex,
    policy: KeyPolicy,
    values: &mut Vec<f32>,
) -> Result<Decoded, DecodeError> {
    start(json, index, values)?;
    decode_with_serde(json, index, policy, values)
}

/// Refuses an empty body and fills `values` with one NaN per feature: NaN marks "not seen
/// yet" (accepted values are finite), which finds duplicates and missing features without
/// a second buffer.
fn start(json: &[u8], index: &FeatureIndex, values: &mut Vec<f32>) -> Result<(), DecodeError> {
    if json.iter().all(u8::is_ascii_whitespace) {
        return Err(DecodeError::Empty);
    }
    values.clear();
    values.resize(index.len(), f32::NAN);
    Ok(())
}

/// A machine record: its frame's values, id, timestamp and machine id.
fn decode_record(json: &[u8], values: &mut Vec<f32>) -> Result<Decoded, DecodeError> {
    depth::check(json, MAX_DEPTH).map_err(|depth| DecodeError::TooDeep {
        depth,
        limit: MAX_DEPTH,
    })?;
    let v: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| DecodeError::BadJson(e.to_string()))?;
    let event_ms = match v.get("timestamp") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(t)) => Some(parse_timestamp(t)?),
        Some(serde_json::Value::Number(n)) => Some(parse_timestamp(&n.to_string())?),
        Some(other) => {
            return Err(DecodeError::BadTimestamp {
                found: other.to_string(),
                reason: "expected an ISO 8601 string or epoch milliseconds".into(),
            })
        }
    };
    let record =
        crate::machines::record::MachineRecord::from_json(&v).map_err(DecodeError::BadRecord)?;
    let frame = record.into_frame(crate::types::FrameMeta::default());
    values.clear();
    values.extend_from_slice(&frame.values);
    Ok(Decoded {
        id: frame.meta.id,
        event_ms,
        entity: None,
        machine_id: frame.meta.machine_id,
    })
}

/// The full decoder: any JSON, every error with its message. `values` holds
/// `index.len()` NaNs on entry.
fn decode_with_serde(
    json: &[u8],
    index: &FeatureIndex,
    policy: KeyPolicy,
    values: &mut [f32],
) -> Result<Decoded, DecodeError> {
    depth::check(json, MAX_DEPTH).map_err(|depth| DecodeError::TooDeep {
        depth,
        limit: MAX_DEPTH,
    })?;
    let mut failure = None;
    // With the same seed, sonic-rs decodes a 25,000-feature frame in about three quarters
    // of serde_json's time, on baseline x86_64 too (it vectorises with SSE2 there).
    let mut de = sonic_rs::Deserializer::from_slice(json);
    let top = TopSeed {
        index,
        policy,
        values,
        failure: &mut failure,
    };
    let outcome = top.deserialize(&mut de).and_then(|d| de.end().map(|()| d));
    let decoded = match outcome {
        Ok(decoded) => decoded,
        // Our visitors park the precise error in `failure` and hand serde a placeholder.
        Err(e) => return Err(failure.unwrap_or_else(|| DecodeError::BadJson(e.to_string()))),
    };
    let missing = values.iter().filter(|v| v.is_nan()).count();
    if missing > 0 {
        match policy.missing {
            MissingKeys::Zero => values
                .iter_mut()
                .filter(|v| v.is_nan())
                .for_each(|v| *v = 0.0),
            MissingKeys::Reject => {
                let names = (0..values.len())
                    .filter(|&i| values[i].is_nan())
                    .take(NAMES_SHOWN)
                    .map(|i| index.name(i))
                    .collect();
                return Err(DecodeError::MissingFeatures {
                    names,
                    count: missing,
                });
            }
        }
    }
    Ok(decoded)
}

/// Parses a timestamp given as text: ISO 8601 / RFC 3339 (`2026-11-23T10:00:00.123Z`,
/// also with a `+09:00`-style offset or no zone, taken as UTC), or epoch milliseconds.
pub fn parse_timestamp(s: &str) -> Result<i64, DecodeError> {
    let bad = |reason: &str| DecodeError::BadTimestamp {
        found: format!("{s:?}"),
        reason: reason.to_string(),
    };
    let s_trim = s.trim();
    if let Ok(ms) = s_trim.parse::<i64>() {
        return in_alert_range(ms).ok_or_else(|| bad(OUT_OF_RANGE));
    }
    // humantime understands UTC only; apply a numeric offset ourselves.
    let (body, offset_s) = split_offset(s_trim);
    let t = humantime::parse_rfc3339_weak(body)
        .map_err(|e| bad(&format!("not ISO 8601 or epoch milliseconds ({e})")))?;
    let ms = system_time_ms(t).ok_or_else(|| bad(OUT_OF_RANGE))?;
    in_alert_range(ms - offset_s * 1000).ok_or_else(|| bad(OUT_OF_RANGE))
}

/// Latest event time accepted: 9999-12-31T23:59:59.999Z.
const MAX_EVENT_MS: i64 = 253_402_300_799_999;
const OUT_OF_RANGE: &str = "outside 1970-01-01 .. 9999-12-31";

/// Alerts print event times as ISO 8601, which covers 1970 to 9999 only: a time outside
/// is refused here, where the client can be told, not when an alert is built.
fn in_alert_range(ms: i64) -> Option<i64> {
    (0..=MAX_EVENT_MS).contains(&ms).then_some(ms)
}

/// Splits a trailing `+HH:MM` / `-HH:MM` off an RFC 3339 timestamp; `+00:00` is left for
/// humantime, which knows it.
fn split_offset(s: &str) -> (&str, i64) {
    let b = s.as_bytes();
    let n = b.len();
    // The date part has '-' too, so look only past `YYYY-MM-DDTHH:MM`.
    if n < 22 || !(b[n - 6] == b'+' || b[n - 6] == b'-') || b[n - 3] != b':' {
        return (s, 0);
    }
    let (Ok(h), Ok(m)) = (s[n - 5..n - 3].parse::<i64>(), s[n - 2..].parse::<i64>()) else {
        return (s, 0);
    };
    let sign = if b[n - 6] == b'-' { -1 } else { 1 };
    (&s[..n - 6], sign * (h * 3600 + m * 60))
}

fn system_time_ms(t: SystemTime) -> Option<i64> {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).ok(),
        Err(e) => i64::try_from(e.duration().as_millis()).ok().map(|ms| -ms),
    }
}

fn timestamp_from_number(n: &serde_json::Number) -> Result<i64, DecodeError> {
    let ms = match (n.as_i64(), n.as_f64()) {
        (Some(ms), _) => Some(ms),
        // Fractional milliseconds are below anything we measure.
        (None, Some(f)) if f.is_finite() && f.abs() < 9.0e15 => Some(f.floor() as i64),
        _ => None,
    };
    ms.and_then(in_alert_range)
        .ok_or_else(|| DecodeError::BadTimestamp {
            found: n.to_string(),
            reason: format!("epoch milliseconds {OUT_OF_RANGE}"),
        })
}

/// Stores the precise error and returns the placeholder serde needs to unwind.
fn fail<E: de::Error>(slot: &mut Option<DecodeError>, e: DecodeError) -> E {
    *slot = Some(e);
    E::custom("decode failure")
}

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Implements the `visit_*` methods of every JSON type but the object, each reporting
/// `$variant { found }` through `self.failure`.
macro_rules! reject_non_objects {
    ($variant:ident) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Err(fail(
                self.failure,
                DecodeError::$variant { found: "a boolean" },
            ))
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Err(fail(
                self.failure,
                DecodeError::$variant { found: "a number" },
            ))
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Err(fail(
                self.failure,
                DecodeError::$variant { found: "a number" },
            ))
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Err(fail(
                self.failure,
                DecodeError::$variant { found: "a number" },
            ))
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Err(fail(
                self.failure,
                DecodeError::$variant { found: "a string" },
            ))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Err(fail(self.failure, DecodeError::$variant { found: "null" }))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
            Err(fail(
                self.failure,
                DecodeError::$variant { found: "an array" },
            ))
        }
    };
}

/// The top-level object: `data`, `id`, `timestamp`, anything else skipped.
struct TopSeed<'a> {
    index: &'a FeatureIndex,
    policy: KeyPolicy,
    values: &'a mut [f32],
    failure: &'a mut Option<DecodeError>,
}

impl<'de> DeserializeSeed<'de> for TopSeed<'_> {
    type Value = Decoded;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Decoded, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TopSeed<'_> {
    type Value = Decoded;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object with a \"data\" object")
    }

    reject_non_objects!(NotAnObject);

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Decoded, A::Error> {
        let mut decoded = Decoded::default();
        let (mut seen_data, mut seen_id, mut seen_ts) = (false, false, false);
        let mut seen_entity = [false; 4];
        let mut entities: [Option<String>; 4] = Default::default();
        while let Some(key) = map.next_key_seed(TopKeySeed)? {
            let seen = match key {
                TopKey::Data => &mut seen_data,
                TopKey::Id => &mut seen_id,
                TopKey::Timestamp => &mut seen_ts,
                TopKey::Entity(i) => &mut seen_entity[i],
                TopKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            if std::mem::replace(seen, true) {
                let key = key.name().to_string();
                return Err(fail(self.failure, DecodeError::DuplicateKey { key }));
            }
            match key {
                TopKey::Data => map.next_value_seed(DataSeed {
                    index: self.index,
                    policy: self.policy,
                    values: &mut *self.values,
                    failure: &mut *self.failure,
                })?,
                TopKey::Id => {
                    decoded.id = match map.next_value::<serde_json::Value>()? {
                        serde_json::Value::Null => None,
                        serde_json::Value::String(s) => Some(s),
                        serde_json::Value::Number(n) => Some(n.to_string()),
                        other => {
                            let found = json_type(&other);
                            return Err(fail(self.failure, DecodeError::BadId { found }));
                        }
                    }
                }
                TopKey::Timestamp => {
                    let parsed = match map.next_value::<serde_json::Value>()? {
                        serde_json::Value::Null => Ok(None),
                        serde_json::Value::String(s) => parse_timestamp(&s).map(Some),
                        serde_json::Value::Number(n) => timestamp_from_number(&n).map(Some),
                        other => Err(DecodeError::BadTimestamp {
                            found: other.to_string(),
                            reason: "expected an ISO 8601 string or epoch milliseconds".into(),
                        }),
                    };
                    decoded.event_ms = parsed.map_err(|e| fail(self.failure, e))?;
                }
                TopKey::Entity(i) => {
                    entities[i] = match map.next_value::<serde_json::Value>()? {
                        serde_json::Value::Null => None,
                        serde_json::Value::String(s) => Some(s),
                        serde_json::Value::Number(n) => Some(n.to_string()),
                        other => {
                            let (key, found) = (ENTITY_KEYS[i], json_type(&other));
                            return Err(fail(self.failure, DecodeError::BadEntity { key, found }));
                        }
                    }
                }
                TopKey::Other => unreachable!("skipped above"),
            }
        }
        if !seen_data {
            return Err(fail(self.failure, DecodeError::NoData));
        }
        decoded.entity = first_entity(entities);
        Ok(decoded)
    }
}

#[derive(Clone, Copy)]
enum TopKey {
    Data,
    Id,
    Timestamp,
    /// One of [`ENTITY_KEYS`], by its index there.
    Entity(usize),
    Other,
}

impl TopKey {
    fn name(self) -> &'static str {
        match self {
            TopKey::Data => "data",
            TopKey::Id => "id",
            TopKey::Timestamp => "timestamp",
            TopKey::Entity(i) => ENTITY_KEYS[i],
            TopKey::Other => "",
        }
    }
}

struct TopKeySeed;

impl<'de> DeserializeSeed<'de> for TopKeySeed {
    type Value = TopKey;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<TopKey, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for TopKeySeed {
    type Value = TopKey;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<TopKey, E> {
        Ok(match key {
            "data" => TopKey::Data,
            "id" => TopKey::Id,
            "timestamp" => TopKey::Timestamp,
            _ => match ENTITY_KEYS.iter().position(|k| *k == key) {
                Some(i) => TopKey::Entity(i),
                None => TopKey::Other,
            },
        })
    }
}

/// The `"data"` object: each value goes straight to its model index.
struct DataSeed<'a> {
    index: &'a FeatureIndex,
    policy: KeyPolicy,
    values: &'a mut [f32],
    failure: &'a mut Option<DecodeError>,
}

impl<'de> DeserializeSeed<'de> for DataSeed<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for DataSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object of feature values")
    }

    reject_non_objects!(DataNotObject);

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut unknown_names = Vec::new();
        let mut unknown = 0usize;
        let mut position = 0usize;
        let mut name = self
            .index
            .pattern_parts()
            .and_then(|(prefix, suffix)| PositionName::new(prefix, suffix));
        while let Some(key) = map.next_key_seed(FeatureKeySeed {
            index: self.index,
            name: name.as_ref().map(PositionName::as_bytes),
            position,
        })? {
            position += 1;
            if let Some(name) = &mut name {
                name.advance();
            }
            let i = match key {
                FeatureKey::Known(i) => i,
                FeatureKey::Unknown(name) => {
                    map.next_value::<IgnoredAny>()?;
                    if self.policy.unknown == UnknownKeys::Reject {
                        unknown += 1;
                        if unknown_names.len() < NAMES_SHOWN {
                            unknown_names.push(name);
                        }
                    }
                    continue;
                }
            };
            if !self.values[i].is_nan() {
                let key = self.index.name(i);
                return Err(fail(self.failure, DecodeError::DuplicateKey { key }));
            }
            let number = map.next_value_seed(NumberSeed)?;
            self.values[i] = match number {
                Number::Finite(v) => v,
                Number::Infinite(value) => {
                    let key = self.index.name(i);
                    return Err(fail(self.failure, DecodeError::NotFinite { key, value }));
                }
                Number::Not(found) => {
                    let key = self.index.name(i);
                    return Err(fail(self.failure, DecodeError::NotANumber { key, found }));
                }
            };
        }
        if unknown > 0 {
            let e = DecodeError::UnknownFeatures {
                names: unknown_names,
                count: unknown,
            };
            return Err(fail(self.failure, e));
        }
        Ok(())
    }
}

enum FeatureKey {
    Known(usize),
    /// The name is kept only for the error message.
    Unknown(String),
}

/// Resolves a key to its model index; `position` is the key's place in the object, which
/// is the model index whenever the client sends keys in order (the seed's client does).
struct FeatureKeySeed<'a> {
    index: &'a FeatureIndex,
    /// The name the model's pattern gives feature `position`, if the model has a pattern.
    name: Option<&'a [u8]>,
    position: usize,
}

impl<'de> DeserializeSeed<'de> for FeatureKeySeed<'_> {
    type Value = FeatureKey;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<FeatureKey, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for FeatureKeySeed<'_> {
    type Value = FeatureKey;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a feature name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<FeatureKey, E> {
        if self.position < self.index.len() {
            let in_order = match self.name {
                Some(name) => key.as_bytes() == name,
                None => self.index.is_name_of(key, self.position),
            };
            if in_order {
                return Ok(FeatureKey::Known(self.position));
            }
        }
        Ok(match self.index.index_of(key) {
            Some(i) => FeatureKey::Known(i),
            None => FeatureKey::Unknown(key.to_string()),
        })
    }
}

/// The name a `prefix{i}suffix` pattern gives the feature at the current position, kept
/// as bytes and advanced in place. Checking that the key at position i names feature i is
/// then one comparison, where [`FeatureIndex::is_name_of`] strips the prefix and parses
/// the digits: this check runs for every key of every frame.
struct PositionName {
    bytes: [u8; PositionName::CAP],
    len: usize,
    /// Where the decimal digits start (the prefix's length).
    digits_at: usize,
    suffix_len: usize,
}

impl PositionName {
    /// Room for the 20 digits of any usize and a pattern of everyday length; a model with
    /// a longer pattern takes `is_name_of` instead.
    const CAP: usize = 64;

    /// The name of feature 0, or `None` if the pattern is too long to keep here.
    fn new(prefix: &str, suffix: &str) -> Option<Self> {
        let len = prefix.len() + 1 + suffix.len();
        if len + 19 > Self::CAP {
            return None;
        }
        let mut bytes = [0u8; Self::CAP];
        bytes[..prefix.len()].copy_from_slice(prefix.as_bytes());
        bytes[prefix.len()] = b'0';
        bytes[prefix.len() + 1..len].copy_from_slice(suffix.as_bytes());
        Some(PositionName {
            bytes,
            len,
            digits_at: prefix.len(),
            suffix_len: suffix.len(),
        })
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Whether `hay` starts with the name.
    #[inline]
    fn starts(&self, hay: &[u8]) -> bool {
        let n = self.len;
        if (8..=16).contains(&n) && hay.len() >= n {
            // Two overlapping 8-byte words cover every name of 8 to 16 bytes (the default
            // names, quoted, are 12 to 16): a memcmp call would cost more than the compare.
            let word =
                |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8"));
            return (word(hay, 0) == word(&self.bytes, 0))
                & (word(hay, n - 8) == word(&self.bytes, n - 8));
        }
        hay.starts_with(self.as_bytes())
    }

    /// Moves on to the next feature's name (a decimal increment of the digits).
    #[inline]
    fn advance(&mut self) {
        let last = self.len - self.suffix_len - 1;
        if self.bytes[last] < b'9' {
            // Nine increments in ten touch only the last digit.
            self.bytes[last] += 1;
            return;
        }
        self.carry();
    }

    fn carry(&mut self) {
        for at in (self.digits_at..self.len - self.suffix_len).rev() {
            if self.bytes[at] == b'9' {
                self.bytes[at] = b'0';
            } else {
                self.bytes[at] += 1;
                return;
            }
        }
        // All nines, now all zeros: "99" becomes "100". At most 20 digits (positions are
        // usize), which `new` left room for.
        self.bytes
            .copy_within(self.digits_at..self.len, self.digits_at + 1);
        self.bytes[self.digits_at] = b'1';
        self.len += 1;
    }
}

enum Number {
    Finite(f32),
    /// A JSON number too large for f32.
    Infinite(f64),
    /// Not a number; describes what it is instead.
    Not(String),
}

struct NumberSeed;

impl<'de> DeserializeSeed<'de> for NumberSeed {
    type Value = Number;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Number, D::Error> {
        d.deserialize_any(self)
    }
}

impl NumberSeed {
    fn of(v: f64) -> Number {
        let f = v as f32;
        if f.is_finite() {
            Number::Finite(f)
        } else {
            Number::Infinite(v)
        }
    }
}

impl<'de> Visitor<'de> for NumberSeed {
    type Value = Number;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number")
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Number, E> {
        Ok(NumberSeed::of(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Number, E> {
        Ok(NumberSeed::of(v as f64))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Number, E> {
        Ok(NumberSeed::of(v as f64))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Number, E> {
        // Quoting the string makes `"NaN"` (a common client bug) obvious in the message.
        let shown: String = v.chars().take(40).collect();
        Ok(Number::Not(format!("the string {shown:?}")))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Number, E> {
        Ok(Number::Not(format!("the boolean {v}")))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Number, E> {
        Ok(Number::Not("null".into()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Number, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Number::Not("an array".into()))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Number, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Number::Not("an object".into()))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn event_times_outside_iso_years_are_refused() {
        for bad in ["-1", "1970-01-01T00:00:00+09:00", "253402300800000"] {
            assert!(super::parse_timestamp(bad).is_err(), "{bad}");
        }
        let n: serde_json::Number = serde_json::from_str("1e15").unwrap();
        assert!(super::timestamp_from_number(&n).is_err());
        assert_eq!(super::parse_timestamp("0"), Ok(0));
    }

    use super::*;
    use crate::model::FeatureNames;
    use std::io::Write;

    fn frame_json(keys: &[usize], value: impl Fn(usize) -> String) -> String {
        let body: Vec<String> = keys
            .iter()
            .map(|&i| format!("\"feature_{i}\":{}", value(i)))
            .collect();
        format!("{{\"data\":{{{}}}}}", body.join(","))
    }

    /// A frame names its entity under any of the four keys, the first of `ENTITY_KEYS`
    /// winning; a number becomes its text; the fast path and the serde path agree, and a
    /// string entity keeps a frame on the fast path.
    #[test]
    fn entities_are_read_under_each_key() {
        let index = FeatureIndex::numbered(2);
        let data = r#""data":{"feature_0":1,"feature_1":2}"#;
        let cases = [
            (
                format!(r#"{{"entity":"pump-3",{data}}}"#),
                Some("pump-3"),
                true,
            ),
            (format!(r#"{{{data},"machine_id":"M1"}}"#), Some("M1"), true),
            (format!(r#"{{"source_id":"s",{data}}}"#), Some("s"), true),
            (
                format!(r#"{{"channel":"P-1",{data},"entity":"e"}}"#),
                Some("e"),
                true,
            ),
            (format!(r#"{{"channel":null,{data}}}"#), None, true),
            (
                format!(r#"{{"machine_id":14860,{data}}}"#),
                Some("14860"),
                false,
            ),
            (format!(r#"{{{data}}}"#), None, true),
        ];
        for (json, want, fast) in cases {
            let mut values = vec![f32::NAN; 2];
            let plain = plain::decode_plain(json.as_bytes(), &index, &mut values);
            assert_eq!(plain.is_some(), fast, "{json}: fast path");
            let mut values = Vec::new();
            let general =
                decode_frame_general(json.as_bytes(), &index, KeyPolicy::default(), &mut values)
                    .unwrap();
            assert_eq!(general.entity.as_deref(), want, "{json}");
            if let Some(p) = plain {
                assert_eq!(p, general, "{json}: the two paths differ");
            }
        }
        let bad = format!(r#"{{"channel":[1],{data}}}"#);
        let err = decode_frame(
            bad.as_bytes(),
            &index,
            KeyPolicy::default(),
            &mut Vec::new(),
        )
        .unwrap_err();
        assert_eq!(err.kind(), "bad_entity");
        assert!(err.to_string().contains("channel"), "{err}");
        let twice = format!(r#"{{"entity":"a","entity":"b",{data}}}"#);
        let err = decode_frame(
            twice.as_bytes(),
            &index,
            KeyPolicy::default(),
            &mut Vec::new(),
        )
        .unwrap_err();
        assert_eq!(err.kind(), "duplicate_key");
    }

    fn decode(json: &str, n: usize, policy: KeyPolicy) -> Result<(Decoded, Vec<f32>), DecodeError> {
        let mut values = Vec::new();
        let d = decode_frame(
            json.as_bytes(),
            &FeatureIndex::numbered(n),
            policy,
            &mut values,
        )?;
        Ok((d, values))
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn keys_are_placed_by_name_not_position() {
        let n = 50;
        let value = |i: usize| format!("{}", i as f32 / 100.0 + 0.001);
        let in_order: Vec<usize> = (0..n).collect();
        // A fixed permutation (i * 7 mod 50 covers 0..50 because gcd(7, 50) = 1).
        let shuffled: Vec<usize> = (0..n).map(|i| i * 7 % n).collect();
        let (_, a) = decode(&frame_json(&in_order, value), n, KeyPolicy::default()).unwrap();
        let (_, b) = decode(&frame_json(&shuffled, value), n, KeyPolicy::default()).unwrap();
        assert_eq!(a, b);
        assert_eq!(a[7], 0.071);
        assert_eq!(a.len(), n);
    }

    /// The stack and recursion audit: nesting is refused wherever it appears (also in
    /// `id` and `timestamp`, which are read as JSON values); a 40-digit number, 200,000
    /// unknown keys and a megabyte-long key are plain errors, not crashes.
    #[test]
    fn hostile_shapes_are_errors_not_crashes() {
        let deep = "[".repeat(50_000);
        for json in [
            format!(r#"{{"id":{deep}"#),
            format!(r#"{{"timestamp":{deep}"#),
            format!(r#"{{"data":{{"feature_0":{deep}"#),
            format!(r#"{{"x":{}"#, "{\"a\":".repeat(50_000)),
            deep.clone(),
        ] {
            let e = decode(&json, 2, KeyPolicy::default()).unwrap_err();
            assert_eq!(e.kind(), "too_deep", "{e}");
        }
        // 128 levels are still taken (the limit is inclusive)
        let at_limit = format!(
            r#"{{"x":{}1{},"data":{{"feature_0":1,"feature_1":2}}}}"#,
            "[".repeat(127),
            "]".repeat(127)
        );
        assert!(decode(&at_limit, 2, KeyPolicy::default()).is_ok());

        let forty = format!(
            r#"{{"data":{{"feature_0":{},"feature_1":2}}}}"#,
            "9".repeat(40)
        );
        let e = decode(&forty, 2, KeyPolicy::default()).unwrap_err();
        assert_eq!(e.kind(), "not_finite", "{e}");

        let many: Vec<String> = (0..200_000).map(|i| format!("\"k{i}\":{i}")).collect();
        let json = format!(
            r#"{{"data":{{"feature_0":1,"feature_1":2,{}}}}}"#,
            many.join(",")
        );
        match decode(&json, 2, KeyPolicy::default()).unwrap_err() {
            DecodeError::UnknownFeatures { names, count } => {
                assert_eq!((names.len(), count), (NAMES_SHOWN, 200_000));
            }
            e => panic!("{e}"),
        }

        let long_key = format!(r#"{{"data":{{"{}":1}}}}"#, "k".repeat(1 << 20));
        let e = decode(&long_key, 2, KeyPolicy::default()).unwrap_err();
        assert_eq!(e.kind(), "unknown_features");
        // the answer names the key without echoing a megabyte
        let text = e.to_string();
        assert!(
            text.len() < 200 && text.contains("(1048576 bytes)"),
            "{text}"
        );
    }

    #[test]
    fn list_names_resolve_out_of_order() {
        let names = FeatureNames::List(vec!["temp".into(), "rpm".into(), "load".into()]);
        let index = FeatureIndex::new(&names, 3).unwrap();
        let mut values = Vec::new();
        let json = br#"{"data":{"load":3,"temp":1,"rpm":2}}"#;
        decode_frame(json, &index, KeyPolicy::default(), &mut values).unwrap();
        assert_eq!(values, [1.0, 2.0, 3.0]);
    }

    #[test]
    fn id_and_timestamp_are_read_and_other_keys_ignored() {
        let json = r#"{"id":"f-9","timestamp":"2026-11-23T10:00:00.123Z","extra":[1,{}],
                       "data":{"feature_0":1,"feature_1":2}}"#;
        let (d, v) = decode(json, 2, KeyPolicy::default()).unwrap();
        assert_eq!(d.id.as_deref(), Some("f-9"));
        assert_eq!(d.event_ms, Some(1_795_428_000_123));
        assert_eq!(v, [1.0, 2.0]);

        let json = r#"{"id":42,"timestamp":1795428000123,"data":{"feature_0":1}}"#;
        let (d, _) = decode(json, 1, KeyPolicy::default()).unwrap();
        assert_eq!(d.id.as_deref(), Some("42"));
        assert_eq!(d.event_ms, Some(1_795_428_000_123));
    }

    #[test]
    fn timestamps_with_offsets_and_bad_ones() {
        assert_eq!(
            parse_timestamp("2026-11-23T19:00:00.123+09:00").unwrap(),
            parse_timestamp("2026-11-23T10:00:00.123Z").unwrap()
        );
        assert_eq!(parse_timestamp("1970-01-01T00:00:01").unwrap(), 1000);
        let json = r#"{"timestamp":"yesterday","data":{"feature_0":1}}"#;
        let e = decode(json, 1, KeyPolicy::default()).unwrap_err();
        assert_eq!(e.kind(), "bad_timestamp");
        assert!(e.to_string().contains("yesterday"), "{e}");
        let json = r#"{"timestamp":true,"data":{"feature_0":1}}"#;
        assert_eq!(
            decode(json, 1, KeyPolicy::default()).unwrap_err().kind(),
            "bad_timestamp"
        );
    }

    #[test]
    fn unknown_keys_are_named_or_ignored() {
        let keys = (0..15).map(|i| format!("\"junk_{i}\":1"));
        let json = format!(
            "{{\"data\":{{\"feature_0\":1,{}}}}}",
            keys.collect::<Vec<_>>().join(",")
        );
        let e = decode(&json, 1, KeyPolicy::default()).unwrap_err();
        assert_eq!(e.kind(), "unknown_features");
        let DecodeError::UnknownFeatures { names, count } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(*count, 15);
        assert_eq!(names.len(), 10);
        assert_eq!(names[0], "junk_0");
        let msg = e.to_string();
        assert!(
            msg.contains("\"junk_9\"") && msg.contains("and 5 more"),
            "{msg}"
        );
        // An index past the model's features is unknown too.
        let e = decode(
            r#"{"data":{"feature_0":1,"feature_1":2}}"#,
            1,
            KeyPolicy::default(),
        );
        assert_eq!(e.unwrap_err().kind(), "unknown_features");

        let policy = KeyPolicy {
            unknown: UnknownKeys::Ignore,
            ..KeyPolicy::default()
        };
        let (_, v) = decode(&json, 1, policy).unwrap();
        assert_eq!(v, [1.0]);
    }

    #[test]
    fn missing_keys_are_named_or_zeroed() {
        let json = frame_json(&[0, 2], |_| "0.5".into());
        let e = decode(&json, 4, KeyPolicy::default()).unwrap_err();
        assert_eq!(e.kind(), "missing_features");
        assert_eq!(
            e.to_string(),
            "2 feature(s) missing: \"feature_1\", \"feature_3\""
        );
        let policy = KeyPolicy {
            missing: MissingKeys::Zero,
            ..KeyPolicy::default()
        };
        let (_, v) = decode(&json, 4, policy).unwrap();
        assert_eq!(v, [0.5, 0.0, 0.5, 0.0]);
    }

    #[test]
    fn non_numbers_are_rejected_with_their_key() {
        let e = decode(
            r#"{"data":{"feature_0":1,"feature_1":"NaN"}}"#,
            2,
            KeyPolicy::default(),
        )
        .unwrap_err();
        assert_eq!(e.kind(), "not_a_number");
        assert_eq!(
            e.to_string(),
            "feature \"feature_1\": value is the string \"NaN\", not a number"
        );
        for bad in ["null", "true", "[1]", "{\"a\":1}"] {
            let json = format!("{{\"data\":{{\"feature_0\":{bad}}}}}");
            let e = decode(&json, 1, KeyPolicy::default()).unwrap_err();
            assert_eq!(e.kind(), "not_a_number", "{bad}");
            assert!(e.to_string().contains("feature_0"), "{e}");
        }
        let e = decode(r#"{"data":{"feature_0":1e39}}"#, 1, KeyPolicy::default()).unwrap_err();
        assert_eq!(e.kind(), "not_finite");
        assert!(e.to_string().contains("feature_0"), "{e}");
    }

    #[test]
    fn duplicate_keys_are_rejected() {
        let json = r#"{"data":{"feature_0":1,"feature_1":2,"feature_0":3}}"#;
        let e = decode(json, 2, KeyPolicy::default()).unwrap_err();
        assert_eq!(
            e,
            DecodeError::DuplicateKey {
                key: "feature_0".into()
            }
        );
        let json = r#"{"data":{"feature_0":1},"data":{"feature_0":1}}"#;
        assert_eq!(
            decode(json, 1, KeyPolicy::default()).unwrap_err().kind(),
            "duplicate_key"
        );
    }

    #[test]
    fn malformed_bodies_say_what_is_wrong() {
        let kind = |json: &str| decode(json, 1, KeyPolicy::default()).unwrap_err().kind();
        assert_eq!(kind(""), "empty");
        assert_eq!(kind("  \n"), "empty");
        assert_eq!(kind("{\"data\":"), "bad_json");
        assert_eq!(kind("not json"), "bad_json");
        assert_eq!(kind(r#"{"data":{"feature_0":1}} trailing"#), "bad_json");
        assert_eq!(kind("[1,2]"), "not_an_object");
        assert_eq!(kind("\"data\""), "not_an_object");
        assert_eq!(kind(r#"{"values":{}}"#), "no_data");
        let e = decode(r#"{"data":[0.1,0.2]}"#, 1, KeyPolicy::default()).unwrap_err();
        assert_eq!(e.to_string(), "\"data\" must be an object, found an array");
        assert_eq!(kind(r#"{"id":[1],"data":{"feature_0":1}}"#), "bad_id");
    }

    #[test]
    fn number_forms_parse() {
        let json = r#"{"data":{"feature_0":1.5e-7,"feature_1":0.8236497651340235,
                       "feature_2":0,"feature_3":-2,"feature_4":1E2}}"#;
        let (_, v) = decode(json, 5, KeyPolicy::default()).unwrap();
        assert_eq!(
            v,
            [1.5e-7, 0.823_649_765_134_023_5_f64 as f32, 0.0, -2.0, 100.0]
        );
    }

    #[test]
    fn escaped_keys_resolve() {
        let (_, v) = decode(r#"{"data":{"feature\u005f0":4}}"#, 1, KeyPolicy::default()).unwrap();
        assert_eq!(v, [4.0]);
    }

    #[test]
    fn gzip_round_trip_and_plain_passthrough() {
        let json = frame_json(&[0, 1, 2], |i| format!("0.{i}5"));
        let packed = gzip(json.as_bytes());
        let inflated = inflate_if_gzip(&packed, 1 << 20).unwrap();
        assert_eq!(&*inflated, json.as_bytes());
        let (_, v) = decode(
            std::str::from_utf8(&inflated).unwrap(),
            3,
            KeyPolicy::default(),
        )
        .unwrap();
        assert_eq!(v, [0.05, 0.15, 0.25]);
        assert!(matches!(
            inflate_if_gzip(json.as_bytes(), 1),
            Ok(Cow::Borrowed(_))
        ));
    }

    #[test]
    fn gzip_bomb_stops_at_the_limit() {
        let zeros = vec![0u8; 10 << 20];
        let packed = gzip(&zeros);
        assert!(packed.len() < 100_000);
        let e = inflate_if_gzip(&packed, 1 << 20).unwrap_err();
        assert_eq!(e, DecodeError::TooLarge { limit: 1 << 20 });
        assert_eq!(e.kind(), "too_large");
        assert_eq!(inflate_if_gzip(&packed, 10 << 20).unwrap().len(), 10 << 20);
    }

    /// What flate2 alone (the inflater before libdeflate) makes of `bytes`.
    fn flate2_only(bytes: &[u8], max: usize) -> Result<Vec<u8>, DecodeError> {
        let mut out = Vec::new();
        inflate_streaming(bytes, max, &mut out).map(|()| out)
    }

    #[test]
    fn several_gzip_members_inflate_whole() {
        let (a, b) = (frame_json(&[0, 1], |i| format!("0.{i}1")), " ".repeat(3000));
        let cases = [
            // The last member is smaller than the first: libdeflate runs out of room.
            [gzip(a.as_bytes()), gzip(b"  ")].concat(),
            // Larger: libdeflate inflates the first member and stops short of ISIZE.
            [gzip(b"  "), gzip(b.as_bytes())].concat(),
            // The same size, another CRC.
            [gzip(b"ab"), gzip(b"cd")].concat(),
            // Identical members: the first one's CRC and size match the trailer.
            [gzip(a.as_bytes()), gzip(a.as_bytes())].concat(),
            [gzip(a.as_bytes()), gzip(b""), gzip(a.as_bytes())].concat(),
        ];
        for packed in cases {
            let want = flate2_only(&packed, 1 << 20).unwrap();
            assert!(want.len() > 2);
            assert_eq!(&*inflate_if_gzip(&packed, 1 << 20).unwrap(), &want[..]);
            let mut buf = Vec::new();
            assert_eq!(
                inflate_if_gzip_into(&packed, 1 << 20, &mut buf).unwrap(),
                &want[..]
            );
        }
    }

    #[test]
    fn bytes_after_the_member_are_refused_as_before() {
        let json = frame_json(&[0, 1, 2], |i| format!("0.{i}5"));
        let packed = gzip(json.as_bytes());
        let trailer = packed[packed.len() - 8..].to_vec();
        let twice = [&trailer[..], &trailer[..]].concat();
        for junk in [&b"\0\0\0\0"[..], b"junk", &trailer, &twice] {
            let long = [&packed[..], junk].concat();
            let e = inflate_if_gzip(&long, 1 << 20).unwrap_err();
            assert_eq!(e, flate2_only(&long, 1 << 20).unwrap_err(), "{junk:?}");
            assert_eq!(e.kind(), "bad_gzip");
        }
    }

    #[test]
    fn a_lying_trailer_is_caught() {
        let json = frame_json(&[0, 1, 2], |i| format!("0.{i}5"));
        let packed = gzip(json.as_bytes());
        let n = packed.len();
        // Smaller, larger, and far larger than any compressor could have produced.
        for claimed in [10u32, json.len() as u32 + 1, 1 << 19, u32::MAX] {
            let mut lying = packed.clone();
            lying[n - 4..].copy_from_slice(&claimed.to_le_bytes());
            let e = inflate_if_gzip(&lying, 1 << 20).unwrap_err();
            assert_eq!(e, flate2_only(&lying, 1 << 20).unwrap_err(), "{claimed}");
            assert_eq!(e.kind(), "bad_gzip");
        }
        // A claim over the limit that a compressor could have made is refused unread.
        let mut lying = gzip(&vec![b' '; 1 << 20]);
        let n = lying.len();
        lying[n - 4..].copy_from_slice(&(2u32 << 20).to_le_bytes());
        assert_eq!(
            inflate_if_gzip(&lying, 1 << 20).unwrap_err(),
            DecodeError::TooLarge { limit: 1 << 20 }
        );
    }

    #[test]
    fn a_reused_buffer_holds_each_frame_exactly() {
        let big = frame_json(&(0..2000).collect::<Vec<_>>(), |i| format!("0.{i}"));
        let small = frame_json(&[0], |_| "1".into());
        let mut buf = Vec::new();
        for json in [&big, &small, &big, &String::new(), &small] {
            let packed = gzip(json.as_bytes());
            let got = inflate_if_gzip_into(&packed, 1 << 20, &mut buf).unwrap();
            assert_eq!(got, json.as_bytes());
            assert_eq!(buf, json.as_bytes());
        }
        let capacity = buf.capacity();
        assert!(capacity >= big.len());
        // Plain bodies pass through and leave the buffer alone.
        let plain = inflate_if_gzip_into(big.as_bytes(), 1, &mut buf).unwrap();
        assert_eq!(plain, big.as_bytes());
        assert_eq!(buf, small.as_bytes());
        // The limit holds on this path too.
        let e = inflate_if_gzip_into(&gzip(big.as_bytes()), 100, &mut buf).unwrap_err();
        assert_eq!(e, DecodeError::TooLarge { limit: 100 });
        assert_eq!(buf.capacity(), capacity);
    }

    #[test]
    fn eight_byte_search_finds_every_position() {
        let needle = *b"12345678";
        assert!(!contains_8(b"", &needle));
        assert!(!contains_8(b"1234567", &needle));
        for len in [8, 9, 63, 64, 65, 71, 72, 200] {
            for at in 0..=len - 8 {
                let mut hay = vec![b'1'; len];
                assert!(!contains_8(&hay, &needle), "{len}");
                hay[at..at + 8].copy_from_slice(&needle);
                assert!(contains_8(&hay, &needle), "{len} {at}");
                assert!(!contains_8(&hay[..at + 7], &needle), "{len} {at}");
                assert!(!contains_8(&hay[at + 1..], &needle), "{len} {at}");
            }
        }
    }

    #[test]
    fn position_names_count_in_decimal() {
        for (prefix, suffix) in [("feature_", ""), ("s", ".v"), ("", "")] {
            let mut name = PositionName::new(prefix, suffix).unwrap();
            for i in 0..=100_500 {
                assert_eq!(name.as_bytes(), format!("{prefix}{i}{suffix}").as_bytes());
                name.advance();
            }
        }
        let mut name = PositionName::new("x", "").unwrap();
        for _ in 0..19 {
            name.bytes[name.digits_at..name.len].fill(b'9');
            name.advance();
        }
        assert_eq!(name.as_bytes().len(), 21);
        assert!(PositionName::new(&"p".repeat(40), &"s".repeat(4)).is_some());
        assert!(PositionName::new(&"p".repeat(40), &"s".repeat(5)).is_none());
    }

    #[test]
    fn in_order_keys_resolve_under_any_naming() {
        let in_order: Vec<usize> = (0..120).collect();
        let shuffled: Vec<usize> = (0..120).map(|i| i * 7 % 120).collect();
        let mut gapped = in_order.clone();
        gapped.swap(10, 11);
        let long = format!("{}_{{i}}", "p".repeat(60));
        let namings = [
            FeatureNames::default(),
            FeatureNames::Pattern("s{i}.v".into()),
            FeatureNames::Pattern(long),
            FeatureNames::List((0..120).map(|i| format!("n{}", 119 - i)).collect()),
        ];
        for names in &namings {
            let index = FeatureIndex::new(names, 120).unwrap();
            for order in [&in_order, &shuffled, &gapped] {
                let body: Vec<String> = order
                    .iter()
                    .map(|&i| format!("\"{}\":{i}", index.name(i)))
                    .collect();
                let json = format!("{{\"data\":{{{}}}}}", body.join(","));
                let mut values = Vec::new();
                decode_frame(json.as_bytes(), &index, KeyPolicy::default(), &mut values)
                    .unwrap_or_else(|e| panic!("{names:?}: {e}"));
                let want: Vec<f32> = (0..120).map(|i| i as f32).collect();
                assert_eq!(values, want, "{names:?}");
            }
        }
        // feature_i names feature i only under the default naming.
        let other = FeatureIndex::new(&FeatureNames::Pattern("s{i}.v".into()), 2).unwrap();
        let mut values = Vec::new();
        let e = decode_frame(
            br#"{"data":{"feature_0":1,"feature_1":2}}"#,
            &other,
            KeyPolicy::default(),
            &mut values,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "2 unknown feature name(s): \"feature_0\", \"feature_1\""
        );
    }

    #[test]
    fn in_order_keys_still_catch_duplicates_and_strays() {
        // A repeat right where the next feature was expected.
        let json = r#"{"data":{"feature_0":1,"feature_1":2,"feature_1":3,"feature_2":4}}"#;
        let e = decode(json, 3, KeyPolicy::default()).unwrap_err();
        assert_eq!(
            e,
            DecodeError::DuplicateKey {
                key: "feature_1".into()
            }
        );
        // A stray key shifts every later position: names still decide.
        let json = r#"{"data":{"feature_0":1,"x":9,"feature_1":2,"feature_2":3}}"#;
        let policy = KeyPolicy {
            unknown: UnknownKeys::Ignore,
            ..KeyPolicy::default()
        };
        assert_eq!(decode(json, 3, policy).unwrap().1, [1.0, 2.0, 3.0]);
        // Not canonical decimal, so not feature 1 (nor any feature).
        let json = r#"{"data":{"feature_0":1,"feature_01":2}}"#;
        let e = decode(json, 2, KeyPolicy::default()).unwrap_err();
        assert_eq!(e.kind(), "unknown_features");
    }

    #[test]
    fn numbers_parse_as_std_does() {
        // Values as JavaScript prints them (shortest round trip), at full 17 digits, and
        // longer than any f64 needs; all must match `str::parse::<f64>` then `as f32`.
        let mut s = 0x2545_f491_4f6c_dd1d_u64;
        let mut texts = vec!["0".to_string(), "-0".into(), "1e-7".into(), "1.5E-7".into()];
        for _ in 0..3000 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let v = (s >> 11) as f64 / (1u64 << 53) as f64;
            let tiny = v * 1e-9;
            texts.push(format!("{v}"));
            texts.push(format!("{v:.16e}"));
            texts.push(format!("{:.25}", v));
            texts.push(format!("{tiny}"));
            texts.push(format!("-{}", v * 1e30));
        }
        let keys: Vec<usize> = (0..texts.len()).collect();
        let json = frame_json(&keys, |i| texts[i].clone());
        let (_, values) = decode(&json, texts.len(), KeyPolicy::default()).unwrap();
        for (text, got) in texts.iter().zip(&values) {
            let want = text.parse::<f64>().unwrap() as f32;
            // sonic-rs reads `-0` as the integer 0 (serde_json gave -0.0): equal as numbers.
            let same = got.to_bits() == want.to_bits() || (*got == 0.0 && want == 0.0);
            assert!(same, "{text}: {got} != {want}");
        }
    }

    #[test]
    fn corrupt_gzip_is_reported() {
        let mut packed = gzip(b"{\"data\":{\"feature_0\":1}}");
        let n = packed.len();
        packed[n / 2] ^= 0xff;
        packed[n - 5] ^= 0xff;
        assert_eq!(
            inflate_if_gzip(&packed, 1 << 20).unwrap_err().kind(),
            "bad_gzip"
        );
        let truncated = &gzip(b"{\"data\":{}}")[..12];
        assert_eq!(
            inflate_if_gzip(truncated, 1 << 20).unwrap_err().kind(),
            "bad_gzip"
        );
    }
}
