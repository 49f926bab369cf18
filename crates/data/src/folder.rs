//! Image folders: `root/<class>/*.png|jpg|…`, one sub-folder per class (class names
//! in sorted order are the class indices), decoded with the `image` crate, and the
//! reverse, an [`ImageDataset`] written out as such a folder.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use rayon::prelude::*;

use crate::{Batch, ImageDataset, LoadError, Samples};

/// How to turn image files into samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FolderOptions {
    /// Resize every image to `[height, width]` (None: all must have the first one's size).
    pub size: Option<[usize; 2]>,
    /// 1 (grey) or 3 (RGB); None: 1 when the first image is grey, else 3.
    pub channels: Option<usize>,
}

/// Why an image folder could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    /// A directory could not be listed.
    #[error("{path}: {source}")]
    Io {
        /// Directory or file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// No class sub-folders, or no images in them.
    #[error("{path}: {message}")]
    Empty {
        /// Folder.
        path: PathBuf,
        /// What is missing.
        message: String,
    },
    /// An image file could not be decoded.
    #[error("{path}: cannot decode the image: {message}")]
    Decode {
        /// File.
        path: PathBuf,
        /// The decoder's message.
        message: String,
    },
    /// An image's size differs from the others (and no `image_size` was given).
    #[error("{path} is {got_h}×{got_w} but the first image is {h}×{w}; set `image_size = [{h}, {w}]` in [data] to resize")]
    Size {
        /// File.
        path: PathBuf,
        /// Its height.
        got_h: usize,
        /// Its width.
        got_w: usize,
        /// Expected height.
        h: usize,
        /// Expected width.
        w: usize,
    },
    /// Too many classes for one-byte labels, or a test folder with an unknown class.
    #[error("{0}")]
    Classes(String),
}

const EXTENSIONS: [&str; 7] = ["png", "jpg", "jpeg", "bmp", "gif", "webp", "tif"];

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FolderError + '_ {
    move |source| FolderError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, FolderError> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .map(|e| e.map(|e| e.path()).map_err(io(dir)))
        .collect::<Result<_, _>>()?;
    v.sort();
    Ok(v)
}

/// The class names of a folder: its sub-folders, sorted.
pub fn class_names(root: &Path) -> Result<Vec<String>, FolderError> {
    let names: Vec<String> = sorted_entries(root)?
        .into_iter()
        .filter(|p| p.is_dir())
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|n| !n.starts_with('.'))
        .collect();
    if names.is_empty() {
        return Err(FolderError::Empty {
            path: root.to_path_buf(),
            message: "no class sub-folders; images go in ROOT/<class>/*.png (or .jpg)".into(),
        });
    }
    if names.len() > 256 {
        return Err(FolderError::Classes(format!(
            "{}: {} class folders; at most 256 are supported",
            root.display(),
            names.len()
        )));
    }
    Ok(names)
}

/// The sample every decoded image becomes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SampleShape {
    pub(crate) channels: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    /// Resize images of another size (else they are an error).
    pub(crate) resize: bool,
}

impl SampleShape {
    /// The shape `opts` asks for, the first image `probe` filling in what it leaves open.
    pub(crate) fn of(probe: &image::DynamicImage, opts: &FolderOptions) -> Self {
        let [h, w] = opts
            .size
            .unwrap_or([probe.height() as usize, probe.width() as usize]);
        Self {
            channels: opts
                .channels
                .unwrap_or(if probe.color().has_color() { 3 } else { 1 }),
            h,
            w,
            resize: opts.size.is_some(),
        }
    }

    /// `img` as channel-major bytes of this shape; `Err((height, width))` when its size
    /// differs and resizing is off.
    pub(crate) fn sample(&self, mut img: image::DynamicImage) -> Result<Vec<u8>, (usize, usize)> {
        let (h, w) = (self.h, self.w);
        if (img.height() as usize, img.width() as usize) != (h, w) {
            if !self.resize {
                return Err((img.height() as usize, img.width() as usize));
            }
            img = img.resize_exact(w as u32, h as u32, FilterType::Triangle);
        }
        Ok(if self.channels == 1 {
            img.into_luma8().into_raw()
        } else {
            // Interleaved RGB → channel-major.
            let rgb = img.into_rgb8().into_raw();
            let mut planar = vec![0u8; 3 * h * w];
            for (i, px) in rgb.chunks_exact(3).enumerate() {
                for c in 0..3 {
                    planar[c * h * w + i] = px[c];
                }
            }
            planar
        })
    }
}

