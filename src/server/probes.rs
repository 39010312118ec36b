//! `GET /health/live` and `GET /health/ready`, and the device check behind readiness.

use std::sync::Arc;

use serde::Serialize;
use warp::http::StatusCode;
use warp::Reply;

use super::{Device, Phase, Ready, ServeConfig, Shared};
use crate::model::Model;

/// The scoring device in use, and what the machine has.
#[derive(Clone, Debug, Serialize)]
pub(super) struct DeviceFacts {
    /// As configured (`DEFAULT_DEVICE`).
    requested: Device,
    /// Where scoring runs.
    used: &'static str,
    /// Whether an NVIDIA GPU is visible to this process.
    gpu_available: bool,
    /// How many.
    gpu_count: usize,
    /// Whether scoring uses it.
    gpu_used: bool,
    /// Why the GPU is or is not used.
    note: String,
    /// The GPU scoring uses (name, UUID, compute capability, memory at start-up); the
    /// memory in use now is added per request (`memory_used_bytes`).
    gpu: Option<crate::detect::gpu::GpuInfo>,
    /// Where scoring runs, for the dataflow's settings.
    #[serde(skip)]
    device: Device,
}

impl DeviceFacts {
    /// Where scoring runs: [`Device::Cpu`] or [`Device::Cuda`].
    pub(super) fn device(&self) -> Device {
        self.device
    }
}

/// NVIDIA GPUs the kernel driver lists; cheap (a directory listing), and needs no driver
/// library in the process.
fn visible_gpus() -> usize {
    std::fs::read_dir("/proc/driver/nvidia/gpus")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Checks that the requested device can score ([`crate::detect::gpu::resolve_for`]): `auto` takes the
/// GPU when one is usable and says why not otherwise; `cuda` without a usable GPU (or in
/// a build without the `gpu` feature) is refused rather than silently run elsewhere.
pub(super) fn resolve_device(requested: Device, model: &Model) -> anyhow::Result<DeviceFacts> {
    let gpus = visible_gpus();
    let choice = crate::detect::gpu::resolve_for(requested, model)
        .map_err(|e| anyhow::anyhow!("{e} ({gpus} NVIDIA GPU(s) visible to the kernel)"))?;
    let gpu_used = choice.used == Device::Cuda;
    tracing::info!(
        requested = ?requested,
        device = ?choice.used,
        gpu = choice.gpu.as_ref().map(|g| g.name.as_str()),
        reason = %choice.reason,
        "scoring device chosen"
    );
    Ok(DeviceFacts {
        requested,
        used: if gpu_used { "cuda" } else { "cpu" },
        gpu_available: gpus > 0 || choice.gpu.is_some(),
        gpu_count: gpus,
        gpu_used,
        note: choice.reason,
        gpu: choice.gpu.filter(|_| gpu_used),
        device: choice.used,
    })
}

/// The fixed part of a ready `/health/ready`: device and pipeline (the model, controls
/// and queue are added per request by [`ready_body`]).
pub(super) fn ready_facts(device: &DeviceFacts, config: &ServeConfig) -> serde_json::Value {
    serde_json::json!({
        "status": "ready",
        "device": device,
        "dataflow": config.settings.pipeline.name,
        "inference_batch_size": config.settings.batch_size,
        "workers": config.cluster.peers(),
    })
}

/// The body of a ready `/health/ready` (and the dashboard's facts): the model, threshold
/// and mutes in force (they change at run time), the queue, and the fixed facts.
pub(super) fn ready_body(ready: &Ready) -> serde_json::Value {
    let k = ready.controls.current();
    let model = &k.model;
    let mut body = ready.facts.clone();
    body["model"] = serde_json::json!({
        "path": k.model_path.as_ref().map(|d| d.display().to_string()),
        "kind": model.meta.kind,
        "n_features": model.n_features(),
        "window": model.window(),
        "threshold": k.threshold_or(None),
        "calibrated": model.calibration.is_some(),
        "provenance": model.meta.provenance,
        "version": k.model_version,
        "reloaded_at_ms": k.reloaded_at_ms,
    });
    body["controls"] = serde_json::json!({
        "version": k.version,
        "threshold_override": k.threshold,
        "muted": k.muted,
        "changed_at_ms": k.changed_at_ms,
    });
    body["queue"] = serde_json::json!({
        "capacity": ready.ingress.capacity(),
        "queued": ready.ingress.queued(),
    });
    body
}

/// Liveness: the process answers. No work at all.
pub(super) fn live() -> warp::reply::Response {
    warp::reply::json(&serde_json::json!({ "status": "alive" })).into_response()
}

/// Readiness: 200 with model and device facts while scoring; 503 otherwise.
pub(super) fn ready(shared: Arc<Shared>) -> warp::reply::Response {
    let (status, body) = match shared.phase() {
        Phase::Ready(ready) => {
            let mut body = ready_body(&ready);
            if let Some(g) = crate::detect::gpu::sample() {
                body["device"]["memory_used_bytes"] = g.memory_used_bytes.into();
                body["device"]["memory_total_bytes"] = g.memory_total_bytes.into();
            }
            (StatusCode::OK, body)
        }
        Phase::Loading => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "status": "loading", "detail": "loading the model" }),
        ),
        Phase::Failed(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "status": "failed", "detail": &*why }),
        ),
        Phase::Stopping => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "status": "stopping", "detail": "shutting down" }),
        ),
    };
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}
