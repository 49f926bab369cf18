//! Models for dlcluster: a layer list from the job file, with shapes inferred from the
//! data, built into a burn module ([`Net`]).
//!
//! Parameter names (in `model.safetensors` and checkpoints) are stable:
//! `layers.<i>.weight` and `layers.<i>.bias` for dense and conv2d layers,
//! `layers.<i>.gamma`, `layers.<i>.beta`, `layers.<i>.running_mean`,
//! `layers.<i>.running_var` for batchnorm, where `<i>` is the layer's index in the
//! resolved layer list (presets expanded; see [`dlc_job::Preset`]). Inside residual
//! block `<i>`: `layers.<i>.layers.<j>.…` for its layers and
//! `layers.<i>.projection.weight` / `.bias` for its shortcut's projection; an
//! embedding's table is `layers.0.weight` (`[vocab, dim]`).

pub mod kernels;
mod net;
mod norm;
mod shape;

pub use net::{Layer, LayerHook, Net, Op, Residual, Shortcut};
pub use norm::BatchNorm;
pub use shape::{plan, Block, LayerPlan, ModelError, Projection, Shape};
