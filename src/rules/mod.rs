//! Seed 004's (PADIT) rule detector: statistics of each entity's windows (mean, std,
//! p50/p95/p99, EWMA, CUSUM and the last value), thresholds on them from a rule file
//! ([`RuleSet`], reloaded while a run goes on), and alerts that carry the evidence (which
//! rule fired on which statistic of which feature, its value and threshold) and a
//! severity on the seed's rule score.
//!
//! The pieces, usable alone: [`window_statistics`] and [`Running`] compute the
//! statistics, [`Evaluator`] tests one entity's windows against the rules, and
//! [`RulesOps::evaluate_rules`] is the dataflow stage (`dataflows/rules.rs`).

mod evaluate;
mod file;
mod stage;
mod statistics;

use std::path::Path;

use anyhow::Context;

pub use evaluate::{Evaluator, RulesConfig};
pub use file::{parse, Rule, RuleSet, DEFAULT_WEIGHT, RULES_FILE};
pub use stage::RulesOps;
pub use statistics::{percentile, window_statistics, Running, Stat, Statistics};

use crate::model::{FeatureNames, Model};
use crate::types::Evidence;

/// The frame's rule score in the seed's manner (`RuleBasedDetector.detect`): the weights
/// of the rules that fired, summed and capped at 1 (the seed adds 0.5 per violation).
pub fn rule_score(evidence: &[Evidence]) -> f64 {
    evidence.iter().map(|e| e.weight).sum::<f64>().min(1.0)
}

/// The seed's severity of a rule score (`AlertService._create_alert`): `critical` at 0.9
/// or more, `warning` at 0.7 or more, else `info`.
pub fn severity(score: f64) -> &'static str {
    if score >= 0.9 {
        "critical"
    } else if score >= 0.7 {
        "warning"
    } else {
        "info"
    }
}

/// What the runtime holds as "the model" of a `rules` run: the rule file of `dir`
/// ([`RULES_FILE`]) checked readable, described as a model of its `features` values per
/// frame; its `training.rules_file` tells the variant where the rules are.
pub fn frame_model(dir: &Path) -> anyhow::Result<Model> {
    let path = dir.join(RULES_FILE);
    let rules = file::read(&path)?;
    Ok(Model::descriptive(
        FeatureNames::default(),
        rules.features,
        "rules variant: the weights of the rules that fired, summed and capped at 1".into(),
        0.0,
        serde_json::json!({ "rules_file": path }),
    ))
}

/// The rule file a [`frame_model`] names.
pub fn rules_file(model: &Model) -> anyhow::Result<std::path::PathBuf> {
    model.meta.training["rules_file"]
        .as_str()
        .map(std::path::PathBuf::from)
        .context("the rules variant needs a rules model directory (models/rules, with rules.toml)")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed's bands, at their edges; weights add up and cap at 1.
    #[test]
    fn severities_and_scores() {
        assert_eq!(severity(0.9), "critical");
        assert_eq!(severity(0.89), "warning");
        assert_eq!(severity(0.7), "warning");
        assert_eq!(severity(0.69), "info");
        let e = |weight| Evidence {
            weight,
            ..Evidence::default()
        };
        assert_eq!(rule_score(&[e(0.5)]), 0.5);
        assert_eq!(rule_score(&[e(0.5), e(0.25)]), 0.75);
        assert_eq!(rule_score(&[e(0.5), e(0.5), e(0.5)]), 1.0);
    }
}
