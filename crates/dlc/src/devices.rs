//! `dlc devices`.

use anyhow::Result;
use clap::Args;
use dlc_train::device::{cpu_info, probe_cuda};

#[derive(Args, Debug)]
pub struct DevicesArgs {
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Prints the CPU and the GPUs.
pub fn run(a: DevicesArgs) -> Result<()> {
    let cpu = cpu_info();
    let cuda = probe_cuda();
    if a.json {
        let v = match &cuda {
            Ok(r) => serde_json::json!({"cpu": cpu, "cuda": r, "cuda_unusable": null}),
            Err(why) => serde_json::json!({"cpu": cpu, "cuda": null, "cuda_unusable": why.0}),
        };
        println!("{v}");
        return Ok(());
    }
    println!("cpu      {} ({} cores, {})", cpu.model, cpu.cores, cpu.simd);
    match cuda {
        Ok(r) => {
            println!("driver   CUDA {}", r.driver_version);
            for g in r.gpus {
                println!(
                    "cuda:{}   {} ({:.1} GiB, compute capability {}.{})",
                    g.index,
                    g.name,
                    g.memory_bytes as f64 / (1u64 << 30) as f64,
                    g.compute_capability.0,
                    g.compute_capability.1
                );
            }
        }
        Err(why) => println!("cuda     none usable: {why}"),
    }
    Ok(())
}
