//! Batches for training: which samples a rank trains on at each step
//! ([`BatchSource`]), assembled ahead of time on a background thread ([`Prefetch`]).
//!
//! A source yields one epoch of this rank's batches in step order, each with the size
//! of the step's global batch (every rank's part together), so that the training loop
//! can weight its gradient without asking its peers. A job's training data is a
//! [`TrainSet`], which makes each rank's source: [`GlobalShuffle`] is the exact global
//! permutation of [`crate::sampler`] over samples that can be read in any order (held
//! in memory, or image files decoded as batches need them).

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::augment::Augment;
use crate::{Samples, ShardSampler};

/// One rank's batch of one step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    /// Model inputs, `len × channels × height × width` values.
    pub inputs: Vec<f32>,
    /// Class labels, one per sample (classification).
    pub labels: Vec<i64>,
    /// Target values, one per sample (regression).
    pub targets: Vec<f32>,
    /// Samples in the global batch of this step (all ranks together).
    pub global_len: usize,
}

impl Batch {
    /// Samples in this rank's batch.
    pub fn len(&self) -> usize {
        self.labels.len() + self.targets.len()
    }

    /// True when this rank has no sample in this step (a short final batch).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a batch could not be made (a streamed file that turned out unreadable, a
/// loader thread that died).
#[derive(Debug, thiserror::Error)]
#[error("data loader: {0}")]
pub struct LoadError(pub String);

/// The batches of one epoch, in step order.
pub type EpochBatches = Box<dyn Iterator<Item = Result<Batch, LoadError>> + Send>;

/// Where a rank's batches come from: the seam between the data model (which rank
/// reads which sample when) and the training loop.
pub trait BatchSource: Send + Sync {
    /// Optimizer steps per epoch (the same on every rank).
    fn steps_per_epoch(&self) -> usize;
    /// Shape of one sample, `[channels, height, width]`.
    fn sample_shape(&self) -> [usize; 3];
    /// This rank's batches of `epoch` (0-based), from step `first_step` on.
    fn epoch(&self, epoch: usize, first_step: usize) -> EpochBatches;
}

/// How a job's samples are divided among its ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sharding {
    /// Samples per optimizer step, summed over all ranks.
    pub global_batch: usize,
    /// This rank.
    pub rank: usize,
    /// Number of ranks.
    pub world: usize,
    /// Shuffle seed.
    pub seed: u64,
    /// Skip an epoch's final short global batch ([`GlobalShuffle`] only: a streamed
    /// table spreads an epoch's samples evenly over its steps, so none is short).
    pub drop_last: bool,
}

/// A job's training data, however it is held: its size and sample shape, and each
/// rank's batches. [`GlobalShuffle`] reads samples in any order (in memory, or image
/// files);
/// [`crate::stream::ParquetStream`] reads a table larger than memory as it trains.
pub trait TrainSet: Send + Sync {
    /// Training samples (all ranks together).
    fn len(&self) -> usize;
    /// True when there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Shape of one sample, `[channels, height, width]` (a table row: `[features, 1, 1]`).
    fn shape(&self) -> [usize; 3];
    /// The sample is a feature vector (dense layers apply directly), not an image.
    fn is_flat(&self) -> bool;
    /// The labels are numbers to predict (regression), not classes.
    fn is_regression(&self) -> bool;
    /// One rank's batches.
    fn batches(&self, sharding: Sharding) -> Box<dyn BatchSource>;
    /// How the samples are held and read, for people (`in memory, augmented`).
    fn describe(&self) -> String;
}

/// Samples that can be read in any order (held in memory, or image files decoded on
/// demand), read in the exact global permutation of a [`ShardSampler`] (N workers see
/// exactly the batches one worker with the same global batch sees), optionally
/// augmented.
pub struct GlobalShuffle {
    samples: Arc<dyn Samples>,
    augment: Augment,
}

impl GlobalShuffle {
    /// `samples`, with `augment` applied to every training sample (deterministic from
    /// the seed, the epoch and the sample's index, so independent of the number of
    /// workers).
    pub fn new(samples: Arc<dyn Samples>, augment: Augment) -> Self {
        Self { samples, augment }
    }
}

