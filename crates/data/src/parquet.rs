//! Tables read from Parquet files, through the `parquet` crate's Arrow reader.
//!
//! Columns are the schema's top-level fields, by name or position. A feature may be of
//! any integer or floating-point type (read as `f32`); the label an integer (class
//! numbers when all are small and non-negative, as in CSV) or a string (plain or
//! dictionary-encoded: classes are the sorted distinct values, as in CSV). The file is
//! read one row group at a time, only the columns asked for.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ::parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader,
    ParquetRecordBatchReaderBuilder,
};
use ::parquet::arrow::ProjectionMask;
use arrow_array::cast::AsArray;
use arrow_array::types::{
    ArrowPrimitiveType, Float16Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type,
    Int8Type, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow_array::Array;
use arrow_schema::DataType;

use crate::table::{class_ids, targets_of, Column, Labels, TableDataset, TableError};

/// Rows decoded at a time (within one row group) when a whole file is read.
const BATCH_ROWS: usize = 8192;

fn is_number(t: &DataType) -> bool {
    t.is_integer() || t.is_floating()
}

fn is_string(t: &DataType) -> bool {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, v) => matches!(
            v.as_ref(),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        ),
        _ => false,
    }
}

/// A bad value: its row in the batch and what it is.
type Bad = (usize, String);

/// The first null of `col`, as a [`Bad`].
fn first_null(col: &dyn Array) -> Result<(), Bad> {
    if let Some(nulls) = col.logical_nulls() {
        if nulls.null_count() > 0 {
            let i = (0..col.len()).find(|&i| nulls.is_null(i)).unwrap_or(0);
            return Err((i, "null".into()));
        }
    }
    Ok(())
}

/// Writes `col` (no nulls) into slot `j` of `out`'s rows of `stride` values.
fn put_primitive<T: ArrowPrimitiveType>(
    col: &dyn Array,
    out: &mut [f32],
    j: usize,
    stride: usize,
    to_f32: impl Fn(T::Native) -> f32,
) -> Result<(), Bad>
where
    T::Native: std::fmt::Debug,
{
    let values = col.as_primitive::<T>().values();
    for (i, (&v, row)) in values.iter().zip(out.chunks_exact_mut(stride)).enumerate() {
        let x = to_f32(v);
        if !x.is_finite() {
            return Err((i, format!("`{v:?}`, not a finite 32-bit number")));
        }
        row[j] = x;
    }
    Ok(())
}

/// Writes the feature column `col` into slot `j` of `out`'s rows of `stride` values.
fn put_feature(col: &dyn Array, out: &mut [f32], j: usize, stride: usize) -> Result<(), Bad> {
    first_null(col)?;
    let (o, s) = (out, stride);
    match col.data_type() {
        DataType::Int8 => put_primitive::<Int8Type>(col, o, j, s, |v| v as f32),
        DataType::Int16 => put_primitive::<Int16Type>(col, o, j, s, |v| v as f32),
        DataType::Int32 => put_primitive::<Int32Type>(col, o, j, s, |v| v as f32),
        DataType::Int64 => put_primitive::<Int64Type>(col, o, j, s, |v| v as f32),
        DataType::UInt8 => put_primitive::<UInt8Type>(col, o, j, s, |v| v as f32),
        DataType::UInt16 => put_primitive::<UInt16Type>(col, o, j, s, |v| v as f32),
        DataType::UInt32 => put_primitive::<UInt32Type>(col, o, j, s, |v| v as f32),
        DataType::UInt64 => put_primitive::<UInt64Type>(col, o, j, s, |v| v as f32),
        DataType::Float16 => put_primitive::<Float16Type>(col, o, j, s, |v| v.to_f32()),
        DataType::Float32 => put_primitive::<Float32Type>(col, o, j, s, |v| v),
        DataType::Float64 => put_primitive::<Float64Type>(col, o, j, s, |v| v as f32),
        t => Err((0, format!("of type {t}, not a number"))),
    }
}

/// The integers of `col` (no nulls), widened.
fn ints(col: &dyn Array) -> Option<Vec<i128>> {
    fn widen<T: ArrowPrimitiveType>(col: &dyn Array) -> Vec<i128>
    where
        T::Native: Into<i128>,
    {
        col.as_primitive::<T>()
            .values()
            .iter()
            .map(|&v| v.into())
            .collect()
    }
    Some(match col.data_type() {
        DataType::Int8 => widen::<Int8Type>(col),
        DataType::Int16 => widen::<Int16Type>(col),
        DataType::Int32 => widen::<Int32Type>(col),
        DataType::Int64 => widen::<Int64Type>(col),
        DataType::UInt8 => widen::<UInt8Type>(col),
        DataType::UInt16 => widen::<UInt16Type>(col),
        DataType::UInt32 => widen::<UInt32Type>(col),
        DataType::UInt64 => widen::<UInt64Type>(col),
        _ => return None,
    })
}

/// The strings of a plain string column (a null reads as "").
fn plain_strs(col: &dyn Array) -> Option<Vec<&str>> {
    Some(match col.data_type() {
        DataType::Utf8 => col
            .as_string::<i32>()
            .iter()
            .map(Option::unwrap_or_default)
            .collect(),
        DataType::LargeUtf8 => col
            .as_string::<i64>()
            .iter()
            .map(Option::unwrap_or_default)
            .collect(),
        DataType::Utf8View => col
            .as_string_view()
            .iter()
            .map(Option::unwrap_or_default)
            .collect(),
        _ => return None,
    })
}

/// The strings of `col` (no nulls), dictionaries looked up.
fn strs(col: &dyn Array) -> Option<Vec<&str>> {
    match col.data_type() {
        DataType::Dictionary(_, _) => {
            let dict = col.as_any_dictionary_opt()?;
            let values = plain_strs(dict.values().as_ref())?;
            if values.is_empty() {
                // Only null keys can point into no values.
                return col.is_empty().then(Vec::new);
            }
            Some(
                dict.normalized_keys()
                    .into_iter()
                    .map(|k| values[k])
                    .collect(),
            )
        }
        _ => plain_strs(col),
    }
}

/// Appends the label column `col` to `labels`.
fn put_labels(col: &dyn Array, labels: &mut Labels) -> Result<(), Bad> {
    first_null(col)?;
    let unsupported = || (0, format!("of type {}", col.data_type()));
    match labels {
        Labels::Values(v) => {
            let base = v.len();
            v.resize(base + col.len(), 0.0);
            put_feature(col, &mut v[base..], 0, 1)?;
        }
        Labels::Ints(v) => v.extend(ints(col).ok_or_else(unsupported)?),
        Labels::Strs(v) => {
            let s = strs(col).ok_or_else(unsupported)?;
            if let Some(i) = s.iter().position(|s| s.trim().is_empty()) {
                return Err((i, "an empty string".into()));
            }
            v.extend(s.into_iter().map(str::to_string));
        }
    }
    Ok(())
}

