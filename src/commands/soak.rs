//! `tidewatch bench --soak 30m --rate 50`: a long run at a fixed offered rate that
//! samples the resident set size and the receive → verdict latency every interval, so that
//! a leak or a slow drift shows as a trend instead of hiding in a whole-run percentile.
//!
//! Each sample's p99 is over the frames scored in that interval alone: the difference of
//! two snapshots of the run's cumulative `receive_to_scored` histogram.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::resources::{kib_to_mib, status_kib};
use crate::stats::{Stage, Stats};

/// One interval of a soak run.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct SoakSample {
    /// Seconds from the start of the run to the end of this interval.
    pub at_s: f64,
    /// Frames scored in the interval.
    pub frames: u64,
    /// Resident set size at the end of the interval, MiB.
    pub rss_mib: f64,
    /// Receive → verdict latency over the interval's frames, µs.
    pub p50_us: u64,
    /// Its 99th percentile.
    pub p99_us: u64,
    /// Its maximum.
    pub max_us: u64,
}

/// What a soak run saw, and how far RSS and p99 moved.
#[derive(Clone, Debug, Serialize)]
pub struct SoakReport {
    /// Length of each interval, seconds.
    pub interval_s: f64,
    /// One sample per full interval.
    pub samples: Vec<SoakSample>,
    /// Samples left out of the drift figures as warm-up (the first interval, where
    /// buffers and caches grow to their working size), when there are more than two.
    pub warm_up: usize,
    /// RSS of the last sample over the first after warm-up, in percent: + grew.
    pub rss_drift_pct: Option<f64>,
    /// Largest RSS over smallest after warm-up, in percent above 100 %.
    pub rss_spread_pct: Option<f64>,
    /// p99 of the last sample over the first after warm-up, in percent.
    pub p99_drift_pct: Option<f64>,
    /// Largest p99 over smallest after warm-up (1.0: flat).
    pub p99_spread: Option<f64>,
}

/// Samples in the background until [`Sampler::finish`].
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<SoakSample>>,
    interval: Duration,
}

impl Sampler {
    /// Starts sampling `stats` every `interval`, printing each sample on stderr as it is
    /// taken (a 30-minute run shows its trend while it runs).
    pub fn start(stats: Arc<Stats>, interval: Duration) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("tidewatch-soak".into())
            .spawn(move || sample_until(&stats, interval, &flag))
            .expect("starting the soak sampler thread");
        Sampler {
            stop,
            thread,
            interval,
        }
    }

    /// Stops sampling (a partial last interval is not a sample) and reports.
    pub fn finish(self) -> SoakReport {
        self.stop.store(true, Relaxed);
        let samples = self.thread.join().unwrap_or_default();
        SoakReport::of(samples, self.interval)
    }
}

fn scored(stats: &Stats) -> Histogram<u64> {
    stats
        .histograms()
        .into_iter()
        .find(|(stage, _)| *stage == Stage::Scored)
        .map(|(_, h)| h)
        .expect("every stage has a histogram")
}

fn sample_until(stats: &Stats, interval: Duration, stop: &AtomicBool) -> Vec<SoakSample> {
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut before = scored(stats);
    let mut next = started + interval;
    loop {
        while Instant::now() < next {
            if stop.load(Relaxed) {
                return samples;
            }
            std::thread::sleep(Duration::from_millis(100).min(next - Instant::now()));
        }
        let now = scored(stats);
        let mut interval_only = now.clone();
        // `now` counts everything `before` does: the difference is this interval's frames
        let sample = match interval_only.subtract(&before) {
            Ok(()) => SoakSample {
                at_s: started.elapsed().as_secs_f64(),
                frames: interval_only.len(),
                rss_mib: status_kib("VmRSS:").map_or(0.0, kib_to_mib),
                p50_us: interval_only.value_at_quantile(0.5),
                p99_us: interval_only.value_at_quantile(0.99),
                max_us: interval_only.max(),
            },
            Err(e) => {
                tracing::warn!(error = %e, "soak: a latency sample could not be taken");
                next += interval;
                continue;
            }
        };
        eprintln!(
            "soak: {:>7.0} s  {:>6} frames  RSS {:>6.1} MiB  receive→verdict p50 {} µs  p99 {} µs  max {} µs",
            sample.at_s, sample.frames, sample.rss_mib, sample.p50_us, sample.p99_us, sample.max_us
        );
        samples.push(sample);
        before = now;
        next += interval;
    }
}

