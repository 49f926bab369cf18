//! dlcluster's network graph: how workers find each other and combine gradients.
//!
//! * [`rendezvous`]: a small coordinator with a key-value store; workers join with
//!   `(job id, rank, world size, job token)`, publish their listening address and get
//!   the peer table once every rank has joined.
//! * [`transport`]: TCP links between peers. Every connection starts with an HMAC
//!   challenge–response proving both ends know the job token; links are non-blocking
//!   and driven by one poll loop per collective.
//! * [`link`]: what the collectives move bytes through — TCP, or shared memory
//!   between ranks on the same host ([`Transport`]).
//! * [`Communicator`]: the collectives on flat buffers — `all_reduce` (ring, pipelined;
//!   direct exchange for small messages), `broadcast`, `all_gather`, `reduce_scatter`,
//!   `barrier`; `all_reduce_compressed` sends f32 buffers as bf16 or fp16
//!   ([`Compression`]). Knows nothing of models or tensors.
//!
//! Every blocking wait has a deadline ([`CommConfig::timeout`], extended while a rank
//! announced long work: [`Communicator::busy`]); a peer that dies, stops or stalls
//! becomes a [`CommError`] naming it, and so does a coordinator that falls silent.

pub mod auth;
mod collectives;
mod communicator;
mod compress;
mod element;
mod error;
pub mod frame;
pub mod link;
mod p2p;
pub mod rendezvous;
pub mod transport;

pub use communicator::{CommConfig, Communicator, ReduceOp, MAX_TCP_STREAMS};
pub use compress::Compression;
pub use element::Element;
pub use error::CommError;
pub use link::Transport;
pub use p2p::Stall;
pub use rendezvous::Coordinator;
