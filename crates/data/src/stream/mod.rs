//! Tables larger than memory: a Parquet or CSV file read chunk by chunk while it
//! trains, each rank reading only its share of the storage. A chunk is what can be
//! read on its own: a Parquet row group ([`parquet`]), or a block of CSV rows found by
//! one pass over the file and read from its byte offset ([`csv`]).
//!
//! Opening a [`TableStream`] scans the file once, in bounded memory, for what
//! training must fix before the first step: the classes, the training split's feature
//! statistics, and the test rows (held in memory for evaluation). A row is a test row
//! when a hash of (seed, its row number) falls below `test_fraction`, so the split
//! needs no permutation of the whole file.
//!
//! Each epoch, the chunks are permuted from (seed, epoch) and dealt to the ranks,
//! each to the rank with the fewest training rows so far: every chunk is read by
//! exactly one rank, so every training row is seen exactly once per epoch. A rank
//! shuffles its rows through a buffer of `shuffle_buffer` rows (what tf.data's
//! `shuffle` and Petastorm do) and spreads them evenly over the epoch's steps, so all
//! ranks take the same number of steps and no step is short.
//!
//! Where this differs from the in-memory exact global permutation: the order depends on
//! the number of workers (a chunk's rows stay with one rank), a shuffle is only as
//! random as the buffer is large, and the global batch of a step is `global_batch`
//! only on average (within a few samples). Memory holds one decoded block per rank,
//! the shuffle buffer, the prefetched batches and the test rows.

mod csv;
mod parquet;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use self::csv::CsvChunks;
use self::parquet::ParquetChunks;
use crate::augment::mix;
use crate::loader::{Batch, BatchSource, EpochBatches, LoadError, Sharding, TrainSet};
use crate::table::{
    CsvOptions, Labels, Standardizer, TableDataset, TableError, Targets, MAX_CLASSES,
};

/// Keeps the row groups' permutation apart from other uses of the seed.
const GROUP_SALT: u64 = 0x6772_6f75_7073;
/// Keeps the test split apart from other uses of the seed.
const SPLIT_SALT: u64 = 0x7e57_5917;
/// Rows decoded at a time: small, so that a wide table's record batch stays small
/// next to the shuffle buffer.
const READ_ROWS: usize = 1024;

/// The file format of a streamed table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableFormat {
    /// CSV, not compressed (a gzip stream cannot be read from the middle).
    Csv,
    /// Parquet.
    Parquet,
}

/// What to read from a streamed table.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// The columns (label, features, task) and, for CSV, how to parse it (header,
    /// delimiter, skipped lines; ignored for Parquet).
    pub table: CsvOptions,
    /// Fraction of rows held out for testing (0 when the test set is another file).
    pub test_fraction: f64,
    /// Seed of the test split and of the shuffles.
    pub seed: u64,
    /// Rows each rank shuffles among (at least 1: no shuffle within chunks).
    pub shuffle_buffer: usize,
}

/// A table that ranks share out chunk by chunk, each chunk read on its own.
trait Chunks: Send + Sync {
    /// The file.
    fn path(&self) -> &Path;
    /// Features per row.
    fn width(&self) -> usize;
    /// The feature columns' names.
    fn feature_names(&self) -> Vec<String>;
    /// No labels yet, of the kind the reader appends.
    fn empty_labels(&self) -> Labels;
    /// Number of chunks.
    fn count(&self) -> usize;
    /// What a chunk is, for people (`row groups`).
    fn unit(&self) -> String;
    /// A reader of chunk `chunk`, `rows` rows at a time.
    fn read(&self, chunk: usize, rows: usize) -> Result<Box<dyn ChunkReader>, TableError>;
}

/// One chunk, read a few rows at a time.
trait ChunkReader: Send {
    /// The file row (0-based, data rows only) of the next rows.
    fn row(&self) -> u64;
    /// Appends the next rows' features (row-major) to `values` and their labels to
    /// `labels`: the number of rows, or `None` at the end of the chunk.
    fn next_into(
        &mut self,
        values: &mut Vec<f32>,
        labels: &mut Labels,
    ) -> Result<Option<usize>, TableError>;
}

/// How labels become classes.
#[derive(Debug, Clone)]
enum ClassMap {
    /// Small non-negative integers are the class indices.
    Identity(usize),
    /// Class names (sorted), looked up.
    Names(Vec<String>, HashMap<String, u32>),
    /// Regression: the label is the target.
    Values,
}

