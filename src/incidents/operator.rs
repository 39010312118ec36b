//! Incidents as a dataflow stage: [`IncidentOps::incidents`] turns the verdicts into
//! incident events.
//!
//! ```text
//! verdicts ─► hits (feature, seq, score) ─┬─ join ──── metadata (feature, group) ─► (group, hit)
//!                                         └─ antijoin (no metadata: the feature's own group)
//! (group, hit) ─► exchange by group ─► Tracker (k of the last n scored frames, severity)
//!                                        ▲ every scored frame (broadcast)
//! incident events ─► worker 0, sorted within each frame by incident id ─► sinks
//! ```
//!
//! The hits and the metadata are differential collections, so the group of a feature is
//! a join, not a lookup table each worker keeps. The hysteresis itself is a fold over
//! the scored frames in order (see [`super::tracker`]): its "last n windows" are the last
//! n scored frames, counted by the broadcast ticks rather than by seq, because seqs from a
//! clock (Kafka, several ingest points) leave gaps, so a differential window of n seqs
//! would not be n frames. It runs in a timely operator after the join, which takes each
//! frame's hits only once the frontier has passed the frame, in frame order: the events
//! are the same whatever the number of workers or processes.

use std::collections::BTreeMap;
use std::sync::Arc;

use differential_dataflow::{AsCollection, Hashable, VecCollection};
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::{Broadcast, Map};
use timely::dataflow::operators::{Capability, ToStream};

use super::config::IncidentConfig;
use super::groups::Groups;
use super::tracker::{GroupWindow, IncidentEvent, Tracker};
use crate::model::FeatureIndex;
use crate::ops::{Stream, Time};
use crate::types::{FrameMeta, FrameResult, Seq};

/// A frame's time for incidents: the client's event time, else its receive time.
pub fn frame_ms(meta: &FrameMeta) -> i64 {
    meta.event_ms.unwrap_or(meta.received_ms)
}

/// What the tracker of a group's worker learns at a frame.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Fact {
    /// One anomalous feature of the group in the window ending at `seq`; the score as
    /// `f32` bits, so that the record is `Ord` for differential.
    Hit {
        group: String,
        seq: Seq,
        feature: u32,
        score: u32,
        ms: i64,
    },
}

impl Fact {
    fn group(&self) -> &str {
        match self {
            Fact::Hit { group, .. } => group,
        }
    }
}

/// A frame's facts, waiting for the frontier to pass it.
struct Due {
    cap: Capability<Time>,
    facts: Vec<(Fact, isize)>,
    tick: Option<i64>,
}

/// Incidents from verdicts.
pub trait IncidentOps<'s> {
    /// The incident events of these verdicts (see the module's diagram), on worker 0, at
    /// the time of the frame that caused each, in frame order and, within a frame, by
    /// incident id and kind. `groups` is the feature metadata (fed in by worker 0; every
    /// worker may hold the same), `names` names the features it leaves out.
    ///
    /// # Examples
    ///
    /// A feature anomalous from frame 2 to 5 (three of five windows opens, five clean
    /// windows resolve):
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use timely::dataflow::operators::{Inspect, ToStream};
    /// use tidewatch::incidents::{EventKind, Groups, IncidentConfig, IncidentOps};
    /// use tidewatch::model::FeatureIndex;
    /// use tidewatch::types::{FrameResult, FrameMeta, Hit};
    ///
    /// let events = Arc::new(Mutex::new(Vec::new()));
    /// let sink = Arc::clone(&events);
    /// timely::example(move |scope| {
    ///     (0..14u64)
    ///         .map(|seq| FrameResult {
    ///             seq,
    ///             meta: FrameMeta { event_ms: Some(1_000 * seq as i64), ..FrameMeta::default() },
    ///             hits: if (2..=5).contains(&seq) { vec![Hit { feature: 1, score: 2.0 }] } else { vec![] },
    ///             peak: if (2..=5).contains(&seq) { 2.0 } else { 0.0 },
    ///         })
    ///         .to_stream(scope)
    ///         .container::<Vec<_>>()
    ///         .incidents(
    ///             Arc::new(IncidentConfig::default()),
    ///             Arc::new(Groups::default()),
    ///             Arc::new(FeatureIndex::numbered(3)),
    ///         )
    ///         .inspect(move |e| sink.lock().unwrap().push((e.kind, e.seq, e.incident.id.clone())));
    /// });
    /// assert_eq!(
    ///     *events.lock().unwrap(),
    ///     vec![
    ///         (EventKind::Open, 4, "feature_1#2".to_string()),
    ///         (EventKind::Resolve, 10, "feature_1#2".to_string()),
    ///     ]
    /// );
    /// ```
    fn incidents(
        self,
        config: Arc<IncidentConfig>,
        groups: Arc<Groups>,
        names: Arc<FeatureIndex>,
    ) -> Stream<'s, IncidentEvent>;
}

