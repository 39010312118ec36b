//! Figures of merit of binary verdicts and of scores against 0/1 labels per frame.
//!
//! Three ways of counting verdicts, because the literature uses all three and they
//! disagree by a lot on long labelled segments:
//! - point-wise: every frame counts once;
//! - point-adjusted: a labelled segment with any flagged frame counts as wholly flagged
//!   (OmniAnomaly, TranAD); frames outside segments count as they are;
//! - event-level in Telemanom's manner: a labelled segment with any flagged frame is one
//!   true positive, one without is one false negative, and a maximal run of flagged
//!   frames that touches no labelled frame is one false positive.
//!
//! Scores are judged without a threshold by ROC-AUC and PR-AUC (average precision).

use std::ops::Range;

use serde::Serialize;

/// Confusion counts of frames.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Labelled frames flagged.
    pub tp: u64,
    /// Normal frames flagged.
    pub fp: u64,
    /// Labelled frames not flagged.
    pub fn_: u64,
    /// Normal frames not flagged.
    pub tn: u64,
}

/// `a / b`, 0 when `b` is 0 (nothing flagged: precision 0; nothing labelled: recall 0).
fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Harmonic mean of precision and recall, 0 when both are 0.
pub fn f1(precision: f64, recall: f64) -> f64 {
    if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    }
}

impl Counts {
    /// Adds `other`'s counts (pooling entities).
    pub fn add(&mut self, other: &Counts) {
        self.tp += other.tp;
        self.fp += other.fp;
        self.fn_ += other.fn_;
        self.tn += other.tn;
    }

    /// `tp / (tp + fp)`.
    pub fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }

    /// `tp / (tp + fn)`.
    pub fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }

    /// F1 of [`Counts::precision`] and [`Counts::recall`].
    pub fn f1(&self) -> f64 {
        f1(self.precision(), self.recall())
    }

    /// Share of normal frames flagged: `fp / (fp + tn)`.
    pub fn false_alarm_rate(&self) -> f64 {
        ratio(self.fp, self.fp + self.tn)
    }
}

/// Event counts in Telemanom's manner (see the module's documentation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EventCounts {
    /// Labelled segments with at least one flagged frame.
    pub tp: u64,
    /// Maximal runs of flagged frames that touch no labelled frame.
    pub fp: u64,
    /// Labelled segments with no flagged frame.
    pub fn_: u64,
}

impl EventCounts {
    /// Adds `other`'s counts.
    pub fn add(&mut self, other: &EventCounts) {
        self.tp += other.tp;
        self.fp += other.fp;
        self.fn_ += other.fn_;
    }

    /// `tp / (tp + fp)`.
    pub fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }

    /// `tp / (tp + fn)`.
    pub fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }

    /// F1 of [`EventCounts::precision`] and [`EventCounts::recall`].
    pub fn f1(&self) -> f64 {
        f1(self.precision(), self.recall())
    }
}

/// The maximal runs of `true` in `flags`, in order.
pub fn segments(flags: &[bool]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, &f) in flags.iter().enumerate() {
        match (f, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                out.push(s..i);
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push(s..flags.len());
    }
    out
}

/// Point-wise counts of `preds` against `labels` (same length).
pub fn point_counts(labels: &[bool], preds: &[bool]) -> Counts {
    assert_eq!(labels.len(), preds.len(), "one verdict per label");
    let mut c = Counts::default();
    for (&l, &p) in labels.iter().zip(preds) {
        match (l, p) {
            (true, true) => c.tp += 1,
            (false, true) => c.fp += 1,
            (true, false) => c.fn_ += 1,
            (false, false) => c.tn += 1,
        }
    }
    c
}

/// `preds` with every labelled segment that holds a flagged frame flagged whole.
pub fn point_adjust(labels: &[bool], preds: &[bool]) -> Vec<bool> {
    assert_eq!(labels.len(), preds.len(), "one verdict per label");
    let mut out = preds.to_vec();
    for seg in segments(labels) {
        if preds[seg.clone()].iter().any(|&p| p) {
            out[seg].iter_mut().for_each(|p| *p = true);
        }
    }
    out
}