impl ClassMap {
    fn names(&self) -> Vec<String> {
        match self {
            ClassMap::Names(n, _) => n.clone(),
            _ => Vec::new(),
        }
    }

    fn count(&self) -> usize {
        match self {
            ClassMap::Identity(n) => *n,
            ClassMap::Names(n, _) => n.len(),
            ClassMap::Values => 0,
        }
    }

    /// The class (or target) of row `i` of `labels`; `None` for a label that the scan
    /// did not see.
    fn target(&self, labels: &Labels, i: usize) -> Option<Target> {
        let lookup = |s: &str| match self {
            ClassMap::Names(_, ids) => ids.get(s.trim()).copied(),
            _ => None,
        };
        Some(match (self, labels) {
            (_, Labels::Values(v)) => Target::Value(v[i]),
            (ClassMap::Identity(_), Labels::Ints(v)) => Target::Class(u32::try_from(v[i]).ok()?),
            (ClassMap::Identity(_), Labels::Strs(v)) => Target::Class(v[i].trim().parse().ok()?),
            (_, Labels::Ints(v)) => Target::Class(lookup(&v[i].to_string())?),
            (_, Labels::Strs(v)) => Target::Class(lookup(&v[i])?),
        })
    }
}

/// One row's label, mapped.
#[derive(Clone, Copy)]
enum Target {
    Class(u32),
    Value(f32),
}

/// A Parquet table trained on as it is read (see the module documentation).
#[derive(Clone)]
pub struct TableStream {
    table: Arc<dyn Chunks>,
    /// Training rows in each row group.
    train_rows: Vec<usize>,
    classes: ClassMap,
    standardizer: Option<Standardizer>,
    test_fraction: f64,
    seed: u64,
    shuffle_buffer: usize,
}

impl TableStream {
    /// Opens `path` and scans it once (bounded memory): the stream of its training
    /// rows, and its test rows (classes mapped, not standardised).
    pub fn open(
        path: &Path,
        format: TableFormat,
        opts: &StreamOptions,
    ) -> Result<(Self, TableDataset), TableError> {
        let table: Arc<dyn Chunks> = match format {
            TableFormat::Parquet => Arc::new(ParquetChunks::open(path, &opts.table)?),
            TableFormat::Csv => Arc::new(CsvChunks::open(path, &opts.table)?),
        };
        let width = table.width();
        let split = Split {
            fraction: opts.test_fraction,
            seed: opts.seed,
        };
        let mut stats = Moments::new(width);
        let mut labels_seen = LabelSet::default();
        let mut test_values = Vec::new();
        let mut test_labels = table.empty_labels();
        let mut train_rows = vec![0; table.count()];
        for (group, count) in train_rows.iter_mut().enumerate() {
            let mut reader = table.read(group, READ_ROWS)?;
            loop {
                let first = reader.row();
                let mut values = Vec::new();
                let mut labels = table.empty_labels();
                let Some(n) = reader.next_into(&mut values, &mut labels)? else {
                    break;
                };
                labels_seen.add(&labels, path)?;
                for i in 0..n {
                    let row = &values[i * width..(i + 1) * width];
                    if split.is_test(first + i as u64) {
                        test_values.extend_from_slice(row);
                        push_label(&mut test_labels, &labels, i);
                    } else {
                        *count += 1;
                        stats.add(
                            row,
                            match &labels {
                                Labels::Values(v) => Some(v[i]),
                                _ => None,
                            },
                        );
                    }
                }
            }
        }
        if train_rows.iter().sum::<usize>() == 0 {
            return Err(TableError::Empty(path.to_path_buf()));
        }
        let classes = labels_seen.classes(opts.table.regression, path)?;
        let n_test = test_values.len() / width;
        let targets = match classes {
            ClassMap::Values => match test_labels {
                Labels::Values(v) => Targets::Values(v),
                _ => Targets::Values(Vec::new()),
            },
            _ => Targets::Classes(
                (0..n_test)
                    .map(|i| match classes.target(&test_labels, i) {
                        Some(Target::Class(c)) => c,
                        _ => 0, // every test label was seen by the scan
                    })
                    .collect(),
            ),
        };
        let test = TableDataset {
            values: test_values,
            targets,
            features: width,
            feature_names: table.feature_names(),
            classes: classes.names(),
        };
        let stream = Self {
            standardizer: Some(stats.standardizer(opts.table.regression)),
            table,
            train_rows,
            classes,
            test_fraction: opts.test_fraction,
            seed: opts.seed,
            shuffle_buffer: opts.shuffle_buffer.max(1),
        };
        Ok((stream, test))
    }

