//! Checkpoints: model, optimizer state and the global data cursor, written atomically
//! off the training thread, with the previous checkpoint kept as a fallback.
//!
//! Layout: `<run>/checkpoint/` (newest) and `<run>/checkpoint.old/` (the one before),
//! each with `model.bin` (burn record), `optim.safetensors` (the optimizer's
//! [`FlatState`]: one f32 tensor per slot — `moment_1`, `moment_2` or `velocity` — over
//! the flattened trainable parameters, with `optimizer` and `time` in its metadata)
//! and `state.json` ([`LoopState`] plus each file's length and CRC-32C). Nothing in a
//! checkpoint is keyed by rank, by the number of workers or by the strategy: the data
//! cursor counts global batches and the optimizer state is flat, so any number of
//! ring workers or parameter servers continues it.
//!
//! Writing: [`Snapshot::take`] copies the state into memory on the training thread
//! (the only part training waits for); [`Writer`] writes it into `checkpoint.tmp` on a
//! thread of its own, fsyncs every file and the directory, moves the newest to
//! `checkpoint.old` and renames the new one into place. [`load`] verifies the checksums
//! and falls back to `checkpoint.old`, with a warning, when the newest is damaged.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use burn::module::Module;
use burn::record::{BinBytesRecorder, BinFileRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::AutodiffBackend;
use dlc_job::TrainSpec;
use dlc_model::Net;
use serde::{Deserialize, Serialize};

use crate::optim::{slot_names, FlatState};
use crate::TrainError;

/// Where the training loop stands: the global data cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct LoopState {
    /// Epoch in progress (0-based).
    pub epoch: usize,
    /// Global batches already trained in that epoch: the epoch's permutation
    /// continues at sample `step_in_epoch × batch_size`, whatever the worker count.
    pub step_in_epoch: usize,
    /// Steps done since the start of training (it also keys every random draw).
    pub global_step: usize,
}

/// What `state.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StateFile {
    #[serde(flatten)]
    state: LoopState,
    /// Global samples consumed in the epoch (informational: `step_in_epoch ×
    /// batch_size` unless the last batch was short).
    #[serde(default)]
    samples_in_epoch: usize,
    /// Workers of the run that wrote it (informational: any number may resume).
    #[serde(default)]
    workers: usize,
    /// Length and CRC-32C of `model.bin` and `optim.safetensors`.
    #[serde(default)]
    files: Vec<FileSum>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct FileSum {
    name: String,
    bytes: u64,
    crc32c: String,
}

impl FileSum {
    fn of(name: &str, data: &[u8]) -> Self {
        Self {
            name: name.into(),
            bytes: data.len() as u64,
            crc32c: format!("{:08x}", crc32c::crc32c(data)),
        }
    }
}

/// The newest checkpoint directory of a run directory.
pub fn dir(run: &Path) -> PathBuf {
    run.join("checkpoint")
}

fn old_dir(run: &Path) -> PathBuf {
    run.join("checkpoint.old")
}

/// Whether `run` holds a checkpoint (newest or previous) to resume from.
pub fn exists(run: &Path) -> bool {
    [dir(run), old_dir(run)]
        .iter()
        .any(|d| d.join("state.json").exists())
}

/// A checkpoint copied into memory, ready to be written.
pub struct Snapshot {
    model: Vec<u8>,
    optim: FlatState,
    optimizer: String,
    slots: &'static [&'static str],
    state: StateFile,
}

impl Snapshot {
    /// Copies the model and takes the optimizer state (of `spec`'s optimizer) and the
    /// loop position (`samples_in_epoch` and `workers` are recorded for people reading
    /// `state.json`).
    pub fn take<B: AutodiffBackend>(
        model: &Net<B>,
        optim: FlatState,
        spec: &TrainSpec,
        state: LoopState,
        samples_in_epoch: usize,
        workers: usize,
    ) -> Result<Self, TrainError> {
        let rec = BinBytesRecorder::<FullPrecisionSettings>::new();
        let model = Recorder::<B>::record(&rec, model.clone().into_record(), ()).map_err(|e| {
            TrainError::BadState {
                path: PathBuf::from("model.bin"),
                message: format!("cannot copy the model for a checkpoint: {e}"),
            }
        })?;
        Ok(Self {
            model,
            optim,
            optimizer: optimizer_name(spec),
            slots: slot_names(spec),
            state: StateFile {
                state,
                samples_in_epoch,
                workers,
                files: Vec::new(),
            },
        })
    }

