//! The forecast detector of `tidewatch evaluate` as a stream: its model file
//! (`forecast.json`) round-trips bit for bit and refuses corrupt files, and `tidewatch
//! train --kind forecast` then `replay --dataflow forecast` (the real binary, as a user
//! runs them) flag the test rows that `evaluate` flags, with any number of workers and
//! processes.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use tidewatch::detect::{Detector, Forecast, ForecastConfig, ForecastModel, Scores, FORECAST_FILE};

/// Rows of training data per entity: a multiple of Telemanom's refresh (70), so that
/// `evaluate`, which warms the detector on every training window and then scores the
/// test file, chooses its thresholds again at the test row where the stream's first
/// scored window ends (see the parity test).
const TRAIN: usize = 2800;
/// Rows of test data per entity.
const TEST: usize = 1400;

/// One entity's frames, training then test rows of one continuous signal: a value
/// (a slow oscillation, noise, and a step of 0.3 while the command is on) and the
/// command flag (context) that switches every 150 rows; over `burst` (test rows) the
/// value's noise is 30 times as large.
fn frames(seed: u64, burst: (usize, usize)) -> Vec<f64> {
    let mut state = seed;
    let mut out = Vec::with_capacity(2 * (TRAIN + TEST));
    for t in 0..TRAIN + TEST {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let noise = ((state >> 33) as f64 / (1u64 << 31) as f64 - 0.5) * 0.02;
        let command = ((t / 150) % 2) as f64;
        let mut v = 0.4 * (t as f64 * 0.013 + seed as f64).sin() + 0.3 * command + noise;
        if (burst.0..=burst.1).contains(&(t.wrapping_sub(TRAIN))) {
            v += 29.0 * noise;
        }
        out.extend([v, command]);
    }
    out
}

/// A data set in Telemanom's layout under `dir`: two channels, each with a labelled
/// burst in its test rows.
fn telemanom(dir: &Path) -> BTreeMap<&'static str, (usize, usize)> {
    let bursts = BTreeMap::from([("C-1", (500, 579)), ("C-2", (900, 949))]);
    std::fs::create_dir_all(dir.join("train")).unwrap();
    std::fs::create_dir_all(dir.join("test")).unwrap();
    let mut labels = "chan_id,spacecraft,anomaly_sequences,class,num_values\n".to_string();
    for (k, (name, (a, b))) in bursts.iter().enumerate() {
        let all = frames(7 + k as u64, (*a, *b));
        let (train, test) = all.split_at(2 * TRAIN);
        common::write_npy(&dir.join(format!("train/{name}.npy")), 2, train);
        common::write_npy(&dir.join(format!("test/{name}.npy")), 2, test);
        labels.push_str(&format!("{name},X,\"[[{a}, {b}]]\",[point],{TEST}\n"));
    }
    std::fs::write(dir.join("labeled_anomalies.csv"), labels).unwrap();
    bursts
}

fn tidewatch(args: &[&str]) -> Command {
    let mut cmd = common::tidewatch(Path::new(env!("CARGO_MANIFEST_DIR")));
    cmd.args(args).env("LOG_LEVEL", "warn");
    cmd
}

/// The flags of a scores file by (entity, test row): `replay --scores` names the row in
/// `id` (`<entity>:<row>`), `evaluate --scores` in `row`.
fn flags(path: &Path) -> BTreeMap<(String, usize), bool> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|&h| h == name);
    let (entity, flag) = (col("entity").unwrap(), col("flag").unwrap());
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let row = match col("row") {
                Some(r) => f[r].parse().unwrap(),
                None => f[col("id").unwrap()]
                    .rsplit(':')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap(),
            };
            ((f[entity].to_string(), row), f[flag] == "1")
        })
        .collect()
}

