//! `tidewatch serve`: seed 001's AI engine over HTTP (see CONTRACT.md): frames in on
//! `POST /data-enqueue`, alerts out to the NestJS server, probes for the orchestrator.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::model::Model;
use crate::runtime::{self, SinkSpec};
use crate::server;
use crate::settings::ServeArgs;

/// Longest start-up (model load, cluster formation) before giving up.
const START_TIMEOUT: Duration = Duration::from_secs(600);

/// Serves until SIGINT/SIGTERM, then drains and exits. In a multi-process cluster,
/// processes other than 0 run their workers only; process 0 hosts HTTP and worker 0.
pub fn run(args: &ServeArgs) -> anyhow::Result<()> {
    let config = args.to_config()?;
    if !args.cluster.is_leader() {
        return run_follower(args, config);
    }
    let handle = server::start(config)?;
    let mut signals = handle.catch_signals()?;
    if let Err(e) = handle.wait_ready(START_TIMEOUT) {
        // The handle's drop stops the HTTP side; the message says what to fix.
        return Err(e.context("start-up failed"));
    }
    // stdout: stderr carries the JSON logs, one object per line.
    println!(
        "tidewatch serve: ready on http://{} (POST /data-enqueue, GET /health/live, GET /health/ready)",
        handle.addr()
    );
    let why = handle.wait_for_signal(&mut signals);
    tracing::info!(reason = why, "shutting down");
    let report = handle.shutdown()?;
    let s = &report.run.stats;
    println!(
        "tidewatch serve: stopped after {:.1} s: {} frames accepted, {} scored, {} anomalous; alerts delivered {}, dead-lettered {}",
        report.run.seconds,
        report.http.accepted,
        s.frames_scored,
        s.anomalous_frames,
        report.webhook.map(|w| w.delivered).unwrap_or(0),
        report.webhook.map(|w| w.dead_lettered).unwrap_or(0),
    );
    Ok(())
}

/// A process other than 0: scores its share of the features for the frames process 0
/// receives, and ends when process 0's input does.
fn run_follower(args: &ServeArgs, config: server::ServeConfig) -> anyhow::Result<()> {
    let server::ModelSpec::Dir(dir) = &config.model else {
        bail!("a follower process loads its model from a directory");
    };
    let model =
        Arc::new(Model::load(dir).with_context(|| format!("loading model {}", dir.display()))?);
    runtime::run(
        &args.cluster,
        model,
        config.settings,
        runtime::no_input(),
        SinkSpec::default(),
    )?;
    Ok(())
}
