//! The GPU scorer: the process's CUDA context and compiled kernels, made once and shared
//! by the workers; per worker, its feature range's weights on the device, its own
//! stream, and pinned host buffers for the batch and the anomalies that come back.

use std::ops::Range;
use std::sync::{Arc, OnceLock};

use anyhow::{bail, Context};
use cudarc::driver::{
    result as cu, CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtrMut, LaunchConfig,
    PinnedHostSlice, PushKernelArg, ValidAsZeroBits,
};
use cudarc::nvrtc::{self, CompileError, CompileOptions};

use super::{GpuInfo, KERNELS};
use crate::detect::{guard_floor, DEPARTURE_SIGMAS};
use crate::model::{Folded, Model, Scorer, FOLDED_BLOCK};
use crate::types::Compacted;

/// Dynamic shared memory a block may use without opting in (every GPU since Kepler).
const SHARED_BYTES: usize = 48 * 1024;
/// Threads per block: four warps, small enough that a 25,000-feature batch of one window
/// still spreads over ~200 blocks, i.e. every SM of an H100.
const BLOCK: usize = 128;
/// Anomalies the device keeps per batch at most, beyond which the batch is scored again
/// with every score copied back (a storm of anomalies: rare, and still exact).
const HIT_CAPACITY: usize = 1 << 20;
/// The grid's y dimension at most (CUDA's limit); the kernels loop over further windows.
const MAX_GRID_Y: usize = 65_535;

/// The process's GPU: one context (the device's primary one), the kernels loaded once.
pub(super) struct Gpu {
    ctx: Arc<CudaContext>,
    linear: CudaFunction,
    rff: CudaFunction,
    pub(super) info: GpuInfo,
}

impl Gpu {
    /// (free, total) device memory now, bytes.
    pub(super) fn mem_info(&self) -> Option<(u64, u64)> {
        self.ctx
            .mem_get_info()
            .ok()
            .map(|(f, t)| (f as u64, t as u64))
    }
}

/// The process's GPU, made on first use; the error says what is missing (driver library,
/// device, NVRTC, ...) in words and with the driver's own error.
pub(super) fn gpu() -> Result<Arc<Gpu>, String> {
    static GPU: OnceLock<Result<Arc<Gpu>, String>> = OnceLock::new();
    GPU.get_or_init(|| {
        // cudarc panics when a library or symbol is missing (dynamic loading); that is an
        // unusable GPU, not a crash.
        std::panic::catch_unwind(init)
            .unwrap_or_else(|p| {
                let what = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into());
                Err(format!("loading CUDA failed: {what}"))
            })
            .map(Arc::new)
    })
    .clone()
}

fn init() -> Result<Gpu, String> {
    // SAFETY: only tries to dlopen the driver library by its usual names.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("the CUDA driver library (libcuda.so.1) cannot be loaded: no NVIDIA driver on this machine, or not on the library path".into());
    }
    let count = CudaContext::device_count().map_err(|e| format!("cuInit/cuDeviceGetCount: {e}"))?;
    if count < 1 {
        return Err("the CUDA driver sees no device (check CUDA_VISIBLE_DEVICES)".into());
    }
    let ctx =
        CudaContext::new(0).map_err(|e| format!("creating a CUDA context on device 0: {e}"))?;
    // SAFETY: every device buffer is allocated, written, read and freed on the one
    // stream of the scorer that owns it, so stream order alone orders its uses: cudarc's
    // cross-stream events (a few driver calls per kernel argument) would only add latency.
    unsafe { ctx.disable_event_tracking() };
    let name = ctx.name().map_err(|e| format!("cuDeviceGetName: {e}"))?;
    let cc = ctx
        .compute_capability()
        .map_err(|e| format!("compute capability: {e}"))?;
    let (free, total) = ctx
        .mem_get_info()
        .map_err(|e| format!("cuMemGetInfo: {e}"))?;
    let uuid = ctx
        .uuid()
        .map(|u| format_uuid(&u.bytes.map(|b| b as u8)))
        .map_err(|e| format!("cuDeviceGetUuid: {e}"))?;
    // Machine code for the device itself first: it loads on any driver of the same
    // major CUDA version, where PTX from an NVRTC newer than the driver does not. Then
    // PTX, which the driver compiles: for the device's architecture, or, for an NVRTC
    // older than the GPU, for the default target.
    let cubin = compile_kernels_cubin(&format!("sm_{}{}", cc.0, cc.1)).and_then(|cubin| {
        ctx.load_module(nvrtc::Ptx::from_binary(cubin))
            .map_err(|e| format!("loading the kernels' CUBIN: {e}"))
    });
    let module = match cubin {
        Ok(module) => module,
        Err(cubin_failed) => {
            let arch = format!("compute_{}{}", cc.0, cc.1);
            let ptx = compile_kernels(Some(&arch)).or_else(|first| {
                compile_kernels(None)
                    .map_err(|e| format!("{first}; without --gpu-architecture: {e}"))
            })?;
            ctx.load_module(nvrtc::Ptx::from_src(ptx)).map_err(|e| {
                format!(
                    "loading the kernels' PTX: {e} ({}); before that, {cubin_failed}",
                    versions()
                )
            })?
        }
    };
    let function = |n: &str| {
        module
            .load_function(n)
            .map_err(|e| format!("kernel {n}: {e}"))
    };
    Ok(Gpu {
        linear: function("tw_score_linear")?,
        rff: function("tw_score_rff")?,
        info: GpuInfo {
            ordinal: ctx.ordinal(),
            name,
            uuid,
            compute_capability: cc,
            memory_total_bytes: total as u64,
            memory_free_bytes: free as u64,
        },
        ctx,
    })
}

