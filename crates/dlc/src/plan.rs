//! `dlc instances`, `dlc profile`, `dlc plan`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use dlc_job::JobSpec;
use dlc_plan::{estimate_all, within, Assumptions, Catalog, Estimate, Profile};
use dlc_train::data::JobData;
use dlc_train::TrainOptions;

#[derive(Args, Debug)]
pub struct InstancesArgs {
    /// Only instances with this GPU model (e.g. V100).
    #[arg(long)]
    gpu: Option<String>,
    /// Catalog file [default: the built-in catalog/instances.toml].
    #[arg(long)]
    catalog: Option<PathBuf>,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct ProfileArgs {
    /// Job file.
    job: PathBuf,
    /// Device: auto, cpu, cuda, cuda:N.
    #[arg(long)]
    device: Option<dlc_job::DeviceSpec>,
    /// Training steps to time.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// CPU threads (1 measures the per-core rate the planner scales from).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Where to write the profile.
    #[arg(long, default_value = "profile.json")]
    out: PathBuf,
}

#[derive(Args, Debug)]
pub struct PlanArgs {
    /// Job file.
    job: PathBuf,
    /// Profile from `dlc profile` [default: measure one now].
    #[arg(long)]
    profile: Option<PathBuf>,
    /// Epochs [default: the job's].
    #[arg(long)]
    epochs: Option<usize>,
    /// Only plans that finish within this time (e.g. 90m, 2h, 1d).
    #[arg(long)]
    deadline: Option<String>,
    /// Only plans that cost at most this many dollars.
    #[arg(long)]
    budget: Option<f64>,
    /// Largest number of instances to consider.
    #[arg(long, default_value_t = 4)]
    max_nodes: usize,
    /// Catalog file [default: the built-in catalog].
    #[arg(long)]
    catalog: Option<PathBuf>,
    /// Fraction of a GPU's f32 peak the training reaches (an assumption until measured on that GPU).
    #[arg(long, default_value_t = 0.2)]
    gpu_efficiency: f64,
    /// Show every estimate's inputs.
    #[arg(long)]
    explain: bool,
    /// Rows to print (the CSV has all).
    #[arg(long, default_value_t = 25)]
    top: usize,
    /// Directory for plan.csv, plan.svg, plan.png (and profile.json when measured).
    #[arg(long, default_value = "plan")]
    out: PathBuf,
    /// Predict 2 local ring workers from a 1-worker profile, run them, compare.
    #[arg(long)]
    validate: bool,
    /// Measured network terms from `dlc bench allreduce --save FILE` (repeatable):
    /// one host's ring sets the bandwidth and latency within a node, a ring across
    /// hosts the latency between nodes (and, with --link, the fraction of a link
    /// reached) [default: 2.5 GB/s and 50 µs, assumed].
    #[arg(long, value_name = "FILE")]
    comm_profile: Vec<PathBuf>,
}

fn load_catalog(path: &Option<PathBuf>) -> Result<Catalog> {
    Ok(match path {
        Some(p) => Catalog::from_file(p)?,
        None => Catalog::builtin(),
    })
}

/// `dlc instances`.
pub fn instances(a: InstancesArgs) -> Result<()> {
    let cat = load_catalog(&a.catalog)?;
    let rows: Vec<_> = cat
        .instances
        .iter()
        .filter(|i| {
            a.gpu
                .as_ref()
                .is_none_or(|g| i.gpu.as_deref().is_some_and(|x| x.eq_ignore_ascii_case(g)))
        })
        .collect();
    if a.gpu.is_some() && rows.is_empty() {
        bail!(
            "no instance has GPU `{}` (known: {})",
            a.gpu.as_deref().unwrap_or(""),
            cat.gpus.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    if a.json {
        for i in rows {
            let mut v = serde_json::to_value(i)?;
            v["gpu_peak"] = serde_json::to_value(cat.gpu_of(i))?;
            println!("{v}");
        }
        return Ok(());
    }
    println!(
        "{:<14} {:>4} {:<6} {:>5} {:>7} {:>8} {:<9} {:>9} {:>9}  price date/region",
        "instance", "gpus", "gpu", "vcpu", "mem GiB", "net GB/s", "gpu link", "f32 TF/s", "$/hour"
    );
    for i in rows {
        let tf = cat.gpu_of(i).map_or(0.0, |g| g.fp32_tflops * i.gpus as f64);
        println!(
            "{:<14} {:>4} {:<6} {:>5} {:>7.0} {:>8.2} {:<9} {:>9.1} {:>9.3}  {} {}",
            i.name,
            i.gpus,
            i.gpu.as_deref().unwrap_or("-"),
            i.vcpus,
            i.memory_gib,
            i.network_gbps,
            format!("{:?}", i.gpu_link).to_lowercase(),
            tf,
            i.price_per_hour,
            i.price_date,
            i.region
        );
    }
    Ok(())
}

/// Measures a profile of `job` with a short training burst.
fn measure(job: &JobSpec, steps: usize, threads: usize) -> Result<Profile> {
    dlc_train::backend::set_cpu_threads(Some(threads));
    let data = JobData::load(&job.data, job.train.seed)?;
    let plan = data.model_plan(&job.model)?;
    let params: usize = plan.iter().map(|l| l.params).sum();
    let fwd: u64 = plan.iter().map(|l| l.flops).sum();
    // Steady-state seconds per step at batch size `batch`: the median step after
    // the first fifth (allocation and caches warm up there), robust to the odd slow
    // step a busy machine adds.
    let tmp = tempfile::tempdir()?;
    let burst = |batch: usize, name: &str| -> Result<(f64, dlc_train::TrainSummary)> {
        let mut burst = job.clone();
        burst.data.test_limit = Some(1);
        burst.train.batch_size = batch;
        burst.train.log_every = 1;
        burst.train.checkpoint_every = None;
        let run = tmp.path().join(name);
        let opts = TrainOptions {
            max_steps: Some(steps.max(2)),
            out: Some(run.clone()),
            quiet: true,
            ..Default::default()
        };
        let s = dlc_train::train(&burst, &opts).context("profiling run failed")?;
        let sps = steady_samples_per_sec(&run, steps)?.unwrap_or(s.samples_per_sec);
        Ok((batch as f64 / sps, s))
    };
    let batch = job.train.batch_size;
    let (t_full, s) = burst(batch, "full")?;
    // Half the batch as well: what a step costs whatever its size (t0) is what a
    // data-parallel worker cannot divide.
    let step_overhead_s = if batch >= 2 {
        let (t_half, _) = burst(batch / 2, "half")?;
        dlc_plan::profile::fit_step_overhead((batch / 2, t_half), (batch, t_full)).0
    } else {
        0.0
    };
    let flops = 3.0 * fwd as f64;
    let pixels = data.input_shape().numel();
    Ok(Profile {
        job: job.display_name().into(),
        device: s.device.clone(),
        cpu_model: dlc_train::device::cpu_info().model,
        gpu: gpu_name(&s.device),
        threads,
        params,
        // Gradients as they travel: f32, or half of it with bf16/fp16 compression.
        grad_bytes: params
            * dlc_train::worker::wire_compression(job.distributed.compression).wire_bytes(),
        flops_per_sample: flops,
        samples_per_sec: batch as f64 / t_full,
        seconds_per_sample: t_full / batch as f64,
        achieved_flops: flops * batch as f64 / t_full,
        data_bytes_per_sample: pixels + 1,
        batch_size: job.train.batch_size,
        train_samples: data.train.len(),
        epochs: job.train.epochs,
        steps_measured: s.global_step,
        step_overhead_s,
    })
}

/// The name `dlc devices` reports for `cuda:N`; `None` for the CPU.
fn gpu_name(device: &str) -> Option<String> {
    let index: usize = device.strip_prefix("cuda:")?.parse().ok()?;
    let report = dlc_train::device::probe_cuda().ok()?;
    report
        .gpus
        .into_iter()
        .find(|g| g.index == index)
        .map(|g| g.name)
}

/// The median samples/s of a run's step lines after the first fifth of `steps`
/// (written with `log_every = 1`); `None` when there are none.
fn steady_samples_per_sec(run: &Path, steps: usize) -> Result<Option<f64>> {
    let skip = (steps / 5).max(1) as u64;
    let mut rates: Vec<f64> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .with_context(|| format!("reading {}/metrics.jsonl", run.display()))?
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "step" && v["step"].as_u64().is_some_and(|n| n > skip))
        .filter_map(|v| v["samples_per_sec"].as_f64())
        .collect();
    rates.sort_by(f64::total_cmp);
    Ok(rates.get(rates.len() / 2).copied())
}

fn write_profile(p: &Profile, path: &Path) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(p)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// `dlc profile`.
pub fn profile_cmd(a: ProfileArgs) -> Result<()> {
    let mut job = crate::train::native_job(&a.job)?;
    if let Some(d) = a.device {
        job.train.device = d;
    }
    let p = measure(&job, a.steps, a.threads)?;
    write_profile(&p, &a.out)?;
    println!(
        "{}: {} parameters ({} gradient bytes/step), {:.3} MFLOP/sample (fwd+bwd), {:.0} samples/s on {} ({} thread(s)) = {:.2} GFLOP/s achieved; a step = {:.3} ms fixed + {:.2} µs per sample; wrote {}",
        p.job,
        p.params,
        p.grad_bytes,
        p.flops_per_sample / 1e6,
        p.samples_per_sec,
        p.device,
        p.threads,
        p.achieved_flops / 1e9,
        p.step_overhead_s * 1e3,
        p.seconds_per_extra_sample() * 1e6,
        a.out.display()
    );
    Ok(())
}

fn hms(s: f64) -> String {
    let s = s.round() as u64;
    format!("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

fn write_csv(dir: &Path, es: &[Estimate]) -> Result<()> {
    let mut csv = String::from(
        "instance,nodes,workers,strategy,compute_s,comm_s,step_s,steps,total_s,cost_usd,pareto\n",
    );
    for e in es {
        csv.push_str(&format!(
            "{},{},{},{},{:.6},{:.6},{:.6},{},{:.1},{:.4},{}\n",
            e.instance,
            e.nodes,
            e.workers,
            e.strategy,
            e.compute_s,
            e.comm_s,
            e.step_s,
            e.steps,
            e.total_s,
            e.cost,
            e.pareto
        ));
    }
    std::fs::write(dir.join("plan.csv"), csv).context("writing plan.csv")
}

/// `dlc plan`.
pub fn plan_cmd(a: PlanArgs) -> Result<()> {
    let job = crate::train::native_job(&a.job)?;
    let catalog = load_catalog(&a.catalog)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    if a.validate {
        return validate(&a, &job);
    }
    if !(a.gpu_efficiency > 0.0 && a.gpu_efficiency <= 1.0) {
        bail!("--gpu-efficiency must be in (0, 1]");
    }
    let profile: Profile = match &a.profile {
        Some(p) => serde_json::from_str(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("{} is not a profile written by `dlc profile`", p.display()))?,
        None => {
            eprintln!(
                "profiling {} on this machine (use --profile to reuse one)…",
                job.display_name()
            );
            let p = measure(&job, 20, 1)?;
            write_profile(&p, &a.out.join("profile.json"))?;
            p
        }
    };
    let deadline = a
        .deadline
        .as_deref()
        .map(|d| dlc_job::parse_duration(d).map(|d| d.as_secs_f64()))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let epochs = a.epochs.unwrap_or(job.train.epochs);
    let mut assumptions = Assumptions {
        gpu_efficiency: a.gpu_efficiency,
        ..Default::default()
    };
    for path in &a.comm_profile {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let p: dlc_plan::CommProfile = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a communication profile written by `dlc bench allreduce --save`",
                path.display()
            )
        })?;
        if !(p.bandwidth_gbps > 0.0 && p.bandwidth_gbps.is_finite() && p.latency_s >= 0.0) {
            bail!(
                "{}: bandwidth_gbps must be positive and latency_s non-negative",
                path.display()
            );
        }
        assumptions.apply(&p);
    }
    let all = estimate_all(&catalog, &profile, epochs, a.max_nodes, &assumptions);
    write_csv(&a.out, &all)?;
    match dlc_plan::plot::write_plot(&a.out, &all) {
        Ok(_) => {}
        Err(why) => eprintln!("note: plot skipped: {why}"),
    }
    let shown = within(all.clone(), deadline, a.budget);
    println!(
        "{}: {} epochs × {} steps; {:.2} GFLOP/step; {} gradient bytes; profile: {:.0} samples/s on {} ({} thread(s))",
        profile.job,
        epochs,
        profile.train_samples.div_ceil(profile.batch_size),
        profile.flops_per_sample * profile.batch_size as f64 / 1e9,
        profile.grad_bytes,
        profile.samples_per_sec,
        profile.device,
        profile.threads
    );
    if shown.is_empty() {
        println!(
            "no plan meets the deadline/budget; the {} candidates are in {}",
            all.len(),
            a.out.join("plan.csv").display()
        );
        return Ok(());
    }
    println!(
        "{:1} {:<14} {:>5} {:>7} {:<6} {:>10} {:>10} {:>10} {:>10}",
        "", "instance", "nodes", "workers", "graph", "step ms", "comm ms", "time", "cost $"
    );
    for e in shown.iter().take(a.top) {
        println!(
            "{:1} {:<14} {:>5} {:>7} {:<6} {:>10.2} {:>10.3} {:>10} {:>10.2}",
            if e.pareto { "*" } else { "" },
            e.instance,
            e.nodes,
            e.workers,
            e.strategy.to_string(),
            e.step_s * 1e3,
            e.comm_s * 1e3,
            hms(e.total_s),
            e.cost
        );
        if a.explain {
            println!("    {}", e.explain);
        }
    }
    println!(
        "* = Pareto-optimal (nothing else is both cheaper and faster). {} of {} candidates shown; all in {}, plot in {}",
        shown.len().min(a.top),
        all.len(),
        a.out.join("plan.csv").display(),
        a.out.join("plan.png").display()
    );
    let within = if assumptions.sources.iter().any(|s| s.starts_with("within")) {
        "measured"
    } else {
        "assumed"
    };
    let between = if assumptions.sources.iter().any(|s| s.starts_with("between")) {
        "measured"
    } else {
        "assumed"
    };
    println!(
        "assumptions: GPU efficiency {} of f32 peak, {} s/step GPU overhead, no compute/communication overlap, {} s start-up; \
         within a node {:.3} GB/s and {:.1} µs per hop ({within}); between nodes {:.1} µs per hop and {:.0} % of the network ({between}){}",
        assumptions.gpu_efficiency,
        assumptions.gpu_step_overhead_s,
        assumptions.startup_s,
        assumptions.loopback_gbps,
        assumptions.latency_s * 1e6,
        assumptions.network_latency_s * 1e6,
        assumptions.network_efficiency * 100.0,
        if within == "assumed" || between == "assumed" {
            "; measure with `dlc bench allreduce --save F` and pass --comm-profile F"
        } else {
            ""
        }
    );
    for s in &assumptions.sources {
        println!("  {s}");
    }
    println!("  {}", gpu_source(&catalog, &profile, &assumptions));
    Ok(())
}

/// Where the GPU rows' efficiency comes from, for people.
fn gpu_source(catalog: &Catalog, p: &Profile, a: &Assumptions) -> String {
    let model = p.gpu.as_deref().and_then(|g| catalog.gpu_model_named(g));
    match (p.on_gpu(), model) {
        (false, _) => format!(
            "GPU instances: efficiency {} of the f32 peak is assumed (a CPU profile); \
             `dlc profile JOB --device cuda` on a GPU measures it",
            a.gpu_efficiency
        ),
        (true, Some(m)) => format!(
            "GPU instances: efficiency measured on {} ({m}); CPU instances are not priced \
             from a GPU profile",
            p.gpu.as_deref().unwrap_or(m)
        ),
        (true, None) => format!(
            "GPU instances: efficiency {} assumed — the profiled GPU `{}` is not in the \
             catalog (add it to a --catalog file); CPU instances are not priced from a GPU \
             profile",
            a.gpu_efficiency,
            p.gpu.as_deref().unwrap_or("?")
        ),
    }
}

/// `dlc plan --validate`: 1-worker profile → the model's estimate for 2 ring workers
/// here (its communication term the all-reduce measured now) → measured. Both the
/// profile and the run are on the CPU, whatever the job file says: the model's CPU
/// terms are what two local processes can check.
fn validate(a: &PlanArgs, job: &JobSpec) -> Result<()> {
    let steps = 30;
    let mut job = job.clone();
    job.train.device = dlc_job::DeviceSpec::Cpu;
    let job = &job;
    let p = measure(job, steps, 1)?;
    let exe = std::env::current_exe()?;
    // The f32 buffer a step all-reduces (gradients and the loss), sent as the job says.
    let bytes = (p.params + 3) * 4;
    let rows = crate::bench::allreduce_rows(
        2,
        &[bytes],
        10,
        Duration::from_secs(60),
        &crate::bench::Links {
            socket_buffer: dlc_comm::transport::SOCKET_BUFFER,
            transport: dlc_comm::Transport::Auto,
            streams: job.distributed.tcp_streams,
            compression: dlc_train::worker::wire_compression(job.distributed.compression),
        },
    )
    .context("measuring the all-reduce")?;
    let comm = rows[0].median_s;
    // The model's own estimate for this machine as a catalog entry (2 one-thread
    // workers on one node), its loopback term set to the all-reduce just measured.
    let here = dlc_plan::catalog::Instance {
        name: "this machine".into(),
        provider: "here".into(),
        gpu: None,
        gpus: 0,
        vcpus: 4,
        memory_gib: 1.0,
        network_gbps: 1.0,
        gpu_link: dlc_plan::catalog::GpuLink::None,
        gpu_link_gbps: 0.0,
        price_per_hour: 0.0,
        price_date: String::new(),
        region: String::new(),
    };
    let catalog = Catalog {
        gpus: Default::default(),
        instances: vec![here.clone()],
    };
    let assumptions = Assumptions {
        loopback_gbps: p.grad_bytes as f64 / comm.max(1e-9) / 1e9,
        latency_s: 0.0,
        ..Default::default()
    };
    let e = dlc_plan::model::estimate(
        &catalog,
        &here,
        1,
        dlc_plan::Strategy::Ring,
        &p,
        1,
        &assumptions,
    )
    .context("the model has no estimate for 2 workers of this job")?;
    let (compute, predicted) = (e.compute_s, p.batch_size as f64 / e.step_s);

    let dir = tempfile::tempdir()?;
    let mut burst = job.clone();
    burst.data.test_limit = Some(1);
    burst.train.log_every = 1;
    burst.train.checkpoint_every = None;
    let job_path = dir.path().join("job.toml");
    std::fs::write(&job_path, burst.to_toml())?;
    let out = std::process::Command::new(&exe)
        .arg("train")
        .arg(&job_path)
        .args([
            "--workers",
            "2",
            "--threads-per-worker",
            "1",
            "--steps",
            &steps.to_string(),
            "-q",
            "--json",
        ])
        .args(["--device", "cpu", "--out"])
        .arg(dir.path().join("run"))
        .output()?;
    if !out.status.success() {
        bail!(
            "the 2-worker run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let measured = steady_samples_per_sec(&dir.path().join("run"), steps)?
        .context("the 2-worker run logged no step")?;
    let err = (predicted - measured) / measured;
    let v = serde_json::json!({
        "one_worker_samples_per_sec": p.samples_per_sec, "step_overhead_s": p.step_overhead_s,
        "compute_s": compute, "allreduce_s": comm,
        "predicted_samples_per_sec": predicted, "measured_samples_per_sec": measured, "error": err,
        "batch_size": p.batch_size, "explain": e.explain,
    });
    std::fs::write(a.out.join("validate.json"), v.to_string())?;
    println!(
        "validate {}: 1 worker × 1 thread {:.0} samples/s → predicted 2 ring workers {:.0} samples/s \
         (compute {:.2} ms, {:.2} ms of it fixed, + all-reduce of {} B {:.2} ms per step); measured {:.0} samples/s; error {:+.1}%",
        p.job,
        p.samples_per_sec,
        predicted,
        compute * 1e3,
        p.step_overhead_s * 1e3,
        bytes,
        comm * 1e3,
        measured,
        100.0 * err
    );
    Ok(())
}