/// The scores of a detector of `model` over every window of `rows` (row-major), one
/// window at a time as the dataflow gives them.
fn stream_scores(model: ForecastModel, rows: &[f32]) -> Vec<u32> {
    let model = Arc::new(model);
    let width = model.features.len() + model.context;
    let mut d = Forecast::new(Arc::clone(&model), 0..model.features.len());
    let w = d.needs().window;
    rows.windows(w * width)
        .step_by(width)
        .flat_map(|window| match d.score(window) {
            Scores::All(s) => s.into_iter().map(f32::to_bits),
            Scores::Compacted(_) => unreachable!("a CPU detector"),
        })
        .collect()
}

/// A fitted model goes through `forecast.json` unchanged, bit for bit, infinities and
/// NaN included (a flat feature's stuck bar is infinite; a hold-out error is NaN when the
/// training data are too short to judge), and scores as it did; a corrupt file is
/// refused with an error that names it and what is wrong.
#[test]
fn forecast_models_round_trip_through_their_file() {
    let dir = tempfile::tempdir().unwrap();
    // three columns: a value, a value that never moves, a command (context)
    let all: Vec<f32> = frames(3, (usize::MAX, 0))
        .chunks_exact(2)
        .take(400)
        .flat_map(|r| [r[0] as f32, 0.25, r[1] as f32])
        .collect();
    let values: Vec<f32> = all.chunks_exact(3).flat_map(|r| [r[0], r[1]]).collect();
    let context: Vec<f32> = all.chunks_exact(3).map(|r| r[2]).collect();
    let model = ForecastModel::fit_with_context(&values, 2, &context, 1, ForecastConfig::default())
        .unwrap();
    assert_eq!(model.context, 1);
    assert_eq!(model.features[1].stuck_bar, f32::INFINITY);
    model.save(dir.path()).unwrap();
    let loaded = ForecastModel::load(dir.path()).unwrap();
    let json = |m: &ForecastModel| serde_json::to_string(m).unwrap();
    assert_eq!(json(&loaded), json(&model));
    assert_eq!(loaded.features[1].stuck_bar, f32::INFINITY);
    for (a, b) in model.features.iter().zip(&loaded.features) {
        assert_eq!(a.tail.len(), b.tail.len());
        assert!(a
            .tail
            .iter()
            .zip(&b.tail)
            .all(|(x, y)| x.to_bits() == y.to_bits()));
        assert!(a
            .coef
            .iter()
            .zip(&b.coef)
            .all(|(x, y)| x.to_bits() == y.to_bits()));
        assert_eq!(a.high.to_bits(), b.high.to_bits());
    }
    assert_eq!(stream_scores(loaded, &all), stream_scores(model, &all));

    // too few rows to judge the forecaster on a held-out quarter: NaN, which JSON lacks
    let short = ForecastModel::fit(&values[..2 * 40], 2, ForecastConfig::default()).unwrap();
    assert!(short.features[0].holdout.is_nan());
    let short_dir = dir.path().join("short");
    short.save(&short_dir).unwrap();
    let loaded = ForecastModel::load(&short_dir).unwrap();
    assert!(loaded.features[0].holdout.is_nan());
    assert_eq!(json(&loaded), json(&short));

    // a weight missing: refused, naming the file and the feature
    let path = dir.path().join(FORECAST_FILE);
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v["features"][0]["coef"].as_array_mut().unwrap().pop();
    std::fs::write(&path, v.to_string()).unwrap();
    let err = ForecastModel::load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains(FORECAST_FILE) && err.contains("feature 0"),
        "{err}"
    );
    // context weights that are not one per context column and context frame
    v["features"][0]["coef"] = serde_json::to_value(&short.features[0].coef).unwrap();
    v["features"][0]["context_coef"] = serde_json::json!([0.5, 0.25]);
    std::fs::write(&path, v.to_string()).unwrap();
    let err = ForecastModel::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("context weights"), "{err}");
    // not a model at all
    std::fs::write(&path, "{\"config\": 1}").unwrap();
    let err = ForecastModel::load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains(FORECAST_FILE) && err.contains("not a forecast model"),
        "{err}"
    );
}