impl TableDataset {
    /// Reads a Parquet file: the `label` column and the `features` columns (None:
    /// every column but the label), by name or position in the schema.
    ///
    /// Features may be of any integer or floating-point type (read as `f32`); the
    /// label an integer or a string (plain or dictionary-encoded), mapped to classes
    /// as [`TableDataset::read_csv`] maps them. Nulls and non-finite features are
    /// errors naming the row group, row and column.
    pub fn read_parquet(
        path: &Path,
        label: &Column,
        features: Option<&[Column]>,
        regression: bool,
    ) -> Result<TableDataset, TableError> {
        let table = Arc::new(ParquetTable::open(path, label, features, regression)?);
        let mut values = Vec::new();
        let mut labels = table.empty_labels();
        for group in 0..table.groups.len() {
            let mut reader = table.group(group, BATCH_ROWS)?;
            while reader.next_into(&mut values, &mut labels)?.is_some() {}
        }
        if values.is_empty() {
            return Err(TableError::Empty(path.to_path_buf()));
        }
        let (targets, classes) = targets_of(path, labels)?;
        Ok(TableDataset {
            values,
            targets,
            features: table.width(),
            feature_names: table.feature_names(),
            classes,
        })
    }
}

/// Runs `f`, turning a panic of the `parquet` crate (it still asserts on some
/// malformed files) into an error naming `path`: a damaged file is an error of the
/// caller, never a panic.
fn guard<T>(path: &Path, f: impl FnOnce() -> Result<T, TableError>) -> Result<T, TableError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(TableError::Parquet {
            path: path.to_path_buf(),
            message: format!("damaged Parquet file (the reader failed: {what})"),
        })
    })
}

/// A Parquet file opened for its feature and label columns: the schema checked, the
/// row groups listed, read one record batch at a time ([`ParquetTable::group`]).
pub(crate) struct ParquetTable {
    pub(crate) path: PathBuf,
    file: File,
    meta: ArrowReaderMetadata,
    names: Vec<String>,
    feature_cols: Vec<usize>,
    label_col: usize,
    /// Decoded columns, in schema order (a record batch holds them so).
    roots: Vec<usize>,
    mask: ProjectionMask,
    /// Rows of each row group.
    pub(crate) groups: Vec<usize>,
    label_kind: LabelKind,
}

/// What the label column holds.
#[derive(Clone, Copy)]
enum LabelKind {
    Values,
    Ints,
    Strs,
}

impl LabelKind {
    /// No labels yet, of this kind.
    fn empty(self) -> Labels {
        match self {
            LabelKind::Values => Labels::Values(Vec::new()),
            LabelKind::Ints => Labels::Ints(Vec::new()),
            LabelKind::Strs => Labels::Strs(Vec::new()),
        }
    }
}

/// What the label column `name` of type `t` can be: numbers to predict (regression),
/// class numbers (integers) or class names (strings); any other type is an error.
fn label_kind(
    path: &Path,
    name: &str,
    t: &DataType,
    regression: bool,
) -> Result<LabelKind, TableError> {
    let fail = |message: String| TableError::Parquet {
        path: path.to_path_buf(),
        message,
    };
    if regression && is_number(t) {
        Ok(LabelKind::Values)
    } else if regression {
        Err(fail(format!(
            "label column `{name}` has type {t}; task = \"regression\" predicts a \
             number (an integer or floating-point column)"
        )))
    } else if t.is_integer() {
        Ok(LabelKind::Ints)
    } else if is_string(t) {
        Ok(LabelKind::Strs)
    } else {
        Err(fail(format!(
            "label column `{name}` has type {t}; a label must be integers (class \
             numbers) or strings (class names)"
        )))
    }
}

impl ParquetTable {
    /// Opens `path`, resolving and type-checking the columns (see
    /// [`TableDataset::read_parquet`]).
    pub(crate) fn open(
        path: &Path,
        label: &Column,
        features: Option<&[Column]>,
        regression: bool,
    ) -> Result<Self, TableError> {
        guard(path, || {
            Self::open_unguarded(path, label, features, regression)
        })
    }

