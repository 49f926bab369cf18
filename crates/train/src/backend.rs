//! Concrete burn backends.
//!
//! The CPU backend is burn's `flex` (im2col + gemm convolutions; 26× faster than
//! `ndarray` on our CNN, see DESIGN.md). It parallelises with rayon's global pool.

use burn::backend::Autodiff;

/// Inference backend on CPU.
pub type Cpu = burn::backend::Flex;
/// Training backend on CPU.
pub type CpuTrain = Autodiff<Cpu>;

/// Inference backend on an NVIDIA GPU (CUDA loaded at run time).
pub type Gpu = burn::backend::Cuda;
/// Training backend on an NVIDIA GPU.
pub type GpuTrain = Autodiff<Gpu>;
/// A GPU device by ordinal.
pub type GpuDevice = burn::backend::cuda::CudaDevice;

/// Sets the number of CPU threads used by the CPU backend. Call once, before any
/// tensor work; later calls (or calls after the pool started) have no effect and
/// return the number of threads actually in use.
pub fn set_cpu_threads(threads: usize) -> usize {
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build_global();
    rayon::current_num_threads()
}

/// Keeps freed tensor buffers in the process for reuse. glibc serves allocations from
/// 128 KiB up (most activations and gradients of a batch) with fresh `mmap`s and
/// unmaps them when freed, so every training step faulted in and zeroed its buffers
/// anew; the CNN example spent about a seventh of its step in the kernel doing so.
/// Raising the mmap threshold to glibc's maximum (32 MiB on 64-bit) and the trim
/// threshold above it lets the heap reuse them. Call once, before training starts;
/// a no-op off glibc.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}
