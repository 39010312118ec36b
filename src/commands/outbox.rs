//! `tidewatch outbox inspect|replay|purge`: the backlog of the durable alert outbox and
//! the dead-letter file, for an operator. `inspect` only reads; `replay` and `purge`
//! take the outbox's lock, so they refuse to run while a `serve` uses it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use crate::sinks::alert::iso_ms;
use crate::sinks::event::AlertEvent;
use crate::sinks::outbox::log::{scan, OutboxLog};
use crate::sinks::outbox::OutboxConfig;
use crate::sinks::webhook::{frame_event_key, join_url, Webhook, WebhookConfig};

/// Flags of `tidewatch outbox`.
#[derive(clap::Args, Clone, Debug)]
pub struct OutboxArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand, Clone, Debug)]
enum Action {
    /// Count the backlog (alerts not yet delivered) and the dead letters, with the oldest
    /// and newest of each.
    Inspect {
        #[command(flatten)]
        place: Place,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Put the dead letters back into the outbox (under their idempotency keys), to be
    /// delivered by the next `serve`, or at once with --send.
    Replay {
        #[command(flatten)]
        place: Place,
        /// Deliver the outbox's backlog now, to NESTJS_URL + NESTJS_ANOMALY_ENDPOINT, for
        /// at most --send-timeout; what is left stays in the outbox.
        #[arg(long)]
        send: bool,
        /// Base URL of the alert receiver, for --send.
        #[arg(long, env = "NESTJS_URL", default_value = "http://localhost:3000")]
        nestjs_url: String,
        /// Path of the alert endpoint, for --send.
        #[arg(long, env = "NESTJS_ANOMALY_ENDPOINT", default_value = "/api/v1/alert")]
        nestjs_anomaly_endpoint: String,
        /// How long --send may deliver.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        send_timeout: Duration,
    },
    /// Drop dead letters and/or remove the outbox segments whose alerts were all
    /// delivered or given up on.
    Purge {
        #[command(flatten)]
        place: Place,
        /// Empty the dead-letter file.
        #[arg(long)]
        dead_letters: bool,
        /// Remove fully acknowledged segments.
        #[arg(long)]
        acked: bool,
    },
}

/// Where the outbox and the dead letters are: the same flags and defaults as `serve`.
#[derive(clap::Args, Clone, Debug)]
struct Place {
    /// The outbox directory.
    #[arg(long, env = "OUTBOX_DIR", default_value = crate::sinks::outbox::DEFAULT_DIR)]
    outbox_dir: PathBuf,
    /// The dead-letter JSONL file.
    #[arg(
        long,
        env = "DEAD_LETTER_PATH",
        default_value = "tidewatch-dead-letter.jsonl"
    )]
    dead_letter: PathBuf,
}

/// The backlog, as `inspect --json` prints it.
#[derive(Debug, Serialize)]
pub struct BacklogSummary {
    /// Alerts not yet delivered nor given up on.
    pub alerts: usize,
    /// Bytes of the outbox's segments (delivered alerts included until their segment
    /// is removed).
    pub bytes: u64,
    /// Segment files.
    pub segments: usize,
    /// When the oldest was appended, ISO 8601.
    pub oldest: Option<String>,
    /// When the newest was appended.
    pub newest: Option<String>,
    /// The oldest's frame seq.
    pub oldest_seq: Option<u64>,
    /// Torn tails found (a crash while writing); `serve` cuts them off at start.
    pub torn_tails: usize,
}

/// The dead letters, as `inspect --json` prints them.
#[derive(Debug, Serialize)]
pub struct DeadLetterSummary {
    /// Lines in the dead-letter file.
    pub count: usize,
    /// When the oldest was dead-lettered.
    pub oldest: Option<String>,
    /// When the newest was dead-lettered.
    pub newest: Option<String>,
}

/// Runs the subcommand.
pub fn run(args: &OutboxArgs) -> anyhow::Result<()> {
    match &args.action {
        Action::Inspect { place, json } => inspect(place, *json),
        Action::Replay {
            place,
            send,
            nestjs_url,
            nestjs_anomaly_endpoint,
            send_timeout,
        } => {
            let n = replay(place)?;
            println!(
                "tidewatch outbox: re-queued {n} dead letters into {}",
                place.outbox_dir.display()
            );
            if *send {
                let url = join_url(nestjs_url, nestjs_anomaly_endpoint);
                send_now(place, url, *send_timeout)?;
            }
            Ok(())
        }
        Action::Purge {
            place,
            dead_letters,
            acked,
        } => purge(place, *dead_letters, *acked),
    }
}

/// The backlog of the outbox in `dir` (read-only).
pub fn backlog(dir: &Path) -> anyhow::Result<BacklogSummary> {
    let s = scan(dir)?;
    let first = s.pending.values().next();
    Ok(BacklogSummary {
        alerts: s.pending.len(),
        bytes: s.bytes,
        segments: s.segments,
        oldest: first.map(|e| iso_ms(e.at_ms)),
        newest: s.pending.values().next_back().map(|e| iso_ms(e.at_ms)),
        oldest_seq: first.and_then(|e| e.event.seq),
        torn_tails: s.torn.len(),
    })
}

