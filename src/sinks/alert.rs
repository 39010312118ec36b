//! The alert body of seed 001's contract (see CONTRACT.md), built from a frame's verdict.

use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use serde::Serialize;

use crate::clock;
use crate::types::FrameResult;

/// The most features an alert lists by default: about 40 bytes each, so 2,000 stay well
/// under the receiving client's 100 KiB body limit.
pub const DEFAULT_MAX_FEATURES: usize = 2_000;

/// The longest frame id an alert copies, in characters: an id past it is cut and marked
/// with [`ID_CUT_MARK`], so that a client's oversized id (say 150,000 characters) cannot
/// push the alert past the receiver's 100 KiB body limit (6 bytes a character at most,
/// escaped, leaves room for the rest of the body).
pub const MAX_ALERT_ID_CHARS: usize = 1_024;

/// Ends an id cut to [`MAX_ALERT_ID_CHARS`].
pub const ID_CUT_MARK: &str = "…";

/// `id`, cut to [`MAX_ALERT_ID_CHARS`] characters (the mark included) if longer.
pub fn cap_id(id: &str) -> String {
    match id.char_indices().nth(MAX_ALERT_ID_CHARS) {
        None => id.to_string(),
        Some(_) => {
            let keep = MAX_ALERT_ID_CHARS - ID_CUT_MARK.chars().count();
            let end = id.char_indices().nth(keep).map_or(id.len(), |(i, _)| i);
            format!("{}{ID_CUT_MARK}", &id[..end])
        }
    }
}

/// One anomalous feature in an alert.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AlertFeature {
    /// Model feature index.
    pub feature_idx: u32,
    /// Its anomaly score.
    pub score: f32,
}

/// The JSON body posted to the alert endpoint (and written by the file sinks).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Alert {
    /// The frame's time, ISO 8601 UTC with milliseconds: the client's timestamp if it sent
    /// one, else when tidewatch received the frame.
    pub timestamp: String,
    /// Always true: alerts are sent for anomalous frames only.
    pub anomaly_detected: bool,
    /// How many features are over the threshold (all of them, even past the list cap).
    pub num_anomalous_features: usize,
    /// The anomalous features, highest score first, at most the cap.
    pub anomalous_features: Vec<AlertFeature>,
    /// The frame's sequence number in this run.
    pub seq: u64,
    /// The client's frame id, if it sent one, cut to [`MAX_ALERT_ID_CHARS`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// When tidewatch received the frame, ISO 8601 UTC.
    pub received_at: String,
    /// The entity the frame observes, if it named one (the client ignores extra fields).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entity: Option<String>,
    /// The machine of a machine record (the `machines` variant).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<String>,
    /// A machine record's failure probability: its one hit's score.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probability: Option<f32>,
}

impl Alert {
    /// The alert for `result`, listing at most `max_features` features.
    pub fn new(result: &FrameResult, max_features: usize) -> Alert {
        let mut features: Vec<AlertFeature> = result
            .hits
            .iter()
            .map(|h| AlertFeature {
                feature_idx: h.feature,
                score: h.score,
            })
            .collect();
        // highest first; ties by index so the body is the same on every run
        features.sort_unstable_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then(a.feature_idx.cmp(&b.feature_idx))
        });
        features.truncate(max_features);
        let meta = &result.meta;
        Alert {
            timestamp: iso_ms(meta.event_ms.unwrap_or(meta.received_ms)),
            anomaly_detected: true,
            num_anomalous_features: result.hits.len(),
            anomalous_features: features,
            seq: result.seq,
            id: meta.id.as_deref().map(cap_id),
            received_at: iso_ms(meta.received_ms),
            entity: meta.entity.as_deref().map(cap_id),
            machine_id: meta.machine_id.as_deref().map(cap_id),
            probability: meta
                .machine_id
                .as_ref()
                .and_then(|_| result.hits.first().map(|h| h.score)),
        }
    }
}

/// Why the receiving NestJS client would refuse an alert (CONTRACT.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Over its body limit: it answers 413.
    TooLarge,
    /// Not JSON by content type, or missing a required field: it answers 500.
    Invalid,
}