impl TrainSet for GlobalShuffle {
    fn len(&self) -> usize {
        self.samples.len()
    }

    fn shape(&self) -> [usize; 3] {
        self.samples.shape()
    }

    fn is_flat(&self) -> bool {
        self.samples.is_flat()
    }

    fn is_regression(&self) -> bool {
        self.samples.is_regression()
    }

    fn batches(&self, s: Sharding) -> Box<dyn BatchSource> {
        Box::new(MemoryBatches {
            samples: Arc::clone(&self.samples),
            sampler: ShardSampler {
                num_samples: self.samples.len(),
                global_batch: s.global_batch,
                rank: s.rank,
                world: s.world,
                seed: s.seed,
                drop_last: s.drop_last,
            },
            augment: self.augment,
        })
    }

    fn describe(&self) -> String {
        let mut d = format!(
            "{}, an exact global permutation per epoch",
            self.samples.storage()
        );
        if self.augment.crop_padding > 0 {
            d += &format!(", random crop (padding {})", self.augment.crop_padding);
        }
        if self.augment.flip {
            d += ", random flip";
        }
        d
    }
}

/// One rank's batches of an [`GlobalShuffle`] set.
struct MemoryBatches {
    samples: Arc<dyn Samples>,
    sampler: ShardSampler,
    augment: Augment,
}

impl BatchSource for MemoryBatches {
    fn steps_per_epoch(&self) -> usize {
        self.sampler.steps_per_epoch()
    }

    fn sample_shape(&self) -> [usize; 3] {
        self.samples.shape()
    }

    fn epoch(&self, epoch: usize, first_step: usize) -> EpochBatches {
        let order = self.sampler.epoch_order(epoch);
        let samples = Arc::clone(&self.samples);
        let sampler = self.sampler.clone();
        let augment = self.augment;
        let shape = samples.shape();
        let seed = sampler.seed;
        Box::new((first_step..sampler.steps_per_epoch()).map(move |step| {
            let indices = sampler.local_batch(&order, step);
            let mut batch = Batch {
                global_len: sampler.global_batch_of(&order, step).len(),
                ..Batch::default()
            };
            samples.gather(indices, &mut batch)?;
            augment.apply(&mut batch.inputs, shape, indices, seed, epoch);
            Ok(batch)
        }))
    }
}

/// Batches made `depth` steps ahead on a background thread, so that decoding and
/// copying overlap training; records how long the consumer waited.
pub struct Prefetch {
    rx: Option<Receiver<Result<Batch, LoadError>>>,
    thread: Option<JoinHandle<()>>,
    waited: Duration,
}

impl Prefetch {
    /// Starts a thread that runs `batches` at most `depth` (≥ 1) batches ahead.
    ///
    /// When rayon's global pool has one thread, that thread is the one training
    /// (dlc-train's `set_cpu_threads` makes the caller the pool's thread), and it
    /// would run a loader's parallel work (decoding a streamed batch) only when it
    /// next runs parallel work itself — not while it waits for this batch. The
    /// loader then runs in a one-thread pool of its own.
    pub fn start(batches: EpochBatches, depth: usize) -> Result<Self, LoadError> {
        let (tx, rx) = sync_channel(depth.max(1));
        let own_pool = if rayon::current_num_threads() == 1 {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .thread_name(|_| "dlc-loader-pool".into())
                .build()
                .map_err(|e| LoadError(format!("cannot start the loader thread: {e}")))?;
            Some(pool)
        } else {
            None
        };
        let thread = std::thread::Builder::new()
            .name("dlc-loader".into())
            .spawn(move || {
                let run = move || {
                    for item in batches {
                        let failed = item.is_err();
                        if tx.send(item).is_err() || failed {
                            break;
                        }
                    }
                };
                match own_pool {
                    Some(pool) => pool.install(run),
                    None => run(),
                }
            })
            .map_err(|e| LoadError(format!("cannot start the loader thread: {e}")))?;
        Ok(Self {
            rx: Some(rx),
            thread: Some(thread),
            waited: Duration::ZERO,
        })
    }

