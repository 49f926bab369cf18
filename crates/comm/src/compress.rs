//! Gradients compressed on the wire: an f32 buffer all-reduced as bf16 or fp16
//! (half the bytes), the way Horovod's `Compression.fp16` and NCCL's half-precision
//! all-reduce do it.

use std::fmt;
use std::str::FromStr;

use crate::element::bf16_kernels;
use crate::{CommError, Communicator, ReduceOp};

/// How an f32 buffer travels in [`Communicator::all_reduce_compressed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// f32 on the wire: every rank ends with the exact ring sum.
    #[default]
    None,
    /// bf16: each rank's values are rounded to bf16, every partial sum is formed in
    /// f32 and rounded to bf16 before it travels on (relative error about
    /// 2⁻⁹·√ranks), every rank ends with the same values.
    Bf16,
    /// fp16: as bf16 with 3 more bits of precision, but values above 65504 become
    /// infinite and below 6e-8 become zero.
    Fp16,
}

impl Compression {
    /// The name used in job files and flags: `none`, `bf16`, `fp16`.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Bf16 => "bf16",
            Compression::Fp16 => "fp16",
        }
    }

    /// Bytes one f32 element takes on the wire.
    pub fn wire_bytes(self) -> usize {
        match self {
            Compression::None => 4,
            Compression::Bf16 | Compression::Fp16 => 2,
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Compression::None),
            "bf16" => Ok(Compression::Bf16),
            "fp16" => Ok(Compression::Fp16),
            _ => Err(format!(
                "unknown compression `{s}` (use none, bf16 or fp16)"
            )),
        }
    }
}

impl Communicator {
    /// [`Communicator::all_reduce`] of an f32 buffer that travels as `compression`:
    /// the buffer is rounded into a half-precision copy, reduced, and widened back.
    /// Every rank ends with bit-identical values; with [`Compression::None`] this is
    /// `all_reduce` itself. Ranks must agree on the compression (a rank that sends
    /// bf16 to one expecting f32 gets a mismatch error naming both calls).
    pub fn all_reduce_compressed(
        &mut self,
        buf: &mut [f32],
        op: ReduceOp,
        compression: Compression,
    ) -> Result<(), CommError> {
        match compression {
            Compression::None => self.all_reduce(buf, op),
            Compression::Bf16 => {
                // The half-precision copy lives in a buffer kept between calls (a
                // fresh one costs more in page faults than the conversion).
                let mut wire = self.take_wire(buf.len());
                let w: &mut [half::bf16] = bytemuck::cast_slice_mut(&mut wire[..buf.len()]);
                bf16_kernels::round(w, buf);
                let r = self.all_reduce(w, op);
                bf16_kernels::widen(buf, w);
                self.wire = wire;
                r
            }
            Compression::Fp16 => {
                use half::slice::HalfFloatSliceExt;
                let mut wire = self.take_wire(buf.len());
                let w: &mut [half::f16] = bytemuck::cast_slice_mut(&mut wire[..buf.len()]);
                w.convert_from_f32_slice(buf);
                let r = self.all_reduce(w, op);
                w.convert_to_f32_slice(buf);
                self.wire = wire;
                r
            }
        }
    }
}

impl Communicator {
    /// The kept half-precision buffer, at least `len` elements long.
    fn take_wire(&mut self, len: usize) -> Vec<u16> {
        let mut wire = std::mem::take(&mut self.wire);
        if wire.len() < len {
            wire.resize(len, 0);
        }
        wire
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::element::{bf16_round, bf16_widen};
    use crate::Element;

    #[test]
    fn bf16_rounds_to_nearest_even_and_keeps_nan_and_infinity() {
        // 1 + 2^-8 lies halfway between bf16 neighbours 1 and 1 + 2^-7: ties go to even (1).
        assert_eq!(bf16_widen(bf16_round(1.0 + 2f32.powi(-8))), 1.0);
        // Just above halfway rounds up.
        let up = f32::from_bits((1.0f32 + 2f32.powi(-8)).to_bits() + 1);
        assert_eq!(bf16_widen(bf16_round(up)), 1.0 + 2f32.powi(-7));
        // Odd neighbour: 1 + 3·2^-8 is halfway between 1+2^-7 (odd) and 1+2^-6: even wins.
        assert_eq!(
            bf16_widen(bf16_round(1.0 + 3.0 * 2f32.powi(-8))),
            1.0 + 2f32.powi(-6)
        );
        assert!(bf16_widen(bf16_round(f32::NAN)).is_nan());
        assert_eq!(bf16_widen(bf16_round(f32::INFINITY)), f32::INFINITY);
        assert_eq!(bf16_widen(bf16_round(-0.0)).to_bits(), (-0.0f32).to_bits());
        // Agrees with the half crate on a spread of values.
        for i in 0..10_000u32 {
            let x = f32::from_bits(i.wrapping_mul(2_654_435_761));
            if x.is_nan() {
                continue;
            }
            assert_eq!(bf16_round(x), half::bf16::from_f32(x), "{x}");
        }
    }

    #[test]
    fn half_sums_are_formed_in_f32_and_rounded_once() {
        let mut d = vec![half::bf16::from_f32(1.0); 300];
        let s = vec![half::bf16::from_f32(2f32.powi(-8)); 300];
        half::bf16::add_assign_slice(&mut d, &s);
        assert!(d.iter().all(|&x| x.to_f32() == 1.0), "tie to even");
        let mut d = vec![half::f16::from_f32(1.5); 300];
        let s = vec![half::f16::from_f32(0.25); 300];
        half::f16::add_assign_slice(&mut d, &s);
        assert!(d.iter().all(|&x| x.to_f32() == 1.75));
        half::f16::scale(&mut d, 2.0);
        assert!(d.iter().all(|&x| x.to_f32() == 3.5));
    }

    #[test]
    fn compression_names_round_trip() {
        for c in [Compression::None, Compression::Bf16, Compression::Fp16] {
            assert_eq!(c.name().parse::<Compression>(), Ok(c));
        }
        assert!("int8".parse::<Compression>().unwrap_err().contains("bf16"));
    }
}
