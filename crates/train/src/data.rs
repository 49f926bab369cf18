//! Loading a job's data and turning batches into tensors.

use dlc_data::dataset::IdxFiles;
use dlc_data::folder::FolderOptions;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use dlc_data::{
    Augment, BatchSource, Column, CsvOptions, GlobalShuffle, ImageDataset, ImageFiles, Samples,
    Sharding, Standardizer, StreamOptions, TableDataset, TableFormat, TableStream, TrainSet,
};
use dlc_job::{ColumnSpec, DataFormat, DataSpec, ModelSpec, Task, TrainSpec};
use dlc_model::{LayerPlan, Shape};

use crate::TrainError;

/// Training and test sets of a job, of whatever format `[data]` names.
pub struct JobData {
    /// Training samples: in memory, or streamed from storage.
    pub train: Box<dyn TrainSet>,
    /// Test samples.
    pub test: Box<dyn Samples>,
    /// Number of classes (from the training labels; 0 for regression).
    pub classes: usize,
    /// Class names by index, when the labels were names (tables).
    pub class_names: Vec<String>,
    /// The standardisation applied to table features (training split's statistics).
    pub standardizer: Option<Standardizer>,
}

/// What training fixed about its data, saved as `data.json` in the run directory so
/// that `dlc eval` maps classes and standardises features exactly as training did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataInfo {
    /// Classification or regression.
    pub task: Task,
    /// Number of classes (0 for regression).
    pub classes: usize,
    /// Class names by index, when the labels were names (tables, image folders).
    pub class_names: Vec<String>,
    /// Shape of one input sample, `[channels, height, width]`.
    pub input_shape: [usize; 3],
    /// The training split's feature (and target) statistics.
    pub standardizer: Option<Standardizer>,
}

impl DataInfo {
    /// The file in a run directory.
    pub fn path(run_dir: &Path) -> PathBuf {
        run_dir.join("data.json")
    }

    /// Writes `run_dir/data.json`.
    pub fn save(&self, run_dir: &Path) -> Result<(), TrainError> {
        let path = Self::path(run_dir);
        let json = serde_json::to_string_pretty(self).expect("DataInfo serialises");
        std::fs::write(&path, json).map_err(TrainError::io(path))
    }

    /// Reads `run_dir/data.json`; `None` when the run has none (runs from before it).
    pub fn load(run_dir: &Path) -> Result<Option<Self>, TrainError> {
        let path = Self::path(run_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(TrainError::io(path)(e)),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| TrainError::BadState {
                path,
                message: format!("corrupt data description: {e}"),
            })
    }
}

impl JobData {
    /// Loads the data that `[data]` names, applying `limit`/`test_limit`; `seed`
    /// decides a table's test split.
    pub fn load(spec: &DataSpec, seed: u64) -> Result<Self, TrainError> {
        Self::load_as(spec, seed, None)
    }

    /// [`JobData::load`], with the class mapping and standardisation of a training run
    /// (`saved`) instead of ones derived from this data: what `dlc eval` needs to
    /// score a model on data other than its training run's.
    pub fn load_as(
        spec: &DataSpec,
        seed: u64,
        saved: Option<&DataInfo>,
    ) -> Result<Self, TrainError> {
        let data = Self::load_samples(spec, seed, saved)?;
        if let Some(info) = saved {
            if data.train.shape() != info.input_shape {
                return Err(TrainError::Usage(format!(
                    "the model was trained on samples of shape {:?} (data.json) but this \
                     job's data has {:?}",
                    info.input_shape,
                    data.train.shape()
                )));
            }
        }
        Ok(data)
    }

    /// Rank `rank` of `workers`' training batches under `train` (batch size, seed,
    /// drop_last).
    pub fn batches(&self, train: &TrainSpec, rank: usize, workers: usize) -> Box<dyn BatchSource> {
        self.train.batches(Sharding {
            global_batch: train.batch_size,
            rank,
            world: workers,
            seed: train.seed,
            drop_last: train.drop_last,
        })
    }

    /// What training fixed about this data (saved in the run directory).
    pub fn info(&self) -> DataInfo {
        DataInfo {
            task: if self.train.is_regression() {
                Task::Regression
            } else {
                Task::Classification
            },
            classes: self.classes,
            class_names: self.class_names.clone(),
            input_shape: self.train.shape(),
            standardizer: self.standardizer.clone(),
        }
    }

