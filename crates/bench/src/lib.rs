//! Benchmarks of dlcluster's hot paths, reported against ceilings measured in the
//! same run.
//!
//! * [`allreduce`]: all-reduce over N local processes vs. a single-thread memcpy and
//!   single-stream TCP loopback between two processes.
//! * [`matmul`]: square matrix products on CPU and GPU over sizes and dtypes, with a
//!   cuBLAS reference on GPU, written as CSV/JSON and plotted ([`plot`]).

pub mod allreduce;
pub mod matmul;
pub mod plot;
pub mod size;