    /// The training split's feature (and target) statistics, as the scan found them.
    pub fn statistics(&self) -> Option<&Standardizer> {
        self.standardizer.as_ref()
    }

    /// Standardises the rows read with `s` (None: leave them as read).
    pub fn set_standardizer(&mut self, s: Option<Standardizer>) {
        self.standardizer = s;
    }

    /// Number of classes (0 for regression).
    pub fn num_classes(&self) -> usize {
        self.classes.count()
    }

    /// Class names by index, when the labels were names.
    pub fn class_names(&self) -> Vec<String> {
        self.classes.names()
    }

    /// Chunks in the file (Parquet row groups, blocks of CSV rows).
    pub fn chunks(&self) -> usize {
        self.train_rows.len()
    }

    /// The row groups of `epoch` rank `rank` of `world` reads, in reading order, and
    /// their training rows: the groups permuted from (seed, epoch), each dealt to the
    /// rank with the fewest rows so far (the lowest rank on a tie).
    fn assignment(&self, epoch: usize, world: usize) -> Vec<(Vec<usize>, usize)> {
        let mut order: Vec<usize> = (0..self.train_rows.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(
            self.seed ^ GROUP_SALT,
            epoch as u64,
        )));
        let mut ranks = vec![(Vec::new(), 0usize); world.max(1)];
        for g in order {
            let r = (0..ranks.len())
                .min_by_key(|&r| (ranks[r].1, r))
                .unwrap_or(0);
            ranks[r].0.push(g);
            ranks[r].1 += self.train_rows[g];
        }
        ranks
    }
}

impl TrainSet for TableStream {
    fn len(&self) -> usize {
        self.train_rows.iter().sum()
    }

    fn shape(&self) -> [usize; 3] {
        [self.table.width(), 1, 1]
    }

    fn is_flat(&self) -> bool {
        true
    }

    fn is_regression(&self) -> bool {
        matches!(self.classes, ClassMap::Values)
    }

    fn describe(&self) -> String {
        format!(
            "streamed from {} {} of {}, shuffle buffer {} rows per worker",
            self.train_rows.len(),
            self.table.unit(),
            self.table.path().display(),
            self.shuffle_buffer
        )
    }

    fn batches(&self, sharding: Sharding) -> Box<dyn BatchSource> {
        Box::new(StreamBatches {
            stream: Arc::new(self.clone()),
            sharding,
        })
    }
}

/// One rank's batches of a [`TableStream`].
struct StreamBatches {
    stream: Arc<TableStream>,
    sharding: Sharding,
}

impl BatchSource for StreamBatches {
    fn steps_per_epoch(&self) -> usize {
        self.stream
            .len()
            .div_ceil(self.sharding.global_batch.max(1))
    }

    fn sample_shape(&self) -> [usize; 3] {
        self.stream.shape()
    }

    fn epoch(&self, epoch: usize, first_step: usize) -> EpochBatches {
        let world = self.sharding.world.max(1);
        let rank = self.sharding.rank.min(world - 1);
        let assignment = self.stream.assignment(epoch, world);
        let counts: Vec<usize> = assignment.iter().map(|(_, n)| *n).collect();
        let capacity = self
            .stream
            .shuffle_buffer
            .min(counts.get(rank).copied().unwrap_or(0));
        let groups = assignment
            .into_iter()
            .nth(rank)
            .map(|(g, _)| g)
            .unwrap_or_default();
        let rng =
            ChaCha8Rng::seed_from_u64(mix(mix(self.sharding.seed, epoch as u64), rank as u64));
        let reader = RankReader {
            stream: Arc::clone(&self.stream),
            groups: groups.into(),
            current: None,
            chunk: Chunk::default(),
            buffer: RowBuffer::new(self.stream.table.width(), capacity),
            rng,
        };
        let steps = self.steps_per_epoch();
        // Skipped steps are read and dropped: resuming mid-epoch costs reading its start.
        Box::new(
            EpochReader {
                reader,
                counts,
                rank,
                steps,
                step: 0,
                failed: false,
            }
            .skip(first_step),
        )
    }
}

