//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod serve;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use tidewatch::model::{FeatureNames, Model, ModelKind, ModelMeta, Params, Provenance, RffMeta};
use tidewatch::sources::{FrameSource, Pull};
use tidewatch::types::{Frame, FrameMeta};

/// A deterministic pseudo-random stream in [-1, 1) (no dependency on rand's versions).
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// `base` with every bias moved by `shift`: a large negative shift makes every feature of
/// every frame score far over the threshold, a large positive one far under it.
pub fn shifted(base: &Model, shift: f32) -> Model {
    let mut m = base.clone();
    match &mut m.params {
        Params::Rff { bias, .. } | Params::Linear { bias, .. } => {
            bias.iter_mut().for_each(|b| *b += shift)
        }
    }
    m
}

/// A random RFF model of `f` features over windows of `w` (D = 8), threshold 0.5.
pub fn random_rff_model(f: usize, w: usize, seed: u64) -> Model {
    let d = 8;
    let mut r = Lcg(seed);
    let mut v = |n: usize, scale: f32| (0..n).map(|_| r.next() * scale).collect::<Vec<f32>>();
    Model {
        meta: ModelMeta {
            format: 1,
            kind: ModelKind::Rff,
            window: w,
            n_features: f,
            features: FeatureNames::default(),
            nu: 0.1,
            score: "test".into(),
            threshold: 0.5,
            rff: Some(RffMeta {
                components: d,
                gamma: 0.1,
                seed,
            }),
            calibration: None,
            training: serde_json::Value::Null,
            provenance: Provenance::default(),
        },
        params: Params::Rff {
            mean: v(f, 0.1),
            inv_std: v(f, 0.5).into_iter().map(|x| 1.0 + x.abs()).collect(),
            omega: v(d * w, 1.0),
            phase: v(d, 3.0),
            weight: v(f * d, 1.0),
            bias: v(f, 0.5),
        },
        calibration: None,
    }
}

/// A linear model of `f` features whose score is the mean of a window of `w` (weights
/// `-1/w`, bias 0), so that a frame value of `v` held for a whole window scores `v`:
/// departures are written by hand against `threshold`.
pub fn window_mean_model(f: usize, w: usize, threshold: f32) -> Model {
    Model {
        meta: ModelMeta {
            format: 1,
            kind: ModelKind::Linear,
            window: w,
            n_features: f,
            features: FeatureNames::default(),
            nu: 0.1,
            score: "window mean".into(),
            threshold,
            rff: None,
            calibration: None,
            training: serde_json::Value::Null,
            provenance: Provenance::default(),
        },
        params: Params::Linear {
            weight: vec![-1.0 / w as f32; f * w],
            bias: vec![0.0; f],
        },
        calibration: None,
    }
}

/// `n` frames of `f` random values each.
pub fn random_frames(n: usize, f: usize, seed: u64) -> Vec<Frame> {
    let mut r = Lcg(seed);
    (0..n)
        .map(|i| Frame {
            seq: 0,
            meta: FrameMeta {
                received_ms: 1_795_428_000_000 + i as i64,
                id: Some(format!("frame-{i}")),
                ..FrameMeta::default()
            },
            values: (0..f).map(|_| r.next() * 2.0).collect(),
        })
        .collect()
}

/// A source that replays frames from memory.
pub struct VecSource(pub std::vec::IntoIter<Frame>);

impl FrameSource for VecSource {
    fn pull(&mut self) -> Pull {
        match self.0.next() {
            Some(f) => Pull::Frame(f),
            None => Pull::Done,
        }
    }
}

/// A shared collector for captured records.
pub type Sink<T> = Arc<Mutex<Vec<T>>>;

/// Every environment variable the binary reads (its flags' `env = ...`).
pub const SETTINGS: &[&str] = &[
    "ALERTS_KAFKA_TOPIC",
    "APP_HOST",
    "APP_PORT",
    "DEAD_LETTER_PATH",
    "DEFAULT_DEVICE",
    "DEFAULT_MODEL_NAME",
    "DRAIN_TIMEOUT",
    "HEADER_TIMEOUT",
    "INFERENCE_BATCH_SIZE",
    "INITIAL_DELAY",
    "KAFKA_BROKERS",
    "KAFKA_DEAD_LETTER_TOPIC",
    "KAFKA_GROUP",
    "KAFKA_TOPIC",
    "LOG_LEVEL",
    "MAX_BODY_BYTES",
    "MAX_CONNECTIONS",
    "MAX_DELAY",
    "MAX_INFLATED_BYTES",
    "MAX_RETRIES",
    "METRICS_INTERVAL",
    "METRICS_STORE_URL",
    "MIN_BODY_RATE",
    "NESTJS_ANOMALY_ENDPOINT",
    "NESTJS_TIMEOUT",
    "NESTJS_URL",
    "OUTBOX_DIR",
    "OUTBOX_MAX_AGE",
    "OUTBOX_MAX_BYTES",
    "QUEUE_MAX_SIZE",
    "RESULTS_KAFKA_TOPIC",
    "THRESHOLD",
    "UPLOAD_BUFFER_BYTES",
    "WEBHOOK_CONCURRENCY",
];

