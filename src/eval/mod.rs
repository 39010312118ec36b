//! Evaluation of detectors on labelled data sets (`tidewatch evaluate`): each entity's
//! detector is fitted on its training data only, scores its test data through the same
//! [`Detector`] code the dataflow runs, and its verdicts and scores are judged against
//! the labels ([`metrics`]), per entity and pooled over all entities.
//!
//! Evaluation calls the detectors directly, in a plain loop per entity (entities in
//! parallel), rather than through a timely dataflow: a data set is thousands of short
//! series, and the verdicts are the detectors' whatever carries the windows to them.

pub mod data;
pub mod metrics;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{ensure, Context};
use serde_json::{json, Value};

use crate::detect::{
    Cusum, CusumConfig, Detector, Envelope, EnvelopeConfig, EnvelopeModel, Ewma, EwmaConfig,
    Forecast, ForecastConfig, ForecastModel, Neighbour, NeighbourConfig, NeighbourModel, Pca,
    PcaConfig, PcaModel, Scores,
};
use data::{DataSet, Entity};
use metrics::{pr_auc, roc_auc, Report, Tally};

/// The detector to evaluate and its settings. Every kind's scores are divided by its
/// threshold, so that a frame is flagged at a score of 1 whatever the detector.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DetectorKind {
    /// Forecasting residuals with Telemanom's dynamic threshold ([`Forecast`]).
    Forecast(ForecastConfig),
    /// EWMA z-scores ([`Ewma`]), warmed on the training data, flagged at `z`.
    Ewma {
        /// The EWMA's settings.
        config: EwmaConfig,
        /// Threshold on the z-score.
        z: f32,
    },
    /// Two-sided CUSUM ([`Cusum`]), warmed on the training data; its scores are already
    /// relative to its decision interval.
    Cusum(CusumConfig),
    /// PCA reconstruction error ([`Pca`]), fitted on the training data.
    Pca(PcaConfig),
    /// Nearest-neighbour distance ([`Neighbour`]) to the training windows and the test
    /// stream's earlier ones.
    Neighbour(NeighbourConfig),
    /// Rolling statistics' distance outside the range they had in the training data and
    /// earlier in the test stream ([`Envelope`]).
    Envelope(EnvelopeConfig),
}

impl DetectorKind {
    /// Its name and settings, for reports.
    pub fn describe(&self) -> Value {
        match self {
            DetectorKind::Forecast(c) => json!({ "detector": "forecast", "config": c }),
            DetectorKind::Ewma { config, z } => json!({
                "detector": "ewma",
                "config": { "alpha": config.alpha, "warmup": config.warmup, "window": config.window, "z": z },
            }),
            DetectorKind::Cusum(c) => json!({ "detector": "cusum", "config": c }),
            DetectorKind::Pca(c) => json!({ "detector": "pca", "config": c }),
            DetectorKind::Neighbour(c) => json!({ "detector": "neighbour", "config": c }),
            DetectorKind::Envelope(c) => json!({ "detector": "envelope", "config": c }),
        }
    }
}

/// What one entity's evaluation gave.
#[derive(Clone, Debug)]
pub struct EntityResult {
    /// The entity's name.
    pub name: String,
    /// Its figures.
    pub report: Report,
    /// Its verdict counts, for pooling.
    pub tally: Tally,
    /// One score per test row: the largest over its value features (1: the threshold).
    pub scores: Vec<f32>,
    /// One verdict per test row.
    pub flags: Vec<bool>,
    /// The labels, one per test row.
    pub labels: Vec<bool>,
    /// Value columns whose training data never moved (their thresholds rest on a floor).
    pub flat: Vec<usize>,
    /// Per value column, the forecaster's error on the held-out end of the training data
    /// ([`crate::detect::FeatureFit::holdout`]; forecast only, NaN when not judged).
    pub holdout: Vec<f32>,
}

/// A whole data set's evaluation.
#[derive(Clone, Debug)]
pub struct Evaluation {
    /// Per entity, in the data set's order.
    pub entities: Vec<EntityResult>,
    /// Pooled over all entities: counts summed, areas over all frames' scores.
    pub pooled: Report,
}

