//! A seeded synthetic sensor generator with labelled anomalies, for tests, benchmarks,
//! training data and evaluation.
//!
//! Feature f is `x_t = mu_f + sigma_f * a_t`, with `a_t` an AR(1) process of coefficient
//! `phi_f` and unit marginal variance. Anomalies are injected on top and reported as
//! [`Injection`]s (the ground truth). The random streams come from ChaCha8, so the same
//! seed gives the same data on every platform; feature parameters, the normal noise and
//! the anomalies use separate streams, so changing the anomaly settings leaves the normal
//! process underneath unchanged.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use super::{FrameSource, Pull, SourceError};
use crate::clock;
use crate::types::{Frame, FrameMeta, Seq};

/// The kinds of anomaly the generator injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum AnomalyKind {
    /// One frame at `mu_f + spike_sigma * sigma_f`.
    SpikeUp,
    /// One frame at `mu_f - spike_sigma * sigma_f`.
    SpikeDown,
    /// `± shift_sigma * sigma_f` added for `shift_len` frames (sign drawn at random).
    LevelShift,
    /// The value held at the anomaly's first frame's value for `stuck_len` frames.
    Stuck,
}

impl AnomalyKind {
    /// Every kind, in declaration order.
    pub const ALL: [AnomalyKind; 4] = [
        AnomalyKind::SpikeUp,
        AnomalyKind::SpikeDown,
        AnomalyKind::LevelShift,
        AnomalyKind::Stuck,
    ];
}

/// Settings of a [`Generator`].
#[derive(Clone, Debug, PartialEq)]
pub struct GeneratorConfig {
    /// Number of features per frame.
    pub n_features: usize,
    /// Seed of the plant: each feature's mean, spread and autocorrelation. A model
    /// trained on generator data fits only generator data of the same plant.
    pub plant_seed: u64,
    /// Seed of the noise and of the anomalies: different seeds give different data
    /// from the same plant.
    pub seed: u64,
    /// Probability, per frame and feature without an ongoing anomaly, that an anomaly
    /// starts there. 0 gives normal data only.
    pub anomaly_rate: f64,
    /// Spike height in units of the feature's sigma.
    pub spike_sigma: f32,
    /// Level-shift size in units of the feature's sigma.
    pub shift_sigma: f32,
    /// Level-shift length in frames.
    pub shift_len: u32,
    /// Stuck-value length in frames.
    pub stuck_len: u32,
    /// The kinds injected, each equally likely.
    pub kinds: Vec<AnomalyKind>,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            n_features: 25_000,
            plant_seed: 0,
            seed: 0,
            anomaly_rate: 0.0,
            spike_sigma: 8.0,
            shift_sigma: 5.0,
            shift_len: 20,
            stuck_len: 20,
            kinds: AnomalyKind::ALL.to_vec(),
        }
    }
}

/// One anomaly event: where it starts and what it is. Serialised as one JSON object per
/// line in ground-truth files.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Injection {
    /// The frame the anomaly starts at, counting the generator's frames from 0 (the seq
    /// the dataflow gives it when the generator is its only source).
    pub seq: Seq,
    /// The feature.
    pub feature: u32,
    /// What was injected.
    pub kind: AnomalyKind,
    /// Signed size in units of the feature's sigma: `±spike_sigma` for spikes,
    /// `±shift_sigma` for level shifts, and for a stuck value its distance from `mu`.
    pub magnitude_sigma: f32,
    /// Number of frames affected, starting at `seq`.
    pub len: u32,
}

/// An anomaly still running on a feature.
#[derive(Clone, Copy, Debug)]
enum Ongoing {
    None,
    Shift { offset: f32, left: u32 },
    Stuck { value: f32, left: u32 },
}

