//! Log axes that always carry labelled ticks.

/// The smallest range of whole decades around `lo..=hi`, so that a log axis always
/// has labelled ticks (a range inside one decade gets none).
pub fn decades(lo: f64, hi: f64) -> std::ops::Range<f64> {
    let lo = if lo > 0.0 && lo.is_finite() { lo } else { 1e-3 };
    let hi = if hi > lo && hi.is_finite() {
        hi
    } else {
        lo * 10.0
    };
    let a = 10f64.powf((lo * 0.999).log10().floor());
    let b = 10f64.powf((hi * 1.001).log10().ceil());
    a..b
}

/// Tick values 1, 2, 5 × 10^k inside the decades around `lo..=hi`.
pub fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let r = decades(lo, hi);
    let mut out = Vec::new();
    let mut p = r.start;
    while p < r.end * 1.0001 {
        for m in [1.0, 2.0, 5.0] {
            let v = p * m;
            if v >= r.start * 0.9999 && v <= r.end * 1.0001 {
                out.push(v);
            }
        }
        p *= 10.0;
    }
    out
}

/// A tick label: three significant digits, no trailing zeros.
pub fn short(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{}", if v == 0.0 { 0.0 } else { v });
    }
    let s = format!(
        "{v:.*}",
        (2 - v.abs().log10().floor() as i32).max(0) as usize
    );
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::{decades, short, ticks};

    #[test]
    fn ticks_are_one_two_five() {
        let t: Vec<String> = ticks(0.018, 0.09).iter().map(|v| short(*v)).collect();
        assert_eq!(t, ["0.01", "0.02", "0.05", "0.1"]);
    }

    #[test]
    fn tick_labels() {
        assert_eq!(short(0.02), "0.02");
        assert_eq!(short(0.0125), "0.0125");
        assert_eq!(short(1.0), "1");
        assert_eq!(short(250.0), "250");
        assert_eq!(short(1234.0), "1234");
        assert_eq!(short(0.0), "0");
        assert_eq!(short(-0.0), "0");
        assert_eq!(short(-250.0), "-250");
    }

    fn close(r: std::ops::Range<f64>, a: f64, b: f64) -> bool {
        (r.start / a - 1.0).abs() < 1e-9 && (r.end / b - 1.0).abs() < 1e-9
    }

    #[test]
    fn axes_span_whole_decades() {
        assert!(close(decades(0.018, 0.09), 0.01, 0.1));
        assert!(close(decades(0.01, 0.1), 0.001, 1.0));
        assert!(close(decades(3.0, 250.0), 1.0, 1000.0));
        assert!(close(decades(0.0, 0.0), 1e-4, 0.1));
    }
}
