//! `dlc bench allreduce`: all-reduce over N local processes of the same binary.
//!
//! The local launcher (the one `dlc train --workers` uses) starts N worker processes;
//! each times every size (warm-up, then one barrier and one timed all-reduce per
//! iteration) and rank 0 reports the medians. In the same run the parent measures two ceilings per size: a
//! single-thread memcpy, and single-stream TCP loopback throughput between two
//! processes (the physical limit of the TCP transport).
//! Bus bandwidth follows NCCL: `busbw = algbw × 2(n−1)/n`, `algbw = bytes / time`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dlc_comm::{CommConfig, Communicator, Compression, ReduceOp};
use serde::{Deserialize, Serialize};

/// One line of results.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Row {
    /// Number of ranks.
    pub ranks: usize,
    /// Buffer size in bytes (f32 elements × 4).
    pub bytes: usize,
    /// Median time of one all-reduce.
    pub median_s: f64,
    /// Algorithm bandwidth, GB/s (10⁹ bytes/s).
    pub algbw_gbps: f64,
    /// Bus bandwidth, GB/s.
    pub busbw_gbps: f64,
    /// Single-thread memcpy of the same size, GB/s.
    pub memcpy_gbps: f64,
    /// Single-stream TCP loopback between two processes, GB/s.
    pub tcp_gbps: f64,
    /// What carried rank 0's links: `shm`, `tcp`, or `shm+tcp` (some of each);
    /// `tcp*N` for N streams per pair.
    #[serde(default)]
    pub transport: String,
    /// How the f32 buffer travelled: `none` (f32), `bf16` or `fp16` (bytes above are
    /// the f32 buffer's, so bandwidths count what the caller reduces).
    #[serde(default)]
    pub compression: String,
}

/// Why a benchmark failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Communication failed.
    #[error(transparent)]
    Comm(#[from] dlc_comm::CommError),
    /// A process or socket failed.
    #[error("{0}")]
    Other(String),
}

fn other(context: &str) -> impl FnOnce(std::io::Error) -> BenchError + '_ {
    move |e| BenchError::Other(format!("{context}: {e}"))
}

/// Iterations for a size: at least `iters`, more for small messages (cheap, noisy).
fn iterations(bytes: usize, iters: usize) -> usize {
    if bytes <= 1 << 20 {
        iters.max(50)
    } else {
        iters
    }
}

/// Median of durations in seconds.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Turns rank 0's medians (bytes, seconds) into result rows, measuring the memcpy
/// and TCP-loopback ceilings of each size in this process; `exe` is the `dlc` binary
/// (started as the TCP source).
pub fn rows(
    exe: &Path,
    ranks: usize,
    medians: &[(usize, f64)],
    iters: usize,
    socket_buffer: Option<usize>,
    transport: &str,
    compression: Compression,
) -> Result<Vec<Row>, BenchError> {
    let mut rows = Vec::new();
    for &(bytes, t) in medians {
        let n = ranks as f64;
        let algbw = bytes as f64 / t / 1e9;
        let memcpy = memcpy_gbps(bytes, iterations(bytes, iters));
        let tcp = tcp_gbps(exe, bytes, iterations(bytes, iters), socket_buffer)?;
        rows.push(Row {
            ranks,
            bytes,
            median_s: t,
            algbw_gbps: algbw,
            busbw_gbps: if ranks > 1 {
                algbw * 2.0 * (n - 1.0) / n
            } else {
                0.0
            },
            memcpy_gbps: memcpy,
            tcp_gbps: tcp,
            transport: transport.to_string(),
            compression: compression.to_string(),
        });
    }
    Ok(rows)
}

/// What one benchmark process measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Timings {
    /// `(bytes, median seconds)` per size.
    pub medians: Vec<(usize, f64)>,
    /// Distinct hosts among the ranks (by the address each listens on).
    pub hosts: usize,
    /// What carried this rank's links ([`link_kinds`]).
    pub transport: String,
}

/// `shm`, `tcp`, or `shm+tcp`: the transports of a rank's links; TCP links of
/// several streams read `tcp*N`.
pub fn link_kinds(comm: &Communicator) -> String {
    let mut kinds: Vec<String> = comm
        .transports()
        .iter()
        .zip(comm.tcp_streams())
        .filter_map(|(t, n)| {
            t.map(|t| match n {
                2.. => format!("{}*{n}", t.name()),
                _ => t.name().to_string(),
            })
        })
        .collect();
    kinds.sort_unstable();
    kinds.dedup();
    if kinds.is_empty() {
        "none".into()
    } else {
        kinds.join("+")
    }
}

