//! Progress display: a bar on a terminal, plain lines otherwise.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// Shows training progress on stderr.
pub struct Progress {
    bar: Option<ProgressBar>,
    quiet: bool,
}

impl Progress {
    /// A bar when stderr is a terminal (unless `quiet`), plain lines otherwise.
    pub fn new(quiet: bool) -> Self {
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
        Self { bar, quiet }
    }

    /// Starts an epoch of `steps` steps, `done` of which are already done.
    pub fn start_epoch(&self, epoch: usize, epochs: usize, steps: usize, done: usize) {
        if let Some(bar) = &self.bar {
            bar.reset();
            bar.set_length(steps as u64);
            bar.set_position(done as u64);
            bar.set_prefix(format!("epoch {epoch}/{epochs}"));
        }
    }

    /// Reports a step; `line` is printed as a plain line when there is no bar.
    pub fn step(&self, pos: usize, msg: &str, line: bool) {
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
