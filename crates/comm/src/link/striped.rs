//! Several TCP streams to one peer as one [`Link`] (`tcp_streams` in
//! [`crate::CommConfig`]), as NCCL's `NCCL_NSOCKS_PERTHREAD`: where one stream is
//! slower than the network — a per-flow cap (clouds limit one flow to a fraction of
//! the NIC), one flow's congestion window on a long path — a message striped over
//! several streams moves at their sum.
//!
//! The byte stream is cut into [`CHUNK`]-byte pieces dealt round-robin over the
//! streams: piece `k` travels on stream `k mod n`. Both ends count the bytes they
//! moved, so each knows which stream carries the next byte; a piece is written (and
//! read) whole before the next stream is used, which keeps the order of one stream.
//! A message shorter than a piece crosses at most two streams (pieces run on from
//! one message to the next), so small messages keep one stream's latency.

use std::cell::Cell;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::Instant;

use super::shm::{message, receive, send};
use super::{Io, Link, Transport};
use crate::auth::JobKey;
use crate::transport::Acceptor;
use crate::CommError;

/// Bytes of a piece on one stream.
pub const CHUNK: u64 = 128 << 10;

/// The tag of the message that says which stream of a pair a connection is.
const STREAM: &[u8; 4] = b"DLCS";

/// `n` TCP streams to one peer, used as one link.
pub struct Striped {
    streams: Vec<TcpStream>,
    /// Bytes written so far (which stream the next byte goes on).
    sent: Cell<u64>,
    /// Bytes read so far.
    received: Cell<u64>,
}

impl Striped {
    /// The stream carrying byte `pos`, and how many bytes of its piece are left.
    fn at(&self, pos: u64) -> (&TcpStream, usize) {
        let n = self.streams.len() as u64;
        let i = ((pos / CHUNK) % n) as usize;
        (&self.streams[i], (CHUNK - pos % CHUNK) as usize)
    }
}

impl Link for Striped {
    fn write_some(&self, bytes: &[u8], peer: usize) -> Result<Io, CommError> {
        let (s, room) = self.at(self.sent.get());
        let io = s.write_some(&bytes[..bytes.len().min(room)], peer)?;
        if let Io::Moved(n) = io {
            self.sent.set(self.sent.get() + n as u64);
        }
        Ok(io)
    }

    fn read_some(&self, buf: &mut [u8], peer: usize) -> Result<Io, CommError> {
        let (s, room) = self.at(self.received.get());
        let n = buf.len().min(room);
        let io = s.read_some(&mut buf[..n], peer)?;
        if let Io::Moved(n) = io {
            self.received.set(self.received.get() + n as u64);
        }
        Ok(io)
    }

    fn arm(&self, _read: bool, _write: bool) -> bool {
        true
    }

    fn pollfds(&self, read: bool, write: bool, out: &mut Vec<libc::pollfd>) {
        let (r, _) = self.at(self.received.get());
        let (w, _) = self.at(self.sent.get());
        if read {
            r.pollfds(true, write && r.as_raw_fd() == w.as_raw_fd(), out);
        }
        if write && !(read && r.as_raw_fd() == w.as_raw_fd()) {
            w.pollfds(false, true, out);
        }
    }

    fn shutdown(&self) {
        for s in &self.streams {
            Link::shutdown(s);
        }
    }

    fn transport(&self) -> Transport {
        Transport::Tcp
    }

    fn tcp_streams(&self) -> usize {
        self.streams.len()
    }
}

/// What [`add_streams`] needs to open streams.
pub(crate) struct Dial<'a> {
    /// This rank.
    pub rank: usize,
    /// Every rank's listening address.
    pub addrs: &'a [String],
    /// The job's key, to authenticate each stream.
    pub key: &'a JobKey,
    /// Where authenticated connections from higher ranks arrive.
    pub acceptor: &'a Acceptor,
    /// Socket buffers of peer links.
    pub socket_buffer: Option<usize>,
    /// Every stream is up by then.
    pub deadline: Instant,
    /// The wait that deadline stands for (for the error).
    pub timeout: std::time::Duration,
}