    /// The next batch (waiting for it), or `None` once the epoch's batches are done.
    pub fn next_batch(&mut self) -> Option<Result<Batch, LoadError>> {
        let rx = self.rx.as_ref()?;
        let start = Instant::now();
        let got = rx.recv();
        self.waited += start.elapsed();
        match got {
            Ok(item) => Some(item),
            Err(_) => {
                self.rx = None;
                let panicked = self.thread.take().map(|t| t.join().is_err());
                panicked
                    .unwrap_or(false)
                    .then(|| Err(LoadError("the loader thread panicked".into())))
            }
        }
    }

    /// Time spent waiting in [`Prefetch::next_batch`] since the previous call.
    pub fn take_waited(&mut self) -> Duration {
        std::mem::take(&mut self.waited)
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        // Closing the channel stops the thread after the batch it is making.
        self.rx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ImageDataset;

    fn dataset(n: usize) -> ImageDataset {
        ImageDataset::from_parts(
            (0..n * 4).map(|i| (i % 251) as u8).collect(),
            (0..n).map(|i| (i % 3) as u8).collect(),
            1,
            2,
            2,
        )
    }

    fn source(n: usize, batch: usize, rank: usize, world: usize) -> Box<dyn BatchSource> {
        GlobalShuffle::new(Arc::new(dataset(n)), Augment::default()).batches(Sharding {
            global_batch: batch,
            rank,
            world,
            seed: 3,
            drop_last: false,
        })
    }

    #[test]
    fn prefetched_batches_equal_direct_ones() {
        let src = source(53, 8, 1, 3);
        let direct: Vec<Batch> = src.epoch(2, 0).map(|b| b.unwrap()).collect();
        assert_eq!(direct.len(), src.steps_per_epoch());
        let mut pre = Prefetch::start(src.epoch(2, 0), 2).unwrap();
        let mut got = Vec::new();
        while let Some(b) = pre.next_batch() {
            got.push(b.unwrap());
        }
        assert_eq!(got, direct);
        // Resuming mid-epoch yields the tail.
        let tail: Vec<Batch> = src.epoch(2, 4).map(|b| b.unwrap()).collect();
        assert_eq!(tail, direct[4..]);
    }

    #[test]
    fn ranks_together_make_the_global_batches() {
        let world = 3;
        let one: Vec<Batch> = source(53, 8, 0, 1)
            .epoch(1, 0)
            .map(|b| b.unwrap())
            .collect();
        let parts: Vec<Vec<Batch>> = (0..world)
            .map(|r| {
                source(53, 8, r, world)
                    .epoch(1, 0)
                    .map(|b| b.unwrap())
                    .collect()
            })
            .collect();
        for (step, whole) in one.iter().enumerate() {
            let mut joined = Batch {
                global_len: whole.global_len,
                ..Batch::default()
            };
            for p in &parts {
                assert_eq!(p[step].global_len, whole.global_len);
                joined.inputs.extend_from_slice(&p[step].inputs);
                joined.labels.extend_from_slice(&p[step].labels);
            }
            assert_eq!(&joined, whole, "step {step}");
        }
    }

    #[test]
    fn dropping_a_prefetch_mid_epoch_stops_its_thread() {
        let src = source(1000, 4, 0, 1);
        let mut pre = Prefetch::start(src.epoch(0, 0), 1).unwrap();
        assert!(pre.next_batch().is_some());
        drop(pre); // joins; a hang here would time the test out
    }

    #[test]
    fn an_error_ends_the_epoch_with_that_error() {
        let items: Vec<Result<Batch, LoadError>> = vec![
            Ok(Batch::default()),
            Err(LoadError("row group 3 of x.parquet: truncated".into())),
            Ok(Batch::default()),
        ];
        let mut pre = Prefetch::start(Box::new(items.into_iter()), 4).unwrap();
        assert!(pre.next_batch().unwrap().is_ok());
        let err = pre.next_batch().unwrap().unwrap_err();
        assert!(err.to_string().contains("row group 3"), "{err}");
        assert!(pre.next_batch().is_none());
    }
}
