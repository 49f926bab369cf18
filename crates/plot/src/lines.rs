//! Named line series and the legend box, as every dlcluster plot draws them.

use plotters::prelude::*;

/// Draws each `(name, points)` series as a 2-px line in its own palette colour, with a
/// circle on every point when the series has at most `mark_up_to` points, then the
/// legend box at `legend`.
pub fn named_lines<'a, DB, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    series: &[(&str, &[(f64, f64)])],
    mark_up_to: usize,
    legend: SeriesLabelPosition,
) -> Result<(), String>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for (i, &(name, pts)) in series.iter().enumerate() {
        named_line(chart, i, name, pts, pts.len() <= mark_up_to)?;
    }
    legend_box(chart, legend)
}

/// Draws one series as a 2-px line in palette colour `index`, labelled `name` in the
/// legend, with a circle on every point when `marked`.
pub fn named_line<'a, DB, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    index: usize,
    name: &str,
    pts: &[(f64, f64)],
    marked: bool,
) -> Result<(), String>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    let e = |x: &dyn std::fmt::Display| x.to_string();
    let color = Palette99::pick(index).to_rgba();
    chart
        .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
        .map_err(|x| e(&x))?
        .label(name)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
    if marked {
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(|x| e(&x))?;
    }
    Ok(())
}

/// Draws the legend of the labelled series: white, slightly transparent, black border.
pub fn legend_box<'a, DB, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    position: SeriesLabelPosition,
) -> Result<(), String>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    X: Ranged,
    Y: Ranged,
{
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|x| x.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use plotters::coord::types::RangedCoordf64;
    use plotters::coord::Shift;

    #[test]
    fn every_series_reaches_the_legend() {
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (400, 300)).into_drawing_area();
            draw(&root).unwrap();
        }
        assert!(svg.contains("first") && svg.contains("second"), "{svg}");
    }

    fn draw(root: &DrawingArea<SVGBackend, Shift>) -> Result<(), String> {
        crate::font::register_font()?;
        let mut chart = ChartBuilder::on(root)
            .build_cartesian_2d::<RangedCoordf64, RangedCoordf64>(
                (0.0..2.0).into(),
                (0.0..2.0).into(),
            )
            .map_err(|x| x.to_string())?;
        let a = [(0.0, 0.0), (1.0, 1.0)];
        let b = [(0.0, 1.0), (1.0, 2.0)];
        named_lines(
            &mut chart,
            &[("first", &a), ("second", &b)],
            usize::MAX,
            SeriesLabelPosition::UpperLeft,
        )
    }
}
