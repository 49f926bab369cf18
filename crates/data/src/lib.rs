//! Datasets for dlcluster.
//!
//! * [`idx`]: readers for the IDX format used by MNIST and Fashion-MNIST (raw or gzip).
//! * [`dataset`]: an in-memory labelled image dataset built from a pair of IDX files.
//! * [`sampler`]: deterministic, rank-aware sample orders (the data model of a distributed job).
//!
//! This crate knows nothing about tensors or models: it hands out bytes and indices.

pub mod dataset;
pub mod idx;
pub mod sampler;

pub use dataset::{DataError, ImageDataset};
pub use idx::{IdxArray, IdxError};
pub use sampler::ShardSampler;
