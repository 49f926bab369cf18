//! `plan.svg` / `plan.png`: cost vs time of every candidate, frontier highlighted.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::model::Estimate;

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, es: &[Estimate]) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let e = |x: &dyn std::fmt::Display| x.to_string();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let hours: Vec<(f64, f64)> = es.iter().map(|x| (x.total_s / 3600.0, x.cost)).collect();
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(t, c) in &hours {
        (x0, x1, y0, y1) = (x0.min(t), x1.max(t), y0.min(c), y1.max(c));
    }
    if hours.is_empty() {
        (x0, x1, y0, y1) = (0.1, 1.0, 0.1, 1.0);
    }
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "plan: cost vs time (Pareto frontier in red)",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            decades(x0, x1).log_scale().with_key_points(ticks(x0, x1)),
            decades(y0, y1).log_scale().with_key_points(ticks(y0, y1)),
        )
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc("hours to finish")
        .y_desc("cost (USD)")
        .x_label_formatter(&|v| short(*v))
        .y_label_formatter(&|v| short(*v))
        .draw()
        .map_err(|x| e(&x))?;
    chart
        .draw_series(
            hours
                .iter()
                .map(|&p| Circle::new(p, 3, BLUE.mix(0.4).filled())),
        )
        .map_err(|x| e(&x))?
        .label("candidate")
        .legend(|(x, y)| Circle::new((x + 8, y), 3, BLUE.mix(0.4).filled()));
    let mut front: Vec<(f64, f64, &str)> = es
        .iter()
        .filter(|x| x.pareto)
        .map(|x| (x.total_s / 3600.0, x.cost, x.instance.as_str()))
        .collect();
    front.sort_by(|a, b| a.0.total_cmp(&b.0));
    chart
        .draw_series(LineSeries::new(
            front.iter().map(|f| (f.0, f.1)),
            RED.stroke_width(2),
        ))
        .map_err(|x| e(&x))?
        .label("Pareto frontier")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RED.stroke_width(2)));
    chart
        .draw_series(front.iter().map(|f| {
            EmptyElement::at((f.0, f.1))
                + Circle::new((0, 0), 5, RED.filled())
                + Text::new(f.2.to_string(), (6, -12), ("sans-serif", 12))
        }))
        .map_err(|x| e(&x))?;
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))
}

/// The smallest range of whole decades around `lo..=hi`, so that a log axis always
/// has labelled ticks (a range inside one decade gets none).
fn decades(lo: f64, hi: f64) -> std::ops::Range<f64> {
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
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
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
fn short(v: f64) -> String {
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

/// Writes `plan.svg` and `plan.png` into `dir`.
pub fn write_plot(dir: &Path, es: &[Estimate]) -> Result<Vec<PathBuf>, String> {
    dlc_bench::plot::register_font()?;
    let svg = dir.join("plan.svg");
    draw(SVGBackend::new(&svg, (1000, 650)).into_drawing_area(), es)?;
    let png = dir.join("plan.png");
    draw(
        BitMapBackend::new(&png, (1000, 650)).into_drawing_area(),
        es,
    )?;
    Ok(vec![svg, png])
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
