//! The rules as a dataflow stage: each entity's windows, on the worker that owns the
//! entity, tested against the rules in force (the rule file is checked for changes once
//! per batch of input).

use std::collections::HashMap;
use std::sync::Arc;

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;

use super::{Evaluator, RuleSet, RulesConfig};
use crate::clock;
use crate::live_file::LiveFile;
use crate::ops::{Parts, Stream};
use crate::stats::{Stage, Stats};
use crate::types::{EntityKey, PartHits, Window};

/// Tests windows against rules.
pub trait RulesOps<'s> {
    /// What comes out: reports, in the same shape as the input.
    type Output;

    /// One [`PartHits`] per window: the features whose rules fired, and the evidence.
    /// Statistics are per entity ([`Window::entity`]): its windows must come once and in
    /// frame order, as the window operator gives them. `rules` is refreshed (see
    /// [`LiveFile::refresh`]) before each batch, so an edited rule file judges the next
    /// batch's windows. Records evaluation time into `stats` as scoring time.
    fn evaluate_rules(
        self,
        rules: Arc<LiveFile<RuleSet>>,
        config: RulesConfig,
        stats: Arc<Stats>,
    ) -> Self::Output;
}

impl<'s> RulesOps<'s> for Parts<'s, Window> {
    type Output = Parts<'s, PartHits>;

    fn evaluate_rules(
        self,
        rules: Arc<LiveFile<RuleSet>>,
        config: RulesConfig,
        stats: Arc<Stats>,
    ) -> Parts<'s, PartHits> {
        self.map(|w| w.evaluate_rules(rules, config, stats))
    }
}

impl<'s> RulesOps<'s> for Stream<'s, Window> {
    type Output = Stream<'s, PartHits>;

    fn evaluate_rules(
        self,
        rules: Arc<LiveFile<RuleSet>>,
        config: RulesConfig,
        stats: Arc<Stats>,
    ) -> Stream<'s, PartHits> {
        self.unary(Pipeline, "EvaluateRules", move |_cap, _info| {
            let mut entities: HashMap<EntityKey, Evaluator> = HashMap::new();
            move |input, output| {
                let mut in_force = None;
                input.for_each_stamp(|cap, data| {
                    let set = in_force.get_or_insert_with(|| {
                        rules.refresh();
                        rules.current().1
                    });
                    let mut session = output.session(&cap);
                    for batch in data {
                        for w in batch.drain(..) {
                            let began = clock::now_us();
                            let width = w.data.len() / config.window.size;
                            let evaluator = entities
                                .entry(w.entity)
                                .or_insert_with(|| Evaluator::new(width, config));
                            let (hits, evidence) =
                                evaluator.evaluate(set, w.entity, &w.data.to_flat());
                            let done = clock::now_us();
                            stats.record(Stage::Score, done - began);
                            // the frame's score: its highest feature's rule score
                            let peak = hits.iter().map(|h| h.score).fold(0.0, f32::max);
                            session.give(PartHits {
                                seq: w.seq,
                                began_us: began,
                                scored_us: done,
                                hits,
                                peak,
                                evidence,
                            });
                        }
                    }
                });
            }
        })
    }
}
