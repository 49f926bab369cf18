//! Point-to-point transfers between pairs of ranks (used by parameter servers).
//!
//! Every message carries the same 64-byte descriptor as the collectives, with a
//! per-pair sequence number, so a receiver that expects another length or message
//! fails with [`CommError::Mismatch`] instead of misreading bytes.

use std::time::{Duration, Instant};

use crate::collectives::{check_header, header, Op, HEADER};
use crate::communicator::Communicator;
use crate::element::Element;
use crate::link::Io;
use crate::rendezvous::{BUSY_LIMIT, HEARTBEAT};
use crate::transport::{wait, Want, Woke};
use crate::CommError;

/// How long a rank blocked on a shared-memory peer spins before it sleeps.
const SPIN: Duration = Duration::from_micros(50);

impl Communicator {
    fn p2p_header<T: Element>(&self, seq: u64, count: usize) -> [u8; HEADER] {
        header(Op::PointToPoint, T::CODE, 0, seq, count, "")
    }

    /// Sends each `(peer, data)` and receives each `(peer, buffer)` (filling the
    /// buffer exactly), all at once: no ordering between peers can deadlock.
    pub fn exchange<T: Element>(
        &mut self,
        sends: &[(usize, &[T])],
        recvs: &mut [(usize, &mut [T])],
    ) -> Result<(), CommError> {
        let r = self.exchange_inner(sends, recvs);
        r.map_err(|e| self.root_cause(e))
    }

    fn exchange_inner<T: Element>(
        &mut self,
        sends: &[(usize, &[T])],
        recvs: &mut [(usize, &mut [T])],
    ) -> Result<(), CommError> {
        for &(p, _) in sends.iter() {
            self.check_peer(p)?;
        }
        for (p, _) in recvs.iter() {
            self.check_peer(*p)?;
        }
        let send_hdrs: Vec<[u8; HEADER]> = sends
            .iter()
            .map(|(p, d)| {
                self.p2p_send_seq[*p] += 1;
                self.p2p_header::<T>(self.p2p_send_seq[*p], d.len())
            })
            .collect();
        let recv_hdrs: Vec<[u8; HEADER]> = recvs
            .iter()
            .map(|(p, b)| {
                self.p2p_recv_seq[*p] += 1;
                self.p2p_header::<T>(self.p2p_recv_seq[*p], b.len())
            })
            .collect();
        let mut sent = vec![0usize; sends.len()];
        let mut got = vec![0usize; recvs.len()];
        let mut got_hdr = vec![[0u8; HEADER]; recvs.len()];
        loop {
            let mut moved = false;
            let mut wants: Vec<(usize, bool, bool)> = Vec::new();
            for (i, (p, data)) in sends.iter().enumerate() {
                let bytes: &[u8] = bytemuck::cast_slice(data);
                let total = HEADER + bytes.len();
                while sent[i] < total {
                    let chunk = if sent[i] < HEADER {
                        &send_hdrs[i][sent[i]..]
                    } else {
                        &bytes[sent[i] - HEADER..]
                    };
                    match self.link(*p).write_some(chunk, *p)? {
                        Io::Moved(m) => {
                            sent[i] += m;
                            moved = true;
                        }
                        Io::Blocked => {
                            wants.push((*p, true, false));
                            break;
                        }
                    }
                }
            }
            for (i, (p, buf)) in recvs.iter_mut().enumerate() {
                let total = HEADER + std::mem::size_of_val(*buf);
                while got[i] < total {
                    let res = if got[i] < HEADER {
                        self.link(*p).read_some(&mut got_hdr[i][got[i]..], *p)?
                    } else {
                        let bytes: &mut [u8] = bytemuck::cast_slice_mut(buf);
                        self.link(*p).read_some(&mut bytes[got[i] - HEADER..], *p)?
                    };
                    match res {
                        Io::Moved(m) => {
                            let before = got[i];
                            got[i] += m;
                            moved = true;
                            if before < HEADER && got[i] >= HEADER {
                                check_header(&recv_hdrs[i], &got_hdr[i], *p)?;
                            }
                        }
                        Io::Blocked => {
                            match wants.iter_mut().find(|w| w.0 == *p) {
                                Some(w) => w.2 = true,
                                None => wants.push((*p, false, true)),
                            }
                            break;
                        }
                    }
                }
            }
            if wants.is_empty() {
                return Ok(());
            }
            if !moved {
                self.block_on(&wants, "point-to-point exchange")?;
            }
        }
    }

