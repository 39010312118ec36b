//! Where scoring runs: choosing the device (`DEFAULT_DEVICE=auto|cuda|cpu`), the GPU's
//! one-class SVM detector (`GpuOcSvm`, feature `gpu`), and GPU telemetry for the metrics.
//!
//! The GPU scorer (feature `gpu`) runs CUDA kernels ([`KERNELS`], compiled at start-up with
//! NVRTC) through `cudarc`, loading the driver and NVRTC at run time: a `gpu` build needs
//! no CUDA toolkit and still starts, on the CPU, on a machine without a GPU. Without the
//! feature, `auto` means the CPU and `cuda` is refused at start-up.

#[cfg(feature = "gpu")]
mod cuda;
#[cfg(feature = "gpu")]
mod telemetry;

#[cfg(feature = "gpu")]
pub use cuda::{compile_kernels, compile_kernels_cubin, GpuScorer};

#[cfg(feature = "gpu")]
use std::ops::Range;

use anyhow::bail;
use serde::Serialize;

use crate::detect::Device;
use crate::model::Model;

/// The CUDA C source of the scoring kernels.
pub const KERNELS: &str = include_str!("kernels.cu");

/// Why a build without the `gpu` feature cannot use a GPU.
#[cfg(not(feature = "gpu"))]
pub(super) const NO_GPU_BUILD: &str =
    "this build has no GPU support (built without the `gpu` feature: cargo build --features gpu)";

/// The GPU scoring would run on.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GpuInfo {
    /// CUDA ordinal (after `CUDA_VISIBLE_DEVICES`).
    pub ordinal: usize,
    /// The device's name, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// `GPU-xxxxxxxx-...`, as `nvidia-smi -L` prints it.
    pub uuid: String,
    /// Compute capability (major, minor).
    pub compute_capability: (i32, i32),
    /// Device memory, bytes.
    pub memory_total_bytes: u64,
    /// Free device memory when probed, bytes.
    pub memory_free_bytes: u64,
}

/// The device a run scores on, and why.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeviceChoice {
    /// As configured.
    pub requested: Device,
    /// Where scoring runs: [`Device::Cpu`] or [`Device::Cuda`].
    pub used: Device,
    /// The GPU, when one is usable (used or not).
    pub gpu: Option<GpuInfo>,
    /// Why this device, in words (with `auto` on the CPU: what made the GPU unusable).
    pub reason: String,
}

/// The usable GPU, or why there is none (the driver's or loader's error included). Probed
/// once per process: the CUDA context and the compiled kernels are made here and shared
/// by every worker.
pub fn probe() -> Result<GpuInfo, String> {
    #[cfg(feature = "gpu")]
    {
        cuda::gpu().map(|g| g.info.clone())
    }
    #[cfg(not(feature = "gpu"))]
    {
        Err(NO_GPU_BUILD.to_string())
    }
}

/// Decides where to score: `cpu` on the CPU; `cuda` on the GPU, or an error saying why it
/// cannot be used; `auto` on the GPU when one is usable, else on the CPU.
pub fn resolve(requested: Device) -> anyhow::Result<DeviceChoice> {
    if requested == Device::Cpu {
        return Ok(DeviceChoice {
            requested,
            used: Device::Cpu,
            // not probed: `cpu` must not touch a GPU (nor load its driver)
            gpu: None,
            reason: "DEFAULT_DEVICE=cpu".into(),
        });
    }
    match probe() {
        Ok(gpu) => Ok(DeviceChoice {
            requested,
            used: Device::Cuda,
            reason: format!(
                "DEFAULT_DEVICE={}: CUDA device {} ({}) is usable",
                device_name(requested),
                gpu.ordinal,
                gpu.name
            ),
            gpu: Some(gpu),
        }),
        Err(why) if requested == Device::Cuda => {
            bail!("DEFAULT_DEVICE=cuda, but no GPU can be used: {why}. Use DEFAULT_DEVICE=auto or cpu to score on the CPU")
        }
        Err(why) => Ok(DeviceChoice {
            requested,
            used: Device::Cpu,
            gpu: None,
            reason: format!("DEFAULT_DEVICE=auto and no usable GPU: {why}"),
        }),
    }
}

/// The device to score `model` on: [`resolve`], then [`fit_to_model`]. What every run
/// that scores calls.
pub fn resolve_for(requested: Device, model: &Model) -> anyhow::Result<DeviceChoice> {
    fit_to_model(resolve(requested)?, model)
}

