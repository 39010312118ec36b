//! The hysteresis state machine of one worker's groups: opens an incident when a group is
//! anomalous in k of its last n windows, absorbs its windows while it lasts, escalates its
//! severity, and resolves it after m clean windows.
//!
//! Why a plain state machine and not more differential: whether an incident is open at
//! frame t depends on whether it was open at t-1 (that is the hysteresis), a fold over
//! time that differential expresses only as an iteration over the whole history. The
//! inputs that are pure functions of the recent windows (the metadata join, the
//! per-group counts over the last n windows) are computed by differential upstream
//! (`super::operator`); the tracker is fed their changes in time order, one completed
//! frame at a time, so its output depends on the frames alone, never on arrival order.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::config::{IncidentConfig, Severity};
use crate::types::Seq;

/// What a group showed in one anomalous window: its features over the threshold.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupWindow {
    /// The window's last frame.
    pub seq: Seq,
    /// Its place among the scored frames (set by [`Tracker::window`]).
    pub rank: u64,
    /// That frame's time, Unix ms.
    pub ms: i64,
    /// `(feature, score)` of the group's anomalous features, by feature.
    pub hits: Vec<(u32, f32)>,
}

/// An incident as it stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// `<group>#<first seq>`: unique within a run, the same on every rerun of the input.
    pub id: String,
    /// The feature group (`asset/subsystem`, or the feature's name).
    pub group: String,
    /// Its severity so far (never lowered).
    pub severity: Severity,
    /// The first anomalous window's frame, and its time.
    pub start_seq: Seq,
    /// Unix ms of `start_seq`.
    pub start_ms: i64,
    /// The latest anomalous window's frame.
    pub last_seq: Seq,
    /// Unix ms of `last_seq`.
    pub last_ms: i64,
    /// Whether it has resolved.
    pub resolved: bool,
    /// The highest score any of its features reached.
    pub peak: f32,
    /// Each feature that was anomalous in it, with its peak score.
    pub features: BTreeMap<u32, f32>,
    /// Anomalous windows so far.
    pub windows: u64,
    /// The frames of its anomalous windows (the first [`IncidentConfig::max_frames`]).
    pub frames: Vec<Seq>,
    /// Clean windows since the latest anomalous one.
    #[serde(skip)]
    clean: u64,
    /// The first and latest anomalous windows' places among the scored frames: frames
    /// are counted by these, not by seq, which may come from a clock (Kafka, several
    /// ingest points) and leave gaps.
    #[serde(skip)]
    start_rank: u64,
    #[serde(skip)]
    last_rank: u64,
}

impl Incident {
    /// Frames from the first to the latest anomalous window, both included, with
    /// windows `stride` frames apart.
    pub fn duration_frames(&self, stride: u64) -> u64 {
        (self.last_rank - self.start_rank) * stride.max(1) + 1
    }

    /// The `n` features with the highest peak scores, highest first (ties by index).
    pub fn top_features(&self, n: usize) -> Vec<(u32, f32)> {
        let mut top: Vec<(u32, f32)> = self.features.iter().map(|(&f, &s)| (f, s)).collect();
        top.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        top.truncate(n);
        top
    }

    fn absorb(&mut self, w: &GroupWindow, max_frames: usize) {
        self.last_seq = w.seq;
        self.last_rank = w.rank;
        self.last_ms = w.ms;
        self.windows += 1;
        self.clean = 0;
        if self.frames.len() < max_frames {
            self.frames.push(w.seq);
        }
        for &(f, s) in &w.hits {
            let peak = self.features.entry(f).or_insert(s);
            *peak = peak.max(s);
            self.peak = self.peak.max(s);
        }
    }
}

/// What happened to an incident.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The hysteresis confirmed it.
    Open,
    /// Its severity rose.
    Escalate,
    /// It had `resolve_after` clean windows in a row.
    Resolve,
}

/// One incident event, at the frame that caused it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IncidentEvent {
    /// Open, escalate or resolve.
    pub kind: EventKind,
    /// The frame (scored window) at which it happened.
    pub seq: Seq,
    /// That frame's time, Unix ms.
    pub ms: i64,
    /// The incident after the event.
    pub incident: Incident,
    /// A resolve because the input ended ([`Tracker::end_of_input`]), not because of
    /// clean windows. (Never skipped when serialised: events cross processes in
    /// bincode.)
    #[serde(default)]
    pub end_of_input: bool,
}

#[derive(Default)]
struct GroupState {
    /// Anomalous windows not (yet) in an incident, within the last n scored frames.
    pending: VecDeque<GroupWindow>,
    open: Option<Incident>,
}

