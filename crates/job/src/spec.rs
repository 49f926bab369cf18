//! The sections of a job file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// `[model]`: a named preset or an explicit list of layers (exactly one of the two).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// A named architecture.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<Preset>,
    /// Keras-like layers, input shape inferred from the data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<LayerSpec>>,
}

impl ModelSpec {
    /// Neither a preset nor layers (a `[command]` job has no model of ours).
    pub fn is_empty(&self) -> bool {
        self.preset.is_none() && self.layers.is_none()
    }

    /// The layer list this spec describes (presets expanded) for `classes` outputs.
    pub fn resolved_layers(&self, classes: usize) -> Vec<LayerSpec> {
        match (&self.preset, &self.layers) {
            (_, Some(layers)) => layers.clone(),
            (Some(p), None) => p.layers(classes),
            (None, None) => Vec::new(),
        }
    }
}

/// Named architectures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// flatten → dense 256 → relu → dense 128 → relu → dense classes.
    Mlp,
    /// LeNet-style CNN: conv 32@5×5 → relu → pool 2 → conv 64@5×5 → relu → pool 2 →
    /// flatten → dense 128 → relu → dense classes.
    Lenet,
    /// For tables of features: dense 128 → relu → dense 64 → relu → dense classes.
    #[serde(rename = "tabular-mlp")]
    TabularMlp,
    /// A small CIFAR-style ResNet: conv 16@3×3 → batchnorm → relu, then three residual
    /// blocks of two 3×3 convolutions with batchnorm (16, 32 and 64 filters; the
    /// second and third halve the size with stride 2 and a 1×1 projection), each
    /// followed by relu → global average pool → dense classes.
    #[serde(rename = "resnet-small")]
    ResnetSmall,
}

impl Preset {
    /// The preset's layers ending in `classes` outputs.
    pub fn layers(self, classes: usize) -> Vec<LayerSpec> {
        use LayerSpec::*;
        match self {
            Preset::Mlp => vec![
                Flatten,
                Dense { units: 256 },
                Relu,
                Dense { units: 128 },
                Relu,
                Dense { units: classes },
            ],
            Preset::TabularMlp => vec![
                Dense { units: 128 },
                Relu,
                Dense { units: 64 },
                Relu,
                Dense { units: classes },
            ],
            Preset::Lenet => vec![
                Conv2d {
                    filters: 32,
                    kernel: 5,
                    stride: 1,
                    padding: Padding::Valid,
                },
                Relu,
                Maxpool2d {
                    size: 2,
                    stride: None,
                },
                Conv2d {
                    filters: 64,
                    kernel: 5,
                    stride: 1,
                    padding: Padding::Valid,
                },
                Relu,
                Maxpool2d {
                    size: 2,
                    stride: None,
                },
                Flatten,
                Dense { units: 128 },
                Relu,
                Dense { units: classes },
            ],
            Preset::ResnetSmall => {
                let conv = |filters, stride| Conv2d {
                    filters,
                    kernel: 3,
                    stride,
                    padding: Padding::Same,
                };
                let block = |filters, stride| Residual {
                    layers: vec![
                        conv(filters, stride),
                        Batchnorm,
                        Relu,
                        conv(filters, 1),
                        Batchnorm,
                    ],
                };
                vec![
                    conv(16, 1),
                    Batchnorm,
                    Relu,
                    block(16, 1),
                    Relu,
                    block(32, 2),
                    Relu,
                    block(64, 2),
                    Relu,
                    GlobalAvgpool,
                    Dense { units: classes },
                ]
            }
        }
    }
}

/// Convolution padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Padding {
    /// No padding: output shrinks by `kernel - 1`.
    #[default]
    Valid,
    /// Pad so that (with stride 1) the output keeps the input's size.
    Same,
}

fn one() -> usize {
    1
}
fn two() -> usize {
    2
}

