//! Planning: which machines, how many, which network graph — and what it costs.
//!
//! * [`catalog`]: the instance catalog (TOML), validated.
//! * [`profile`]: what a job needs, measured by `dlc profile`.
//! * [`comm`]: the network term fitted to measured all-reduce times.
//! * [`model`]: the cost/performance model, one [`model::Estimate`] per
//!   instance × node count × strategy, and the Pareto frontier.
//! * [`plot`]: cost vs time with the frontier highlighted.
//! * [`scaling`]: measured scaling across hosts beside the model's prediction, and
//!   its plot.

pub mod catalog;
pub mod comm;
pub mod model;
pub mod plot;
pub mod profile;
pub mod scaling;

pub use catalog::{Catalog, CatalogError};
pub use comm::CommProfile;
pub use model::{estimate_all, pareto, within, Assumptions, Estimate, Strategy};
pub use profile::Profile;
