//! The `tidewatch` command line.

use clap::{Parser, Subcommand};
use tidewatch::commands;

/// Real-time anomaly detection on timely dataflow: feature-wise one-class SVMs over
/// sliding windows, sharded across threads (-w), processes (-n/-p) and machines (-h).
#[derive(Parser, Debug)]
#[command(name = "tidewatch", version, about)]
struct Cli {
    /// Log level (error, warn, info, debug, trace) or a tracing filter directive
    /// [default: info; warn for demo, so that its alert lines stand out, and for bench].
    #[arg(long, env = "LOG_LEVEL", global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Replay a file or the synthetic generator through a dataflow and report anomalies.
    Replay(commands::replay::ReplayArgs),
    /// Fit a feature-wise one-class SVM model on normal data.
    Train(commands::train::TrainArgs),
    /// Write synthetic sensor frames with injected anomalies and their ground truth.
    Generate(commands::generate::GenerateArgs),
    /// Serve seed 001's HTTP contract: ingest frames, post alerts, answer probes.
    Serve(Box<tidewatch::settings::ServeArgs>),
    /// Send frames like the NestJS client and report status counts and latencies.
    Loadgen(tidewatch::load::LoadgenArgs),
    /// Serve, a load generator and an alert receiver in one process: alerts arriving.
    Demo(commands::demo::DemoArgs),
    /// Fit a detector per entity of a labelled data set and report its figures.
    Evaluate(commands::evaluate::EvaluateArgs),
    /// Start a local cluster of `serve` processes with a generated hostfile, passing
    /// signals on to all of them.
    Cluster(commands::cluster::ClusterRunArgs),
    /// Measure throughput (frames/s, feature values/s, MB/s), CPU, RSS and latency of
    /// the dataflow fed pre-encoded client frames, in process or over HTTP.
    Bench(commands::bench::BenchArgs),
    /// Inspect, replay or purge the durable alert outbox and its dead letters.
    Outbox(commands::outbox::OutboxArgs),
}

fn main() {
    tidewatch::resources::keep_freed_buffers();
    // Before parsing, so that flags > environment > .env.
    let dotenv = tidewatch::settings::load_dotenv();
    let cli = Cli::parse();
    let default_level = match cli.command {
        // bench: a log line per scored batch would be part of what it measures.
        Command::Demo(_) | Command::Bench(_) => "warn",
        _ => "info",
    };
    init_logging(cli.log_level.as_deref().unwrap_or(default_level));
    match dotenv {
        Ok(Some(path)) => tracing::info!(path = %path.display(), "read settings from .env"),
        Ok(None) => {}
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
    let result = match &cli.command {
        Command::Replay(args) => commands::replay::run(args),
        Command::Train(args) => commands::train::run(args),
        Command::Generate(args) => commands::generate::run(args),
        Command::Serve(args) => commands::serve::run(args),
        Command::Loadgen(args) => tidewatch::load::run(args),
        Command::Demo(args) => commands::demo::run(args),
        Command::Bench(args) => commands::bench::run(args),
        Command::Evaluate(args) => commands::evaluate::run(args),
        Command::Cluster(args) => commands::cluster::run(args),
        Command::Outbox(args) => commands::outbox::run(args),
    };
    if let Err(e) = result {
        tracing::error!(error = format!("{e:#}"), "tidewatch failed");
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// JSON lines on stderr, one object per event, so logs can be shipped as they are.
fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_current_span(false)
        .init();
}