/// The `tidewatch` binary, run in `dir`, inheriting none of [`SETTINGS`]: the caller's
/// environment cannot change what a test sees.
pub fn tidewatch(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tidewatch"));
    c.current_dir(dir);
    for v in SETTINGS {
        c.env_remove(v);
    }
    c
}

/// [`tidewatch`] started by `sh` under `ulimit -n open_files`: a process whose
/// descriptors run out where a default Linux login's would.
#[cfg(unix)]
pub fn tidewatch_with_open_files(dir: &Path, open_files: u32) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!("ulimit -n {open_files} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_tidewatch"))
        .current_dir(dir);
    for v in SETTINGS {
        c.env_remove(v);
    }
    c
}

/// Sends SIGTERM to `child` (as an orchestrator stops `serve`).
#[cfg(unix)]
pub fn sigterm(child: &std::process::Child) {
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
}

/// Reads `serve`'s ready line from its piped stdout and returns the address it names,
/// with the rest of stdout to read later. Lines before it (timely's progress while a
/// cluster connects) are skipped.
pub fn ready_addr(
    child: &mut std::process::Child,
) -> (
    std::net::SocketAddr,
    std::io::BufReader<std::process::ChildStdout>,
) {
    use std::io::BufRead;
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut ready = String::new();
    while !ready.contains("ready on http://") {
        ready.clear();
        let n = stdout.read_line(&mut ready).unwrap();
        assert!(n > 0, "serve ended without a ready line");
    }
    let addr = ready
        .split("http://")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {ready:?}"))
        .parse()
        .unwrap();
    (addr, stdout)
}

/// A loopback port nothing listens on now (for a cluster's hostfile).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes a hostfile of `n` loopback addresses on free ports to `path` (for a cluster's
/// `-h`, or `--ingest-addrs`).
pub fn loopback_hostfile(path: &Path, n: usize) {
    let lines: String = (0..n)
        .map(|_| format!("127.0.0.1:{}\n", free_port()))
        .collect();
    std::fs::write(path, lines).unwrap();
}

/// Fails the test, with the command's stderr, unless `out` (of `what`) exited 0.
pub fn check(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The alert lines of a JSONL file, with their (nondeterministic) receive times removed,
/// for comparing runs.
pub fn alert_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            o.remove("received_at");
            o.remove("timestamp");
            v
        })
        .collect()
}

/// The value of the Prometheus sample `name` (with its labels, exactly as exposed) in a
/// `/metrics` text.
pub fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {name} in\n{text}"))
        .parse()
        .unwrap()
}

/// The value of the counter `name`, a whole number, in a `/metrics` text.
pub fn counter(text: &str, name: &str) -> u64 {
    let value = sample(text, name);
    assert!(value >= 0.0 && value.fract() == 0.0, "{name} is {value}");
    value as u64
}

/// Writes `values` (row-major, `cols` to a row) as a little-endian f64 `.npy` file, the
/// format of SMAP's arrays.
#[allow(dead_code)]
pub fn write_npy(path: &Path, cols: usize, values: &[f64]) {
    assert_eq!(values.len() % cols, 0, "whole rows");
    let mut header = format!(
        "{{'descr': '<f8', 'fortran_order': False, 'shape': ({}, {cols}), }}",
        values.len() / cols
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    for v in values {
        bytes.extend(v.to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

/// The program `name` on `PATH`, if there is one.
#[allow(dead_code)]
pub fn on_path(name: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// `../shared/data/SMAP` (`$TIDEWATCH_SHARED/data/SMAP` where that is set), or `None`
/// (after saying so) where it is absent.
pub fn smap() -> Option<PathBuf> {
    let shared = std::env::var_os("TIDEWATCH_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    let dir = shared.join("data/SMAP");
    if dir.join("test").is_dir() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("TIDEWATCH_REQUIRE_SHARED_DATA").is_none(),
        "TIDEWATCH_REQUIRE_SHARED_DATA is set but {} is absent",
        dir.display()
    );
    println!("skipped: {} is absent", dir.display());
    None
}

/// A directory of links to the `names` files of `from`.
pub fn smap_subset(from: &Path, names: &[&str], to: &Path) -> PathBuf {
    std::fs::create_dir_all(to).unwrap();
    for name in names {
        let file = format!("{name}.npy.gz");
        std::os::unix::fs::symlink(from.join(&file), to.join(&file)).unwrap();
    }
    to.to_path_buf()
}
