//! Training curves: loss per step and test accuracy (regression: RMSE) per epoch, for one run or several
//! runs overlaid (`dlc plot RUN…`, and `curves.svg`/`curves.png` after `dlc train`).
//!
//! The data comes from each run directory's `metrics.jsonl` (step lines `{"kind":
//! "step","step","loss",…}`, epoch lines `{"kind":"epoch","epoch","test_accuracy",…}`).
//! A resumed run may log a step twice; the later value wins.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

/// Why curves could not be read or drawn.
#[derive(Debug, thiserror::Error)]
pub enum CurvesError {
    /// The metrics file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A line is not a metrics record.
    #[error("{path}:{line}: not a metrics line ({message})")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// Nothing to plot yet.
    #[error("{path} holds no step or epoch lines yet")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// Drawing or writing the image failed.
    #[error("cannot draw {path}: {message}")]
    Draw {
        /// The image.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}

/// The curves of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// Legend entry: the run directory's name.
    pub name: String,
    /// `(global step, training loss)`, ascending by step.
    pub loss: Vec<(f64, f64)>,
    /// `(epochs completed, test accuracy)` (regression: test RMSE), ascending by epoch.
    pub accuracy: Vec<(f64, f64)>,
    /// The epoch metric: `accuracy`, or `RMSE` for a regression run.
    pub metric: &'static str,
}

/// Reads `run_dir/metrics.jsonl`. A last line cut short by a run still writing it
/// is skipped; any other malformed line is an error naming it.
pub fn load(run_dir: &Path) -> Result<Run, CurvesError> {
    let path = run_dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|source| CurvesError::Read {
        path: path.clone(),
        source,
    })?;
    let complete = text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let mut loss = BTreeMap::new();
    let mut accuracy = BTreeMap::new();
    let mut metric = "accuracy";
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| CurvesError::Line {
            path: path.clone(),
            line: i + 1,
            message,
        };
        let v: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(_) if i + 1 == lines.len() && !complete => break,
            Err(e) => return Err(bad(e.to_string())),
        };
        let num = |k: &str| {
            v[k].as_f64()
                .ok_or_else(|| bad(format!("no number \"{k}\"")))
        };
        match v["kind"].as_str() {
            Some("step") => {
                loss.insert(num("step")? as u64, num("loss")?);
            }
            Some("epoch") => {
                let value = match v["test_rmse"].as_f64() {
                    Some(rmse) => {
                        metric = "RMSE";
                        rmse
                    }
                    None => num("test_accuracy")?,
                };
                accuracy.insert(num("epoch")? as u64, value);
            }
            // Events without a curve of their own; steps done again after a restart
            // replace the lost ones above.
            Some("restart" | "stop" | "world") => {}
            _ => {
                return Err(bad(
                    "\"kind\" is none of \"step\", \"epoch\", \"restart\", \"stop\", \"world\""
                        .into(),
                ))
            }
        }
    }
    if loss.is_empty() && accuracy.is_empty() {
        return Err(CurvesError::Empty { path });
    }
    let name = run_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| run_dir.display().to_string());
    let pts = |m: BTreeMap<u64, f64>| m.into_iter().map(|(k, v)| (k as f64, v)).collect();
    Ok(Run {
        name,
        loss: pts(loss),
        accuracy: pts(accuracy),
        metric,
    })
}

/// `lo..hi` padded by 5 % on each side (a flat series gets a unit-wide range).
fn padded(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    if lo > hi {
        return 0.0..1.0;
    }
    let pad = if hi > lo { (hi - lo) * 0.05 } else { 0.5 };
    lo - pad..hi + pad
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    runs: &[Run],
    title: &str,
    (x_desc, y_desc): (&str, &str),
    x_labels: usize,
    legend: SeriesLabelPosition,
    series: impl Fn(&Run) -> &[(f64, f64)],
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let e = |x: &dyn std::fmt::Display| x.to_string();
    let all = || runs.iter().flat_map(|r| series(r).iter());
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(padded(all().map(|p| p.0)), padded(all().map(|p| p.1)))
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_labels(x_labels)
        .x_label_formatter(&|v| crate::axes::short(*v))
        .y_label_formatter(&|v| crate::axes::short(*v))
        .draw()
        .map_err(|x| e(&x))?;
    let named: Vec<(&str, &[(f64, f64)])> =
        runs.iter().map(|r| (r.name.as_str(), series(r))).collect();
    // Few points (epochs): mark each one.
    crate::lines::named_lines(&mut chart, &named, 50, legend)
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, runs: &[Run]) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|x| x.to_string())?;
    let (left, right) = root.split_horizontally(root.dim_in_pixel().0 / 2);
    // Loss falls and accuracy rises: each legend goes where its curves are not.
    panel(
        &left,
        runs,
        "training loss",
        ("step", "loss"),
        10,
        SeriesLabelPosition::UpperRight,
        |r| &r.loss,
    )?;
    // One label per epoch while they fit.
    let epochs = runs.iter().map(|r| r.accuracy.len()).max().unwrap_or(1);
    let metric = runs.first().map_or("accuracy", |r| r.metric);
    panel(
        &right,
        runs,
        &format!("test {metric}"),
        ("epoch", metric),
        epochs.clamp(2, 10),
        if metric == "accuracy" {
            SeriesLabelPosition::LowerRight
        } else {
            SeriesLabelPosition::UpperRight
        },
        |r| &r.accuracy,
    )?;
    root.present().map_err(|x| x.to_string())
}

