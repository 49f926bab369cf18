//! `plan.svg` / `plan.png`: cost vs time of every candidate, frontier highlighted.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use dlc_plot::axes::{decades, short, ticks};

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
    dlc_plot::lines::legend_box(&mut chart, SeriesLabelPosition::MiddleRight)?;
    root.present().map_err(|x| e(&x))
}

/// Writes `plan.svg` and `plan.png` into `dir`.
pub fn write_plot(dir: &Path, es: &[Estimate]) -> Result<Vec<PathBuf>, String> {
    dlc_plot::font::register_font()?;
    let svg = dir.join("plan.svg");
    draw(SVGBackend::new(&svg, (1000, 650)).into_drawing_area(), es)?;
    let png = dir.join("plan.png");
    draw(
        BitMapBackend::new(&png, (1000, 650)).into_drawing_area(),
        es,
    )?;
    Ok(vec![svg, png])
}