impl<'s> IncidentOps<'s> for Stream<'s, FrameResult> {
    fn incidents(
        self,
        config: Arc<IncidentConfig>,
        groups: Arc<Groups>,
        names: Arc<FeatureIndex>,
    ) -> Stream<'s, IncidentEvent> {
        let scope = self.scope();
        let feeds_metadata = scope.index() == 0;
        let ticks = self
            .clone()
            .map(|r: FrameResult| (r.seq, frame_ms(&r.meta)))
            .broadcast();
        let hits: VecCollection<'s, Time, (u32, (Seq, u32, i64))> = self
            .flat_map(|r: FrameResult| {
                let (seq, ms) = (r.seq, frame_ms(&r.meta));
                r.hits
                    .into_iter()
                    .map(move |h| ((h.feature, (seq, h.score.to_bits(), ms)), seq, 1isize))
            })
            .as_collection();
        let rows: Vec<(u32, String)> = if feeds_metadata {
            groups.rows.clone()
        } else {
            Vec::new()
        };
        let metadata: VecCollection<'s, Time, (u32, String)> = rows
            .into_iter()
            .map(|row| (row, Time::default(), 1isize))
            .to_stream(scope)
            .as_collection();
        let hit = |group: String, feature: u32, &(seq, score, ms): &(Seq, u32, i64)| Fact::Hit {
            group,
            seq,
            feature,
            score,
            ms,
        };
        let grouped = hits
            .clone()
            .join_map(metadata.clone(), move |&f, v, g| hit(g.clone(), f, v))
            .concat(
                hits.antijoin(metadata.map(|(f, _)| f).distinct())
                    .map(move |(f, v)| hit(Groups::ungrouped(&names, f), f, &v)),
            );
        let facts = grouped.inner;
        let by_group = Exchange::new(|(fact, _, _): &(Fact, Time, isize)| fact.group().hashed());
        let events = facts.binary_frontier(
            ticks,
            by_group,
            Pipeline,
            "IncidentTracker",
            move |cap, _info| {
                let mut tracker = Tracker::new(config);
                let mut due: BTreeMap<Time, Due> = BTreeMap::new();
                // Held just past the last completed frame (so that it delays nothing), for
                // the resolves at the end of the input.
                let mut hold = Some(cap);
                let mut last: Option<(Time, i64)> = None;
                move |(facts, facts_frontier), (ticks, ticks_frontier), output| {
                    facts.for_each_stamp(|cap, data| {
                        for batch in data {
                            for (fact, time, diff) in batch.drain(..) {
                                due.entry(time)
                                    .or_insert_with(|| Due::new(cap.delayed(&time, 0)))
                                    .facts
                                    .push((fact, diff));
                            }
                        }
                    });
                    ticks.for_each_stamp(|cap, data| {
                        for batch in data {
                            for (seq, ms) in batch.drain(..) {
                                due.entry(seq)
                                    .or_insert_with(|| Due::new(cap.delayed(&seq, 0)))
                                    .tick = Some(ms);
                            }
                        }
                    });
                    while let Some(entry) = due.first_entry() {
                        let time = *entry.key();
                        if facts_frontier.less_equal(&time) || ticks_frontier.less_equal(&time) {
                            break;
                        }
                        let Due { cap, facts, tick } = entry.remove();
                        if let Some(ms) = tick {
                            last = Some((time, ms));
                        }
                        let events = step(&mut tracker, time, facts, tick);
                        if !events.is_empty() {
                            output.session(&cap).give_iterator(events.into_iter());
                        }
                        if let Some(h) = hold.as_mut() {
                            if *h.time() <= time {
                                h.downgrade(&(time + 1));
                            }
                        }
                    }
                    if due.is_empty() && facts_frontier.is_empty() && ticks_frontier.is_empty() {
                        if let Some(h) = hold.take() {
                            let events = match last {
                                Some((seq, ms)) => tracker.end_of_input(seq, ms),
                                None => Vec::new(),
                            };
                            if !events.is_empty() {
                                output.session(&h).give_iterator(events.into_iter());
                            }
                        }
                    }
                }
            },
        );
        in_order_on_worker_zero(events)
    }
}

