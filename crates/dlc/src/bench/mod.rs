//! `dlc bench …`.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use dlc_bench::allreduce::{self, Row};
use dlc_bench::matmul::{self, Budget, Dtype};
use dlc_bench::size::{format_size, parse_size};
use dlc_train::backend::{Cpu, Gpu, GpuDevice};
use dlc_train::device::probe_cuda;

mod train;

/// Benchmarks.
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Time all-reduce over N local processes; report bus bandwidth against a memcpy
    /// and a TCP-loopback ceiling measured in the same run.
    Allreduce(AllreduceArgs),
    /// Time a job's data pipeline with training switched off: loading (decoding)
    /// the data, then one rank's batches through the prefetching loader.
    Data(DataArgs),
    /// Time square matrix products on CPU and GPU over sizes and dtypes; print time,
    /// GFLOP/s and GPU/CPU speedup; write matmul.csv, matmul.json and plots.
    Matmul(MatmulArgs),
    /// Time a job's training steps per CPU thread count (steady state, interleaved
    /// rounds), timed as PyTorch training usually is: samples/s to compare.
    Train(train::TrainArgs),
}

#[derive(Args, Debug)]
pub struct MatmulArgs {
    /// Devices, comma-separated: cpu, cuda (cuda:N). Default: cpu, plus cuda when usable.
    #[arg(long, value_delimiter = ',')]
    device: Vec<String>,
    /// Element types, comma-separated: f32, f16, bf16, f64.
    #[arg(long, value_delimiter = ',', default_value = "f32", value_parser = Dtype::parse)]
    dtype: Vec<Dtype>,
    /// Matrix sizes n (n x n), comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "128,256,512,1024,2048,4096,8192"
    )]
    sizes: Vec<usize>,
    /// Timed products per cell (at most; fewer once a cell has used --budget seconds).
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// Seconds per cell; larger sizes whose single product would exceed it are skipped.
    #[arg(long, default_value_t = 3.0)]
    budget: f64,
    /// Output directory for matmul.csv, matmul.json and the plots.
    #[arg(long, default_value = "bench-matmul")]
    out: std::path::PathBuf,
    /// Print rows as JSON lines instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct DataArgs {
    /// Job file whose `[data]` and `[train]` (batch size, seed) to use.
    job: std::path::PathBuf,
    /// Epochs to run through the loader.
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// Time rank 0's share of this many workers (default: the job's workers).
    #[arg(long)]
    workers: Option<usize>,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
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
    /// Socket buffers of the links: `auto` (Linux's autotuning) or a size such as
    /// 4MiB (fixed, capped by net.core.rmem_max). Default: what training uses.
    #[arg(long, value_parser = parse_buffer)]
    socket_buffer: Option<Buffer>,
    /// What carries the links: `auto` (shared memory between ranks on one host, TCP
    /// between hosts; what training uses), `tcp` (TCP everywhere) or `shm`.
    #[arg(long, default_value = "auto")]
    transport: dlc_comm::Transport,
    /// TCP streams per pair of ranks on TCP links (1 to 16; `[distributed]
    /// tcp_streams`): more than one deals each message over them in 128 KiB pieces.
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// How the f32 buffers travel: `none` (f32), `bf16` or `fp16` (half the bytes;
    /// what `[distributed] compression` does to gradients). Sizes and bandwidths
    /// count the f32 buffer.
    #[arg(long, default_value = "none")]
    compression: dlc_comm::Compression,
    /// Write the fitted ring model (bandwidth, latency per hop) to this file, for
    /// `dlc plan --comm-profile` (with --worker: rank 0 writes it).
    #[arg(long, value_name = "FILE")]
    save: Option<std::path::PathBuf>,
    /// Rate of the links between the hosts (e.g. 10gbit, 200mbit), recorded in the
    /// saved profile: the planner then applies the fraction of a link dlc reached to
    /// every instance's network.
    #[arg(long, value_parser = parse_link)]
    link: Option<f64>,
    /// Run as one rank of a job started by a launcher (srun, mpirun, torchrun, or the
    /// DLC_* variables), e.g. one rank per host to measure the network between hosts;
    /// rank 0 prints `{"event":"summary","medians":[[bytes, seconds], …],"hosts":H}`.
    #[arg(long)]
    worker: bool,
    #[arg(long, hide = true)]
    tcp_source: Option<String>,
    #[arg(long, hide = true)]
    tcp_bytes: Option<usize>,
}