/// Rows of one rank's epoch, in step-sized batches.
struct EpochReader {
    reader: RankReader,
    /// Training rows of every rank this epoch.
    counts: Vec<usize>,
    rank: usize,
    steps: usize,
    step: usize,
    failed: bool,
}

/// The rows of `count` spread evenly over `steps` steps: how many step `step` takes.
fn share(count: usize, steps: usize, step: usize) -> usize {
    let upto = |k: usize| (k as u128 * count as u128 / steps.max(1) as u128) as usize;
    upto(step + 1) - upto(step)
}

impl Iterator for EpochReader {
    type Item = Result<Batch, LoadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.step >= self.steps {
            return None;
        }
        let (step, steps) = (self.step, self.steps);
        self.step += 1;
        let want = share(self.counts[self.rank], steps, step);
        let mut batch = Batch {
            global_len: self.counts.iter().map(|&c| share(c, steps, step)).sum(),
            ..Batch::default()
        };
        for _ in 0..want {
            if let Err(e) = self.reader.next_row(&mut batch) {
                self.failed = true;
                return Some(Err(e));
            }
        }
        Some(Ok(batch))
    }
}

/// Reads one rank's row groups through a shuffle buffer.
struct RankReader {
    stream: Arc<TableStream>,
    groups: VecDeque<usize>,
    current: Option<Box<dyn ChunkReader>>,
    /// The record batch being moved into the buffer.
    chunk: Chunk,
    buffer: RowBuffer,
    rng: ChaCha8Rng,
}

/// A decoded record batch, and how far into it the buffer has taken.
struct Chunk {
    values: Vec<f32>,
    labels: Labels,
    /// File row of its first row.
    first: u64,
    rows: usize,
    next: usize,
}

impl Default for Chunk {
    fn default() -> Self {
        Self {
            values: Vec::new(),
            labels: Labels::Values(Vec::new()),
            first: 0,
            rows: 0,
            next: 0,
        }
    }
}

impl RankReader {
    /// Moves a random row of the buffer (topped up first) into `batch`.
    fn next_row(&mut self, batch: &mut Batch) -> Result<(), LoadError> {
        while self.buffer.len() < self.stream.shuffle_buffer && self.top_up()? {}
        if self.buffer.len() == 0 {
            return Err(LoadError(format!(
                "{}: fewer training rows than when the job started (was the file \
                 replaced while training?)",
                self.stream.table.path().display()
            )));
        }
        let i = self.rng.gen_range(0..self.buffer.len());
        self.buffer.take(i, batch);
        Ok(())
    }

    /// Moves the next training row into the buffer, decoding a record batch when the
    /// last one is used up; false when this rank's row groups are done.
    fn top_up(&mut self) -> Result<bool, LoadError> {
        let s = Arc::clone(&self.stream);
        let split = Split {
            fraction: s.test_fraction,
            seed: s.seed,
        };
        let width = s.table.width();
        loop {
            let c = &mut self.chunk;
            while c.next < c.rows {
                let (i, row) = (c.next, c.first + c.next as u64);
                c.next += 1;
                if split.is_test(row) {
                    continue;
                }
                let target = s.classes.target(&c.labels, i).ok_or_else(|| {
                    LoadError(format!(
                        "{}, row {row}: a label the scan before training did not see \
                         (was the file replaced while training?)",
                        s.table.path().display()
                    ))
                })?;
                let values = &c.values[i * width..(i + 1) * width];
                self.buffer.push(values, target, s.standardizer.as_ref());
                return Ok(true);
            }
            if !self.next_chunk()? {
                return Ok(false);
            }
        }
    }

    /// Decodes the next record batch of this rank's row groups; false when none is left.
    fn next_chunk(&mut self) -> Result<bool, LoadError> {
        let err = |e: TableError| LoadError(e.to_string());
        let table = &self.stream.table;
        loop {
            let reader = match &mut self.current {
                Some(r) => r,
                None => match self.groups.pop_front() {
                    Some(g) => self.current.insert(table.read(g, READ_ROWS).map_err(err)?),
                    None => return Ok(false),
                },
            };
            let c = &mut self.chunk;
            c.values.clear();
            c.labels = table.empty_labels();
            c.first = reader.row();
            (c.rows, c.next) = (0, 0);
            match reader
                .next_into(&mut c.values, &mut c.labels)
                .map_err(err)?
            {
                Some(n) => {
                    c.rows = n;
                    return Ok(true);
                }
                None => self.current = None,
            }
        }
    }
}