/// One layer of a `layers` list; `type` selects the kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum LayerSpec {
    /// Fully connected layer (input must be flat: put `flatten` before it).
    Dense {
        /// Output features.
        units: usize,
    },
    /// 2-D convolution over `[channels, height, width]`.
    Conv2d {
        /// Output channels.
        filters: usize,
        /// Square kernel size.
        kernel: usize,
        /// Stride (default 1).
        #[serde(default = "one")]
        stride: usize,
        /// `valid` (default) or `same`.
        #[serde(default)]
        padding: Padding,
    },
    /// 2-D max pooling.
    Maxpool2d {
        /// Square window (default 2).
        #[serde(default = "two")]
        size: usize,
        /// Stride (default: the window size).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stride: Option<usize>,
    },
    /// 2-D average pooling.
    Avgpool2d {
        /// Square window (default 2).
        #[serde(default = "two")]
        size: usize,
        /// Stride (default: the window size).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stride: Option<usize>,
    },
    /// The mean of every channel over height and width: `[c, h, w]` → `c` features.
    #[serde(rename = "global_avgpool")]
    GlobalAvgpool,
    /// Flattens `[channels, height, width]` into features.
    Flatten,
    /// Rectified linear unit.
    Relu,
    /// Dropout with the given drop probability.
    Dropout {
        /// Probability of zeroing an element, in `[0, 1)`.
        rate: f64,
    },
    /// Batch normalisation over channels (after conv) or features (after dense).
    Batchnorm,
    /// Layer normalisation over a sample's features (flat input), with a learned
    /// scale and shift per feature.
    Layernorm,
    /// Looks up a learned vector of `dim` numbers for each of the sample's integer
    /// token ids (`0 ≤ id < vocab`): `[tokens]` → a sequence of `tokens` vectors. Only
    /// as the first layer, on feature columns of token ids (with `standardize = false`).
    Embedding {
        /// Number of distinct token ids.
        vocab: usize,
        /// Length of each token's vector.
        dim: usize,
    },
    /// The mean of a sequence's vectors: `tokens × dim` → `dim` features.
    #[serde(rename = "mean_pool")]
    MeanPool,
    /// A block whose output is its layers' output plus its input (ResNet's skip
    /// connection). When the layers change the shape, the input passes through a
    /// learned projection first: a 1×1 convolution (with the stride that matches the
    /// spatial size) for images, a dense layer for feature vectors.
    Residual {
        /// The block's layers, applied in order to the block's input.
        layers: Vec<LayerSpec>,
    },
}

/// `[data]`: a named dataset or explicit IDX paths.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// A named dataset; `fashion-mnist` is the one known today.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    /// Directory holding the named dataset (default: where its Debian package puts it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// Training images (IDX, raw or gzip).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_images: Option<PathBuf>,
    /// Training labels (IDX).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_labels: Option<PathBuf>,
    /// Test images (IDX).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_images: Option<PathBuf>,
    /// Test labels (IDX).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_labels: Option<PathBuf>,
    /// Use at most this many training samples (quick runs): the first ones in file
    /// order; from an image folder (read class by class) evenly spaced ones, so every
    /// class stays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Use at most this many test samples (chosen as `limit` chooses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_limit: Option<usize>,
    /// `idx`, `csv`, `parquet` or `images` [default: from `path`: `.csv`/`.tsv`/`.txt`
    /// (optionally `.gz`) → csv, `.parquet`/`.pq` → parquet, anything else → an image folder].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DataFormat>,
    /// Training data: a CSV file (raw or gzip), a Parquet file, or an image folder
    /// (`<class>/*.png|jpg`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Test data file in the same layout [default: split `test_fraction` off `path`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_path: Option<PathBuf>,
    /// Fraction of `path`'s rows held out for testing when there is no `test_path`
    /// [default: 0.1]; the split is deterministic from `[train] seed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_fraction: Option<f64>,
    /// The label column: a header name, or a 0-based index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<ColumnSpec>,
    /// Feature columns [default: every column but the label].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<ColumnSpec>>,
    /// The first row (after `skip_rows`) names the columns [default: true].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<bool>,
    /// Raw lines dropped before parsing (they may have any number of fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_rows: Option<usize>,
    /// Field separator, one character [default: `,`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delimiter: Option<String>,
    /// Standardise features with the training split's mean and deviation [default: true].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standardize: Option<bool>,
    /// Image folders: resize every image to `[height, width]` [default: keep the
    /// first image's size, and require it of all].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<[usize; 2]>,
    /// Image folders: 1 (grey) or 3 (RGB) [default: from the first image].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<usize>,
    /// What the label is: `classification` (a class; cross-entropy, accuracy) or
    /// `regression` (a number; mean squared error, RMSE and MAE) [default:
    /// classification]. Regression reads tables only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<Task>,
    /// Images: pad each side by this many pixels and crop the original size back at a
    /// random offset, per training sample and epoch [default: 0, off].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random_crop: Option<usize>,
    /// Images: mirror training samples left–right with probability ½ [default: false].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random_flip: Option<bool>,
    /// Parquet: read the training rows as training goes, each worker reading only its
    /// own row groups, instead of loading the file into memory (for data larger than
    /// memory) [default: false].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Parquet: the column of encoded images (PNG, JPEG, …; binary, or a struct with a
    /// `bytes` field as Hugging Face `datasets` writes) to train on with `label`,
    /// decoded as an image folder's files are (`image_size`, `channels`, augmentation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_column: Option<ColumnSpec>,
    /// With `stream`: rows each worker shuffles among [default: 10000].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shuffle_buffer: Option<usize>,
}

