//! `tidewatch evaluate`: fit a detector per entity of a labelled data set on its
//! training data, score its test data, and report point-wise, point-adjusted and
//! event-level figures, the scores' ROC-AUC and PR-AUC and the false-alarm rate, per
//! entity and pooled (see [`crate::eval`]).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};

use crate::detect::{
    CusumConfig, EnvelopeConfig, EwmaConfig, ForecastConfig, NeighbourConfig, PcaConfig,
};
use crate::eval::data::Layout;
use crate::eval::{self, DetectorKind, Evaluation};

/// Which detector `evaluate` fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DetectorName {
    /// Linear forecasting residuals, EWMA-smoothed, Telemanom's dynamic threshold.
    Forecast,
    /// EWMA z-scores of the values (no training; warmed on the training data).
    Ewma,
    /// Two-sided CUSUM of standardised values (no training; warmed on the training
    /// data).
    Cusum,
    /// PCA reconstruction error of each feature's windows.
    Pca,
    /// Each window's distance to its nearest earlier window (training data or the test
    /// stream's own), over the largest such distance within the training data.
    Neighbour,
    /// The mean, spread and roughness of the last 1, 3, 10, 30 and 100 values against
    /// the range they have had so far (training data and the test stream's own).
    Envelope,
}

/// `tidewatch evaluate` flags.
#[derive(clap::Args, Clone, Debug)]
pub struct EvaluateArgs {
    /// Data set directory: Telemanom's layout (train/, test/, labeled_anomalies.csv) or
    /// the generic one (train/, test/, labels/ with 0/1 per row or start,end ranges).
    #[arg(long)]
    pub data: PathBuf,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Write every test row's score to this CSV file: entity,row,score,flag,label.
    #[arg(long)]
    pub scores: Option<PathBuf>,
    /// The detector to evaluate.
    #[arg(long, value_enum, default_value = "forecast")]
    pub detector: DetectorName,
    /// Columns scored, comma-separated (default: Telemanom's value column 0; every
    /// column of a generic data set). The others are context and are not scored.
    #[arg(long, value_delimiter = ',')]
    pub values: Option<Vec<usize>>,
    /// A detector setting, `KEY=VALUE`; forecast: form (auto, level, diff), lags, alpha, prune, floor, z_min,
    /// z_max, ridge, history, refresh, jump, hold, min_error, context_lags (context frames weighed, 0: none; default 7),
    /// stuck (flat-line detection, true/false), stuck_min
    /// (default 0.05 for Telemanom's layout, whose values are scaled to [-1, 1], else 0); ewma: alpha, warmup, z; cusum: alpha, k, h, warmup; pca: window, variance, floor; neighbour: window, floor, memory, min_distance (default as forecast's min_error); envelope: window, floor, min_change (default as forecast's min_error).
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_param)]
    pub params: Vec<(String, String)>,
    /// Entities evaluated at once (default: the available cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

fn parse_param(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("expected KEY=VALUE, not {s:?}")),
    }
}

/// Reads `--param`s into settings, refusing keys the detector has not.
struct Params(BTreeMap<String, String>);

impl Params {
    fn take<T: std::str::FromStr>(&mut self, key: &str, default: T) -> anyhow::Result<T>
    where
        T::Err: std::fmt::Display,
    {
        match self.0.remove(key) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|e| anyhow::anyhow!("--param {key}={v}: {e}")),
        }
    }

    fn done(self) -> anyhow::Result<()> {
        if let Some(k) = self.0.keys().next() {
            bail!("the detector has no setting {k:?}");
        }
        Ok(())
    }
}

/// The default absolute floor on a departure (the forecaster's `min_error`,
/// `neighbour`'s `min_distance`, `envelope`'s `min_change`) for data in `layout`:
/// Telemanom's data are scaled to [-1, 1], where its minimum error of 0.05 means
/// something; in the generic layout (unit-free) the detector's own `generic`.
fn least_departure(layout: Layout, generic: f32) -> f32 {
    match layout {
        Layout::Telemanom => 0.05,
        Layout::Generic => generic,
    }
}