    fn load_samples(
        spec: &DataSpec,
        seed: u64,
        saved: Option<&DataInfo>,
    ) -> Result<Self, TrainError> {
        match spec.path_format() {
            Some(DataFormat::Images) => return Self::load_folder(spec, seed, saved),
            Some(f @ (DataFormat::Csv | DataFormat::Parquet)) => {
                return Self::load_table(spec, f, seed, saved)
            }
            Some(DataFormat::Idx) | None => {}
        }
        let files = match (&spec.dataset, &spec.train_images) {
            (Some(_), _) => IdxFiles::fashion_mnist(spec.dir.as_deref())?,
            (None, Some(ti)) => IdxFiles {
                train_images: ti.clone(),
                train_labels: req(&spec.train_labels, "train_labels")?,
                test_images: req(&spec.test_images, "test_images")?,
                test_labels: req(&spec.test_labels, "test_labels")?,
            },
            (None, None) => return Err(TrainError::Usage("[data] names no dataset".into())),
        };
        let train = ImageDataset::load(&files.train_images, &files.train_labels, spec.limit)?;
        let test = ImageDataset::load(&files.test_images, &files.test_labels, spec.test_limit)?;
        if (test.height, test.width) != (train.height, train.width) {
            return Err(TrainError::Usage(format!(
                "test images are {}×{} but training images are {}×{}",
                test.height, test.width, train.height, train.width
            )));
        }
        let classes = train.num_classes().max(test.num_classes());
        Ok(Self {
            train: Box::new(GlobalShuffle::new(Arc::new(train), augment(spec))),
            test: Box::new(test),
            classes,
            class_names: Vec::new(),
            standardizer: None,
        })
    }

    /// A CSV table: read, split (or a test file), standardised with the training
    /// split's statistics.
    fn load_table(
        spec: &DataSpec,
        format: DataFormat,
        seed: u64,
        saved: Option<&DataInfo>,
    ) -> Result<Self, TrainError> {
        let path = req(&spec.path, "path")?;
        let column = |c: &ColumnSpec| match c {
            ColumnSpec::Index(i) => Column::Index(*i),
            ColumnSpec::Name(n) => Column::Name(n.clone()),
        };
        let opts = CsvOptions {
            header: spec.header.unwrap_or(true),
            delimiter: spec
                .delimiter
                .as_deref()
                .and_then(|d| d.bytes().next())
                .unwrap_or(b','),
            skip_rows: spec.skip_rows.unwrap_or(0),
            label: spec
                .label
                .as_ref()
                .map(column)
                .ok_or_else(|| TrainError::Usage("[data] lacks `label`".into()))?,
            features: spec
                .features
                .as_ref()
                .map(|f| f.iter().map(column).collect()),
            regression: spec.task == Some(Task::Regression),
        };
        let table_err = |e: dlc_data::TableError| TrainError::Usage(e.to_string());
        if spec.stream == Some(true) {
            return Self::load_stream(spec, &path, format, opts, seed, saved);
        }
        if let Some(image) = &spec.image_column {
            return Self::load_parquet_images(
                spec,
                &path,
                &column(image),
                &opts.label,
                seed,
                saved,
            );
        }
        let read = |p: &std::path::Path| match format {
            DataFormat::Parquet => TableDataset::read_parquet(
                p,
                &opts.label,
                opts.features.as_deref(),
                opts.regression,
            ),
            _ => TableDataset::read_csv(p, &opts),
        };
        let mut all = read(&path).map_err(table_err)?;
        if let Some(info) = saved {
            // Evaluating a run: its classes, whatever this file holds.
            all.align_classes(
                &info.class_names,
                &format!("{} (against the training run's data.json)", path.display()),
            )
            .map_err(table_err)?;
        }
        let (mut train, mut test) = match &spec.test_path {
            Some(tp) => {
                let mut test = read(tp).map_err(table_err)?;
                if all.classes != test.classes {
                    test.align_classes(&all.classes, &tp.display().to_string())
                        .map_err(table_err)?;
                }
                (all, test)
            }
            None => all.split(spec.test_fraction.unwrap_or(0.1), seed),
        };
        apply_limits(spec, &path, "rows", &mut train, &mut test)?;
        let standardizer = match saved {
            Some(info) => {
                if let Some(s) = &info.standardizer {
                    if s.mean.len() != train.features {
                        return Err(TrainError::Usage(format!(
                            "{}: {} feature columns, but the model was trained on {}",
                            path.display(),
                            train.features,
                            s.mean.len()
                        )));
                    }
                }
                info.standardizer.clone()
            }
            None => spec.standardize.unwrap_or(true).then(|| train.statistics()),
        };
        if let Some(s) = &standardizer {
            train.standardize(s);
            test.standardize(s);
        }
        let classes = train.num_classes().max(test.num_classes());
        Ok(Self {
            class_names: train.classes.clone(),
            train: Box::new(GlobalShuffle::new(Arc::new(train), Augment::default())),
            test: Box::new(test),
            classes,
            standardizer,
        })
    }