    fn open_unguarded(
        path: &Path,
        label: &Column,
        features: Option<&[Column]>,
        regression: bool,
    ) -> Result<Self, TableError> {
        let fail = |message: String| TableError::Parquet {
            path: path.to_path_buf(),
            message,
        };
        let (file, meta, names) = open_checked(path)?;
        let fields = meta.schema().fields().clone();
        let resolve = |c: &Column| resolve(path, &names, c);
        let label_col = resolve(label)?;
        let feature_cols: Vec<usize> = match features {
            Some(cols) => cols.iter().map(resolve).collect::<Result<_, _>>()?,
            None => (0..names.len()).filter(|&i| i != label_col).collect(),
        };
        if feature_cols.is_empty() {
            return Err(TableError::Mismatch(format!(
                "{}: no feature columns (only the label column {label})",
                path.display(),
            )));
        }
        for &c in &feature_cols {
            let t = fields[c].data_type();
            if !is_number(t) {
                return Err(fail(format!(
                    "feature column `{}` has type {t}; features must be integers or \
                     floating-point numbers",
                    names[c]
                )));
            }
        }
        let label_kind = label_kind(
            path,
            &names[label_col],
            fields[label_col].data_type(),
            regression,
        )?;
        // Only the columns asked for are decoded; a batch holds them in schema order.
        let mut roots: Vec<usize> = feature_cols.iter().copied().chain([label_col]).collect();
        roots.sort_unstable();
        roots.dedup();
        let mask = ProjectionMask::roots(meta.parquet_schema(), roots.iter().copied());
        let groups = meta
            .metadata()
            .row_groups()
            .iter()
            .map(|g| usize::try_from(g.num_rows()).unwrap_or(0))
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            file,
            meta,
            names,
            feature_cols,
            label_col,
            roots,
            mask,
            groups,
            label_kind,
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

    /// No labels yet, of the label column's kind.
    pub(crate) fn empty_labels(&self) -> Labels {
        self.label_kind.empty()
    }

    /// A reader of row group `group`'s record batches of `batch_rows` rows.
    pub(crate) fn group(
        self: &Arc<Self>,
        group: usize,
        batch_rows: usize,
    ) -> Result<GroupReader, TableError> {
        guard(&self.path, || {
            let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(
                self.file.try_clone().map_err(|source| TableError::Io {
                    path: self.path.clone(),
                    source,
                })?,
                self.meta.clone(),
            )
            .with_projection(self.mask.clone())
            .with_row_groups(vec![group])
            .with_batch_size(batch_rows.max(1))
            .build()
            .map_err(|e| TableError::Parquet {
                path: self.path.clone(),
                message: format!("row group {group}: {e}"),
            })?;
            Ok(GroupReader {
                table: Arc::clone(self),
                reader,
                group,
                row: self.groups[..group].iter().map(|&n| n as u64).sum(),
            })
        })
    }
}

/// Opens `path` and reads its footer, checking that every column chunk lies in the
/// file (the reader asserts on negative offsets); the file, its metadata and its
/// top-level column names.
fn open_checked(path: &Path) -> Result<(File, ArrowReaderMetadata, Vec<String>), TableError> {
    let io = |source| TableError::Io {
        path: path.to_path_buf(),
        source,
    };
    let fail = |message: String| TableError::Parquet {
        path: path.to_path_buf(),
        message,
    };
    let file = File::open(path).map_err(io)?;
    let meta = ArrowReaderMetadata::load(&file, ArrowReaderOptions::new())
        .map_err(|e| fail(format!("not a readable Parquet file ({e})")))?;
    let size = file.metadata().map_err(io)?.len();
    for (g, group) in meta.metadata().row_groups().iter().enumerate() {
        for chunk in group.columns() {
            let start = chunk
                .dictionary_page_offset()
                .unwrap_or(chunk.data_page_offset());
            let end = u64::try_from(start)
                .ok()
                .zip(u64::try_from(chunk.compressed_size()).ok())
                .and_then(|(start, len)| start.checked_add(len));
            if end.is_none_or(|end| end > size) {
                return Err(fail(format!(
                    "damaged Parquet file: row group {g}, column `{}` lies outside the \
                     file's {size} bytes",
                    chunk.column_path()
                )));
            }
        }
    }
    let names = meta
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    Ok((file, meta, names))
}

/// The position of column `c` among `names`.
fn resolve(path: &Path, names: &[String], c: &Column) -> Result<usize, TableError> {
    let found = match c {
        Column::Index(i) => (*i < names.len()).then_some(*i),
        Column::Name(n) => names.iter().position(|x| x == n),
    };
    found.ok_or_else(|| TableError::NoColumn {
        path: path.to_path_buf(),
        column: c.clone(),
        available: if names.is_empty() {
            "no columns".into()
        } else {
            format!("columns {}", names.join(", "))
        },
    })
}

/// One row group of a [`ParquetTable`], read a record batch at a time.
pub(crate) struct GroupReader {
    table: Arc<ParquetTable>,
    reader: ParquetRecordBatchReader,
    group: usize,
    /// The file row of the next record batch's first row.
    pub(crate) row: u64,
}

impl GroupReader {
    /// Appends the next record batch's features (row-major) to `values` and its labels
    /// to `labels`; the number of rows, or `None` at the end of the row group.
    pub(crate) fn next_into(
        &mut self,
        values: &mut Vec<f32>,
        labels: &mut Labels,
    ) -> Result<Option<usize>, TableError> {
        let t = Arc::clone(&self.table);
        guard(&t.path, || {
            let group = self.group;
            let Some(batch) = self.reader.next() else {
                return Ok(None);
            };
            let batch = batch.map_err(|e| TableError::Parquet {
                path: t.path.clone(),
                message: format!("row group {group}: {e}"),
            })?;
            let n = batch.num_rows();
            let row = self.row;
            let bad = |kind: &str, c: usize, (i, what): Bad| TableError::ParquetValue {
                path: t.path.clone(),
                row_group: group,
                row: row + i as u64,
                message: format!("{kind} `{}` is {what}", t.names[c]),
            };
            let slot = |c: usize| t.roots.binary_search(&c).unwrap_or(0);
            let width = t.width();
            let base = values.len();
            values.resize(base + n * width, 0.0);
            for (j, &c) in t.feature_cols.iter().enumerate() {
                put_feature(
                    batch.column(slot(c)).as_ref(),
                    &mut values[base..],
                    j,
                    width,
                )
                .map_err(|b| bad("column", c, b))?;
            }
            put_labels(batch.column(slot(t.label_col)).as_ref(), labels)
                .map_err(|b| bad("label column", t.label_col, b))?;
            self.row += n as u64;
            Ok(Some(n))
        })
    }
}

impl crate::ImageDataset {
    /// Writes the images as a Parquet table: a `label` column, then one `UInt8`
    /// column per pixel (`p0`, `p1`, …, channel-major), zstd-compressed, in row
    /// groups of at most 8192 images.
    pub fn write_parquet(&self, path: &Path) -> Result<(), TableError> {
        use ::parquet::arrow::ArrowWriter;
        use ::parquet::basic::{Compression, ZstdLevel};
        use ::parquet::file::properties::WriterProperties;
        use arrow_array::{ArrayRef, RecordBatch, UInt8Array};

        let err = |message: String| TableError::Parquet {
            path: path.to_path_buf(),
            message,
        };
        let size = self.channels * self.height * self.width;
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(8192))
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .build();
        let file = File::create(path).map_err(|e| err(e.to_string()))?;
        let mut writer: Option<ArrowWriter<File>> = None;
        let mut file = Some(file);
        for start in (0..self.len()).step_by(8192) {
            let rows: Vec<usize> = (start..(start + 8192).min(self.len())).collect();
            let mut columns: Vec<(String, ArrayRef)> = Vec::with_capacity(size + 1);
            columns.push((
                "label".into(),
                Arc::new(UInt8Array::from_iter_values(
                    rows.iter().map(|&r| self.label(r)),
                )),
            ));
            for p in 0..size {
                columns.push((
                    format!("p{p}"),
                    Arc::new(UInt8Array::from_iter_values(
                        rows.iter().map(|&r| self.image(r)[p]),
                    )),
                ));
            }
            let batch = RecordBatch::try_from_iter(columns).map_err(|e| err(e.to_string()))?;
            if writer.is_none() {
                let f = file
                    .take()
                    .ok_or_else(|| err("file already taken".into()))?;
                writer = Some(
                    ArrowWriter::try_new(f, batch.schema(), Some(props.clone()))
                        .map_err(|e| err(e.to_string()))?,
                );
            }
            if let Some(w) = writer.as_mut() {
                w.write(&batch).map_err(|e| err(e.to_string()))?;
            }
        }
        match writer {
            Some(w) => w.close().map(|_| ()).map_err(|e| err(e.to_string())),
            None => Err(err("no images to write".into())),
        }
    }
}