/// The incidents of the groups one worker owns.
pub struct Tracker {
    config: Arc<IncidentConfig>,
    groups: BTreeMap<String, GroupState>,
    /// Groups with news since the last tick.
    touched: BTreeSet<String>,
    /// Groups with an open incident.
    open: BTreeSet<String>,
    /// Scored frames so far: the next tick's rank.
    rank: u64,
}

impl Tracker {
    /// No group, no incident.
    pub fn new(config: Arc<IncidentConfig>) -> Tracker {
        Tracker {
            config,
            groups: BTreeMap::new(),
            touched: BTreeSet::new(),
            open: BTreeSet::new(),
            rank: 0,
        }
    }

    /// Open incidents.
    pub fn open_incidents(&self) -> usize {
        self.open.len()
    }

    /// `group`'s anomalous window; its frame's [`Tracker::tick`] comes next.
    pub fn window(&mut self, group: &str, mut window: GroupWindow) {
        window.hits.sort_by_key(|&(f, _)| f);
        window.rank = self.rank;
        self.state(group).pending.push_back(window);
    }

    fn state(&mut self, group: &str) -> &mut GroupState {
        if !self.touched.contains(group) {
            self.touched.insert(group.to_string());
        }
        self.groups.entry(group.to_string()).or_default()
    }

    /// A scored frame, after every change at it was given: the groups with news or an
    /// open incident take their step, in group order. Returns the events.
    pub fn tick(&mut self, seq: Seq, ms: i64) -> Vec<IncidentEvent> {
        let c = Arc::clone(&self.config);
        let rank = self.rank;
        self.rank += 1;
        let due: BTreeSet<String> = std::mem::take(&mut self.touched)
            .into_iter()
            .chain(self.open.iter().cloned())
            .collect();
        let mut events = Vec::new();
        for group in due {
            let Some(state) = self.groups.get_mut(&group) else {
                continue;
            };
            let now = state.pending.back().filter(|w| w.seq == seq).cloned();
            if let Some(incident) = state.open.as_mut() {
                state.pending.clear();
                match now {
                    Some(w) => {
                        incident.absorb(&w, c.max_frames);
                        let level = c.severity(
                            incident.peak,
                            incident.features.len(),
                            incident.duration_frames(c.stride),
                        );
                        if level > incident.severity {
                            incident.severity = level;
                            events.push(event(EventKind::Escalate, seq, ms, incident));
                        }
                    }
                    None => {
                        incident.clean += 1;
                        if incident.clean >= c.resolve_after {
                            incident.resolved = true;
                            events.push(event(EventKind::Resolve, seq, ms, incident));
                            state.open = None;
                            self.open.remove(&group);
                        }
                    }
                }
            } else {
                // the last n scored frames: n windows, whatever the seqs' gaps
                while state
                    .pending
                    .front()
                    .is_some_and(|w| w.rank + c.of_windows <= rank)
                {
                    state.pending.pop_front();
                }
                if now.is_some() && state.pending.len() as u64 >= c.open_windows {
                    let first = state.pending.front().expect("an anomalous window now");
                    let mut incident = Incident {
                        id: format!("{group}#{}", first.seq),
                        group: group.clone(),
                        severity: Severity::Info,
                        start_seq: first.seq,
                        start_ms: first.ms,
                        last_seq: first.seq,
                        last_ms: first.ms,
                        resolved: false,
                        peak: f32::NEG_INFINITY,
                        features: BTreeMap::new(),
                        windows: 0,
                        frames: Vec::new(),
                        clean: 0,
                        start_rank: first.rank,
                        last_rank: first.rank,
                    };
                    for w in state.pending.drain(..) {
                        incident.absorb(&w, c.max_frames);
                    }
                    incident.severity = c.severity(
                        incident.peak,
                        incident.features.len(),
                        incident.duration_frames(c.stride),
                    );
                    events.push(event(EventKind::Open, seq, ms, &incident));
                    state.open = Some(incident);
                    self.open.insert(group.clone());
                }
            }
            if state.open.is_none() && state.pending.is_empty() {
                self.groups.remove(&group);
            }
        }
        events
    }

    /// The input has ended after frame `seq` (at `ms`): every incident still open
    /// resolves there, in group order, marked [`IncidentEvent::end_of_input`], so that
    /// a receiver is never left with an incident nothing will close.
    pub fn end_of_input(&mut self, seq: Seq, ms: i64) -> Vec<IncidentEvent> {
        let mut events = Vec::new();
        for group in std::mem::take(&mut self.open) {
            let Some(mut incident) = self.groups.remove(&group).and_then(|s| s.open) else {
                continue;
            };
            incident.resolved = true;
            let mut e = event(EventKind::Resolve, seq, ms, &incident);
            e.end_of_input = true;
            events.push(e);
        }
        events
    }
}

