//! `dlc plot`: training curves of run directories (also drawn after `dlc train`),
//! or measured scaling across hosts beside the planner (`--scaling`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;

#[derive(Args, Debug)]
pub struct PlotArgs {
    /// Run directories (each holding metrics.jsonl); several are overlaid, e.g. one
    /// worker against four.
    #[arg(required_unless_present = "scaling", conflicts_with = "scaling")]
    runs: Vec<PathBuf>,
    /// Instead of runs: the scaling measurements `scripts/netns-scaling.sh --out DIR`
    /// wrote (DIR/scaling.jsonl): print the table (rounds averaged, the planner's
    /// prediction and error) and plot busbw and samples/s against hosts.
    #[arg(long, value_name = "FILE")]
    scaling: Option<PathBuf>,
    /// Output path without extension; writes OUT.svg and OUT.png [default:
    /// RUN/curves for one run, ./curves for several, FILE's directory/scaling].
    #[arg(long)]
    out: Option<PathBuf>,
}

/// `dlc plot`.
pub fn plot(args: PlotArgs) -> Result<()> {
    if let Some(file) = &args.scaling {
        return scaling(file, args.out.as_deref());
    }
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

/// `dlc plot --scaling FILE`: the table on stdout, then the plot's files.
fn scaling(file: &Path, out: Option<&Path>) -> Result<()> {
    use dlc_plan::scaling;
    let summary = scaling::summarize(&scaling::load(file)?);
    print!("{}", scaling::table(&summary));
    let stem = match out {
        Some(o) => o.to_path_buf(),
        None => file.with_file_name("scaling"),
    };
    let files = scaling::write_plot(&stem, &summary)?;
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    println!("plot: {}", names.join(", "));
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
