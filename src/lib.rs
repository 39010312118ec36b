//! tidewatch: real-time anomaly detection on timely dataflow.
//!
//! Frames of sensor values enter a timely dataflow, are split by feature partition across
//! workers, windowed by logical time (the frame sequence number), batched, scored with
//! feature-wise one-class SVMs and merged back into one verdict per frame.
#![deny(missing_docs)]

pub mod agreement;
pub mod clock;
pub mod commands;
pub mod controls;
#[path = "../dataflows/mod.rs"]
pub mod dataflows;
pub mod detect;
pub mod eval;
pub mod incidents;
pub mod kafka;
pub mod layout;
pub mod live_file;
pub mod load;
pub mod machines;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod packed;
pub mod resources;
pub mod rules;
pub mod runtime;
pub mod server;
pub mod settings;
pub mod sinks;
pub mod sources;
pub mod stats;
pub mod train;
pub mod types;