impl crate::ImageDataset {
    /// Writes the images as a Parquet table of PNG bytes: an `image` (binary) column
    /// and a `label` (UInt8) column, in row groups of at most 8192 images — the layout
    /// [`crate::ImageDataset::read_parquet_images`] reads.
    pub fn write_parquet_images(&self, path: &Path) -> Result<(), TableError> {
        use ::parquet::arrow::ArrowWriter;
        use arrow_array::{ArrayRef, BinaryArray, RecordBatch, UInt8Array};
        use rayon::prelude::*;

        let err = |message: String| TableError::Parquet {
            path: path.to_path_buf(),
            message,
        };
        let file = File::create(path).map_err(|e| err(e.to_string()))?;
        let mut writer: Option<ArrowWriter<File>> = None;
        let mut file = Some(file);
        for start in (0..self.len()).step_by(8192) {
            let rows = start..(start + 8192).min(self.len());
            let pngs: Vec<Vec<u8>> = rows
                .clone()
                .into_par_iter()
                .map(|i| crate::folder::encode_png(self, i))
                .collect::<Result<_, _>>()
                .map_err(err)?;
            let batch = RecordBatch::try_from_iter([
                (
                    "image",
                    Arc::new(BinaryArray::from_iter_values(
                        pngs.iter().map(Vec::as_slice),
                    )) as ArrayRef,
                ),
                (
                    "label",
                    Arc::new(UInt8Array::from_iter_values(rows.map(|r| self.label(r)))),
                ),
            ])
            .map_err(|e| err(e.to_string()))?;
            if writer.is_none() {
                let f = file
                    .take()
                    .ok_or_else(|| err("file already taken".into()))?;
                writer = Some(
                    ArrowWriter::try_new(f, batch.schema(), None)
                        .map_err(|e| err(e.to_string()))?,
                );
            }
            if let Some(w) = writer.as_mut() {
                w.write(&batch).map_err(|e| err(e.to_string()))?;
                w.flush().map_err(|e| err(e.to_string()))?;
            }
        }
        match writer {
            Some(w) => w.close().map(|_| ()).map_err(|e| err(e.to_string())),
            None => Err(err("no images to write".into())),
        }
    }
}

/// The encoded images of a binary column (or of the `bytes` field of a struct column,
/// as Hugging Face `datasets` writes images); `Err` names what the column is instead.
fn encoded(col: &dyn Array) -> Result<Vec<Option<&[u8]>>, String> {
    Ok(match col.data_type() {
        DataType::Binary => col.as_binary::<i32>().iter().collect(),
        DataType::LargeBinary => col.as_binary::<i64>().iter().collect(),
        DataType::BinaryView => col.as_binary_view().iter().collect(),
        DataType::Struct(_) => {
            let st = col.as_struct();
            let bytes = st
                .column_by_name("bytes")
                .ok_or_else(|| format!("a struct without a `bytes` field ({})", col.data_type()))?;
            let mut v = encoded(bytes.as_ref())?;
            if let Some(nulls) = st.logical_nulls() {
                v.iter_mut()
                    .enumerate()
                    .filter(|(i, _)| nulls.is_null(*i))
                    .for_each(|(_, b)| *b = None);
            }
            v
        }
        t => return Err(format!("of type {t}, not encoded images (binary)")),
    })
}

impl crate::ImageDataset {
    /// Reads a Parquet table of encoded images (PNG, JPEG, … in a binary column, or in
    /// the `bytes` field of a struct column) and their `label` (integers or strings,
    /// mapped to classes as tables map them; with `classes`, a training set's names).
    /// Images are decoded in parallel into samples as an image folder's are.
    pub fn read_parquet_images(
        path: &Path,
        image: &Column,
        label: &Column,
        opts: &crate::folder::FolderOptions,
        classes: Option<&[String]>,
    ) -> Result<(Self, Vec<String>), TableError> {
        guard(path, || read_images(path, image, label, opts, classes))
    }
}