/// Makes each TCP link in `links` one of `streams` streams: the higher rank of each
/// pair opens (and authenticates) `streams − 1` more connections to the lower, each
/// introducing itself with its index. `raw` holds a second handle of each link's
/// first stream. Links on shared memory are left as they are.
pub(crate) fn add_streams(
    mut links: Vec<Option<Box<dyn Link>>>,
    raw: Vec<Option<TcpStream>>,
    streams: usize,
    dial: &Dial<'_>,
) -> Result<Vec<Option<Box<dyn Link>>>, CommError> {
    let tcp: Vec<bool> = links
        .iter()
        .map(|l| l.as_ref().is_some_and(|l| l.transport() == Transport::Tcp))
        .collect();
    let mut extra: Vec<Vec<Option<TcpStream>>> = (0..links.len())
        .map(|_| (1..streams).map(|_| None).collect())
        .collect();
    // Connect to every lower rank first, then take the higher ranks' connections:
    // no rank waits before it has dialled, so no two ranks wait on each other.
    for p in (0..dial.rank).filter(|&p| tcp[p]) {
        for k in 1..streams {
            let mut s = crate::transport::connect_peer(
                &dial.addrs[p],
                dial.key,
                dial.rank,
                p,
                dial.deadline,
            )?;
            send(&mut s, &message(STREAM, k as u8, ""), p, dial.deadline)?;
            extra[p][k - 1] = Some(s);
        }
    }
    let mut missing = (dial.rank + 1..links.len()).filter(|&p| tcp[p]).count() * (streams - 1);
    while missing > 0 {
        let left = dial.deadline.saturating_duration_since(Instant::now());
        let Ok((p, mut s)) = dial.acceptor.incoming.recv_timeout(left) else {
            let p = (dial.rank + 1..links.len())
                .find(|&p| tcp[p] && extra[p].iter().any(Option::is_none))
                .unwrap_or(dial.rank);
            return Err(CommError::Timeout {
                rank: p,
                timeout: dial.timeout,
                during: format!("waiting for rank {p}'s {} more TCP stream(s)", streams - 1),
            });
        };
        // A connection that does not introduce itself (one its dialler gave up on)
        // is dropped; the stream it stood for still has until the deadline.
        let k = match receive(&mut s, STREAM, p, dial.deadline) {
            Ok(m) => m[4] as usize,
            Err(e) => {
                tracing::warn!(
                    "rank {}: dropping a connection from rank {p}: {e}",
                    dial.rank
                );
                continue;
            }
        };
        match extra.get_mut(p).and_then(|e| e.get_mut(k.wrapping_sub(1))) {
            Some(slot @ None) if p > dial.rank && tcp[p] => {
                *slot = Some(s);
                missing -= 1;
            }
            _ => tracing::warn!(
                "rank {}: ignoring an unexpected stream {k} from rank {p}",
                dial.rank
            ),
        }
    }
    for (p, first) in raw.into_iter().enumerate() {
        let (Some(first), true) = (first, tcp[p]) else {
            continue;
        };
        let mut all = vec![first];
        for s in extra[p].drain(..).flatten() {
            crate::transport::tune(&s, dial.socket_buffer)?;
            all.push(s);
        }
        links[p] = Some(Box::new(Striped {
            streams: all,
            sent: Cell::new(0),
            received: Cell::new(0),
        }));
    }
    Ok(links)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    fn pair(l: &TcpListener) -> (TcpStream, TcpStream) {
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    fn striped(streams: Vec<TcpStream>) -> Striped {
        Striped {
            streams,
            sent: Cell::new(0),
            received: Cell::new(0),
        }
    }

    /// Writes all of `msg` through `tx` (blocking sockets) on a thread of its own.
    fn send_all(tx: Striped, msg: Vec<u8>) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let mut at = 0;
            while at < msg.len() {
                match tx.write_some(&msg[at..], 1).unwrap() {
                    Io::Moved(n) => at += n,
                    Io::Blocked => unreachable!("blocking sockets"),
                }
            }
        })
    }

    #[test]
    fn pieces_go_round_robin_and_come_back_in_order() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = CHUNK as usize;
        let msg: Vec<u8> = (0..3 * c + 1000).map(|i| (i % 251) as u8).collect();

        // Piece k travels on stream k mod 2.
        let ((a0, b0), (a1, b1)) = (pair(&l), pair(&l));
        let sender = send_all(striped(vec![a0, a1]), msg.clone());
        let first = std::thread::spawn(move || {
            let mut v = vec![0u8; 2 * c];
            (&b0).read_exact(&mut v).unwrap();
            v
        });
        let mut second = vec![0u8; c + 1000];
        (&b1).read_exact(&mut second).unwrap();
        let first = first.join().unwrap();
        sender.join().unwrap();
        assert!(first[..c] == msg[..c] && first[c..] == msg[2 * c..3 * c]);
        assert!(second[..c] == msg[c..2 * c] && second[c..] == msg[3 * c..]);

        // And a striped reader puts them back in order.
        let ((a0, b0), (a1, b1)) = (pair(&l), pair(&l));
        let sender = send_all(striped(vec![a0, a1]), msg.clone());
        let rx = striped(vec![b0, b1]);
        let mut got = vec![0u8; msg.len()];
        let mut at = 0;
        while at < got.len() {
            match rx.read_some(&mut got[at..], 0).unwrap() {
                Io::Moved(n) => at += n,
                Io::Blocked => unreachable!("blocking sockets"),
            }
        }
        sender.join().unwrap();
        assert!(got == msg);
    }
}
