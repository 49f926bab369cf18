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

/// Labelled images held in memory as bytes, `[channels, height, width]` each.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageDataset {
    /// Pixels, `len * channels * height * width` bytes, channel-major per image.
    pixels: Vec<u8>,
    /// One class index per image.
    labels: Vec<u8>,
    /// Channels (1: grey, 3: RGB).
    pub channels: usize,
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
            channels: 1,
            height: h,
            width: w,
        })
    }

    /// Builds a dataset from raw parts (tests, synthetic data, decoded image folders).
    ///
    /// # Panics
    /// When `pixels.len() != labels.len() * channels * height * width`.
    pub fn from_parts(
        pixels: Vec<u8>,
        labels: Vec<u8>,
        channels: usize,
        height: usize,
        width: usize,
    ) -> Self {
        assert_eq!(pixels.len(), labels.len() * channels * height * width);
        Self {
            pixels,
            labels,
            channels,
            height,
            width,
        }
    }

    /// Keeps the first `n` images.
    pub fn truncate(&mut self, n: usize) {
        self.labels.truncate(n);
        self.pixels
            .truncate(n * self.channels * self.height * self.width);
    }

    /// The images `rows`, in that order.
    pub fn select(&self, rows: &[usize]) -> Self {
        let mut pixels = Vec::with_capacity(rows.len() * self.channels * self.height * self.width);
        for &r in rows {
            pixels.extend_from_slice(self.image(r));
        }
        Self {
            pixels,
            labels: rows.iter().map(|&r| self.labels[r]).collect(),
            ..*self
        }
    }

    /// Splits off a deterministic test set: a `fraction` of the images chosen by a
    /// permutation seeded with `seed`; both parts keep their order.
    pub fn split(self, fraction: f64, seed: u64) -> (Self, Self) {
        let (train, test) = crate::sampler::split_rows(self.len(), fraction, seed);
        (self.select(&train), self.select(&test))
    }

    /// Writes the images as a CSV table: a header `label,p0,p1,…`, then one row per
    /// image with its class and raw pixel values (0–255, channel-major).
    pub fn write_csv(&self, path: &Path) -> std::io::Result<()> {
        let file = std::io::BufWriter::new(std::fs::File::create(path)?);
        let mut w = csv::Writer::from_writer(file);
        let size = self.channels * self.height * self.width;
        let mut header = vec!["label".to_string()];
        header.extend((0..size).map(|i| format!("p{i}")));
        w.write_record(&header)?;
        let mut row: Vec<String> = Vec::with_capacity(size + 1);
        for i in 0..self.len() {
            row.clear();
            row.push(self.labels[i].to_string());
            row.extend(self.image(i).iter().map(|p| p.to_string()));
            w.write_record(&row)?;
        }
        w.flush()
    }

    /// The pixels of image `i` (`[channels, height, width]`).
    pub fn image(&self, i: usize) -> &[u8] {
        let size = self.channels * self.height * self.width;
        &self.pixels[i * size..(i + 1) * size]
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
        let size = self.channels * self.height * self.width;
        pixels.reserve(indices.len() * size);
        labels.reserve(indices.len());
        for (k, &i) in indices.iter().enumerate() {
            // The images are read in random order: ask for the one after next while
            // converting this one, so that its cache misses overlap this work.
            if let Some(&next) = indices.get(k + 2) {
                prefetch(&self.pixels[next * size..(next + 1) * size]);
            }
            let img = &self.pixels[i * size..(i + 1) * size];
            pixels.extend(img.iter().map(|&p| scale(p)));
            labels.push(self.labels[i] as i64);
        }
    }
}

/// Hints the CPU to bring `bytes` into its caches (a no-op where there is no hint).
fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for line in bytes.chunks(64) {
        // SAFETY: a prefetch never faults and reads nothing; SSE is part of x86-64.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr().cast(),
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

/// A pixel as a model input: 0–255 mapped to [-1, 1].
pub(crate) fn scale(p: u8) -> f32 {
    p as f32 * (2.0 / 255.0) - 1.0
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