/// Event counts of `preds` against `labels` in Telemanom's manner.
pub fn event_counts(labels: &[bool], preds: &[bool]) -> EventCounts {
    assert_eq!(labels.len(), preds.len(), "one verdict per label");
    let mut c = EventCounts::default();
    for seg in segments(labels) {
        if preds[seg].iter().any(|&p| p) {
            c.tp += 1;
        } else {
            c.fn_ += 1;
        }
    }
    for run in segments(preds) {
        if !labels[run].iter().any(|&l| l) {
            c.fp += 1;
        }
    }
    c
}

/// Scores with their labels, highest first, and the numbers of positives and negatives.
type Ranked = (Vec<(f32, bool)>, u64, u64);

/// Scores sorted from the highest, with their labels, for the threshold sweeps below;
/// `None` when one class is missing (no curve to speak of).
fn ranked(scores: &[f32], labels: &[bool]) -> Option<Ranked> {
    assert_eq!(scores.len(), labels.len(), "one score per label");
    let pos = labels.iter().filter(|&&l| l).count() as u64;
    let neg = labels.len() as u64 - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    let mut v: Vec<(f32, bool)> = scores.iter().copied().zip(labels.iter().copied()).collect();
    // NaN would make the order meaningless: it ranks lowest, as "no evidence"
    v.sort_unstable_by(|a, b| {
        let key = |s: f32| if s.is_nan() { f32::NEG_INFINITY } else { s };
        key(b.0).total_cmp(&key(a.0))
    });
    Some((v, pos, neg))
}

/// Walks the ranked scores one tie group at a time: `step(tp, fp)` after each group,
/// so that tied scores move the curve in one step (as scikit-learn does).
fn sweep(ranked: &[(f32, bool)], mut step: impl FnMut(u64, u64)) {
    let (mut tp, mut fp) = (0u64, 0u64);
    let mut i = 0;
    while i < ranked.len() {
        let s = ranked[i].0;
        while i < ranked.len() && ranked[i].0.total_cmp(&s).is_eq() {
            if ranked[i].1 {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        step(tp, fp);
    }
}

/// Area under the ROC curve of `scores` (higher: more anomalous) against `labels`, by
/// the trapezoid rule over every distinct score; `None` when one class is missing.
pub fn roc_auc(scores: &[f32], labels: &[bool]) -> Option<f64> {
    let (ranked, pos, neg) = ranked(scores, labels)?;
    let (mut area, mut prev_tp, mut prev_fp) = (0f64, 0u64, 0u64);
    sweep(&ranked, |tp, fp| {
        area += (fp - prev_fp) as f64 * (tp + prev_tp) as f64 / 2.0;
        prev_tp = tp;
        prev_fp = fp;
    });
    Some(area / (pos as f64 * neg as f64))
}

/// Area under the precision-recall curve as average precision (the sum of precision
/// at each distinct score, weighted by the recall it adds; scikit-learn's
/// `average_precision_score`); `None` when one class is missing.
pub fn pr_auc(scores: &[f32], labels: &[bool]) -> Option<f64> {
    let (ranked, pos, _) = ranked(scores, labels)?;
    let (mut ap, mut prev_tp) = (0f64, 0u64);
    sweep(&ranked, |tp, fp| {
        if tp > prev_tp {
            ap += (tp - prev_tp) as f64 / pos as f64 * (tp as f64 / (tp + fp) as f64);
        }
        prev_tp = tp;
    });
    Some(ap)
}

/// The verdict counts of one entity, or of several pooled (summed: runs and segments
/// never cross from one entity into the next).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Point-wise counts.
    pub point: Counts,
    /// Point-adjusted counts.
    pub adjusted: Counts,
    /// Event counts.
    pub events: EventCounts,
}

impl Tally {
    /// The counts of `preds` against `labels`.
    pub fn new(labels: &[bool], preds: &[bool]) -> Tally {
        Tally {
            point: point_counts(labels, preds),
            adjusted: point_counts(labels, &point_adjust(labels, preds)),
            events: event_counts(labels, preds),
        }
    }

    /// Adds `other`'s counts.
    pub fn add(&mut self, other: &Tally) {
        self.point.add(&other.point);
        self.adjusted.add(&other.adjusted);
        self.events.add(&other.events);
    }
}

/// Every figure of one entity or of the pool, plainly named (the JSON of `evaluate`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// Frames scored.
    pub frames: u64,
    /// Frames labelled anomalous.
    pub anomalous_frames: u64,
    /// Point-wise precision.
    pub precision: f64,
    /// Point-wise recall.
    pub recall: f64,
    /// Point-wise F1.
    pub f1: f64,
    /// Point-adjusted precision.
    pub pa_precision: f64,
    /// Point-adjusted recall.
    pub pa_recall: f64,
    /// Point-adjusted F1.
    pub pa_f1: f64,
    /// Labelled segments hit.
    pub event_tp: u64,
    /// Flagged runs touching no label.
    pub event_fp: u64,
    /// Labelled segments missed.
    pub event_fn: u64,
    /// Event-level precision (Telemanom's manner).
    pub event_precision: f64,
    /// Event-level recall.
    pub event_recall: f64,
    /// Event-level F1.
    pub event_f1: f64,
    /// ROC-AUC of the scores; `None` (null) when one class is missing.
    pub roc_auc: Option<f64>,
    /// PR-AUC (average precision) of the scores; `None` when one class is missing.
    pub pr_auc: Option<f64>,
    /// Normal frames flagged.
    pub false_alarms: u64,
    /// Share of normal frames flagged (0.01: 1 %).
    pub false_alarm_rate: f64,
    /// Normal frames flagged per 1,000 normal frames.
    pub false_alarms_per_1000: f64,
}

