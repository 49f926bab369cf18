//! In-memory labelled image datasets.

use std::path::{Path, PathBuf};

use crate::idx::{IdxArray, IdxError};

/// Where Debian's `dataset-fashion-mnist` package installs its files.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Why a dataset could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// One of the IDX files is unreadable or malformed.
    #[error(transparent)]
    Idx(#[from] IdxError),
    /// Image and label files do not describe the same samples.
    #[error("{images} holds {n_images} images but {labels} holds {n_labels} labels")]
    CountMismatch {
        /// Image file.
        images: PathBuf,
        /// Label file.
        labels: PathBuf,
        /// Number of images.
        n_images: usize,
        /// Number of labels.
        n_labels: usize,
    },
    /// A file has the wrong number of dimensions for its role.
    #[error("{path}: expected {expected}, found dimensions {dims:?}")]
    WrongShape {
        /// File.
        path: PathBuf,
        /// What was expected.
        expected: &'static str,
        /// Dimensions found.
        dims: Vec<usize>,
    },
    /// A named dataset is not installed.
    #[error("dataset `{name}` not found: {path} is missing. {hint}")]
    NotInstalled {
        /// Dataset name.
        name: String,
        /// Missing path.
        path: PathBuf,
        /// How to install it.
        hint: String,
    },
    /// The dataset is empty (after `limit`).
    #[error("dataset {0} holds no samples")]
    Empty(String),
}

/// The four IDX files of an MNIST-style dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxFiles {
    /// Training images.
    pub train_images: PathBuf,
    /// Training labels.
    pub train_labels: PathBuf,
    /// Test images.
    pub test_images: PathBuf,
    /// Test labels.
    pub test_labels: PathBuf,
}

impl IdxFiles {
    /// Locates Fashion-MNIST as installed by Debian's `dataset-fashion-mnist`
    /// (or in `dir` when given), with an error that says how to install it.
    pub fn fashion_mnist(dir: Option<&Path>) -> Result<Self, DataError> {
        let dir = dir.unwrap_or(Path::new(FASHION_MNIST_DIR));
        let files = Self {
            train_images: dir.join("train-images-idx3-ubyte.gz"),
            train_labels: dir.join("train-labels-idx1-ubyte.gz"),
            test_images: dir.join("t10k-images-idx3-ubyte.gz"),
            test_labels: dir.join("t10k-labels-idx1-ubyte.gz"),
        };
        for path in files.all() {
            if !path.exists() {
                return Err(DataError::NotInstalled {
                    name: "fashion-mnist".into(),
                    path: path.clone(),
                    hint: "Install it with `sudo apt-get install dataset-fashion-mnist` \
                           (Debian/Ubuntu), or give train_images/train_labels/test_images/\
                           test_labels paths in [data]."
                        .into(),
                });
            }
        }
        Ok(files)
    }

    fn all(&self) -> [&PathBuf; 4] {
        [
            &self.train_images,
            &self.train_labels,
            &self.test_images,
            &self.test_labels,
        ]
    }
}

/// Labelled single-channel images held in memory as bytes.
#[derive(Debug, Clone)]
pub struct ImageDataset {
    /// Row-major pixels, `len * height * width` bytes.
    pixels: Vec<u8>,
    /// One class index per image.
    labels: Vec<u8>,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
}

impl ImageDataset {
    /// Loads an image file (`[n, h, w]`) and a label file (`[n]`), keeping at most `limit` samples.
    pub fn load(images: &Path, labels: &Path, limit: Option<usize>) -> Result<Self, DataError> {
        let img = IdxArray::read(images)?;
        let lab = IdxArray::read(labels)?;
        if img.dims.len() != 3 {
            return Err(DataError::WrongShape {
                path: images.to_path_buf(),
                expected: "3 dimensions [count, height, width]",
                dims: img.dims,
            });
        }
        if lab.dims.len() != 1 {
            return Err(DataError::WrongShape {
                path: labels.to_path_buf(),
                expected: "1 dimension [count]",
                dims: lab.dims,
            });
        }
        if img.dims[0] != lab.dims[0] {
            return Err(DataError::CountMismatch {
                images: images.to_path_buf(),
                labels: labels.to_path_buf(),
                n_images: img.dims[0],
                n_labels: lab.dims[0],
            });
        }
        let (h, w) = (img.dims[1], img.dims[2]);
        let n = limit.map_or(img.dims[0], |l| l.min(img.dims[0]));
        if n == 0 || h == 0 || w == 0 {
            return Err(DataError::Empty(images.display().to_string()));
        }
        let mut pixels = img.data;
        pixels.truncate(n * h * w);
        let mut labels = lab.data;
        labels.truncate(n);
        Ok(Self {
            pixels,
            labels,
            height: h,
            width: w,
        })
    }

