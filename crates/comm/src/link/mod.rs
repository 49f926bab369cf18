//! Links between two ranks: the byte pipes the collectives drive.
//!
//! Every algorithm (ring, direct exchange, chain, point-to-point) moves bytes through
//! [`Link`] only: non-blocking `write_some`/`read_some`, and a way to sleep until the
//! link may move again ([`Link::arm`], [`Link::pollfd`]) in the one `poll(2)` loop of
//! [`crate::transport::wait`]. One file per transport:
//!
//! * [`tcp`]: a TCP stream (ranks on different hosts, or `--transport tcp`).
//! * [`striped`]: several TCP streams to one peer, a message dealt over them in
//!   pieces (`tcp_streams` > 1).
//! * [`shm`]: two ring buffers in a shared mapping for ranks on the same host; the
//!   pair's TCP stream stays as the doorbell and as the liveness signal (the kernel
//!   closes a dead process's socket, so a dead peer still wakes and fails a waiter).

use crate::CommError;

pub mod shm;
pub mod striped;
pub mod tcp;

/// Outcome of a non-blocking transfer attempt.
pub enum Io {
    /// Bytes moved.
    Moved(usize),
    /// The link cannot move bytes now.
    Blocked,
}

/// Which transport carries peer links.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// Shared memory between ranks on the same host (same boot and network
    /// namespace), TCP between hosts.
    #[default]
    Auto,
    /// TCP for every link.
    Tcp,
    /// Shared memory wherever both ranks are on the same host (as `auto`; named so
    /// that a benchmark can ask for it).
    Shm,
}

impl Transport {
    /// The name used on command lines and in JSON lines.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Auto => "auto",
            Transport::Tcp => "tcp",
            Transport::Shm => "shm",
        }
    }
}

impl std::str::FromStr for Transport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Transport::Auto),
            "tcp" => Ok(Transport::Tcp),
            "shm" => Ok(Transport::Shm),
            other => Err(format!("unknown transport `{other}`: use auto, tcp or shm")),
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A connection to one peer, used by one thread at a time (`&mut Communicator`):
/// shared-memory rings have one reader and one writer, and what [`Link::lend`] lent
/// stays valid until [`Link::consume`].
pub trait Link: Send {
    /// Writes what the link takes now.
    fn write_some(&self, bytes: &[u8], peer: usize) -> Result<Io, CommError>;
    /// Reads what the link holds now; a closed link is an error naming `peer`.
    fn read_some(&self, buf: &mut [u8], peer: usize) -> Result<Io, CommError>;
    /// Prepares to sleep until the link can read (`read`) or write (`write`):
    /// returns false when it can already, and the caller must not sleep.
    fn arm(&self, read: bool, write: bool) -> bool;
    /// Up to `max` bytes that have arrived, lent in place (shared memory) so that the
    /// caller can reduce straight out of them, then release some with
    /// [`Link::consume`]; an empty slice when nothing has arrived, `None` when the
    /// link cannot lend (TCP: use `read_some`).
    fn lend(&self, _max: usize, _peer: usize) -> Result<Option<&[u8]>, CommError> {
        Ok(None)
    }
    /// Releases the first `n` bytes of what [`Link::lend`] lent.
    fn consume(&self, _n: usize) {}
    /// Whether the link can read (`read`) or write (`write`) now, if it can tell
    /// without a system call (shared memory can; sockets say false): what a waiter
    /// checks while it spins briefly before sleeping.
    fn ready_now(&self, _read: bool, _write: bool) -> bool {
        false
    }
    /// Whether spinning on [`Link::ready_now`] can see this link become ready.
    fn spins(&self) -> bool {
        false
    }
    /// What `poll(2)` waits on for that, added to `out`: one entry when only
    /// `read` is asked (callers map entries back to peers), one or two otherwise.
    fn pollfds(&self, read: bool, write: bool, out: &mut Vec<libc::pollfd>);
    /// Closes the link (both directions), as a crash would.
    fn shutdown(&self);
    /// The transport carrying it.
    fn transport(&self) -> Transport;
    /// How many TCP streams carry it (0 for shared memory).
    fn tcp_streams(&self) -> usize {
        1
    }
}
