//! Tables of numeric features and a class label, read from CSV (raw or gzip).
//!
//! The reader is the `csv` crate; this module decides which columns are features and
//! which is the label, maps string labels to classes, splits off a test set and
//! standardises features with the training split's statistics.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::loader::Batch;

/// A column, by header name or 0-based index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Column {
    /// By header name.
    Name(String),
    /// By 0-based position.
    Index(usize),
}

impl std::fmt::Display for Column {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Column::Name(n) => write!(f, "`{n}`"),
            Column::Index(i) => write!(f, "{i}"),
        }
    }
}

/// How to read a CSV file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvOptions {
    /// The first record (after `skip_rows`) names the columns.
    pub header: bool,
    /// Field separator.
    pub delimiter: u8,
    /// Raw lines dropped before parsing (they may have any number of fields).
    pub skip_rows: usize,
    /// The label column.
    pub label: Column,
    /// Feature columns (None: every column but the label).
    pub features: Option<Vec<Column>>,
    /// The label is a number to predict (regression), not a class.
    pub regression: bool,
}

/// Why a table could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// The file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A record could not be parsed (bad quoting, invalid UTF-8, a short row).
    #[error("{path}, line {line}: {message}")]
    Parse {
        /// File.
        path: PathBuf,
        /// 1-based line in the file.
        line: u64,
        /// What is wrong.
        message: String,
    },
    /// A column named in the job does not exist.
    #[error("{path}: no column {column}; the file has {available}")]
    NoColumn {
        /// File.
        path: PathBuf,
        /// The column asked for.
        column: Column,
        /// What the file has.
        available: String,
    },
    /// The file holds no data rows.
    #[error("{0}: no data rows")]
    Empty(PathBuf),
    /// A Parquet file could not be read (not Parquet, truncated, corrupt), or a column
    /// it names has a type that cannot be a feature or a label.
    #[error("{path}: {message}")]
    Parquet {
        /// File.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A Parquet value is null or not a finite number.
    #[error("{path}, row group {row_group}, row {row}: {message}")]
    ParquetValue {
        /// File.
        path: PathBuf,
        /// 0-based row group.
        row_group: usize,
        /// 0-based row in the file (a data frame's default index).
        row: u64,
        /// What is wrong.
        message: String,
    },
    /// A test file's columns or classes do not match the training file's.
    #[error("{0}")]
    Mismatch(String),
}

/// Labelled rows of `f32` features, held in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct TableDataset {
    pub(crate) values: Vec<f32>,
    pub(crate) targets: Targets,
    /// Number of features per row.
    pub features: usize,
    /// Feature names (the header's, or `col<i>`).
    pub feature_names: Vec<String>,
    /// Class names by class index when labels were strings (or numbers that are not
    /// small non-negative integers); empty when labels are class indices already.
    pub classes: Vec<String>,
}

/// A table's label column: class indices, or numbers to predict.
#[derive(Debug, Clone, PartialEq)]
pub enum Targets {
    /// The class of every row (classification).
    Classes(Vec<u32>),
    /// The value of every row (regression).
    Values(Vec<f32>),
}

impl Targets {
    fn len(&self) -> usize {
        match self {
            Targets::Classes(v) => v.len(),
            Targets::Values(v) => v.len(),
        }
    }

    fn truncate(&mut self, n: usize) {
        match self {
            Targets::Classes(v) => v.truncate(n),
            Targets::Values(v) => v.truncate(n),
        }
    }

    fn select(&self, rows: &[usize]) -> Self {
        match self {
            Targets::Classes(v) => Targets::Classes(rows.iter().map(|&r| v[r]).collect()),
            Targets::Values(v) => Targets::Values(rows.iter().map(|&r| v[r]).collect()),
        }
    }
}

/// Per-feature mean and standard deviation (of the training split).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Standardizer {
    /// Means.
    pub mean: Vec<f32>,
    /// Standard deviations (1 where a feature is constant).
    pub std: Vec<f32>,
    /// Mean and standard deviation of a regression target (the model predicts the
    /// standardised target; [`Standardizer::target_value`] maps it back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<(f32, f32)>,
}

impl Standardizer {
    /// A standardised regression target in the target's own units.
    pub fn target_value(&self, z: f32) -> f32 {
        match self.target {
            Some((mean, std)) => z * std + mean,
            None => z,
        }
    }
}

