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

/// Sets up the CPU backend's threads: `threads` of them (`None`: one per core, or
/// `RAYON_NUM_THREADS`), each flushing subnormal floats to zero
/// ([`flush_subnormals`]). Call once, from the thread that will train, before any
/// tensor work; later calls (or calls after the pool started) change only the
/// calling thread's float mode and return the number of threads actually in use.
///
/// The calling thread is one of the `threads` (rayon's `use_current_thread`): its
/// parallel operations run on it and `threads − 1` others, instead of being handed
/// to `threads` pool threads while it sleeps. With one thread that is no hand-off at
/// all (the MLP example, 1 thread: 1.06–1.55× per round; DESIGN.md has figures).
/// The cost: with one thread, work another thread hands to the pool waits until
/// this thread next runs a parallel operation — a loader must not wait on the pool
/// then ([`dlc_data::Prefetch`] gives itself one).
pub fn set_cpu_threads(threads: Option<usize>) -> usize {
    flush_subnormals();
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.map_or(0, |t| t.max(1)))
        .use_current_thread()
        .start_handler(|_| flush_subnormals())
        .build_global();
    rayon::current_num_threads()
}

/// Flush-to-zero and denormals-are-zero on the calling thread, for good: float
/// operations read subnormal inputs (|x| < 1.2e-38) as 0 and round subnormal results
/// to 0.
///
/// Why: on x86 an operation that meets a subnormal takes a microcode assist, ~100
/// cycles instead of one. An optimizer's moments of a parameter whose gradient is
/// (nearly) always zero — the MLP's first-layer weights on Fashion-MNIST's blank
/// border pixels — decay by β every step and reach the subnormal range after about
/// 800 steps; from then on an MLP step took 2.8 ms instead of 0.7 with Adam and
/// 5.5 ms instead of 0.8 with burn's AdamW (2026-12-01). TensorFlow sets the same
/// mode in its compute threads; PyTorch leaves it to `torch.set_flush_denormal`.
/// Values that small carry no information a model uses; nothing larger changes.
/// A no-op off x86-64.
pub fn flush_subnormals() {
    #[cfg(target_arch = "x86_64")]
    {
        // MXCSR bit 15: flush to zero; bit 6: denormals are zero.
        const FTZ_DAZ: u32 = (1 << 15) | (1 << 6);
        let mut mxcsr: u32 = 0;
        // SAFETY: stores the SSE control register (every x86-64 CPU has it) into
        // `mxcsr`, then loads it back with only the FTZ and DAZ bits set, which
        // every x86-64 CPU supports.
        unsafe {
            std::arch::asm!("stmxcsr [{}]", in(reg) &mut mxcsr, options(nostack, preserves_flags));
            mxcsr |= FTZ_DAZ;
            std::arch::asm!("ldmxcsr [{}]", in(reg) &mxcsr, options(nostack, readonly, preserves_flags));
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnormals_flush_to_zero_on_the_thread_that_asks() {
        let (tiny, scale) = (
            std::hint::black_box(1e-30f32),
            std::hint::black_box(1e-10f32),
        );
        std::thread::spawn(move || {
            assert!(tiny * scale > 0.0, "a subnormal result before");
            flush_subnormals();
            #[cfg(target_arch = "x86_64")]
            assert_eq!(
                std::hint::black_box(tiny) * std::hint::black_box(scale),
                0.0
            );
            assert_eq!(std::hint::black_box(1.5f32) * 4.0, 6.0);
        })
        .join()
        .unwrap();
        // Other threads keep IEEE subnormals.
        assert!(tiny * scale > 0.0);
    }
}
