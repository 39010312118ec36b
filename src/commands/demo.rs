//! `tidewatch demo`: the whole of seed 001 in one process, with no outside service: an
//! alert receiver that checks alerts like the NestJS client and prints one line per
//! alert, `serve` in front of the model, and the load generator sending frames with
//! injected anomalies. Ends with totals and the per-stage latency table.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::commands::receiver::AlertReceiver;
use crate::commands::SyntheticArgs;
use crate::load::{self as loadgen, LoadgenArgs};
use crate::model::Model;
use crate::runtime::ClusterArgs;
use crate::server::{self, ModelSpec, ServeConfig};
use crate::sinks::webhook::WebhookConfig;
use anyhow::Context;

/// Flags of `tidewatch demo`.
#[derive(clap::Args, Clone, Debug)]
pub struct DemoArgs {
    /// Model directory, or the name of one under models/.
    #[arg(long, env = "DEFAULT_MODEL_NAME", default_value = "default")]
    pub model: String,
    /// How long to send frames.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Frames per second.
    #[arg(long, default_value_t = 4.0)]
    pub rate: f64,
    /// Probability per frame and feature that an anomaly starts (2e-5 × 25,000 features:
    /// about one anomaly every other frame).
    #[arg(long, default_value_t = 2e-5)]
    pub anomaly_rate: f64,
    /// Seed of the generated noise and anomalies.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Port for the ingest server (0: any free port).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Anomaly threshold; default: the model's.
    #[arg(long, env = "THRESHOLD")]
    pub threshold: Option<f32>,
    /// Worker threads of the dataflow.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Alerts that cannot be delivered go here.
    #[arg(long, default_value_os_t = std::env::temp_dir().join("tidewatch-demo-dead-letter.jsonl"))]
    pub dead_letter: PathBuf,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub alerts: super::AlertArgs,
    /// The alert outbox (alerts a stopped demo did not deliver are sent by the next).
    #[arg(long, default_value_os_t = std::env::temp_dir().join("tidewatch-demo-outbox"))]
    pub outbox_dir: PathBuf,
}

