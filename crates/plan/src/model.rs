//! The cost/performance model.
//!
//! For every instance × node count × strategy:
//!
//! ```text
//! workers     = nodes × GPUs per node            (GPU instances)
//!             = nodes × vCPUs/2                   (CPU instances: one single-threaded worker per core)
//! local batch = ⌈B / workers⌉
//! compute     = local batch × FLOPs/sample ÷ (worker peak × efficiency) + per-step overhead
//!   t(b) = t0 + b × t1 is fitted by the profile at the full and half batch, on its device;
//!   CPU instance (CPU profile only: a GPU profile never scales CPUs):
//!     worker peak × efficiency = FLOPs/sample ÷ t1 per core, overhead = t0
//!   GPU instance, GPU profile whose GPU the catalog knows (by name):
//!     efficiency = FLOPs/sample ÷ t1 ÷ that GPU's f32 peak, applied to this GPU's
//!     peak; overhead = t0
//!   GPU instance, CPU profile (or an unknown GPU): efficiency = --gpu-efficiency and
//!     overhead 2 ms, both assumptions, and the estimate says so
//! ring comm   = 2(n−1)/n × S ÷ bw + 2(n−1) × latency  [+ 2 × S ÷ PCIe on GPUs]
//!   dlc all-reduces on the host: a GPU worker copies its gradients to the host and
//!   the result back (PCIe), whatever NVLink the instance has;
//!   bw = loopback (one node) or min(loopback, network × efficiency) (several nodes);
//!   latency = per hop within a node, or between nodes (several nodes);
//!   loopback, the latencies and the efficiency come from measured communication
//!   profiles ([`crate::comm`]) where given, else from the defaults of [`Assumptions`]
//! ps comm     = max(2S ÷ bw_worker, 2n × S ÷ (k × bw_server)) + 2 × latency + update ÷ k
//!               (a worker pushes its gradients and pulls the new weights; each of k
//!               servers, co-located one per node, takes n × S ÷ k in and sends as much
//!               back, and runs the optimizer on its 1/k of the parameters in between:
//!               update = the CPU profile's t0, else 3 ns per parameter (assumed);
//!               bw_worker = network ÷ workers per node) [+ 2 × S ÷ PCIe on GPUs]
//! step        = compute + comm × (1 − overlap)            (dlcluster does not overlap yet: 0)
//! time        = steps × step + start-up;  cost = nodes × price × time
//! ```
//! S = gradient bytes per step, n = workers. Every estimate keeps its inputs
//! ([`Estimate::explain`]).

use serde::Serialize;

use crate::catalog::{Catalog, Instance};
use crate::profile::Profile;

/// Knobs of the model that are assumptions rather than measurements.
#[derive(Debug, Clone, Serialize)]
pub struct Assumptions {
    /// Fraction of a GPU's f32 peak our training reaches.
    pub gpu_efficiency: f64,
    /// Fixed per-step overhead on a GPU (kernel launches, host sync), seconds.
    pub gpu_step_overhead_s: f64,
    /// Latency per ring hop between processes of one node, seconds.
    pub latency_s: f64,
    /// Bandwidth between worker processes on one CPU host (TCP loopback), GB/s.
    pub loopback_gbps: f64,
    /// Host↔GPU copy bandwidth (PCIe 3.0 ×16 as measured in practice), GB/s.
    pub pcie_gbps: f64,
    /// A parameter server's optimizer update per parameter when no CPU profile
    /// measured it, seconds (Adam reads and writes ~28 bytes per parameter).
    pub update_s_per_param: f64,
    /// Latency per ring hop between nodes, seconds.
    pub network_latency_s: f64,
    /// Fraction of a node's network bandwidth dlc's collectives reach.
    pub network_efficiency: f64,
    /// Where the communication figures came from (measured profiles), for people.
    pub sources: Vec<String>,
    /// Fraction of communication hidden behind computation.
    pub overlap: f64,
    /// Start-up time of a job (provisioning, data load), seconds.
    pub startup_s: f64,
}