/// The first `n` entries of an allocated pinned anomaly buffer.
fn pinned_prefix<T: ValidAsZeroBits>(
    buffer: &mut Option<PinnedHostSlice<T>>,
    n: usize,
) -> anyhow::Result<&mut [T]> {
    let all = buffer
        .as_mut()
        .expect("allocated")
        .as_mut_slice()
        .context("pinned anomaly buffer")?;
    Ok(&mut all[..n])
}

/// NVRTC's and the driver's CUDA versions, for a PTX the driver refuses: PTX from an
/// NVRTC newer than the driver does not load (CUDA_ERROR_UNSUPPORTED_PTX_VERSION).
fn versions() -> String {
    let (mut major, mut minor, mut driver) = (0, 0, 0);
    // SAFETY: both only write the integers passed; the libraries are loaded by now (the
    // kernels compiled and a context exists).
    let nvrtc = unsafe { nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    let drv = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver) };
    let nvrtc = if nvrtc == nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        format!("{major}.{minor}")
    } else {
        "unknown".into()
    };
    let driver = if drv == cudarc::driver::sys::CUresult::CUDA_SUCCESS {
        format!("{}.{}", driver / 1000, driver % 1000 / 10)
    } else {
        "unknown".into()
    };
    format!("NVRTC {nvrtc}, driver CUDA {driver}: NVRTC must not be newer than the driver")
}

/// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, as NVML and `nvidia-smi -L` spell it.
fn format_uuid(b: &[u8; 16]) -> String {
    let hex = |r: Range<usize>| b[r].iter().map(|x| format!("{x:02x}")).collect::<String>();
    format!(
        "GPU-{}-{}-{}-{}-{}",
        hex(0..4),
        hex(4..6),
        hex(6..8),
        hex(8..10),
        hex(10..16)
    )
}

/// NVRTC's options for the kernels: without fused multiply-adds, flushing of subnormals
/// or approximate division, so that they round exactly as the CPU scorer does.
const EXACT_MATH: [&str; 4] = [
    "--fmad=false",
    "--ftz=false",
    "--prec-div=true",
    "--prec-sqrt=true",
];

const NO_NVRTC: &str = "the NVRTC library (libnvrtc.so) cannot be loaded: install the CUDA runtime compiler (e.g. the cuda-nvrtc package) or put it on LD_LIBRARY_PATH";

