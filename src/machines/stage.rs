//! The machines pipeline as a dataflow stage: records → type encoding (a differential
//! join with the type table) → the eleven features → the classifier → verdicts.
//!
//! ```text
//! frames ─► (type, seq) inserted at seq, retracted at seq + 1 ─┐
//!        └► type table rows (worker 0): at time 0, and each    ├─ join ─► (seq, encoding)
//!           change at the first frame that sees it ────────────┘                │
//! frames ─────────────────────────────────────► worker 0: frame + its encoding ◄┘
//!                                                 ─► features ─► trees ─► verdict
//! ```
//!
//! The table is a collection like the records, so a reloaded table is a change to it
//! and the join sends the records from then on with the new encoding. A record lives in
//! the join for one tick of logical time only: the join keeps no history of records, and
//! a later table change re-encodes none of the records already judged.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use differential_dataflow::{AsCollection, VecCollection};
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::Capability;

use super::record::MachineRecord;
use super::table::{LiveTable, Rows, TypeCode};
use super::MachinesModel;
use crate::ops::{Stream, Time};
use crate::types::{Frame, FrameResult, Hit, Seq};

/// The failure verdicts of machine records.
pub trait MachineOps<'s> {
    /// One verdict per record whose type the table knows, on worker 0 in record order: a
    /// failure is one hit (feature 0) whose score is the probability, at or over
    /// `threshold`. A record of a type the table lacks is logged and gets no verdict.
    /// Every frame has a seq of its own, as the runtime's sources number them: the join
    /// and the pairing go by seq.
    fn machine_verdicts(
        self,
        model: Arc<MachinesModel>,
        table: Arc<LiveTable>,
        threshold: f32,
    ) -> Stream<'s, FrameResult>;
}

impl<'s> MachineOps<'s> for Stream<'s, Frame> {
    fn machine_verdicts(
        self,
        model: Arc<MachinesModel>,
        table: Arc<LiveTable>,
        threshold: f32,
    ) -> Stream<'s, FrameResult> {
        let feeds = self.scope().index() == 0;
        let rows = table_rows(self.clone(), table, feeds);
        let records: VecCollection<'s, Time, (TypeCode, Seq)> = self
            .clone()
            .flat_map(|f: Frame| {
                let seq = f.seq;
                MachineRecord::of_frame(&f).map(|(code, _)| ((code, seq), seq, 1isize))
            })
            .as_collection();
        let alive = records
            .clone()
            .concat(records.delay(|t: &Time| t + 1).negate());
        let encoded = alive.join_map(rows, |_code, &seq, &bits| (seq, bits)).inner;
        self.binary_frontier(
            encoded,
            Exchange::new(|_: &Frame| 0),
            Exchange::new(|_: &((Seq, u64), Time, isize)| 0),
            "MachineVerdicts",
            move |_cap, _info| {
                let mut frames: BTreeMap<Seq, (Capability<Time>, Frame)> = BTreeMap::new();
                let mut encodings: HashMap<Seq, BTreeMap<u64, isize>> = HashMap::new();
                move |(input, frames_frontier), (joined, joined_frontier), output| {
                    input.for_each_stamp(|cap, data| {
                        let held = cap.retain_least(0).expect("stamped input");
                        for batch in data {
                            for f in batch.drain(..) {
                                let at = held.delayed(&f.seq.max(*held.time()));
                                frames.insert(f.seq, (at, f));
                            }
                        }
                    });
                    joined.for_each_stamp(|_cap, data| {
                        for batch in data {
                            // a record's encoding is what the join says at the record's
                            // own time; later times only retract it
                            for ((seq, bits), time, diff) in batch.drain(..) {
                                if time == seq {
                                    *encodings.entry(seq).or_default().entry(bits).or_default() +=
                                        diff;
                                }
                            }
                        }
                    });
                    while let Some(entry) = frames.first_entry() {
                        let seq = *entry.key();
                        if frames_frontier.less_equal(&seq) || joined_frontier.less_equal(&seq) {
                            break;
                        }
                        let (cap, frame) = entry.remove();
                        let enc = encodings
                            .remove(&seq)
                            .and_then(|e| e.into_iter().find(|&(_, n)| n > 0))
                            .map(|(bits, _)| f64::from_bits(bits));
                        let Some((code, sensors)) = MachineRecord::of_frame(&frame) else {
                            tracing::warn!(seq, "not a machine record: no verdict");
                            continue;
                        };
                        let Some(enc) = enc else {
                            let t = char::from_u32(code).unwrap_or('?');
                            tracing::warn!(seq, machine_type = %t, "type not in the type table: no verdict");
                            continue;
                        };
                        let v = model.verdict(enc, &sensors, threshold);
                        let hits = if v.failure {
                            vec![Hit {
                                feature: 0,
                                score: v.probability,
                            }]
                        } else {
                            Vec::new()
                        };
                        output.session(&cap).give(FrameResult {
                            seq,
                            meta: frame.meta,
                            hits,
                            peak: v.probability,
                        });
                    }
                    // encodings whose frame went by (none, unless a frame was not a record)
                    if let Some(&first) = frames.keys().next() {
                        encodings.retain(|&s, _| s >= first);
                    }
                }
            },
        )
    }
}

/// The type table as a collection `(type, encoding bits)`, fed by worker 0: its rows at
/// time 0, then, whenever the table changed, the change at the time of the first frame
/// that finds it changed.
fn table_rows<'s>(
    frames: Stream<'s, Frame>,
    table: Arc<LiveTable>,
    feeds: bool,
) -> VecCollection<'s, Time, (TypeCode, u64)> {
    frames
        .unary(Pipeline, "MachineTypes", move |cap, _info| {
            let mut first = Some(cap);
            let (mut version, mut shown) = (None, Arc::new(Rows::new()));
            move |input, output| {
                // the updates since the table last sent, at `time`
                let mut changes = |time: Time| {
                    let (v, rows) = table.current();
                    if version == Some(v) {
                        return Vec::new();
                    }
                    version = Some(v);
                    let out = diff(&shown, &rows, time);
                    shown = rows;
                    out
                };
                if let Some(cap) = first.take() {
                    if feeds {
                        output.session(&cap).give_iterator(changes(0).into_iter());
                    }
                }
                input.for_each_stamp(|cap, data| {
                    data.for_each(|batch| batch.clear());
                    if feeds {
                        table.refresh();
                        let time = *cap.retain_least(0).expect("stamped input").time();
                        output
                            .session(&cap)
                            .give_iterator(changes(time).into_iter());
                    }
                });
            }
        })
        .as_collection()
}

/// The updates that turn `old` into `new`, at `time`.
fn diff(old: &Rows, new: &Rows, time: Time) -> Vec<((TypeCode, u64), Time, isize)> {
    let mut out = Vec::new();
    for (&code, &enc) in old {
        if new.get(&code).map(|e| e.to_bits()) != Some(enc.to_bits()) {
            out.push(((code, enc.to_bits()), time, -1));
        }
    }
    for (&code, &enc) in new {
        if old.get(&code).map(|e| e.to_bits()) != Some(enc.to_bits()) {
            out.push(((code, enc.to_bits()), time, 1));
        }
    }
    out
}
