//! CSV files streamed: one pass over the file finds where every [`MARK_ROWS`]-th
//! record starts (the `csv` crate's record positions, so a line break inside quotes is
//! no boundary); blocks of whole marks — about 1/64 of the file, between
//! [`MARK_ROWS`] and [`MAX_BLOCK_ROWS`] rows — are what ranks share out, each read by
//! seeking to its byte offset. Compressed files cannot be read from the middle and
//! are refused.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{ChunkReader, Chunks};
use crate::table::{csv_error, csv_reader, skip_lines, CsvLayout, CsvOptions, Labels, TableError};

/// Records between two marks of the scan (the smallest block).
pub(super) const MARK_ROWS: usize = 256;
/// Records in a block of a large file.
pub(super) const MAX_BLOCK_ROWS: usize = 8192;
/// Blocks a small file is cut into (so that several ranks can share it).
const MIN_BLOCKS: usize = 64;

/// Where a block of records starts.
#[derive(Clone, Copy)]
struct Block {
    /// Byte offset of its first record.
    offset: u64,
    /// File lines before its first record.
    lines_before: u64,
    /// Data row of its first record.
    row: u64,
    /// Records in it.
    rows: usize,
}

/// A CSV file's blocks of records.
pub(super) struct CsvChunks {
    path: PathBuf,
    opts: CsvOptions,
    layout: Arc<CsvLayout>,
    blocks: Vec<Block>,
    /// Records per block (the last may have fewer).
    block_rows: usize,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TableError + '_ {
    move |source| TableError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl CsvChunks {
    /// Scans `path` once for its header and where each block of records starts.
    pub(super) fn open(path: &Path, opts: &CsvOptions) -> Result<Self, TableError> {
        let mut input = BufReader::new(File::open(path).map_err(io(path))?);
        if input
            .fill_buf()
            .map_err(io(path))?
            .starts_with(&[0x1f, 0x8b])
        {
            return Err(TableError::Mismatch(format!(
                "{}: a gzip file cannot be read from the middle, so workers cannot share \
                 it out: decompress it (`gunzip`), convert it to Parquet, or remove \
                 `stream` to read it into memory",
                path.display()
            )));
        }
        let (skipped, start) = skip_lines(path, &mut input, opts.skip_rows)?;
        let mut rdr = csv_reader(input, opts, opts.header);
        let err = |e| csv_error(path, e, skipped);
        let header: Option<Vec<String>> = match opts.header {
            true => Some(
                rdr.headers()
                    .map_err(err)?
                    .iter()
                    .map(str::to_string)
                    .collect(),
            ),
            false => None,
        };
        let mut layout = None;
        let mut marks: Vec<Block> = Vec::new();
        let mut record = ::csv::ByteRecord::new();
        let mut row = 0u64;
        while rdr.read_byte_record(&mut record).map_err(err)? {
            if layout.is_none() {
                layout = Some(CsvLayout::new(path, header.clone(), record.len(), opts)?);
            }
            if row.is_multiple_of(MARK_ROWS as u64) {
                let pos = record
                    .position()
                    .cloned()
                    .unwrap_or_else(::csv::Position::new);
                marks.push(Block {
                    offset: start + pos.byte(),
                    lines_before: skipped + pos.line().saturating_sub(1),
                    row,
                    rows: 0,
                });
            }
            if let Some(b) = marks.last_mut() {
                b.rows += 1;
            }
            row += 1;
        }
        let layout = layout.ok_or_else(|| TableError::Empty(path.to_path_buf()))?;
        let per = (row as usize / MIN_BLOCKS).clamp(MARK_ROWS, MAX_BLOCK_ROWS) / MARK_ROWS;
        let blocks = marks
            .chunks(per)
            .map(|m| Block {
                rows: m.iter().map(|b| b.rows).sum(),
                ..m[0]
            })
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            opts: opts.clone(),
            layout: Arc::new(layout),
            blocks,
            block_rows: per * MARK_ROWS,
        })
    }
}

impl Chunks for CsvChunks {
    fn path(&self) -> &Path {
        &self.path
    }
    fn width(&self) -> usize {
        self.layout.width()
    }
    fn feature_names(&self) -> Vec<String> {
        self.layout.feature_names()
    }
    fn empty_labels(&self) -> Labels {
        self.layout.empty_labels()
    }
    fn count(&self) -> usize {
        self.blocks.len()
    }
    fn unit(&self) -> String {
        format!("blocks of {} rows", self.block_rows)
    }
    fn read(&self, chunk: usize, rows: usize) -> Result<Box<dyn ChunkReader>, TableError> {
        let block = self.blocks.get(chunk).ok_or_else(|| {
            TableError::Mismatch(format!("{}: no block {chunk}", self.path.display()))
        })?;
        let mut file = File::open(&self.path).map_err(io(&self.path))?;
        file.seek(SeekFrom::Start(block.offset))
            .map_err(io(&self.path))?;
        Ok(Box::new(BlockReader {
            path: self.path.clone(),
            layout: Arc::clone(&self.layout),
            rdr: csv_reader(BufReader::new(file), &self.opts, false),
            record: ::csv::StringRecord::new(),
            lines_before: block.lines_before,
            row: block.row,
            left: block.rows,
            at_a_time: rows.max(1),
        }))
    }
}

/// One block of records, read from its offset.
struct BlockReader {
    path: PathBuf,
    layout: Arc<CsvLayout>,
    rdr: ::csv::Reader<BufReader<File>>,
    record: ::csv::StringRecord,
    lines_before: u64,
    row: u64,
    left: usize,
    /// Rows per call.
    at_a_time: usize,
}

impl ChunkReader for BlockReader {
    fn row(&self) -> u64 {
        self.row
    }

    fn next_into(
        &mut self,
        values: &mut Vec<f32>,
        labels: &mut Labels,
    ) -> Result<Option<usize>, TableError> {
        let n = self.left.min(self.at_a_time);
        if n == 0 {
            return Ok(None);
        }
        for _ in 0..n {
            let more = self
                .rdr
                .read_record(&mut self.record)
                .map_err(|e| csv_error(&self.path, e, self.lines_before))?;
            if !more {
                return Err(TableError::Mismatch(format!(
                    "{}: ends before row {} (was the file changed since the job started?)",
                    self.path.display(),
                    self.row
                )));
            }
            let line = self.lines_before + self.record.position().map_or(0, |p| p.line());
            self.layout.push(&self.record, line, values, labels)?;
            self.row += 1;
        }
        self.left -= n;
        Ok(Some(n))
    }
}