/// Runs the demo.
pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let dir = Model::resolve(&args.model);
    let model = Arc::new(Model::load(&dir).with_context(|| {
        format!(
            "loading model {:?} ({}); the demo needs a model, e.g. the shipped models/default",
            args.model,
            dir.display()
        )
    })?);
    let threshold = args.threshold.unwrap_or(model.meta.threshold);
    println!(
        "tidewatch demo: model {} ({} features, window {}, threshold {threshold})",
        dir.display(),
        model.n_features(),
        model.window()
    );

    // The receiver and the load generator share one small runtime; serve brings its own.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let receiver = rt.block_on(AlertReceiver::start(Arc::new(print_alert)))?;
    let alert_url = receiver.url();
    println!("  alert receiver (checks alerts like the NestJS client): {alert_url}");

    let mut config = ServeConfig::new(ModelSpec::Loaded(Arc::clone(&model)));
    config.addr = SocketAddr::from(([127, 0, 0, 1], args.port));
    config.settings.threshold = args.threshold;
    config.settings.incidents = args
        .alerts
        .incidents(crate::sinks::webhook::CLIENT_BODY_LIMIT)?;
    config.cluster = ClusterArgs {
        threads: args.workers.max(1),
        ..ClusterArgs::default()
    };
    config.webhook = Some(WebhookConfig {
        url: alert_url,
        initial_delay: Duration::from_millis(200),
        dead_letter: args.dead_letter.clone(),
        outbox: Some(crate::sinks::outbox::OutboxConfig {
            dir: args.outbox_dir.clone(),
            max_bytes: crate::sinks::outbox::DEFAULT_MAX_BYTES,
        }),
        drain_timeout: Duration::from_secs(10),
        ..WebhookConfig::default()
    });
    let handle = server::start(config)?;
    handle.wait_ready(Duration::from_secs(600))?;
    let addr = handle.addr();
    println!("  serve ready: http://{addr}  (try: curl -s http://{addr}/health/ready)");
    println!("  dashboard: open http://{addr}/ in a browser while the demo runs");
    println!(
        "  sending {} frames/s for {} with anomalies injected (JSON logs on stderr)...\n",
        args.rate,
        humantime::format_duration(args.duration)
    );

    let load = LoadgenArgs {
        rate: Some(args.rate),
        duration: Some(args.duration),
        features: model.n_features(),
        synthetic: SyntheticArgs {
            anomaly_rate: args.anomaly_rate,
            seed: args.seed,
            ..SyntheticArgs::default()
        },
        ..LoadgenArgs::to(format!("http://{addr}/data-enqueue"))
    };
    let load = rt.block_on(loadgen::drive(&load));
    let report = handle.shutdown();
    let received = (receiver.accepted(), receiver.refused());
    receiver.stop();
    let load = load?;
    let report = report?;
    let s = &report.run.stats;
    let w = report.webhook.unwrap_or_default();
    println!("\nload generator: {}", load.summary());
    println!(
        "serve: {} frames accepted, {} scored (the first {} fill the first window), {} anomalous",
        report.http.accepted,
        s.frames_scored,
        model.window().saturating_sub(1),
        s.anomalous_frames
    );
    println!(
        "alerts: {} sent, {} received by the receiver ({} refused), {} dead-lettered{}",
        w.delivered,
        received.0,
        received.1,
        w.dead_lettered,
        if w.dead_lettered > 0 {
            format!(" (see {})", args.dead_letter.display())
        } else {
            String::new()
        }
    );
    if w.recovered > 0 {
        // Without this line a run would seem to send more alerts than it found
        // anomalous frames.
        println!(
            "  {} alerts of an earlier demo were found undelivered in the outbox {}; they are counted above with this run's",
            w.recovered,
            args.outbox_dir.display()
        );
    }
    if w.left_in_outbox > 0 {
        println!(
            "  {} alerts not delivered stay in {} for the next demo",
            w.left_in_outbox,
            args.outbox_dir.display()
        );
    }
    if args.alerts.mode == super::AlertMode::Incident {
        let i = report.run.incidents;
        println!(
            "incidents: {} reached info, {} warning, {} critical; {} open at the end of the input (resolved there)",
            i.info, i.warning, i.critical, i.ended
        );
    }
    // The stages from receive to alert accepted by the receiver, as `serve` prints them.
    print!("{}", crate::metrics::latency_table(&report.run.latencies));
    Ok(())
}

/// Prints one accepted alert (or incident event) on one line.
fn print_alert(a: &serde_json::Value) {
    if let Some(i) = a.get("incident") {
        println!(
            "INCIDENT {:<8} {}  {}  severity {}  group {}  {} feature(s)  peak {:.2}  frames {}..{}",
            a["event"].as_str().unwrap_or("?"),
            i["id"].as_str().unwrap_or("?"),
            a["timestamp"].as_str().unwrap_or("?"),
            i["severity"].as_str().unwrap_or("?"),
            i["group"].as_str().unwrap_or("?"),
            i["num_features"],
            i["peak_score"].as_f64().unwrap_or(f64::NAN),
            i["start_seq"],
            a["seq"],
        );
        return;
    }
    let top: Vec<String> = a["anomalous_features"]
        .as_array()
        .into_iter()
        .flatten()
        .take(3)
        .map(|f| {
            format!(
                "#{} {:.2}",
                f["feature_idx"],
                f["score"].as_f64().unwrap_or(f64::NAN)
            )
        })
        .collect();
    println!(
        "ALERT seq {:>4}  {}  {} anomalous feature(s)  top: {}  latency {:.1} ms",
        a["seq"].as_u64().map_or("?".to_string(), |s| s.to_string()),
        a["timestamp"].as_str().unwrap_or("?"),
        a["num_anomalous_features"],
        top.join(", "),
        a["latency_ms"].as_f64().unwrap_or(f64::NAN)
    );
}
