//! The Kafka client shared by the edges that talk to a broker: client settings and topic
//! set-up ([`client`]), the compact binary frame format ([`binary`]) and the book of
//! offsets safe to commit ([`offsets`]). The consumer is a source
//! (`crate::sources::kafka`), the producers are a sink (`crate::sinks::kafka`) and a load
//! generator (`crate::load::kafka`); serve's Kafka flags and set-up live with serve
//! (`crate::settings`, `crate::server::kafka`).

pub mod binary;
pub mod client;
pub mod offsets;

pub use client::{
    client_config, ensure_topic, partition_count, DEFAULT_GROUP, MAX_MESSAGE_BYTES, SETUP_TIMEOUT,
};
pub use offsets::OffsetBook;
