//! Dataflow variants: each file is one whole pipeline, built from the operators in
//! [`crate::ops`] and a detector from [`crate::detect`] through the per-worker
//! [`Env`](crate::runtime::Env), reading its own parameters with
//! [`Env::param`](crate::runtime::Env::param).
//!
//! To add a variant: write `dataflows/<name>.rs` with `pub const NAME` and `pub fn build`
//! (copy `default.rs` and change the chain or the detector), then add its module to
//! `variants!` below. The golden tests (`tests/variants.rs`) then run it too.

use std::collections::BTreeMap;

use anyhow::bail;

use crate::detect::Device;
use crate::ops::{EventTime, Pacing};
use crate::runtime::Settings;
pub use crate::runtime::{Build, Pipeline};

macro_rules! variants {
    ($($module:ident),* $(,)?) => {
        $(pub mod $module;)*

        /// Names of every variant, in registration order.
        pub const NAMES: &[&str] = &[$($module::NAME),*];

        /// The build function of the variant called `name`.
        pub fn lookup(name: &str) -> anyhow::Result<Build> {
            $(if name == $module::NAME { return Ok($module::build); })*
            bail!("no dataflow variant named {name:?} (known: {})", NAMES.join(", "))
        }
    };
}

variants! { default, ewma, telemetry, forecast, machines, rules }

/// Variants that run on keyed data with a model directory of their own (per-entity
/// models of `tidewatch train --data DIR`, a rule file) and not on the generator's frames:
/// their golden tests are in `tests/entities.rs`, `tests/forecast_variant.rs` and
/// `tests/rules.rs`.
pub const PER_ENTITY: &[&str] = &[telemetry::NAME, forecast::NAME, rules::NAME];

/// The model a run of variant `name` holds, from directory `dir`: the `machines`
/// variant's is its record layout and classifier (see [`crate::machines::frame_model`]),
/// the `rules` variant's its rule file ([`crate::rules::frame_model`]), every other
/// variant's a one-class SVM model ([`Model::load`]).
pub fn load_model(name: &str, dir: &std::path::Path) -> anyhow::Result<crate::model::Model> {
    if name == machines::NAME {
        return crate::machines::frame_model(dir);
    }
    if name == rules::NAME {
        return crate::rules::frame_model(dir);
    }
    Ok(crate::model::Model::load(dir)?)
}

/// Whether variant `name` reads files its own way (`machines`: records, see
/// [`record_file`]) rather than as frames ([`crate::sources::file`]).
pub fn reads_records(name: &str) -> bool {
    name == machines::NAME
}

/// What a body (an HTTP request, a Kafka message) holds for variant `name`: a machine
/// record for `machines`, a frame for every other.
pub fn body_kind(name: &str) -> crate::sources::BodyKind {
    if reads_records(name) {
        crate::sources::BodyKind::MachineRecord
    } else {
        crate::sources::BodyKind::Frame
    }
}

/// The records in `path`, as the `machines` variant reads them.
pub fn record_file(path: &std::path::Path) -> anyhow::Result<Box<dyn crate::sources::FrameSource>> {
    Ok(Box::new(crate::machines::source::RecordFile::open(path)?))
}

/// The variant run when none is named.
pub const DEFAULT: &str = default::NAME;

/// Seed 001's pipeline, [`DEFAULT`], with no parameters.
pub fn default_pipeline() -> Pipeline {
    Pipeline::new(DEFAULT, default::build)
}

/// Seed 001's settings (batches of 64, the model's threshold, unpaced, device `auto`)
/// running the [`DEFAULT`] variant. Here rather than beside `Settings`, so that the
/// runtime names no variant.
impl Default for Settings {
    fn default() -> Self {
        Settings {
            pipeline: default_pipeline(),
            batch_size: 64,
            threshold: None,
            window: None,
            stride: None,
            event_time: None,
            max_alert_features: crate::sinks::alert::DEFAULT_MAX_FEATURES,
            pacing: Pacing::Unpaced,
            stats: None,
            metrics_interval: None,
            device: Device::Auto,
            incidents: None,
            controls: None,
        }
    }
}