    /// Builds a dataset from raw parts (tests, synthetic data).
    ///
    /// # Panics
    /// When `pixels.len() != labels.len() * height * width`.
    pub fn from_parts(pixels: Vec<u8>, labels: Vec<u8>, height: usize, width: usize) -> Self {
        assert_eq!(pixels.len(), labels.len() * height * width);
        Self {
            pixels,
            labels,
            height,
            width,
        }
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Number of classes: one more than the largest label.
    pub fn num_classes(&self) -> usize {
        self.labels
            .iter()
            .copied()
            .max()
            .map_or(0, |m| m as usize + 1)
    }

    /// Label of sample `i`.
    pub fn label(&self, i: usize) -> u8 {
        self.labels[i]
    }

    /// Appends the normalised pixels (to `[-1, 1]`) and labels of `indices` to the buffers.
    pub fn gather(&self, indices: &[usize], pixels: &mut Vec<f32>, labels: &mut Vec<i64>) {
        let size = self.height * self.width;
        pixels.reserve(indices.len() * size);
        labels.reserve(indices.len());
        for &i in indices {
            let img = &self.pixels[i * size..(i + 1) * size];
            pixels.extend(img.iter().map(|&p| p as f32 * (2.0 / 255.0) - 1.0));
            labels.push(self.labels[i] as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_idx(dir: &Path, name: &str, arr: &IdxArray) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, arr.to_bytes()).unwrap();
        p
    }

    #[test]
    fn loads_and_limits() {
        let dir = tempfile::tempdir().unwrap();
        let imgs = IdxArray {
            dims: vec![5, 2, 3],
            data: (0..30).collect(),
        };
        let labs = IdxArray {
            dims: vec![5],
            data: vec![0, 1, 2, 1, 0],
        };
        let i = write_idx(dir.path(), "i", &imgs);
        let l = write_idx(dir.path(), "l", &labs);
        let ds = ImageDataset::load(&i, &l, Some(3)).unwrap();
        assert_eq!(ds.len(), 3);
        assert_eq!(ds.num_classes(), 3);
        let (mut px, mut lb) = (Vec::new(), Vec::new());
        ds.gather(&[2, 0], &mut px, &mut lb);
        assert_eq!(lb, vec![2, 0]);
        assert_eq!(px.len(), 12);
        assert!((px[0] - (12.0 * 2.0 / 255.0 - 1.0)).abs() < 1e-6);
    }

    #[test]
    fn mismatched_counts_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let imgs = IdxArray {
            dims: vec![4, 1, 1],
            data: vec![0; 4],
        };
        let labs = IdxArray {
            dims: vec![3],
            data: vec![0; 3],
        };
        let i = write_idx(dir.path(), "imgs", &imgs);
        let l = write_idx(dir.path(), "labs", &labs);
        let err = ImageDataset::load(&i, &l, None).unwrap_err();
        assert!(matches!(err, DataError::CountMismatch { .. }), "{err}");
        assert!(err.to_string().contains("4 images"));
        // Swapped roles: wrong dimensionality.
        let err = ImageDataset::load(&l, &i, None).unwrap_err();
        assert!(matches!(err, DataError::WrongShape { .. }), "{err}");
    }

    #[test]
    fn missing_named_dataset_says_how_to_install() {
        let err = IdxFiles::fashion_mnist(Some(Path::new("/nonexistent"))).unwrap_err();
        assert!(err
            .to_string()
            .contains("apt-get install dataset-fashion-mnist"));
    }
}
