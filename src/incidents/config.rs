//! The incident rules: hysteresis (k of the last n windows to open, m clean windows to
//! resolve) and the severity thresholds, read from a JSON file and overridden by flags.

use std::path::Path;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// How bad an incident is, in seed 004's three levels; ordered, so that an incident only
/// ever escalates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Confirmed by the hysteresis, below every warning threshold.
    Info,
    /// Over one warning threshold.
    Warning,
    /// Over one critical threshold.
    Critical,
}

impl Severity {
    /// Every level, lowest first.
    pub const ALL: [Severity; 3] = [Severity::Info, Severity::Warning, Severity::Critical];

    /// The level's name as written in bodies and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// The thresholds of one severity level: reaching any one of them is enough.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Level {
    /// Peak normalised score ([`IncidentConfig::normalise`]), 0 to 1.
    pub score: f64,
    /// Distinct features that were anomalous in the incident.
    pub features: usize,
    /// Frames from the incident's first to its latest anomalous window, both included.
    pub frames: u64,
}

/// The severity thresholds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeverityRules {
    /// Scores are normalised as `x / (1 + x)` with `x = score / score_scale` (scores at
    /// or below 0 count as 0), so that seed 004's thresholds on a 0..1 score apply: with
    /// the default scale of 1, a normalised 0.7 is a raw score of 2.33 and 0.9 one of 9.
    pub score_scale: f64,
    /// Warning from these on.
    pub warning: Level,
    /// Critical from these on.
    pub critical: Level,
}

impl Default for SeverityRules {
    fn default() -> Self {
        SeverityRules {
            score_scale: 1.0,
            warning: Level {
                score: 0.7,
                features: 5,
                frames: 60,
            },
            critical: Level {
                score: 0.9,
                features: 20,
                frames: 600,
            },
        }
    }
}

/// When incidents open and resolve, and how severe they are.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IncidentConfig {
    /// An incident opens when its group is anomalous in at least this many (k) ...
    pub open_windows: u64,
    /// ... of its last n windows.
    pub of_windows: u64,
    /// An open incident resolves after this many (m) scored windows in a row in which its
    /// group is not anomalous.
    pub resolve_after: u64,
    /// Frames between windows (the pipeline's stride): n windows span `n * stride` frames.
    #[serde(skip)]
    pub stride: u64,
    /// Most features an incident event lists (highest peak score first).
    pub top_features: usize,
    /// Most frames an incident event lists (the first ones).
    pub max_frames: usize,
    /// The severity thresholds.
    pub severity: SeverityRules,
}

impl Default for IncidentConfig {
    fn default() -> Self {
        IncidentConfig {
            open_windows: 3,
            of_windows: 5,
            resolve_after: 5,
            stride: 1,
            top_features: 20,
            max_frames: 1_000,
            severity: SeverityRules::default(),
        }
    }
}

impl IncidentConfig {
    /// The configuration in the JSON file at `path`; keys it leaves out keep their
    /// defaults.
    pub fn load(path: &Path) -> anyhow::Result<IncidentConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading incident config {}", path.display()))?;
        let config: IncidentConfig = serde_json::from_str(&text)
            .with_context(|| format!("incident config {}", path.display()))?;
        config
            .check()
            .with_context(|| format!("incident config {}", path.display()))?;
        Ok(config)
    }

    /// An error naming the first setting that cannot work.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.of_windows == 0 || self.open_windows == 0 || self.open_windows > self.of_windows {
            bail!(
                "open_windows must be between 1 and of_windows (given {} of {})",
                self.open_windows,
                self.of_windows
            );
        }
        if self.resolve_after == 0 {
            bail!("resolve_after must be at least 1");
        }
        let s = &self.severity;
        if !(s.score_scale.is_finite() && s.score_scale > 0.0) {
            bail!("severity.score_scale must be a positive number");
        }
        Ok(())
    }

    /// A score mapped onto 0..1 (see [`SeverityRules::score_scale`]).
    pub fn normalise(&self, score: f32) -> f64 {
        let x = (f64::from(score) / self.severity.score_scale).max(0.0);
        if x.is_finite() {
            x / (1.0 + x)
        } else {
            1.0
        }
    }

    /// The level of an incident with this peak score, extent and duration: the highest
    /// level any one of the three reaches.
    pub fn severity(&self, peak: f32, features: usize, frames: u64) -> Severity {
        let norm = self.normalise(peak);
        let reaches = |l: &Level| norm >= l.score || features >= l.features || frames >= l.frames;
        if reaches(&self.severity.critical) {
            Severity::Critical
        } else if reaches(&self.severity.warning) {
            Severity::Warning
        } else {
            Severity::Info
        }
    }
}

/// What `--alerts incident` hands the runtime: the rules, the feature metadata file, and
/// the largest body a receiver takes.
#[derive(Clone, Debug, PartialEq)]
pub struct IncidentSpec {
    /// The rules (the stride is filled in by the runtime from the pipeline's).
    pub config: IncidentConfig,
    /// Feature metadata (CSV or JSON, see [`super::Groups::load`]); `None`: every feature
    /// is its own group.
    pub metadata: Option<std::path::PathBuf>,
    /// Largest event body, in bytes (the receiver's limit).
    pub body_limit: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_takes_the_highest_level_any_rule_reaches() {
        let c = IncidentConfig::default();
        assert_eq!(c.severity(1.0, 1, 3), Severity::Info);
        assert_eq!(c.severity(2.4, 1, 3), Severity::Warning);
        assert_eq!(c.severity(9.5, 1, 3), Severity::Critical);
        assert_eq!(c.severity(1.0, 5, 3), Severity::Warning);
        assert_eq!(c.severity(1.0, 1, 600), Severity::Critical);
        assert_eq!(c.severity(f32::INFINITY, 1, 1), Severity::Critical);
    }

    #[test]
    fn partial_files_keep_the_defaults_and_bad_ones_are_refused() {
        let c: IncidentConfig = serde_json::from_str(r#"{"open_windows": 2}"#).unwrap();
        assert_eq!((c.open_windows, c.of_windows, c.resolve_after), (2, 5, 5));
        let bad: IncidentConfig = serde_json::from_str(r#"{"open_windows": 6}"#).unwrap();
        assert!(bad.check().is_err());
        assert!(serde_json::from_str::<IncidentConfig>(r#"{"opne_windows": 2}"#).is_err());
    }
}
