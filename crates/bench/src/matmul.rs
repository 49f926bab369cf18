//! `dlc bench matmul`: time square matrix products per device × dtype × size.
//!
//! Inputs are uniform random in [0, 1). Each cell: one warm-up product, then the
//! median of up to `iters` timed products (GPU timings synchronise the device after
//! every product), stopping early once a cell has spent its time budget. GFLOP/s =
//! 2n³ / t. On CUDA a `cublas` row calls cuBLAS directly (cudarc) as the vendor
//! reference. Sizes whose single product would take longer than the budget (by
//! extrapolating the previous size as n³) are skipped and reported as such.

use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, FloatDType, Tensor};
use serde::{Deserialize, Serialize};

use crate::allreduce::median;

/// One measurement.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Row {
    /// `cpu`, `cuda:N`, or `cublas` (the vendor reference on the GPU).
    pub device: String,
    /// `f32`, `f16`, `bf16`, `f64`.
    pub dtype: String,
    /// Matrix size (n × n).
    pub n: usize,
    /// Median seconds per product.
    pub median_s: f64,
    /// 2n³ / median_s / 1e9.
    pub gflops: f64,
}

/// Element types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// bfloat16.
    Bf16,
    /// 64-bit float.
    F64,
}

impl Dtype {
    /// Parses `f32`, `f16`, `bf16`, `f64`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Dtype::F32),
            "f16" => Ok(Dtype::F16),
            "bf16" => Ok(Dtype::Bf16),
            "f64" => Ok(Dtype::F64),
            _ => Err(format!("unknown dtype `{s}` (use f32, f16, bf16, f64)")),
        }
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
            Dtype::F64 => "f64",
        }
    }

    fn burn(self) -> FloatDType {
        match self {
            Dtype::F32 => FloatDType::F32,
            Dtype::F16 => FloatDType::F16,
            Dtype::Bf16 => FloatDType::BF16,
            Dtype::F64 => FloatDType::F64,
        }
    }
}

/// How long one cell may take, and how many products at most.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Timed products per cell (at most).
    pub iters: usize,
    /// Time per cell after which no further products are timed.
    pub per_cell: Duration,
}

fn row(device: &str, dtype: Dtype, n: usize, times: Vec<f64>) -> Row {
    let t = median(times);
    Row {
        device: device.to_string(),
        dtype: dtype.name().into(),
        n,
        median_s: t,
        gflops: 2.0 * (n as f64).powi(3) / t / 1e9,
    }
}

/// Times burn's matmul on backend `B` for every size; `label` names the device.
/// Returns rows and the sizes skipped as too slow.
pub fn framework<B: Backend>(
    device: &B::Device,
    label: &str,
    dtype: Dtype,
    sizes: &[usize],
    budget: Budget,
    mut on_row: impl FnMut(&Row),
) -> Result<(Vec<Row>, Vec<usize>), String> {
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    let mut last: Option<(usize, f64)> = None;
    for &n in sizes {
        if let Some((pn, pt)) = last {
            let estimate = pt * (n as f64 / pn as f64).powi(3);
            if estimate > budget.per_cell.as_secs_f64() {
                skipped.push(n);
                continue;
            }
        }
        let dist = Distribution::Uniform(0.0, 1.0);
        let a = Tensor::<B, 2>::random([n, n], dist, device).cast(dtype.burn());
        let b = Tensor::<B, 2>::random([n, n], dist, device).cast(dtype.burn());
        B::sync(device).map_err(|e| format!("{label}: {e:?}"))?;
        let product = || -> Result<f64, String> {
            let t0 = Instant::now();
            let c = a.clone().matmul(b.clone());
            B::sync(device).map_err(|e| format!("{label}: {e:?}"))?;
            let t = t0.elapsed().as_secs_f64();
            drop(c);
            Ok(t)
        };
        let warm = product()?;
        let start = Instant::now();
        let mut times = Vec::new();
        while times.len() < budget.iters.max(1)
            && (times.is_empty() || start.elapsed() < budget.per_cell)
        {
            times.push(product()?);
        }
        let r = row(label, dtype, n, times);
        last = Some((n, r.median_s.max(warm.min(r.median_s))));
        on_row(&r);
        rows.push(r);
    }
    Ok((rows, skipped))
}

