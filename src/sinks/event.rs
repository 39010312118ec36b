//! The one type the alert producers (frame alerts, incidents) and the alert deliverers
//! (the webhook through the outbox, the Kafka alert topic) share.

/// One alert event, ready to deliver: a frame alert (seed 001's body) or an incident event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertEvent {
    /// Orders deliveries (events with the same key are delivered in order) and is the Kafka
    /// message key: `frame-<seq>` for frame alerts, the incident id for incident events.
    pub key: String,
    /// The JSON body as sent to the webhook and the Kafka alert topic (already capped to
    /// the receiver's 100 KiB limit).
    pub body: bytes::Bytes,
    /// The frame this event is about (a frame alert), or the newest frame of an incident.
    pub seq: Option<u64>,
    /// The incident id, for incident events.
    pub incident: Option<String>,
}