impl EvaluateArgs {
    /// The detector and settings these flags name, for a data set in `layout`.
    pub fn kind(&self, layout: Layout) -> anyhow::Result<DetectorKind> {
        let mut p = Params(BTreeMap::new());
        for (k, v) in &self.params {
            if p.0.insert(k.clone(), v.clone()).is_some() {
                bail!("--param {k} is given twice");
            }
        }
        let kind = match self.detector {
            DetectorName::Forecast => {
                let d = ForecastConfig::default();
                let telemanom_min_error = least_departure(layout, d.min_error);
                DetectorKind::Forecast(ForecastConfig {
                    form: p.take("form", d.form)?,
                    lags: p.take("lags", d.lags)?,
                    ridge: p.take("ridge", d.ridge)?,
                    alpha: p.take("alpha", d.alpha)?,
                    z_min: p.take("z_min", d.z_min)?,
                    z_max: p.take("z_max", d.z_max)?,
                    z_step: p.take("z_step", d.z_step)?,
                    prune: p.take("prune", d.prune)?,
                    floor: p.take("floor", d.floor)?,
                    history: p.take("history", d.history)?,
                    refresh: p.take("refresh", d.refresh)?,
                    jump: p.take("jump", d.jump)?,
                    hold: p.take("hold", d.hold)?,
                    min_error: p.take("min_error", telemanom_min_error)?,
                    context_lags: p.take("context_lags", d.context_lags)?,
                    stuck: p.take("stuck", d.stuck)?,
                    stuck_min: p.take("stuck_min", d.stuck_min)?,
                })
            }
            DetectorName::Ewma => {
                let d = EwmaConfig::default();
                let config = EwmaConfig {
                    alpha: p.take("alpha", d.alpha)?,
                    warmup: p.take("warmup", d.warmup)?,
                    window: 1,
                };
                if !(config.alpha > 0.0 && config.alpha <= 1.0) {
                    bail!("--param alpha={}: must be in (0, 1]", config.alpha);
                }
                DetectorKind::Ewma {
                    config,
                    z: p.take("z", 6.0)?,
                }
            }
            DetectorName::Cusum => {
                let d = CusumConfig::default();
                let config = CusumConfig {
                    alpha: p.take("alpha", d.alpha)?,
                    k: p.take("k", d.k)?,
                    h: p.take("h", d.h)?,
                    warmup: p.take("warmup", d.warmup)?,
                };
                if !(config.alpha > 0.0 && config.alpha <= 1.0) {
                    bail!("--param alpha={}: must be in (0, 1]", config.alpha);
                }
                if !(config.k >= 0.0
                    && config.h > 0.0
                    && config.k.is_finite()
                    && config.h.is_finite())
                {
                    bail!("--param k must be at least 0 and h over 0");
                }
                DetectorKind::Cusum(config)
            }
            DetectorName::Pca => {
                let d = PcaConfig::default();
                DetectorKind::Pca(PcaConfig {
                    window: p.take("window", d.window)?,
                    variance: p.take("variance", d.variance)?,
                    floor: p.take("floor", d.floor)?,
                })
            }
            DetectorName::Neighbour => {
                let d = NeighbourConfig::default();
                let config = NeighbourConfig {
                    window: p.take("window", d.window)?,
                    floor: p.take("floor", d.floor)?,
                    memory: p.take("memory", d.memory)?,
                    min_distance: p
                        .take("min_distance", least_departure(layout, d.min_distance))?,
                };
                if config.window == 0 {
                    bail!("--param window must be at least 1");
                }
                DetectorKind::Neighbour(config)
            }
            DetectorName::Envelope => {
                let d = EnvelopeConfig::default();
                let config = EnvelopeConfig {
                    window: p.take("window", d.window)?,
                    floor: p.take("floor", d.floor)?,
                    min_change: p.take("min_change", least_departure(layout, d.min_change))?,
                };
                if config.window == 0 {
                    bail!("--param window must be at least 1");
                }
                DetectorKind::Envelope(config)
            }
        };
        p.done()?;
        Ok(kind)
    }
}