    /// A Parquet or CSV table streamed while training (`stream = true`): scanned
    /// once for classes, statistics and test rows; the test set (a hash split, or
    /// `test_path`) held in memory.
    fn load_stream(
        spec: &DataSpec,
        path: &Path,
        format: DataFormat,
        opts: CsvOptions,
        seed: u64,
        saved: Option<&DataInfo>,
    ) -> Result<Self, TrainError> {
        let table_err = |e: dlc_data::TableError| TrainError::Usage(e.to_string());
        let stream_opts = StreamOptions {
            table: opts.clone(),
            test_fraction: match spec.test_path {
                Some(_) => 0.0,
                None => spec.test_fraction.unwrap_or(0.1),
            },
            seed,
            shuffle_buffer: spec.shuffle_buffer.unwrap_or(10_000),
        };
        let table_format = match format {
            DataFormat::Csv => TableFormat::Csv,
            _ => TableFormat::Parquet,
        };
        let (mut train, mut test) =
            TableStream::open(path, table_format, &stream_opts).map_err(table_err)?;
        let names = match saved {
            Some(info) => info.class_names.clone(),
            None => train.class_names(),
        };
        if let Some(tp) = &spec.test_path {
            test = match format {
                DataFormat::Csv => TableDataset::read_csv(tp, &opts),
                _ => TableDataset::read_parquet(
                    tp,
                    &opts.label,
                    opts.features.as_deref(),
                    opts.regression,
                ),
            }
            .map_err(table_err)?;
        }
        if test.classes != names {
            test.align_classes(&names, &spec_path_name(spec, path))
                .map_err(table_err)?;
        }
        if let Some(l) = spec.test_limit {
            test.truncate(l);
        }
        if test.is_empty() {
            return Err(TrainError::Usage(format!(
                "{}: no test rows; set `test_fraction` or `test_path`",
                path.display()
            )));
        }
        let standardizer = match saved {
            Some(info) => info.standardizer.clone(),
            None => spec
                .standardize
                .unwrap_or(true)
                .then(|| train.statistics().cloned())
                .flatten(),
        };
        if let Some(s) = &standardizer {
            if s.mean.len() != test.features {
                return Err(TrainError::Usage(format!(
                    "{}: {} feature columns, but the model was trained on {}",
                    path.display(),
                    test.features,
                    s.mean.len()
                )));
            }
            test.standardize(s);
        }
        train.set_standardizer(standardizer.clone());
        let classes = train.num_classes().max(test.num_classes());
        Ok(Self {
            class_names: names,
            train: Box::new(train),
            test: Box::new(test),
            classes,
            standardizer,
        })
    }

    /// A Parquet table of encoded images (`image_column`) and labels: decoded into
    /// memory as an image folder is, a test file or a deterministic split.
    fn load_parquet_images(
        spec: &DataSpec,
        path: &Path,
        image: &Column,
        label: &Column,
        seed: u64,
        saved: Option<&DataInfo>,
    ) -> Result<Self, TrainError> {
        let opts = FolderOptions {
            size: spec.image_size,
            channels: spec.channels,
        };
        let err = |e: dlc_data::TableError| TrainError::Usage(e.to_string());
        let saved_names = saved.map(|info| info.class_names.as_slice());
        let (all, names) =
            ImageDataset::read_parquet_images(path, image, label, &opts, saved_names)
                .map_err(err)?;
        let (mut train, mut test) = match &spec.test_path {
            Some(tp) => {
                let opts = FolderOptions {
                    size: Some([all.height, all.width]),
                    channels: Some(all.channels),
                };
                let (test, _) =
                    ImageDataset::read_parquet_images(tp, image, label, &opts, Some(&names))
                        .map_err(err)?;
                (all, test)
            }
            None => all.split(spec.test_fraction.unwrap_or(0.1), seed),
        };
        apply_limits(spec, path, "images", &mut train, &mut test)?;
        let classes = if names.is_empty() {
            train.num_classes().max(test.num_classes())
        } else {
            names.len()
        };
        Ok(Self {
            classes,
            class_names: names,
            train: Box::new(GlobalShuffle::new(Arc::new(train), augment(spec))),
            test: Box::new(test),
            standardizer: None,
        })
    }