/// Reads `root/<class>/*` with the classes `classes` (a training folder's, for a
/// test folder; None: this folder's own). Samples are ordered by class, then file name.
pub fn read_folder(
    root: &Path,
    classes: Option<&[String]>,
    opts: &FolderOptions,
) -> Result<(ImageDataset, Vec<String>), FolderError> {
    let (files, classes) = ImageFiles::list(root, classes, opts)?;
    Ok((files.read()?, classes))
}

/// An image folder's files and their classes, listed but not decoded: [`Samples`]
/// whose images are decoded when a batch asks for them, so that a folder larger than
/// memory trains in the same exact global permutation as one held in memory.
#[derive(Debug, Clone)]
pub struct ImageFiles {
    files: Vec<PathBuf>,
    labels: Vec<u8>,
    shape: SampleShape,
    classes: usize,
}

impl ImageFiles {
    /// Lists `root/<class>/*` with the classes `classes` (a training folder's, for a
    /// test folder; None: this folder's own), ordered by class, then file name. The
    /// first image is decoded to fix the sample shape that `opts` leaves open.
    pub fn list(
        root: &Path,
        classes: Option<&[String]>,
        opts: &FolderOptions,
    ) -> Result<(Self, Vec<String>), FolderError> {
        let own = class_names(root)?;
        let classes: Vec<String> = match classes {
            None => own.clone(),
            Some(c) => {
                if let Some(extra) = own.iter().find(|n| !c.contains(n)) {
                    return Err(FolderError::Classes(format!(
                        "{}: class folder `{extra}` is not one of the training classes ({})",
                        root.display(),
                        c.join(", ")
                    )));
                }
                c.to_vec()
            }
        };
        let mut files = Vec::new();
        let mut labels = Vec::new();
        for name in &own {
            let label = classes.iter().position(|c| c == name).unwrap_or(0) as u8;
            for p in sorted_entries(&root.join(name))? {
                let ext = p
                    .extension()
                    .map(|e| e.to_string_lossy().to_ascii_lowercase())
                    .unwrap_or_default();
                if p.is_file() && EXTENSIONS.contains(&ext.as_str()) {
                    files.push(p);
                    labels.push(label);
                }
            }
        }
        let Some(first) = files.first() else {
            return Err(FolderError::Empty {
                path: root.to_path_buf(),
                message: format!(
                    "the class folders hold no images ({})",
                    EXTENSIONS.join(", ")
                ),
            });
        };
        let shape = SampleShape::of(&decode(first)?, opts);
        let listed = Self {
            files,
            labels,
            shape,
            classes: classes.len(),
        };
        Ok((listed, classes))
    }

    /// The options that give another folder (a test folder) this folder's sample shape.
    pub fn same_shape(&self) -> FolderOptions {
        FolderOptions {
            size: Some([self.shape.h, self.shape.w]),
            channels: Some(self.shape.channels),
        }
    }

    /// The files `rows`, in that order.
    pub fn select(&self, rows: &[usize]) -> Self {
        Self {
            files: rows.iter().map(|&r| self.files[r].clone()).collect(),
            labels: rows.iter().map(|&r| self.labels[r]).collect(),
            ..*self
        }
    }

    /// Splits off a deterministic test set as [`ImageDataset::split`] does (the same
    /// rows for the same listing).
    pub fn split(self, fraction: f64, seed: u64) -> (Self, Self) {
        let (train, test) = crate::sampler::split_rows(self.len(), fraction, seed);
        (self.select(&train), self.select(&test))
    }

    /// Keeps `limit` evenly spaced files (all when None or more than there are): a
    /// folder is listed class by class, so the first N would be one class.
    pub fn spread(self, limit: Option<usize>) -> Self {
        match limit {
            Some(n) if n < self.len() => {
                self.select(&(0..n).map(|i| i * self.len() / n).collect::<Vec<_>>())
            }
            _ => self,
        }
    }

