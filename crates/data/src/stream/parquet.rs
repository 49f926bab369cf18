//! Parquet files streamed: a chunk is a row group, the file's own unit of independent
//! decoding (a part of one would re-decode its pages).

use std::path::Path;
use std::sync::Arc;

use super::{ChunkReader, Chunks};
use crate::parquet::{GroupReader, ParquetTable};
use crate::table::{CsvOptions, Labels, TableError};

/// A Parquet file's row groups.
pub(super) struct ParquetChunks(Arc<ParquetTable>);

impl ParquetChunks {
    /// Opens `path` for `opts`' label and feature columns.
    pub(super) fn open(path: &Path, opts: &CsvOptions) -> Result<Self, TableError> {
        Ok(Self(Arc::new(ParquetTable::open(
            path,
            &opts.label,
            opts.features.as_deref(),
            opts.regression,
        )?)))
    }
}

impl Chunks for ParquetChunks {
    fn path(&self) -> &Path {
        &self.0.path
    }
    fn width(&self) -> usize {
        self.0.width()
    }
    fn feature_names(&self) -> Vec<String> {
        self.0.feature_names()
    }
    fn empty_labels(&self) -> Labels {
        self.0.empty_labels()
    }
    fn count(&self) -> usize {
        self.0.groups.len()
    }
    fn unit(&self) -> String {
        "row groups".into()
    }
    fn read(&self, chunk: usize, rows: usize) -> Result<Box<dyn ChunkReader>, TableError> {
        Ok(Box::new(self.0.group(chunk, rows)?))
    }
}

impl ChunkReader for GroupReader {
    fn row(&self) -> u64 {
        self.row
    }
    fn next_into(
        &mut self,
        values: &mut Vec<f32>,
        labels: &mut Labels,
    ) -> Result<Option<usize>, TableError> {
        GroupReader::next_into(self, values, labels)
    }
}
