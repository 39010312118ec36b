//! The admin routes, which change a running server (see [`crate::controls`]):
//! `POST /admin/model` (`{"path": dir}`) swaps the model, `PUT /admin/threshold`
//! (`{"threshold": x}`, `null` for the model's own) sets the threshold, and
//! `PUT /admin/mutes` (`{"features": [i, ...]}`) / `DELETE /admin/mutes` mute features or
//! unmute them all. SIGHUP reloads the model directory the server started with.
//!
//! They exist only when a token is configured (`ADMIN_TOKEN`); without one they answer
//! 404 like any unknown path. With one, a request without `Authorization: Bearer <token>`
//! gets 401. Every change is logged and shown on `/health/ready` and the dashboard.
//! In a cluster of several processes they answer 409: the other processes score their
//! features with their own copy of the settings, which these routes cannot reach.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use warp::http::{HeaderMap, StatusCode};
use warp::Reply;

use super::{error_reply, Phase, Shared};
use crate::controls::{Controls, Knobs};
use crate::model::Model;

/// Largest admin request body.
pub(super) const MAX_BODY: u64 = 64 << 10;

/// What a route asks for.
#[derive(Clone, Copy, Debug)]
pub(super) enum Action {
    Model,
    Threshold,
    Mute,
    Unmute,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelBody {
    path: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ThresholdBody {
    threshold: Option<f32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MuteBody {
    features: Vec<u32>,
}

/// Whether `a` and `b` are equal, in a time that does not depend on where they differ
/// (only on their lengths), so that timing answers cannot guess the token a byte at a
/// time. Written here: it is four lines, and no crate in the tree offers it.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether the request carries the configured token.
fn authorised(shared: &Shared, headers: &HeaderMap) -> bool {
    let Some(token) = &shared.admin_token else {
        return false;
    };
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| same_secret(given.trim().as_bytes(), token.as_bytes()))
}

/// Why a request changed nothing: its status, error kind and detail.
struct Refused(StatusCode, &'static str, String);

impl Refused {
    fn bad(detail: impl Into<String>) -> Refused {
        Refused(StatusCode::BAD_REQUEST, "bad_request", detail.into())
    }
}

/// The run's controls, or why there are none to change.
fn controls(shared: &Shared) -> Result<Arc<Controls>, Refused> {
    if shared.processes > 1 {
        return Err(Refused(
            StatusCode::CONFLICT,
            "cluster",
            "run-time changes work in a single process only; restart the cluster to change its model or threshold".into(),
        ));
    }
    match shared.phase() {
        Phase::Ready(r) => Ok(Arc::clone(&r.controls)),
        _ => Err(Refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "not scoring yet (or any more)".into(),
        )),
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Refused> {
    serde_json::from_slice(body)
        .map_err(|e| Refused::bad(format!("the body is not the JSON this route takes: {e}")))
}

fn changed(knobs: &Knobs) -> warp::reply::Response {
    warp::reply::json(&serde_json::json!({ "status": "ok", "controls": knobs })).into_response()
}

/// Handles one admin request.
pub(super) async fn handle(
    action: Action,
    shared: Arc<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> warp::reply::Response {
    if !authorised(&shared, &headers) {
        return error_reply(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "admin routes need Authorization: Bearer <ADMIN_TOKEN>",
        );
    }
    match change(action, &shared, &body).await {
        Ok(k) => changed(&k),
        Err(Refused(status, kind, detail)) => error_reply(status, kind, &detail),
    }
}

async fn change(action: Action, shared: &Shared, body: &[u8]) -> Result<Arc<Knobs>, Refused> {
    let controls = controls(shared)?;
    match action {
        Action::Model => {
            let path = parse::<ModelBody>(body)?.path;
            tokio::task::spawn_blocking(move || swap_from(&controls, &path, "POST /admin/model"))
                .await
                .unwrap_or_else(|e| Err(format!("loading the model failed: {e}")))
                .map_err(|why| Refused(StatusCode::BAD_REQUEST, "model_refused", why))
        }
        Action::Threshold => match parse::<ThresholdBody>(body)?.threshold {
            Some(t) if !t.is_finite() => Err(Refused::bad(
                "the threshold must be a finite number (or null)",
            )),
            t => {
                let k = controls.set_threshold(t);
                tracing::info!(threshold = ?t, in_force = k.threshold_or(None), version = k.version, "threshold changed");
                Ok(k)
            }
        },
        Action::Mute => mute(&controls, &parse::<MuteBody>(body)?.features),
        Action::Unmute => mute(&controls, &[]),
    }
}

fn mute(controls: &Controls, features: &[u32]) -> Result<Arc<Knobs>, Refused> {
    let k = controls
        .set_muted(features)
        .map_err(|e| Refused::bad(e.to_string()))?;
    tracing::info!(muted = ?k.muted, version = k.version, "muted features changed");
    Ok(k)
}

/// Loads the model in `dir` and swaps it in; the error says why the old one stays.
fn swap_from(controls: &Controls, dir: &std::path::Path, by: &str) -> Result<Arc<Knobs>, String> {
    let started = std::time::Instant::now();
    let model = Model::load(dir).map_err(|e| format!("loading model {}: {e}", dir.display()))?;
    let k = controls
        .swap_model(Arc::new(model), Some(dir.to_path_buf()))
        .map_err(|e| e.to_string())?;
    tracing::info!(
        model = %dir.display(),
        model_version = k.model_version,
        version = k.version,
        load_ms = started.elapsed().as_secs_f64() * 1000.0,
        by,
        "model swapped"
    );
    Ok(k)
}

/// On SIGHUP: reloads the model directory the server started with.
pub(super) fn reload_on_hangup(shared: &Shared) {
    let result = match (&shared.model_dir, controls(shared)) {
        (None, _) => Err("the server was given a loaded model, not a directory".to_string()),
        (_, Err(Refused(_, _, why))) => Err(why),
        (Some(dir), Ok(c)) => swap_from(&c, dir, "SIGHUP"),
    };
    if let Err(why) = result {
        tracing::error!(reason = %why, "SIGHUP: the model was not reloaded; the old one keeps scoring");
    }
}
