//! Errors of the network graph.

use std::time::Duration;

/// Why a communication step failed.
#[derive(Debug, thiserror::Error)]
pub enum CommError {
    /// Socket-level failure that is not attributable to a peer.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A peer closed its connection or reset it.
    #[error("lost connection to rank {rank}: {reason}")]
    PeerLost {
        /// The peer.
        rank: usize,
        /// What was observed.
        reason: String,
    },
    /// A peer did not send or accept data within the deadline.
    #[error("rank {rank} did not respond within {timeout:?} ({during})")]
    Timeout {
        /// The peer waited on.
        rank: usize,
        /// The deadline.
        timeout: Duration,
        /// What was being done.
        during: String,
    },
    /// The coordinator reported that another rank failed.
    #[error("job aborted: rank {rank} failed: {reason}")]
    Aborted {
        /// Rank that failed.
        rank: usize,
        /// What the coordinator saw.
        reason: String,
    },
    /// The rendezvous failed (bad rank, duplicate, late, wrong job, deadline).
    #[error("rendezvous failed: {0}")]
    Rendezvous(String),
    /// Authentication of a connection failed.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// A peer sent bytes that do not follow the protocol.
    #[error("protocol error from {peer}: {message}")]
    Protocol {
        /// Who sent it (address or rank).
        peer: String,
        /// What is wrong.
        message: String,
    },
    /// Ranks called different collectives or with different sizes.
    #[error("rank {rank} called {theirs} while this rank called {ours}")]
    Mismatch {
        /// The peer.
        rank: usize,
        /// This rank's call.
        ours: String,
        /// The peer's call.
        theirs: String,
    },
    /// Invalid arguments to a collective.
    #[error("{0}")]
    Usage(String),
}

impl CommError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| CommError::Io { context, source }
    }
}
