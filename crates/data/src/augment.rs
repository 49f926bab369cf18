//! Training-time image augmentation: random crop with padding and horizontal flip.
//!
//! Each sample's transformation is drawn from `(seed, epoch, sample index)` alone, so a
//! sample is augmented the same way whichever rank reads it and however many workers
//! there are: N workers still train exactly what one worker trains.

/// Value of padded pixels: black in the [-1, 1] scale images are fed in.
const PAD: f32 = -1.0;

/// Which augmentations to apply (the default applies none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Augment {
    /// Pad each side by this many pixels, then crop the original size at a random
    /// offset (0: off), as torchvision's `RandomCrop(size, padding)`.
    pub crop_padding: usize,
    /// Mirror left–right with probability ½.
    pub flip: bool,
}

impl Augment {
    /// True when nothing is applied.
    pub fn is_identity(&self) -> bool {
        self.crop_padding == 0 && !self.flip
    }

    /// Augments the images in `inputs` (`indices.len()` samples of `shape`
    /// `[channels, height, width]`, sample `k` being dataset sample `indices[k]`).
    pub fn apply(
        &self,
        inputs: &mut [f32],
        shape: [usize; 3],
        indices: &[usize],
        seed: u64,
        epoch: usize,
    ) {
        if self.is_identity() {
            return;
        }
        let [c, h, w] = shape;
        let size = c * h * w;
        let mut scratch = vec![0.0f32; size];
        for (img, &index) in inputs.chunks_exact_mut(size).zip(indices) {
            let mut r = mix(
                mix(seed ^ 0xa5a5_0f0f_3c3c_9696, epoch as u64),
                index as u64,
            );
            let mut draw = |n: u64| {
                r = mix(r, 1);
                r % n
            };
            let p = self.crop_padding as i64;
            let (dy, dx) = if p > 0 {
                let span = 2 * p as u64 + 1;
                (draw(span) as i64 - p, draw(span) as i64 - p)
            } else {
                (0, 0)
            };
            let flip = self.flip && draw(2) == 1;
            if (dy, dx) == (0, 0) && !flip {
                continue;
            }
            scratch.copy_from_slice(img);
            for ch in 0..c {
                let plane = &scratch[ch * h * w..(ch + 1) * h * w];
                let out = &mut img[ch * h * w..(ch + 1) * h * w];
                for y in 0..h {
                    let sy = y as i64 + dy;
                    for x in 0..w {
                        let xo = if flip { w - 1 - x } else { x };
                        let sx = xo as i64 + dx;
                        out[y * w + x] = if sy < 0 || sx < 0 || sy >= h as i64 || sx >= w as i64 {
                            PAD
                        } else {
                            plane[sy as usize * w + sx as usize]
                        };
                    }
                }
            }
        }
    }
}

/// SplitMix64 of `a` combined with `b`: a cheap, well-mixed hash.
pub(crate) fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images(n: usize, shape: [usize; 3]) -> Vec<f32> {
        let size = shape.iter().product::<usize>();
        (0..n * size).map(|i| (i % 97) as f32 / 97.0).collect()
    }

    #[test]
    fn identity_changes_nothing() {
        let shape = [3, 5, 4];
        let mut x = images(6, shape);
        let before = x.clone();
        Augment::default().apply(&mut x, shape, &[0, 1, 2, 3, 4, 5], 1, 0);
        assert_eq!(x, before);
    }

    #[test]
    fn deterministic_per_sample_whatever_the_batch() {
        let shape = [1, 6, 6];
        let aug = Augment {
            crop_padding: 2,
            flip: true,
        };
        let size = 36;
        let all = images(4, shape);
        let mut whole = all.clone();
        aug.apply(&mut whole, shape, &[10, 11, 12, 13], 9, 3);
        // The same samples, augmented one by one in another batch order.
        for index in [13usize, 11, 10, 12] {
            let src = index - 10;
            let mut one = all[src * size..(src + 1) * size].to_vec();
            aug.apply(&mut one, shape, &[index], 9, 3);
            assert_eq!(one, whole[src * size..(src + 1) * size], "sample {index}");
        }
        // Another epoch draws other transformations for some sample.
        let mut other = all.clone();
        aug.apply(&mut other, shape, &[10, 11, 12, 13], 9, 4);
        assert_ne!(other, whole);
    }

    #[test]
    fn flip_mirrors_and_crop_pads_with_black() {
        let shape = [1, 1, 4];
        let aug = Augment {
            crop_padding: 0,
            flip: true,
        };
        // Find a sample the hash flips, and check it is mirrored.
        let src = vec![0.1, 0.2, 0.3, 0.4];
        let flipped = (0..64)
            .map(|i| {
                let mut x = src.clone();
                aug.apply(&mut x, shape, &[i], 5, 0);
                x
            })
            .find(|x| *x != src)
            .expect("some sample is flipped");
        assert_eq!(flipped, vec![0.4, 0.3, 0.2, 0.1]);

        let crop = Augment {
            crop_padding: 1,
            flip: false,
        };
        let shape = [1, 3, 3];
        let src: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let mut shifted = 0;
        for i in 0..64 {
            let mut x = src.clone();
            crop.apply(&mut x, shape, &[i], 5, 0);
            // Every output pixel is either padding or a source pixel, and the kept
            // pixels keep their order (a translation).
            let kept: Vec<f32> = x.iter().copied().filter(|&v| v != PAD).collect();
            assert!(kept.windows(2).all(|p| p[0] < p[1]), "{x:?}");
            if x != src {
                shifted += 1;
                assert!(x.contains(&PAD), "{x:?}");
            }
        }
        assert!(shifted > 32, "most samples move: {shifted}/64");
    }
}