/// Mean and standard deviation (1 where the values are constant) of `values`.
fn mean_std(values: impl Iterator<Item = f32> + Clone) -> (f32, f32) {
    let n = values.clone().count().max(1) as f64;
    let mean = values.clone().map(f64::from).sum::<f64>() / n;
    let var = values.map(|v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n;
    let sd = var.sqrt();
    (mean as f32, if sd > 1e-12 { sd as f32 } else { 1.0 })
}

/// Opens a file, transparently un-gzipping `*.gz`.
fn open(path: &Path) -> Result<Box<dyn BufRead>, TableError> {
    let io = |source| TableError::Io {
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    let mut r = BufReader::new(f);
    let gz = r.fill_buf().map_err(io)?.starts_with(&[0x1f, 0x8b]);
    Ok(if gz {
        Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(r)))
    } else {
        Box::new(r)
    })
}

/// A classification label has at most this many classes; small non-negative integers
/// below it are class indices already.
pub(crate) const MAX_CLASSES: usize = 10_000;

/// A raw label, kept as text until every row is read.
pub(crate) fn class_ids(
    path: &Path,
    raw: Vec<String>,
) -> Result<(Vec<u32>, Vec<String>), TableError> {
    // Small non-negative integers are class indices already (0/1 targets, digits).
    let ints: Option<Vec<u32>> = raw
        .iter()
        .map(|s| {
            s.trim()
                .parse::<u32>()
                .ok()
                .filter(|&v| (v as usize) < MAX_CLASSES)
        })
        .collect();
    if let Some(ids) = ints {
        return Ok((ids, Vec::new()));
    }
    let mut names: Vec<String> = raw.iter().map(|s| s.trim().to_string()).collect();
    names.sort();
    names.dedup();
    if names.len() > MAX_CLASSES {
        return Err(TableError::Mismatch(format!(
            "{}: the label column has {} distinct values; a classification label needs \
             at most {MAX_CLASSES} (is it the right column?)",
            path.display(),
            names.len()
        )));
    }
    let ids = raw
        .iter()
        .map(|s| names.binary_search(&s.trim().to_string()).unwrap_or(0) as u32)
        .collect();
    Ok((ids, names))
}

/// Labels as read, before they become classes.
pub(crate) enum Labels {
    /// An integer column's values.
    Ints(Vec<i128>),
    /// A string column's values (CSV: every classification label).
    Strs(Vec<String>),
    /// A numeric column's values, to predict (regression).
    Values(Vec<f32>),
}

/// The targets and class names of a whole column of `labels` (classes mapped as
/// [`class_ids`] maps them).
pub(crate) fn targets_of(
    path: &Path,
    labels: Labels,
) -> Result<(Targets, Vec<String>), TableError> {
    let classes_of = |(ids, names)| (Targets::Classes(ids), names);
    Ok(match labels {
        Labels::Values(v) => (Targets::Values(v), Vec::new()),
        Labels::Ints(v) if v.iter().all(|&l| (0..MAX_CLASSES as i128).contains(&l)) => (
            Targets::Classes(v.into_iter().map(|l| l as u32).collect()),
            Vec::new(),
        ),
        Labels::Ints(v) => classes_of(class_ids(path, v.iter().map(i128::to_string).collect())?),
        Labels::Strs(v) => classes_of(class_ids(path, v)?),
    })
}

/// A CSV reader of `input` with `opts`' delimiter, trimmed fields and rows of equal
/// length.
pub(crate) fn csv_reader<R: Read>(input: R, opts: &CsvOptions, header: bool) -> csv::Reader<R> {
    csv::ReaderBuilder::new()
        .has_headers(header)
        .delimiter(opts.delimiter)
        .flexible(false)
        .trim(csv::Trim::All)
        .from_reader(input)
}

/// A `csv` error as a [`TableError`] naming the file line (`lines_before`: lines of
/// the file before the reader's first).
pub(crate) fn csv_error(path: &Path, e: csv::Error, lines_before: u64) -> TableError {
    let line = e.position().map_or(0, |p| p.line()) + lines_before;
    let message = match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!(
            "{len} fields where the rows before have {expected_len} (a missing or extra field?)"
        ),
        _ => e.to_string(),
    };
    TableError::Parse {
        path: path.to_path_buf(),
        line,
        message,
    }
}