/// Runs a benchmark command.
pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Allreduce(a) => allreduce_cmd(a),
        BenchCommand::Data(a) => data_cmd(a),
        BenchCommand::Matmul(a) => matmul_cmd(a),
        BenchCommand::Train(a) => train::run(a),
    }
}

fn data_cmd(a: DataArgs) -> Result<()> {
    let job = crate::train::native_job(&a.job)?;
    let workers = a.workers.unwrap_or(job.distributed.workers);
    if workers == 0 || a.epochs == 0 {
        bail!("--workers and --epochs must be at least 1");
    }
    let start = std::time::Instant::now();
    let data = dlc_train::data::JobData::load(&job.data, job.train.seed)?;
    let load_s = start.elapsed().as_secs_f64();
    let samples = data.train.len() + data.test.len();
    let source = data.batches(&job.train, 0, workers);
    let mut batches = 0usize;
    let mut delivered = 0usize;
    let mut checksum = 0.0f64;
    let start = std::time::Instant::now();
    for epoch in 0..a.epochs {
        let mut loader = dlc_data::Prefetch::start(source.epoch(epoch, 0), 4)?;
        while let Some(batch) = loader.next_batch() {
            let batch = batch?;
            // Touch the batch so that nothing is optimised away.
            checksum += batch.inputs.first().copied().unwrap_or(0.0) as f64;
            delivered += batch.len();
            batches += 1;
        }
    }
    let loader_s = start.elapsed().as_secs_f64();
    let row = serde_json::json!({
        "job": job.display_name(),
        "samples": samples,
        "load_s": load_s,
        "load_samples_per_sec": samples as f64 / load_s.max(1e-9),
        "workers": workers,
        "epochs": a.epochs,
        "batches": batches,
        "loader_samples": delivered,
        "loader_samples_per_sec": delivered as f64 / loader_s.max(1e-9),
        "train_set": data.train.describe(),
        "checksum": checksum,
    });
    if a.json {
        println!("{row}");
        return Ok(());
    }
    println!(
        "load: {samples} samples (train + test) read and decoded in {load_s:.2} s = {:.0} samples/s",
        samples as f64 / load_s.max(1e-9)
    );
    println!(
        "loader: {batches} batches ({delivered} samples, rank 0 of {workers}, {} epoch(s); {}) in {loader_s:.2} s = {:.0} samples/s",
        a.epochs,
        data.train.describe(),
        delivered as f64 / loader_s.max(1e-9)
    );
    println!(
        "compare with training's samples/s (metrics.jsonl) and `data_s`, the time a step waited for its batch"
    );
    Ok(())
}

fn allreduce_cmd(a: AllreduceArgs) -> Result<()> {
    if let Some(addr) = &a.tcp_source {
        return Ok(allreduce::tcp_source(
            addr,
            a.tcp_bytes.unwrap_or(0),
            a.iters,
            a.buffer(),
        )?);
    }
    if a.ranks == 0 {
        bail!("--ranks must be at least 1");
    }
    if !(1..=dlc_comm::MAX_TCP_STREAMS).contains(&a.streams) {
        bail!(
            "--streams must be 1 to {}, not {}",
            dlc_comm::MAX_TCP_STREAMS,
            a.streams
        );
    }
    if a.sizes.iter().any(|&s| !s.is_multiple_of(4)) {
        bail!("sizes must be multiples of 4 bytes (f32 elements)");
    }
    if a.save.is_some() && a.compression != dlc_comm::Compression::None {
        bail!("--save records the f32 all-reduce the planner models: leave out --compression");
    }
    if a.link.is_some() && a.save.is_none() {
        bail!("--link is recorded in the profile that --save writes: give --save FILE too");
    }
    if a.worker {
        return bench_worker(&a);
    }
    let rows = allreduce_rows(
        a.ranks,
        &a.sizes,
        a.iters.max(1),
        Duration::from_secs(a.timeout),
        &Links {
            socket_buffer: a.buffer(),
            transport: a.transport,
            streams: a.streams,
            compression: a.compression,
        },
    )?;
    if let Some(path) = &a.save {
        let medians: Vec<(usize, f64)> = rows.iter().map(|r| (r.bytes, r.median_s)).collect();
        save_comm_profile(path, a.ranks, 1, &medians, a.link)?;
    }
    if a.json {
        for r in &rows {
            println!("{}", serde_json::to_string(r)?);
        }
    } else {
        print_table(&rows);
    }
    Ok(())
}