fn event(kind: EventKind, seq: Seq, ms: i64, incident: &Incident) -> IncidentEvent {
    IncidentEvent {
        kind,
        seq,
        ms,
        incident: incident.clone(),
        end_of_input: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives a tracker of one group the way the operator does, a frame `gap` seqs after
    /// the one before. `scores[t]` is the group's score at the t-th frame, `None` when it
    /// is clean.
    fn run_with_gaps(
        config: IncidentConfig,
        scores: &[Option<f32>],
        gap: u64,
    ) -> Vec<(EventKind, Seq, Severity)> {
        let mut t = Tracker::new(Arc::new(config));
        let mut out = Vec::new();
        for (i, s) in scores.iter().enumerate() {
            let seq = i as Seq * gap;
            if let Some(score) = s {
                t.window(
                    "g",
                    GroupWindow {
                        seq,
                        rank: 0,
                        ms: seq as i64,
                        hits: vec![(7, *score)],
                    },
                );
            }
            out.extend(
                t.tick(seq, seq as i64)
                    .into_iter()
                    .map(|e| (e.kind, e.seq, e.incident.severity)),
            );
        }
        out
    }

    fn run(config: IncidentConfig, scores: &[Option<f32>]) -> Vec<(EventKind, Seq, Severity)> {
        run_with_gaps(config, scores, 1)
    }

    /// Seqs from a clock (Kafka, several ingest points) leave gaps between frames: the
    /// hysteresis and the duration still count frames, so the events are the dense run's,
    /// at the frames' own seqs.
    #[test]
    fn frames_are_counted_whatever_the_gaps_between_seqs() {
        let mut scores: Vec<Option<f32>> = vec![None; 3];
        scores.extend([Some(1.0); 6]);
        scores.extend([None; 6]);
        let dense = run(IncidentConfig::default(), &scores);
        let sparse = run_with_gaps(IncidentConfig::default(), &scores, 1_000);
        assert_eq!(dense.len(), 2, "{dense:?}");
        let at = |v: &[(EventKind, Seq, Severity)], gap| -> Vec<_> {
            v.iter().map(|&(k, s, l)| (k, s / gap, l)).collect()
        };
        assert_eq!(at(&dense, 1), at(&sparse, 1_000));
    }

    fn pattern(s: &str) -> Vec<Option<f32>> {
        s.chars().map(|c| (c == 'x').then_some(1.0)).collect()
    }

    #[test]
    fn opens_at_k_of_n_holds_through_gaps_and_resolves_after_m_clean() {
        let c = IncidentConfig::default(); // 3 of 5, resolve after 5
                                           // two anomalous windows in five: never opens
        assert!(run(c.clone(), &pattern("x...x...x...x.....")).is_empty());
        // the third within five opens it; gaps shorter than five keep it open
        let events = run(c.clone(), &pattern("..x.x.x..x...x.........."));
        assert_eq!(
            events,
            vec![
                (EventKind::Open, 6, Severity::Info),
                (EventKind::Resolve, 18, Severity::Info)
            ]
        );
        // a relapse after resolving needs k of n again, and is a new incident
        let events = run(c, &pattern("xxx......x.xxx......"));
        assert_eq!(events.len(), 4, "{events:?}");
        assert_eq!(events[2], (EventKind::Open, 12, Severity::Info));
    }

    #[test]
    fn incidents_open_at_the_end_of_input_resolve_there() {
        let mut t = Tracker::new(Arc::new(IncidentConfig::default()));
        for seq in 0..4 {
            t.window(
                "g",
                GroupWindow {
                    seq,
                    rank: 0,
                    ms: 10 * seq as i64,
                    hits: vec![(7, 2.0)],
                },
            );
            t.tick(seq, 10 * seq as i64);
        }
        assert_eq!(t.open_incidents(), 1);
        let end = t.end_of_input(3, 30);
        assert_eq!(end.len(), 1);
        let e = &end[0];
        assert_eq!(
            (e.kind, e.seq, e.end_of_input),
            (EventKind::Resolve, 3, true)
        );
        assert!(e.incident.resolved);
        assert_eq!(e.incident.last_seq, 3);
        assert_eq!(t.open_incidents(), 0);
        assert!(t.end_of_input(3, 30).is_empty(), "each closes once");
    }

    #[test]
    fn escalates_as_the_score_grows_and_never_lowers() {
        let mut scores: Vec<Option<f32>> = vec![None; 3];
        scores.extend([1.0, 1.0, 1.0, 3.0, 12.0, 1.0].map(Some));
        scores.extend([None; 6]);
        let events = run(IncidentConfig::default(), &scores);
        assert_eq!(
            events,
            vec![
                (EventKind::Open, 5, Severity::Info),
                (EventKind::Escalate, 6, Severity::Warning),
                (EventKind::Escalate, 7, Severity::Critical),
                (EventKind::Resolve, 13, Severity::Critical),
            ]
        );
    }
}