impl Default for Assumptions {
    fn default() -> Self {
        Self {
            gpu_efficiency: 0.2,
            gpu_step_overhead_s: 0.002,
            latency_s: 50e-6,
            loopback_gbps: 2.5,
            pcie_gbps: 12.0,
            update_s_per_param: 3e-9,
            network_latency_s: 50e-6,
            network_efficiency: 1.0,
            sources: Vec::new(),
            overlap: 0.0,
            startup_s: 60.0,
        }
    }
}

impl Assumptions {
    /// Takes the communication figures from a measured profile: one host's ring sets
    /// the bandwidth and latency between processes of a node; a ring across hosts
    /// sets the latency between nodes and, when its link rate is known, the fraction
    /// of a network link dlc reaches.
    pub fn apply(&mut self, p: &crate::comm::CommProfile) {
        if p.hosts <= 1 {
            self.loopback_gbps = p.bandwidth_gbps;
            self.latency_s = p.latency_s;
            self.sources
                .push(format!("within a node: measured, {}", p.describe()));
        } else {
            self.network_latency_s = p.latency_s;
            if let Some(e) = p.link_efficiency() {
                self.network_efficiency = e;
            }
            self.sources
                .push(format!("between nodes: measured, {}", p.describe()));
        }
    }
}

/// Network graph of a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Strategy {
    /// Ring all-reduce.
    Ring,
    /// Parameter servers (count).
    Ps(usize),
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Strategy::Ring => write!(f, "ring"),
            Strategy::Ps(k) => write!(f, "ps({k})"),
        }
    }
}

/// One candidate configuration and its estimate.
#[derive(Debug, Clone, Serialize)]
pub struct Estimate {
    /// Instance type.
    pub instance: String,
    /// Number of instances.
    pub nodes: usize,
    /// Worker processes.
    pub workers: usize,
    /// Network graph.
    pub strategy: Strategy,
    /// Compute seconds per step.
    pub compute_s: f64,
    /// Exposed communication seconds per step.
    pub comm_s: f64,
    /// Seconds per step.
    pub step_s: f64,
    /// Steps to finish.
    pub steps: usize,
    /// Wall time to finish, seconds.
    pub total_s: f64,
    /// Dollars to finish.
    pub cost: f64,
    /// On the Pareto frontier (no other candidate is both cheaper and faster).
    pub pareto: bool,
    /// The inputs and intermediate values, for `--explain`.
    pub explain: String,
}

/// Ring all-reduce time for `bytes` over `n` workers at `bw` GB/s.
pub fn ring_time(bytes: f64, n: usize, bw_gbps: f64, latency_s: f64) -> f64 {
    if n <= 1 {
        return 0.0;
    }
    let n = n as f64;
    2.0 * (n - 1.0) / n * bytes / (bw_gbps * 1e9) + 2.0 * (n - 1.0) * latency_s
}

/// Synchronous parameter-server time (BytePS bound): each of `n` workers pushes
/// `bytes` of gradients and pulls as many of weights at `bw_worker`; each of `k`
/// servers takes `n × bytes / k` in and sends as much out at `bw_server`.
pub fn ps_time(
    bytes: f64,
    n: usize,
    k: usize,
    bw_worker_gbps: f64,
    bw_server_gbps: f64,
    latency_s: f64,
) -> f64 {
    let worker = 2.0 * bytes / (bw_worker_gbps * 1e9);
    let server = 2.0 * n as f64 * bytes / (k.max(1) as f64 * bw_server_gbps * 1e9);
    worker.max(server) + 2.0 * latency_s
}

