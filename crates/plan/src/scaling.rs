//! Measured scaling beside the model: what `scripts/netns-scaling.sh` measured across
//! 1…N hosts at several link rates (ring all-reduce times, training samples/s), the
//! planner's prediction for each point, the error, and a plot (`dlc plot --scaling`).
//!
//! The input is JSON lines, one per measurement and round:
//!
//! ```text
//! {"kind":"allreduce","rate":"1gbit","link_gbps":0.125,"hosts":3,"round":1,"bytes":1048576,"seconds":0.0171}
//! {"kind":"train","rate":"1gbit","hosts":3,"round":1,"samples_per_sec":5724.0,"predicted_samples_per_sec":5560.0}
//! ```
//!
//! `link_gbps` is null on unshaped links (then the CPUs, not the links, are the
//! limit, and there is no prediction). An all-reduce's prediction is the planner's
//! ring term with its default latency ([`crate::model::ring_time`]); a training
//! point's is what `dlc plan` estimated for that topology, recorded by the script.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;
use serde::Deserialize;

use dlc_plot::axes::{decades, short, ticks};

use crate::model::{ring_time, Assumptions};

/// Why a scaling file could not be read or drawn.
#[derive(Debug, thiserror::Error)]
pub enum ScalingError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A line is not a scaling record.
    #[error("{path}:{line}: not a scaling record ({message}); scripts/netns-scaling.sh --out DIR writes them")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// No measurement in the file.
    #[error("{path} holds no measurement")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The plot could not be drawn.
    #[error("cannot draw {path}: {message}")]
    Draw {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// One measurement.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Record {
    /// A ring all-reduce's median time, one rank per host.
    Allreduce {
        /// The link rate as given (`1gbit`, `none` for unshaped).
        rate: String,
        /// The link rate, GB/s; null when unshaped.
        link_gbps: Option<f64>,
        /// Hosts (= ranks).
        hosts: usize,
        /// Round of the sitting.
        round: usize,
        /// Buffer size, bytes (f32 elements × 4).
        bytes: usize,
        /// Median seconds.
        seconds: f64,
    },
    /// A training run's steady-state throughput, one worker per host.
    Train {
        /// The link rate as given.
        rate: String,
        /// Hosts (= workers).
        hosts: usize,
        /// Round of the sitting.
        round: usize,
        /// Job-wide samples per second (median of the step windows after warm-up).
        samples_per_sec: f64,
        /// What `dlc plan` estimated for the same topology; null when unshaped.
        predicted_samples_per_sec: Option<f64>,
    },
}

/// One configuration's measurements over the rounds.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// The link rate as given.
    pub rate: String,
    /// Hosts.
    pub hosts: usize,
    /// All-reduce buffer bytes; `None` for training.
    pub bytes: Option<usize>,
    /// Mean over the rounds (seconds for an all-reduce, samples/s for training).
    pub mean: f64,
    /// Smallest and largest round.
    pub spread: (f64, f64),
    /// Rounds measured.
    pub rounds: usize,
    /// The model's value in the same unit, when there is one.
    pub predicted: Option<f64>,
}

impl Point {
    /// (predicted − measured) / measured.
    pub fn error(&self) -> Option<f64> {
        self.predicted.map(|p| (p - self.mean) / self.mean)
    }

    /// Bus bandwidth of an all-reduce point, GB/s: algbw × 2(n−1)/n.
    pub fn busbw_gbps(&self) -> Option<f64> {
        let n = self.hosts as f64;
        self.bytes
            .map(|b| b as f64 / self.mean * 2.0 * (n - 1.0) / n / 1e9)
    }
}

/// The measurements of a sitting, averaged over rounds.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Summary {
    /// All-reduce points, by rate, size, hosts.
    pub allreduce: Vec<Point>,
    /// Training points, by rate, hosts.
    pub train: Vec<Point>,
}

