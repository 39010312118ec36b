//! The JSON body of an incident event: seed 001's alert fields (so that the NestJS
//! receiver's DTO accepts it; it ignores the rest) and the incident.

use bytes::Bytes;
use serde::Serialize;

use super::config::IncidentConfig;
use super::tracker::{EventKind, IncidentEvent};
use crate::sinks::alert::{iso_ms, AlertFeature};
use crate::sinks::event::AlertEvent;

/// The incident part of the body.
#[derive(Clone, Debug, Serialize)]
pub struct IncidentPart {
    /// `<group>#<first seq>`.
    pub id: String,
    /// `info`, `warning` or `critical`.
    pub severity: &'static str,
    /// The feature group.
    pub group: String,
    /// The first anomalous window's frame time, ISO 8601 UTC.
    pub start: String,
    /// The last anomalous window's frame time once resolved; `null` while open.
    pub end: Option<String>,
    /// The first anomalous window's frame.
    pub start_seq: u64,
    /// The last anomalous window's frame once resolved; `null` while open.
    pub end_seq: Option<u64>,
    /// The highest score of any of its features.
    pub peak_score: f32,
    /// Distinct features anomalous in it.
    pub num_features: usize,
    /// Its anomalous windows so far.
    pub windows: u64,
    /// The features with the highest peak scores, highest first.
    pub top_features: Vec<AlertFeature>,
    /// The frames of its anomalous windows (the first ones, up to the configured cap).
    pub frames: Vec<u64>,
}

/// The whole body.
#[derive(Clone, Debug, Serialize)]
pub struct IncidentBody {
    /// The event's frame time, ISO 8601 UTC.
    pub timestamp: String,
    /// True for `open` and `escalate`, false for `resolve`.
    pub anomaly_detected: bool,
    /// The incident's distinct anomalous features.
    pub num_anomalous_features: usize,
    /// Its top features (as in `incident.top_features`), for a receiver that reads only
    /// seed 001's fields.
    pub anomalous_features: Vec<AlertFeature>,
    /// The frame at which the event happened.
    pub seq: u64,
    /// `open`, `escalate` or `resolve`.
    pub event: EventKind,
    /// The incident after the event.
    pub incident: IncidentPart,
    /// `end_of_input` on a resolve sent because the input ended while the incident was
    /// open (a replayed file's end, or `serve` shutting down); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
}

impl IncidentBody {
    /// The body of `event` under `config`'s caps.
    pub fn new(event: &IncidentEvent, config: &IncidentConfig) -> IncidentBody {
        let i = &event.incident;
        let top: Vec<AlertFeature> = i
            .top_features(config.top_features)
            .into_iter()
            .map(|(feature_idx, score)| AlertFeature { feature_idx, score })
            .collect();
        let resolved = event.kind == EventKind::Resolve;
        IncidentBody {
            timestamp: iso_ms(event.ms),
            anomaly_detected: !resolved,
            num_anomalous_features: i.features.len(),
            anomalous_features: top.clone(),
            seq: event.seq,
            event: event.kind,
            incident: IncidentPart {
                id: i.id.clone(),
                severity: i.severity.as_str(),
                group: i.group.clone(),
                start: iso_ms(i.start_ms),
                end: resolved.then(|| iso_ms(i.last_ms)),
                start_seq: i.start_seq,
                end_seq: resolved.then_some(i.last_seq),
                peak_score: i.peak,
                num_features: i.features.len(),
                windows: i.windows,
                top_features: top,
                frames: i.frames.iter().copied().take(config.max_frames).collect(),
            },
            reason: event.end_of_input.then_some("end_of_input"),
        }
    }

    /// Serialised, at most `limit` bytes long: frames, then features, are dropped from the
    /// end of their lists until it fits (the counts stay true).
    pub fn encode(mut self, limit: usize) -> Bytes {
        loop {
            let bytes = serde_json::to_vec(&self).expect("incident bodies serialise");
            if bytes.len() <= limit {
                return Bytes::from(bytes);
            }
            let p = &mut self.incident;
            if !p.frames.is_empty() {
                p.frames.truncate(p.frames.len() / 2);
            } else if !p.top_features.is_empty() || !self.anomalous_features.is_empty() {
                p.top_features.truncate(p.top_features.len() / 2);
                self.anomalous_features
                    .truncate(self.anomalous_features.len() / 2);
            } else {
                // The group name alone is over the limit: send it anyway, the receiver
                // will say why it refuses it.
                return Bytes::from(bytes);
            }
        }
    }
}

/// `event` ready for delivery: keyed by its incident id, at most `limit` bytes.
pub fn alert_event(event: &IncidentEvent, config: &IncidentConfig, limit: usize) -> AlertEvent {
    AlertEvent {
        key: event.incident.id.clone(),
        body: IncidentBody::new(event, config).encode(limit),
        seq: Some(event.seq),
        incident: Some(event.incident.id.clone()),
    }
}
