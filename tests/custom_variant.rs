//! The variant README's "Dataflow variants" shows a user how to write, run as a user
//! would: its own detector and parameter, built by the runtime from a [`Pipeline`]. The
//! code between the markers below is the README's, with `crate::` spelt `tidewatch::`
//! (this file is outside the crate); a test checks the README still shows it.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use common::{random_rff_model, VecSource};
use tidewatch::runtime::{self, ClusterArgs, Pipeline, Settings, SinkSpec};
use tidewatch::sources::FrameSource;
use tidewatch::types::{Frame, FrameMeta, FrameResult};

mod level {
    // README: begin
    use std::ops::Range;

    use timely::dataflow::Scope;

    use tidewatch::detect::{Detector, Needs, Scores};
    use tidewatch::ops::{BatchOps, MergeOps, ScoreOps, SplitOps, ThresholdOps, Time, WindowOps};
    use tidewatch::runtime::{Env, Results};

    /// Registry name.
    pub const NAME: &str = "level";

    /// How far each value is outside `[-limit, limit]`; 0 inside.
    pub struct Level {
        features: Range<usize>,
        limit: f32,
    }

    impl Detector for Level {
        fn needs(&self) -> Needs {
            Needs {
                window: 1,
                stride: None,
                stateful: false,
            }
        }

        fn features(&self) -> Range<usize> {
            self.features.clone()
        }

        fn score(&mut self, windows: &[f32]) -> Scores {
            Scores::All(
                windows
                    .iter()
                    .map(|x| (x.abs() - self.limit).max(0.0))
                    .collect(),
            )
        }
    }

    /// source → split → window of one frame → batch → level → any excess → merge.
    pub fn build<'s>(scope: Scope<'s, Time>, env: &mut Env) -> anyhow::Result<Results<'s>> {
        let detector = Level {
            features: env.features(scope),
            limit: env.param("limit", 3.0)?,
        };
        let windows = env.windows(&detector, 1)?;
        Ok(env
            .frames(scope)
            .split_features(env.layout(scope))
            .window(windows)
            .batch(env.batch_size())
            .score(detector, env.stats())
            .threshold(env.threshold_or(f32::MIN_POSITIVE))
            .merge_frames())
    }
    // README: end
}

/// 40 frames of 6 features, all within ±1 except feature `f` of frame `seq` for each
/// `(seq, f, value)` of `spikes`.
fn frames(spikes: &[(usize, usize, f32)]) -> Vec<Frame> {
    (0..40)
        .map(|i| {
            let mut values: Vec<f32> = (0..6)
                .map(|j| ((i * 7 + j * 3) % 5) as f32 * 0.5 - 1.0)
                .collect();
            for &(seq, f, v) in spikes {
                if seq == i {
                    values[f] = v;
                }
            }
            Frame {
                seq: 0,
                meta: FrameMeta::default(),
                values,
            }
        })
        .collect()
}

/// Runs the `level` variant with `params` on `threads` workers; the verdicts with hits.
fn run(threads: usize, params: &[(&str, &str)]) -> anyhow::Result<Vec<(u64, Vec<u32>)>> {
    let model = Arc::new(random_rff_model(6, 3, 1));
    let input = frames(&[(5, 0, 3.5), (9, 4, -8.0), (20, 5, 5.0)]);
    let params: BTreeMap<String, String> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let found = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&found);
    let report = runtime::run(
        &ClusterArgs {
            threads,
            ..ClusterArgs::default()
        },
        model,
        Settings {
            pipeline: Pipeline::new(level::NAME, level::build).with_params(params),
            ..Settings::default()
        },
        runtime::on_worker_zero(move || {
            Ok(Box::new(VecSource(input.clone().into_iter())) as Box<dyn FrameSource>)
        }),
        SinkSpec {
            on_result: Some(Arc::new(move |r: &FrameResult| {
                if r.is_anomalous() {
                    let features = r.hits.iter().map(|h| h.feature).collect();
                    sink.lock().unwrap().push((r.seq, features));
                }
            })),
            ..SinkSpec::default()
        },
    )?;
    // a window of one frame: every frame has a verdict
    assert_eq!(report.stats.frames_scored, 40);
    let found = found.lock().unwrap().clone();
    Ok(found)
}

/// The README's variant finds the values over its limit, reads its parameter, gives
/// the same verdicts on one and two workers, and refuses a parameter it does not read.
#[test]
fn the_readme_variant_runs() {
    let default = run(1, &[]).unwrap();
    assert_eq!(default, vec![(5, vec![0]), (9, vec![4]), (20, vec![5])]);
    assert_eq!(run(2, &[]).unwrap(), default);
    let strict = run(2, &[("limit", "4")]).unwrap();
    assert_eq!(strict, vec![(9, vec![4]), (20, vec![5])]);
    let err = format!("{:#}", run(1, &[("limt", "4")]).unwrap_err());
    assert!(err.contains("\"limt\"") && err.contains("limit"), "{err}");
}

/// The README shows the code above, as written here apart from `crate::` for
/// `tidewatch::` and this file's indentation.
#[test]
fn the_readme_shows_this_code() {
    let here = include_str!("custom_variant.rs");
    let start = here.find("// README: begin\n").unwrap() + "// README: begin\n".len();
    let end = here.find("    // README: end").unwrap();
    let code: String = here[start..end]
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("tidewatch::", "crate::");
    let readme = include_str!("../README.md");
    assert!(
        readme.contains(code.trim()),
        "README's variant differs from tests/custom_variant.rs:\n{code}"
    );
}
