//! Memory and utilisation of the GPU this process scores on, for `/metrics` and the
//! periodic log line: from NVML (`libnvidia-ml`, loaded at run time) when it loads, else
//! memory alone from the CUDA driver.

use std::sync::OnceLock;

use nvml_wrapper::Nvml;

use super::{GpuInfo, GpuSample};

/// The GPU scoring uses; set when the first GPU scorer is made.
static IN_USE: OnceLock<GpuInfo> = OnceLock::new();

/// Records that this process scores on `gpu`.
pub(super) fn in_use(gpu: &GpuInfo) {
    let _ = IN_USE.set(gpu.clone());
}

/// NVML, initialised once; `None` when the library does not load (a container without
/// it, say): the samples then carry memory without utilisation.
fn nvml() -> Option<&'static Nvml> {
    static NVML: OnceLock<Option<Nvml>> = OnceLock::new();
    NVML.get_or_init(|| match Nvml::init() {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::warn!(error = %e, "NVML did not load: GPU utilisation will not be reported");
            None
        }
    })
    .as_ref()
}

/// The GPU in use, sampled now; `None` when no GPU scorer was made.
pub(super) fn sample() -> Option<GpuSample> {
    let gpu = IN_USE.get()?;
    let mut s = GpuSample {
        ordinal: gpu.ordinal,
        name: gpu.name.clone(),
        memory_used_bytes: 0,
        memory_total_bytes: gpu.memory_total_bytes,
        utilization_percent: None,
        memory_utilization_percent: None,
    };
    // NVML numbers devices its own way: find ours by UUID
    let device = nvml().and_then(|n| n.device_by_uuid(gpu.uuid.as_str()).ok());
    match device {
        Some(d) => {
            if let Ok(m) = d.memory_info() {
                s.memory_used_bytes = m.used;
                s.memory_total_bytes = m.total;
            }
            if let Ok(u) = d.utilization_rates() {
                s.utilization_percent = Some(u.gpu);
                s.memory_utilization_percent = Some(u.memory);
            }
        }
        None => {
            let (free, total) = super::cuda::gpu().ok()?.mem_info()?;
            s.memory_used_bytes = total.saturating_sub(free);
            s.memory_total_bytes = total;
        }
    }
    Some(s)
}