/// Rows waiting to be drawn at random, stored flat.
struct RowBuffer {
    width: usize,
    values: Vec<f32>,
    targets: Vec<Target>,
}

impl RowBuffer {
    /// An empty buffer with room for `capacity` rows (it never holds more).
    fn new(width: usize, capacity: usize) -> Self {
        Self {
            width,
            values: Vec::with_capacity(capacity * width),
            targets: Vec::with_capacity(capacity),
        }
    }

    fn len(&self) -> usize {
        self.targets.len()
    }

    fn push(&mut self, row: &[f32], target: Target, s: Option<&Standardizer>) {
        match s {
            Some(s) => self.values.extend(
                row.iter()
                    .zip(s.mean.iter().zip(&s.std))
                    .map(|(v, (m, sd))| (v - m) / sd),
            ),
            None => self.values.extend_from_slice(row),
        }
        self.targets.push(match (target, s.and_then(|s| s.target)) {
            (Target::Value(v), Some((m, sd))) => Target::Value((v - m) / sd),
            (t, _) => t,
        });
    }

    /// Moves row `i` into `batch` (the last row takes its place).
    fn take(&mut self, i: usize, batch: &mut Batch) {
        let w = self.width;
        batch
            .inputs
            .extend_from_slice(&self.values[i * w..(i + 1) * w]);
        match self.targets.swap_remove(i) {
            Target::Class(c) => batch.labels.push(i64::from(c)),
            Target::Value(v) => batch.targets.push(v),
        }
        let last = self.targets.len();
        if i != last {
            self.values.copy_within(last * w..(last + 1) * w, i * w);
        }
        self.values.truncate(last * w);
    }
}

/// The hash split of rows into training and test rows.
struct Split {
    fraction: f64,
    seed: u64,
}

impl Split {
    fn is_test(&self, row: u64) -> bool {
        self.fraction > 0.0
            && (mix(self.seed ^ SPLIT_SALT, row) as f64) < self.fraction * u64::MAX as f64
    }
}

/// Per-feature sums for means and standard deviations, in one pass.
struct Moments {
    n: f64,
    sum: Vec<f64>,
    sq: Vec<f64>,
    target: (f64, f64),
}

impl Moments {
    fn new(width: usize) -> Self {
        Self {
            n: 0.0,
            sum: vec![0.0; width],
            sq: vec![0.0; width],
            target: (0.0, 0.0),
        }
    }

    fn add(&mut self, row: &[f32], target: Option<f32>) {
        self.n += 1.0;
        for ((s, q), &v) in self.sum.iter_mut().zip(&mut self.sq).zip(row) {
            *s += f64::from(v);
            *q += f64::from(v) * f64::from(v);
        }
        if let Some(t) = target {
            self.target.0 += f64::from(t);
            self.target.1 += f64::from(t) * f64::from(t);
        }
    }

    fn standardizer(&self, regression: bool) -> Standardizer {
        let n = self.n.max(1.0);
        let mean_std = |s: f64, q: f64| {
            let mean = s / n;
            let sd = (q / n - mean * mean).max(0.0).sqrt();
            (mean as f32, if sd > 1e-12 { sd as f32 } else { 1.0 })
        };
        let (mean, std) = self
            .sum
            .iter()
            .zip(&self.sq)
            .map(|(&s, &q)| mean_std(s, q))
            .unzip();
        Standardizer {
            mean,
            std,
            target: regression.then(|| mean_std(self.target.0, self.target.1)),
        }
    }
}

/// The distinct labels of a scan, to fix the classes as the in-memory readers do.
#[derive(Default)]
struct LabelSet {
    /// Every label so far is an integer in 0..10000: the largest.
    small_max: Option<Option<u32>>,
    names: BTreeSet<String>,
}