/// The variant called `name`, to be run with `params` (`key=value`, each key once).
pub fn pipeline(name: &str, params: &[(String, String)]) -> anyhow::Result<Pipeline> {
    let mut map = BTreeMap::new();
    for (k, v) in params {
        if map.insert(k.clone(), v.clone()).is_some() {
            bail!("--param {k} is given twice");
        }
    }
    Ok(Pipeline::new(name, lookup(name)?).with_params(map))
}

/// The pipeline flags `serve`, `replay` and `bench` share: which variant, its windows,
/// its threshold and its own parameters.
#[derive(clap::Args, Clone, Debug)]
pub struct PipelineArgs {
    /// Dataflow variant (see `dataflows/`): default (the model's one-class SVM), ewma
    /// (per-feature EWMA z-scores, no trained weights), telemetry (per-entity PCA
    /// models, windows 30/10; needs a directory of per-entity models), machines (seed
    /// 002's machine records and XGBoost classifier, with `--model machines`) or rules
    /// (seed 004's statistics and thresholds of a rule file, windows 30/6, with `--model
    /// rules`).
    #[arg(long, default_value = DEFAULT)]
    pub dataflow: String,
    /// Frames per window (`30`); default: the detector's (a model's detector scores the
    /// model's window length and refuses any other). Or a duration (`30s`, `1m`): windows
    /// of event time per entity, scored when the entity's watermark passes their end,
    /// resampled to the detector's window length (variant telemetry).
    #[arg(long, value_parser = parse_span)]
    pub window: Option<Span>,
    /// Frames between windows; default: the variant's. With a duration `--window`, a
    /// duration (`10s`): windows end on multiples of it since the Unix epoch; default:
    /// the window's span (windows that do not overlap).
    #[arg(long, value_parser = parse_span)]
    pub stride: Option<Span>,
    /// Event-time windows: how far behind its entity's latest timestamp a frame may be
    /// and still be windowed (later ones are counted as late and left out).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub lateness: Option<std::time::Duration>,
    /// Anomaly threshold on (calibrated) scores; default: the model's (or the variant's).
    #[arg(long, env = "THRESHOLD", allow_negative_numbers = true)]
    pub threshold: Option<f32>,
    /// A parameter of the variant, `KEY=VALUE`; repeat for several (e.g. `--param
    /// alpha=0.1 --param z=5` for ewma). A key the variant does not read is an error.
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_param)]
    pub params: Vec<(String, String)>,
}

impl Default for PipelineArgs {
    fn default() -> Self {
        PipelineArgs {
            dataflow: DEFAULT.to_string(),
            window: None,
            stride: None,
            lateness: None,
            threshold: None,
            params: Vec::new(),
        }
    }
}

impl PipelineArgs {
    /// The pipeline these flags name (its parameters are checked when it is built, by
    /// [`crate::runtime::check`]).
    pub fn pipeline(&self) -> anyhow::Result<Pipeline> {
        if self.window == Some(Span::Frames(0)) {
            bail!("--window must be at least 1");
        }
        if self.stride == Some(Span::Frames(0)) {
            bail!("--stride must be at least 1");
        }
        self.event_time()?;
        pipeline(&self.dataflow, &self.params)
    }

    /// `--window` as a frame count; `None` for the detector's, or for event time.
    pub fn frame_window(&self) -> Option<usize> {
        match self.window {
            Some(Span::Frames(n)) => Some(n),
            _ => None,
        }
    }

    /// `--stride` as a frame count; `None` for the variant's, or for event time.
    pub fn frame_stride(&self) -> Option<usize> {
        match self.stride {
            Some(Span::Frames(n)) => Some(n),
            _ => None,
        }
    }