/// What a job learns to predict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// A class out of several: cross-entropy loss, accuracy.
    #[default]
    Classification,
    /// A number: mean squared error loss, RMSE and MAE.
    Regression,
}

/// Data file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    /// IDX image and label files (MNIST style).
    Idx,
    /// Comma- (or otherwise) separated values, raw or gzip.
    Csv,
    /// Apache Parquet.
    Parquet,
    /// A folder with one sub-folder of images per class.
    Images,
}

impl DataSpec {
    /// The format of `path`: as given, else from its name.
    pub fn path_format(&self) -> Option<DataFormat> {
        let path = self.path.as_ref()?;
        if self.format.is_some() {
            return self.format;
        }
        let name = path.to_string_lossy().to_ascii_lowercase();
        let name = name.strip_suffix(".gz").unwrap_or(&name);
        Some(
            if [".csv", ".tsv", ".txt"].iter().any(|e| name.ends_with(e)) {
                DataFormat::Csv
            } else if [".parquet", ".pq"].iter().any(|e| name.ends_with(e)) {
                DataFormat::Parquet
            } else {
                DataFormat::Images
            },
        )
    }
}

/// A column, by header name or 0-based index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ColumnSpec {
    /// 0-based position.
    Index(usize),
    /// Header name.
    Name(String),
}

impl DataSpec {
    /// Nothing set (a `[command]` job reads its own data).
    pub fn is_empty(&self) -> bool {
        *self == DataSpec::default()
    }

    /// Makes relative paths relative to `base` (the job file's directory).
    pub fn resolve_relative(&mut self, base: &Path) {
        for p in [
            &mut self.dir,
            &mut self.path,
            &mut self.test_path,
            &mut self.train_images,
            &mut self.train_labels,
            &mut self.test_images,
            &mut self.test_labels,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }
}

/// Optimizers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Stochastic gradient descent with momentum (`momentum`, default 0.9).
    Sgd,
    /// Adam.
    #[default]
    Adam,
    /// Adam with decoupled weight decay.
    Adamw,
}

/// How the learning rate changes over training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// `learning_rate` throughout.
    #[default]
    Constant,
    /// Cosine decay from `learning_rate` to 0 over all training steps.
    Cosine,
}