/// Compiles [`KERNELS`] to PTX with NVRTC, for `arch` (e.g. `compute_90`) or NVRTC's
/// default target, with [`EXACT_MATH`]. Errors carry NVRTC's log; a missing NVRTC
/// library is an error too, not a panic.
pub fn compile_kernels(arch: Option<&str>) -> Result<String, String> {
    // SAFETY: only tries to dlopen NVRTC by its usual names.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(NO_NVRTC.into());
    }
    let opts = CompileOptions {
        options: EXACT_MATH
            .iter()
            .map(|o| o.to_string())
            .chain(arch.map(|a| format!("--gpu-architecture={a}")))
            .collect(),
        name: Some("tidewatch_kernels.cu".into()),
        ..CompileOptions::default()
    };
    std::panic::catch_unwind(|| nvrtc::compile_ptx_with_opts(KERNELS, opts))
        .map_err(|_| "NVRTC panicked while compiling the kernels".to_string())?
        .map(|ptx| ptx.to_src())
        .map_err(|e| match e {
            CompileError::CompileError { nvrtc, log, .. } => {
                format!("NVRTC: {nvrtc:?}: {}", log.to_string_lossy())
            }
            other => format!("NVRTC: {other:?}"),
        })
}

/// Compiles [`KERNELS`] to machine code (a CUBIN) for `sm` (e.g. `sm_90`) with NVRTC,
/// with [`EXACT_MATH`]. cudarc's safe API returns PTX only, hence the calls to NVRTC's
/// CUBIN functions here.
pub fn compile_kernels_cubin(sm: &str) -> Result<Vec<u8>, String> {
    use cudarc::nvrtc::{result, sys};
    use std::ffi::CString;
    // SAFETY: only tries to dlopen NVRTC by its usual names.
    if !unsafe { sys::is_culib_present() } {
        return Err(NO_NVRTC.into());
    }
    let source = CString::new(KERNELS).map_err(|e| format!("kernel source: {e}"))?;
    let name = CString::new("tidewatch_kernels.cu").expect("no NUL");
    let options: Vec<String> = EXACT_MATH
        .iter()
        .map(|o| o.to_string())
        .chain([format!("--gpu-architecture={sm}")])
        .collect();
    // cudarc panics when a symbol is missing from the library it loaded (an NVRTC too old
    // for CUBINs): that is an error here, as for the PTX.
    std::panic::catch_unwind(|| -> Result<Vec<u8>, String> {
        let prog =
            result::create_program(&source, Some(&name)).map_err(|e| format!("NVRTC: {e:?}"))?;
        // SAFETY: `prog` was created above and is destroyed once, below.
        let cubin = unsafe { compile_to_cubin(prog, &options, sm) };
        // SAFETY: created above, not destroyed before.
        let _ = unsafe { result::destroy_program(prog) };
        cubin
    })
    .map_err(|_| "NVRTC panicked while compiling the kernels".to_string())?
}

/// Compiles `prog` and reads its CUBIN, or NVRTC's log on failure.
///
/// # Safety
/// `prog` is a live NVRTC program.
unsafe fn compile_to_cubin(
    prog: cudarc::nvrtc::sys::nvrtcProgram,
    options: &[String],
    sm: &str,
) -> Result<Vec<u8>, String> {
    use cudarc::nvrtc::{result, sys};
    if let Err(e) = result::compile_program(prog, options) {
        let log = result::get_program_log(prog)
            .map(|l| {
                let bytes: Vec<u8> = l.iter().map(|&c| c as u8).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            })
            .unwrap_or_default();
        return Err(format!("NVRTC ({sm}): {e:?}: {log}"));
    }
    let mut size = 0usize;
    sys::nvrtcGetCUBINSize(prog, &mut size)
        .result()
        .map_err(|e| format!("nvrtcGetCUBINSize: {e:?}"))?;
    // the buffer holds the size NVRTC reported
    let mut cubin = vec![0u8; size];
    sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr().cast())
        .result()
        .map_err(|e| format!("nvrtcGetCUBIN: {e:?}"))?;
    Ok(cubin)
}

/// The folded parameters on the device.
// One per worker, never moved in a loop: boxing the larger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
enum Params {
    Linear {
        weight_t: CudaSlice<f32>,
        bias: CudaSlice<f32>,
    },
    Rff {
        mean: CudaSlice<f32>,
        inv_std: CudaSlice<f32>,
        omega: CudaSlice<f32>,
        phase: CudaSlice<f32>,
        weight: CudaSlice<f32>,
        bias: CudaSlice<f32>,
        components: u32,
        /// 0: one cosine per component.
        pairs: u32,
        /// Whether the pairs' sines wait in shared memory (else computed again).
        store_sines: bool,
        /// Dynamic shared memory per block, bytes.
        shared: u32,
    },
}

