//! `tidewatch serve`: seed 001's AI engine over HTTP (see CONTRACT.md): frames in on
//! `POST /data-enqueue`, alerts out to the NestJS server, probes for the orchestrator.
//! With `--kafka-brokers`, frames come from a Kafka topic instead, read by every worker
//! of every process, and alerts (and verdicts) also go to Kafka topics.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::runtime::{self, SinkSpec};
use crate::server;
use crate::settings::ServeArgs;

/// Longest start-up (model load, cluster formation) before giving up.
const START_TIMEOUT: Duration = Duration::from_secs(600);

/// Serves until SIGINT/SIGTERM, then drains and exits. In a multi-process cluster,
/// processes other than 0 run their workers only, and process 0 hosts HTTP and worker 0;
/// with `--ingest every-process` each process also takes HTTP frames of its own.
pub fn run(args: &ServeArgs) -> anyhow::Result<()> {
    let config = args.to_config()?;
    if !args.cluster.is_leader() && !args.ingests_everywhere() {
        return run_follower(args, config);
    }
    let handle = server::start(config)?;
    let mut signals = handle.catch_signals()?;
    if let Err(e) = handle.wait_ready(START_TIMEOUT) {
        // The handle's drop stops the HTTP side; the message says what to fix.
        return Err(e.context("start-up failed"));
    }
    // stdout: stderr carries the JSON logs, one object per line.
    match &args.kafka.kafka_topic {
        Some(topic) if args.kafka.enabled() => println!(
            "tidewatch serve: ready on http://{} (GET / dashboard, GET /health/live, GET /health/ready, GET /metrics); frames from Kafka topic {topic}",
            handle.addr()
        ),
        _ => println!(
            "tidewatch serve: ready on http://{} (POST /data-enqueue, GET / dashboard, GET /health/live, GET /health/ready, GET /metrics)",
            handle.addr()
        ),
    }
    let why = handle.wait_for_signal(&mut signals);
    tracing::info!(reason = why, "shutting down");
    handle.hurry_on_next_signal(signals);
    let report = handle.shutdown()?;
    let s = &report.run.stats;
    println!(
        "tidewatch serve: stopped after {:.1} s: {} frames accepted, {} scored, {} anomalous; alerts delivered {}, dead-lettered {}, left in the outbox {}",
        report.run.seconds,
        report.http.accepted,
        s.frames_scored,
        s.anomalous_frames,
        report.webhook.map(|w| w.delivered).unwrap_or(0),
        report.webhook.map(|w| w.dead_lettered).unwrap_or(0),
        report.webhook.map(|w| w.left_in_outbox).unwrap_or(0),
    );
    if let Some(k) = &report.kafka {
        print_kafka(k);
    }
    print!("{}", crate::metrics::latency_table(&report.run.latencies));
    Ok(())
}

fn print_kafka(k: &crate::server::kafka::KafkaReport) {
    let i = &k.input;
    let o = k.output.unwrap_or_default();
    println!(
        "tidewatch serve: Kafka: {} frames read, {} messages skipped ({} dead-lettered), {} offset commits ({} failed); produced {} (failed {}, refused {})",
        i.frames, i.skipped, i.dead_lettered, i.commits, i.commit_failures, o.delivered, o.failed, o.refused
    );
}

/// A process other than 0: scores its share of the features for the frames process 0
/// receives, and ends when process 0's input does. With Kafka it also reads its share of
/// the partitions, until SIGINT/SIGTERM (send it to every process).
fn run_follower(args: &ServeArgs, config: server::ServeConfig) -> anyhow::Result<()> {
    let server::ModelSpec::Dir(dir) = &config.model else {
        bail!("a follower process loads its model from a directory");
    };
    let model = Arc::new(
        crate::dataflows::load_model(&config.settings.pipeline.name, dir)
            .with_context(|| format!("loading model {}", dir.display()))?,
    );
    // Its workers follow the cluster's run-time changes as process 0's do (every process
    // builds the same operators); it has no admin routes of its own.
    let dir = dir.clone();
    let controls = Arc::new(crate::controls::Controls::new(
        Arc::clone(&model),
        Some(dir.clone()),
        config.settings.threshold,
        args.cluster.shape(),
    ));
    #[cfg(unix)]
    reload_on_hangup(Arc::clone(&controls), dir)?;
    let mut config = config;
    config.settings.controls = Some(controls);
    let sinks = SinkSpec::default();
    let Some(kafka) = &config.kafka else {
        runtime::run(
            &args.cluster,
            model,
            config.settings,
            runtime::no_input(),
            sinks,
        )?;
        return Ok(());
    };
    let outbox = kafka.outbox(false)?;
    let input = kafka.input(&model, outbox.clone())?;
    stop_on_signal(Arc::clone(&input))?;
    let run = runtime::run(
        &args.cluster,
        model,
        config.settings,
        input.factory(),
        sinks,
    );
    if let Some(o) = &outbox {
        o.flush(Duration::from_secs(30));
    }
    let run = run?;
    println!(
        "tidewatch serve (process {}): stopped after {:.1} s",
        args.cluster.process, run.seconds
    );
    print_kafka(&crate::server::kafka::KafkaReport {
        input: input.counters().snapshot(),
        output: outbox.map(|o| o.stats()),
    });
    Ok(())
}

/// On SIGHUP, reloads the model directory the cluster started with on every process, as
/// SIGHUP to a process that serves HTTP does (see [`crate::controls`]); a thread of its
/// own waits for the signal and the cluster's answer.
#[cfg(unix)]
fn reload_on_hangup(
    controls: Arc<crate::controls::Controls>,
    dir: std::path::PathBuf,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the SIGHUP runtime")?;
    let mut hangup = {
        let _context = runtime.enter();
        signal(SignalKind::hangup()).context("catching SIGHUP")?
    };
    std::thread::Builder::new()
        .name("tidewatch-sighup".into())
        .spawn(move || {
            while runtime.block_on(hangup.recv()).is_some() {
                tracing::info!("SIGHUP: reloading the model");
                let change = crate::controls::Change::Model { path: dir.clone() };
                let answer = controls.make(change).map_err(|e| e.to_string());
                match answer.and_then(|a| a.blocking_recv().map_err(|e| e.to_string())) {
                    Ok(Ok(k)) => tracing::info!(
                        model_version = k.model_version,
                        version = k.version,
                        by = "SIGHUP",
                        "change made on every process"
                    ),
                    Ok(Err(why)) | Err(why) => tracing::error!(
                        reason = %why,
                        "SIGHUP: the model was not reloaded; the old one keeps scoring"
                    ),
                }
            }
        })
        .context("starting the SIGHUP thread")?;
    Ok(())
}

/// Stops `input` on the first SIGINT or SIGTERM, so that the process drains, commits and
/// exits like process 0 does.
fn stop_on_signal(input: Arc<crate::sources::kafka::KafkaInput>) -> anyhow::Result<()> {
    super::on_signals(move |why| {
        tracing::info!(reason = why, "shutting down");
        input.stop();
        false
    })
}
