//! Detection: where scoring runs (the CPU or, with feature `gpu`, a GPU).

use serde::Serialize;

pub mod gpu;

/// Where scoring runs (`DEFAULT_DEVICE`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// The GPU where this build (feature `gpu`) and machine can use one, else the CPU;
    /// start-up logs which and why.
    #[default]
    Auto,
    /// The GPU; start-up fails if it cannot be used.
    Cuda,
    /// The CPU.
    Cpu,
}
