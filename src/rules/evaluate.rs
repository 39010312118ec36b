//! One entity's windows against the rules: the statistics of every feature, each rule
//! that applies tested on them, and the evidence of those that fired.

use super::{window_statistics, RuleSet, Running, Stat, Statistics};
use crate::detect::CusumConfig;
use crate::ops::WindowConfig;
use crate::types::{EntityKey, Evidence, Hit};

/// How the rules variant computes its statistics.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RulesConfig {
    /// The windows of each entity's frames.
    pub window: WindowConfig,
    /// The EWMA's weight of the newest value (the seed's 0.3).
    pub ewma_alpha: f32,
    /// The CUSUM's baseline, slack and warm-up (its `h` is not used: rules threshold the
    /// statistic itself).
    pub cusum: CusumConfig,
}

/// The statistics of one entity's windows, and its rules' verdicts on them.
#[derive(Clone, Debug)]
pub struct Evaluator {
    config: RulesConfig,
    width: usize,
    running: Running,
    /// Whether a window was seen: the next one's new frames are its last `stride`.
    started: bool,
    column: Vec<f64>,
    scratch: Vec<f64>,
}

impl Evaluator {
    /// An evaluator of windows of `width` features.
    pub fn new(width: usize, config: RulesConfig) -> Evaluator {
        Evaluator {
            config,
            width,
            running: Running::new(width, config.ewma_alpha, config.cusum),
            started: false,
            column: Vec::with_capacity(config.window.size),
            scratch: Vec::with_capacity(config.window.size),
        }
    }

    /// Every feature's statistics over `window` (`[W][width]`, oldest first), after the
    /// running EWMA and CUSUM took in the frames it does not share with the window
    /// before (all of the first; then the last `stride`, or all W when the stride is
    /// longer and frames between windows go unseen).
    pub fn statistics(&mut self, window: &[f32]) -> Vec<Statistics> {
        let (w, width) = (self.config.window.size, self.width);
        assert_eq!(window.len(), w * width, "a window of {w} frames of {width}");
        let new = if self.started {
            self.config.window.stride.min(w)
        } else {
            w
        };
        self.started = true;
        self.running.feed(&window[(w - new) * width..]);
        (0..width)
            .map(|j| {
                self.column.clear();
                self.column
                    .extend(window.iter().skip(j).step_by(width).map(|&v| v as f64));
                let mut s = window_statistics(&self.column, &mut self.scratch);
                s[Stat::Ewma as usize] = self.running.ewma(j);
                s[Stat::Cusum as usize] = self.running.cusum(j);
                s
            })
            .collect()
    }

    /// The rules of `rules` that fire on `window` of entity `entity`: their evidence in
    /// rule order (a rule on every feature: by feature), and one hit per feature with
    /// evidence, scored the weights of its rules summed and capped at 1.
    pub fn evaluate(
        &mut self,
        rules: &RuleSet,
        entity: EntityKey,
        window: &[f32],
    ) -> (Vec<Hit>, Vec<Evidence>) {
        let stats = self.statistics(window);
        let mut evidence = Vec::new();
        let mut per_feature = vec![0f64; self.width];
        for rule in &rules.rules {
            for (j, s) in stats.iter().enumerate() {
                let feature = j as u32;
                if !rule.applies_to(entity, feature) {
                    continue;
                }
                let value = s[rule.stat as usize];
                if rule.fires(value) {
                    per_feature[j] += rule.weight;
                    evidence.push(Evidence {
                        rule: rule.name.clone(),
                        stat: rule.stat.name().to_string(),
                        feature,
                        value,
                        threshold: rule.threshold,
                        above: rule.above,
                        weight: rule.weight,
                    });
                }
            }
        }
        let hits = per_feature
            .iter()
            .enumerate()
            .filter(|(_, &w)| w > 0.0)
            .map(|(j, &w)| Hit {
                feature: j as u32,
                score: w.min(1.0) as f32,
            })
            .collect();
        (hits, evidence)
    }
}
