//! Incidents: anomalous verdicts grouped by feature metadata and confirmed with
//! hysteresis, so that one departure gives one incident (opened, escalated, resolved)
//! instead of an alert per frame.
//!
//! Core: imports no edge. [`IncidentOps`] is the dataflow stage (differential dataflow
//! for the metadata join and the sliding per-group counts, a timely operator for the
//! hysteresis); [`IncidentConfig`] the rules; [`Groups`] the metadata; [`body`] the JSON
//! event the sinks deliver.

pub mod body;
mod config;
mod groups;
mod operator;
mod tracker;

pub use config::{IncidentConfig, IncidentSpec, Level, Severity, SeverityRules};
pub use groups::Groups;
pub use operator::{frame_ms, IncidentOps};
pub use tracker::{EventKind, GroupWindow, Incident, IncidentEvent, Tracker};