/// Whether cuBLAS can be loaded (the vendor reference needs it; our GPU rows do not):
/// `Err` says what is missing.
pub fn cublas_present() -> Result<(), String> {
    // SAFETY: only tries to dlopen the cuBLAS library by its usual names.
    if unsafe { cudarc::cublas::sys::is_culib_present() } {
        Ok(())
    } else {
        Err(
            "cuBLAS (libcublas.so) was not found; install the CUDA toolkit's cuBLAS \
             (e.g. libcublas-12-x) for the vendor reference rows"
                .into(),
        )
    }
}

/// Times cuBLAS directly on GPU `index` (the vendor reference).
pub fn cublas(
    index: usize,
    dtype: Dtype,
    sizes: &[usize],
    budget: Budget,
    mut on_row: impl FnMut(&Row),
) -> Result<Vec<Row>, String> {
    use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
    use cudarc::driver::{CudaContext, DeviceRepr, ValidAsZeroBits};

    fn run<T>(
        index: usize,
        dtype: Dtype,
        n: usize,
        budget: Budget,
        from: fn(f32) -> T,
    ) -> Result<Row, String>
    where
        T: DeviceRepr + ValidAsZeroBits + Copy,
        CudaBlas: Gemm<T>,
    {
        let e = |x: &dyn std::fmt::Display| format!("cublas: {x}");
        let ctx = CudaContext::new(index).map_err(|x| e(&x))?;
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone()).map_err(|x| e(&x))?;
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let host: Vec<T> = (0..n * n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                from((seed >> 40) as f32 / (1u64 << 24) as f32)
            })
            .collect();
        let a = stream.clone_htod(&host).map_err(|x| e(&x))?;
        let b = stream.clone_htod(&host).map_err(|x| e(&x))?;
        let mut c = stream.alloc_zeros::<T>(n * n).map_err(|x| e(&x))?;
        let cfg = GemmConfig {
            transa: cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_N,
            transb: cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_N,
            m: n as i32,
            n: n as i32,
            k: n as i32,
            alpha: from(1.0),
            lda: n as i32,
            ldb: n as i32,
            beta: from(0.0),
            ldc: n as i32,
        };
        let mut product = || -> Result<f64, String> {
            let t0 = Instant::now();
            // SAFETY: a, b, c hold n*n elements each, matching the configuration.
            unsafe { blas.gemm(cfg, &a, &b, &mut c) }.map_err(|x| e(&x))?;
            stream.synchronize().map_err(|x| e(&x))?;
            Ok(t0.elapsed().as_secs_f64())
        };
        product()?;
        let start = Instant::now();
        let mut times = Vec::new();
        while times.len() < budget.iters.max(1)
            && (times.is_empty() || start.elapsed() < budget.per_cell)
        {
            times.push(product()?);
        }
        Ok(row("cublas", dtype, n, times))
    }

    let mut rows = Vec::new();
    for &n in sizes {
        let r = match dtype {
            Dtype::F32 => run::<f32>(index, dtype, n, budget, |x| x),
            Dtype::F64 => run::<f64>(index, dtype, n, budget, |x| x as f64),
            Dtype::F16 => run::<half::f16>(index, dtype, n, budget, half::f16::from_f32),
            Dtype::Bf16 => run::<half::bf16>(index, dtype, n, budget, half::bf16::from_f32),
        }?;
        on_row(&r);
        rows.push(r);
    }
    Ok(rows)
}

/// Writes `matmul.csv` and `matmul.json` (one object per line) into `dir`.
pub fn write_tables(dir: &std::path::Path, rows: &[Row]) -> std::io::Result<()> {
    let mut csv = String::from("device,dtype,n,median_s,gflops\n");
    let mut json = String::new();
    for r in rows {
        csv.push_str(&format!(
            "{},{},{},{:e},{:.3}\n",
            r.device, r.dtype, r.n, r.median_s, r.gflops
        ));
        json.push_str(&serde_json::to_string(r).expect("rows serialise"));
        json.push('\n');
    }
    std::fs::write(dir.join("matmul.csv"), csv)?;
    std::fs::write(dir.join("matmul.json"), json)
}
