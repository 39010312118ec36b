//! The admin routes, which change a running server (see [`crate::controls`]):
//! `POST /admin/model` (`{"path": dir}`) swaps the model, `PUT /admin/threshold`
//! (`{"threshold": x}`, `null` for the model's own) sets the threshold, and
//! `PUT /admin/mutes` (`{"features": [i, ...]}`) / `DELETE /admin/mutes` mute features or
//! unmute them all. SIGHUP reloads the model directory the server started with.
//!
//! They exist only when a token is configured (`ADMIN_TOKEN`); without one they answer
//! 404 like any unknown path. With one, a request without `Authorization: Bearer <token>`
//! gets 401. Every change is logged and shown on `/health/ready` and the dashboard.
//!
//! A change is checked here first (a model is loaded, and must fit the pipeline), then
//! carried to every worker of every process through the dataflow
//! ([`crate::controls::relay`]); the answer comes once it is in force everywhere, from
//! one frame on, or once another process refused it (the old settings stay everywhere).

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use warp::http::{HeaderMap, StatusCode};
use warp::Reply;

use super::{error_reply, Phase, Shared};
use crate::controls::{Change, Controls, Knobs};

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
    let (change, by) = match action {
        Action::Model => (
            Change::Model {
                path: parse::<ModelBody>(body)?.path,
            },
            "POST /admin/model",
        ),
        Action::Threshold => (
            Change::Threshold(parse::<ThresholdBody>(body)?.threshold),
            "PUT /admin/threshold",
        ),
        Action::Mute => (
            Change::Mutes(parse::<MuteBody>(body)?.features),
            "PUT /admin/mutes",
        ),
        Action::Unmute => (Change::Mutes(Vec::new()), "DELETE /admin/mutes"),
    };
    let kind = match action {
        Action::Model => "model_refused",
        _ => "bad_request",
    };
    apply(controls, change, by, kind).await
}

/// Checks `change` on this process, then has it made everywhere; the error says why
/// the old settings stay.
/// `kind` is the error kind of a refusal.
async fn apply(
    controls: Arc<Controls>,
    change: Change,
    by: &str,
    kind: &'static str,
) -> Result<Arc<Knobs>, Refused> {
    let started = std::time::Instant::now();
    let refused = |why: String| Refused(StatusCode::BAD_REQUEST, kind, why);
    let stopped = || {
        Refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the pipeline stopped before the change was made".into(),
        )
    };
    if let Some(why) = controls.fixed() {
        return Err(Refused(
            StatusCode::CONFLICT,
            "not_followed",
            why.to_string(),
        ));
    }
    let asked = change.clone();
    let answer = tokio::task::spawn_blocking(move || controls.make(asked))
        .await
        .map_err(|e| refused(format!("loading the model failed: {e}")))?
        .map_err(|e| refused(e.to_string()))?;
    let knobs = match answer.await.map_err(|_| stopped())? {
        Ok(k) => k,
        Err(why) if why == crate::controls::relay::STOPPED => return Err(stopped()),
        Err(why) => return Err(refused(why)),
    };
    tracing::info!(
        change = ?change,
        version = knobs.version,
        model_version = knobs.model_version,
        took_ms = started.elapsed().as_secs_f64() * 1000.0,
        by,
        "change made on every process"
    );
    Ok(knobs)
}

/// On SIGHUP: reloads the model directory the server started with, on every process.
pub(super) async fn reload_on_hangup(shared: Arc<Shared>) {
    let result = match (&shared.model_dir, controls(&shared)) {
        (None, _) => Err("the server was given a loaded model, not a directory".to_string()),
        (_, Err(Refused(_, _, why))) => Err(why),
        (Some(dir), Ok(c)) => apply(
            c,
            Change::Model { path: dir.clone() },
            "SIGHUP",
            "model_refused",
        )
        .await
        .map(|_| ())
        .map_err(|Refused(_, _, why)| why),
    };
    if let Err(why) = result {
        tracing::error!(reason = %why, "SIGHUP: the model was not reloaded; the old one keeps scoring");
    }
}
