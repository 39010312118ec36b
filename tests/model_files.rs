//! Loading models: every way a model directory can be wrong gets an error naming the
//! file and the problem, and `replay` refuses to start with it.

mod common;

use std::path::Path;

use common::random_rff_model;
use tidewatch::model::{Model, ModelKind, Params};

fn load_err(dir: &Path) -> String {
    format!("{:#}", Model::load(dir).expect_err("model should not load"))
}

/// A saved model loads back unchanged.
#[test]
fn model_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let model = random_rff_model(20, 5, 1);
    model.save(dir.path()).unwrap();
    assert_eq!(Model::load(dir.path()).unwrap(), model);
}

/// Missing files are named.
#[test]
fn missing_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("model.json"), "{err}");
    random_rff_model(20, 5, 1).save(dir.path()).unwrap();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("model.safetensors"), "{err}");
}

/// Tensors whose shape does not fit the description (here: windows of 4 in a model that
/// says 5) are refused with both shapes in the message.
#[test]
fn window_mismatch_is_a_shape_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = random_rff_model(20, 4, 1);
    model.save(dir.path()).unwrap();
    model.meta.window = 5;
    let meta = serde_json::to_string(&model.meta).unwrap();
    std::fs::write(dir.path().join("model.json"), meta).unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("model.safetensors"), "{err}");
    assert!(
        err.contains("omega") && err.contains("[8, 4]") && err.contains("[8, 5]"),
        "{err}"
    );
}

/// A linear model with the wrong number of features is refused.
#[test]
fn wrong_feature_count_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = random_rff_model(20, 5, 1);
    model.meta.kind = ModelKind::Linear;
    model.meta.rff = None;
    model.params = Params::Linear {
        weight: vec![0.5; 19 * 5],
        bias: vec![0.0; 19],
    };
    model.meta.n_features = 19;
    model.save(dir.path()).unwrap();
    model.meta.n_features = 20;
    std::fs::write(
        dir.path().join("model.json"),
        serde_json::to_string(&model.meta).unwrap(),
    )
    .unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("weight") && err.contains("[19, 5]") && err.contains("[20, 5]"),
        "{err}"
    );
}

/// NaN or infinite weights are refused with the tensor and position.
#[test]
fn non_finite_weights_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = random_rff_model(20, 5, 1);
    if let Params::Rff { weight, .. } = &mut model.params {
        weight[13] = f32::NAN;
    }
    model.save(dir.path()).unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("weight") && err.contains("non-finite") && err.contains("13"),
        "{err}"
    );
}

/// A description that is not valid JSON, or not a model description, is refused.
#[test]
fn bad_description_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    random_rff_model(20, 5, 1).save(dir.path()).unwrap();
    std::fs::write(dir.path().join("model.json"), "{\"format\": 1").unwrap();
    assert!(load_err(dir.path()).contains("model.json"));
    std::fs::write(dir.path().join("model.safetensors"), b"not tensors").unwrap();
    let mut meta = serde_json::to_value(random_rff_model(20, 5, 1).meta).unwrap();
    meta["window"] = 0.into();
    std::fs::write(dir.path().join("model.json"), meta.to_string()).unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("window"), "{err}");
}

/// `replay` with a broken model exits non-zero and says why.
#[test]
fn replay_refuses_a_broken_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidewatch"))
        .args(["replay", "--generate", "10", "--model"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("model.json"), "{stderr}");
}

/// Calibration tensors and the calibration described in model.json go together: a model
/// with one and not the other would apply a threshold that means something else.
#[test]
fn calibration_tensors_and_description_must_agree() {
    use tidewatch::model::{Calibration, CalibrationMeta};
    let dir = tempfile::tempdir().unwrap();
    let mut model = random_rff_model(20, 5, 1);
    model.calibration = Some(Calibration {
        offset: vec![0.0; 20],
        scale: vec![1.0; 20],
    });
    model.save(dir.path()).unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("calibration"), "{err}");
    model.meta.calibration = Some(CalibrationMeta {
        method: "test".into(),
        target_false_alarm_rate: 1e-5,
        heldout_windows: 10,
    });
    model.save(dir.path()).unwrap();
    assert_eq!(Model::load(dir.path()).unwrap(), model);
}