    /// Decodes every image, in parallel, into memory.
    pub fn read(&self) -> Result<ImageDataset, FolderError> {
        let SampleShape { channels, h, w, .. } = self.shape;
        let images: Vec<Vec<u8>> = self
            .files
            .par_iter()
            .map(|p| self.decode(p))
            .collect::<Result<_, _>>()?;
        let mut pixels = Vec::with_capacity(self.files.len() * channels * h * w);
        for img in &images {
            pixels.extend_from_slice(img);
        }
        Ok(ImageDataset::from_parts(
            pixels,
            self.labels.clone(),
            channels,
            h,
            w,
        ))
    }

    /// The sample that file `p` becomes (decoded, resized, converted).
    fn decode(&self, p: &Path) -> Result<Vec<u8>, FolderError> {
        let SampleShape { h, w, .. } = self.shape;
        self.shape
            .sample(decode(p)?)
            .map_err(|(got_h, got_w)| FolderError::Size {
                path: p.to_path_buf(),
                got_h,
                got_w,
                h,
                w,
            })
    }
}

impl Samples for ImageFiles {
    fn len(&self) -> usize {
        self.files.len()
    }
    fn shape(&self) -> [usize; 3] {
        [self.shape.channels, self.shape.h, self.shape.w]
    }
    fn is_flat(&self) -> bool {
        false
    }
    fn num_classes(&self) -> usize {
        self.classes
    }
    fn storage(&self) -> &'static str {
        "decoded from its files batch by batch"
    }
    fn gather(&self, indices: &[usize], batch: &mut Batch) -> Result<(), LoadError> {
        let images: Vec<Vec<u8>> = indices
            .par_iter()
            .map(|&i| self.decode(&self.files[i]))
            .collect::<Result<_, _>>()
            .map_err(|e| LoadError(e.to_string()))?;
        batch.inputs.reserve(images.iter().map(Vec::len).sum());
        for (img, &i) in images.iter().zip(indices) {
            batch
                .inputs
                .extend(img.iter().map(|&p| crate::dataset::scale(p)));
            batch.labels.push(self.labels[i] as i64);
        }
        Ok(())
    }
    fn truncate(&mut self, n: usize) {
        self.files.truncate(n);
        self.labels.truncate(n);
    }
}

/// Opens and decodes an image file, whatever its format.
fn decode(p: &Path) -> Result<image::DynamicImage, FolderError> {
    image::ImageReader::open(p)
        .map_err(io(p))?
        .with_guessed_format()
        .map_err(io(p))?
        .decode()
        .map_err(|e| FolderError::Decode {
            path: p.to_path_buf(),
            message: e.to_string(),
        })
}

/// Writes `ds` as `dir/<class>/<index>.png`, class folders named by zero-padded class
/// index (so that their sorted order is the class order).
pub fn write_folder(ds: &ImageDataset, dir: &Path) -> Result<usize, FolderError> {
    let classes = ds.num_classes().max(1);
    let digits = (classes - 1).to_string().len();
    for c in 0..classes {
        let d = dir.join(format!("{c:0digits$}"));
        std::fs::create_dir_all(&d).map_err(io(&d))?;
    }
    let index_digits = ds.len().max(1).to_string().len();
    (0..ds.len()).into_par_iter().try_for_each(|i| {
        let path = dir
            .join(format!("{:0digits$}", ds.label(i)))
            .join(format!("{i:0index_digits$}.png"));
        let png = encode_png(ds, i).map_err(|message| FolderError::Decode {
            path: path.clone(),
            message,
        })?;
        std::fs::write(&path, png).map_err(io(&path))
    })?;
    Ok(ds.len())
}

