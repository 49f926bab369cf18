//! Checkpoints: model, optimizer state and loop position, written atomically.
//!
//! Layout of `<run>/checkpoint/`: `model.bin` (burn record, with parameter ids),
//! `optim.bin` (optimizer record keyed by those ids), `state.json` ([`LoopState`]).

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::record::{BinFileRecorder, FullPrecisionSettings};
use burn::tensor::backend::AutodiffBackend;
use dlc_model::Net;
use serde::{Deserialize, Serialize};

use crate::optim::AnyOptim;
use crate::TrainError;

/// Where the training loop stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LoopState {
    /// Epoch in progress (0-based).
    pub epoch: usize,
    /// Steps already done in that epoch.
    pub step_in_epoch: usize,
    /// Steps done since the start of training.
    pub global_step: usize,
}

/// The checkpoint directory of a run directory.
pub fn dir(run: &Path) -> PathBuf {
    run.join("checkpoint")
}

/// Writes a checkpoint into `run/checkpoint`, replacing the previous one only once the
/// new one is complete.
pub fn save<B: AutodiffBackend>(
    run: &Path,
    model: &Net<B>,
    optim: &AnyOptim<B, Net<B>>,
    state: LoopState,
) -> Result<(), TrainError> {
    let final_dir = dir(run);
    let tmp = run.join("checkpoint.tmp");
    let old = run.join("checkpoint.old");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(TrainError::io(&tmp))?;
    let rec = BinFileRecorder::<FullPrecisionSettings>::new();
    model
        .clone()
        .save_file(tmp.join("model"), &rec)
        .map_err(|e| TrainError::BadState {
            path: tmp.join("model.bin"),
            message: e.to_string(),
        })?;
    optim.save(&tmp.join("optim"))?;
    let json = serde_json::to_string_pretty(&state).expect("LoopState serialises");
    std::fs::write(tmp.join("state.json"), json).map_err(TrainError::io(tmp.join("state.json")))?;
    let _ = std::fs::remove_dir_all(&old);
    if final_dir.exists() {
        std::fs::rename(&final_dir, &old).map_err(TrainError::io(&final_dir))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(TrainError::io(&final_dir))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// A model, its optimizer and the loop position, as restored from a checkpoint.
pub type Restored<B> = (Net<B>, AnyOptim<B, Net<B>>, LoopState);

/// Loads the checkpoint of `run` into a freshly built model and optimizer.
pub fn load<B: AutodiffBackend>(
    run: &Path,
    model: Net<B>,
    optim: AnyOptim<B, Net<B>>,
    device: &B::Device,
) -> Result<Restored<B>, TrainError> {
    let d = dir(run);
    let state_path = d.join("state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| TrainError::BadState {
        path: state_path.clone(),
        message: format!("no checkpoint to resume from: {e}"),
    })?;
    let state: LoopState = serde_json::from_str(&text).map_err(|e| TrainError::BadState {
        path: state_path.clone(),
        message: format!("corrupt checkpoint state: {e}"),
    })?;
    let rec = BinFileRecorder::<FullPrecisionSettings>::new();
    let mismatch = |e: String| TrainError::BadState {
        path: d.join("model.bin"),
        message: format!("cannot load model (does the job's model match the checkpoint?): {e}"),
    };
    // burn's derived record loading panics when a layer's kind differs from the
    // checkpoint's (a different model, or one written before a layer-format change).
    // The panic is the answer here, not a crash: keep its report off the terminal.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        model.load_file(d.join("model"), &rec, device)
    }));
    std::panic::set_hook(hook);
    let loaded = loaded.map_err(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let first = what.lines().next().unwrap_or("").trim().to_string();
        mismatch(format!("its layers differ from the job's ({first})"))
    })?;
    let model = loaded.map_err(|e| mismatch(e.to_string()))?;
    let optim = optim.load(&d.join("optim"), device)?;
    Ok((model, optim, state))
}