    /// Waits until at least one of `peers` has data to read (or `timeout`, which is
    /// not an error: returns an empty list). Used by servers that serve whichever
    /// worker is ready first.
    pub fn readable(
        &mut self,
        peers: &[usize],
        timeout: Duration,
    ) -> Result<Vec<usize>, CommError> {
        // A shared-memory link with bytes waiting is readable without a poll.
        let ready: Vec<usize> = peers
            .iter()
            .copied()
            .filter(|&p| !self.link(p).arm(true, false))
            .collect();
        if !ready.is_empty() {
            return Ok(ready);
        }
        // One entry per peer: a link waiting to read alone polls one descriptor.
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(peers.len() + 1);
        for &p in peers {
            self.link(p).pollfds(true, false, &mut fds);
        }
        fds.push(libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&self.control.stream),
            events: libc::POLLIN,
            revents: 0,
        });
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `fds` is a valid, exclusively borrowed pollfd array of that length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(Vec::new());
            }
            return Err(CommError::io("poll")(e));
        }
        if n == 0 {
            return match self.coordinator_silence() {
                Some(e) => Err(e),
                None => Ok(Vec::new()),
            };
        }
        if fds.last().is_some_and(|f| f.revents != 0) {
            return match self.control_event() {
                Some(e) => Err(e),
                None => Ok(Vec::new()),
            };
        }
        Ok(peers
            .iter()
            .zip(&fds)
            .filter(|(_, f)| f.revents != 0)
            .map(|(&p, _)| p)
            .collect())
    }

    fn check_peer(&self, p: usize) -> Result<(), CommError> {
        if p >= self.world() || p == self.rank() {
            return Err(CommError::Usage(format!(
                "rank {} cannot exchange with rank {p} (world size {})",
                self.rank(),
                self.world()
            )));
        }
        Ok(())
    }

    /// Waits until one of `wants` is ready. Fails when the coordinator reports a
    /// failed rank or falls silent, or when the wait outlasts its [`Stall`] bounds.
    pub(crate) fn block_on(
        &mut self,
        wants: &[(usize, bool, bool)],
        during: &str,
    ) -> Result<(), CommError> {
        // A peer on shared memory usually answers within microseconds: spin a
        // little before the system calls of sleeping and being woken, yielding the
        // core at every look — the peer may be waiting for it (more ranks than
        // cores, or the scheduler put both on one). Yielding every 64 looks instead
        // made a 2-rank 4 KiB all-reduce 4.5–38 µs instead of 1.0–1.2 (2026-12-02).
        if wants.iter().any(|&(p, _, _)| self.link(p).spins()) {
            let start = Instant::now();
            loop {
                if wants
                    .iter()
                    .any(|&(p, write, read)| self.link(p).ready_now(read, write))
                {
                    return Ok(());
                }
                if start.elapsed() >= SPIN {
                    break;
                }
                std::thread::yield_now();
            }
        }
        let mut stall = Stall::new();
        loop {
            let Some(left) = stall.left(self) else {
                let culprit = wants.iter().find(|w| w.2).or(wants.first());
                return Err(CommError::Timeout {
                    rank: culprit.map_or(0, |w| w.0),
                    timeout: stall.waited(),
                    during: during.to_string(),
                });
            };
            let w: Vec<Want<'_>> = wants
                .iter()
                .map(|&(peer, write, read)| Want {
                    link: self.link(peer),
                    peer,
                    write,
                    read,
                })
                .collect();
            // Short slices: the coordinator's heartbeat answers are checked between them.
            match wait(&w, Some(&self.control.stream), left.min(HEARTBEAT), during) {
                Ok(Woke::Ready) => return Ok(()),
                Ok(Woke::Control) => {
                    if let Some(e) = self.control_event() {
                        return Err(e);
                    }
                }
                // Nothing arrived in this slice, the control connection included.
                Err(CommError::Timeout { .. }) => {
                    if let Some(e) = self.coordinator_silence() {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// The bounds of a wait without progress: the collective deadline counts only while
/// no rank is busy with announced long work ([`Communicator::busy`]; such a rank
/// stays alive or the coordinator says otherwise), and [`BUSY_LIMIT`] caps the whole.
pub struct Stall {
    begun: Instant,
    idle_from: Instant,
    /// Whether a rank was busy at the last look: the deadline then restarts when
    /// the work is seen to end, not at that last look (a wait slice earlier).
    was_busy: bool,
}

impl Stall {
    /// A wait that starts now.
    pub fn new() -> Self {
        let now = Instant::now();
        Self {
            begun: now,
            idle_from: now,
            was_busy: false,
        }
    }

    /// How much longer the wait may last, as `comm` sees the job now; `None` when
    /// it is over (a timeout).
    pub fn left(&mut self, comm: &Communicator) -> Option<Duration> {
        let timeout = comm.cfg.timeout;
        let busy = !comm.control.busy.is_empty();
        let was_busy = std::mem::replace(&mut self.was_busy, busy);
        if busy || was_busy {
            self.idle_from = Instant::now();
        }
        let cap = timeout.max(BUSY_LIMIT).checked_sub(self.begun.elapsed())?;
        let left = timeout.checked_sub(self.idle_from.elapsed())?;
        Some(left.min(cap)).filter(|l| !l.is_zero())
    }

    /// How long the wait has lasted.
    pub fn waited(&self) -> Duration {
        self.begun.elapsed()
    }
}

impl Default for Stall {
    fn default() -> Self {
        Self::new()
    }
}