/// The generator: per-feature parameters and state, and the random streams.
pub struct Generator {
    config: GeneratorConfig,
    mu: Vec<f32>,
    sigma: Vec<f32>,
    phi: Vec<f32>,
    /// `sqrt(1 - phi^2)`: keeps the AR(1) process at unit variance.
    innovation: Vec<f32>,
    state: Vec<f32>,
    ongoing: Vec<Ongoing>,
    noise: ChaCha8Rng,
    events: ChaCha8Rng,
    seq: Seq,
    injections: Vec<Injection>,
}

fn stream(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

impl Generator {
    /// Draws the feature parameters from the seed; fails on settings that cannot generate.
    pub fn new(config: GeneratorConfig) -> anyhow::Result<Generator> {
        let c = &config;
        if c.n_features == 0 {
            bail!("the generator needs at least one feature");
        }
        if !(0.0..=1.0).contains(&c.anomaly_rate) {
            bail!("anomaly rate {} is not a probability", c.anomaly_rate);
        }
        if c.anomaly_rate > 0.0 && c.kinds.is_empty() {
            bail!("anomaly rate {} but no anomaly kinds", c.anomaly_rate);
        }
        if c.shift_len == 0 || c.stuck_len == 0 {
            bail!("anomaly lengths must be at least one frame");
        }
        if !(c.spike_sigma.is_finite() && c.shift_sigma.is_finite()) {
            bail!("anomaly sizes must be finite");
        }
        let n = c.n_features;
        let mut params = stream(c.plant_seed, 0);
        let mut noise = stream(c.seed, 1);
        let (mut mu, mut sigma, mut phi) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let mut state = Vec::with_capacity(n);
        for _ in 0..n {
            mu.push(params.random_range(0.3f32..0.7));
            sigma.push(params.random_range(0.02f32..0.08));
            phi.push(params.random_range(0.0f32..0.8));
            // Start in the stationary distribution, so the first frames are typical too.
            state.push(StandardNormal.sample(&mut noise));
        }
        let innovation = phi.iter().map(|p| (1.0 - p * p).sqrt()).collect();
        Ok(Generator {
            mu,
            sigma,
            phi,
            innovation,
            state,
            ongoing: vec![Ongoing::None; n],
            noise,
            events: stream(c.seed, 2),
            seq: 0,
            injections: Vec::new(),
            config,
        })
    }

    /// The settings.
    pub fn config(&self) -> &GeneratorConfig {
        &self.config
    }

    /// Each feature's mean `mu_f` and standard deviation `sigma_f` (of normal data).
    pub fn feature_stats(&self) -> (&[f32], &[f32]) {
        (&self.mu, &self.sigma)
    }

    /// Number of frames generated so far (the seq of the next frame).
    pub fn frames_generated(&self) -> u64 {
        self.seq
    }

    /// Generates the next frame's values into `values` (reused, no allocation once it
    /// has the capacity) and returns the anomalies that start at this frame.
    pub fn next_into(&mut self, values: &mut Vec<f32>) -> &[Injection] {
        let seq = self.seq;
        self.seq += 1;
        self.injections.clear();
        values.clear();
        values.reserve(self.mu.len());
        let rate = self.config.anomaly_rate;
        for f in 0..self.mu.len() {
            let e: f32 = StandardNormal.sample(&mut self.noise);
            let a = self.phi[f] * self.state[f] + self.innovation[f] * e;
            self.state[f] = a;
            let normal = self.mu[f] + self.sigma[f] * a;
            let x = match &mut self.ongoing[f] {
                Ongoing::None => {
                    // Drawn only for quiet features: one anomaly at a time per feature.
                    if rate > 0.0 && self.events.random::<f64>() < rate {
                        self.start(seq, f, normal)
                    } else {
                        normal
                    }
                }
                Ongoing::Shift { offset, left } => {
                    let x = normal + *offset;
                    *left -= 1;
                    if *left == 0 {
                        self.ongoing[f] = Ongoing::None;
                    }
                    x
                }
                Ongoing::Stuck { value, left } => {
                    let x = *value;
                    *left -= 1;
                    if *left == 0 {
                        self.ongoing[f] = Ongoing::None;
                    }
                    x
                }
            };
            values.push(x);
        }
        &self.injections
    }

    /// Starts an anomaly on feature `f` at frame `seq`; returns the frame's value.
    fn start(&mut self, seq: Seq, f: usize, normal: f32) -> f32 {
        let c = &self.config;
        let kind = c.kinds[self.events.random_range(0..c.kinds.len())];
        let (mu, sigma) = (self.mu[f], self.sigma[f]);
        let (value, magnitude, len) = match kind {
            AnomalyKind::SpikeUp => (mu + c.spike_sigma * sigma, c.spike_sigma, 1),
            AnomalyKind::SpikeDown => (mu - c.spike_sigma * sigma, -c.spike_sigma, 1),
            AnomalyKind::LevelShift => {
                let size = if self.events.random::<bool>() {
                    c.shift_sigma
                } else {
                    -c.shift_sigma
                };
                let offset = size * sigma;
                if c.shift_len > 1 {
                    self.ongoing[f] = Ongoing::Shift {
                        offset,
                        left: c.shift_len - 1,
                    };
                }
                (normal + offset, size, c.shift_len)
            }
            AnomalyKind::Stuck => {
                if c.stuck_len > 1 {
                    self.ongoing[f] = Ongoing::Stuck {
                        value: normal,
                        left: c.stuck_len - 1,
                    };
                }
                (normal, (normal - mu) / sigma, c.stuck_len)
            }
        };
        self.injections.push(Injection {
            seq,
            feature: f as u32,
            kind,
            magnitude_sigma: magnitude,
            len,
        });
        value
    }

    /// The next frame (its `seq` is the generator's frame count) and the anomalies that
    /// start at it.
    pub fn next_frame(&mut self) -> (Frame, &[Injection]) {
        let seq = self.seq;
        let mut values = Vec::new();
        self.next_into(&mut values);
        let frame = Frame {
            seq,
            meta: FrameMeta {
                received_ms: clock::unix_ms(),
                received_us: clock::now_us(),
                ..FrameMeta::default()
            },
            values,
        };
        (frame, &self.injections)
    }
}

/// A [`Generator`] as a [`FrameSource`], optionally bounded and optionally writing its
/// ground truth (one [`Injection`] JSON object per line) as it goes.
pub struct GeneratorSource {
    generator: Generator,
    remaining: Option<u64>,
    truth: Option<(PathBuf, BufWriter<File>)>,
    /// A frame held back while a truth-file error is reported.
    pending: Option<Frame>,
}

impl GeneratorSource {
    /// A source of `frames` frames (`None`: endless).
    pub fn new(generator: Generator, frames: Option<u64>) -> GeneratorSource {
        GeneratorSource {
            generator,
            remaining: frames,
            truth: None,
            pending: None,
        }
    }

    /// Also writes the ground truth to `path` (created or truncated).
    pub fn with_truth(mut self, path: &Path) -> anyhow::Result<GeneratorSource> {
        let file =
            File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        self.truth = Some((path.to_path_buf(), BufWriter::new(file)));
        Ok(self)
    }

    /// The generator, for its feature statistics.
    pub fn generator(&self) -> &Generator {
        &self.generator
    }

    fn write_truth(&mut self, injections: &[Injection]) -> std::io::Result<()> {
        if let Some((_, w)) = &mut self.truth {
            for inj in injections {
                serde_json::to_writer(&mut *w, inj)?;
                w.write_all(b"\n")?;
            }
        }
        Ok(())
    }

    /// Reports a truth-file error once and stops writing the truth: the frames matter
    /// more than their labels.
    fn truth_failed(&mut self, e: std::io::Error) -> Pull {
        let (path, _) = self.truth.take().expect("only called while writing truth");
        Pull::Bad(SourceError {
            origin: path.display().to_string(),
            problem: format!("cannot write ground truth, no longer writing it: {e}"),
        })
    }
}

impl FrameSource for GeneratorSource {
    fn pull(&mut self) -> Pull {
        if let Some(frame) = self.pending.take() {
            return Pull::Frame(frame);
        }
        if self.remaining == Some(0) {
            if let Some((_, w)) = &mut self.truth {
                if let Err(e) = w.flush() {
                    return self.truth_failed(e);
                }
            }
            return Pull::Done;
        }
        if let Some(r) = &mut self.remaining {
            *r -= 1;
        }
        let (frame, injections) = self.generator.next_frame();
        let injections = injections.to_vec();
        match self.write_truth(&injections) {
            Ok(()) => Pull::Frame(frame),
            Err(e) => {
                self.pending = Some(frame);
                self.truth_failed(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(n: usize, rate: f64) -> GeneratorConfig {
        GeneratorConfig {
            n_features: n,
            seed: 7,
            anomaly_rate: rate,
            ..GeneratorConfig::default()
        }
    }

    #[test]
    fn parameters_lie_in_their_documented_ranges() {
        let g = Generator::new(config(1000, 0.0)).unwrap();
        let (mu, sigma) = g.feature_stats();
        assert!(mu.iter().all(|m| (0.3..0.7).contains(m)));
        assert!(sigma.iter().all(|s| (0.02..0.08).contains(s)));
        assert!(g.phi.iter().all(|p| (0.0..0.8).contains(p)));
    }

    #[test]
    fn normal_process_is_unchanged_by_anomaly_settings() {
        // Features never hit by an anomaly see the same values with and without them.
        let mut quiet = Generator::new(config(200, 0.0)).unwrap();
        let mut noisy = Generator::new(config(200, 0.01)).unwrap();
        let mut touched = [false; 200];
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..100 {
            quiet.next_into(&mut a);
            for inj in noisy.next_into(&mut b) {
                touched[inj.feature as usize] = true;
            }
            for f in (0..200).filter(|&f| !touched[f]) {
                assert_eq!(a[f], b[f]);
            }
        }
        assert!(touched.iter().any(|&t| t) && !touched.iter().all(|&t| t));
    }

    #[test]
    fn level_shifts_and_stuck_values_last_their_length() {
        for kind in [AnomalyKind::LevelShift, AnomalyKind::Stuck] {
            let c = GeneratorConfig {
                kinds: vec![kind],
                shift_len: 5,
                stuck_len: 5,
                ..config(50, 0.02)
            };
            let mut noisy = Generator::new(c.clone()).unwrap();
            let mut quiet = Generator::new(GeneratorConfig {
                anomaly_rate: 0.0,
                ..c
            })
            .unwrap();
            let (mut a, mut b) = (Vec::new(), Vec::new());
            let mut frames = Vec::new();
            let mut events = Vec::new();
            for _ in 0..200 {
                quiet.next_into(&mut a);
                events.extend_from_slice(noisy.next_into(&mut b));
                frames.push((a.clone(), b.clone()));
            }
            assert!(!events.is_empty());
            for inj in events.iter().filter(|i| i.seq + 5 <= 200) {
                let f = inj.feature as usize;
                let sigma = noisy.sigma[f];
                let first = frames[inj.seq as usize].1[f];
                for t in inj.seq..inj.seq + 5 {
                    let (normal, got) = &frames[t as usize];
                    match kind {
                        AnomalyKind::LevelShift => {
                            let shift = (got[f] - normal[f]) / sigma;
                            assert!((shift.abs() - 5.0).abs() < 1e-3, "{shift}");
                            assert_eq!(shift.signum(), inj.magnitude_sigma.signum());
                        }
                        _ => assert_eq!(got[f], first),
                    }
                }
                assert_eq!(inj.len, 5);
            }
        }
    }
}