    /// Writes the checkpoint into `run` (see the module documentation), fsynced.
    pub fn write(mut self, run: &Path) -> Result<(), TrainError> {
        let tmp = run.join("checkpoint.tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(TrainError::io(&tmp))?;
        let optim = encode_optim(&self.optim, &self.optimizer, self.slots).map_err(|message| {
            TrainError::BadState {
                path: tmp.join(OPTIM_FILE),
                message,
            }
        })?;
        self.state.files = vec![
            FileSum::of("model.bin", &self.model),
            FileSum::of(OPTIM_FILE, &optim),
        ];
        let json = serde_json::to_vec_pretty(&self.state).expect("state serialises");
        for (name, data) in [
            ("model.bin", &self.model),
            (OPTIM_FILE, &optim),
            ("state.json", &json),
        ] {
            let path = tmp.join(name);
            let mut f = std::fs::File::create(&path).map_err(TrainError::io(&path))?;
            f.write_all(data)
                .and_then(|()| f.sync_all())
                .map_err(TrainError::io(&path))?;
        }
        sync_dir(&tmp)?;
        let (newest, old) = (dir(run), old_dir(run));
        if newest.join("state.json").exists() {
            let _ = std::fs::remove_dir_all(&old);
            std::fs::rename(&newest, &old).map_err(TrainError::io(&newest))?;
        } else {
            // A half-removed newest (a crash between the renames) is not a fallback.
            let _ = std::fs::remove_dir_all(&newest);
        }
        std::fs::rename(&tmp, &newest).map_err(TrainError::io(&newest))?;
        sync_dir(run)
    }
}

fn sync_dir(d: &Path) -> Result<(), TrainError> {
    std::fs::File::open(d)
        .and_then(|f| f.sync_all())
        .map_err(TrainError::io(d))
}

/// How long a checkpoint write may take before training gives up on it.
const WRITE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(600);

/// Writes checkpoints on a thread of its own, one at a time: a new one waits for the
/// previous write to end (at most [`WRITE_DEADLINE`]), and a failed write is reported
/// by the next call.
pub struct Writer {
    run: PathBuf,
    pending: Option<JoinHandle<Result<std::time::Duration, TrainError>>>,
    /// Checkpoints written so far.
    pub written: usize,
    /// Time their writing took in all (on the writer's thread).
    pub write_time: std::time::Duration,
}

impl Writer {
    /// A writer for the run directory `run`.
    pub fn new(run: &Path) -> Self {
        Self {
            run: run.to_path_buf(),
            pending: None,
            written: 0,
            write_time: std::time::Duration::ZERO,
        }
    }

    /// Starts writing `snap` once the previous write has finished.
    pub fn write(&mut self, snap: Snapshot) -> Result<(), TrainError> {
        self.wait()?;
        let run = self.run.clone();
        self.pending = Some(
            std::thread::Builder::new()
                .name("checkpoint".into())
                .spawn(move || {
                    let started = std::time::Instant::now();
                    snap.write(&run).map(|()| started.elapsed())
                })
                .map_err(TrainError::io(&self.run))?,
        );
        Ok(())
    }