/// Estimates one candidate; `None` when it cannot run (more workers than samples per
/// batch, or the model does not fit in GPU memory).
pub fn estimate(
    catalog: &Catalog,
    inst: &Instance,
    nodes: usize,
    strategy: Strategy,
    p: &Profile,
    epochs: usize,
    a: &Assumptions,
) -> Option<Estimate> {
    let gpu = catalog.gpu_of(inst);
    if gpu.is_none() && p.on_gpu() {
        // A GPU's throughput says nothing about a CPU's.
        return None;
    }
    let per_node = match gpu {
        Some(_) => inst.gpus,
        None => (inst.vcpus / 2).max(1),
    };
    let workers = nodes * per_node;
    if workers > p.batch_size {
        return None;
    }
    let local = p.batch_size.div_ceil(workers);
    let (worker_flops, overhead, peak_note) = match gpu {
        Some(g) => {
            // Weights, gradients and two optimizer moments in f32, with 2× headroom.
            if (p.params * 16 * 2) as f64 > g.memory_gib * (1u64 << 30) as f64 {
                return None;
            }
            let measured_on = p
                .gpu
                .as_deref()
                .filter(|_| p.on_gpu())
                .and_then(|name| catalog.gpu_model_named(name))
                .and_then(|m| catalog.gpus.get(m).map(|pg| (m, pg)));
            let (efficiency, overhead, how) = match measured_on {
                Some((m, pg)) => {
                    let e = p.marginal_flops() / (pg.fp32_tflops * 1e12);
                    (e, p.step_overhead_s, format!("measured on {m}"))
                }
                None if p.on_gpu() => (
                    a.gpu_efficiency,
                    p.step_overhead_s,
                    format!(
                        "assumed: the profiled GPU `{}` is not in the catalog",
                        p.gpu.as_deref().unwrap_or("?")
                    ),
                ),
                None => (
                    a.gpu_efficiency,
                    a.gpu_step_overhead_s,
                    "assumed: a CPU profile; profile on a GPU to measure it".to_string(),
                ),
            };
            (
                g.fp32_tflops * 1e12 * efficiency,
                overhead,
                format!(
                    "{} f32 peak {} TFLOP/s × efficiency {efficiency:.3} ({how})",
                    inst.gpu.as_deref().unwrap_or("?"),
                    g.fp32_tflops,
                ),
            )
        }
        None => (
            p.marginal_flops_per_thread(),
            p.step_overhead_s,
            format!(
                "measured {:.2} GFLOP/s per core at the margin ({})",
                p.marginal_flops_per_thread() / 1e9,
                p.cpu_model
            ),
        ),
    };
    let compute_s = local as f64 * p.flops_per_sample / worker_flops + overhead;
    let s = p.grad_bytes as f64;
    // dlc all-reduces on the host, over its own transport, NVLink or not.
    let one_node_bw = a.loopback_gbps;
    // GPU workers that exchange anything copy gradients to the host and the result
    // back (a parameter server is reached even by a single worker).
    let exchanges = workers > 1 || matches!(strategy, Strategy::Ps(_));
    let copies_s = match gpu {
        Some(_) if exchanges => 2.0 * s / (a.pcie_gbps * 1e9),
        _ => 0.0,
    };
    let network = inst.network_gbps * a.network_efficiency;
    let latency = if nodes == 1 {
        a.latency_s
    } else {
        a.network_latency_s.max(a.latency_s)
    };
    let (comm_s, bw_note) = match strategy {
        Strategy::Ring => {
            let bw = if nodes == 1 {
                one_node_bw
            } else {
                one_node_bw.min(network)
            };
            (
                ring_time(s, workers, bw, latency),
                format!("ring over {bw:.4} GB/s"),
            )
        }
        Strategy::Ps(k) => {
            let (bw_w, bw_s) = if nodes == 1 {
                (one_node_bw, one_node_bw)
            } else {
                (network / per_node as f64, network)
            };
            let (update, source) = match (p.on_gpu(), p.step_overhead_s > 0.0) {
                (false, true) => (p.step_overhead_s, "the profile's fixed step part"),
                _ => (
                    p.params as f64 * a.update_s_per_param,
                    "assumed per parameter",
                ),
            };
            let update = update / k.max(1) as f64;
            (
                ps_time(s, workers, k, bw_w, bw_s, latency) + update,
                format!(
                    "ps: worker {bw_w:.3} GB/s, {k} server(s) at {bw_s:.4} GB/s, \
                     server update {update:.2e}s ({source})"
                ),
            )
        }
    };
    let (comm_s, bw_note) = if copies_s > 0.0 {
        (
            comm_s + copies_s,
            format!(
                "{bw_note}, + GPU↔host copies {copies_s:.4}s at {} GB/s",
                a.pcie_gbps
            ),
        )
    } else {
        (comm_s, bw_note)
    };
    let exposed = comm_s * (1.0 - a.overlap);
    let step_s = compute_s + exposed;
    let steps = epochs * p.train_samples.div_ceil(p.batch_size);
    let total_s = steps as f64 * step_s + a.startup_s;
    let cost = nodes as f64 * inst.price_per_hour * total_s / 3600.0;
    let explain = format!(
        "{} × {nodes} ({workers} workers, local batch {local}): compute = {local} × {:.3e} FLOP ÷ {:.3e} FLOP/s [{peak_note}] + {overhead}s = {:.4}s; \
         comm = {:.4}s [{bw_note}, {} gradient bytes, latency {}s]; step = {:.4}s; {steps} steps + {}s start-up = {:.0}s; \
         ${}/h × {nodes} → ${cost:.2} (price {} {})",
        inst.name, p.flops_per_sample, worker_flops, compute_s, comm_s, p.grad_bytes, latency, step_s, a.startup_s, total_s,
        inst.price_per_hour, inst.region, inst.price_date
    );
    Some(Estimate {
        instance: inst.name.clone(),
        nodes,
        workers,
        strategy,
        compute_s,
        comm_s: exposed,
        step_s,
        steps,
        total_s,
        cost,
        pareto: false,
        explain,
    })
}