/// Scores a feature range of one model on the GPU, on a stream of its own. Scores are
/// those of [`Scorer`]: the same folded weights, the same operations in the same order.
pub struct GpuScorer {
    gpu: Arc<Gpu>,
    stream: Arc<CudaStream>,
    lo: usize,
    width: usize,
    window: usize,
    threshold: f32,
    /// The departure guard's floor ([`guard_floor`]) for an RFF
    /// model, 0 for none: see [`GpuScorer::with_departure_guard`].
    guard_floor: f32,
    params: Params,
    block: usize,
    /// Windows the buffers below hold.
    capacity: usize,
    /// The batch, `[capacity][W][F_part]`: pinned, written by the host and copied to
    /// `x_dev` by DMA.
    x_host: Option<PinnedHostSlice<f32>>,
    x_dev: Option<CudaSlice<f32>>,
    /// Every score `[capacity][F_part]`, allocated when first asked for.
    scores_dev: Option<CudaSlice<f32>>,
    /// What the kernel gets for `scores` when it is not to write them.
    no_scores: CudaSlice<f32>,
    count_dev: CudaSlice<u32>,
    count_host: PinnedHostSlice<u32>,
    hit_index_dev: Option<CudaSlice<u32>>,
    hit_score_dev: Option<CudaSlice<f32>>,
    hit_index_host: Option<PinnedHostSlice<u32>>,
    hit_score_host: Option<PinnedHostSlice<f32>>,
}

impl GpuScorer {
    /// Whether the GPU scorer can score `model`: an RFF window's standardised values
    /// live in a block's shared memory, which bounds the window length.
    pub fn supports(model: &Model) -> Result<(), String> {
        let window = model.window();
        let longest = SHARED_BYTES / (32 * 4);
        match model.meta.kind {
            crate::model::ModelKind::Rff if window > longest => Err(format!(
                "window {window} is too long for the GPU scorer's RFF kernel (at most {longest})"
            )),
            _ => Ok(()),
        }
    }

    /// A scorer for features `range` of `model` that keeps scores `>= threshold`: folds
    /// the weights as [`Scorer::new`] does, uploads them once, and opens its stream.
    pub fn new(model: &Model, range: Range<usize>, threshold: f32) -> anyhow::Result<GpuScorer> {
        let gpu = super::cuda::gpu().map_err(anyhow::Error::msg)?;
        let err = |what: &'static str| move |e: cu::DriverError| anyhow::anyhow!("{what}: {e}");
        let stream = gpu
            .ctx
            .new_stream()
            .map_err(err("creating a CUDA stream"))?;
        let cpu = Scorer::new(model, range.clone());
        let (window, width) = (cpu.window(), cpu.width());
        let up = |v: &[f32]| stream.clone_htod(v).map_err(err("uploading weights"));
        let mut block = BLOCK;
        let params = match cpu.folded() {
            Folded::Linear { weight_t, bias } => Params::Linear {
                weight_t: up(weight_t)?,
                bias: up(bias)?,
            },
            Folded::Rff {
                mean,
                inv_std,
                omega,
                phase,
                weight,
                bias,
                pairs,
            } => {
                // the kernel reads weights in warps of 32 features: the CPU's blocks
                const _: () = assert!(FOLDED_BLOCK == 32);
                let d = phase.len();
                // z of every window step for every thread of a block in shared memory
                while block > 32 && window * block * 4 > SHARED_BYTES {
                    block /= 2;
                }
                if let Err(why) = GpuScorer::supports(model) {
                    bail!("{why}");
                }
                let n_sines = pairs.map_or(0, |n| d - n);
                let store_sines = (window + n_sines) * block * 4 <= SHARED_BYTES;
                let shared = (window + if store_sines { n_sines } else { 0 }) * block * 4;
                Params::Rff {
                    mean: up(mean)?,
                    inv_std: up(inv_std)?,
                    omega: up(omega)?,
                    phase: up(phase)?,
                    weight: up(weight)?,
                    bias: up(bias)?,
                    components: d as u32,
                    pairs: pairs.unwrap_or(0) as u32,
                    store_sines,
                    shared: shared as u32,
                }
            }
        };
        let no_scores = stream
            .alloc_zeros::<f32>(1)
            .map_err(err("allocating device memory"))?;
        let count_dev = stream
            .alloc_zeros::<u32>(1)
            .map_err(err("allocating device memory"))?;
        // SAFETY: pinned memory starts uninitialised; it is only read after the device
        // wrote it (the count is copied back before it is read).
        let count_host = unsafe { gpu.ctx.alloc_pinned_with_flags::<u32>(1, 0) }
            .map_err(err("allocating pinned host memory"))?;
        super::telemetry::in_use(&gpu.info);
        Ok(GpuScorer {
            gpu,
            stream,
            lo: range.start,
            width,
            window,
            threshold,
            guard_floor: 0.0,
            params,
            block,
            capacity: 0,
            x_host: None,
            x_dev: None,
            scores_dev: None,
            no_scores,
            count_dev,
            count_host,
            hit_index_dev: None,
            hit_score_dev: None,
            hit_index_host: None,
            hit_score_host: None,
        })
    }