/// `choice` checked against the model: a GPU that cannot score it (an RFF window
/// longer than its kernel takes) sends `auto` to the CPU, saying why, and stops `cuda`.
pub fn fit_to_model(choice: DeviceChoice, model: &Model) -> anyhow::Result<DeviceChoice> {
    #[cfg(feature = "gpu")]
    if choice.used == Device::Cuda {
        if let Err(why) = GpuScorer::supports(model) {
            if choice.requested == Device::Cuda {
                bail!("DEFAULT_DEVICE=cuda, but the GPU cannot score this model: {why}. Use DEFAULT_DEVICE=auto or cpu to score on the CPU");
            }
            return Ok(DeviceChoice {
                used: Device::Cpu,
                gpu: None,
                reason: format!("DEFAULT_DEVICE=auto and the GPU cannot score this model: {why}"),
                ..choice
            });
        }
    }
    #[cfg(not(feature = "gpu"))]
    let _ = model;
    Ok(choice)
}

fn device_name(d: Device) -> &'static str {
    match d {
        Device::Auto => "auto",
        Device::Cuda => "cuda",
        Device::Cpu => "cpu",
    }
}

/// The one-class SVM (linear or kernel) on this worker's own CUDA stream: the
/// [`super::Detector`] for a GPU, scoring as [`GpuScorer`] does and bringing back only
/// the scores at its threshold and over.
#[cfg(feature = "gpu")]
pub struct GpuOcSvm {
    scorer: GpuScorer,
}

#[cfg(feature = "gpu")]
impl GpuOcSvm {
    /// The detector for features `range` of `model`, keeping the scores `>= threshold`.
    pub fn new(model: &Model, range: Range<usize>, threshold: f32) -> anyhow::Result<GpuOcSvm> {
        Ok(GpuOcSvm {
            scorer: GpuScorer::new(model, range, threshold)?.with_departure_guard(),
        })
    }
}

#[cfg(feature = "gpu")]
impl super::Detector for GpuOcSvm {
    fn needs(&self) -> super::Needs {
        super::Needs {
            window: self.scorer.window(),
            stride: None,
            stateful: false,
        }
    }

    fn features(&self) -> Range<usize> {
        self.scorer.lo()..self.scorer.lo() + self.scorer.width()
    }

    /// A GPU failure mid-run (a lost device) is not recoverable here: the worker panics
    /// with the driver's error, and the run reports it.
    fn score(&mut self, windows: &[f32]) -> super::Scores {
        match self.scorer.score_compacted(windows) {
            Ok(c) => super::Scores::Compacted(c),
            Err(e) => panic!("GPU scoring of features {}..: {e:#}", self.scorer.lo()),
        }
    }

    fn device(&self) -> Device {
        Device::Cuda
    }
}

/// The GPU in use by this process, sampled now (NVML where it loads, else the CUDA
/// driver's free memory).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GpuSample {
    /// CUDA ordinal.
    pub ordinal: usize,
    /// The device's name.
    pub name: String,
    /// Device memory in use (all processes), bytes.
    pub memory_used_bytes: u64,
    /// Device memory, bytes.
    pub memory_total_bytes: u64,
    /// Percent of the last sample period a kernel ran (NVML only).
    pub utilization_percent: Option<u32>,
    /// Percent of the last sample period device memory was read or written (NVML only).
    pub memory_utilization_percent: Option<u32>,
}

