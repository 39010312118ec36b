//! tidewatch: real-time anomaly detection on timely dataflow.
//!
//! Frames of sensor values enter a timely dataflow, are split by feature partition across
//! workers, windowed by logical time (the frame sequence number), batched, scored with
//! feature-wise one-class SVMs and merged back into one verdict per frame.
#![deny(missing_docs)]

pub mod clock;
pub mod layout;
pub mod model;
pub mod types;
