//! Plotting shared by dlcluster's commands.
//!
//! * [`font`]: the TrueType font that PNG text is laid out with.
//! * [`axes`]: log axes over whole decades with 1-2-5 ticks and short labels.
//! * [`lines`]: named line series in palette colours and the legend box.
//! * [`curves`]: training curves (loss per step, test accuracy per epoch) of one or
//!   more run directories, drawn from their `metrics.jsonl`.

pub mod axes;
pub mod curves;
pub mod font;
pub mod lines;