/// Checks an alert the way the receiving client does (content type, body limit, the
/// class-validator fields), for alert receivers in the demo and in tests.
pub fn check_like_client(
    content_type: Option<&str>,
    body: &[u8],
    limit: usize,
) -> Result<serde_json::Value, Refusal> {
    if body.len() > limit {
        return Err(Refusal::TooLarge);
    }
    let json_type = content_type.is_some_and(|v| v.starts_with("application/json"));
    let alert: serde_json::Value = serde_json::from_slice(body).map_err(|_| Refusal::Invalid)?;
    let valid = alert["timestamp"].is_string()
        && alert["anomaly_detected"].is_boolean()
        && alert["num_anomalous_features"].is_u64()
        && alert["anomalous_features"].as_array().is_some_and(|fs| {
            fs.iter()
                .all(|f| f["feature_idx"].is_u64() && f["score"].is_number())
        });
    if json_type && valid {
        Ok(alert)
    } else {
        Err(Refusal::Invalid)
    }
}

/// Unix milliseconds as `2026-11-23T10:00:00.123Z`, clamped to the years ISO 8601
/// (and humantime) can print, 1970 to 9999: building an alert never fails.
pub fn iso_ms(ms: i64) -> String {
    let ms = ms.clamp(0, 253_402_300_799_999) as u64;
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// The body posted for an anomalous frame: the contract's alert plus the end-to-end
/// latency (extra fields are ignored by the client).
#[derive(Clone, Debug, Serialize)]
pub struct AlertBody {
    /// The contract's fields and the frame's identity (seq, id, receive time).
    #[serde(flatten)]
    pub alert: Alert,
    /// From receiving the frame to its verdict, in milliseconds.
    pub latency_ms: f64,
    /// The process's run id ([`clock::run_id`]): with `seq`, names the frame across
    /// restarts (a receiver can use the pair as an idempotency key).
    pub run_id: &'static str,
}

impl AlertBody {
    /// The serialized body for `result`, listing at most `max_features` features and at
    /// most `limit` bytes long: features are dropped from the end of the list (the lowest
    /// scores) until it fits. `num_anomalous_features` keeps the true count.
    pub fn encode(
        result: &FrameResult,
        latency_ms: f64,
        max_features: usize,
        limit: usize,
    ) -> Bytes {
        let mut body = AlertBody {
            alert: Alert::new(result, max_features),
            latency_ms,
            run_id: clock::run_id(),
        };
        loop {
            let bytes = serde_json::to_vec(&body).expect("alert bodies serialize");
            let n = body.alert.anomalous_features.len();
            if bytes.len() <= limit || n == 0 {
                return Bytes::from(bytes);
            }
            // Shrink in proportion to the excess; the lengths of score texts vary, so
            // check again rather than trust one estimate.
            let keep = (n as f64 * limit as f64 / bytes.len() as f64) as usize;
            body.alert.anomalous_features.truncate(keep.min(n - 1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{FrameMeta, Hit};

    #[test]
    fn alert_lists_highest_scores_first_and_keeps_the_true_count() {
        let result = FrameResult {
            seq: 7,
            meta: FrameMeta {
                received_ms: 1_795_428_000_123,
                id: Some("f-1".into()),
                ..FrameMeta::default()
            },
            hits: (0..10)
                .map(|i| Hit {
                    feature: i,
                    score: i as f32,
                })
                .collect(),
            peak: 9.0,
        };
        let alert = Alert::new(&result, 3);
        assert_eq!(alert.num_anomalous_features, 10);
        let idx: Vec<u32> = alert
            .anomalous_features
            .iter()
            .map(|f| f.feature_idx)
            .collect();
        assert_eq!(idx, vec![9, 8, 7]);
        assert_eq!(alert.timestamp, "2026-11-23T10:00:00.123Z");
        let json = serde_json::to_value(&alert).unwrap();
        assert_eq!(json["anomaly_detected"], true);
        assert_eq!(json["anomalous_features"][0]["feature_idx"], 9);
        assert_eq!(json["id"], "f-1");
    }

    #[test]
    fn long_ids_are_cut_to_the_cap() {
        assert_eq!(cap_id("f-1"), "f-1");
        let exact = "é".repeat(MAX_ALERT_ID_CHARS);
        assert_eq!(cap_id(&exact), exact);
        let cut = cap_id(&"é".repeat(150_000));
        assert_eq!(cut.chars().count(), MAX_ALERT_ID_CHARS);
        assert!(cut.ends_with(ID_CUT_MARK) && cut.starts_with("éé"));
    }

    #[test]
    fn iso_ms_is_total() {
        assert_eq!(iso_ms(-5), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso_ms(i64::MAX), "9999-12-31T23:59:59.999Z");
    }
}