/// How the all-reduce benchmark's ranks link and what travels.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Links {
    /// Socket buffers (`None`: Linux's autotuning).
    pub socket_buffer: Option<usize>,
    /// What carries the links.
    pub transport: dlc_comm::Transport,
    /// TCP streams per pair on TCP links.
    pub streams: usize,
    /// How the f32 buffers travel.
    pub compression: dlc_comm::Compression,
}

/// Runs the all-reduce benchmark over `ranks` local processes: the same local launcher
/// as `dlc train --workers` (its coordinator, die-with-parent children, and a failed
/// rank named with its last lines), then the ceilings of each size in this process.
pub(crate) fn allreduce_rows(
    ranks: usize,
    sizes: &[usize],
    iters: usize,
    timeout: Duration,
    links: &Links,
) -> Result<Vec<Row>> {
    let Links {
        socket_buffer,
        transport,
        streams,
        compression,
    } = *links;
    let exe = std::env::current_exe().context("locating the dlc binary")?;
    let size_arg = sizes.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let outcome = dlc_launch::local::run(&dlc_launch::local::LocalJob {
        exe: exe.clone(),
        args: vec![
            "bench".into(),
            "allreduce".into(),
            "--worker".into(),
            "--sizes".into(),
            size_arg.join(","),
            "--iters".into(),
            iters.to_string(),
            "--timeout".into(),
            timeout.as_secs().to_string(),
            "--socket-buffer".into(),
            socket_buffer.map_or("auto".into(), |b| b.to_string()),
            "--transport".into(),
            transport.to_string(),
            "--streams".into(),
            streams.to_string(),
            "--compression".into(),
            compression.to_string(),
        ],
        world: ranks,
        workers: ranks,
        name: "bench-allreduce".into(),
        timeout,
        quiet: true,
        max_restarts: 0,
        min_workers: None,
        foreign: false,
        workdir: None,
    })
    .context("all-reduce benchmark failed")?;
    let medians: Vec<(usize, f64)> = outcome
        .summary
        .as_ref()
        .and_then(|v| serde_json::from_value(v["medians"].clone()).ok())
        .context("rank 0 of the all-reduce benchmark reported no timings")?;
    if medians.len() != sizes.len() {
        bail!("rank 0 reported {} of {} sizes", medians.len(), sizes.len());
    }
    let used = outcome
        .summary
        .as_ref()
        .and_then(|v| v["transport"].as_str())
        .unwrap_or("?")
        .to_string();
    Ok(allreduce::rows(
        &exe,
        ranks,
        &medians,
        iters,
        socket_buffer,
        &used,
        compression,
    )?)
}