/// Reads a scaling file. Every line must be a record (a malformed one is named).
pub fn load(path: &Path) -> Result<Vec<Record>, ScalingError> {
    let text = std::fs::read_to_string(path).map_err(|source| ScalingError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| ScalingError::Line {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        };
        let r: Record = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let (hosts, value) = match &r {
            Record::Allreduce { hosts, seconds, .. } => (*hosts, *seconds),
            Record::Train {
                hosts,
                samples_per_sec,
                ..
            } => (*hosts, *samples_per_sec),
        };
        if hosts == 0 || !(value.is_finite() && value > 0.0) {
            return Err(bad(
                "hosts must be at least 1 and the measurement positive".into()
            ));
        }
        out.push(r);
    }
    if out.is_empty() {
        return Err(ScalingError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(out)
}

/// Sorts rates by their link (slowest first, unshaped last), then by name.
fn rate_key(rate: &str, link: Option<f64>) -> (u64, String) {
    let l = link.map_or(u64::MAX, |g| (g * 1e9) as u64);
    (l, rate.to_string())
}

/// Averages the rounds and attaches the model's values.
pub fn summarize(records: &[Record]) -> Summary {
    let latency = Assumptions::default().network_latency_s;
    // Keys sort by link rate, then size (all-reduce), then hosts.
    type Rate = (u64, String);
    type Rounds = (Vec<f64>, Option<f64>);
    let mut ar: BTreeMap<(Rate, usize, usize), Rounds> = BTreeMap::new();
    let mut links: BTreeMap<String, Option<f64>> = BTreeMap::new();
    for r in records {
        if let Record::Allreduce {
            rate, link_gbps, ..
        } = r
        {
            links.insert(rate.clone(), *link_gbps);
        }
    }
    let mut tr: BTreeMap<(Rate, usize), (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for r in records {
        match r {
            Record::Allreduce {
                rate,
                link_gbps,
                hosts,
                bytes,
                seconds,
                ..
            } => {
                let pred = link_gbps.map(|l| ring_time(*bytes as f64, *hosts, l, latency));
                let e = ar
                    .entry((rate_key(rate, *link_gbps), *bytes, *hosts))
                    .or_insert((Vec::new(), pred));
                e.0.push(*seconds);
            }
            Record::Train {
                rate,
                hosts,
                samples_per_sec,
                predicted_samples_per_sec,
                ..
            } => {
                let link = links.get(rate).copied().flatten();
                let e = tr.entry((rate_key(rate, link), *hosts)).or_default();
                e.0.push(*samples_per_sec);
                e.1.extend(predicted_samples_per_sec.iter().copied());
            }
        }
    }
    let point = |rate: &str, hosts, bytes, v: &[f64], predicted| Point {
        rate: rate.to_string(),
        hosts,
        bytes,
        mean: v.iter().sum::<f64>() / v.len() as f64,
        spread: (
            v.iter().copied().fold(f64::INFINITY, f64::min),
            v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        ),
        rounds: v.len(),
        predicted,
    };
    Summary {
        allreduce: ar
            .iter()
            .map(|(((_, rate), bytes, hosts), (v, p))| point(rate, *hosts, Some(*bytes), v, *p))
            .collect(),
        train: tr
            .iter()
            .map(|(((_, rate), hosts), (v, p))| {
                let pred = (!p.is_empty()).then(|| p.iter().sum::<f64>() / p.len() as f64);
                point(rate, *hosts, None, v, pred)
            })
            .collect(),
    }
}

fn error_cell(p: &Point) -> String {
    p.error()
        .map_or("-".into(), |e| format!("{:+.0}%", e * 100.0))
}

/// The summary as text tables: all-reduce (median ms, spread, busbw, planner ms,
/// error) and training (samples/s, spread, speed-up over one host, planner, error).
pub fn table(s: &Summary) -> String {
    let mut t = String::new();
    if !s.allreduce.is_empty() {
        t.push_str(&format!(
            "{:<8} {:>5} {:>10} {:>10} {:>19} {:>10} {:>10} {:>6}\n",
            "rate", "hosts", "bytes", "median ms", "spread ms", "busbw GB/s", "planner ms", "error"
        ));
        for p in &s.allreduce {
            t.push_str(&format!(
                "{:<8} {:>5} {:>10} {:>10.2} {:>9.2}-{:<9.2} {:>10.4} {:>10} {:>6}\n",
                p.rate,
                p.hosts,
                p.bytes.unwrap_or(0),
                p.mean * 1e3,
                p.spread.0 * 1e3,
                p.spread.1 * 1e3,
                p.busbw_gbps().unwrap_or(f64::NAN),
                p.predicted
                    .map_or("-".into(), |v| format!("{:.2}", v * 1e3)),
                error_cell(p)
            ));
        }
    }
    if !s.train.is_empty() {
        if !t.is_empty() {
            t.push('\n');
        }
        t.push_str(&format!(
            "{:<8} {:>5} {:>10} {:>17} {:>8} {:>10} {:>6}\n",
            "rate", "hosts", "samples/s", "spread", "speed-up", "planner", "error"
        ));
        for p in &s.train {
            let one = s
                .train
                .iter()
                .find(|q| q.rate == p.rate && q.hosts == 1)
                .map(|q| q.mean);
            t.push_str(&format!(
                "{:<8} {:>5} {:>10.0} {:>8.0}-{:<8.0} {:>8} {:>10} {:>6}\n",
                p.rate,
                p.hosts,
                p.mean,
                p.spread.0,
                p.spread.1,
                one.map_or("-".into(), |o| format!("{:.2}×", p.mean / o)),
                p.predicted.map_or("-".into(), |v| format!("{v:.0}")),
                error_cell(p)
            ));
        }
    }
    t
}

/// A line per rate: (label, measured points, predicted points), x = hosts.
type Lines = Vec<(String, Vec<(f64, f64)>, Vec<(f64, f64)>)>;

/// Per rate: busbw of the largest all-reduce against hosts, or samples/s.
fn lines(points: &[Point], busbw: bool) -> Lines {
    let mut out: Lines = Vec::new();
    let largest = points.iter().filter_map(|p| p.bytes).max();
    for p in points {
        if busbw && p.bytes != largest {
            continue;
        }
        let (m, pred) = if busbw {
            let n = p.hosts as f64;
            let to_bw = |t: f64| p.bytes.unwrap_or(0) as f64 / t * 2.0 * (n - 1.0) / n / 1e9;
            (to_bw(p.mean), p.predicted.map(to_bw))
        } else {
            (p.mean, p.predicted)
        };
        let label = match (busbw, largest) {
            (true, Some(b)) => format!("{} ({} MiB)", p.rate, short(b as f64 / 1048576.0)),
            _ => p.rate.clone(),
        };
        let i = match out.iter().position(|l| l.0 == label) {
            Some(i) => i,
            None => {
                out.push((label, Vec::new(), Vec::new()));
                out.len() - 1
            }
        };
        out[i].1.push((p.hosts as f64, m));
        if let Some(v) = pred {
            out[i].2.push((p.hosts as f64, v));
        }
    }
    out
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    (title, y_desc): (&str, &str),
    lines: &Lines,
    max_hosts: usize,
    legend: SeriesLabelPosition,
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let e = |x: &dyn std::fmt::Display| x.to_string();
    let ys = || {
        lines
            .iter()
            .flat_map(|l| l.1.iter().chain(l.2.iter()).map(|p| p.1))
    };
    let (y0, y1) = ys().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
        (a.min(y), b.max(y))
    });
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            0.8..max_hosts as f64 + 0.2,
            decades(y0, y1).log_scale().with_key_points(ticks(y0, y1)),
        )
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc("hosts (one rank each)")
        .y_desc(y_desc)
        .x_labels(max_hosts + 1)
        .x_max_light_lines(0)
        .x_label_formatter(&|v| {
            if (v - v.round()).abs() < 1e-6 {
                format!("{}", v.round())
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|v| short(*v))
        .draw()
        .map_err(|x| e(&x))?;
    for (i, (label, measured, predicted)) in lines.iter().enumerate() {
        dlc_plot::lines::named_line(&mut chart, i, &format!("{label} measured"), measured, true)?;
        let color = Palette99::pick(i).to_rgba();
        if !predicted.is_empty() {
            chart
                .draw_series(DashedLineSeries::new(
                    predicted.iter().copied(),
                    6,
                    4,
                    color.stroke_width(1),
                ))
                .map_err(|x| e(&x))?
                .label(format!("{label} planner"))
                .legend(move |(x, y)| {
                    EmptyElement::at((x, y))
                        + PathElement::new(vec![(0, 0), (7, 0)], color.stroke_width(1))
                        + PathElement::new(vec![(11, 0), (18, 0)], color.stroke_width(1))
                });
        }
    }
    dlc_plot::lines::legend_box(&mut chart, legend)
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, s: &Summary) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|x| x.to_string())?;
    let max_hosts = s
        .allreduce
        .iter()
        .chain(&s.train)
        .map(|p| p.hosts)
        .max()
        .unwrap_or(2);
    // The all-reduce has no 1-host point: its legend fits there. Training curves
    // start high at 1 host or rise from it: the lower left is free.
    let panels = [
        (
            ("ring all-reduce: bus bandwidth", "busbw (GB/s)"),
            lines(&s.allreduce, true),
            SeriesLabelPosition::UpperLeft,
        ),
        (
            ("training throughput", "samples/s"),
            lines(&s.train, false),
            SeriesLabelPosition::LowerLeft,
        ),
    ];
    let shown = panels.iter().filter(|p| !p.1.is_empty()).count();
    let width = root.dim_in_pixel().0 / shown.max(1) as u32;
    let mut rest = root.clone();
    for (titles, l, legend) in panels.into_iter().filter(|p| !p.1.is_empty()) {
        let (area, right) = rest.split_horizontally(width);
        panel(&area, titles, &l, max_hosts, legend)?;
        rest = right;
    }
    root.present().map_err(|x| x.to_string())
}