impl LabelSet {
    fn add(&mut self, labels: &Labels, path: &Path) -> Result<(), TableError> {
        match labels {
            Labels::Values(_) => return Ok(()),
            Labels::Ints(v) => {
                for &l in v {
                    self.note(u32::try_from(l).ok(), || l.to_string());
                }
            }
            Labels::Strs(v) => {
                for l in v {
                    let l = l.trim();
                    self.note(l.parse().ok(), || l.to_string());
                }
            }
        }
        if self.small_max == Some(None) && self.names.len() > MAX_CLASSES {
            return Err(TableError::Mismatch(format!(
                "{}: the label column has more than {MAX_CLASSES} distinct values; a \
                 classification label needs at most {MAX_CLASSES} (is it the right column?)",
                path.display()
            )));
        }
        Ok(())
    }

    /// Notes one label: `number` when it is a non-negative integer (a class index when
    /// every label is a small one, as [`crate::table::class_ids`] decides), and its name.
    fn note(&mut self, number: Option<u32>, name: impl FnOnce() -> String) {
        let small = number.filter(|&c| (c as usize) < MAX_CLASSES);
        self.small_max = match (self.small_max, small) {
            (None, Some(c)) => Some(Some(c)),
            (Some(Some(m)), Some(c)) => Some(Some(m.max(c))),
            _ => Some(None),
        };
        if self.names.len() <= MAX_CLASSES {
            self.names.insert(name());
        }
    }

    fn classes(self, regression: bool, path: &Path) -> Result<ClassMap, TableError> {
        if regression {
            return Ok(ClassMap::Values);
        }
        match self.small_max {
            Some(Some(max)) => Ok(ClassMap::Identity(max as usize + 1)),
            None => Err(TableError::Empty(path.to_path_buf())),
            Some(None) => {
                let names: Vec<String> = self.names.into_iter().collect();
                let ids = names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (n.clone(), i as u32))
                    .collect();
                Ok(ClassMap::Names(names, ids))
            }
        }
    }
}

