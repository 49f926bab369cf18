//! Datasets for dlcluster.
//!
//! * [`idx`]: readers for the IDX format used by MNIST and Fashion-MNIST (raw or gzip).
//! * [`dataset`]: an in-memory labelled image dataset built from a pair of IDX files.
//! * [`folder`]: image folders (`root/<class>/*.png|jpg`), read and written, or
//!   listed and decoded batch by batch ([`ImageFiles`]).
//! * [`table`]: numeric features and a class label from CSV (raw or gzip) or Parquet
//!   ([`TableDataset::read_parquet`]), with a deterministic test split and standardisation.
//! * [`Samples`]: what training needs of any of them.
//! * [`sampler`]: deterministic, rank-aware sample orders (the data model of a distributed job).
//! * [`loader`]: a rank's batches step by step ([`BatchSource`]), made ahead on a
//!   background thread ([`Prefetch`]); [`augment`]: random crop and flip.
//! * [`stream`]: a Parquet or CSV table larger than memory, read as it trains, each
//!   rank reading its own row groups or blocks of rows.
//!
//! This crate knows nothing about tensors or models: it hands out bytes and indices.

pub mod augment;
pub mod dataset;
pub mod folder;
pub mod idx;
pub mod loader;
mod parquet;
pub mod sampler;
pub mod stream;
pub mod table;

pub use augment::Augment;
pub use dataset::{DataError, ImageDataset};
pub use folder::ImageFiles;
pub use idx::{IdxArray, IdxError};
pub use loader::{Batch, BatchSource, GlobalShuffle, LoadError, Prefetch, Sharding, TrainSet};
pub use sampler::ShardSampler;
pub use stream::{StreamOptions, TableFormat, TableStream};
pub use table::{Column, CsvOptions, Standardizer, TableDataset, TableError, Targets};

/// Labelled samples of one shape, as training reads them: the seam every data format
/// sits behind.
pub trait Samples: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;
    /// True when there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Shape of one sample, `[channels, height, width]` (a table row: `[features, 1, 1]`).
    fn shape(&self) -> [usize; 3];
    /// The sample is a feature vector (dense layers apply directly), not an image.
    fn is_flat(&self) -> bool;
    /// Number of classes (0 when the task is regression).
    fn num_classes(&self) -> usize;
    /// The labels are numbers to predict (regression), not classes.
    fn is_regression(&self) -> bool {
        false
    }
    /// Appends the model inputs and labels (or regression targets) of `indices` to
    /// `batch`; fails only for samples read from storage on demand (a file that
    /// turned out unreadable).
    fn gather(&self, indices: &[usize], batch: &mut Batch) -> Result<(), LoadError>;
    /// Where the samples are, for people (`in memory`).
    fn storage(&self) -> &'static str {
        "in memory"
    }
    /// Keeps the first `n` samples.
    fn truncate(&mut self, n: usize);
}

impl Samples for ImageDataset {
    fn len(&self) -> usize {
        ImageDataset::len(self)
    }
    fn shape(&self) -> [usize; 3] {
        [self.channels, self.height, self.width]
    }
    fn is_flat(&self) -> bool {
        false
    }
    fn num_classes(&self) -> usize {
        ImageDataset::num_classes(self)
    }
    fn gather(&self, indices: &[usize], batch: &mut Batch) -> Result<(), LoadError> {
        ImageDataset::gather(self, indices, &mut batch.inputs, &mut batch.labels);
        Ok(())
    }
    fn truncate(&mut self, n: usize) {
        ImageDataset::truncate(self, n)
    }
}

impl Samples for TableDataset {
    fn len(&self) -> usize {
        TableDataset::len(self)
    }
    fn shape(&self) -> [usize; 3] {
        [self.features, 1, 1]
    }
    fn is_flat(&self) -> bool {
        true
    }
    fn num_classes(&self) -> usize {
        TableDataset::num_classes(self)
    }
    fn is_regression(&self) -> bool {
        matches!(self.targets(), Targets::Values(_))
    }
    fn gather(&self, indices: &[usize], batch: &mut Batch) -> Result<(), LoadError> {
        TableDataset::gather(self, indices, batch);
        Ok(())
    }
    fn truncate(&mut self, n: usize) {
        TableDataset::truncate(self, n)
    }
}
