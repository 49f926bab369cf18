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