impl LrSchedule {
    /// Learning rate at `step` of `total`, after `warmup` linear warm-up steps.
    pub fn rate(self, base: f64, step: usize, total: usize, warmup: usize) -> f64 {
        if step < warmup {
            return base * (step + 1) as f64 / warmup as f64;
        }
        match self {
            LrSchedule::Constant => base,
            LrSchedule::Cosine => {
                let span = total.saturating_sub(warmup).max(1) as f64;
                let t = ((step - warmup) as f64 / span).min(1.0);
                0.5 * base * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

/// Where tensors live: `auto`, `cpu`, `cuda` or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    /// A GPU when one works, else the CPU (with a one-line notice).
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// An NVIDIA GPU: a given index, or (None) spread workers over the visible GPUs.
    Cuda(Option<usize>),
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(None)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(|n| DeviceSpec::Cuda(Some(n)))
                .ok_or_else(|| format!("unknown device `{s}`; allowed: auto, cpu, cuda, cuda:N")),
        }
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        d.to_string()
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Auto => write!(f, "auto"),
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(None) => write!(f, "cuda"),
            DeviceSpec::Cuda(Some(n)) => write!(f, "cuda:{n}"),
        }
    }
}

/// The framework a foreign command uses: decides the environment it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Framework {
    /// Guess from the command (a `.py` file's imports); otherwise export everything.
    #[default]
    Auto,
    /// PyTorch (`torch.distributed`): torchrun's variables.
    Torch,
    /// TensorFlow with tf-keras: `TF_CONFIG` (and `TF_USE_LEGACY_KERAS=1`).
    Tensorflow,
    /// JAX or Keras 3 on JAX: the coordinator address, process count and id.
    Jax,
    /// Only dlcluster's own variables.
    None,
}

impl std::str::FromStr for Framework {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "auto" => Framework::Auto,
            "torch" | "pytorch" => Framework::Torch,
            "tensorflow" | "tf" | "keras" | "tf-keras" => Framework::Tensorflow,
            "jax" => Framework::Jax,
            "none" => Framework::None,
            _ => {
                return Err(format!(
                    "unknown framework `{s}` (use auto, torch, tensorflow, jax or none)"
                ))
            }
        })
    }
}

impl std::fmt::Display for Framework {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Framework::Auto => "auto",
            Framework::Torch => "torch",
            Framework::Tensorflow => "tensorflow",
            Framework::Jax => "jax",
            Framework::None => "none",
        })
    }
}

impl TryFrom<String> for Framework {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Framework> for String {
    fn from(f: Framework) -> String {
        f.to_string()
    }
}

/// `[command]`: the user's own program (PyTorch, TensorFlow/Keras, JAX, anything) run
/// by `dlc exec` in every process, instead of `[model]` and `[data]`. Everything
/// `dlc launch -- COMMAND` takes on the command line, kept in a file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandSpec {
    /// The program and its arguments, e.g. `["python", "train.py", "--lr", "0.1"]`.
    pub argv: Vec<String>,
    /// `auto` (from the script's imports), `torch`, `tensorflow`, `jax` or `none`.
    #[serde(default)]
    pub framework: Framework,
    /// Extra environment variables for the command.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub env: std::collections::BTreeMap<String, String>,
    /// Directory the command starts in (relative to the job file's directory; default:
    /// the job file's directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<PathBuf>,
    /// Restarts of every process after a failure (`dlc launch --max-restarts`).
    #[serde(default)]
    pub max_restarts: usize,
    /// Seconds every process may take to start and join (gang start).
    #[serde(default = "sixty")]
    pub join_timeout_s: u64,
}

fn sixty() -> u64 {
    60
}

/// `[train]`: the optimisation loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSpec {
    /// Passes over the training set.
    pub epochs: usize,
    /// Samples per optimizer step, summed over all workers.
    pub batch_size: usize,
    /// `sgd`, `adam` or `adamw`.
    pub optimizer: OptimizerKind,
    /// Step size (peak, when a schedule is set).
    pub learning_rate: f64,
    /// `constant` or `cosine`.
    pub lr_schedule: LrSchedule,
    /// Steps of linear learning-rate warm-up.
    pub warmup_steps: usize,
    /// Momentum for `sgd`.
    pub momentum: f64,
    /// L2 penalty (`sgd`, `adam`) or decoupled decay (`adamw`).
    pub weight_decay: f64,
    /// Seed for initial weights, shuffling and dropout.
    pub seed: u64,
    /// Write a step line to `metrics.jsonl` every this many steps.
    pub log_every: usize,
    /// Skip the final short batch of each epoch instead of training on it.
    pub drop_last: bool,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    pub device: DeviceSpec,
    /// Write a checkpoint every `N steps` or every period (`10m`) besides each epoch
    /// end [default: epoch ends only].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_every: Option<CheckpointEvery>,
}

