//! Datasets for dlcluster.
//!
//! * [`idx`]: readers for the IDX format used by MNIST and Fashion-MNIST (raw or gzip).
//! * [`dataset`]: an in-memory labelled image dataset built from a pair of IDX files.
//! * [`folder`]: image folders (`root/<class>/*.png|jpg`), read and written.
//! * [`table`]: numeric features and a class label from CSV (raw or gzip) or Parquet
//!   ([`TableDataset::read_parquet`]), with a deterministic test split and standardisation.
//! * [`Samples`]: what training needs of any of them.
//! * [`sampler`]: deterministic, rank-aware sample orders (the data model of a distributed job).
//!
//! This crate knows nothing about tensors or models: it hands out bytes and indices.

pub mod dataset;
pub mod folder;
pub mod idx;
mod parquet;
pub mod sampler;
pub mod table;

pub use dataset::{DataError, ImageDataset};
pub use idx::{IdxArray, IdxError};
pub use sampler::ShardSampler;
pub use table::{Column, CsvOptions, Standardizer, TableDataset, TableError};

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
    /// Number of classes.
    fn num_classes(&self) -> usize;
    /// Appends the model inputs and class labels of `indices` to the buffers.
    fn gather(&self, indices: &[usize], inputs: &mut Vec<f32>, labels: &mut Vec<i64>);
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
    fn gather(&self, indices: &[usize], inputs: &mut Vec<f32>, labels: &mut Vec<i64>) {
        ImageDataset::gather(self, indices, inputs, labels)
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
    fn gather(&self, indices: &[usize], inputs: &mut Vec<f32>, labels: &mut Vec<i64>) {
        TableDataset::gather(self, indices, inputs, labels)
    }
    fn truncate(&mut self, n: usize) {
        TableDataset::truncate(self, n)
    }
}