/// `train --kind forecast` then `replay --dataflow forecast` on the test files flags
/// the test rows `evaluate` flags on the same data set, at `-w 1`, `-w 2` and in two
/// processes, and both bursts are flagged.
///
/// The stream cannot score a channel's first `window - 1` test rows: `evaluate` warms
/// its detector on the training file and scores them with windows that end in them and
/// begin in the training rows; the stream starts each detector where its training data
/// ended (the state the fit saved) and scores from the first whole window of test rows.
/// From there the two detectors differ only in state that the test rows wash out (the
/// few residuals of those windows in the EWMA and the threshold history), so their
/// verdicts agree wherever a score is not within that difference of the threshold.
#[test]
fn train_and_replay_flag_the_rows_evaluate_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let bursts = telemanom(&data);
    let models = tmp.path().join("models");
    let train = tidewatch(&["train", "--kind", "forecast", "--values", "1", "--quiet"])
        .arg("--data")
        .arg(data.join("train"))
        .arg("--out")
        .arg(&models)
        .output()
        .unwrap();
    common::check(&train, "train --kind forecast");
    let stdout = String::from_utf8_lossy(&train.stdout);
    // Telemanom's layout: the absolute floor evaluate sets there
    assert!(stdout.contains("min_error 0.05"), "{stdout}");
    for name in bursts.keys().chain(&["default"]) {
        let m = ForecastModel::load(&models.join(name)).unwrap();
        assert_eq!((m.features.len(), m.context), (1, 1), "{name}");
    }
    let window = ForecastModel::load(&models.join("C-1")).unwrap().window();
    // one file is no directory of entities: refused, not trained as something else
    let one = tidewatch(&["train", "--kind", "forecast", "--quiet", "--out"])
        .arg(tmp.path().join("one"))
        .arg("--data")
        .arg(data.join("train/C-1.npy"))
        .output()
        .unwrap();
    assert!(!one.status.success());
    let stderr = String::from_utf8_lossy(&one.stderr);
    assert!(stderr.contains("directory of per-entity files"), "{stderr}");

    // `replay --dataflow forecast` of the test files, scores to `<name>.csv`
    let replay = |name: &str| {
        let mut cmd = tidewatch(&["replay", "--dataflow", "forecast", "--model"]);
        cmd.arg(&models)
            .arg("--input")
            .arg(data.join("test"))
            .arg("--output")
            .arg(tmp.path().join(format!("{name}.jsonl")))
            .arg("--scores")
            .arg(tmp.path().join(format!("{name}.csv")));
        cmd
    };
    let scores = |name: &str| flags(&tmp.path().join(format!("{name}.csv")));
    common::check(&replay("w1").output().unwrap(), "replay -w 1");
    common::check(
        &replay("w2").args(["-w", "2"]).output().unwrap(),
        "replay -w 2",
    );
    let hosts = tmp.path().join("hosts.txt");
    common::loopback_hostfile(&hosts, 2);
    let cluster = |p: &str| ["-n", "2", "-p", p, "-h", hosts.to_str().unwrap()].map(String::from);
    let p1 = replay("unused").args(cluster("1")).spawn().unwrap();
    let p0 = replay("n2").args(cluster("0")).output().unwrap();
    common::check(&p0, "process 0 of 2");
    common::check(&p1.wait_with_output().unwrap(), "process 1 of 2");
    let streamed = scores("w1");
    assert_eq!(scores("w2"), streamed, "-w 2 differs");
    assert_eq!(scores("n2"), streamed, "-n 2 differs");

    let scores = tmp.path().join("evaluate.csv");
    let eval = tidewatch(&["evaluate", "--json", "--data"])
        .arg(&data)
        .arg("--scores")
        .arg(&scores)
        .output()
        .unwrap();
    common::check(&eval, "evaluate");
    let evaluated = flags(&scores);

    assert_eq!(streamed.len(), bursts.len() * (TEST - (window - 1)));
    for ((entity, row), flag) in &streamed {
        assert!(
            *row >= window - 1,
            "{entity}:{row} scored before a whole window"
        );
        assert_eq!(
            evaluated[&(entity.clone(), *row)],
            *flag,
            "{entity}:{row}: evaluate and the stream disagree"
        );
    }
    for (name, (a, b)) in &bursts {
        let hit = (*a..=*b)
            .filter(|&r| streamed[&(name.to_string(), r)])
            .count();
        assert!(hit > 0, "{name}: the burst at {a}..={b} is not flagged");
    }
    let flagged = streamed.values().filter(|&&f| f).count();
    assert!(
        flagged < streamed.len() / 10,
        "{flagged} of {} flagged",
        streamed.len()
    );

    // an entity without a forecaster of its own is scored by the default (fitted on
    // every entity's training rows): C-2's verdicts change, C-1's stay
    std::fs::remove_dir_all(models.join("C-2")).unwrap();
    common::check(
        &replay("pooled").output().unwrap(),
        "replay without C-2's model",
    );
    let pooled = flags(&tmp.path().join("pooled.csv"));
    assert_eq!(pooled.len(), streamed.len());
    let of = |m: &BTreeMap<(String, usize), bool>, e: &str| -> Vec<bool> {
        m.iter()
            .filter(|((n, _), _)| n == e)
            .map(|(_, &f)| f)
            .collect()
    };
    assert_eq!(of(&pooled, "C-1"), of(&streamed, "C-1"));
    assert_ne!(of(&pooled, "C-2"), of(&streamed, "C-2"));

    // a forecaster of another shape (here: 5 lags, no context) in the same directory
    // cannot read the windows cut for the others: the run is refused at start, naming it
    let series: Vec<f32> = (0..200).map(|i| (i as f32 * 0.3).sin()).collect();
    let config = ForecastConfig {
        lags: 5,
        ..ForecastConfig::default()
    };
    ForecastModel::fit(&series, 1, config)
        .unwrap()
        .save(&models.join("C-1"))
        .unwrap();
    let refused = replay("mixed").output().unwrap();
    assert!(!refused.status.success(), "a directory of mixed shapes ran");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("other models of the directory") && stderr.contains("forecast.json"),
        "{stderr}"
    );
}