/// Runs `tidewatch evaluate`.
pub fn run(args: &EvaluateArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    // settings are checked before the data are read (the layout only sets a default)
    args.kind(Layout::Generic)?;
    let data = eval::data::load(&args.data)?;
    let kind = args.kind(data.layout)?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let result = eval::evaluate(&data, args.values.as_deref(), &kind, threads)?;
    for e in &result.entities {
        if !e.flat.is_empty() {
            tracing::warn!(
                entity = %e.name,
                columns = ?e.flat,
                "training data never moved: the threshold rests on its floor"
            );
        }
    }
    if let Some(path) = &args.scores {
        write_scores(path, &result).with_context(|| format!("{}", path.display()))?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut out = std::io::stdout().lock();
    if args.json {
        let mut v = serde_json::to_value(&result.pooled)?;
        let o = v.as_object_mut().expect("a report is an object");
        o.insert("data".into(), args.data.display().to_string().into());
        o.insert("layout".into(), serde_json::to_value(data.layout)?);
        o.extend(kind.describe().as_object().expect("an object").clone());
        o.insert("entities_evaluated".into(), result.entities.len().into());
        o.insert("seconds".into(), seconds.into());
        let flat: Vec<String> = result
            .entities
            .iter()
            .flat_map(|e| e.flat.iter().map(move |c| format!("{}:{c}", e.name)))
            .collect();
        o.insert("flat_features".into(), flat.into());
        if let Some(h) = training_holdout_error(&result) {
            o.insert("training_holdout_error".into(), h.into());
        }
        let entities: Vec<serde_json::Value> = result
            .entities
            .iter()
            .map(|e| {
                let mut r = serde_json::to_value(&e.report).expect("a report serialises");
                r.as_object_mut()
                    .expect("an object")
                    .insert("entity".into(), e.name.clone().into());
                r
            })
            .collect();
        o.insert("entities".into(), entities.into());
        writeln!(out, "{v}")?;
    } else {
        write_table(&mut out, &result, seconds)?;
    }
    Ok(())
}

/// The mean of the forecasters' errors on the held-out end of their training data, over
/// every value feature that had one: label-free, for choosing settings.
fn training_holdout_error(result: &Evaluation) -> Option<f64> {
    let holdout: Vec<f64> = result
        .entities
        .iter()
        .flat_map(|e| e.holdout.iter().map(|&h| h as f64))
        .filter(|h| h.is_finite())
        .collect();
    (!holdout.is_empty()).then(|| holdout.iter().sum::<f64>() / holdout.len() as f64)
}

fn write_scores(path: &std::path::Path, result: &Evaluation) -> anyhow::Result<()> {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(w, "entity,row,score,flag,label")?;
    for e in &result.entities {
        for (i, ((s, f), l)) in e.scores.iter().zip(&e.flags).zip(&e.labels).enumerate() {
            writeln!(w, "{},{i},{s},{},{}", e.name, *f as u8, *l as u8)?;
        }
    }
    w.flush()?;
    Ok(())
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.3}"))
}

fn write_table(out: &mut impl Write, result: &Evaluation, seconds: f64) -> anyhow::Result<()> {
    writeln!(
        out,
        "{:<12} {:>7} {:>6} {:>6} {:>6} {:>6} {:>6} {:>9} {:>7} {:>7} {:>9}",
        "entity", "frames", "anom", "P", "R", "F1", "PA-F1", "events", "ROC", "PR", "FA/1000"
    )?;
    let line = |out: &mut dyn Write, name: &str, r: &eval::metrics::Report| {
        writeln!(
            out,
            "{:<12} {:>7} {:>6} {:>6.3} {:>6.3} {:>6.3} {:>6.3} {:>9} {:>7} {:>7} {:>9.2}",
            name,
            r.frames,
            r.anomalous_frames,
            r.precision,
            r.recall,
            r.f1,
            r.pa_f1,
            format!("{}/{}/{}", r.event_tp, r.event_fp, r.event_fn),
            opt(r.roc_auc),
            opt(r.pr_auc),
            r.false_alarms_per_1000
        )
    };
    for e in &result.entities {
        line(out, &e.name, &e.report)?;
    }
    let p = &result.pooled;
    line(out, "POOLED", p)?;
    writeln!(out)?;
    writeln!(
        out,
        "pooled over {} entities: point P/R/F1 {:.3}/{:.3}/{:.3}; point-adjusted P/R/F1 {:.3}/{:.3}/{:.3}",
        result.entities.len(),
        p.precision,
        p.recall,
        p.f1,
        p.pa_precision,
        p.pa_recall,
        p.pa_f1
    )?;
    writeln!(
        out,
        "events (tp/fp/fn {}/{}/{}): precision {:.3}, recall {:.3}, F1 {:.3}; ROC-AUC {}, PR-AUC {}; false alarms {:.2} % of normal frames ({:.2} per 1,000)",
        p.event_tp,
        p.event_fp,
        p.event_fn,
        p.event_precision,
        p.event_recall,
        p.event_f1,
        opt(p.roc_auc),
        opt(p.pr_auc),
        100.0 * p.false_alarm_rate,
        p.false_alarms_per_1000
    )?;
    if let Some(h) = training_holdout_error(result) {
        writeln!(
            out,
            "forecast error on the held-out end of the training data (label-free): {h:.4}"
        )?;
    }
    writeln!(out, "evaluated in {seconds:.2} s")?;
    Ok(())
}
