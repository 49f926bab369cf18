//! Choosing where a worker computes: probing for a usable NVIDIA GPU at run time.
//!
//! The CUDA driver, nvrtc and cuBLAS are loaded dynamically (cudarc), so one binary
//! runs everywhere; a missing piece becomes an [`Unusable`] reason instead of a
//! panic inside a kernel.

use std::panic::{catch_unwind, AssertUnwindSafe};

use cudarc::driver::{result, sys};
use dlc_job::DeviceSpec;
use serde::Serialize;

use crate::TrainError;

/// One visible GPU.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GpuInfo {
    /// Ordinal among the visible devices (after `CUDA_VISIBLE_DEVICES`).
    pub index: usize,
    /// Marketing name.
    pub name: String,
    /// Total memory in bytes.
    pub memory_bytes: usize,
    /// Compute capability `(major, minor)`.
    pub compute_capability: (i32, i32),
}

/// What the CUDA probe found.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CudaReport {
    /// Driver version as `major.minor`.
    pub driver_version: String,
    /// Visible GPUs.
    pub gpus: Vec<GpuInfo>,
}

/// Why no GPU can be used.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Unusable(pub String);

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Probes the CUDA driver and every visible GPU. Never panics.
pub fn probe_cuda() -> Result<CudaReport, Unusable> {
    // SAFETY: only tries to dlopen the driver library by its usual names.
    if !unsafe { sys::is_culib_present() } {
        return Err(Unusable(
            "no NVIDIA driver: libcuda.so (the CUDA driver library) was not found".into(),
        ));
    }
    let probed = catch_unwind(AssertUnwindSafe(|| -> Result<CudaReport, Unusable> {
        result::init()
            .map_err(|e| Unusable(format!("the CUDA driver failed to initialise: {e}")))?;
        let mut v: std::ffi::c_int = 0;
        // SAFETY: cuDriverGetVersion writes one int through a valid pointer.
        let driver_version = match unsafe { sys::cuDriverGetVersion(&mut v) } {
            sys::CUresult::CUDA_SUCCESS => format!("{}.{}", v / 1000, (v % 1000) / 10),
            _ => "unknown".into(),
        };
        let count = result::device::get_count()
            .map_err(|e| Unusable(format!("cannot count CUDA devices: {e}")))?;
        if count <= 0 {
            let vis = std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_else(|_| "unset".into());
            return Err(Unusable(format!(
                "the CUDA driver {driver_version} sees no GPU (CUDA_VISIBLE_DEVICES={vis})"
            )));
        }
        // Device queries only: no context is created (a context per GPU per worker
        // costs memory, and fails on a GPU in exclusive-process mode that another
        // worker already holds).
        let mut gpus = Vec::new();
        for index in 0..count as usize {
            let dev = result::device::get(index as std::ffi::c_int)
                .map_err(|e| Unusable(format!("GPU {index}: {e}")))?;
            let attribute = |a| {
                // SAFETY: `dev` was returned by cuDeviceGet.
                unsafe { result::device::get_attribute(dev, a) }.unwrap_or(0)
            };
            gpus.push(GpuInfo {
                index,
                name: result::device::get_name(dev).unwrap_or_else(|_| "unknown".into()),
                // SAFETY: `dev` was returned by cuDeviceGet.
                memory_bytes: unsafe { result::device::total_mem(dev) }.unwrap_or(0),
                compute_capability: (
                    attribute(
                        sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                    ),
                    attribute(
                        sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
                    ),
                ),
            });
        }
        Ok(CudaReport {
            driver_version,
            gpus,
        })
    }));
    let report = probed.unwrap_or_else(|p| {
        let msg = crate::error::panic_message(&*p).unwrap_or_else(|| "unknown failure".into());
        Err(Unusable(format!("probing CUDA failed: {msg}")))
    })?;
    // Kernels are compiled at run time with nvrtc.
    // SAFETY: only tries to dlopen the nvrtc library by its usual names.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(Unusable(format!(
            "found {} GPU(s) but not libnvrtc (the CUDA runtime compiler), which dlcluster needs to \
             build its kernels; install the CUDA toolkit's nvrtc package",
            report.gpus.len()
        )));
    }
    Ok(report)
}

/// A resolved device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// The CPU (burn-flex).
    Cpu,
    /// GPU with this ordinal.
    Cuda(usize),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// Resolves a device choice for the worker with `local_rank` on this host: `auto`
/// falls back to the CPU with a notice; `cuda` without a usable GPU is an error that
/// says what is missing; workers are spread over the visible GPUs.
pub fn resolve(
    spec: DeviceSpec,
    local_rank: usize,
) -> Result<(Device, Option<String>), TrainError> {
    match spec {
        DeviceSpec::Cpu => Ok((Device::Cpu, None)),
        DeviceSpec::Auto => match probe_cuda() {
            Ok(r) => {
                let g = &r.gpus[local_rank % r.gpus.len()];
                Ok((
                    Device::Cuda(g.index),
                    Some(format!("device auto: using GPU {} ({})", g.index, g.name)),
                ))
            }
            Err(why) => Ok((
                Device::Cpu,
                Some(format!(
                    "device auto: no usable GPU ({why}); training on CPU"
                )),
            )),
        },
        DeviceSpec::Cuda(index) => {
            let r = probe_cuda()
                .map_err(|why| TrainError::Usage(format!("device cuda requested but {why}")))?;
            let i = match index {
                Some(i) if i < r.gpus.len() => i,
                Some(i) => {
                    return Err(TrainError::Usage(format!(
                        "device cuda:{i} requested but only {} GPU(s) are visible",
                        r.gpus.len()
                    )))
                }
                None => local_rank % r.gpus.len(),
            };
            Ok((Device::Cuda(i), None))
        }
    }
}

/// The CPU as `dlc devices` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CpuInfo {
    /// Model name from /proc/cpuinfo.
    pub model: String,
    /// Logical cores available to this process.
    pub cores: usize,
    /// Widest SIMD instruction set detected.
    pub simd: String,
}

/// Describes this machine's CPU.
pub fn cpu_info() -> CpuInfo {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    CpuInfo {
        model,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        simd: simd_level().into(),
    }
}

fn simd_level() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "avx512";
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return "avx2+fma";
        }
        if std::arch::is_x86_feature_detected!("sse4.2") {
            return "sse4.2";
        }
        "sse2"
    }
    #[cfg(target_arch = "aarch64")]
    {
        "neon"
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        "scalar"
    }
}