/// The shipped `models/forecast` (SMAP's 54 channels and a default) loads, each
/// forecaster reading the telemetry value and the 24 command flags as context; its
/// recorded command, run again on SMAP's training files, writes the same files.
#[test]
fn shipped_forecast_models_load_and_are_reproducible() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/forecast");
    let mut names: Vec<String> = std::fs::read_dir(&shipped)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 55, "{names:?}");
    assert!(names.iter().any(|n| n == "default"));
    for name in &names {
        let m = ForecastModel::load(&shipped.join(name)).unwrap();
        assert_eq!((m.features.len(), m.context), (1, 24), "{name}");
        assert_eq!(m.config.min_error, 0.05, "{name}");
    }
    let default = tidewatch::model::Model::load(&shipped.join("default")).unwrap();
    let command = default.meta.provenance.command;
    assert!(
        command.starts_with("tidewatch train --kind forecast "),
        "{command}"
    );

    let Some(smap) = common::smap() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let mut args: Vec<String> = command.split(' ').skip(1).map(String::from).collect();
    // the recorded paths are relative to the repository root
    for (flag, path) in [
        ("--data", smap.join("train")),
        ("--out", tmp.path().join("m")),
    ] {
        let at = args.iter().position(|a| a == flag).unwrap() + 1;
        args[at] = path.display().to_string();
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    common::check(&tidewatch(&args).arg("--quiet").output().unwrap(), &command);
    for name in &names {
        let read = |dir: &Path| std::fs::read(dir.join(name).join(FORECAST_FILE)).unwrap();
        assert!(
            read(&shipped) == read(&tmp.path().join("m")),
            "{name} differs"
        );
    }
}