    /// Scores an RFF model's windows as [`crate::detect::RffOcSvm`] does, with its
    /// departure guard (a value past [`DEPARTURE_SIGMAS`] from its training mean gets at
    /// least the guard's score, relative to this scorer's threshold), rather than as the
    /// plain [`Scorer`]. Without it the cosines wrap and a 1e30σ spike can go unflagged.
    /// A linear model has no guard.
    pub fn with_departure_guard(mut self) -> GpuScorer {
        if matches!(self.params, Params::Rff { .. }) {
            self.guard_floor = guard_floor(self.threshold);
        }
        self
    }

    /// Global index of the first feature scored.
    pub fn lo(&self) -> usize {
        self.lo
    }

    /// Number of features scored.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Window length.
    pub fn window(&self) -> usize {
        self.window
    }

    /// The threshold the device applies.
    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    /// The GPU it runs on.
    pub fn device(&self) -> &GpuInfo {
        &self.gpu.info
    }

    /// Scores `windows` (`[B][W][F_part]`) into `out` (`[B][F_part]`), every score copied
    /// back: for comparisons and benchmarks; the pipeline uses [`Self::score_compacted`].
    pub fn score(&mut self, windows: &[f32], out: &mut [f32]) -> anyhow::Result<()> {
        let b = self.windows_in(windows)?;
        anyhow::ensure!(out.len() == b * self.width, "output is not [B][F_part]");
        if b == 0 {
            return Ok(());
        }
        self.upload(windows, b)?;
        self.launch(b, true)?;
        let scores = self.scores_dev.as_ref().expect("allocated by launch");
        self.stream
            .memcpy_dtoh(&scores.slice(0..b * self.width), out)
            .context("copying scores back")?;
        self.stream.synchronize().context("scoring on the GPU")?;
        Ok(())
    }