impl SoakReport {
    /// The report of `samples` taken every `interval`.
    pub fn of(samples: Vec<SoakSample>, interval: Duration) -> SoakReport {
        let warm_up = usize::from(samples.len() > 2);
        let steady = &samples[warm_up..];
        let pct = |last: f64, first: f64| (first > 0.0).then(|| (last / first - 1.0) * 100.0);
        let (first, last) = (steady.first(), steady.last());
        let rss: Vec<f64> = steady.iter().map(|s| s.rss_mib).collect();
        let p99: Vec<f64> = steady.iter().map(|s| s.p99_us as f64).collect();
        let spread = |v: &[f64]| {
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(0.0, f64::max);
            (lo > 0.0 && lo.is_finite()).then(|| hi / lo)
        };
        SoakReport {
            interval_s: interval.as_secs_f64(),
            warm_up,
            rss_drift_pct: first.zip(last).and_then(|(f, l)| pct(l.rss_mib, f.rss_mib)),
            rss_spread_pct: spread(&rss).map(|r| (r - 1.0) * 100.0),
            p99_drift_pct: first
                .zip(last)
                .and_then(|(f, l)| pct(l.p99_us as f64, f.p99_us as f64)),
            p99_spread: spread(&p99),
            samples,
        }
    }

    /// The samples as a table, and the drift.
    pub fn table(&self) -> String {
        let mut out = format!(
            "soak: {} samples of {:.0} s (the first {} left out of the drift as warm-up)\n  {:>8}  {:>8}  {:>9}  {:>9}  {:>9}  {:>9}\n",
            self.samples.len(),
            self.interval_s,
            self.warm_up,
            "at s",
            "frames",
            "RSS MiB",
            "p50 µs",
            "p99 µs",
            "max µs"
        );
        for s in &self.samples {
            out.push_str(&format!(
                "  {:>8.0}  {:>8}  {:>9.1}  {:>9}  {:>9}  {:>9}\n",
                s.at_s, s.frames, s.rss_mib, s.p50_us, s.p99_us, s.max_us
            ));
        }
        let show =
            |v: Option<f64>, unit: &str| v.map_or("n/a".into(), |v| format!("{v:+.1}{unit}"));
        out.push_str(&format!(
            "  RSS drift {} (spread {}), p99 drift {} (largest/smallest {})\n",
            show(self.rss_drift_pct, " %"),
            self.rss_spread_pct
                .map_or("n/a".into(), |v| format!("{v:.1} %")),
            show(self.p99_drift_pct, " %"),
            self.p99_spread.map_or("n/a".into(), |v| format!("{v:.2}×")),
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(rss_mib: f64, p99_us: u64) -> SoakSample {
        SoakSample {
            at_s: 0.0,
            frames: 10,
            rss_mib,
            p50_us: 1,
            p99_us,
            max_us: p99_us,
        }
    }

    #[test]
    fn drift_leaves_the_warm_up_out() {
        let r = SoakReport::of(
            vec![
                sample(50.0, 9000),
                sample(100.0, 4000),
                sample(104.0, 5000),
                sample(102.0, 4400),
            ],
            Duration::from_secs(60),
        );
        assert_eq!(r.warm_up, 1);
        assert!((r.rss_drift_pct.unwrap() - 2.0).abs() < 1e-9);
        assert!((r.rss_spread_pct.unwrap() - 4.0).abs() < 1e-9);
        assert!((r.p99_drift_pct.unwrap() - 10.0).abs() < 1e-9);
        assert!((r.p99_spread.unwrap() - 1.25).abs() < 1e-9);
        // two samples are both kept
        let r = SoakReport::of(vec![sample(100.0, 1), sample(110.0, 2)], Duration::ZERO);
        assert_eq!(r.warm_up, 0);
        assert!((r.rss_drift_pct.unwrap() - 10.0).abs() < 1e-9);
        // none: no figures, no panic
        let r = SoakReport::of(Vec::new(), Duration::from_secs(1));
        assert!(r.rss_drift_pct.is_none() && r.p99_spread.is_none());
    }
}