/// `[train] checkpoint_every`: `"500 steps"` (or a bare number of steps) or a period
/// such as `"90s"`, `"10m"`, `"1h"`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "toml::Value", into = "String")]
pub enum CheckpointEvery {
    /// Every this many optimizer steps.
    Steps(usize),
    /// Whenever at least this much time passed since the last checkpoint.
    Period(std::time::Duration),
}

impl std::str::FromStr for CheckpointEvery {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let steps = t
            .strip_suffix("steps")
            .or_else(|| t.strip_suffix("step"))
            .unwrap_or(t)
            .trim();
        if let Ok(n) = steps.parse::<usize>() {
            return match n {
                0 => Err("checkpoint_every must be at least 1 step".into()),
                n => Ok(CheckpointEvery::Steps(n)),
            };
        }
        parse_duration(t).map(CheckpointEvery::Period).map_err(|_| {
            format!("`{s}` is neither a number of steps (\"500 steps\") nor a period (\"10m\")")
        })
    }
}

impl TryFrom<toml::Value> for CheckpointEvery {
    type Error = String;
    fn try_from(v: toml::Value) -> Result<Self, String> {
        match v {
            toml::Value::Integer(n) if n > 0 => Ok(CheckpointEvery::Steps(n as usize)),
            toml::Value::String(s) => s.parse(),
            other => Err(format!(
                "`{other}` is neither a number of steps (\"500 steps\") nor a period (\"10m\")"
            )),
        }
    }
}

impl From<CheckpointEvery> for String {
    fn from(c: CheckpointEvery) -> String {
        match c {
            CheckpointEvery::Steps(n) => format!("{n} steps"),
            CheckpointEvery::Period(d) => format!("{}s", d.as_secs_f64()),
        }
    }
}

impl Default for TrainSpec {
    fn default() -> Self {
        Self {
            epochs: 1,
            batch_size: 128,
            optimizer: OptimizerKind::Adam,
            learning_rate: 1e-3,
            lr_schedule: LrSchedule::Constant,
            warmup_steps: 0,
            momentum: 0.9,
            weight_decay: 0.0,
            seed: 42,
            log_every: 50,
            drop_last: false,
            device: DeviceSpec::Auto,
            checkpoint_every: None,
        }
    }
}

/// How workers combine gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Ring all-reduce of gradients; every worker applies the same optimizer step.
    #[default]
    Ring,
    /// Parameter servers own shards of the parameters and run the optimizer.
    Ps,
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Strategy::Ring => "ring",
            Strategy::Ps => "ps",
        })
    }
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ring" => Ok(Strategy::Ring),
            "ps" => Ok(Strategy::Ps),
            _ => Err(format!("unknown strategy `{s}` (use ring or ps)")),
        }
    }
}

/// What carries the links between ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Shared memory between ranks on the same host, TCP between hosts.
    #[default]
    Auto,
    /// TCP for every link (to compare, or where /dev/shm is unusable).
    Tcp,
}

impl Transport {
    fn is_auto(&self) -> bool {
        *self == Transport::Auto
    }
}

/// How gradients travel between ring workers (`[distributed] compression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// f32: workers end with the exact sum (the same weights as one worker).
    #[default]
    None,
    /// bf16 on the wire (half the bytes; sums formed in f32, rounded between hops).
    Bf16,
    /// fp16 on the wire (3 more bits than bf16; gradients above 65504 overflow).
    Fp16,
}

impl Compression {
    fn is_none(&self) -> bool {
        *self == Compression::None
    }
}

