//! The rule file (`rules.toml`): how many values a frame holds, and thresholds on the
//! statistics of each feature's windows, for every entity or one.
//!
//! ```toml
//! features = 25
//!
//! [[rule]]
//! name = "p99-high"   # unique; named in the alert's evidence
//! stat = "p99"        # last, mean, std, p50, p95, p99, ewma or cusum
//! feature = 0         # optional: every feature when left out
//! entity = "A-1"      # optional: every entity when left out
//! above = 0.9         # fires when the statistic is over it (or `below = ...`: under)
//! weight = 0.5        # optional (the seed's 0.5): what it adds to the rule score
//! ```
//!
//! Unknown keys and statistics, features past the frame's, a rule with both or neither
//! of `above`/`below`, and names given twice are errors that name the rule.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{bail, ensure, Context};
use serde::Deserialize;

use super::Stat;
use crate::live_file::FileContents;
use crate::types::{entity_key, EntityKey};

/// The rule file's name in a rules model directory.
pub const RULES_FILE: &str = "rules.toml";

/// A rule's weight when the file gives none: the seed's 0.5 per violation.
pub const DEFAULT_WEIGHT: f64 = 0.5;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileText {
    features: usize,
    #[serde(default)]
    rule: Vec<RuleText>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleText {
    name: String,
    stat: Stat,
    feature: Option<u32>,
    entity: Option<String>,
    above: Option<f64>,
    below: Option<f64>,
    weight: Option<f64>,
}

/// One threshold on one statistic.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// Its name (unique in the file).
    pub name: String,
    /// The statistic it tests.
    pub stat: Stat,
    /// The feature it tests; `None`: every feature.
    pub feature: Option<u32>,
    /// The entity it tests (name and key); `None`: every entity.
    pub entity: Option<(String, EntityKey)>,
    /// The threshold.
    pub threshold: f64,
    /// Fires when the statistic is over the threshold (`true`) or under it.
    pub above: bool,
    /// What it adds to the frame's rule score, in (0, 1].
    pub weight: f64,
}

impl Rule {
    /// Whether it tests feature `feature` of entity `entity`.
    pub fn applies_to(&self, entity: EntityKey, feature: u32) -> bool {
        self.feature.is_none_or(|f| f == feature)
            && self.entity.as_ref().is_none_or(|e| e.1 == entity)
    }

    /// Whether `value` crosses the threshold (strictly, as the seed's `>`; NaN never).
    pub fn fires(&self, value: f64) -> bool {
        if self.above {
            value > self.threshold
        } else {
            value < self.threshold
        }
    }
}

/// A rule file's contents.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleSet {
    /// Values per frame.
    pub features: usize,
    /// The rules, in file order (the order of an alert's evidence).
    pub rules: Vec<Rule>,
}

/// Parses a rule file's text.
pub fn parse(text: &str) -> anyhow::Result<RuleSet> {
    let file: FileText = toml::from_str(text)?;
    ensure!(file.features > 0, "features must be at least 1");
    let mut names = BTreeSet::new();
    let mut rules = Vec::with_capacity(file.rule.len());
    for r in file.rule {
        let name = r.name.clone();
        rules.push(check(r, file.features, &mut names).with_context(|| format!("rule {name:?}"))?);
    }
    Ok(RuleSet {
        features: file.features,
        rules,
    })
}

fn check(r: RuleText, features: usize, names: &mut BTreeSet<String>) -> anyhow::Result<Rule> {
    ensure!(!r.name.trim().is_empty(), "a rule needs a name");
    ensure!(names.insert(r.name.clone()), "the name is given twice");
    if let Some(f) = r.feature {
        ensure!(
            (f as usize) < features,
            "feature {f} is not a frame feature (frames hold {features}: 0 to {})",
            features - 1
        );
    }
    let (threshold, above) = match (r.above, r.below) {
        (Some(t), None) => (t, true),
        (None, Some(t)) => (t, false),
        _ => bail!("give exactly one of `above` and `below`"),
    };
    ensure!(
        threshold.is_finite(),
        "the threshold must be a finite number"
    );
    let weight = r.weight.unwrap_or(DEFAULT_WEIGHT);
    ensure!(
        weight > 0.0 && weight <= 1.0,
        "weight {weight}: must be in (0, 1]"
    );
    let entity = match r.entity {
        Some(e) if e.trim().is_empty() => bail!("an empty entity"),
        Some(e) => Some((e.clone(), entity_key(&e))),
        None => None,
    };
    Ok(Rule {
        name: r.name,
        stat: r.stat,
        feature: r.feature,
        entity,
        threshold,
        above,
        weight,
    })
}

