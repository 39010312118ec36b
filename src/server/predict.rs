//! `POST /predict` (seed 002's manual prediction) on `serve --dataflow machines`: one
//! machine record in, its failure probability and verdict out, synchronously, with the
//! model and the live type table the dataflow uses. 400 on a record that does not decode
//! or whose type the table lacks.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Map, Value};
use warp::http::StatusCode;
use warp::Reply;

use super::error_reply;
use crate::machines::features::{features, NAMES};
use crate::machines::record::MachineRecord;
use crate::machines::table::LiveTable;
use crate::machines::MachinesModel;

/// Largest `/predict` body: one record is a few hundred bytes.
pub const MAX_BODY: u64 = 64 << 10;

/// The model and type table `/predict` answers with.
pub struct Predictor {
    model: MachinesModel,
    table: LiveTable,
    threshold: f32,
}

impl Predictor {
    /// The predictor of the machines model in `dir`, cutting at `threshold` (`None`: the
    /// model's).
    pub fn load(dir: &std::path::Path, threshold: Option<f32>) -> anyhow::Result<Predictor> {
        let model = MachinesModel::load(dir)?;
        let table = model.table()?;
        let threshold = threshold.unwrap_or(model.meta.threshold);
        Ok(Predictor {
            model,
            table,
            threshold,
        })
    }

    /// The answer to one request body.
    pub fn answer(&self, body: &Bytes) -> warp::reply::Response {
        match self.predict(body) {
            Ok(v) => warp::reply::json(&v).into_response(),
            Err(why) => error_reply(StatusCode::BAD_REQUEST, "bad_record", &why),
        }
    }

    fn predict(&self, body: &Bytes) -> Result<Value, String> {
        let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
        let record = MachineRecord::from_json(&v)?;
        self.table.refresh();
        let t = char::from_u32(record.machine_type).unwrap_or('?');
        let (enc, verdict) = self
            .model
            .verdict_with(
                &self.table,
                record.machine_type,
                &record.sensors,
                self.threshold,
            )
            .ok_or(format!("type {t:?} is not in the type table"))?;
        let inputs: Map<String, Value> = NAMES
            .iter()
            .zip(features(enc, &record.sensors))
            .map(|(n, x)| (n.to_string(), json!(x)))
            .collect();
        Ok(json!({
            "machine_id": record.machine_id,
            "machine_type": t.to_string(),
            "is_anomaly": verdict.failure,
            "prediction": u8::from(verdict.failure),
            "probability": verdict.probability,
            "anomaly_probability": verdict.probability,
            "normal_probability": 1.0 - verdict.probability,
            "threshold": self.threshold,
            "features": inputs,
        }))
    }
}

/// The route; it does not exist (404) without a predictor.
pub fn route(
    predictor: Option<Arc<Predictor>>,
) -> impl warp::Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    use warp::Filter;
    warp::path!("predict")
        .and(warp::any().and_then(move || {
            let p = predictor.clone();
            async move { p.ok_or_else(warp::reject::not_found) }
        }))
        .and(warp::post())
        .and(warp::body::content_length_limit(MAX_BODY))
        .and(warp::body::bytes())
        .map(|p: Arc<Predictor>, body: Bytes| p.answer(&body))
}