/// The GPU this process scores on, sampled now; `None` when it scores on the CPU.
pub fn sample() -> Option<GpuSample> {
    #[cfg(feature = "gpu")]
    {
        telemetry::sample()
    }
    #[cfg(not(feature = "gpu"))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cpu` never needs a GPU, and a build or machine without one gives `auto` the CPU
    /// with the reason and refuses `cuda` saying why.
    #[test]
    fn devices_resolve() {
        let cpu = resolve(Device::Cpu).unwrap();
        assert_eq!(cpu.used, Device::Cpu);
        match probe() {
            Ok(gpu) => {
                let auto = resolve(Device::Auto).unwrap();
                assert_eq!(auto.used, Device::Cuda);
                assert_eq!(auto.gpu.as_ref(), Some(&gpu));
                assert_eq!(resolve(Device::Cuda).unwrap().used, Device::Cuda);
            }
            Err(why) => {
                let auto = resolve(Device::Auto).unwrap();
                assert_eq!(auto.used, Device::Cpu);
                assert!(auto.reason.contains(&why), "{}", auto.reason);
                let err = resolve(Device::Cuda).unwrap_err().to_string();
                assert!(
                    err.contains("DEFAULT_DEVICE=cuda") && err.contains(&why),
                    "{err}"
                );
                assert!(sample().is_none());
            }
        }
    }

    #[cfg(not(feature = "gpu"))]
    #[test]
    fn without_the_feature_cuda_names_the_build() {
        let err = resolve(Device::Cuda).unwrap_err().to_string();
        assert!(err.contains("without the `gpu` feature"), "{err}");
    }

    /// The kernels' copies of trig.rs's constants, evaluated in trig.rs's order, give
    /// trig::cos's and trig::sincos's bits: a typo in a constant of kernels.cu would show
    /// here, without a GPU.
    #[test]
    fn kernel_constants_compute_trigs_bits() {
        let constant = |name: &str| -> f32 {
            let line = KERNELS
                .lines()
                .find(|l| l.starts_with(&format!("#define TW_{name} ")))
                .unwrap_or_else(|| panic!("no TW_{name} in kernels.cu"));
            let literal = line.rsplit(' ').next().unwrap().trim_end_matches('f');
            literal.parse().unwrap()
        };
        // parsed once: the loop below evaluates them millions of times
        let table: std::collections::HashMap<&str, f32> = [
            "ROUND_MAGIC",
            "INV_TWO_PI",
            "TWO_PI_HI",
            "TWO_PI_LO",
            "PI_HI",
            "PI_LO",
            "HALF_PI_HI",
            "FOLD_MAX",
            "C0",
            "C1",
            "C2",
            "C3",
            "C4",
            "C5",
            "C6",
            "TWO_OVER_PI",
            "HALF_PI_1",
            "HALF_PI_2",
            "QUARTER_MAX",
            "SQ0",
            "SQ1",
            "SQ2",
            "CQ0",
            "CQ1",
            "CQ2",
        ]
        .into_iter()
        .map(|n| (n, constant(n)))
        .collect();
        let c = |n: &str| table[n];
        let (magic, sign) = (c("ROUND_MAGIC"), 0x8000_0000u32);
        let min = |a: f32, b: f32| if a < b { a } else { b };
        let max = |a: f32, b: f32| if a > b { a } else { b };
        let cos = |x: f32| -> f32 {
            let k = x * c("INV_TWO_PI") + magic - magic;
            let y = x - k * c("TWO_PI_HI") - k * c("TWO_PI_LO");
            let a = f32::from_bits(y.to_bits() & !sign);
            let flip = a > c("HALF_PI_HI");
            let u = if flip { c("PI_HI") - a + c("PI_LO") } else { a };
            let u = max(0.0, min(c("FOLD_MAX"), u));
            let (u2, u4) = (u * u, u * u * (u * u));
            let u8 = u4 * u4;
            let p01 = c("C0") + c("C1") * u2;
            let p23 = c("C2") + c("C3") * u2;
            let p6 = c("C4") + c("C5") * u2 + c("C6") * u4;
            let r = p01 + p23 * u4 + p6 * u8;
            f32::from_bits(r.to_bits() ^ if flip { sign } else { 0 })
        };
        let sincos = |x: f32| -> (f32, f32) {
            let t = x * c("TWO_OVER_PI") + magic;
            let k = t - magic;
            let y = x - k * c("HALF_PI_1") - k * c("HALF_PI_2");
            let y = max(-c("QUARTER_MAX"), min(c("QUARTER_MAX"), y));
            let y2 = y * y;
            let sp = c("SQ0") + y2 * (c("SQ1") + y2 * c("SQ2"));
            let sin_y = y + y * y2 * sp;
            let cp = c("CQ0") + y2 * (c("CQ1") + y2 * c("CQ2"));
            let cos_y = 1.0 + y2 * (-0.5 + y2 * cp);
            let odd = t.to_bits() << 31;
            let sin_sign = (t.to_bits() << 30) & sign;
            let (s, co) = if odd != 0 {
                (cos_y, sin_y)
            } else {
                (sin_y, cos_y)
            };
            (
                f32::from_bits(co.to_bits() ^ sin_sign ^ odd),
                f32::from_bits(s.to_bits() ^ sin_sign),
            )
        };
        assert_eq!(c("HALF_PI_HI"), c("PI_HI") * 0.5);
        for i in -100_000..100_000 {
            let x = i as f32 * 0.000_731 + (i % 7) as f32 * 1e-4;
            let want = crate::model::trig::cos(x);
            assert_eq!(cos(x).to_bits(), want.to_bits(), "cos({x})");
            let (wc, ws) = crate::model::trig::sincos(x);
            let (gc, gs) = sincos(x);
            assert_eq!(
                (gc.to_bits(), gs.to_bits()),
                (wc.to_bits(), ws.to_bits()),
                "sincos({x})"
            );
        }
    }
}