    /// Waits for the write in progress, if any, and returns its result.
    pub fn wait(&mut self) -> Result<(), TrainError> {
        let Some(h) = self.pending.take() else {
            return Ok(());
        };
        let deadline = std::time::Instant::now() + WRITE_DEADLINE;
        while !h.is_finished() {
            if std::time::Instant::now() > deadline {
                return Err(TrainError::BadState {
                    path: dir(&self.run),
                    message: format!(
                        "writing the checkpoint did not finish within {} s (a hung file system?)",
                        WRITE_DEADLINE.as_secs()
                    ),
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let took = h.join().unwrap_or_else(|_| {
            Err(TrainError::BadState {
                path: dir(&self.run),
                message: "the checkpoint writer panicked".into(),
            })
        })?;
        self.written += 1;
        self.write_time += took;
        Ok(())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // A checkpoint being written is finished before the process goes on to exit.
        let _ = self.wait();
    }
}

/// A model, its optimizer state and the loop position, as restored from a checkpoint.
pub struct Restored<B: AutodiffBackend> {
    /// The model.
    pub model: Net<B>,
    /// The optimizer state, for the workers' optimizer or the parameter servers'.
    pub optim: FlatState,
    /// Where the loop continues.
    pub state: LoopState,
    /// Why the newest checkpoint was not used, when the previous one was.
    pub warning: Option<String>,
}

/// Loads the newest intact checkpoint of `run` into a freshly built model, with the
/// state of `spec`'s optimizer: `checkpoint/`, else (with a warning) `checkpoint.old/`.
pub fn load<B: AutodiffBackend>(
    run: &Path,
    model: Net<B>,
    spec: &TrainSpec,
    device: &B::Device,
) -> Result<Restored<B>, TrainError> {
    let newest = dir(run);
    match verify(&newest) {
        Ok(state) => {
            let (model, optim) = decode(&newest, model, spec, device)?;
            Ok(Restored {
                model,
                optim,
                state,
                warning: None,
            })
        }
        Err(damage) => {
            let old = old_dir(run);
            let state = verify(&old).map_err(|e| TrainError::BadState {
                path: newest.clone(),
                message: format!(
                    "no intact checkpoint to resume from: {damage}; the previous one: {e}"
                ),
            })?;
            let (model, optim) = decode(&old, model, spec, device)?;
            Ok(Restored {
                model,
                optim,
                state,
                warning: Some(format!(
                    "the newest checkpoint {} is damaged ({damage}); resuming from the previous one (global step {})",
                    newest.display(),
                    state.global_step
                )),
            })
        }
    }
}

/// Reads `d/state.json` and checks the files it lists.
fn verify(d: &Path) -> Result<LoopState, String> {
    let state_path = d.join("state.json");
    let text = std::fs::read_to_string(&state_path)
        .map_err(|e| format!("{}: {e}", state_path.display()))?;
    let file: StateFile = serde_json::from_str(&text)
        .map_err(|e| format!("{}: corrupt state ({e})", state_path.display()))?;
    for sum in &file.files {
        let path = d.join(&sum.name);
        let data = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let found = FileSum::of(&sum.name, &data);
        if found != *sum {
            return Err(format!(
                "{} has {} bytes with CRC-32C {}, but {} bytes with CRC-32C {} were written",
                path.display(),
                found.bytes,
                found.crc32c,
                sum.bytes,
                sum.crc32c
            ));
        }
    }
    Ok(file.state)
}

fn decode<B: AutodiffBackend>(
    d: &Path,
    model: Net<B>,
    spec: &TrainSpec,
    device: &B::Device,
) -> Result<(Net<B>, FlatState), TrainError> {
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
        let what = crate::error::panic_message(&*panic).unwrap_or_default();
        let first = what.lines().next().unwrap_or("").trim().to_string();
        mismatch(format!("its layers differ from the job's ({first})"))
    })?;
    let model = loaded.map_err(|e| mismatch(e.to_string()))?;
    let path = d.join(OPTIM_FILE);
    let bytes = std::fs::read(&path).map_err(|e| TrainError::BadState {
        path: path.clone(),
        message: format!(
            "cannot read the optimizer state ({e}); was the checkpoint written by an older dlc?"
        ),
    })?;
    let optim = decode_optim(&bytes, &optimizer_name(spec), slot_names(spec))
        .map_err(|message| TrainError::BadState { path, message })?;
    Ok((model, optim))
}

/// The optimizer state's file in a checkpoint.
const OPTIM_FILE: &str = "optim.safetensors";

fn optimizer_name(spec: &TrainSpec) -> String {
    serde_json::to_value(spec.optimizer)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// `state` as safetensors: one f32 tensor per slot, `optimizer` and `time` as metadata.
fn encode_optim(state: &FlatState, optimizer: &str, slots: &[&str]) -> Result<Vec<u8>, String> {
    if !state.is_empty() && state.slots.len() != slots.len() {
        return Err(format!(
            "{} slot(s) of optimizer state for {optimizer}, which keeps {}",
            state.slots.len(),
            slots.len()
        ));
    }
    let bytes: Vec<Vec<u8>> = state
        .slots
        .iter()
        .map(|s| s.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views = slots
        .iter()
        .zip(&bytes)
        .map(|(name, b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![b.len() / 4], b)
                .map(|v| (name.to_string(), v))
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    let meta = std::collections::HashMap::from([
        ("optimizer".to_string(), optimizer.to_string()),
        ("time".to_string(), state.time.to_string()),
        ("producer".to_string(), "dlcluster".to_string()),
    ]);
    safetensors::tensor::serialize(views, &Some(meta)).map_err(|e| e.to_string())
}

/// Reads what [`encode_optim`] wrote, for the job's `optimizer` with `slots`.
fn decode_optim(bytes: &[u8], optimizer: &str, slots: &[&str]) -> Result<FlatState, String> {
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
    let meta = header.metadata().clone().unwrap_or_default();
    let found = meta.get("optimizer").map_or("", String::as_str);
    if found != optimizer {
        return Err(format!(
            "the checkpoint holds {found} state, the job trains with {optimizer}; resume with the checkpoint's optimizer"
        ));
    }
    let time = meta
        .get("time")
        .and_then(|t| t.parse().ok())
        .ok_or("no optimizer step count (`time`) in the metadata")?;
    if st.names().is_empty() {
        return Ok(FlatState {
            time,
            slots: Vec::new(),
        });
    }
    let slots = slots
        .iter()
        .map(|name| {
            let t = st.tensor(name).map_err(|e| format!("slot `{name}`: {e}"))?;
            if t.dtype() != safetensors::Dtype::F32 {
                return Err(format!("slot `{name}` is {:?}, not F32", t.dtype()));
            }
            Ok(t.data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect())
        })
        .collect::<Result<Vec<Vec<f32>>, String>>()?;
    Ok(FlatState { time, slots })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_truncated_file_fails_verification() {
        let d = std::env::temp_dir().join(format!("dlc-ckpt-verify-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let data = vec![7u8; 1000];
        std::fs::write(d.join("model.bin"), &data).unwrap();
        let file = StateFile {
            state: LoopState {
                epoch: 1,
                step_in_epoch: 2,
                global_step: 12,
            },
            samples_in_epoch: 64,
            workers: 2,
            files: vec![FileSum::of("model.bin", &data)],
        };
        std::fs::write(d.join("state.json"), serde_json::to_vec(&file).unwrap()).unwrap();
        assert_eq!(verify(&d).unwrap().global_step, 12);
        std::fs::write(d.join("model.bin"), &data[..500]).unwrap();
        let e = verify(&d).unwrap_err();
        assert!(e.contains("500 bytes") && e.contains("1000 bytes"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
