//! A process's part in a distributed job: worker or parameter server.
//!
//! The identity comes from whatever launcher started the process (`dlc-launch`'s
//! `env` module reads it). With the `ps` strategy, ranks `0..workers` are workers
//! and the rest servers.

use dlc_comm::auth::JobKey;
use dlc_comm::{CommConfig, Communicator};
use dlc_job::{JobSpec, Strategy};

use crate::backend::CpuTrain;
use crate::dist::{ps, Ps, Ring};
use crate::trainer::{train_distributed, TrainOptions, TrainSummary};
use crate::TrainError;

/// Who this process is in the job.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Rank.
    pub rank: usize,
    /// Number of processes (workers and servers).
    pub world: usize,
    /// Coordinator address.
    pub coordinator: String,
    /// Job id.
    pub job_id: String,
    /// Job token (secret).
    pub token: String,
}

/// What a process did.
pub enum Outcome {
    /// A worker trained (rank 0's summary has the test metrics).
    Worker(Box<TrainSummary>),
    /// A parameter server served until the last step.
    Server,
}

/// Joins the job and plays this process's role until training ends.
pub fn run(job: &JobSpec, opts: &TrainOptions, id: &Identity) -> Result<Outcome, TrainError> {
    let d = &job.distributed;
    if id.world != d.world() {
        return Err(TrainError::Usage(format!(
            "DLC_WORLD_SIZE is {} but the job needs {} process(es) ({} worker(s){})",
            id.world,
            d.world(),
            d.workers,
            if d.strategy == Strategy::Ps {
                format!(" + {} server(s)", d.ps_servers)
            } else {
                String::new()
            }
        )));
    }
    if id.rank >= id.world {
        return Err(TrainError::Usage(format!(
            "DLC_RANK {} is out of range for world size {}",
            id.rank, id.world
        )));
    }
    let mut cfg = CommConfig::new(
        id.coordinator.clone(),
        JobKey::new(id.job_id.clone(), &id.token),
        id.rank,
        id.world,
    );
    cfg.join_timeout = d.join_timeout();
    cfg.timeout = d.op_timeout();
    cfg.transport = match d.transport {
        dlc_job::Transport::Auto => dlc_comm::Transport::Auto,
        dlc_job::Transport::Tcp => dlc_comm::Transport::Tcp,
    };
    cfg.tcp_streams = d.tcp_streams;
    let mut comm = Communicator::connect(cfg)?;
    match d.strategy {
        Strategy::Ring => Ok(Outcome::Worker(Box::new(train_distributed(
            job,
            opts,
            Ring::new(comm, wire_compression(d.compression), d.bucket_bytes()),
        )?))),
        Strategy::Ps if id.rank < d.workers => {
            let sync = Ps {
                comm,
                workers: d.workers,
                servers: d.ps_servers,
                mode: d.ps_mode,
                params: 0,
            };
            Ok(Outcome::Worker(Box::new(train_distributed(
                job, opts, sync,
            )?)))
        }
        Strategy::Ps => {
            let served = ps::serve::<CpuTrain>(
                job,
                &mut comm,
                id.rank - d.workers,
                d.workers,
                d.ps_servers,
                &Default::default(),
            )
            .and_then(|()| comm.named("end of training").barrier());
            match served {
                Ok(()) => {
                    comm.leave();
                    Ok(Outcome::Server)
                }
                Err(e) => {
                    comm.fail(&e.to_string());
                    Err(e.into())
                }
            }
        }
    }
}

/// The collectives' form of `[distributed] compression`.
pub fn wire_compression(c: dlc_job::Compression) -> dlc_comm::Compression {
    match c {
        dlc_job::Compression::None => dlc_comm::Compression::None,
        dlc_job::Compression::Bf16 => dlc_comm::Compression::Bf16,
        dlc_job::Compression::Fp16 => dlc_comm::Compression::Fp16,
    }
}