    /// The event-time windows a duration `--window` asks for (stride: the window's span
    /// unless given; lateness: [`DEFAULT_LATENESS`] unless given); `None` for windows of
    /// frames. An error for a stride or lateness that does not fit the window's kind.
    pub fn event_time(&self) -> anyhow::Result<Option<EventTime>> {
        let ms = |d: std::time::Duration| d.as_millis().min(i64::MAX as u128) as i64;
        let span = match self.window {
            Some(Span::Time(d)) => ms(d),
            _ => {
                if let Some(Span::Time(d)) = self.stride {
                    bail!(
                        "--stride {}: a duration needs --window as a duration too (30s)",
                        humantime::format_duration(d)
                    );
                }
                if self.lateness.is_some() {
                    bail!("--lateness applies to windows of event time (--window 30s)");
                }
                return Ok(None);
            }
        };
        let stride = match self.stride {
            None => span,
            Some(Span::Time(d)) => ms(d),
            Some(Span::Frames(n)) => bail!(
                "--stride {n}: with --window as a duration, give the stride as one too ({n}s)"
            ),
        };
        if span < 1 || stride < 1 {
            bail!("--window and --stride must be at least 1 ms");
        }
        Ok(Some(EventTime {
            span_ms: span,
            stride_ms: stride,
            lateness_ms: ms(self.lateness.unwrap_or(DEFAULT_LATENESS)),
        }))
    }
}

/// The lateness bound of event-time windows unless `--lateness` says otherwise.
pub const DEFAULT_LATENESS: std::time::Duration = std::time::Duration::from_secs(5);

/// A `--window` or `--stride`: a number of frames, or a span of event time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Span {
    /// So many frames of an entity.
    Frames(usize),
    /// So much event time.
    Time(std::time::Duration),
}

/// `30` → frames; `30s`, `1m 30s`, `500ms` → event time.
fn parse_span(s: &str) -> Result<Span, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<usize>() {
        return Ok(Span::Frames(n));
    }
    humantime::parse_duration(s)
        .map(Span::Time)
        .map_err(|e| format!("{s:?} is neither a frame count (30) nor a duration (30s): {e}"))
}

/// `KEY=VALUE` → `(KEY, VALUE)`.
fn parse_param(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("expected KEY=VALUE, not {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names resolve to variants; an unknown one says which exist; a key given twice is
    /// refused.
    #[test]
    fn pipelines_by_name() {
        for name in NAMES {
            assert_eq!(pipeline(name, &[]).unwrap().name, *name);
        }
        let err = pipeline("nope", &[]).unwrap_err().to_string();
        assert!(err.contains("default") && err.contains("ewma"), "{err}");
        let twice = [
            ("z".to_string(), "1".to_string()),
            ("z".to_string(), "2".to_string()),
        ];
        assert!(pipeline("ewma", &twice)
            .unwrap_err()
            .to_string()
            .contains("twice"));
        assert_eq!(
            parse_param("alpha = 0.1"),
            Ok(("alpha".into(), "0.1".into()))
        );
        assert!(parse_param("alpha").is_err() && parse_param("=1").is_err());
    }

    /// A plain number is a frame count; a duration asks for event time, with the stride
    /// and lateness it gives or their defaults; mixing the two kinds is refused.
    #[test]
    fn windows_are_counts_or_durations() {
        use std::time::Duration;
        assert_eq!(parse_span("30"), Ok(Span::Frames(30)));
        assert_eq!(parse_span("30s"), Ok(Span::Time(Duration::from_secs(30))));
        assert!(parse_span("thirty").unwrap_err().contains("neither"));
        let args = |w: &str, s: Option<&str>, l: Option<&str>| PipelineArgs {
            window: Some(parse_span(w).unwrap()),
            stride: s.map(|s| parse_span(s).unwrap()),
            lateness: l.map(|l| humantime::parse_duration(l).unwrap()),
            ..PipelineArgs::default()
        };
        assert_eq!(args("30", Some("10"), None).event_time().unwrap(), None);
        assert_eq!(args("30", None, None).frame_window(), Some(30));
        let t = args("30s", Some("10s"), Some("2s"));
        assert_eq!(
            t.event_time().unwrap(),
            Some(EventTime {
                span_ms: 30_000,
                stride_ms: 10_000,
                lateness_ms: 2_000
            })
        );
        assert_eq!((t.frame_window(), t.frame_stride()), (None, None));
        let tumbling = args("1m", None, None).event_time().unwrap().unwrap();
        assert_eq!((tumbling.stride_ms, tumbling.lateness_ms), (60_000, 5_000));
        assert!(args("30s", Some("10"), None).pipeline().is_err());
        assert!(args("30", Some("10s"), None).pipeline().is_err());
        assert!(args("30", None, Some("5s")).pipeline().is_err());
    }
}