/// One benchmark process (started by a launcher): joins, times every size (f32
/// buffers travelling as `compression`) and returns the medians (rank 0's are the
/// ones reported).
pub fn worker(
    cfg: CommConfig,
    sizes: &[usize],
    iters: usize,
    compression: Compression,
) -> Result<Timings, BenchError> {
    let (rank, ranks) = (cfg.rank, cfg.world);
    let mut comm = Communicator::connect(cfg)?;
    let mut ips: Vec<String> = comm
        .peer_addrs()
        .iter()
        .map(|a| {
            a.rsplit_once(':')
                .map_or(a.as_str(), |(h, _)| h)
                .to_string()
        })
        .collect();
    ips.sort();
    ips.dedup();
    let hosts = ips.len().max(1);
    let transport = link_kinds(&comm);
    settle(&mut comm, Duration::from_millis(SETTLE_MS))?;
    let mut medians = Vec::with_capacity(sizes.len());
    for &bytes in sizes {
        let mut buf = vec![1.0f32; bytes / 4];
        let n = iterations(bytes, iters);
        // Warm-up: a quarter of the timed count, at least 3.
        for _ in 0..3.max(n / 4) {
            comm.all_reduce_compressed(&mut buf, ReduceOp::Sum, compression)?;
        }
        let mut times = Vec::with_capacity(n);
        // Each rank contributes rank+1 everywhere: the sum n(n+1)/2 is exact in f32
        // (and in bf16 and fp16 up to 22 ranks).
        let fill = (rank + 1) as f32;
        for _ in 0..n {
            buf.iter_mut().for_each(|x| *x = fill);
            comm.barrier()?;
            let t0 = Instant::now();
            comm.all_reduce_compressed(&mut buf, ReduceOp::Sum, compression)?;
            times.push(t0.elapsed().as_secs_f64());
        }
        let want = (ranks * (ranks + 1) / 2) as f32;
        if let Some(i) = buf.iter().position(|&x| x != want) {
            return Err(BenchError::Other(format!(
                "rank {rank}: wrong all-reduce result at element {i} of {bytes} bytes: {} (want {want})",
                buf[i]
            )));
        }
        medians.push((bytes, median(times)));
    }
    comm.barrier()?;
    comm.leave();
    Ok(Timings {
        medians,
        hosts,
        transport,
    })
}

/// How long the ranks exchange tiny all-reduces before the first size is timed.
const SETTLE_MS: u64 = 50;

/// Tiny all-reduces until rank 0 has seen `time` pass (it says when, in the sum, so
/// every rank makes the same calls): freshly started processes run slowly for a
/// few milliseconds (the scheduler spreading them over the cores, first touches of
/// the links), which a count of warm-up iterations of a microsecond each does not
/// cover — the first size measured 5–6 µs at 4 KiB on shared memory, 1.0–1.3 µs
/// once settled.
fn settle(comm: &mut Communicator, time: Duration) -> Result<(), BenchError> {
    let start = Instant::now();
    loop {
        let done = comm.rank() == 0 && start.elapsed() >= time;
        let mut flag = [f32::from(u8::from(done))];
        comm.all_reduce(&mut flag, ReduceOp::Sum)?;
        if flag[0] > 0.0 {
            return Ok(());
        }
    }
}

/// Median single-thread memcpy throughput for `bytes`, GB/s.
pub fn memcpy_gbps(bytes: usize, iters: usize) -> f64 {
    let src = vec![1u8; bytes.max(1)];
    let mut dst = vec![0u8; bytes.max(1)];
    dst.copy_from_slice(&src);
    let times: Vec<f64> = (0..iters)
        .map(|_| {
            let t0 = Instant::now();
            dst.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&dst);
            t0.elapsed().as_secs_f64()
        })
        .collect();
    bytes as f64 / median(times) / 1e9
}

/// Median single-stream TCP loopback throughput between this process and a child
/// (`exe bench allreduce --tcp-source ADDR --tcp-bytes B --iters K`), GB/s.
pub fn tcp_gbps(
    exe: &Path,
    bytes: usize,
    iters: usize,
    socket_buffer: Option<usize>,
) -> Result<f64, BenchError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(other("tcp ceiling listener"))?;
    let addr = listener
        .local_addr()
        .map_err(other("tcp ceiling listener"))?;
    let mut child = Command::new(exe)
        .args(["bench", "allreduce", "--tcp-source", &addr.to_string()])
        .args([
            "--tcp-bytes",
            &bytes.to_string(),
            "--iters",
            &iters.to_string(),
            "--socket-buffer",
            &socket_buffer.map_or("auto".into(), |b| b.to_string()),
        ])
        .stdout(Stdio::null())
        .spawn()
        .map_err(other("spawning the tcp ceiling source"))?;
    let result = (|| {
        listener.set_nonblocking(true).map_err(other("listener"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut s = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => {
                    return Err(BenchError::Other(format!(
                        "tcp ceiling source never connected: {e}"
                    )))
                }
            }
        };
        s.set_nonblocking(false).map_err(other("socket"))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(other("socket"))?;
        dlc_comm::transport::set_buffers(&s, socket_buffer);
        let mut buf = vec![0u8; bytes];
        let mut times = Vec::with_capacity(iters);
        for i in 0..iters + 3 {
            let t0 = Instant::now();
            s.write_all(&[1]).map_err(other("tcp ceiling"))?;
            s.read_exact(&mut buf).map_err(other("tcp ceiling"))?;
            if i >= 3 {
                times.push(t0.elapsed().as_secs_f64());
            }
        }
        Ok(bytes as f64 / median(times) / 1e9)
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// The child side of [`tcp_gbps`]: sends `bytes` after each 1-byte request.
pub fn tcp_source(
    addr: &str,
    bytes: usize,
    iters: usize,
    socket_buffer: Option<usize>,
) -> Result<(), BenchError> {
    let mut s = TcpStream::connect(addr).map_err(other("tcp ceiling source"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(other("socket"))?;
    dlc_comm::transport::set_buffers(&s, socket_buffer);
    let data = vec![7u8; bytes];
    let mut req = [0u8; 1];
    for _ in 0..iters + 3 {
        s.read_exact(&mut req)
            .map_err(other("tcp ceiling source"))?;
        s.write_all(&data).map_err(other("tcp ceiling source"))?;
    }
    Ok(())
}
