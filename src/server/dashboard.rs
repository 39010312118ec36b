//! The live dashboard: `GET /` serves a page (HTML, JS and CSS embedded in the binary,
//! nothing fetched from elsewhere) and `GET /events` feeds it one JSON snapshot a second
//! over server-sent events, from the same counters and histograms as `/metrics`.
//!
//! Cost: with nobody watching, the only work is the verdict hook's ([`Board::hook`]),
//! which returns at once for a frame without anomalies and, for an anomalous one, adds
//! its features to the heat map (one atomic add each) and keeps it among the last
//! alerts (one short lock). Snapshots are built only for connected viewers, once a
//! second each.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use warp::Reply;

use super::{Phase, Shared};
use crate::model::{FeatureIndex, Model};
use crate::runtime::ResultHook;
use crate::types::FrameResult;

/// Cells of the heat map at most: features are grouped into this many ranges.
const HEAT_CELLS: usize = 2_500;

/// Alerts kept for the page.
const RECENT: usize = 20;

/// Features listed per alert on the page.
const TOP: usize = 5;

/// How often a viewer gets a snapshot.
const EVERY: Duration = Duration::from_secs(1);

/// One recent alert, as the page lists it.
#[derive(Clone, Debug, Serialize)]
struct RecentAlert {
    seq: u64,
    id: Option<String>,
    received_ms: i64,
    n_features: usize,
    /// The highest-scoring features: (index, name, score).
    top: Vec<(u32, String, f32)>,
}

/// What the verdict hook keeps for the page: anomalies per feature range and the last
/// alerts.
pub(super) struct Board {
    names: FeatureIndex,
    n_features: usize,
    per_cell: usize,
    cells: Vec<AtomicU64>,
    recent: Mutex<VecDeque<RecentAlert>>,
}

impl Board {
    pub(super) fn new(model: &Model) -> Board {
        let n_features = model.n_features();
        let per_cell = n_features.div_ceil(HEAT_CELLS).max(1);
        let n_cells = n_features.div_ceil(per_cell);
        Board {
            names: model.feature_index(),
            n_features,
            per_cell,
            cells: (0..n_cells).map(|_| AtomicU64::new(0)).collect(),
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
        }
    }

    /// A verdict hook recording anomalous frames for the page.
    pub(super) fn hook(self: &Arc<Self>) -> ResultHook {
        let board = Arc::clone(self);
        Arc::new(move |r: &FrameResult| board.record(r))
    }

    fn record(&self, r: &FrameResult) {
        if r.hits.is_empty() {
            return;
        }
        for h in &r.hits {
            if let Some(c) = self.cells.get(h.feature as usize / self.per_cell) {
                c.fetch_add(1, Relaxed);
            }
        }
        let mut top: Vec<_> = r.hits.iter().map(|h| (h.feature, h.score)).collect();
        top.sort_by(|a, b| b.1.total_cmp(&a.1));
        top.truncate(TOP);
        let alert = RecentAlert {
            seq: r.seq,
            id: r.meta.id.clone(),
            received_ms: r.meta.received_ms,
            n_features: r.hits.len(),
            top: top
                .into_iter()
                .map(|(f, s)| (f, self.names.name(f as usize), s))
                .collect(),
        };
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == RECENT {
            recent.pop_back();
        }
        recent.push_front(alert);
    }

    /// The heat map: features per cell, and `[cell, anomalies since start]` of the cells
    /// with any.
    fn heat(&self) -> serde_json::Value {
        let counts: Vec<(usize, u64)> = self
            .cells
            .iter()
            .enumerate()
            .map(|(i, c)| (i, c.load(Relaxed)))
            .filter(|&(_, n)| n > 0)
            .collect();
        serde_json::json!({
            "n_features": self.n_features,
            "per_cell": self.per_cell,
            "cells": self.cells.len(),
            "counts": counts,
        })
    }

    fn recent(&self) -> Vec<RecentAlert> {
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// One snapshot for the page: counters, queue, the stages' cumulative histogram buckets
/// (the page takes percentiles of each second's difference, as `histogram_quantile` over
/// `/metrics` would), the heat map, the last alerts, and the model, device and controls.
fn snapshot(shared: &Shared) -> serde_json::Value {
    let s = shared.stats.snapshot();
    let stages: serde_json::Map<String, serde_json::Value> = shared
        .stats
        .histograms()
        .iter()
        .map(|(stage, h)| {
            (
                stage.name().to_string(),
                serde_json::json!(crate::metrics::bucket_counts(h).to_vec()),
            )
        })
        .collect();
    let mut body = serde_json::json!({
        "t_ms": crate::clock::unix_ms(),
        "counters": s,
        "http": shared.http.snapshot(),
        "buckets_s": crate::metrics::BUCKETS_US.iter().map(|&b| b as f64 / 1e6).collect::<Vec<_>>(),
        "stages": stages,
    });
    match shared.phase() {
        Phase::Ready(ready) => {
            body["status"] = "ready".into();
            body["queue"] = serde_json::json!({
                "queued": ready.ingress.queued(),
                "capacity": ready.ingress.capacity(),
            });
            body["heat"] = ready.board.heat();
            body["recent"] = serde_json::json!(ready.board.recent());
            body["ready"] = super::probes::ready_body(&ready);
        }
        Phase::Loading => body["status"] = "loading".into(),
        Phase::Failed(why) => {
            body["status"] = "failed".into();
            body["detail"] = (*why).into();
        }
        Phase::Stopping => body["status"] = "stopping".into(),
    }
    body
}

/// `GET /`: the page.
pub(super) fn page() -> warp::reply::Response {
    warp::reply::html(include_str!("assets/dashboard.html")).into_response()
}

/// `GET /dashboard.js` and `GET /dashboard.css`.
pub(super) fn asset(name: &'static str) -> warp::reply::Response {
    let (body, kind) = match name {
        "js" => (
            include_str!("assets/dashboard.js"),
            "text/javascript; charset=utf-8",
        ),
        _ => (
            include_str!("assets/dashboard.css"),
            "text/css; charset=utf-8",
        ),
    };
    warp::reply::with_header(body, "content-type", kind).into_response()
}

/// `GET /events`: a snapshot now and every second until the viewer leaves or the server
/// stops (so that a viewer never holds up a shutdown). A task per viewer builds them;
/// it ends when the viewer's connection drops the other end of its channel.
pub(super) fn events(shared: Arc<Shared>) -> warp::reply::Response {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<warp::sse::Event>(1);
    tokio::spawn(async move {
        let mut phase = shared.phase.subscribe();
        let mut ticks = tokio::time::interval(EVERY);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = phase.wait_for(|p| matches!(p, Phase::Stopping | Phase::Failed(_))) => return,
            }
            let event = warp::sse::Event::default()
                .json_data(snapshot(&shared))
                .unwrap_or_else(|_| warp::sse::Event::default().data("{}"));
            if tx.send(event).await.is_err() {
                return;
            }
        }
    });
    let stream = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|e| e.map(Ok::<_, Infallible>))
    });
    warp::sse::reply(stream).into_response()
}
