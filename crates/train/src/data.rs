//! Loading a job's data and turning batches into tensors.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use dlc_data::dataset::IdxFiles;
use dlc_data::ImageDataset;
use dlc_job::{DataSpec, ModelSpec};
use dlc_model::{LayerPlan, Shape};

use crate::TrainError;

/// Training and test sets of a job.
pub struct JobData {
    /// Training samples.
    pub train: ImageDataset,
    /// Test samples.
    pub test: ImageDataset,
    /// Number of classes (from the training labels).
    pub classes: usize,
}

impl JobData {
    /// Loads the files that `[data]` names, applying `limit`/`test_limit`.
    pub fn load(spec: &DataSpec) -> Result<Self, TrainError> {
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
            train,
            test,
            classes,
        })
    }

    /// Shape of one input sample.
    pub fn input_shape(&self) -> Shape {
        Shape::Spatial {
            c: 1,
            h: self.train.height,
            w: self.train.width,
        }
    }

    /// The job's model laid out for this data: every layer with its shapes,
    /// parameters and FLOPs (input shape and class count inferred from the data).
    pub fn model_plan(&self, model: &ModelSpec) -> Result<Vec<LayerPlan>, TrainError> {
        Ok(dlc_model::plan(
            &model.resolved_layers(self.classes),
            self.input_shape(),
            self.classes,
        )?)
    }
}

fn req(p: &Option<std::path::PathBuf>, key: &str) -> Result<std::path::PathBuf, TrainError> {
    p.clone()
        .ok_or_else(|| TrainError::Usage(format!("[data] lacks `{key}`")))
}

/// Reusable buffers that turn sample indices into `[n, 1, h, w]` images and `[n]` labels.
#[derive(Default)]
pub struct Batcher {
    pixels: Vec<f32>,
    labels: Vec<i64>,
}

impl Batcher {
    /// The tensors for `indices` of `ds` on `device`.
    pub fn batch<B: Backend>(
        &mut self,
        ds: &ImageDataset,
        indices: &[usize],
        device: &B::Device,
    ) -> (Tensor<B, 4>, Tensor<B, 1, Int>) {
        self.pixels.clear();
        self.labels.clear();
        ds.gather(indices, &mut self.pixels, &mut self.labels);
        let n = indices.len();
        let images = Tensor::from_data(
            TensorData::new(self.pixels.clone(), [n, 1, ds.height, ds.width]),
            device,
        );
        let labels = Tensor::from_data(TensorData::new(self.labels.clone(), [n]), device);
        (images, labels)
    }
}
