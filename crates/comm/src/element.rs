//! Element types the collectives move and reduce.

/// A scalar type that collectives can sum. Implemented for `f32` and `f64`; half
/// types can follow by implementing [`Element::add_assign_slice`] with widening.
pub trait Element: bytemuck::Pod + Send + Sync + 'static {
    /// Short name, used in mismatch errors and headers.
    const NAME: &'static str;
    /// Wire type code.
    const CODE: u8;
    /// `dst[i] += src[i]`.
    fn add_assign_slice(dst: &mut [Self], src: &[Self]);
    /// `dst[i] *= factor`.
    fn scale(dst: &mut [Self], factor: f64);
}

impl Element for f32 {
    const NAME: &'static str = "f32";
    const CODE: u8 = 1;
    fn add_assign_slice(dst: &mut [f32], src: &[f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d += *s;
        }
    }
    fn scale(dst: &mut [f32], factor: f64) {
        let f = factor as f32;
        dst.iter_mut().for_each(|d| *d *= f);
    }
}

impl Element for f64 {
    const NAME: &'static str = "f64";
    const CODE: u8 = 2;
    fn add_assign_slice(dst: &mut [f64], src: &[f64]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d += *s;
        }
    }
    fn scale(dst: &mut [f64], factor: f64) {
        dst.iter_mut().for_each(|d| *d *= factor);
    }
}

/// bf16 on the wire: each sum of two values is formed in f32 and rounded to the
/// nearest bf16 (ties to even). bf16 keeps f32's exponent range, so gradients need
/// no loss scaling.
impl Element for half::bf16 {
    const NAME: &'static str = "bf16";
    const CODE: u8 = 3;
    fn add_assign_slice(dst: &mut [half::bf16], src: &[half::bf16]) {
        bf16_kernels::add(dst, src);
    }
    fn scale(dst: &mut [half::bf16], factor: f64) {
        let f = factor as f32;
        dst.iter_mut()
            .for_each(|d| *d = bf16_round(bf16_widen(*d) * f));
    }
}

/// The f32 a bf16 stands for (exact).
#[inline(always)]
pub(crate) fn bf16_widen(h: half::bf16) -> f32 {
    f32::from_bits(u32::from(h.to_bits()) << 16)
}

/// The nearest bf16 to `x`, ties to even; NaN stays NaN (quiet), infinities stay.
/// Bit arithmetic rather than `bf16::from_f32`, so loops over it vectorise.
#[inline(always)]
pub(crate) fn bf16_round(x: f32) -> half::bf16 {
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16;
    let nan = (b & 0x7FFF_FFFF) > 0x7F80_0000;
    half::bf16::from_bits(if nan {
        (b >> 16) as u16 | 0x0040
    } else {
        rounded as u16
    })
}

/// The bf16 loops, compiled twice on x86-64: for the baseline (SSE2) and for AVX2,
/// chosen at run time (the AVX2 build converts 2–3× faster; one binary serves every
/// machine).
pub(crate) mod bf16_kernels {
    use super::{bf16_round, bf16_widen};
    use half::bf16;

    #[inline(always)]
    fn add_loop(dst: &mut [bf16], src: &[bf16]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = bf16_round(bf16_widen(*d) + bf16_widen(*s));
        }
    }

    #[inline(always)]
    fn round_loop(dst: &mut [bf16], src: &[f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = bf16_round(*s);
        }
    }

    #[inline(always)]
    fn widen_loop(dst: &mut [f32], src: &[bf16]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = bf16_widen(*s);
        }
    }

    macro_rules! dispatch {
        ($name:ident, $avx2:ident, $body:ident, $d:ty, $s:ty) => {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2")]
            fn $avx2(dst: &mut [$d], src: &[$s]) {
                $body(dst, src)
            }

            #[doc = concat!("`", stringify!($body), "` with the widest vectors this CPU has.")]
            pub(crate) fn $name(dst: &mut [$d], src: &[$s]) {
                #[cfg(target_arch = "x86_64")]
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2 (checked just above).
                    return unsafe { $avx2(dst, src) };
                }
                $body(dst, src)
            }
        };
    }

    dispatch!(add, add_avx2, add_loop, bf16, bf16);
    dispatch!(round, round_avx2, round_loop, bf16, f32);
    dispatch!(widen, widen_avx2, widen_loop, f32, bf16);
}

/// Elements converted per block when adding fp16 slices (on the stack).
const F16_BLOCK: usize = 256;

/// fp16 on the wire: sums formed in f32 and rounded to the nearest fp16. fp16 has
/// 3 more bits of precision than bf16 but overflows above 65504 and loses gradients
/// below 6e-8; prefer bf16 unless the gradients are known to fit.
impl Element for half::f16 {
    const NAME: &'static str = "f16";
    const CODE: u8 = 4;
    fn add_assign_slice(dst: &mut [half::f16], src: &[half::f16]) {
        use half::slice::HalfFloatSliceExt;
        let (mut a, mut b) = ([0f32; F16_BLOCK], [0f32; F16_BLOCK]);
        for (d, s) in dst.chunks_mut(F16_BLOCK).zip(src.chunks(F16_BLOCK)) {
            let (a, b) = (&mut a[..d.len()], &mut b[..d.len()]);
            d.convert_to_f32_slice(a);
            s.convert_to_f32_slice(b);
            a.iter_mut().zip(b.iter()).for_each(|(x, y)| *x += *y);
            d.convert_from_f32_slice(a);
        }
    }
    fn scale(dst: &mut [half::f16], factor: f64) {
        use half::slice::HalfFloatSliceExt;
        let f = factor as f32;
        let mut a = [0f32; F16_BLOCK];
        for d in dst.chunks_mut(F16_BLOCK) {
            let a = &mut a[..d.len()];
            d.convert_to_f32_slice(a);
            a.iter_mut().for_each(|x| *x *= f);
            d.convert_from_f32_slice(a);
        }
    }
}