/// Every instance × 1..=max_nodes × {ring, ps(1), ps(nodes)}, Pareto-marked and
/// sorted by cost.
pub fn estimate_all(
    catalog: &Catalog,
    p: &Profile,
    epochs: usize,
    max_nodes: usize,
    a: &Assumptions,
) -> Vec<Estimate> {
    let mut out = Vec::new();
    for inst in &catalog.instances {
        for nodes in 1..=max_nodes.max(1) {
            let mut strategies = vec![Strategy::Ring, Strategy::Ps(1)];
            if nodes > 1 {
                strategies.push(Strategy::Ps(nodes));
            }
            for s in strategies {
                if let Some(e) = estimate(catalog, inst, nodes, s, p, epochs, a) {
                    out.push(e);
                }
            }
        }
    }
    pareto(&mut out);
    out.sort_by(|x, y| {
        x.cost
            .total_cmp(&y.cost)
            .then(x.total_s.total_cmp(&y.total_s))
    });
    out
}

/// Marks the estimates no other estimate beats on both cost and time.
pub fn pareto(es: &mut [Estimate]) {
    let points: Vec<(f64, f64)> = es.iter().map(|e| (e.cost, e.total_s)).collect();
    for (i, e) in es.iter_mut().enumerate() {
        let (c, t) = points[i];
        e.pareto = !points
            .iter()
            .enumerate()
            .any(|(j, &(c2, t2))| j != i && c2 <= c && t2 <= t && (c2 < c || t2 < t));
    }
}

