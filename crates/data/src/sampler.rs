//! Deterministic, rank-aware sample orders: the data model of a distributed job.
//!
//! For a given `(seed, epoch)` every rank computes the same permutation of the
//! training set. The permutation is cut into global batches of `global_batch`
//! samples; rank `r` of `world` takes a contiguous slice of each global batch
//! (sizes differ by at most one when the batch does not divide evenly: the first
//! `global_batch % world` ranks take one more). Thus every sample is used exactly
//! once per epoch across all ranks, and N workers together see exactly the batches
//! that one worker with the same global batch would see.
//!
//! The last global batch of an epoch may be short. With `drop_last` it is skipped
//! (its samples are not used that epoch); otherwise it is trained on as a smaller
//! batch, split across ranks the same way (a rank may then get zero samples).

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Sample order for one rank of a data-parallel job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardSampler {
    /// Number of samples in the dataset.
    pub num_samples: usize,
    /// Samples per optimizer step, summed over all ranks.
    pub global_batch: usize,
    /// This rank.
    pub rank: usize,
    /// Number of ranks.
    pub world: usize,
    /// Shuffle seed.
    pub seed: u64,
    /// Skip the final short global batch of each epoch.
    pub drop_last: bool,
}

impl ShardSampler {
    /// Steps (global batches) per epoch.
    pub fn steps_per_epoch(&self) -> usize {
        if self.global_batch == 0 {
            return 0;
        }
        if self.drop_last {
            self.num_samples / self.global_batch
        } else {
            self.num_samples.div_ceil(self.global_batch)
        }
    }

    /// The permutation of all sample indices for `epoch` (identical on every rank).
    pub fn epoch_order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.num_samples).collect();
        let mix = self
            .seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(epoch as u64);
        let mut rng = ChaCha8Rng::seed_from_u64(mix);
        order.shuffle(&mut rng);
        order
    }

    /// The whole global batch of `step` within `order`.
    pub fn global_batch_of<'a>(&self, order: &'a [usize], step: usize) -> &'a [usize] {
        let start = (step * self.global_batch).min(order.len());
        let end = (start + self.global_batch).min(order.len());
        &order[start..end]
    }

    /// This rank's part of the global batch of `step`.
    pub fn local_batch<'a>(&self, order: &'a [usize], step: usize) -> &'a [usize] {
        let global = self.global_batch_of(order, step);
        let (start, end) = split_range(global.len(), self.rank, self.world);
        &global[start..end]
    }
}

/// The half-open range `[start, end)` rank `rank` of `world` owns when `len` items are
/// split into contiguous parts whose sizes differ by at most one (larger parts first).
pub fn split_range(len: usize, rank: usize, world: usize) -> (usize, usize) {
    let base = len / world;
    let rem = len % world;
    let start = rank * base + rank.min(rem);
    let size = base + usize::from(rank < rem);
    (start, start + size)
}

/// A deterministic train/test split of `n` rows: a `fraction` of them (at least one,
/// and not all, when `n > 1`) chosen by a ChaCha8 permutation seeded from `seed`.
/// Returns (train rows, test rows), each in increasing order.
pub fn split_rows(n: usize, fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let n_test = ((n as f64 * fraction).round() as usize).clamp(1.min(n), n.saturating_sub(1));
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ 0x7e57_5917));
    let mut is_test = vec![false; n];
    for &i in &order[..n_test] {
        is_test[i] = true;
    }
    (0..n).partition(|&i| !is_test[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(n: usize, b: usize, rank: usize, world: usize, drop_last: bool) -> ShardSampler {
        ShardSampler {
            num_samples: n,
            global_batch: b,
            rank,
            world,
            seed: 7,
            drop_last,
        }
    }

    #[test]
    fn every_sample_once_per_epoch_across_ranks() {
        for world in 1..=5 {
            for (n, b) in [(103, 10), (100, 10), (7, 16), (50, 3)] {
                let mut seen = vec![0u32; n];
                let s0 = sampler(n, b, 0, world, false);
                let order = s0.epoch_order(3);
                for rank in 0..world {
                    let s = sampler(n, b, rank, world, false);
                    assert_eq!(s.epoch_order(3), order, "order must not depend on rank");
                    for step in 0..s.steps_per_epoch() {
                        for &i in s.local_batch(&order, step) {
                            seen[i] += 1;
                        }
                    }
                }
                assert!(seen.iter().all(|&c| c == 1), "world {world} n {n} b {b}");
            }
        }
    }

    #[test]
    fn ranks_partition_the_global_batch() {
        let world = 3;
        let s = sampler(100, 10, 0, world, true);
        let order = s.epoch_order(0);
        for step in 0..s.steps_per_epoch() {
            let mut joined = Vec::new();
            for rank in 0..world {
                joined.extend_from_slice(
                    sampler(100, 10, rank, world, true).local_batch(&order, step),
                );
            }
            assert_eq!(joined, s.global_batch_of(&order, step));
        }
    }

    #[test]
    fn drop_last_skips_short_batch_and_epochs_differ() {
        let s = sampler(105, 10, 0, 1, true);
        assert_eq!(s.steps_per_epoch(), 10);
        assert_eq!(sampler(105, 10, 0, 1, false).steps_per_epoch(), 11);
        assert_ne!(s.epoch_order(0), s.epoch_order(1));
    }

    #[test]
    fn a_resumed_epoch_on_another_world_size_sees_every_sample_once() {
        // The data cursor is global (epoch, global batches done): 3 ranks train the
        // first 13 steps, 2 ranks (or 1, or 5) the rest of the same epoch.
        let (n, b, cut) = (1003, 40, 13);
        for after in [1, 2, 5] {
            let order = sampler(n, b, 0, 3, false).epoch_order(4);
            let mut seen = vec![0u32; n];
            for (world, steps) in [
                (3, 0..cut),
                (after, cut..sampler(n, b, 0, 3, false).steps_per_epoch()),
            ] {
                for rank in 0..world {
                    let s = sampler(n, b, rank, world, false);
                    for step in steps.clone() {
                        for &i in s.local_batch(&order, step) {
                            seen[i] += 1;
                        }
                    }
                }
            }
            assert!(seen.iter().all(|&c| c == 1), "3 → {after} ranks");
        }
    }

    #[test]
    fn split_range_is_balanced() {
        assert_eq!(split_range(10, 0, 3), (0, 4));
        assert_eq!(split_range(10, 1, 3), (4, 7));
        assert_eq!(split_range(10, 2, 3), (7, 10));
        assert_eq!(split_range(0, 2, 3), (0, 0));
        assert_eq!(split_range(2, 2, 3), (2, 2));
    }
}