/// Parameter-server consistency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PsMode {
    /// Every step waits for every worker's gradient (same result as one worker).
    #[default]
    Sync,
    /// Servers apply each worker's gradient as it arrives; workers run ahead by at
    /// most `max_staleness` steps.
    Async,
}

/// `[distributed]`: the network graph of a multi-worker job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistributedSpec {
    /// Number of worker processes.
    pub workers: usize,
    /// `ring` or `ps`.
    pub strategy: Strategy,
    /// Parameter-server processes (`ps` only).
    pub ps_servers: usize,
    /// `sync` or `async` (`ps` only).
    pub ps_mode: PsMode,
    /// Most steps a worker may run ahead of the slowest (`ps` async only).
    pub max_staleness: usize,
    /// Seconds any rank waits on another before failing: the default of
    /// `join_timeout_s` and `op_timeout_s`.
    pub timeout_s: u64,
    /// Seconds every rank may take to start and join (gang start) [default: timeout_s].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join_timeout_s: Option<u64>,
    /// Seconds a rank waits in one collective, or for a peer's link, without progress
    /// [default: timeout_s].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub op_timeout_s: Option<u64>,
    /// Restarts of every process after a failure, each resuming from the newest
    /// checkpoint (`--max-restarts`; 0: a failure ends the job).
    pub max_restarts: usize,
    /// Elastic restarts: a restart continues with fewer workers as long as at least
    /// this many remain (`--min-workers`): locally without the rank that failed,
    /// under Slurm without the nodes that no longer answer [default: restart all].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_workers: Option<usize>,
    /// What carries the links between ranks: `auto` (shared memory within a host,
    /// TCP between hosts) or `tcp`.
    #[serde(skip_serializing_if = "Transport::is_auto")]
    pub transport: Transport,
    /// Gradients on the wire (ring only): `none` (f32, exact), `bf16` or `fp16`
    /// (half the bytes, rounded).
    #[serde(skip_serializing_if = "Compression::is_none")]
    pub compression: Compression,
    /// Size of a gradient bucket in MiB of f32 (ring only): a model whose gradients
    /// (all but the first parameter's) fill a bucket has them summed bucket by
    /// bucket while backward still runs.
    #[serde(skip_serializing_if = "is_default_bucket")]
    pub bucket_mib: f64,
    /// TCP streams per pair of ranks on TCP links (1 to 16): more than one deals
    /// each message over them, for networks where one stream is slower than the link.
    #[serde(skip_serializing_if = "is_one")]
    pub tcp_streams: usize,
}

fn is_one(v: &usize) -> bool {
    *v == 1
}

/// `[distributed] bucket_mib` by default (PyTorch DDP's first bucket is 1 MiB, the
/// others 25; one size keeps the order simple).
pub const DEFAULT_BUCKET_MIB: f64 = 4.0;

fn is_default_bucket(v: &f64) -> bool {
    *v == DEFAULT_BUCKET_MIB
}

impl DistributedSpec {
    /// Number of processes the job needs: workers plus servers.
    pub fn world(&self) -> usize {
        match self.strategy {
            Strategy::Ring => self.workers,
            Strategy::Ps => self.workers + self.ps_servers,
        }
    }

    /// How long ranks may take to start and join.
    pub fn join_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.join_timeout_s.unwrap_or(self.timeout_s))
    }

    /// `bucket_mib` in bytes.
    pub fn bucket_bytes(&self) -> usize {
        (self.bucket_mib * 1024.0 * 1024.0) as usize
    }

    /// How long a rank waits in one collective without progress.
    pub fn op_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.op_timeout_s.unwrap_or(self.timeout_s))
    }
}

impl Default for DistributedSpec {
    fn default() -> Self {
        Self {
            workers: 1,
            strategy: Strategy::Ring,
            ps_servers: 1,
            ps_mode: PsMode::Sync,
            max_staleness: 4,
            timeout_s: 30,
            join_timeout_s: None,
            op_timeout_s: None,
            max_restarts: 0,
            min_workers: None,
            transport: Transport::Auto,
            compression: Compression::None,
            bucket_mib: DEFAULT_BUCKET_MIB,
            tcp_streams: 1,
        }
    }
}