/// Image `i` of `ds` as PNG bytes (lossless: decoding gives the sample back).
pub(crate) fn encode_png(ds: &ImageDataset, i: usize) -> Result<Vec<u8>, String> {
    let (c, h, w) = (ds.channels, ds.height, ds.width);
    let px = ds.image(i);
    let mut out = std::io::Cursor::new(Vec::new());
    let written = if c == 1 {
        image::GrayImage::from_raw(w as u32, h as u32, px.to_vec())
            .map(|img| img.write_to(&mut out, image::ImageFormat::Png))
    } else {
        let mut rgb = vec![0u8; h * w * 3];
        for j in 0..h * w {
            for k in 0..3 {
                rgb[j * 3 + k] = px[k * h * w + j];
            }
        }
        image::RgbImage::from_raw(w as u32, h as u32, rgb)
            .map(|img| img.write_to(&mut out, image::ImageFormat::Png))
    };
    match written {
        Some(Ok(())) => Ok(out.into_inner()),
        Some(Err(e)) => Err(e.to_string()),
        None => Err(format!("image {i} has {} bytes, not {c}×{h}×{w}", px.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synthetic(n: usize, channels: usize) -> ImageDataset {
        let (h, w) = (5, 4);
        let pixels = (0..n * channels * h * w)
            .map(|i| (i * 37 % 251) as u8)
            .collect();
        let labels = (0..n).map(|i| (i % 3) as u8).collect();
        ImageDataset::from_parts(pixels, labels, channels, h, w)
    }

    /// (pixels, label) of every sample, sorted: the multiset of samples.
    fn multiset(ds: &ImageDataset) -> Vec<(Vec<u8>, u8)> {
        let mut v: Vec<_> = (0..ds.len())
            .map(|i| (ds.image(i).to_vec(), ds.label(i)))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_written_folder_reads_back_as_the_same_samples() {
        for channels in [1, 3] {
            let ds = synthetic(12, channels);
            let dir = tempfile::tempdir().unwrap();
            assert_eq!(write_folder(&ds, dir.path()).unwrap(), 12);
            let (back, classes) = read_folder(dir.path(), None, &FolderOptions::default()).unwrap();
            assert_eq!(classes, ["0", "1", "2"]);
            assert_eq!(back.channels, channels);
            assert_eq!(multiset(&back), multiset(&ds));
        }
    }

    #[test]
    fn resizing_grey_conversion_and_test_classes() {
        let ds = synthetic(6, 3);
        let dir = tempfile::tempdir().unwrap();
        write_folder(&ds, dir.path()).unwrap();
        let opts = FolderOptions {
            size: Some([8, 8]),
            channels: Some(1),
        };
        let (back, _) = read_folder(dir.path(), None, &opts).unwrap();
        assert_eq!((back.channels, back.height, back.width), (1, 8, 8));
        // A test folder is labelled with the training classes.
        let classes: Vec<String> = ["0", "1", "2", "3"].map(String::from).to_vec();
        let (t, c) = read_folder(dir.path(), Some(&classes), &opts).unwrap();
        assert_eq!((c.len(), t.len()), (4, 6));
        let e = read_folder(dir.path(), Some(&classes[..2]), &opts)
            .unwrap_err()
            .to_string();
        assert!(e.contains("class folder `2`"), "{e}");
    }

    #[test]
    fn broken_folders_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_folder(dir.path(), None, &FolderOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("no class sub-folders"), "{e}");
        std::fs::create_dir(dir.path().join("cat")).unwrap();
        let e = read_folder(dir.path(), None, &FolderOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("hold no images"), "{e}");
        std::fs::write(
            dir.path().join("cat/broken.png"),
            b"\x89PNG\r\n\x1a\nnot really",
        )
        .unwrap();
        let e = read_folder(dir.path(), None, &FolderOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("broken.png") && e.contains("cannot decode"),
            "{e}"
        );
        // Mixed sizes without image_size.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        image::GrayImage::new(4, 4)
            .save(dir.path().join("a/1.png"))
            .unwrap();
        image::GrayImage::new(5, 4)
            .save(dir.path().join("a/2.png"))
            .unwrap();
        let e = read_folder(dir.path(), None, &FolderOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("2.png is 4×5") && e.contains("image_size"),
            "{e}"
        );
    }

    #[test]
    fn listed_files_gather_what_the_decoded_set_gathers() {
        let ds = synthetic(12, 3);
        let dir = tempfile::tempdir().unwrap();
        write_folder(&ds, dir.path()).unwrap();
        let (files, _) = ImageFiles::list(dir.path(), None, &FolderOptions::default()).unwrap();
        let (files, _) = files.split(0.25, 7);
        let decoded = files.read().unwrap();
        assert_eq!(Samples::shape(&files), Samples::shape(&decoded));
        let picks = [5, 0, 8, 3];
        let (mut a, mut b) = (Batch::default(), Batch::default());
        files.gather(&picks, &mut a).unwrap();
        Samples::gather(&decoded, &picks, &mut b).unwrap();
        assert_eq!(a, b);
        // A file broken after the listing fails the batch that reaches it, by name.
        std::fs::write(&files.files[3], b"not an image").unwrap();
        let e = files
            .gather(&[1, 3], &mut Batch::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains(&files.files[3].display().to_string()), "{e}");
    }
}