/// [`crate::ImageDataset::read_parquet_images`], which may panic on damaged files.
fn read_images(
    path: &Path,
    image: &Column,
    label: &Column,
    opts: &crate::folder::FolderOptions,
    classes: Option<&[String]>,
) -> Result<(crate::ImageDataset, Vec<String>), TableError> {
    use rayon::prelude::*;

    let fail = |message: String| TableError::Parquet {
        path: path.to_path_buf(),
        message,
    };
    let (file, meta, names) = open_checked(path)?;
    let (image_col, label_col) = (resolve(path, &names, image)?, resolve(path, &names, label)?);
    let mut labels = label_kind(
        path,
        &names[label_col],
        meta.schema().field(label_col).data_type(),
        false,
    )?
    .empty();
    if image_col == label_col {
        return Err(TableError::Mismatch(format!(
            "{}: the image column is the label column ({label})",
            path.display()
        )));
    }
    let mut roots = [image_col, label_col];
    roots.sort_unstable();
    let slot = |c: usize| usize::from(roots[0] != c);
    let mask = ProjectionMask::roots(meta.parquet_schema(), roots.iter().copied());
    // (row group, file row, encoded bytes) of every image.
    let mut images: Vec<(usize, u64, Vec<u8>)> = Vec::new();
    let mut row = 0u64;
    for group in 0..meta.metadata().num_row_groups() {
        let group_err = |e: &dyn std::fmt::Display| fail(format!("row group {group}: {e}"));
        let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(
            file.try_clone().map_err(|source| TableError::Io {
                path: path.to_path_buf(),
                source,
            })?,
            meta.clone(),
        )
        .with_projection(mask.clone())
        .with_row_groups(vec![group])
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(|e| group_err(&e))?;
        for batch in reader {
            let batch = batch.map_err(|e| group_err(&e))?;
            let bad = |c: usize, (i, what): Bad| TableError::ParquetValue {
                path: path.to_path_buf(),
                row_group: group,
                row: row + i as u64,
                message: format!("column `{}` is {what}", names[c]),
            };
            let bytes = encoded(batch.column(slot(image_col)).as_ref())
                .map_err(|what| bad(image_col, (0, what)))?;
            for (i, b) in bytes.into_iter().enumerate() {
                let b = b.ok_or_else(|| bad(image_col, (i, "null".into())))?;
                images.push((group, row + i as u64, b.to_vec()));
            }
            put_labels(batch.column(slot(label_col)).as_ref(), &mut labels)
                .map_err(|b| bad(label_col, b))?;
            row += batch.num_rows() as u64;
        }
    }
    if images.is_empty() {
        return Err(TableError::Empty(path.to_path_buf()));
    }
    let (ids, mut class_names) = match labels {
        Labels::Ints(v) => class_ids(path, v.iter().map(i128::to_string).collect())?,
        Labels::Strs(v) => class_ids(path, v)?,
        Labels::Values(_) => (Vec::new(), Vec::new()),
    };
    let mut ids: Vec<u32> = ids;
    if let Some(want) = classes.filter(|w| !w.is_empty() && *w != class_names.as_slice()) {
        for id in &mut ids {
            let name = class_names
                .get(*id as usize)
                .cloned()
                .unwrap_or_else(|| id.to_string());
            *id = want.iter().position(|w| *w == name).ok_or_else(|| {
                TableError::Mismatch(format!(
                    "{}: class `{name}` is not one of the training classes ({})",
                    path.display(),
                    want.join(", ")
                ))
            })? as u32;
        }
        class_names = want.to_vec();
    }
    let labels: Vec<u8> = ids
        .iter()
        .map(|&c| u8::try_from(c))
        .collect::<Result<_, _>>()
        .map_err(|_| {
            TableError::Mismatch(format!(
                "{}: image labels must be fewer than 256 classes",
                path.display()
            ))
        })?;
    let decode = |(group, row, bytes): &(usize, u64, Vec<u8>)| {
        image::load_from_memory(bytes).map_err(|e| TableError::ParquetValue {
            path: path.to_path_buf(),
            row_group: *group,
            row: *row,
            message: format!(
                "column `{}`: cannot decode the image: {e}",
                names[image_col]
            ),
        })
    };
    let shape = crate::folder::SampleShape::of(&decode(&images[0])?, opts);
    let samples: Vec<Vec<u8>> = images
        .par_iter()
        .map(|img| {
            shape
                .sample(decode(img)?)
                .map_err(|(h, w)| TableError::ParquetValue {
                    path: path.to_path_buf(),
                    row_group: img.0,
                    row: img.1,
                    message: format!(
                        "the image is {h}×{w} but the first is {}×{}; set `image_size = [{}, {}]` \
                     in [data] to resize",
                        shape.h, shape.w, shape.h, shape.w
                    ),
                })
        })
        .collect::<Result<_, _>>()?;
    Ok((
        crate::ImageDataset::from_parts(samples.concat(), labels, shape.channels, shape.h, shape.w),
        class_names,
    ))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use ::parquet::arrow::ArrowWriter;
    use ::parquet::basic::Compression;
    use ::parquet::file::properties::WriterProperties;
    use arrow_array::{
        ArrayRef, BooleanArray, DictionaryArray, Float16Array, Float32Array, Float64Array,
        Int32Array, Int64Array, Int8Array, LargeStringArray, RecordBatch, StringArray, UInt32Array,
        UInt8Array,
    };
    use proptest::prelude::*;

    use super::*;
    use crate::table::Targets;

    /// Writes `columns` as a Parquet file of row groups of `group` rows.
    fn write(
        path: &Path,
        columns: Vec<(&str, ArrayRef)>,
        group: usize,
        compression: Compression,
    ) -> PathBuf {
        let batch = RecordBatch::try_from_iter(columns).unwrap();
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(group))
            .set_compression(compression)
            .build();
        let mut w =
            ArrowWriter::try_new(File::create(path).unwrap(), batch.schema(), Some(props)).unwrap();
        // Two writes: row groups also split across batches.
        let half = batch.num_rows() / 2;
        w.write(&batch.slice(0, half)).unwrap();
        w.write(&batch.slice(half, batch.num_rows() - half))
            .unwrap();
        w.close().unwrap();
        path.to_path_buf()
    }

    fn name(n: &str) -> Column {
        Column::Name(n.into())
    }

    fn row_groups(p: &Path) -> usize {
        let f = File::open(p).unwrap();
        ArrowReaderMetadata::load(&f, ArrowReaderOptions::new())
            .unwrap()
            .metadata()
            .num_row_groups()
    }

    #[test]
    fn regression_reads_a_numeric_label_as_values_and_refuses_text() {
        let dir = tempfile::tempdir().unwrap();
        let n: i32 = 11;
        let p = write(
            &dir.path().join("r.parquet"),
            vec![
                (
                    "x",
                    Arc::new(Int32Array::from_iter_values(0..n)) as ArrayRef,
                ),
                (
                    "price",
                    Arc::new(Float64Array::from_iter_values(
                        (0..n).map(|i| 100.0 + i as f64 * 0.25),
                    )),
                ),
                (
                    "kind",
                    Arc::new(StringArray::from_iter_values(
                        (0..n).map(|i| format!("k{i}")),
                    )),
                ),
            ],
            4,
            Compression::SNAPPY,
        );
        let t = TableDataset::read_parquet(&p, &name("price"), Some(&[name("x")]), true).unwrap();
        let want: Vec<f32> = (0..n).map(|i| 100.0 + i as f32 * 0.25).collect();
        assert_eq!(t.targets(), &Targets::Values(want));
        assert_eq!(t.num_classes(), 0);
        let e = TableDataset::read_parquet(&p, &name("kind"), Some(&[name("x")]), true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`kind`") && e.contains("regression"), "{e}");
    }

    #[test]
    fn reads_mixed_numeric_types_and_integer_labels_over_row_groups() {
        let dir = tempfile::tempdir().unwrap();
        let n = 23;
        let p = write(
            &dir.path().join("t.parquet"),
            vec![
                (
                    "i8",
                    Arc::new(Int8Array::from_iter_values((0..n).map(|i| i as i8 - 10))) as ArrayRef,
                ),
                (
                    "u32",
                    Arc::new(UInt32Array::from_iter_values((0..n).map(|i| i * 1000))),
                ),
                (
                    "y",
                    Arc::new(Int64Array::from_iter_values((0..n).map(|i| (i % 3) as i64))),
                ),
                (
                    "i64",
                    Arc::new(Int64Array::from_iter_values((0..n).map(|i| -(i as i64)))),
                ),
                (
                    "f16",
                    Arc::new(Float16Array::from_iter_values(
                        (0..n).map(|i| half::f16::from_f32(i as f32 * 0.5)),
                    )),
                ),
                (
                    "f32",
                    Arc::new(Float32Array::from_iter_values(
                        (0..n).map(|i| i as f32 / 4.0),
                    )),
                ),
                (
                    "f64",
                    Arc::new(Float64Array::from_iter_values(
                        (0..n).map(|i| i as f64 * 1.5),
                    )),
                ),
                (
                    "u8",
                    Arc::new(UInt8Array::from_iter_values((0..n).map(|i| 255 - i as u8))),
                ),
            ],
            5,
            Compression::UNCOMPRESSED,
        );
        assert_eq!(row_groups(&p), 5, "5+5+5+5+3 rows, across the two writes");
        let t = TableDataset::read_parquet(&p, &name("y"), None, false).unwrap();
        assert_eq!((t.len(), t.features, t.num_classes()), (23, 7, 3));
        assert!(t.classes.is_empty(), "small integers are class numbers");
        assert_eq!(
            t.feature_names,
            ["i8", "u32", "i64", "f16", "f32", "f64", "u8"]
        );
        for i in 0..n as usize {
            let x = i as f32;
            assert_eq!(
                t.row(i),
                [
                    x - 10.0,
                    x * 1000.0,
                    -x,
                    x * 0.5,
                    x / 4.0,
                    x * 1.5,
                    255.0 - x
                ],
                "row {i}"
            );
            assert_eq!(t.label(i), i as u32 % 3);
        }
        // By position; the label may also be a feature.
        let t2 = TableDataset::read_parquet(&p, &Column::Index(2), None, false).unwrap();
        assert_eq!(t2, t);
        let t3 =
            TableDataset::read_parquet(&p, &name("i8"), Some(&[Column::Index(2)]), false).unwrap();
        assert_eq!(t3.row(4), [1.0]);
        assert_eq!(t3.classes.len(), 23, "negative integers are class names");
        assert_eq!(&t3.classes[..3], ["-1", "-10", "-2"], "sorted as text");
        assert_eq!(t3.label(0), 1, "-10");
    }

    #[test]
    fn reads_string_and_dictionary_labels_and_chosen_features_with_every_codec() {
        let dir = tempfile::tempdir().unwrap();
        let kinds = ["dog", "cat", "emu", "cat"];
        let n = 40;
        let words = || (0..n).map(|i| kinds[i % 4]);
        for (k, codec) in [
            Compression::SNAPPY,
            Compression::GZIP(Default::default()),
            Compression::ZSTD(Default::default()),
        ]
        .into_iter()
        .enumerate()
        {
            let p = write(
                &dir.path().join(format!("s{k}.parquet")),
                vec![
                    (
                        "a",
                        Arc::new(Int32Array::from_iter_values(0..n as i32)) as ArrayRef,
                    ),
                    ("kind", Arc::new(StringArray::from_iter_values(words()))),
                    ("big", Arc::new(LargeStringArray::from_iter_values(words()))),
                    (
                        "dict",
                        Arc::new(words().collect::<DictionaryArray<Int32Type>>()),
                    ),
                    (
                        "b",
                        Arc::new(Float64Array::from_iter_values(
                            (0..n).map(|i| i as f64 + 0.25),
                        )),
                    ),
                ],
                7,
                codec,
            );
            let cols = [name("b"), Column::Index(0)];
            let mut seen = Vec::new();
            for label in ["kind", "big", "dict"] {
                let t = TableDataset::read_parquet(&p, &name(label), Some(&cols), false).unwrap();
                assert_eq!(t.classes, ["cat", "dog", "emu"], "{label}");
                assert_eq!(t.feature_names, ["b", "a"]);
                assert_eq!(t.row(9), [9.25, 9.0]);
                assert_eq!((0..4).map(|i| t.label(i)).collect::<Vec<_>>(), [1, 0, 2, 0]);
                seen.push(t);
            }
            assert!(seen.windows(2).all(|w| w[0] == w[1]));
            // Default features: the numeric columns must then be all but the label.
            let e = TableDataset::read_parquet(&p, &name("kind"), None, false)
                .unwrap_err()
                .to_string();
            assert!(e.contains("feature column `big` has type LargeUtf8"), "{e}");
        }
    }

    #[test]
    fn truncated_corrupt_and_foreign_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            &dir.path().join("whole.parquet"),
            vec![
                (
                    "x",
                    Arc::new(Float32Array::from_iter_values((0..100).map(|i| i as f32)))
                        as ArrayRef,
                ),
                (
                    "y",
                    Arc::new(Int32Array::from_iter_values((0..100).map(|i| i % 2))),
                ),
            ],
            16,
            Compression::SNAPPY,
        );
        let bytes = std::fs::read(&p).unwrap();
        let cut = dir.path().join("cut.parquet");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let e = TableDataset::read_parquet(&cut, &name("y"), None, false).unwrap_err();
        assert!(matches!(e, TableError::Parquet { .. }), "{e:?}");
        let e = e.to_string();
        assert!(
            e.contains("cut.parquet") && e.contains("not a readable Parquet file"),
            "{e}"
        );
        // A column chunk overwritten, footer intact: the damage shows while decoding.
        let (start, len) = {
            let f = File::open(&p).unwrap();
            let meta = ArrowReaderMetadata::load(&f, ArrowReaderOptions::new()).unwrap();
            meta.metadata().row_group(0).column(1).byte_range()
        };
        let mut bad = bytes.clone();
        bad[start as usize..(start + len) as usize].fill(0xff);
        let broken = dir.path().join("broken.parquet");
        std::fs::write(&broken, &bad).unwrap();
        let e = TableDataset::read_parquet(&broken, &name("y"), None, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("broken.parquet") && e.contains("row group 0"),
            "{e}"
        );
        let csv = dir.path().join("table.csv");
        std::fs::write(&csv, "x,y\n1,0\n").unwrap();
        let e = TableDataset::read_parquet(&csv, &name("y"), None, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("table.csv"), "{e}");
        let e =
            TableDataset::read_parquet(&dir.path().join("nope.parquet"), &name("y"), None, false)
                .unwrap_err()
                .to_string();
        assert!(e.contains("nope.parquet"), "{e}");
    }

    #[test]
    fn missing_columns_unsupported_types_nulls_and_non_finite_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            &dir.path().join("t.parquet"),
            vec![
                (
                    "a",
                    Arc::new(Float64Array::from(vec![
                        Some(1.0),
                        Some(2.0),
                        Some(f64::NAN),
                        Some(4.0),
                    ])) as ArrayRef,
                ),
                (
                    "b",
                    Arc::new(Int32Array::from(vec![Some(1), Some(2), Some(3), None])),
                ),
                (
                    "c",
                    Arc::new(Float64Array::from(vec![1.0, 1e300, 3.0, 4.0])),
                ),
                (
                    "flag",
                    Arc::new(BooleanArray::from(vec![true, false, true, true])),
                ),
                (
                    "y",
                    Arc::new(Int32Array::from(vec![Some(0), Some(1), None, Some(1)])),
                ),
                ("z", Arc::new(Float32Array::from(vec![0.0, 1.0, 0.0, 1.0]))),
            ],
            2,
            Compression::UNCOMPRESSED,
        );
        let read = |label: &str, features: &[&str]| {
            let cols: Vec<Column> = features.iter().map(|&f| name(f)).collect();
            TableDataset::read_parquet(&p, &name(label), Some(&cols), false)
                .unwrap_err()
                .to_string()
        };
        let e = read("target", &["a"]);
        assert!(
            e.contains("t.parquet: no column `target`; the file has columns a, b, c, flag, y, z"),
            "{e}"
        );
        let e = TableDataset::read_parquet(&p, &Column::Index(6), None, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no column 6") && e.contains("a, b, c"), "{e}");
        assert!(read("y", &["a", "nope"]).contains("no column `nope`"));
        let e = read("y", &["flag"]);
        assert!(e.contains("feature column `flag` has type Boolean"), "{e}");
        let e = read("z", &["b"]);
        assert!(e.contains("label column `z` has type Float32"), "{e}");
        let e = read("flag", &["b"]);
        assert!(e.contains("label column `flag` has type Boolean"), "{e}");
        let e = read("y", &["z"]);
        assert!(
            e.contains("t.parquet, row group 1, row 2: label column `y` is null"),
            "{e}"
        );
        let e = read("y", &["a"]);
        assert!(e.contains("row group 1, row 2: column `a` is `NaN`"), "{e}");
        let e = read("y", &["c"]);
        assert!(
            e.contains("row group 0, row 1: column `c` is `1e300`, not a finite"),
            "{e}"
        );
        let e = TableDataset::read_parquet(&p, &name("y"), Some(&[name("z")]), false).unwrap_err();
        assert!(
            matches!(
                e,
                TableError::ParquetValue {
                    row_group: 1,
                    row: 2,
                    ..
                }
            ),
            "{e:?}"
        );
        let q = write(
            &dir.path().join("n.parquet"),
            vec![
                (
                    "b",
                    Arc::new(Int32Array::from(vec![Some(1), Some(2), Some(3), None])) as ArrayRef,
                ),
                ("y", Arc::new(StringArray::from(vec!["p", "q", "p", "q"]))),
                ("e", Arc::new(StringArray::from(vec!["p", " ", "p", "q"]))),
            ],
            3,
            Compression::UNCOMPRESSED,
        );
        let e = TableDataset::read_parquet(&q, &name("y"), Some(&[name("b")]), false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("n.parquet, row group 1, row 3: column `b` is null"),
            "{e}"
        );
        let e = TableDataset::read_parquet(&q, &name("e"), Some(&[Column::Index(0)]), false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("row 1: label column `e` is an empty string"),
            "{e}"
        );
        let e = TableDataset::read_parquet(&q, &name("y"), Some(&[]), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no feature columns"), "{e}");
        let empty = write(
            &dir.path().join("empty.parquet"),
            vec![
                (
                    "x",
                    Arc::new(Float32Array::from(Vec::<f32>::new())) as ArrayRef,
                ),
                ("y", Arc::new(Int32Array::from(Vec::<i32>::new()))),
            ],
            3,
            Compression::UNCOMPRESSED,
        );
        let e = TableDataset::read_parquet(&empty, &name("y"), None, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("empty.parquet: no data rows"), "{e}");
    }

    /// A random table: per feature column a type (0..8) and values, labels, a label
    /// kind (0: small ints, 1: strings, 2: dictionary strings, 3: large ints), the row
    /// group size.
    type Table = (Vec<(u8, Vec<i8>, Vec<f32>)>, Vec<u8>, u8, usize);

    fn tables() -> impl Strategy<Value = Table> {
        (1usize..50, 1usize..5).prop_flat_map(|(rows, cols)| {
            let column = (
                0u8..8,
                prop::collection::vec(any::<i8>(), rows),
                prop::collection::vec(
                    prop::num::f32::NORMAL | prop::num::f32::SUBNORMAL | prop::num::f32::ZERO,
                    rows,
                ),
            );
            (
                prop::collection::vec(column, cols),
                prop::collection::vec(0u8..6, rows),
                0u8..4,
                1usize..20,
            )
        })
    }

    /// Writes a random table and what it should read back as.
    fn write_table(path: &Path, (cols, labels, label_kind, group): &Table) -> TableDataset {
        let rows = labels.len();
        let mut columns: Vec<(String, ArrayRef)> = Vec::new();
        let mut expect = vec![Vec::new(); rows];
        for (k, (kind, ints, floats)) in cols.iter().enumerate() {
            let i = ints.iter().copied();
            let (array, values): (ArrayRef, Vec<f32>) = match kind {
                0 => (
                    Arc::new(Int8Array::from_iter_values(i)),
                    ints.iter().map(|&v| v as f32).collect(),
                ),
                1 => (
                    Arc::new(arrow_array::Int16Array::from_iter_values(
                        i.map(|v| v as i16 * 200),
                    )),
                    ints.iter().map(|&v| v as f32 * 200.0).collect(),
                ),
                2 => (
                    Arc::new(Int32Array::from_iter_values(i.map(i32::from))),
                    ints.iter().map(|&v| v as f32).collect(),
                ),
                3 => (
                    Arc::new(Int64Array::from_iter_values(
                        i.map(|v| v as i64 * 1_000_000),
                    )),
                    ints.iter().map(|&v| v as f32 * 1e6).collect(),
                ),
                4 => (
                    Arc::new(UInt8Array::from_iter_values(i.map(|v| v as u8))),
                    ints.iter().map(|&v| v as u8 as f32).collect(),
                ),
                5 => (
                    Arc::new(Float16Array::from_iter_values(
                        i.map(|v| half::f16::from_f32(v as f32 / 8.0)),
                    )),
                    ints.iter().map(|&v| v as f32 / 8.0).collect(),
                ),
                6 => (
                    Arc::new(Float32Array::from_iter_values(floats.iter().copied())),
                    floats.clone(),
                ),
                _ => (
                    Arc::new(Float64Array::from_iter_values(
                        floats.iter().map(|&v| v as f64),
                    )),
                    floats.clone(),
                ),
            };
            for (r, v) in values.into_iter().enumerate() {
                expect[r].push(v);
            }
            columns.push((format!("f{k}"), array));
        }
        let words = ["kiwi", "fig", "apple", "date", "lime", "pear"];
        let text: Vec<String> = labels
            .iter()
            .map(|&l| match label_kind {
                0 => l.to_string(),
                3 => (20_000 - 7_000 * l as i64).to_string(),
                _ => words[l as usize].to_string(),
            })
            .collect();
        let label: ArrayRef = match label_kind {
            0 => Arc::new(UInt8Array::from_iter_values(labels.iter().copied())),
            1 => Arc::new(StringArray::from_iter_values(&text)),
            2 => Arc::new(
                text.iter()
                    .map(String::as_str)
                    .collect::<DictionaryArray<arrow_array::types::Int8Type>>(),
            ),
            _ => Arc::new(Int64Array::from_iter_values(
                text.iter().map(|t| t.parse::<i64>().unwrap()),
            )),
        };
        // The label sits among the features.
        columns.insert(cols.len() / 2, ("label".into(), label));
        write(
            path,
            columns
                .iter()
                .map(|(n, a)| (n.as_str(), a.clone()))
                .collect(),
            *group,
            Compression::SNAPPY,
        );
        let (labels, classes) = class_ids(path, text).unwrap();
        TableDataset {
            values: expect.concat(),
            targets: Targets::Classes(labels),
            features: cols.len(),
            feature_names: (0..cols.len()).map(|k| format!("f{k}")).collect(),
            classes,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn random_tables_round_trip_exactly(table in tables()) {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("r.parquet");
            let expect = write_table(&p, &table);
            let t = TableDataset::read_parquet(&p, &name("label"), None, false).unwrap();
            prop_assert_eq!(t, expect);
        }

        #[test]
        fn damaged_files_are_errors_not_panics(
            table in tables(),
            cut in any::<prop::sample::Index>(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
            truncate in any::<bool>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("d.parquet");
            write_table(&p, &table);
            let mut bytes = std::fs::read(&p).unwrap();
            for (at, b) in &flips {
                let i = at.index(bytes.len());
                bytes[i] ^= b | 1;
            }
            if truncate || flips.is_empty() {
                bytes.truncate(cut.index(bytes.len()));
            }
            std::fs::write(&p, &bytes).unwrap();
            // Ok (a flip in an unread statistic) or Err; never a panic.
            if let Err(e) = TableDataset::read_parquet(&p, &name("label"), None, false) {
                prop_assert!(e.to_string().contains("d.parquet"), "{}", e);
            }
        }
    }

    /// PNG bytes of a `h`×`w` grey image whose pixels start at `seed`.
    fn png(h: u32, w: u32, seed: u8) -> Vec<u8> {
        let img = image::GrayImage::from_fn(w, h, |x, y| {
            image::Luma([seed.wrapping_add((x * 7 + y * 13) as u8)])
        });
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn encoded_image_columns_decode_into_the_samples_with_classes_and_named_failures() {
        use arrow_array::{BinaryArray, StructArray};
        use arrow_schema::{Field, Fields};

        use crate::folder::FolderOptions;

        let dir = tempfile::tempdir().unwrap();
        let n = 12;
        let pngs: Vec<Vec<u8>> = (0..n).map(|i| png(4, 5, i as u8 * 9)).collect();
        let names = ["shirt", "bag", "coat"];
        let label = || -> ArrayRef {
            Arc::new(StringArray::from_iter_values((0..n).map(|i| names[i % 3])))
        };
        let binary = || -> ArrayRef {
            Arc::new(BinaryArray::from_iter_values(
                pngs.iter().map(Vec::as_slice),
            ))
        };
        // A plain binary column, and Hugging Face's struct<bytes, path>.
        let plain = write(
            &dir.path().join("plain.parquet"),
            vec![("image", binary()), ("label", label())],
            5,
            Compression::SNAPPY,
        );
        let hf_struct = StructArray::new(
            Fields::from(vec![
                Field::new("bytes", arrow_schema::DataType::Binary, true),
                Field::new("path", arrow_schema::DataType::Utf8, true),
            ]),
            vec![
                binary(),
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| format!("{i}.png")),
                )),
            ],
            None,
        );
        let hf = write(
            &dir.path().join("hf.parquet"),
            vec![("label", label()), ("img", Arc::new(hf_struct) as ArrayRef)],
            5,
            Compression::UNCOMPRESSED,
        );
        let opts = FolderOptions::default();
        for (p, col) in [(&plain, "image"), (&hf, "img")] {
            let (ds, classes) = crate::ImageDataset::read_parquet_images(
                p,
                &name(col),
                &name("label"),
                &opts,
                None,
            )
            .unwrap();
            assert_eq!(classes, ["bag", "coat", "shirt"]);
            assert_eq!((ds.len(), ds.channels, ds.height, ds.width), (n, 1, 4, 5));
            for i in 0..n {
                let want = image::load_from_memory(&pngs[i])
                    .unwrap()
                    .into_luma8()
                    .into_raw();
                assert_eq!(ds.image(i), want.as_slice(), "image {i}");
                let class = classes.iter().position(|c| c == names[i % 3]).unwrap();
                assert_eq!(ds.label(i) as usize, class);
            }
            // A training run's classes re-map a test file's; resizing and RGB apply.
            let opts = FolderOptions {
                size: Some([8, 8]),
                channels: Some(3),
            };
            let train = [
                "coat".to_string(),
                "shirt".into(),
                "bag".into(),
                "hat".into(),
            ];
            let (ds, classes) = crate::ImageDataset::read_parquet_images(
                p,
                &name(col),
                &name("label"),
                &opts,
                Some(&train),
            )
            .unwrap();
            assert_eq!(classes, train);
            assert_eq!((ds.channels, ds.height, ds.width), (3, 8, 8));
            assert_eq!(ds.label(0) as usize, 1); // shirt
        }
        // A damaged image, a null and a wrong column type name the row.
        let mut broken = pngs.clone();
        broken[7].truncate(20);
        let bad = write(
            &dir.path().join("bad.parquet"),
            vec![
                (
                    "image",
                    Arc::new(BinaryArray::from_iter_values(
                        broken.iter().map(Vec::as_slice),
                    )) as ArrayRef,
                ),
                ("label", label()),
            ],
            5,
            Compression::SNAPPY,
        );
        let e = crate::ImageDataset::read_parquet_images(
            &bad,
            &name("image"),
            &name("label"),
            &FolderOptions::default(),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("bad.parquet") && e.contains("row 7") && e.contains("decode"),
            "{e}"
        );
        let null = write(
            &dir.path().join("null.parquet"),
            vec![
                (
                    "image",
                    Arc::new(BinaryArray::from_iter(
                        (0..n).map(|i| (i != 3).then_some(pngs[i].as_slice())),
                    )) as ArrayRef,
                ),
                ("label", label()),
            ],
            5,
            Compression::SNAPPY,
        );
        let e = crate::ImageDataset::read_parquet_images(
            &null,
            &name("image"),
            &name("label"),
            &FolderOptions::default(),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("row 3") && e.contains("null"), "{e}");
        let e = crate::ImageDataset::read_parquet_images(
            &plain,
            &name("label"),
            &name("image"),
            &FolderOptions::default(),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("label column `image`"), "{e}");
    }
}