/// Which resource manager starts the processes of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Manager {
    /// Child processes on this machine (the embedded default).
    #[default]
    Local,
    /// A Slurm batch job (`sbatch` + `srun`).
    Slurm,
    /// Kubernetes Indexed Jobs.
    Kubernetes,
    /// Actors in a placement group on a Ray cluster (driver in the foreground).
    Ray,
    /// The tasks of one barrier stage on a Spark cluster (driver in the foreground).
    Spark,
    /// A YARN native-services spec (`--dry-run`; launched with `yarn app -launch`).
    Yarn,
}

impl std::fmt::Display for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Manager::Local => "local",
            Manager::Slurm => "slurm",
            Manager::Kubernetes => "kubernetes",
            Manager::Ray => "ray",
            Manager::Spark => "spark",
            Manager::Yarn => "yarn",
        })
    }
}

impl std::str::FromStr for Manager {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "local" => Ok(Manager::Local),
            "slurm" => Ok(Manager::Slurm),
            "kubernetes" | "k8s" => Ok(Manager::Kubernetes),
            "ray" => Ok(Manager::Ray),
            "spark" => Ok(Manager::Spark),
            "yarn" => Ok(Manager::Yarn),
            _ => Err(format!(
                "unknown resource manager `{s}` (use local, slurm, kubernetes, ray, spark or yarn)"
            )),
        }
    }
}

/// `[resources]`: where and with what the processes of a job run (`dlc launch`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResourcesSpec {
    /// `local`, `slurm`, `kubernetes`, `ray`, `spark` or `yarn`.
    pub manager: Manager,
    /// Machines.
    pub nodes: usize,
    /// Workers per machine; when set, `[distributed] workers` = nodes × this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers_per_node: Option<usize>,
    /// GPUs per worker (0: CPU only).
    pub gpus_per_worker: usize,
    /// CPU cores per process (also its tensor threads).
    pub cpus_per_worker: usize,
    /// Wall-clock limit, e.g. `90m`, `2h`, `1d`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_limit: Option<String>,
    /// Slurm partition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Container image with `dlc` and the data (Kubernetes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Port of the coordinator rank 0 hosts [default: derived from the scheduler's job id].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Kubernetes: a PersistentVolumeClaim mounted in every pod that keeps the run
    /// directory after the pods are gone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_claim: Option<String>,
    /// Kubernetes: a directory on the nodes (hostPath) that keeps the run directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_host_path: Option<PathBuf>,
    /// Ray: the cluster's address (`HOST:6379`) [default: RAY_ADDRESS, else the Ray
    /// head running on this machine]; Spark: the master URL [default: MASTER, else
    /// `local[N]`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

impl Default for ResourcesSpec {
    fn default() -> Self {
        Self {
            manager: Manager::Local,
            nodes: 1,
            workers_per_node: None,
            gpus_per_worker: 0,
            cpus_per_worker: 1,
            time_limit: None,
            partition: None,
            namespace: "default".into(),
            image: None,
            port: None,
            output_claim: None,
            output_host_path: None,
            address: None,
        }
    }
}

/// Parses durations such as `90s`, `45m`, `2h`, `1.5h`, `1d` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let (num, mult) = match t.chars().last() {
        Some('s') => (&t[..t.len() - 1], 1.0),
        Some('m') => (&t[..t.len() - 1], 60.0),
        Some('h') => (&t[..t.len() - 1], 3600.0),
        Some('d') => (&t[..t.len() - 1], 86400.0),
        _ => (t, 1.0),
    };
    num.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v > 0.0 && v * mult < 1e10)
        .map(|v| std::time::Duration::from_secs_f64(v * mult))
        .ok_or_else(|| format!("`{s}` is not a duration (e.g. 90s, 45m, 2h, 1d)"))
}