impl Report {
    /// The figures of `tally` and of the scores' areas.
    pub fn new(tally: &Tally, roc_auc: Option<f64>, pr_auc: Option<f64>) -> Report {
        let (p, a, e) = (&tally.point, &tally.adjusted, &tally.events);
        Report {
            frames: p.tp + p.fp + p.fn_ + p.tn,
            anomalous_frames: p.tp + p.fn_,
            precision: p.precision(),
            recall: p.recall(),
            f1: p.f1(),
            pa_precision: a.precision(),
            pa_recall: a.recall(),
            pa_f1: a.f1(),
            event_tp: e.tp,
            event_fp: e.fp,
            event_fn: e.fn_,
            event_precision: e.precision(),
            event_recall: e.recall(),
            event_f1: e.f1(),
            roc_auc,
            pr_auc,
            false_alarms: p.fp,
            false_alarm_rate: p.false_alarm_rate(),
            false_alarms_per_1000: 1000.0 * p.false_alarm_rate(),
        }
    }

    /// The figures of one entity's `labels`, verdicts and scores.
    pub fn of(labels: &[bool], preds: &[bool], scores: &[f32]) -> Report {
        Report::new(
            &Tally::new(labels, preds),
            roc_auc(scores, labels),
            pr_auc(scores, labels),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Vec<bool> {
        s.bytes().map(|c| c == b'1').collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn runs_of_flags() {
        assert_eq!(segments(&b("0110001")), vec![1..3, 6..7]);
        assert_eq!(segments(&b("1111")), vec![0..4]);
        assert!(segments(&b("000")).is_empty());
    }

    /// labels 0011100011, preds 0100100001: tp 2 (frames 4, 9), fp 1 (frame 1),
    /// fn 3 (2, 3, 8), tn 4 → P 2/3, R 2/5, F1 1/2; FAR 1/5.
    #[test]
    fn point_wise_by_hand() {
        let (l, p) = (b("0011100011"), b("0100100001"));
        let c = point_counts(&l, &p);
        assert_eq!(
            c,
            Counts {
                tp: 2,
                fp: 1,
                fn_: 3,
                tn: 4
            }
        );
        assert!(close(c.precision(), 2.0 / 3.0));
        assert!(close(c.recall(), 0.4));
        assert!(close(c.f1(), 0.5));
        assert!(close(c.false_alarm_rate(), 0.2));
    }

    /// Both segments hold a flag, so both are flagged whole: tp 5, fp 1 → P 5/6, R 1.
    #[test]
    fn point_adjusted_by_hand() {
        let (l, p) = (b("0011100011"), b("0100100001"));
        assert_eq!(point_adjust(&l, &p), b("0111100011"));
        let c = Tally::new(&l, &p).adjusted;
        assert_eq!((c.tp, c.fp, c.fn_, c.tn), (5, 1, 0, 4));
        assert!(close(c.f1(), 2.0 * (5.0 / 6.0) / (5.0 / 6.0 + 1.0)));
        // a segment without a flag stays missed
        assert_eq!(point_adjust(&b("0110"), &b("1000")), b("1000"));
    }

    /// Segments [2,5) hit, [8,10) hit, [12,13) missed; runs {0}, {4}, {6,7}, {9}: {0}
    /// and {6,7} touch no label → tp 2, fp 2, fn 1; a run overlapping a segment's edge
    /// is no false positive.
    #[test]
    fn events_by_hand() {
        let l = b("0011100011001");
        let p = b("1000101101000");
        let e = event_counts(&l, &p);
        assert_eq!(
            e,
            EventCounts {
                tp: 2,
                fp: 2,
                fn_: 1
            }
        );
        assert!(close(e.precision(), 0.5));
        assert!(close(e.recall(), 2.0 / 3.0));
        let edge = event_counts(&b("0011"), &b("0110"));
        assert_eq!(
            edge,
            EventCounts {
                tp: 1,
                fp: 0,
                fn_: 0
            }
        );
        // nothing flagged: precision and recall 0, not NaN
        let none = event_counts(&b("01"), &b("00"));
        assert_eq!(
            (none.precision(), none.recall(), none.f1()),
            (0.0, 0.0, 0.0)
        );
    }

    /// scores 0.1 0.4 0.35 0.8 with labels 0 0 1 1 (scikit-learn's example): ROC-AUC
    /// 0.75, average precision 0.8333…
    #[test]
    fn areas_by_hand() {
        let s = [0.1, 0.4, 0.35, 0.8];
        let l = b("0011");
        assert!(close(roc_auc(&s, &l).unwrap(), 0.75));
        assert!(close(pr_auc(&s, &l).unwrap(), 5.0 / 6.0));
        // perfect and reversed rankings
        assert!(close(roc_auc(&[0.0, 1.0], &b("01")).unwrap(), 1.0));
        assert!(close(roc_auc(&[1.0, 0.0], &b("01")).unwrap(), 0.0));
        // ties: all scores equal → the diagonal, AP = the positive share
        assert!(close(roc_auc(&[1.0; 4], &l).unwrap(), 0.5));
        assert!(close(pr_auc(&[1.0; 4], &l).unwrap(), 0.5));
        // one class only: no curve
        assert_eq!(roc_auc(&[0.1, 0.2], &b("00")), None);
        assert_eq!(pr_auc(&[0.1, 0.2], &b("11")), None);
    }

    /// Pooling sums counts; the report names the figures of the pool.
    #[test]
    fn pooled_report() {
        let mut t = Tally::new(&b("0011"), &b("0010"));
        t.add(&Tally::new(&b("1000"), &b("0001")));
        let r = Report::new(&t, Some(0.5), None);
        assert_eq!((r.frames, r.anomalous_frames), (8, 3));
        assert_eq!((r.event_tp, r.event_fp, r.event_fn), (1, 1, 1));
        assert!(close(r.precision, 0.5) && close(r.recall, 1.0 / 3.0));
        assert!(close(r.pa_recall, 2.0 / 3.0));
        assert_eq!(r.false_alarms, 1);
        assert!(close(r.false_alarm_rate, 0.2) && close(r.false_alarms_per_1000, 200.0));
    }
}
