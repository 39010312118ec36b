//! An alert receiver on loopback that answers like the NestJS server: it checks each
//! alert as the client does ([`check_like_client`]), answers 201 to a valid one and 413
//! or 500 to the others. The demo prints what it receives; `bench --http --alerts`
//! only counts, so that alert delivery is timed against a real HTTP receiver.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use warp::http::{HeaderMap, StatusCode};
use warp::Filter;

use crate::sinks::alert::{check_like_client, Refusal};
use crate::sinks::webhook::{join_url, CLIENT_BODY_LIMIT};

/// What the receiver does with each alert it accepts, after counting it.
pub type OnAlert = Arc<dyn Fn(&serde_json::Value) + Send + Sync>;

/// A running receiver; it stops when dropped or [`AlertReceiver::stop`]ped.
pub struct AlertReceiver {
    addr: SocketAddr,
    counts: Arc<Counts>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

#[derive(Default)]
struct Counts {
    accepted: AtomicU64,
    refused: AtomicU64,
}

impl AlertReceiver {
    /// Starts a receiver on a free loopback port, on the current tokio runtime.
    pub async fn start(on_alert: OnAlert) -> anyhow::Result<AlertReceiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the alert receiver")?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(Counts::default());
        let route = {
            let counts = Arc::clone(&counts);
            warp::path!("api" / "v1" / "alert")
                .and(warp::post())
                .and(warp::header::headers_cloned())
                .and(warp::body::bytes())
                .map(move |headers: HeaderMap, body: Bytes| {
                    receive(&headers, &body, &counts, on_alert.as_ref())
                })
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(
            warp::serve(route)
                .incoming(listener)
                .graceful(async {
                    let _ = stopped.await;
                })
                .run(),
        );
        Ok(AlertReceiver {
            addr,
            counts,
            stop: Some(stop),
        })
    }

    /// The URL to post alerts to (the NestJS server's endpoint path).
    pub fn url(&self) -> String {
        join_url(&format!("http://{}", self.addr), "/api/v1/alert")
    }

    /// Alerts accepted so far.
    pub fn accepted(&self) -> u64 {
        self.counts.accepted.load(Relaxed)
    }

    /// Alerts refused so far (too large, or invalid for the client).
    pub fn refused(&self) -> u64 {
        self.counts.refused.load(Relaxed)
    }

    /// Stops accepting connections; requests in flight finish.
    pub fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for AlertReceiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// One alert: checked the way the NestJS client checks it, counted, handed on.
fn receive(
    headers: &HeaderMap,
    body: &[u8],
    counts: &Counts,
    on_alert: &(dyn Fn(&serde_json::Value) + Send + Sync),
) -> warp::reply::WithStatus<warp::reply::Json> {
    let reply = |status: StatusCode, v: serde_json::Value| {
        warp::reply::with_status(warp::reply::json(&v), status)
    };
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok());
    match check_like_client(content_type, body, CLIENT_BODY_LIMIT) {
        Ok(alert) => {
            counts.accepted.fetch_add(1, Relaxed);
            on_alert(&alert);
            reply(StatusCode::CREATED, serde_json::json!({"status": "ok"}))
        }
        Err(refusal) => {
            counts.refused.fetch_add(1, Relaxed);
            let (status, why) = match refusal {
                Refusal::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "too large"),
                Refusal::Invalid => (StatusCode::INTERNAL_SERVER_ERROR, "invalid"),
            };
            tracing::warn!(
                bytes = body.len(),
                "alert receiver: refused an alert ({why}), answering {status}"
            );
            reply(status, serde_json::json!({ "error": why }))
        }
    }
}