fn read_dead_letters(path: &Path) -> anyhow::Result<Vec<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(String::from)
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The dead letters in `path`.
pub fn dead_letters(path: &Path) -> anyhow::Result<DeadLetterSummary> {
    let lines = read_dead_letters(path)?;
    let times: Vec<String> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["dead_lettered_at"].as_str().map(String::from))
        .collect();
    Ok(DeadLetterSummary {
        count: lines.len(),
        oldest: times.iter().min().cloned(),
        newest: times.iter().max().cloned(),
    })
}

fn inspect(place: &Place, json: bool) -> anyhow::Result<()> {
    let b = backlog(&place.outbox_dir)?;
    let d = dead_letters(&place.dead_letter)?;
    if json {
        let v = serde_json::json!({
            "outbox": place.outbox_dir,
            "backlog": b,
            "dead_letter": place.dead_letter,
            "dead_letters": d,
        });
        println!("{v}");
        return Ok(());
    }
    let span = |o: &Option<String>, n: &Option<String>| match (o, n) {
        (Some(o), Some(n)) => format!(", oldest {o}, newest {n}"),
        _ => String::new(),
    };
    println!(
        "outbox {}: {} alerts to deliver{} ({} bytes in {} segments{})",
        place.outbox_dir.display(),
        b.alerts,
        span(&b.oldest, &b.newest),
        b.bytes,
        b.segments,
        if b.torn_tails > 0 {
            format!(", {} torn tails", b.torn_tails)
        } else {
            String::new()
        }
    );
    println!(
        "dead letters {}: {}{}",
        place.dead_letter.display(),
        d.count,
        span(&d.oldest, &d.newest)
    );
    Ok(())
}

/// A dead-letter line back as an event, with its idempotency key if it has one.
fn event_of(line: &str) -> Option<(AlertEvent, Option<String>)> {
    let v: Value = serde_json::from_str(line).ok()?;
    let alert = &v["alert"];
    let body = match alert {
        Value::String(s) => Bytes::from(s.clone()),
        Value::Null => return None,
        other => Bytes::from(serde_json::to_vec(other).ok()?),
    };
    let seq = v["seq"].as_u64().or_else(|| alert["seq"].as_u64());
    let key = match v["key"].as_str() {
        Some(k) => k.to_string(),
        None => frame_event_key(seq?),
    };
    let event = AlertEvent {
        key,
        body,
        seq,
        incident: v["incident"].as_str().map(String::from),
    };
    Some((event, v["idempotency_key"].as_str().map(String::from)))
}

/// Appends every dead letter to the outbox and empties the dead-letter file (keeping
/// lines it cannot read). Returns how many were re-queued.
fn replay(place: &Place) -> anyhow::Result<usize> {
    let lines = read_dead_letters(&place.dead_letter)?;
    let (mut log, _) = OutboxLog::open(&place.outbox_dir, 0)?;
    let mut kept = String::new();
    let mut n = 0;
    let now = crate::clock::unix_ms();
    for line in &lines {
        match event_of(line) {
            Some((event, key)) => {
                log.stage(event, key, now)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                n += 1;
            }
            None => {
                kept.push_str(line);
                kept.push('\n');
            }
        }
    }
    log.commit()
        .with_context(|| format!("writing the outbox {}", place.outbox_dir.display()))?;
    drop(log);
    if !lines.is_empty() {
        std::fs::write(&place.dead_letter, kept)
            .with_context(|| format!("rewriting {}", place.dead_letter.display()))?;
    }
    Ok(n)
}

/// Delivers the outbox's backlog with the webhook sender, for at most `timeout`.
fn send_now(place: &Place, url: String, timeout: Duration) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let config = WebhookConfig {
        url,
        initial_delay: Duration::from_millis(200),
        max_delay: Duration::from_secs(5),
        dead_letter: place.dead_letter.clone(),
        outbox: Some(OutboxConfig {
            dir: place.outbox_dir.clone(),
            max_bytes: 0,
        }),
        ..WebhookConfig::default()
    };
    let webhook = Webhook::start(config, runtime.handle())?;
    let s = runtime.block_on(async { webhook.close_by(tokio::time::sleep(timeout)).await });
    println!(
        "tidewatch outbox: delivered {} of {} alerts, dead-lettered {}, {} left in the outbox",
        s.delivered, s.recovered, s.dead_lettered, s.left_in_outbox
    );
    Ok(())
}

fn purge(place: &Place, dead: bool, acked: bool) -> anyhow::Result<()> {
    if !dead && !acked {
        bail!("say what to purge: --dead-letters and/or --acked");
    }
    if acked {
        let (mut log, _) = OutboxLog::open(&place.outbox_dir, 0)?;
        let (segments, bytes) = log.remove_resolved(true);
        println!(
            "tidewatch outbox: removed {segments} acknowledged segments ({bytes} bytes); {} alerts still to deliver",
            log.pending()
        );
    }
    if dead {
        let n = read_dead_letters(&place.dead_letter)?.len();
        if n > 0 {
            std::fs::write(&place.dead_letter, "")
                .with_context(|| format!("emptying {}", place.dead_letter.display()))?;
        }
        println!(
            "tidewatch outbox: dropped {n} dead letters from {}",
            place.dead_letter.display()
        );
    }
    Ok(())
}
