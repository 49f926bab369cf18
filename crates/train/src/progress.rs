//! Progress display: a bar on a terminal, plain lines otherwise.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// Environment variable that makes a worker report progress as JSON lines on stdout
/// (set by the local launcher, which draws one bar for the whole job).
pub const PROGRESS_ENV: &str = "DLC_PROGRESS";

/// Shows training progress on stderr (or as JSON events on stdout for a launcher).
pub struct Progress {
    bar: Option<ProgressBar>,
    quiet: bool,
    json: bool,
    epoch: std::cell::Cell<(usize, usize, usize)>,
}

/// Prints one JSON event line on stdout (launcher protocol).
pub fn emit(event: &serde_json::Value) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{event}");
    let _ = out.flush();
}

impl Progress {
    /// A bar when stderr is a terminal (unless `quiet`), plain lines otherwise; JSON
    /// events when `DLC_PROGRESS=json`.
    pub fn new(quiet: bool) -> Self {
        let json = !quiet && std::env::var(PROGRESS_ENV).is_ok_and(|v| v == "json");
        if json {
            return Self {
                bar: None,
                quiet,
                json,
                epoch: Default::default(),
            };
        }
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>12} [{bar:30}] {pos}/{len} steps {msg} ({elapsed}<{eta})",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar
        });
        Self {
            bar,
            quiet,
            json,
            epoch: Default::default(),
        }
    }

    /// Starts an epoch of `steps` steps, `done` of which are already done.
    pub fn start_epoch(&self, epoch: usize, epochs: usize, steps: usize, done: usize) {
        self.epoch.set((epoch, epochs, steps));
        if self.json {
            emit(
                &serde_json::json!({"event": "progress", "epoch": epoch, "epochs": epochs,
                "step": done, "steps": steps, "msg": ""}),
            );
        }
        if let Some(bar) = &self.bar {
            bar.reset();
            bar.set_length(steps as u64);
            bar.set_position(done as u64);
            bar.set_prefix(format!("epoch {epoch}/{epochs}"));
        }
    }

    /// Reports a step; `line` is printed as a plain line when there is no bar.
    pub fn step(&self, pos: usize, msg: &str, line: bool) {
        if self.json {
            if line {
                let (epoch, epochs, steps) = self.epoch.get();
                emit(
                    &serde_json::json!({"event": "progress", "epoch": epoch, "epochs": epochs,
                    "step": pos, "steps": steps, "msg": msg}),
                );
            }
            return;
        }
        match &self.bar {
            Some(bar) => {
                bar.set_position(pos as u64);
                bar.set_message(msg.to_string());
            }
            None if line && !self.quiet => eprintln!("  step {pos}: {msg}"),
            None => {}
        }
    }

    /// Prints a line above the bar (or plainly).
    pub fn println(&self, msg: &str) {
        if self.json {
            emit(&serde_json::json!({"event": "log", "msg": msg}));
            return;
        }
        match &self.bar {
            Some(bar) => bar.println(msg),
            None if !self.quiet => eprintln!("{msg}"),
            None => {}
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