    /// Scores `windows` (`[B][W][F_part]`) and brings back only the scores `>=` the
    /// threshold, by window and then feature: one copy in, one kernel, the count and the
    /// anomalies out.
    pub fn score_compacted(&mut self, windows: &[f32]) -> anyhow::Result<Compacted> {
        let b = self.windows_in(windows)?;
        let mut out = Compacted {
            threshold: self.threshold,
            hits: Vec::new(),
        };
        if b == 0 {
            return Ok(out);
        }
        self.upload(windows, b)?;
        self.launch(b, false)?;
        self.stream
            .memcpy_dtoh(&self.count_dev, &mut self.count_host)
            .context("copying the anomaly count back")?;
        self.stream.synchronize().context("scoring on the GPU")?;
        let count = self.count_host.as_slice().context("reading the count")?[0] as usize;
        let capacity = self.hit_capacity(b);
        let width = self.width as u32;
        if count <= capacity {
            if count > 0 {
                let (idx_dev, score_dev) = (
                    self.hit_index_dev.as_ref().expect("allocated"),
                    self.hit_score_dev.as_ref().expect("allocated"),
                );
                // Only the `count` hits cross the bus: cudarc copies as much as the
                // destination holds, so the destinations are the pinned buffers' first
                // `count` entries, not the whole buffers.
                let idx = pinned_prefix(&mut self.hit_index_host, count)?;
                let scores = pinned_prefix(&mut self.hit_score_host, count)?;
                self.stream
                    .memcpy_dtoh(&idx_dev.slice(0..count), idx)
                    .context("copying anomalies back")?;
                self.stream
                    .memcpy_dtoh(&score_dev.slice(0..count), scores)
                    .context("copying anomalies back")?;
                self.stream
                    .synchronize()
                    .context("copying anomalies back")?;
                out.hits = idx
                    .iter()
                    .zip(scores.iter())
                    .map(|(&i, &s)| (i / width, i % width, s))
                    .collect();
                // warps finish in any order: restore the CPU's (window, feature) order
                out.hits.sort_unstable_by_key(|&(w, f, _)| (w, f));
            }
        } else {
            // More anomalies than the device keeps: score again, every score copied back.
            let mut all = vec![0f32; b * self.width];
            self.score(windows, &mut all)?;
            for (i, &s) in all.iter().enumerate() {
                if s >= self.threshold {
                    out.hits.push((i as u32 / width, i as u32 % width, s));
                }
            }
        }
        Ok(out)
    }

    /// Anomalies the device keeps for a batch of `b` windows.
    fn hit_capacity(&self, b: usize) -> usize {
        (b * self.width).min(HIT_CAPACITY)
    }

    fn windows_in(&self, windows: &[f32]) -> anyhow::Result<usize> {
        let per_window = self.window * self.width;
        if per_window == 0 {
            // A worker with no features (more workers than features) has nothing to
            // score, as on the CPU.
            anyhow::ensure!(windows.is_empty(), "windows for a worker with no features");
            return Ok(0);
        }
        let b = windows.len() / per_window;
        anyhow::ensure!(
            b * per_window == windows.len(),
            "batch is not whole windows"
        );
        anyhow::ensure!(
            b * self.width <= u32::MAX as usize,
            "batch of {b} windows of {} features is too large for 32-bit indices",
            self.width
        );
        Ok(b)
    }

    /// Copies the batch into the pinned buffer and from there to the device, growing the
    /// buffers to `b` windows first if they are smaller.
    fn upload(&mut self, windows: &[f32], b: usize) -> anyhow::Result<()> {
        if b > self.capacity {
            self.grow(b)?;
        }
        let x_host = self.x_host.as_mut().expect("allocated by grow");
        let pinned = x_host.as_mut_slice().context("pinned batch buffer")?;
        pinned[..windows.len()].copy_from_slice(windows);
        let x_dev = self.x_dev.as_mut().expect("allocated by grow");
        let (dst, _record) = x_dev.device_ptr_mut(&self.stream);
        // SAFETY: `dst` holds `capacity` windows, at least `b`; the source is pinned memory
        // that outlives the copy: every call ends by synchronising the stream, so no copy
        // is pending when the buffer is written again or freed. (cudarc's safe copy would
        // move the whole buffer, not just the batch.)
        unsafe { cu::memcpy_htod_async(dst, &pinned[..windows.len()], self.stream.cu_stream()) }
            .context("copying the batch to the GPU")?;
        Ok(())
    }

    fn grow(&mut self, b: usize) -> anyhow::Result<()> {
        // Some headroom, so that batches creeping up one window at a time do not
        // reallocate pinned memory (slow) every time.
        let windows = b.next_power_of_two();
        let n = windows * self.window * self.width;
        // drop the old buffers first: their memory may be needed for the new ones
        self.x_host = None;
        self.x_dev = None;
        self.scores_dev = None;
        // SAFETY: write-combined pinned memory, uninitialised: the host only writes it
        // (the batch), then the device reads what was written.
        self.x_host = Some(
            unsafe { self.gpu.ctx.alloc_pinned::<f32>(n) }
                .context("allocating the pinned batch buffer")?,
        );
        // SAFETY: device memory read only where `upload` has written it.
        self.x_dev =
            Some(unsafe { self.stream.alloc::<f32>(n) }.context("allocating device memory")?);
        let hits = (windows * self.width).min(HIT_CAPACITY);
        if self.hit_index_dev.as_ref().is_none_or(|h| h.len() < hits) {
            self.hit_index_dev = None;
            self.hit_score_dev = None;
            self.hit_index_host = None;
            self.hit_score_host = None;
            // SAFETY (all four): read only below the count the kernel wrote them to.
            self.hit_index_dev = Some(unsafe { self.stream.alloc::<u32>(hits) }?);
            self.hit_score_dev = Some(unsafe { self.stream.alloc::<f32>(hits) }?);
            self.hit_index_host =
                Some(unsafe { self.gpu.ctx.alloc_pinned_with_flags::<u32>(hits, 0) }?);
            self.hit_score_host =
                Some(unsafe { self.gpu.ctx.alloc_pinned_with_flags::<f32>(hits, 0) }?);
        }
        self.capacity = windows;
        Ok(())
    }

