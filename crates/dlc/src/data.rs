//! `dlc data …`: converting a job's data to other formats.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use dlc_data::dataset::IdxFiles;
use dlc_data::ImageDataset;

/// Data commands.
#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Write a job's IDX images (e.g. Fashion-MNIST) as an image folder
    /// (`OUT/train/<class>/*.png`, `OUT/test/<class>/*.png`), or as CSV
    /// or Parquet tables (`OUT/train.csv|parquet`, `OUT/test.…`: label, then raw
    /// pixels 0–255; or `image` PNG bytes and `label`).
    Export(ExportArgs),
}

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// One PNG per image in one folder per class.
    Png,
    /// A CSV table per split.
    Csv,
    /// A Parquet table per split (`label`, then one UInt8 column per pixel).
    Parquet,
    /// A Parquet table per split of PNG-encoded images (`image`, `label`): train on it
    /// with `image_column = "image"`.
    ParquetPng,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Job file whose `[data]` names IDX images (a named dataset or the four paths).
    job: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "png")]
    to: ExportFormat,
    /// Output directory (created).
    #[arg(long)]
    out: PathBuf,
}

/// Runs a data command.
pub fn run(cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Export(a) => export(a),
    }
}

fn export(a: ExportArgs) -> Result<()> {
    let job = crate::train::native_job(&a.job)?;
    let d = &job.data;
    let files = match (&d.dataset, &d.train_images) {
        (Some(_), _) => IdxFiles::fashion_mnist(d.dir.as_deref())?,
        (None, Some(ti)) => IdxFiles {
            train_images: ti.clone(),
            train_labels: d
                .train_labels
                .clone()
                .context("[data] lacks train_labels")?,
            test_images: d.test_images.clone().context("[data] lacks test_images")?,
            test_labels: d.test_labels.clone().context("[data] lacks test_labels")?,
        },
        (None, None) => bail!(
            "{} reads {}; `dlc data export` converts IDX images (a named dataset or \
             train_images/…)",
            a.job.display(),
            d.path
                .as_deref()
                .map_or("no IDX data".into(), |p| p.display().to_string())
        ),
    };
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let t0 = Instant::now();
    for (split, images, labels, limit) in [
        ("train", &files.train_images, &files.train_labels, d.limit),
        ("test", &files.test_images, &files.test_labels, d.test_limit),
    ] {
        let ds = ImageDataset::load(images, labels, limit)?;
        match a.to {
            ExportFormat::Png => {
                let dir = a.out.join(split);
                dlc_data::folder::write_folder(&ds, &dir)
                    .with_context(|| format!("writing {}", dir.display()))?;
                eprintln!(
                    "{split}: {} images → {}/<class>/*.png",
                    ds.len(),
                    dir.display()
                );
            }
            ExportFormat::Csv => {
                let file = a.out.join(format!("{split}.csv"));
                ds.write_csv(&file)
                    .with_context(|| format!("writing {}", file.display()))?;
                eprintln!("{split}: {} rows → {}", ds.len(), file.display());
            }
            ExportFormat::Parquet => {
                let file = a.out.join(format!("{split}.parquet"));
                ds.write_parquet(&file)?;
                eprintln!("{split}: {} rows → {}", ds.len(), file.display());
            }
            ExportFormat::ParquetPng => {
                let file = a.out.join(format!("{split}.parquet"));
                ds.write_parquet_images(&file)?;
                eprintln!("{split}: {} PNG images → {}", ds.len(), file.display());
            }
        }
    }
    eprintln!("done in {:.1}s", t0.elapsed().as_secs_f64());
    Ok(())
}