/// Drops `n` raw lines of `input`: the lines and bytes dropped (fewer at the end of
/// the file).
pub(crate) fn skip_lines(
    path: &Path,
    input: &mut impl BufRead,
    n: usize,
) -> Result<(u64, u64), TableError> {
    let (mut lines, mut bytes) = (0u64, 0u64);
    let mut line = Vec::new();
    for _ in 0..n {
        line.clear();
        let got = input
            .read_until(b'\n', &mut line)
            .map_err(|source| TableError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        if got == 0 {
            break;
        }
        lines += 1;
        bytes += got as u64;
    }
    Ok((lines, bytes))
}

/// Which fields of a CSV record are the features and which the label, and how a
/// record becomes a row.
pub(crate) struct CsvLayout {
    path: PathBuf,
    /// Every column's name (the header's, or `col<i>`).
    names: Vec<String>,
    /// Fields per record.
    fields: usize,
    feature_cols: Vec<usize>,
    label_col: usize,
    regression: bool,
}

impl CsvLayout {
    /// Resolves `opts`' columns in records of `fields` fields named by `header`.
    pub(crate) fn new(
        path: &Path,
        header: Option<Vec<String>>,
        fields: usize,
        opts: &CsvOptions,
    ) -> Result<Self, TableError> {
        let available = || match &header {
            Some(h) => format!("columns {}", h.join(", ")),
            None => format!(
                "{fields} columns (0..{}) and no header",
                fields.saturating_sub(1)
            ),
        };
        let resolve = |c: &Column| -> Result<usize, TableError> {
            let found = match c {
                Column::Index(i) => (*i < fields).then_some(*i),
                Column::Name(n) => header
                    .as_ref()
                    .and_then(|h| h.iter().position(|x| x == n))
                    .or_else(|| {
                        // Without a header, `col<i>` and plain numbers name positions.
                        n.strip_prefix("col")
                            .unwrap_or(n)
                            .parse::<usize>()
                            .ok()
                            .filter(|&i| header.is_none() && i < fields)
                    }),
            };
            found.ok_or_else(|| TableError::NoColumn {
                path: path.to_path_buf(),
                column: c.clone(),
                available: available(),
            })
        };
        let label_col = resolve(&opts.label)?;
        let feature_cols: Vec<usize> = match &opts.features {
            Some(cols) => cols.iter().map(resolve).collect::<Result<_, _>>()?,
            None => (0..fields).filter(|&i| i != label_col).collect(),
        };
        if feature_cols.is_empty() {
            return Err(TableError::Mismatch(format!(
                "{}: no feature columns (only the label column {})",
                path.display(),
                opts.label
            )));
        }
        Ok(Self {
            path: path.to_path_buf(),
            names: header.unwrap_or_else(|| (0..fields).map(|i| format!("col{i}")).collect()),
            fields,
            feature_cols,
            label_col,
            regression: opts.regression,
        })
    }

    /// Features per row.
    pub(crate) fn width(&self) -> usize {
        self.feature_cols.len()
    }

    /// The feature columns' names.
    pub(crate) fn feature_names(&self) -> Vec<String> {
        self.feature_cols
            .iter()
            .map(|&c| self.names[c].clone())
            .collect()
    }

    /// No labels yet: strings for classes (mapped once all are seen), numbers for
    /// regression.
    pub(crate) fn empty_labels(&self) -> Labels {
        if self.regression {
            Labels::Values(Vec::new())
        } else {
            Labels::Strs(Vec::new())
        }
    }

    /// Appends the features of `rec` (file line `line`) to `values` and its label to
    /// `labels` (of [`CsvLayout::empty_labels`]' kind).
    pub(crate) fn push(
        &self,
        rec: &csv::StringRecord,
        line: u64,
        values: &mut Vec<f32>,
        labels: &mut Labels,
    ) -> Result<(), TableError> {
        let bad = |message: String| TableError::Parse {
            path: self.path.clone(),
            line,
            message,
        };
        if rec.len() != self.fields {
            return Err(bad(format!(
                "{} fields where the first row has {} (a missing or extra field?)",
                rec.len(),
                self.fields
            )));
        }
        let finite = |field: &str| field.parse::<f32>().ok().filter(|v| v.is_finite());
        for &c in &self.feature_cols {
            let field = rec.get(c).unwrap_or("");
            let v = finite(field).ok_or_else(|| {
                let shown = if field.is_empty() {
                    "empty".to_string()
                } else {
                    format!("`{field}`")
                };
                bad(format!(
                    "column `{}` is {shown}, not a finite number",
                    self.names[c]
                ))
            })?;
            values.push(v);
        }
        let label = rec.get(self.label_col).unwrap_or("");
        let name = &self.names[self.label_col];
        if label.is_empty() {
            return Err(bad(format!("label column `{name}` is empty")));
        }
        match labels {
            Labels::Values(v) => v.push(finite(label).ok_or_else(|| {
                bad(format!(
                    "label column `{name}` is `{label}`, not a finite number \
                     (task = \"regression\" predicts a number)"
                ))
            })?),
            Labels::Strs(v) => v.push(label.to_string()),
            Labels::Ints(v) => v.push(
                label
                    .parse()
                    .map_err(|_| bad(format!("label column `{name}` is `{label}`")))?,
            ),
        }
        Ok(())
    }
}

impl TableDataset {
    /// Reads a CSV file (raw or gzip).
    pub fn read_csv(path: &Path, opts: &CsvOptions) -> Result<Self, TableError> {
        let mut input = open(path)?;
        let (skipped, _) = skip_lines(path, &mut input, opts.skip_rows)?;
        Self::parse(path, input, skipped, opts)
    }

    fn parse(
        path: &Path,
        input: impl Read,
        skipped: u64,
        opts: &CsvOptions,
    ) -> Result<Self, TableError> {
        let mut rdr = csv_reader(input, opts, opts.header);
        let err = |e| csv_error(path, e, skipped);
        let header: Option<Vec<String>> = if opts.header {
            Some(
                rdr.headers()
                    .map_err(err)?
                    .iter()
                    .map(str::to_string)
                    .collect(),
            )
        } else {
            None
        };
        let mut records = rdr.records();
        let first = match records.next() {
            Some(r) => r.map_err(err)?,
            None => return Err(TableError::Empty(path.to_path_buf())),
        };
        let layout = CsvLayout::new(path, header, first.len(), opts)?;
        let line_of = |rec: &csv::StringRecord| rec.position().map_or(0, |p| p.line()) + skipped;
        let mut values = Vec::new();
        let mut labels = layout.empty_labels();
        layout.push(&first, line_of(&first), &mut values, &mut labels)?;
        for rec in records {
            let rec = rec.map_err(err)?;
            layout.push(&rec, line_of(&rec), &mut values, &mut labels)?;
        }
        let (targets, classes) = targets_of(path, labels)?;
        Ok(Self {
            values,
            targets,
            features: layout.width(),
            feature_names: layout.feature_names(),
            classes,
        })
    }

    /// Builds a table from parts (tests, synthetic data).
    ///
    /// # Panics
    /// When `values.len() != labels.len() * features`.
    pub fn from_parts(values: Vec<f32>, labels: Vec<u32>, features: usize) -> Self {
        assert_eq!(values.len(), labels.len() * features);
        Self {
            values,
            targets: Targets::Classes(labels),
            features,
            feature_names: (0..features).map(|i| format!("col{i}")).collect(),
            classes: Vec::new(),
        }
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of classes: the named classes, else one more than the largest label
    /// (0 for a regression table).
    pub fn num_classes(&self) -> usize {
        match &self.targets {
            Targets::Values(_) => 0,
            Targets::Classes(ids) if self.classes.is_empty() => {
                ids.iter().max().map_or(0, |&m| m as usize + 1)
            }
            Targets::Classes(_) => self.classes.len(),
        }
    }

    /// The label column.
    pub fn targets(&self) -> &Targets {
        &self.targets
    }

    /// Row `i`'s features.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.features..(i + 1) * self.features]
    }

    /// Row `i`'s class (tests; a regression row has none).
    #[cfg(test)]
    pub(crate) fn label(&self, i: usize) -> u32 {
        match &self.targets {
            Targets::Classes(ids) => ids[i],
            Targets::Values(_) => panic!("a regression table has no classes"),
        }
    }

    /// Keeps the first `n` rows.
    pub fn truncate(&mut self, n: usize) {
        self.targets.truncate(n);
        self.values.truncate(n * self.features);
    }

    /// Splits off a deterministic test set: a `fraction` of the rows chosen by a
    /// permutation seeded with `seed`; both parts keep the file's order.
    pub fn split(self, fraction: f64, seed: u64) -> (Self, Self) {
        let (train, test) = crate::sampler::split_rows(self.len(), fraction, seed);
        (self.select(&train), self.select(&test))
    }

    /// The rows `rows`, in that order.
    pub fn select(&self, rows: &[usize]) -> Self {
        let mut values = Vec::with_capacity(rows.len() * self.features);
        for &r in rows {
            values.extend_from_slice(self.row(r));
        }
        Self {
            values,
            targets: self.targets.select(rows),
            features: self.features,
            feature_names: self.feature_names.clone(),
            classes: self.classes.clone(),
        }
    }

    /// Re-maps this table's string classes onto `classes` (a training set's), so that
    /// a test file uses the training file's class indices.
    pub fn align_classes(&mut self, classes: &[String], what: &str) -> Result<(), TableError> {
        if self.classes == classes {
            return Ok(());
        }
        if classes.is_empty() || self.classes.is_empty() {
            return Err(TableError::Mismatch(format!(
                "{what}: its labels are {} but the training labels are {}",
                if self.classes.is_empty() {
                    "class numbers"
                } else {
                    "names"
                },
                if classes.is_empty() {
                    "class numbers"
                } else {
                    "names"
                },
            )));
        }
        let mut map = Vec::with_capacity(self.classes.len());
        for c in &self.classes {
            match classes.iter().position(|k| k == c) {
                Some(i) => map.push(i as u32),
                None => {
                    return Err(TableError::Mismatch(format!(
                        "{what}: label `{c}` is not one of the training classes ({})",
                        classes.join(", ")
                    )))
                }
            }
        }
        if let Targets::Classes(ids) = &mut self.targets {
            for l in ids {
                *l = map[*l as usize];
            }
        }
        self.classes = classes.to_vec();
        Ok(())
    }

    /// Mean and standard deviation of every feature (and of a regression target).
    pub fn statistics(&self) -> Standardizer {
        let (mean, std) = (0..self.features)
            .map(|f| mean_std((0..self.len()).map(move |r| self.values[r * self.features + f])))
            .unzip();
        Standardizer {
            mean,
            std,
            target: match &self.targets {
                Targets::Values(v) => Some(mean_std(v.iter().copied())),
                Targets::Classes(_) => None,
            },
        }
    }

    /// Applies `(x - mean) / std` to every feature, and to a regression target.
    ///
    /// # Panics
    /// When `s` has another number of features.
    pub fn standardize(&mut self, s: &Standardizer) {
        assert_eq!(s.mean.len(), self.features);
        for row in self.values.chunks_mut(self.features) {
            for ((v, m), sd) in row.iter_mut().zip(&s.mean).zip(&s.std) {
                *v = (*v - m) / sd;
            }
        }
        if let (Targets::Values(v), Some((m, sd))) = (&mut self.targets, s.target) {
            v.iter_mut().for_each(|t| *t = (*t - m) / sd);
        }
    }

    /// Appends the features and labels (or regression targets) of `indices` to `batch`.
    pub fn gather(&self, indices: &[usize], batch: &mut Batch) {
        batch.inputs.reserve(indices.len() * self.features);
        for &i in indices {
            batch.inputs.extend_from_slice(self.row(i));
        }
        match &self.targets {
            Targets::Classes(ids) => batch
                .labels
                .extend(indices.iter().map(|&i| i64::from(ids[i]))),
            Targets::Values(v) => batch.targets.extend(indices.iter().map(|&i| v[i])),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(header: bool, label: Column) -> CsvOptions {
        CsvOptions {
            header,
            delimiter: b',',
            skip_rows: 0,
            label,
            features: None,
            regression: false,
        }
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn reads_header_named_columns_and_string_labels() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "t.csv", "a,b,kind\n1,2,cat\n3,4,dog\n5,6,cat\n");
        let t = TableDataset::read_csv(&p, &opts(true, Column::Name("kind".into()))).unwrap();
        assert_eq!((t.len(), t.features, t.num_classes()), (3, 2, 2));
        assert_eq!(t.classes, ["cat", "dog"]);
        assert_eq!(t.row(1), [3.0, 4.0]);
        assert_eq!((t.label(0), t.label(1)), (0, 1));
        assert_eq!(t.feature_names, ["a", "b"]);
    }

    #[test]
    fn skips_raw_lines_and_reads_gzip_without_a_header() {
        let dir = tempfile::tempdir().unwrap();
        // sklearn's breast_cancer.csv style: a count line with another field count.
        let text = "3,2,no,yes\n0.5,1.5,1\n2.5,3.5,0\n4.5,5.5,1\n";
        let p = dir.path().join("t.csv.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, text.as_bytes()).unwrap();
        std::fs::write(&p, gz.finish().unwrap()).unwrap();
        let mut o = opts(false, Column::Index(2));
        o.skip_rows = 1;
        let t = TableDataset::read_csv(&p, &o).unwrap();
        assert_eq!((t.len(), t.features, t.num_classes()), (3, 2, 2));
        assert!(t.classes.is_empty(), "0/1 are class numbers");
        assert_eq!(t.row(2), [4.5, 5.5]);
        // Explicit features and a delimiter.
        let p = write(dir.path(), "s.csv", "1;2;3;0\n4;5;6;1\n");
        let o = CsvOptions {
            delimiter: b';',
            features: Some(vec![Column::Index(2), Column::Name("col0".into())]),
            ..opts(false, Column::Index(3))
        };
        let t = TableDataset::read_csv(&p, &o).unwrap();
        assert_eq!(t.row(1), [6.0, 4.0]);
    }

    #[test]
    fn bad_rows_name_the_file_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "t.csv", "a,b,y\n1,2,0\n3,x,1\n");
        let e = TableDataset::read_csv(&p, &opts(true, Column::Name("y".into())))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("t.csv, line 3") && e.contains("`b`") && e.contains("`x`"),
            "{e}"
        );
        let p = write(dir.path(), "u.csv", "a,b,y\n1,2,0\n3,1\n");
        let e = TableDataset::read_csv(&p, &opts(true, Column::Name("y".into())))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3") && e.contains("2 fields"), "{e}");
        let p = write(dir.path(), "v.csv", "a,b,y\n1,,0\n");
        let e = TableDataset::read_csv(&p, &opts(true, Column::Name("y".into())))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("empty"), "{e}");
        let e = TableDataset::read_csv(&p, &opts(true, Column::Name("target".into())))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no column `target`") && e.contains("a, b, y"),
            "{e}"
        );
        let p = write(dir.path(), "w.csv", "a,b,y\n");
        let e = TableDataset::read_csv(&p, &opts(true, Column::Index(2)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no data rows"), "{e}");
        let e = TableDataset::read_csv(&dir.path().join("nope.csv"), &opts(true, Column::Index(0)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope.csv"), "{e}");
    }

    #[test]
    fn split_is_deterministic_and_disjoint() {
        let t = TableDataset::from_parts((0..100).map(|v| v as f32).collect(), vec![0; 100], 1);
        let (a, b) = t.clone().split(0.2, 7);
        assert_eq!((a.len(), b.len()), (80, 20));
        let (a2, b2) = t.clone().split(0.2, 7);
        assert_eq!((a.clone(), b.clone()), (a2, b2));
        let mut all: Vec<f32> = a.values.iter().chain(&b.values).copied().collect();
        all.sort_by(f32::total_cmp);
        assert_eq!(all, t.values);
        assert_ne!(t.split(0.2, 8).1, b, "another seed, another split");
    }

    #[test]
    fn standardising_uses_the_given_statistics() {
        let mut t = TableDataset::from_parts(vec![1.0, 5.0, 3.0, 5.0], vec![0, 1], 2);
        let s = t.statistics();
        assert_eq!(s.mean, [2.0, 5.0]);
        assert_eq!(s.std, [1.0, 1.0], "a constant feature keeps std 1");
        t.standardize(&s);
        assert_eq!(t.row(0), [-1.0, 0.0]);
    }

    #[test]
    fn test_classes_follow_the_training_classes() {
        let mut test = TableDataset::from_parts(vec![0.0, 1.0], vec![0, 1], 1);
        test.classes = vec!["b".into(), "c".into()];
        test.align_classes(&["a".into(), "b".into(), "c".into()], "test.csv")
            .unwrap();
        assert_eq!((test.label(0), test.label(1)), (1, 2));
        let e = test
            .align_classes(&["a".into()], "test.csv")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`b` is not one of the training classes"), "{e}");
    }

    mod fuzz {
        use super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;
        use std::io::Write;

        const NAMES: [&str; 4] = ["cat", "dog", "emu", "fox"];

        /// A random table and how it is written.
        #[derive(Debug, Clone)]
        struct Case {
            rows: Vec<Vec<f32>>,
            labels: Vec<u8>,
            label_pos: usize,
            delimiter: u8,
            header: bool,
            gzip: bool,
            skip: usize,
            named: bool,
        }

        fn case() -> impl Strategy<Value = Case> {
            (1usize..6, 1usize..40).prop_flat_map(|(f, n)| {
                let value = prop_oneof![
                    -1e6f32..1e6f32,
                    Just(0.0f32),
                    Just(-0.0f32),
                    proptest::num::f32::NORMAL,
                ];
                (
                    vec(vec(value, f), n),
                    vec(0u8..4, n),
                    0..=f,
                    prop_oneof![Just(b','), Just(b';'), Just(b'\t'), Just(b'|')],
                    any::<bool>(),
                    any::<bool>(),
                    0usize..3,
                    any::<bool>(),
                )
                    .prop_map(
                        |(rows, labels, label_pos, delimiter, header, gzip, skip, named)| Case {
                            rows,
                            labels,
                            label_pos,
                            delimiter,
                            header,
                            gzip,
                            skip,
                            named,
                        },
                    )
            })
        }

        fn text(c: &Case) -> String {
            let d = (c.delimiter as char).to_string();
            let mut out = String::new();
            for i in 0..c.skip {
                out.push_str(&format!("junk line {i},with;any|\tfields,,\n"));
            }
            let f = c.rows[0].len();
            if c.header {
                let mut names: Vec<String> = (0..f).map(|j| format!("c{j}")).collect();
                names.insert(c.label_pos, "y".into());
                out.push_str(&names.join(&d));
                out.push('\n');
            }
            for (row, &l) in c.rows.iter().zip(&c.labels) {
                let mut fields: Vec<String> = row.iter().map(|v| v.to_string()).collect();
                let label = if c.named {
                    NAMES[l as usize].to_string()
                } else {
                    l.to_string()
                };
                fields.insert(c.label_pos, label);
                out.push_str(&fields.join(&d));
                out.push('\n');
            }
            out
        }

        fn write_case(dir: &Path, c: &Case, body: &[u8]) -> PathBuf {
            let p = dir.join(if c.gzip { "t.csv.gz" } else { "t.csv" });
            if c.gzip {
                let mut z = flate2::write::GzEncoder::new(
                    std::fs::File::create(&p).unwrap(),
                    flate2::Compression::fast(),
                );
                z.write_all(body).unwrap();
                z.finish().unwrap();
            } else {
                std::fs::write(&p, body).unwrap();
            }
            p
        }

        fn options(c: &Case) -> CsvOptions {
            CsvOptions {
                header: c.header,
                delimiter: c.delimiter,
                skip_rows: c.skip,
                label: if c.header {
                    Column::Name("y".into())
                } else {
                    Column::Index(c.label_pos)
                },
                features: None,
                regression: false,
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

            /// Any table written with any delimiter, header or not, gzip or not, after
            /// junk lines, reads back exactly: every value, every label.
            #[test]
            fn random_tables_round_trip_exactly(c in case()) {
                let dir = tempfile::tempdir().unwrap();
                let p = write_case(dir.path(), &c, text(&c).as_bytes());
                let t = TableDataset::read_csv(&p, &options(&c)).unwrap();
                prop_assert_eq!(t.len(), c.rows.len());
                prop_assert_eq!(&t.values, &c.rows.concat());
                let mut used: Vec<&str> = c.labels.iter().map(|&l| NAMES[l as usize]).collect();
                used.sort();
                used.dedup();
                for (i, &l) in c.labels.iter().enumerate() {
                    let want = if c.named {
                        used.iter().position(|n| *n == NAMES[l as usize]).unwrap() as u32
                    } else {
                        u32::from(l)
                    };
                    prop_assert_eq!(t.label(i), want);
                }
            }

            /// A damaged file (bytes overwritten, or cut anywhere) is read or rejected
            /// with an error; it never panics.
            #[test]
            fn damaged_tables_are_errors_not_panics(
                c in case(),
                hits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
                cut in any::<prop::sample::Index>(),
                truncate in any::<bool>(),
            ) {
                let mut body = text(&c).into_bytes();
                for (at, byte) in hits {
                    let i = at.index(body.len());
                    body[i] = byte;
                }
                if truncate {
                    body.truncate(cut.index(body.len() + 1));
                }
                let dir = tempfile::tempdir().unwrap();
                let p = write_case(dir.path(), &c, &body);
                if let Err(e) = TableDataset::read_csv(&p, &options(&c)) {
                    prop_assert!(e.to_string().contains("t.csv"), "{}", e);
                }
            }
        }
    }
}