/// Fits the ring model to `medians` and writes it to `path` as a communication
/// profile for `dlc plan --comm-profile`; says what it fitted on stderr.
fn save_comm_profile(
    path: &std::path::Path,
    ranks: usize,
    hosts: usize,
    medians: &[(usize, f64)],
    link_gbps: Option<f64>,
) -> Result<()> {
    let mut p = dlc_plan::CommProfile::fit(ranks, hosts, medians)
        .context("fitting the all-reduce model (--save)")?;
    p.link_gbps = link_gbps;
    std::fs::write(path, serde_json::to_string_pretty(&p)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!("communication profile {}: {}", path.display(), p.describe());
    Ok(())
}

/// `--link`: a rate in bits per second (`200mbit`, `10gbit`) as GB/s.
fn parse_link(s: &str) -> Result<f64, String> {
    let t = s.trim().to_ascii_lowercase();
    let (num, scale) = [("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)]
        .iter()
        .find_map(|(u, k)| t.strip_suffix(u).map(|n| (n.to_string(), *k)))
        .ok_or_else(|| {
            format!("{s}: give the link rate in bits per second, e.g. 10gbit or 200mbit")
        })?;
    match num.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v * scale / 8.0 / 1e9),
        _ => Err(format!(
            "{s}: give the link rate in bits per second, e.g. 10gbit or 200mbit"
        )),
    }
}

/// One process of `dlc bench allreduce`: identity from the launcher's variables; rank
/// 0 reports the medians as the launcher's summary event.
fn bench_worker(a: &AllreduceArgs) -> Result<()> {
    dlc_launch::die_with_parent();
    let id = dlc_launch::env::from_process_env("")?;
    let timeout = Duration::from_secs(a.timeout);
    // Under srun, mpirun or torchrun (ranks on several hosts) rank 0 hosts the rendezvous.
    let coordinator = id
        .host_coordinator(timeout)
        .with_context(|| format!("rank 0 cannot host the coordinator at {}", id.bind_addr()))?;
    let mut cfg = dlc_comm::CommConfig::new(&id.coordinator, id.key(), id.rank, id.world);
    cfg.timeout = timeout;
    cfg.join_timeout = cfg.timeout;
    cfg.socket_buffer = a.buffer();
    cfg.transport = a.transport;
    cfg.tcp_streams = a.streams;
    let t = allreduce::worker(cfg, &a.sizes, a.iters.max(1), a.compression)?;
    if let Some(c) = coordinator {
        c.shutdown(timeout);
    }
    if id.rank == 0 {
        if let Some(path) = &a.save {
            save_comm_profile(path, id.world, t.hosts, &t.medians, a.link)?;
        }
        println!(
            "{}",
            serde_json::json!({"event": "summary", "medians": t.medians, "hosts": t.hosts, "transport": t.transport})
        );
    }
    Ok(())
}

fn print_table(rows: &[Row]) {
    let wire = match rows.first().map_or("none", |r| r.compression.as_str()) {
        "none" | "" => "f32".to_string(),
        c => format!("f32 sent as {c}"),
    };
    println!(
        "all-reduce, {} ranks over {} ({wire}, sum); GB/s = 1e9 bytes/s; busbw = algbw x 2(n-1)/n",
        rows.first().map_or(0, |r| r.ranks),
        rows.first().map_or("?", |r| r.transport.as_str())
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

fn matmul_cmd(a: MatmulArgs) -> Result<()> {
    if a.sizes.is_empty() || a.sizes.contains(&0) {
        bail!("--sizes must be positive");
    }
    let mut devices: Vec<String> = a.device.clone();
    if devices.is_empty() {
        devices.push("cpu".into());
        match probe_cuda() {
            Ok(_) => devices.push("cuda".into()),
            Err(why) => eprintln!("note: no usable GPU ({why}); benchmarking the CPU only"),
        }
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let budget = Budget {
        iters: a.iters.max(1),
        per_cell: Duration::from_secs_f64(a.budget.max(0.01)),
    };
    let json = a.json;
    let print = |r: &matmul::Row| {
        if json {
            println!("{}", serde_json::to_string(r).unwrap_or_default());
        } else {
            println!(
                "{:>8} {:>5} {:>6} {:>12} {:>10.1}",
                r.device,
                r.dtype,
                r.n,
                format!("{:.3} ms", r.median_s * 1e3),
                r.gflops
            );
        }
    };
    if !json {
        println!(
            "{:>8} {:>5} {:>6} {:>12} {:>10}",
            "device", "dtype", "n", "median", "GFLOP/s"
        );
    }
    let mut rows = Vec::new();
    for dev in &devices {
        let gpu = match dev.as_str() {
            "cpu" => None,
            "cuda" | "gpu" => Some(0),
            d => match d.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
                Some(i) => Some(i),
                None => bail!("unknown device `{d}` (use cpu, cuda or cuda:N)"),
            },
        };
        if let Some(i) = gpu {
            let report =
                probe_cuda().map_err(|why| anyhow::anyhow!("device {dev} requested but {why}"))?;
            if i >= report.gpus.len() {
                bail!(
                    "device cuda:{i} requested but only {} GPU(s) are visible",
                    report.gpus.len()
                );
            }
        }
        for &dtype in &a.dtype {
            let (mut r, skipped) = match gpu {
                None => matmul::framework::<Cpu>(
                    &Default::default(),
                    "cpu",
                    dtype,
                    &a.sizes,
                    budget,
                    print,
                ),
                Some(i) => matmul::framework::<Gpu>(
                    &GpuDevice::new(i),
                    &format!("cuda:{i}"),
                    dtype,
                    &a.sizes,
                    budget,
                    print,
                ),
            }
            .map_err(|e| anyhow::anyhow!(e))?;
            if !skipped.is_empty() {
                eprintln!(
                    "note: {dev} {}: skipped n = {skipped:?} (a product would exceed the {}s budget; raise --budget)",
                    dtype.name(),
                    a.budget
                );
            }
            rows.append(&mut r);
            match (gpu, matmul::cublas_present()) {
                (Some(i), Ok(())) => {
                    let mut r = matmul::cublas(i, dtype, &a.sizes, budget, print)
                        .map_err(|e| anyhow::anyhow!(e))?;
                    rows.append(&mut r);
                }
                (Some(_), Err(why)) => {
                    eprintln!(
                        "note: {dev} {}: no cuBLAS reference rows: {why}",
                        dtype.name()
                    )
                }
                (None, _) => {}
            }
        }
    }
    print_speedups(&rows, json);
    matmul::write_tables(&a.out, &rows)
        .with_context(|| format!("writing tables into {}", a.out.display()))?;
    let files = match dlc_bench::plot::write_plots(&a.out, &rows) {
        Ok(f) => f,
        Err(why) => {
            eprintln!("note: plots skipped: {why}");
            Vec::new()
        }
    };
    if !json {
        println!(
            "wrote {} and {}",
            a.out.join("matmul.csv").display(),
            files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

fn print_speedups(rows: &[matmul::Row], json: bool) {
    if json {
        return;
    }
    let gpu: Vec<&matmul::Row> = rows.iter().filter(|r| r.device != "cpu").collect();
    if gpu.is_empty() {
        return;
    }
    println!("speedup over cpu (same dtype and n):");
    for g in gpu {
        if let Some(c) = rows
            .iter()
            .find(|c| c.device == "cpu" && c.dtype == g.dtype && c.n == g.n)
        {
            println!(
                "{:>8} {:>5} {:>6} {:>9.1}x",
                g.device,
                g.dtype,
                g.n,
                g.gflops / c.gflops
            );
        }
    }
}

/// A `--socket-buffer` value.
#[derive(Debug, Clone, Copy)]
pub enum Buffer {
    /// Linux's autotuning.
    Auto,
    /// A fixed size in bytes.
    Fixed(usize),
}

fn parse_buffer(s: &str) -> Result<Buffer, String> {
    if s.eq_ignore_ascii_case("auto") {
        Ok(Buffer::Auto)
    } else {
        parse_size(s).map(Buffer::Fixed)
    }
}

impl AllreduceArgs {
    /// The socket buffer setting to use (`None`: autotuning).
    fn buffer(&self) -> Option<usize> {
        match self.socket_buffer {
            None => dlc_comm::transport::SOCKET_BUFFER,
            Some(Buffer::Auto) => None,
            Some(Buffer::Fixed(b)) => Some(b),
        }
    }
}