/// Windows per call to the detector.
const BATCH: usize = 1024;

/// Scores the rows `first..` of `rows` (row-major, `width` columns, the first `scored`
/// of them scored and the rest context) with `detector`, which sees every window of its
/// length, stride 1, from the first row on (so that a stateful detector is warmed by the
/// rows before `first`): the largest score per row.
fn score_rows(
    detector: &mut dyn Detector,
    rows: &[f32],
    width: usize,
    scored: usize,
    first: usize,
) -> Vec<f32> {
    let w = detector.needs().window;
    let n = rows.len() / width;
    assert!(
        first + 1 >= w,
        "rows before the first scored must fill a window"
    );
    let mut out = Vec::with_capacity(n - first);
    let mut batch = Vec::with_capacity(BATCH * w * width);
    let mut ends = Vec::with_capacity(BATCH);
    let mut flush = |batch: &mut Vec<f32>, ends: &mut Vec<usize>, out: &mut Vec<f32>| {
        if ends.is_empty() {
            return;
        }
        let scores = match detector.score(batch) {
            Scores::All(s) => s,
            Scores::Compacted(_) => unreachable!("evaluation runs CPU detectors"),
        };
        for (k, &end) in ends.iter().enumerate() {
            if end >= first {
                let s = &scores[k * scored..(k + 1) * scored];
                out.push(s.iter().copied().fold(f32::NEG_INFINITY, f32::max));
            }
        }
        batch.clear();
        ends.clear();
    };
    for end in w - 1..n {
        batch.extend_from_slice(&rows[(end + 1 - w) * width..(end + 1) * width]);
        ends.push(end);
        if ends.len() == BATCH {
            flush(&mut batch, &mut ends, &mut out);
        }
    }
    flush(&mut batch, &mut ends, &mut out);
    out
}

/// The columns `values` of `m`, row-major.
fn columns(m: &crate::sources::Matrix, values: &[usize]) -> Vec<f32> {
    (0..m.rows)
        .flat_map(|r| values.iter().map(move |&c| m.values[r * m.cols + c]))
        .collect()
}

