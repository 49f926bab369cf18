//! `dlc bench …`.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use dlc_bench::allreduce::{self, Row};
use dlc_bench::size::{format_size, parse_size};

/// Benchmarks.
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Time all-reduce over N local processes; report bus bandwidth against a memcpy
    /// and a TCP-loopback ceiling measured in the same run.
    Allreduce(AllreduceArgs),
}

#[derive(Args, Debug)]
pub struct AllreduceArgs {
    /// Number of worker processes.
    #[arg(long, default_value_t = 2)]
    ranks: usize,
    /// Buffer sizes, comma-separated (B, KiB, MiB, GiB).
    #[arg(long, value_delimiter = ',', default_value = "4KiB,64KiB,1MiB,16MiB,64MiB", value_parser = parse_size)]
    sizes: Vec<usize>,
    /// Timed iterations per size (at least 50 for sizes up to 1 MiB).
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// Seconds a rank may wait on another before failing.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    #[arg(long, hide = true)]
    worker_rank: Option<usize>,
    #[arg(long, hide = true)]
    coordinator: Option<String>,
    #[arg(long, hide = true)]
    tcp_source: Option<String>,
    #[arg(long, hide = true)]
    tcp_bytes: Option<usize>,
}

/// Runs a benchmark command.
pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Allreduce(a) => allreduce_cmd(a),
    }
}

fn allreduce_cmd(a: AllreduceArgs) -> Result<()> {
    if let Some(addr) = &a.tcp_source {
        return Ok(allreduce::tcp_source(
            addr,
            a.tcp_bytes.unwrap_or(0),
            a.iters,
        )?);
    }
    if a.ranks == 0 {
        bail!("--ranks must be at least 1");
    }
    if a.sizes.iter().any(|&s| !s.is_multiple_of(4)) {
        bail!("sizes must be multiples of 4 bytes (f32 elements)");
    }
    if let Some(rank) = a.worker_rank {
        let coord = a
            .coordinator
            .as_deref()
            .context("--worker-rank needs --coordinator")?;
        return Ok(allreduce::worker(rank, a.ranks, coord, &a.sizes, a.iters)?);
    }
    let exe = std::env::current_exe().context("locating the dlc binary")?;
    let rows = allreduce::run(
        &exe,
        a.ranks,
        &a.sizes,
        a.iters.max(1),
        Duration::from_secs(a.timeout),
    )
    .context("all-reduce benchmark failed")?;
    if a.json {
        for r in &rows {
            println!("{}", serde_json::to_string(r)?);
        }
    } else {
        print_table(&rows);
    }
    Ok(())
}

fn print_table(rows: &[Row]) {
    println!(
        "all-reduce, {} ranks (f32, sum); GB/s = 1e9 bytes/s; busbw = algbw x 2(n-1)/n",
        rows.first().map_or(0, |r| r.ranks)
    );
    println!(
        "{:>8} {:>12} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9}",
        "size", "median", "algbw", "busbw", "memcpy", "tcp", "bus/tcp", "bus/mcpy"
    );
    for r in rows {
        let t = if r.median_s < 1e-3 {
            format!("{:.1} us", r.median_s * 1e6)
        } else {
            format!("{:.2} ms", r.median_s * 1e3)
        };
        println!(
            "{:>8} {:>12} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>8.0}% {:>8.0}%",
            format_size(r.bytes),
            t,
            r.algbw_gbps,
            r.busbw_gbps,
            r.memcpy_gbps,
            r.tcp_gbps,
            100.0 * r.busbw_gbps / r.tcp_gbps,
            100.0 * r.busbw_gbps / r.memcpy_gbps
        );
    }
}