    /// An image folder (`<class>/*`): a test folder or a deterministic split, limits
    /// keeping evenly spaced images; decoded into memory, or with `stream = true`
    /// listed only and decoded batch by batch (same samples in the same order).
    /// Pixels are scaled to [-1, 1] as IDX images are.
    fn load_folder(
        spec: &DataSpec,
        seed: u64,
        saved: Option<&DataInfo>,
    ) -> Result<Self, TrainError> {
        let path = req(&spec.path, "path")?;
        if !path.is_dir() {
            return Err(TrainError::Usage(format!(
                "{} is not a folder: an image folder holds one sub-folder of images per \
                 class; for a table say `format = \"csv\"` or `\"parquet\"`",
                path.display()
            )));
        }
        let opts = FolderOptions {
            size: spec.image_size,
            channels: spec.channels,
        };
        let err = |e: dlc_data::folder::FolderError| TrainError::Usage(e.to_string());
        let saved_names = saved.map(|info| info.class_names.as_slice());
        let (all, names) = ImageFiles::list(&path, saved_names, &opts).map_err(err)?;
        let (train, test) = match &spec.test_path {
            Some(tp) => {
                let (test, _) =
                    ImageFiles::list(tp, Some(&names), &all.same_shape()).map_err(err)?;
                (all, test)
            }
            None => all.split(spec.test_fraction.unwrap_or(0.1), seed),
        };
        // A folder is listed class by class: a limit keeps evenly spaced images so
        // that every class stays in a quick run, where the first N would be one class.
        let (mut train, mut test) = (train.spread(spec.limit), test.spread(spec.test_limit));
        apply_limits(spec, &path, "images", &mut train, &mut test)?;
        let (train, test): (Arc<dyn Samples>, Box<dyn Samples>) = if spec.stream == Some(true) {
            (Arc::new(train), Box::new(test))
        } else {
            (
                Arc::new(train.read().map_err(err)?),
                Box::new(test.read().map_err(err)?),
            )
        };
        Ok(Self {
            classes: names.len(),
            class_names: names,
            train: Box::new(GlobalShuffle::new(train, augment(spec))),
            test,
            standardizer: None,
        })
    }

    /// Shape of one input sample.
    pub fn input_shape(&self) -> Shape {
        let [c, h, w] = self.train.shape();
        if self.train.is_flat() {
            Shape::Flat(c * h * w)
        } else {
            Shape::Spatial { c, h, w }
        }
    }

    /// Model outputs: one score per class, or one number for regression.
    pub fn outputs(&self) -> usize {
        if self.train.is_regression() {
            1
        } else {
            self.classes
        }
    }

    /// The job's model laid out for this data: every layer with its shapes,
    /// parameters and FLOPs (input shape and outputs inferred from the data).
    pub fn model_plan(&self, model: &ModelSpec) -> Result<Vec<LayerPlan>, TrainError> {
        Ok(dlc_model::plan(
            &model.resolved_layers(self.outputs()),
            self.input_shape(),
            self.outputs(),
        )?)
    }
}

/// The augmentation `[data]` asks for (images).
fn augment(spec: &DataSpec) -> Augment {
    Augment {
        crop_padding: spec.random_crop.unwrap_or(0),
        flip: spec.random_flip.unwrap_or(false),
    }
}

/// What to call the test data in an error: `test_path`, else `path`.
fn spec_path_name(spec: &DataSpec, path: &Path) -> String {
    spec.test_path
        .as_deref()
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Applies `limit`/`test_limit` and checks that both sets keep a sample; `unit`
/// names the samples in the error (`rows`, `images`).
fn apply_limits(
    spec: &DataSpec,
    path: &std::path::Path,
    unit: &str,
    train: &mut impl Samples,
    test: &mut impl Samples,
) -> Result<(), TrainError> {
    if let Some(l) = spec.limit {
        train.truncate(l);
    }
    if let Some(l) = spec.test_limit {
        test.truncate(l);
    }
    if train.is_empty() || test.is_empty() {
        return Err(TrainError::Usage(format!(
            "{}: {} training and {} test {unit}; both need at least one",
            path.display(),
            train.len(),
            test.len()
        )));
    }
    Ok(())
}

fn req(p: &Option<std::path::PathBuf>, key: &str) -> Result<std::path::PathBuf, TrainError> {
    p.clone()
        .ok_or_else(|| TrainError::Usage(format!("[data] lacks `{key}`")))
}