/// Reads and parses the rule file at `path`.
pub fn read(path: &Path) -> anyhow::Result<RuleSet> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading rule file {}", path.display()))?;
    parse(&text).with_context(|| format!("rule file {}", path.display()))
}

impl FileContents for RuleSet {
    const WHAT: &'static str = "rules";
    const UNIT: &'static str = "rules";

    fn read(path: &Path) -> anyhow::Result<RuleSet> {
        read(path)
    }

    fn entries(&self) -> usize {
        self.rules.len()
    }

    /// The run's frames keep their width: a file that changes `features` waits for a
    /// restart.
    fn may_become(&self, new: &RuleSet) -> anyhow::Result<()> {
        ensure!(
            new.features == self.features,
            "the rule file now says features = {}, the run was started with {}: restart to change it",
            new.features,
            self.features
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        format!("{:#}", parse(text).unwrap_err())
    }

    /// A whole file reads with its defaults; every mistake is refused naming the rule
    /// and what is wrong.
    #[test]
    fn parses_and_refuses_with_reasons() {
        let set = parse(
            "features = 3\n[[rule]]\nname = \"hot\"\nstat = \"p95\"\nfeature = 2\nentity = \"A-1\"\nabove = 0.9\n\
             [[rule]]\nname = \"low\"\nstat = \"ewma\"\nbelow = -1\nweight = 0.25\n",
        )
        .unwrap();
        assert_eq!(set.features, 3);
        assert_eq!(set.rules.len(), 2);
        let (hot, low) = (&set.rules[0], &set.rules[1]);
        assert_eq!(
            (hot.stat, hot.feature, hot.above, hot.weight),
            (Stat::P95, Some(2), true, 0.5)
        );
        assert!(hot.applies_to(entity_key("A-1"), 2) && !hot.applies_to(entity_key("A-2"), 2));
        assert!(!hot.applies_to(entity_key("A-1"), 1));
        assert!(low.applies_to(entity_key("B-7"), 0) && !low.above && low.weight == 0.25);
        assert!(hot.fires(0.91) && !hot.fires(0.9) && !hot.fires(f64::NAN));
        assert!(low.fires(-1.5) && !low.fires(-1.0));

        let rule = |body: &str| format!("features = 3\n[[rule]]\nname = \"r\"\n{body}\n");
        let cases = [
            (rule("stat = \"p90\"\nabove = 1"), "unknown variant `p90`"),
            (
                rule("stat = \"mean\"\nabove = 1\nabve = 2"),
                "unknown field `abve`",
            ),
            (
                rule("stat = \"mean\"\nfeature = 3\nabove = 1"),
                "feature 3 is not a frame feature",
            ),
            (
                rule("stat = \"mean\""),
                "exactly one of `above` and `below`",
            ),
            (
                rule("stat = \"mean\"\nabove = 1\nbelow = 0"),
                "exactly one of",
            ),
            (rule("stat = \"mean\"\nabove = 1\nweight = 2"), "weight 2"),
            (rule("stat = \"mean\"\nabove = nan"), "finite"),
            (
                "features = 3\ncolour = 1\n".to_string(),
                "unknown field `colour`",
            ),
            (
                "[[rule]]\nname = \"r\"\nstat = \"mean\"\nabove = 1\n".to_string(),
                "missing field `features`",
            ),
        ];
        for (text, expected) in cases {
            let e = error(&text);
            assert!(e.contains(expected), "{text:?}: {e}");
        }
        let twice = format!(
            "{}[[rule]]\nname = \"r\"\nstat = \"std\"\nabove = 1\n",
            rule("stat = \"std\"\nabove = 1")
        );
        let e = error(&twice);
        assert!(e.contains("rule \"r\"") && e.contains("twice"), "{e}");
    }

    /// A running dataflow keeps its frame width: a reloaded file may change the rules,
    /// not `features`.
    #[test]
    fn a_reload_keeps_the_frame_width() {
        let rules = |features| {
            parse(&format!(
                "features = {features}\n[[rule]]\nname = \"r\"\nstat = \"std\"\nabove = 1\n"
            ))
            .unwrap()
        };
        assert!(rules(3).may_become(&rules(3)).is_ok());
        let e = rules(3).may_become(&rules(4)).unwrap_err().to_string();
        assert!(e.contains("features = 4") && e.contains("restart"), "{e}");
    }
}