/// Writes `<stem>.svg` and `<stem>.png`: bus bandwidth (largest size) and training
/// samples/s against hosts, one colour per link rate, measured solid and the
/// planner dashed.
pub fn write_plot(stem: &Path, s: &Summary) -> Result<Vec<PathBuf>, ScalingError> {
    let svg = stem.with_extension("svg");
    let png = stem.with_extension("png");
    let fail = |path: &Path| {
        let path = path.to_path_buf();
        move |message| ScalingError::Draw { path, message }
    };
    let panels = usize::from(!s.allreduce.is_empty()) + usize::from(!s.train.is_empty());
    let size = (600 * panels.max(1) as u32, 500);
    dlc_plot::font::register_font().map_err(fail(&svg))?;
    draw(SVGBackend::new(&svg, size).into_drawing_area(), s).map_err(fail(&svg))?;
    draw(BitMapBackend::new(&png, size).into_drawing_area(), s).map_err(fail(&png))?;
    Ok(vec![svg, png])
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINES: &str = r#"{"kind":"allreduce","rate":"1gbit","link_gbps":0.125,"hosts":2,"round":1,"bytes":1048576,"seconds":0.0090}
{"kind":"allreduce","rate":"1gbit","link_gbps":0.125,"hosts":2,"round":2,"bytes":1048576,"seconds":0.0094}
{"kind":"allreduce","rate":"none","link_gbps":null,"hosts":2,"round":1,"bytes":1048576,"seconds":0.0010}
{"kind":"allreduce","rate":"200mbit","link_gbps":0.025,"hosts":3,"round":1,"bytes":1048576,"seconds":0.0560}
{"kind":"train","rate":"1gbit","hosts":1,"round":1,"samples_per_sec":30000,"predicted_samples_per_sec":31000}
{"kind":"train","rate":"1gbit","hosts":2,"round":1,"samples_per_sec":7000,"predicted_samples_per_sec":7700}
{"kind":"train","rate":"1gbit","hosts":2,"round":2,"samples_per_sec":8000,"predicted_samples_per_sec":7300}
{"kind":"train","rate":"none","hosts":2,"round":1,"samples_per_sec":20000,"predicted_samples_per_sec":null}
"#;

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("scaling.jsonl");
        std::fs::write(&p, text).unwrap();
        (d, p)
    }

    #[test]
    fn rounds_are_averaged_and_the_model_sits_beside_each_point() {
        let (_d, p) = file(LINES);
        let s = summarize(&load(&p).unwrap());
        // Slowest link first, unshaped last.
        let rates: Vec<&str> = s.allreduce.iter().map(|p| p.rate.as_str()).collect();
        assert_eq!(rates, ["200mbit", "1gbit", "none"]);
        let g = &s.allreduce[1];
        assert_eq!((g.hosts, g.rounds), (2, 2));
        assert!((g.mean - 0.0092).abs() < 1e-12, "{g:?}");
        assert_eq!(g.spread, (0.0090, 0.0094));
        // 1 MiB over 2 ranks at 0.125 GB/s plus 2 hops of 50 µs.
        let want = 1048576.0 / 0.125e9 + 2.0 * 50e-6;
        assert!((g.predicted.unwrap() - want).abs() < 1e-12, "{g:?}");
        assert!((g.busbw_gbps().unwrap() - 1048576.0 / 0.0092 / 1e9).abs() < 1e-9);
        assert_eq!(s.allreduce[2].predicted, None);
        assert_eq!(s.allreduce[2].error(), None);

        let t: Vec<(&str, usize, f64, Option<f64>)> = s
            .train
            .iter()
            .map(|p| (p.rate.as_str(), p.hosts, p.mean, p.predicted))
            .collect();
        assert_eq!(
            t,
            [
                ("1gbit", 1, 30000.0, Some(31000.0)),
                ("1gbit", 2, 7500.0, Some(7500.0)),
                ("none", 2, 20000.0, None)
            ]
        );
        let text = table(&s);
        assert!(text.contains("0.25×"), "{text}");
        assert!(text.contains("+3%"), "{text}");
    }

    #[test]
    fn a_bad_line_is_named_and_an_empty_file_is_refused() {
        let (_d, p) = file("{\"kind\":\"train\",\"rate\":\"1gbit\",\"hosts\":2}\n");
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("scaling.jsonl:1") && e.contains("round"), "{e}");
        let (_d, p) = file(
            "{\"kind\":\"train\",\"rate\":\"x\",\"hosts\":0,\"round\":1,\"samples_per_sec\":1,\"predicted_samples_per_sec\":null}\n",
        );
        assert!(load(&p).unwrap_err().to_string().contains("at least 1"));
        let (_d, p) = file("\n");
        assert!(matches!(load(&p), Err(ScalingError::Empty { .. })));
    }

    #[test]
    fn the_plot_has_both_panels_and_every_rate() {
        let (d, p) = file(LINES);
        let s = summarize(&load(&p).unwrap());
        let files = write_plot(&d.path().join("scaling"), &s).unwrap();
        let svg = std::fs::read_to_string(&files[0]).unwrap();
        for want in [
            "bus bandwidth",
            "training throughput",
            "1gbit (1 MiB) measured",
            "1gbit (1 MiB) planner",
            "none measured",
        ] {
            assert!(svg.contains(want), "no {want:?} in the SVG");
        }
        assert!(std::fs::metadata(&files[1]).unwrap().len() > 1000);
    }
}