impl Due {
    fn new(cap: Capability<Time>) -> Due {
        Due {
            cap,
            facts: Vec::new(),
            tick: None,
        }
    }
}

/// One completed frame for the tracker: the groups' windows, then the frame's tick.
fn step(
    tracker: &mut Tracker,
    time: Time,
    mut facts: Vec<(Fact, isize)>,
    tick: Option<i64>,
) -> Vec<IncidentEvent> {
    // A hit the antijoin gave its feature's own group before the metadata reached the
    // join comes back retracted at the same time: only the net facts count.
    differential_dataflow::consolidation::consolidate(&mut facts);
    let mut windows: BTreeMap<String, GroupWindow> = BTreeMap::new();
    for (fact, diff) in facts {
        match fact {
            // Verdicts are final and the metadata is fixed at time 0, so once
            // consolidated every hit is there once, with a positive count.
            Fact::Hit {
                group,
                seq,
                feature,
                score,
                ms,
            } if diff > 0 => {
                windows
                    .entry(group)
                    .or_insert_with(|| GroupWindow {
                        seq,
                        rank: 0,
                        ms,
                        hits: Vec::new(),
                    })
                    .hits
                    .push((feature, f32::from_bits(score)));
            }
            Fact::Hit { .. } => {}
        }
    }
    for (group, window) in windows {
        tracker.window(&group, window);
    }
    match tick {
        Some(ms) => tracker.tick(time, ms),
        None => Vec::new(),
    }
}

/// The events on worker 0, released a frame at a time once the frontier passes it, sorted
/// by incident id and kind: the order does not depend on which worker found them first.
fn in_order_on_worker_zero(events: Stream<'_, IncidentEvent>) -> Stream<'_, IncidentEvent> {
    events.unary_frontier(
        Exchange::new(|_: &IncidentEvent| 0),
        "IncidentOrder",
        |_cap, _info| {
            let mut due: BTreeMap<Time, (Capability<Time>, Vec<IncidentEvent>)> = BTreeMap::new();
            move |(input, frontier), output| {
                input.for_each_stamp(|cap, data| {
                    // By the time they were sent at: the frame's seq, or just after the
                    // last frame for the resolves at the end of the input.
                    let Some(&time) = cap.least() else {
                        return;
                    };
                    for batch in data {
                        for e in batch.drain(..) {
                            due.entry(time)
                                .or_insert_with(|| (cap.delayed(&time, 0), Vec::new()))
                                .1
                                .push(e);
                        }
                    }
                });
                while let Some(entry) = due.first_entry() {
                    if frontier.less_equal(entry.key()) {
                        break;
                    }
                    let (cap, mut events) = entry.remove();
                    events.sort_by(|a, b| (&a.incident.id, a.kind).cmp(&(&b.incident.id, b.kind)));
                    output.session(&cap).give_iterator(events.into_iter());
                }
            }
        },
    )
}
