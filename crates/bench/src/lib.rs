//! Benchmarks of dlcluster's hot paths, reported against ceilings measured in the
//! same run.
//!
//! * [`allreduce`]: all-reduce over N local processes vs. a single-thread memcpy and
//!   single-stream TCP loopback between two processes.

pub mod allreduce;
pub mod size;