/// Fits `kind` on `entity`'s training rows (columns `values`), scores its test rows.
pub fn evaluate_entity(
    entity: &Entity,
    values: &[usize],
    kind: &DetectorKind,
) -> anyhow::Result<EntityResult> {
    let width = values.len();
    if let Some(&c) = values.iter().find(|&&c| c >= entity.train.cols) {
        anyhow::bail!(
            "{}: no column {c} (it has {})",
            entity.name,
            entity.train.cols
        );
    }
    let train = columns(&entity.train, values);
    // the columns that are not values are context: inputs of a forecaster that weighs
    // them, never scored
    let context: Vec<usize> = match kind {
        DetectorKind::Forecast(c) if c.context_lags > 0 => (0..entity.train.cols)
            .filter(|c| !values.contains(c))
            .collect(),
        _ => vec![],
    };
    let all: Vec<usize> = values.iter().chain(&context).copied().collect();
    let mut rows = columns(&entity.train, &all);
    rows.extend(columns(&entity.test, &all));
    let first = entity.train.rows;
    let mut holdout = vec![];
    let (mut detector, divisor, flat): (Box<dyn Detector>, f32, Vec<usize>) = match kind {
        DetectorKind::Forecast(config) => {
            let model = ForecastModel::fit_with_context(
                &train,
                width,
                &columns(&entity.train, &context),
                context.len(),
                *config,
            )
            .with_context(|| format!("{}: fitting the forecaster", entity.name))?;
            let flat = model.flat_features().iter().map(|&j| values[j]).collect();
            holdout = model.features.iter().map(|f| f.holdout).collect();
            let w = model.window();
            // the test file does not continue the training file: its first row is no jump
            let detector = Forecast::new(Arc::new(model), 0..width);
            let detector = match first.checked_sub(w - 1) {
                Some(window) => detector.with_break_at(window),
                None => detector,
            };
            (Box::new(detector), 1.0, flat)
        }
        DetectorKind::Ewma { config, z } => (Box::new(Ewma::new(0..width, *config)), *z, vec![]),
        DetectorKind::Cusum(config) => (Box::new(Cusum::new(0..width, *config)), 1.0, vec![]),
        DetectorKind::Pca(config) => {
            let model = PcaModel::fit(&train, width, *config)
                .with_context(|| format!("{}: fitting PCA", entity.name))?;
            (Box::new(Pca::new(Arc::new(model), 0..width)), 1.0, vec![])
        }
        DetectorKind::Neighbour(config) => {
            let model = NeighbourModel::fit(&train, width, *config)
                .with_context(|| format!("{}: fitting the neighbour references", entity.name))?;
            let flat = (model.features.iter().enumerate())
                .filter(|(_, f)| f.train.iter().all(|&v| v == f.train[0]))
                .map(|(j, _)| values[j])
                .collect();
            // The stream starts with the training rows, which are the references already,
            // and the test file does not continue the training file: the first window
            // compared is the test's first, and its first `window - 1` rows score 0.
            let detector = Neighbour::new(Arc::new(model), 0..width).starting_at(first);
            (Box::new(detector), 1.0, flat)
        }
        DetectorKind::Envelope(config) => {
            let model = EnvelopeModel::fit(&train, width, *config)
                .with_context(|| format!("{}: fitting the envelopes", entity.name))?;
            let flat = (model.features.iter().enumerate())
                .filter(|(_, f)| f.flat)
                .map(|(j, _)| values[j])
                .collect();
            // The stream starts with the training rows, whose ranges the model holds, and
            // the test file does not continue them: only test rows make a test statistic.
            let detector = Envelope::new(Arc::new(model), 0..width).starting_at_row(first);
            (Box::new(detector), 1.0, flat)
        }
    };
    ensure!(
        first + 1 >= detector.needs().window,
        "{}: {first} training rows do not fill a window of {}",
        entity.name,
        detector.needs().window
    );
    let mut scores = score_rows(detector.as_mut(), &rows, all.len(), width, first);
    scores.iter_mut().for_each(|s| *s /= divisor);
    let flags: Vec<bool> = scores.iter().map(|&s| s >= 1.0).collect();
    let report = Report::of(&entity.labels, &flags, &scores);
    Ok(EntityResult {
        name: entity.name.clone(),
        tally: Tally::new(&entity.labels, &flags),
        report,
        scores,
        flags,
        labels: entity.labels.clone(),
        flat,
        holdout,
    })
}

/// Evaluates `kind` on every entity of `data` (columns `values`, else the data set's
/// default, else all), `threads` entities at a time.
pub fn evaluate(
    data: &DataSet,
    values: Option<&[usize]>,
    kind: &DetectorKind,
    threads: usize,
) -> anyhow::Result<Evaluation> {
    let all: Vec<usize>;
    let values = match (values, &data.default_values) {
        (Some(v), _) => v,
        (None, Some(v)) => v.as_slice(),
        (None, None) => {
            all = (0..data.entities[0].train.cols).collect();
            all.as_slice()
        }
    };
    ensure!(!values.is_empty(), "no value columns to score");
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<anyhow::Result<EntityResult>>>> =
        Mutex::new((0..data.entities.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, data.entities.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(entity) = data.entities.get(i) else {
                    break;
                };
                let r = evaluate_entity(entity, values, kind);
                results.lock().unwrap()[i] = Some(r);
            });
        }
    });
    let entities = results
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|r| r.expect("every entity evaluated"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut tally = Tally::default();
    let (mut scores, mut labels) = (Vec::new(), Vec::new());
    for e in &entities {
        tally.add(&e.tally);
        scores.extend_from_slice(&e.scores);
        labels.extend_from_slice(&e.labels);
    }
    let pooled = Report::new(&tally, roc_auc(&scores, &labels), pr_auc(&scores, &labels));
    Ok(Evaluation { entities, pooled })
}