/// Appends row `i` of `from` to `to` (of the same kind).
fn push_label(to: &mut Labels, from: &Labels, i: usize) {
    match (to, from) {
        (Labels::Values(t), Labels::Values(f)) => t.push(f[i]),
        (Labels::Ints(t), Labels::Ints(f)) => t.push(f[i]),
        (Labels::Strs(t), Labels::Strs(f)) => t.push(f[i].clone()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;

    use ::parquet::arrow::ArrowWriter;
    use ::parquet::file::properties::WriterProperties;
    use arrow_array::{ArrayRef, Float32Array, Int64Array, RecordBatch, StringArray};

    use super::*;
    use crate::table::Column;

    /// `n` rows: `id` (the row number), `x`, and a string label; row groups of
    /// `group` rows.
    fn write(path: &Path, n: usize, group: usize) {
        let ids: Vec<i64> = (0..n as i64).collect();
        let batch = RecordBatch::try_from_iter([
            ("id", Arc::new(Int64Array::from(ids.clone())) as ArrayRef),
            (
                "x",
                Arc::new(Float32Array::from_iter_values(
                    ids.iter().map(|&i| (i % 7) as f32),
                )),
            ),
            (
                "y",
                Arc::new(StringArray::from_iter_values(
                    ids.iter().map(|&i| ["cat", "dog", "emu"][(i % 3) as usize]),
                )),
            ),
        ])
        .unwrap();
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(group))
            .build();
        let mut w =
            ArrowWriter::try_new(File::create(path).unwrap(), batch.schema(), Some(props)).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }

    fn opts(test_fraction: f64, shuffle_buffer: usize) -> StreamOptions {
        StreamOptions {
            table: CsvOptions {
                header: true,
                delimiter: b',',
                skip_rows: 0,
                label: Column::Name("y".into()),
                features: None,
                regression: false,
            },
            test_fraction,
            seed: 11,
            shuffle_buffer,
        }
    }

    /// Every rank's batches of `epoch`, rows as (id, x, class).
    fn epoch_rows(s: &TableStream, world: usize, batch: usize, epoch: usize) -> Vec<Vec<Batch>> {
        (0..world)
            .map(|rank| {
                s.batches(Sharding {
                    global_batch: batch,
                    rank,
                    world,
                    seed: 11,
                    drop_last: false,
                })
                .epoch(epoch, 0)
                .map(|b| b.unwrap())
                .collect()
            })
            .collect()
    }

    /// The rows of [`write`] as CSV after a line to skip, with a column `note` that is
    /// no feature; some notes hold a line break inside quotes (one of them in the last
    /// record of the first block), which is no record boundary.
    fn write_csv(path: &Path, n: usize) {
        let mut text = String::from("written by a test\nid,x,y,note\n");
        for i in 0..n {
            let y = ["cat", "dog", "emu"][i % 3];
            let note = if i % 1000 == 7 || i == csv::MARK_ROWS - 1 {
                "\"two\nlines\""
            } else {
                ""
            };
            text += &format!("{i},{},\"{y}\",{note}\n", i % 7);
        }
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn every_training_row_once_per_epoch_with_1_2_and_3_workers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.parquet");
        write(&p, 1000, 70);
        let (s, test) = TableStream::open(&p, TableFormat::Parquet, &opts(0.1, 64)).unwrap();
        assert_eq!(s.chunks(), 15);
        check_every_row_once(s, test, 1000);
        // CSV: blocks of 8192 rows found by a scan, read from their byte offsets.
        let p = dir.path().join("t.csv");
        let mut o = opts(0.1, 64);
        o.table.skip_rows = 1;
        o.table.features = Some(vec![Column::Name("id".into()), Column::Name("x".into())]);
        // A small file: blocks of one mark; a larger one: blocks of two marks.
        for (n, block) in [(3000, csv::MARK_ROWS), (40_000, 2 * csv::MARK_ROWS)] {
            write_csv(&p, n);
            let (s, test) = TableStream::open(&p, TableFormat::Csv, &o).unwrap();
            assert_eq!(s.chunks(), n.div_ceil(block), "{n} rows");
            check_every_row_once(s, test, n);
        }
    }

    #[test]
    fn a_damaged_or_compressed_csv_is_named_before_training() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.csv");
        let mut o = opts(0.1, 64);
        o.table.skip_rows = 1;
        o.table.features = Some(vec![Column::Name("id".into()), Column::Name("x".into())]);
        write_csv(&p, 2000);
        // Row 1500 is file line 1503 (after the skipped line and the header), plus the
        // line breaks inside quotes before it (rows 7, 255 and 1007); the in-memory
        // reader says the same.
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("\n1500,2,", "\n1500,two,");
        std::fs::write(&p, text).unwrap();
        let e = TableStream::open(&p, TableFormat::Csv, &o)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("t.csv, line 1506") && e.contains("`two`"), "{e}");
        let in_memory = TableDataset::read_csv(&p, &o.table)
            .unwrap_err()
            .to_string();
        assert_eq!(e, in_memory);
        let gz = dir.path().join("t.csv.gz");
        let mut enc = flate2::write::GzEncoder::new(
            std::fs::File::create(&gz).unwrap(),
            flate2::Compression::fast(),
        );
        std::io::Write::write_all(&mut enc, b"x,y\n1,0\n").unwrap();
        enc.finish().unwrap();
        let e = TableStream::open(&gz, TableFormat::Csv, &o)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("gzip") && e.contains("gunzip"), "{e}");
    }

    /// Each training row of a stream of `n` rows ([`write`]'s) is read by exactly one
    /// rank once per epoch, with 1, 2 and 3 ranks, and the test rows never.
    fn check_every_row_once(mut s: TableStream, test: TableDataset, n: usize) {
        s.set_standardizer(None);
        assert_eq!(s.class_names(), ["cat", "dog", "emu"]);
        assert_eq!(s.len() + test.len(), n);
        let expected = n as f64 * 0.1;
        assert!(
            (test.len() as f64 - expected).abs() < 4.0 * expected.sqrt() + 10.0,
            "{} test rows",
            test.len()
        );
        let test_ids: BTreeSet<u64> = (0..test.len()).map(|r| test.row(r)[0] as u64).collect();
        for world in 1..=3 {
            for epoch in 0..2 {
                let ranks = epoch_rows(&s, world, 32, epoch);
                let steps = s.len().div_ceil(32);
                let mut seen = vec![0u32; n];
                for (step, _) in ranks[0].iter().enumerate() {
                    let sizes: Vec<usize> = ranks.iter().map(|r| r[step].len()).collect();
                    let global = ranks[0][step].global_len;
                    assert!(ranks.iter().all(|r| r[step].global_len == global));
                    assert_eq!(sizes.iter().sum::<usize>(), global, "step {step}");
                    // Each rank spreads its rows evenly: a step's global batch is the
                    // epoch's average within one row per rank.
                    let avg = s.len() as f64 / steps as f64;
                    assert!(
                        (global as f64 - avg).abs() <= world as f64,
                        "{global} vs {avg}"
                    );
                }
                for rank in &ranks {
                    assert_eq!(rank.len(), steps);
                    for b in rank {
                        for (row, &label) in b.inputs.chunks(2).zip(&b.labels) {
                            let id = row[0] as usize;
                            assert_eq!(row[1], (id % 7) as f32);
                            assert_eq!(label, (id % 3) as i64, "row {id}");
                            seen[id] += 1;
                        }
                    }
                }
                for (id, &n) in seen.iter().enumerate() {
                    let want = u32::from(!test_ids.contains(&(id as u64)));
                    assert_eq!(n, want, "row {id}: world {world}, epoch {epoch}");
                }
            }
        }
    }

    #[test]
    fn orders_differ_by_epoch_and_are_shuffled_across_row_groups() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.parquet");
        write(&p, 600, 100);
        let (mut s, _) = TableStream::open(&p, TableFormat::Parquet, &opts(0.0, 150)).unwrap();
        s.set_standardizer(None);
        let ids = |epoch| -> Vec<usize> {
            epoch_rows(&s, 1, 50, epoch)[0]
                .iter()
                .flat_map(|b| {
                    b.inputs
                        .chunks(2)
                        .map(|r| r[0] as usize)
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let (a, b) = (ids(0), ids(1));
        assert_eq!(a.len(), 600);
        assert_ne!(a, b);
        assert_eq!(a, ids(0), "deterministic");
        // The buffer (150 rows) mixes neighbouring row groups: the first batch holds
        // rows from more than one group.
        let groups: BTreeSet<usize> = a[..50].iter().map(|&i| i / 100).collect();
        assert!(groups.len() > 1, "{groups:?}");
        // Resuming mid-epoch yields the tail.
        let all = epoch_rows(&s, 1, 50, 1).remove(0);
        let tail: Vec<Batch> = s
            .batches(Sharding {
                global_batch: 50,
                rank: 0,
                world: 1,
                seed: 11,
                drop_last: false,
            })
            .epoch(1, 5)
            .map(|b| b.unwrap())
            .collect();
        assert_eq!(tail, all[5..]);
    }

    #[test]
    fn statistics_are_the_training_rows_and_standardise_them() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.parquet");
        write(&p, 300, 64);
        let (s, test) = TableStream::open(&p, TableFormat::Parquet, &opts(0.2, 10)).unwrap();
        let stats = s.statistics().unwrap().clone();
        // The same statistics as the in-memory table of the training rows.
        let test_ids: BTreeSet<usize> = (0..test.len()).map(|r| test.row(r)[0] as usize).collect();
        let all = TableDataset::read_parquet(&p, &Column::Name("y".into()), None, false).unwrap();
        let rows: Vec<usize> = (0..300).filter(|i| !test_ids.contains(i)).collect();
        let want = all.select(&rows).statistics();
        for (a, b) in stats
            .mean
            .iter()
            .chain(&stats.std)
            .zip(want.mean.iter().chain(&want.std))
        {
            assert!((a - b).abs() < 1e-3 * b.abs().max(1.0), "{a} vs {b}");
        }
        let b = &epoch_rows(&s, 1, 300, 0)[0][0];
        let mean0 = b.inputs.chunks(2).map(|r| f64::from(r[0])).sum::<f64>() / b.len() as f64;
        assert!(mean0.abs() < 1e-4, "standardised mean {mean0}");
    }

    #[test]
    fn more_workers_than_row_groups_leaves_ranks_idle_but_correct() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.parquet");
        write(&p, 90, 45);
        let (s, _) = TableStream::open(&p, TableFormat::Parquet, &opts(0.0, 8)).unwrap();
        let ranks = epoch_rows(&s, 3, 16, 0);
        let total: usize = ranks.iter().flatten().map(Batch::len).sum();
        assert_eq!(total, 90);
        assert!(ranks.iter().any(|r| r.iter().all(Batch::is_empty)));
    }
}