    /// Runs the kernel over the `b` windows uploaded; with `all`, writes every score to
    /// `scores_dev` as well.
    fn launch(&mut self, b: usize, all: bool) -> anyhow::Result<()> {
        if all && self.scores_dev.is_none() {
            // SAFETY: read back only where the kernel wrote every score.
            self.scores_dev = Some(
                unsafe { self.stream.alloc::<f32>(self.capacity * self.width) }
                    .context("allocating device memory for scores")?,
            );
        }
        self.stream
            .memset_zeros(&mut self.count_dev)
            .context("resetting the anomaly count")?;
        let capacity = self.hit_capacity(b) as u32;
        // without `all` the kernel writes no score: it gets a placeholder
        let scores = match self.scores_dev.as_mut() {
            Some(s) if all => s,
            _ => &mut self.no_scores,
        };
        let (batch, window, width) = (b as u32, self.window as u32, self.width as u32);
        let write_scores = i32::from(all);
        let x = self.x_dev.as_ref().expect("allocated by grow");
        let hit_index = self.hit_index_dev.as_mut().expect("allocated by grow");
        let hit_score = self.hit_score_dev.as_mut().expect("allocated by grow");
        let mut cfg = LaunchConfig {
            grid_dim: (
                self.width.div_ceil(self.block) as u32,
                b.min(MAX_GRID_Y) as u32,
                1,
            ),
            block_dim: (self.block as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        match &self.params {
            Params::Linear { weight_t, bias } => {
                let mut l = self.stream.launch_builder(&self.gpu.linear);
                l.arg(x).arg(weight_t).arg(bias);
                l.arg(&batch).arg(&window).arg(&width).arg(&self.threshold);
                l.arg(scores).arg(&write_scores);
                l.arg(&mut self.count_dev)
                    .arg(hit_index)
                    .arg(hit_score)
                    .arg(&capacity);
                // SAFETY: the arguments match tw_score_linear's parameters one for one, and
                // every buffer holds what the grid reads or writes (b windows, `capacity`
                // anomalies).
                unsafe { l.launch(cfg) }.context("launching tw_score_linear")?;
            }
            Params::Rff {
                mean,
                inv_std,
                omega,
                phase,
                weight,
                bias,
                components,
                pairs,
                store_sines,
                shared,
            } => {
                cfg.shared_mem_bytes = *shared;
                let store = i32::from(*store_sines);
                let mut l = self.stream.launch_builder(&self.gpu.rff);
                l.arg(x)
                    .arg(mean)
                    .arg(inv_std)
                    .arg(omega)
                    .arg(phase)
                    .arg(weight)
                    .arg(bias);
                l.arg(&batch).arg(&window).arg(&width);
                l.arg(components)
                    .arg(pairs)
                    .arg(&store)
                    .arg(&self.threshold)
                    .arg(&self.guard_floor)
                    .arg(&DEPARTURE_SIGMAS);
                l.arg(scores).arg(&write_scores);
                l.arg(&mut self.count_dev)
                    .arg(hit_index)
                    .arg(hit_score)
                    .arg(&capacity);
                // SAFETY: as for the linear kernel; the shared memory holds z and, with
                // store_sines, the sines for every thread of a block.
                unsafe { l.launch(cfg) }.context("launching tw_score_rff")?;
            }
        }
        Ok(())
    }
}
