//! `tidewatch generate`: writes synthetic frames (and their ground truth) to files.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;

use super::SyntheticArgs;
use crate::model::FeatureIndex;
use crate::sources::{FrameWriter, Generator};

/// Flags of `tidewatch generate`.
#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// Number of features per frame (named `feature_0`, `feature_1`, ...).
    #[arg(long, default_value_t = 25_000)]
    pub features: usize,
    /// Number of frames to write.
    #[arg(long, default_value_t = 1_000)]
    pub frames: u64,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub synthetic: SyntheticArgs,
    /// Output file; the format follows the extension: .jsonl, .jsonl.gz, .csv, .csv.gz, .npy.
    #[arg(long)]
    pub out: PathBuf,
    /// Ground-truth file: one JSON object per injected anomaly, one per line.
    #[arg(long)]
    pub truth: Option<PathBuf>,
}

/// Writes the frames (and the ground truth) and prints a one-line summary.
pub fn run(args: &GenerateArgs) -> anyhow::Result<()> {
    let mut generator = Generator::new(args.synthetic.config(args.features))?;
    let mut writer = FrameWriter::create(&args.out, &FeatureIndex::numbered(args.features))?;
    let mut truth = match &args.truth {
        Some(path) => {
            Some(BufWriter::new(File::create(path).with_context(|| {
                format!("cannot create {}", path.display())
            })?))
        }
        None => None,
    };
    let truth_error = |e| {
        let path = args.truth.as_ref().expect("only with a truth file");
        anyhow::Error::new(e).context(format!("cannot write {}", path.display()))
    };
    let mut injected = 0u64;
    for _ in 0..args.frames {
        let (frame, injections) = generator.next_frame();
        injected += injections.len() as u64;
        if let Some(t) = &mut truth {
            for inj in injections {
                serde_json::to_writer(&mut *t, inj).map_err(|e| truth_error(e.into()))?;
                t.write_all(b"\n").map_err(truth_error)?;
            }
        }
        writer.write(&frame)?;
    }
    writer.finish()?;
    if let Some(mut t) = truth {
        t.flush().map_err(truth_error)?;
    }
    let truth_note = match &args.truth {
        Some(path) => format!(", ground truth in {}", path.display()),
        None => String::new(),
    };
    println!(
        "wrote {} frames x {} features to {} (seed {}), {injected} anomalies injected{truth_note}",
        args.frames,
        args.features,
        args.out.display(),
        args.synthetic.seed
    );
    Ok(())
}
