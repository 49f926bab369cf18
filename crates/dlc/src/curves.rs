//! `dlc plot`, and the curves plot `dlc train` leaves in the run directory.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;

#[derive(Args, Debug)]
pub struct PlotArgs {
    /// Run directories (each holding metrics.jsonl); several are overlaid, e.g. one
    /// worker against four.
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// Output path without extension; writes OUT.svg and OUT.png [default:
    /// RUN/curves for one run, ./curves for several].
    #[arg(long)]
    out: Option<PathBuf>,
}

/// `dlc plot`.
pub fn plot(args: PlotArgs) -> Result<()> {
    let runs = args
        .runs
        .iter()
        .map(|r| dlc_plot::curves::load(r))
        .collect::<Result<Vec<_>, _>>()?;
    let stem = match (&args.out, args.runs.as_slice()) {
        (Some(o), _) => o.clone(),
        (None, [one]) => one.join("curves"),
        (None, _) => PathBuf::from("curves"),
    };
    let files = dlc_plot::curves::write_plot(&stem, &runs)
        .with_context(|| format!("plotting {} run(s)", runs.len()))?;
    for f in files {
        println!("{}", f.display());
    }
    Ok(())
}

/// Writes RUN/curves.{svg,png} after training. A plot that cannot be drawn (no font,
/// say) is a note, not a failed run.
pub fn after_training(run_dir: &Path, quiet: bool) {
    let written = dlc_plot::curves::load(run_dir)
        .and_then(|run| dlc_plot::curves::write_plot(&run_dir.join("curves"), &[run]));
    match written {
        Ok(files) if !quiet => {
            let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            eprintln!("curves: {}", names.join(", "));
        }
        Ok(_) => {}
        Err(e) => eprintln!("note: no curves plot: {e}"),
    }
}
