//! Plots of the matmul benchmark: time vs n (log–log) and speedup vs n, as SVG and PNG.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::matmul::Row;

type Series = BTreeMap<String, Vec<(f64, f64)>>;

fn series(rows: &[Row], f: impl Fn(&Row) -> Option<f64>) -> Series {
    let mut s: Series = BTreeMap::new();
    for r in rows {
        if let Some(v) = f(r) {
            s.entry(format!("{} {}", r.device, r.dtype))
                .or_default()
                .push((r.n as f64, v));
        }
    }
    s
}

/// Speedup of every non-CPU series over the CPU at the same dtype and n; with no
/// GPU rows, every CPU dtype relative to CPU f32. Returns the series and its title.
pub fn speedups(rows: &[Row]) -> (Series, String) {
    let cpu = |dtype: &str, n: usize| {
        rows.iter()
            .find(|r| r.device == "cpu" && r.dtype == dtype && r.n == n)
    };
    let gpu_rows = rows.iter().any(|r| r.device != "cpu");
    if gpu_rows {
        let s = series(rows, |r| {
            (r.device != "cpu")
                .then(|| cpu(&r.dtype, r.n).map(|c| r.gflops / c.gflops))
                .flatten()
        });
        (s, "GPU / CPU speedup (same dtype)".into())
    } else {
        let s = series(rows, |r| cpu("f32", r.n).map(|c| r.gflops / c.gflops));
        (s, "speedup relative to CPU f32 (no GPU measured)".into())
    }
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    y_label: &str,
    data: &Series,
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let e = |x: &dyn std::fmt::Display| x.to_string();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let pts = data.values().flatten();
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        if y > 0.0 {
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
    }
    if x0 > x1 || y0 > y1 {
        (x0, x1, y0, y1) = (1.0, 2.0, 1.0, 2.0);
    }
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (x0 * 0.8..x1 * 1.25).log_scale(),
            (y0 * 0.5..y1 * 2.0).log_scale(),
        )
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc("n (square matrices)")
        .y_desc(y_label)
        .draw()
        .map_err(|x| e(&x))?;
    let named: Vec<(&str, &[(f64, f64)])> = data
        .iter()
        .map(|(name, pts)| (name.as_str(), pts.as_slice()))
        .collect();
    dlc_plot::lines::named_lines(
        &mut chart,
        &named,
        usize::MAX,
        SeriesLabelPosition::MiddleRight,
    )?;
    root.present().map_err(|x| e(&x))
}

/// Writes `matmul_time.{svg,png}` and `matmul_speedup.{svg,png}` into `dir` and
/// returns the files written; fails with the reason when no font can be loaded.
pub fn write_plots(dir: &Path, rows: &[Row]) -> Result<Vec<PathBuf>, String> {
    dlc_plot::font::register_font()?;
    let time = series(rows, |r| Some(r.median_s));
    let (speed, speed_title) = speedups(rows);
    let mut written = Vec::new();
    let plots = [
        (
            "matmul_time",
            "matmul time vs n",
            "seconds per product",
            &time,
        ),
        (
            "matmul_speedup",
            speed_title.as_str(),
            "speedup (x)",
            &speed,
        ),
    ];
    for (name, title, ylab, data) in plots {
        let svg = dir.join(format!("{name}.svg"));
        draw(
            SVGBackend::new(&svg, (900, 600)).into_drawing_area(),
            title,
            ylab,
            data,
        )?;
        written.push(svg);
    }
    for (name, title, ylab, data) in plots {
        let png = dir.join(format!("{name}.png"));
        draw(
            BitMapBackend::new(&png, (900, 600)).into_drawing_area(),
            title,
            ylab,
            data,
        )?;
        written.push(png);
    }
    Ok(written)
}