/// Keeps the estimates that finish within `deadline_s` and cost at most `budget`.
pub fn within(es: Vec<Estimate>, deadline_s: Option<f64>, budget: Option<f64>) -> Vec<Estimate> {
    es.into_iter()
        .filter(|e| deadline_s.is_none_or(|d| e.total_s <= d) && budget.is_none_or(|b| e.cost <= b))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> Profile {
        Profile {
            job: "t".into(),
            device: "cpu".into(),
            cpu_model: "test".into(),
            threads: 1,
            params: 1_000_000,
            grad_bytes: 4_000_000,
            flops_per_sample: 1e9,
            samples_per_sec: 10.0,
            seconds_per_sample: 0.1,
            achieved_flops: 1e10,
            data_bytes_per_sample: 785,
            batch_size: 64,
            train_samples: 6400,
            epochs: 1,
            steps_measured: 10,
            step_overhead_s: 0.0,
            gpu: None,
        }
    }

    #[test]
    fn ring_formula_by_hand() {
        // 4 workers, 8 MB, 1 GB/s, no latency: 2·3/4 · 8e6 / 1e9 = 12 ms.
        assert!((ring_time(8e6, 4, 1.0, 0.0) - 0.012).abs() < 1e-12);
        assert_eq!(ring_time(8e6, 1, 1.0, 1.0), 0.0);
        // + 2(n-1) latencies.
        assert!((ring_time(8e6, 4, 1.0, 1e-3) - 0.018).abs() < 1e-12);
    }

    #[test]
    fn ps_bound_by_hand() {
        // 8 workers, 1 server: the server takes 8 × 1 MB in and sends as much out at
        // 1 GB/s = 16 ms > a worker's push and pull, 2 ms.
        assert!((ps_time(1e6, 8, 1, 1.0, 1.0, 0.0) - 0.016).abs() < 1e-12);
        // 8 servers: bounded by the worker: 2 ms.
        assert!((ps_time(1e6, 8, 8, 1.0, 1.0, 0.0) - 0.002).abs() < 1e-12);
    }

    #[test]
    fn cpu_estimate_by_hand() {
        let cat = Catalog::parse(
            "[[instances]]\nname = \"c\"\nprovider = \"p\"\ngpus = 0\nvcpus = 8\nmemory_gib = 16\n\
             network_gbps = 1.0\ngpu_link = \"none\"\ngpu_link_gbps = 0\nprice_per_hour = 3.6\n\
             price_date = \"2026-01\"\nregion = \"r\"\n",
            "t",
        )
        .unwrap();
        let a = Assumptions {
            latency_s: 0.0,
            network_latency_s: 0.0,
            startup_s: 0.0,
            loopback_gbps: 2.0,
            ..Default::default()
        };
        let e = estimate(
            &cat,
            &cat.instances[0],
            1,
            Strategy::Ring,
            &profile(),
            1,
            &a,
        )
        .unwrap();
        // 4 cores → 4 workers, local batch 16: compute = 16 × 1e9 / 1e10 = 1.6 s.
        assert_eq!(e.workers, 4);
        assert!((e.compute_s - 1.6).abs() < 1e-9);
        // ring: 2·3/4 · 4e6 / 2e9 = 3 ms.
        assert!((e.comm_s - 0.003).abs() < 1e-12);
        // 100 steps × 1.603 s = 160.3 s; $3.6/h → $0.1603.
        assert_eq!(e.steps, 100);
        assert!((e.total_s - 160.3).abs() < 1e-6);
        assert!((e.cost - 0.1603).abs() < 1e-9);
        // Two nodes: network bound (1 GB/s), 8 workers.
        let e2 = estimate(
            &cat,
            &cat.instances[0],
            2,
            Strategy::Ring,
            &profile(),
            1,
            &a,
        )
        .unwrap();
        assert_eq!(e2.workers, 8);
        assert!((e2.comm_s - 2.0 * 7.0 / 8.0 * 4e6 / 1e9).abs() < 1e-12);

        // Measured profiles: within a node 0.5 GB/s, 10 µs per hop; between nodes
        // 100 µs per hop and half the link reached.
        let mut m = a.clone();
        let fit = |hosts, bw, lat, link| crate::comm::CommProfile {
            ranks: 2,
            hosts,
            bandwidth_gbps: bw,
            latency_s: lat,
            link_gbps: link,
            points: vec![],
            fit_error: 0.0,
        };
        m.apply(&fit(1, 0.5, 10e-6, None));
        m.apply(&fit(2, 0.4, 100e-6, Some(0.8)));
        assert_eq!(m.sources.len(), 2);
        let e1 = estimate(
            &cat,
            &cat.instances[0],
            1,
            Strategy::Ring,
            &profile(),
            1,
            &m,
        )
        .unwrap();
        assert!((e1.comm_s - (2.0 * 3.0 / 4.0 * 4e6 / 0.5e9 + 6.0 * 10e-6)).abs() < 1e-12);
        let e2 = estimate(
            &cat,
            &cat.instances[0],
            2,
            Strategy::Ring,
            &profile(),
            1,
            &m,
        )
        .unwrap();
        // min(0.5 loopback, 1 GB/s × 0.5) = 0.5 GB/s; 14 hops × 100 µs.
        assert!((e2.comm_s - (2.0 * 7.0 / 8.0 * 4e6 / 0.5e9 + 14.0 * 100e-6)).abs() < 1e-12);
    }

    const GPU_CATALOG: &str =
        "[gpus.V100]\nfp32_tflops = 10.0\nfp16_tflops = 100.0\nmemory_gib = 16\n\
        memory_bw_gbps = 900\n[gpus.A100]\nfp32_tflops = 20.0\nfp16_tflops = 300.0\n\
        memory_gib = 40\nmemory_bw_gbps = 1555\n\
        [[instances]]\nname = \"g\"\nprovider = \"p\"\ngpu = \"A100\"\ngpus = 4\nvcpus = 8\n\
        memory_gib = 16\nnetwork_gbps = 1.0\ngpu_link = \"nvswitch\"\ngpu_link_gbps = 300\n\
        price_per_hour = 3.6\nprice_date = \"2026-01\"\nregion = \"r\"\n\
        [[instances]]\nname = \"c\"\nprovider = \"p\"\ngpus = 0\nvcpus = 8\nmemory_gib = 16\n\
        network_gbps = 1.0\ngpu_link = \"none\"\ngpu_link_gbps = 0\nprice_per_hour = 3.6\n\
        price_date = \"2026-01\"\nregion = \"r\"\n";

    /// The GPU catalog, and no latency or start-up, 2 GB/s between processes.
    fn gpu_catalog() -> (Catalog, Assumptions) {
        let a = Assumptions {
            latency_s: 0.0,
            startup_s: 0.0,
            loopback_gbps: 2.0,
            ..Default::default()
        };
        (Catalog::parse(GPU_CATALOG, "t").unwrap(), a)
    }

    #[test]
    fn a_gpu_profile_prices_gpus_from_its_measured_efficiency_and_never_cpus() {
        let (cat, a) = gpu_catalog();
        // Measured on a V100 (10 TFLOP/s peak): 1 ms fixed + 1e9 FLOP per sample at
        // 2e12 FLOP/s at the margin = efficiency 0.2.
        let mut p = profile();
        p.device = "cuda:0".into();
        p.gpu = Some("Tesla V100-SXM2-16GB".into());
        p.cpu_model = String::new();
        p.step_overhead_s = 1e-3;
        p.seconds_per_sample = (1e-3 + 64.0 * 0.5e-3) / 64.0;
        let (g, c) = (&cat.instances[0], &cat.instances[1]);
        assert!(estimate(&cat, c, 1, Strategy::Ring, &p, 1, &a).is_none());
        let e = estimate(&cat, g, 1, Strategy::Ring, &p, 1, &a).unwrap();
        // 4 A100s at 0.2 × 20 TFLOP/s, local batch 16: 16 × 1e9 / 4e12 + 1 ms = 5 ms.
        assert_eq!(e.workers, 4);
        assert!((e.compute_s - 0.005).abs() < 1e-12, "{}", e.explain);
        assert!(e.explain.contains("measured on V100"), "{}", e.explain);
        // The host ring (2 GB/s, not NVSwitch's 300) plus the copy down and back up
        // at 12 GB/s: 2·3/4 · 4e6 / 2e9 + 2 · 4e6 / 12e9.
        let ring = 2.0 * 3.0 / 4.0 * 4e6 / 2e9 + 2.0 * 4e6 / 12e9;
        assert!((e.comm_s - ring).abs() < 1e-12, "{}", e.explain);

        // A GPU the catalog does not know: the assumption, said.
        p.gpu = Some("NVIDIA H200".into());
        let e = estimate(&cat, g, 1, Strategy::Ring, &p, 1, &a).unwrap();
        assert!(
            e.explain.contains("`NVIDIA H200` is not in the catalog"),
            "{}",
            e.explain
        );
        // A CPU profile prices GPUs by the assumption too, and says so.
        let e = estimate(&cat, g, 1, Strategy::Ring, &profile(), 1, &a).unwrap();
        assert!(
            e.explain.contains("assumed: a CPU profile"),
            "{}",
            e.explain
        );
        assert!((e.compute_s - (16.0 * 1e9 / 4e12 + 0.002)).abs() < 1e-12);
        assert!(estimate(&cat, c, 1, Strategy::Ring, &profile(), 1, &a).is_some());
    }

    #[test]
    fn a_parameter_server_step_counts_push_pull_and_the_servers_update() {
        let (cat, a) = gpu_catalog();
        let mut p = profile();
        p.step_overhead_s = 4e-3;
        let c = &cat.instances[1];
        let e = estimate(&cat, c, 1, Strategy::Ps(2), &p, 1, &a).unwrap();
        // 4 workers, 2 servers: a server moves 2 × 4 × 4 MB / 2 at 2 GB/s = 8 ms,
        // a worker 2 × 4 MB at 2 GB/s = 4 ms; the update 4 ms ÷ 2 servers.
        assert!((e.comm_s - (0.008 + 0.002)).abs() < 1e-12, "{}", e.explain);
        // Without a measured fixed part: 3 ns per parameter ÷ 2.
        p.step_overhead_s = 0.0;
        let e = estimate(&cat, c, 1, Strategy::Ps(2), &p, 1, &a).unwrap();
        assert!(
            (e.comm_s - (0.008 + 1e6 * 3e-9 / 2.0)).abs() < 1e-12,
            "{}",
            e.explain
        );
    }

    fn est(cost: f64, t: f64) -> Estimate {
        Estimate {
            instance: String::new(),
            nodes: 1,
            workers: 1,
            strategy: Strategy::Ring,
            compute_s: 0.0,
            comm_s: 0.0,
            step_s: 0.0,
            steps: 0,
            total_s: t,
            cost,
            pareto: false,
            explain: String::new(),
        }
    }

    #[test]
    fn pareto_frontier() {
        let mut es = vec![
            est(1.0, 10.0),
            est(2.0, 5.0),
            est(3.0, 6.0),
            est(1.0, 12.0),
            est(5.0, 1.0),
            est(2.0, 5.0),
        ];
        pareto(&mut es);
        let marks: Vec<bool> = es.iter().map(|e| e.pareto).collect();
        // (3,6) is beaten by (2,5); (1,12) by (1,10); equal points both stay.
        assert_eq!(marks, vec![true, true, false, false, true, true]);
    }

    #[test]
    fn deadline_and_budget_filters() {
        let es = vec![est(1.0, 100.0), est(2.0, 50.0), est(10.0, 10.0)];
        let keep = |d, b| {
            within(es.clone(), d, b)
                .iter()
                .map(|e| e.cost)
                .collect::<Vec<_>>()
        };
        assert_eq!(keep(None, None), vec![1.0, 2.0, 10.0]);
        assert_eq!(keep(Some(60.0), None), vec![2.0, 10.0]);
        assert_eq!(keep(None, Some(2.0)), vec![1.0, 2.0]);
        assert_eq!(keep(Some(60.0), Some(2.0)), vec![2.0]);
        assert!(keep(Some(5.0), Some(1.0)).is_empty());
    }
}