/// Writes `<stem>.svg` and `<stem>.png` (both need the font, see [`crate::font`]) and
/// returns the files written.
pub fn write_plot(stem: &Path, runs: &[Run]) -> Result<Vec<PathBuf>, CurvesError> {
    let svg = stem.with_extension("svg");
    let png = stem.with_extension("png");
    let fail = |path: &Path| {
        let path = path.to_path_buf();
        move |message| CurvesError::Draw { path, message }
    };
    // Text layout needs the font for the SVG too.
    crate::font::register_font().map_err(fail(&svg))?;
    draw(SVGBackend::new(&svg, (1200, 500)).into_drawing_area(), runs).map_err(fail(&svg))?;
    draw(
        BitMapBackend::new(&png, (1200, 500)).into_drawing_area(),
        runs,
    )
    .map_err(fail(&png))?;
    Ok(vec![svg, png])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_dir(text: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("metrics.jsonl"), text).unwrap();
        d
    }

    /// What a distributed run writes: its world line first.
    const LINES: &str =
        "{\"kind\":\"world\",\"workers\":2,\"addrs\":[\"127.0.0.1:1\",\"127.0.0.1:2\"]}\n\
        {\"kind\":\"step\",\"epoch\":1,\"step\":5,\"loss\":2.0}\n\
        {\"kind\":\"step\",\"epoch\":1,\"step\":10,\"loss\":1.0}\n\
        {\"kind\":\"epoch\",\"epoch\":1,\"test_accuracy\":0.5}\n";

    #[test]
    fn reads_steps_and_epochs_and_a_resumed_step_replaces_the_first() {
        let d = run_dir(&format!(
            "{LINES}{{\"kind\":\"step\",\"epoch\":1,\"step\":10,\"loss\":0.75}}\n"
        ));
        let r = load(d.path()).unwrap();
        assert_eq!(r.loss, [(5.0, 2.0), (10.0, 0.75)]);
        assert_eq!(r.accuracy, [(1.0, 0.5)]);
    }

    #[test]
    fn a_cut_last_line_is_skipped_but_a_bad_line_is_named() {
        let d = run_dir(&format!("{LINES}{{\"kind\":\"st"));
        assert_eq!(load(d.path()).unwrap().loss.len(), 2);
        let d = run_dir(&format!("{LINES}garbage\n"));
        let e = load(d.path()).unwrap_err().to_string();
        assert!(e.contains("metrics.jsonl:5: not a metrics line"), "{e}");
        let d = run_dir("{\"kind\":\"step\",\"step\":1}\n");
        let e = load(d.path()).unwrap_err().to_string();
        assert!(e.contains(":1:") && e.contains("\"loss\""), "{e}");
        let d = run_dir("");
        assert!(matches!(load(d.path()), Err(CurvesError::Empty { .. })));
        let e = load(Path::new("/nonexistent/run")).unwrap_err().to_string();
        assert!(
            e.contains("cannot read /nonexistent/run/metrics.jsonl"),
            "{e}"
        );
    }

    #[test]
    fn draws_svg_with_every_run_in_the_legend() {
        let a = run_dir(LINES);
        let mut runs = vec![load(a.path()).unwrap()];
        runs.push(Run {
            name: "second-run".into(),
            ..runs[0].clone()
        });
        let stem = a.path().join("curves");
        let files = write_plot(&stem, &runs).unwrap();
        assert_eq!(files.len(), 2);
        let png = std::fs::read(stem.with_extension("png")).unwrap();
        assert!(png.starts_with(b"\x89PNG"));
        let svg = std::fs::read_to_string(stem.with_extension("svg")).unwrap();
        assert!(svg.contains("training loss") && svg.contains("test accuracy"));
        assert!(svg.contains("second-run") && svg.contains(&runs[0].name));
    }

    #[test]
    fn regression_runs_plot_test_rmse() {
        let a = run_dir(
            "{\"kind\":\"step\",\"step\":5,\"loss\":0.9}\n\
             {\"kind\":\"epoch\",\"epoch\":1,\"test_loss\":0.2,\"test_rmse\":3.5,\"test_mae\":2.5}\n",
        );
        let r = load(a.path()).unwrap();
        assert_eq!(
            (r.metric, r.accuracy.as_slice()),
            ("RMSE", &[(1.0, 3.5)][..])
        );
        let stem = a.path().join("curves");
        write_plot(&stem, &[r]).unwrap();
        let svg = std::fs::read_to_string(stem.with_extension("svg")).unwrap();
        assert!(svg.contains("test RMSE"), "the panel names its metric");
    }

    #[test]
    fn padding_handles_flat_and_empty_series() {
        assert_eq!(padded([1.0, 1.0].into_iter()), 0.5..1.5);
        assert_eq!(padded(std::iter::empty()), 0.0..1.0);
        let r = padded([0.0, 10.0].into_iter());
        assert!((r.start + 0.5).abs() < 1e-12 && (r.end - 10.5).abs() < 1e-12);
    }
}
