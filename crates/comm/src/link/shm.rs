//! Shared memory between two ranks on the same host.
//!
//! A pair's segment is a file in `/dev/shm` (mode 0600, a random name sent over the
//! pair's authenticated TCP link, unlinked once both ends mapped it) holding two
//! single-producer single-consumer byte rings, one per direction. Bytes are copied
//! in and out with `memcpy`; head and tail are monotonic byte counters on cache
//! lines of their own.
//!
//! Wake-ups go through the pair's TCP stream, which stays open as a doorbell: before
//! sleeping a side raises a "waiting" flag on the ring it waits for and checks the
//! ring again (both with sequentially consistent ordering, so a writer that moves
//! bytes either sees the flag or the waiter sees the bytes); the other side, after
//! moving bytes, clears a raised flag and sends one byte. So a side sleeps in the
//! same `poll(2)` as TCP links, with the same deadlines, and a dead peer's socket,
//! closed by the kernel, wakes it and fails it naming that peer.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{Io, Link, Transport};
use crate::CommError;

/// Bytes of one ring's data (a power of two).
pub const RING_BYTES: usize = 1 << 20;
/// One ring's control block: head, reader-waiting, tail, writer-waiting, each on a
/// cache line of its own.
const CONTROL: usize = 256;
const SEGMENT: usize = 2 * (CONTROL + RING_BYTES);

/// The host a process runs on, as far as shared memory goes: the kernel's boot id
/// and the process's network namespace (ranks in different namespaces are
/// different hosts, as on the multi-host test cluster).
pub fn host_id() -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let net = std::fs::read_link("/proc/self/ns/net")
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    if boot.is_empty() || net.is_empty() {
        // Not Linux's /proc: never share memory on a guess.
        return String::new();
    }
    format!("{boot}/{net}")
}

/// A mapped segment.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; all access goes through atomics or
// through byte ranges that the ring protocol gives to one side at a time.
unsafe impl Send for Mapping {}

impl Mapping {
    fn map(file: &std::fs::File, len: usize) -> std::io::Result<Self> {
        // SAFETY: a fresh shared mapping of a file we opened read-write, of its length.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped, once.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

/// One direction's ring inside a mapping.
#[derive(Clone, Copy)]
struct Ring {
    base: *mut u8,
}

impl Ring {
    fn at(m: &Mapping, index: usize) -> Self {
        // SAFETY: index 0 or 1; both rings lie inside the segment.
        Self {
            base: unsafe { m.ptr.add(index * (CONTROL + RING_BYTES)) },
        }
    }

    fn word(&self, offset: usize) -> &AtomicU64 {
        // SAFETY: aligned (page-aligned base, offsets multiples of 64) and in bounds.
        unsafe { &*(self.base.add(offset) as *const AtomicU64) }
    }

    fn flag(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: as `word`.
        unsafe { &*(self.base.add(offset) as *const AtomicU32) }
    }

    fn head(&self) -> &AtomicU64 {
        self.word(0)
    }
    fn reader_waiting(&self) -> &AtomicU32 {
        self.flag(64)
    }
    fn tail(&self) -> &AtomicU64 {
        self.word(128)
    }
    fn writer_waiting(&self) -> &AtomicU32 {
        self.flag(192)
    }

    fn data(&self) -> *mut u8 {
        // SAFETY: the data follows the control block inside the segment.
        unsafe { self.base.add(CONTROL) }
    }

    /// Copies as much of `bytes` as fits (writer side only).
    fn write(&self, bytes: &[u8]) -> usize {
        let h = self.head().load(Ordering::Relaxed);
        let t = self.tail().load(Ordering::Acquire);
        // Clamped: counters the peer wrote can never make us copy outside the ring.
        let free = RING_BYTES - (h.wrapping_sub(t) as usize).min(RING_BYTES);
        let n = free.min(bytes.len());
        if n == 0 {
            return 0;
        }
        let at = h as usize & (RING_BYTES - 1);
        let first = n.min(RING_BYTES - at);
        // SAFETY: [at, at+first) and [0, n-first) are free ring bytes, which the
        // reader does not touch until `head` is published below.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.data().add(at), first);
            std::ptr::copy_nonoverlapping(bytes.as_ptr().add(first), self.data(), n - first);
        }
        self.head().store(h + n as u64, Ordering::Release);
        n
    }

    /// Copies out as much as has arrived, up to `buf.len()` (reader side only).
    fn read(&self, buf: &mut [u8]) -> usize {
        let t = self.tail().load(Ordering::Relaxed);
        let h = self.head().load(Ordering::Acquire);
        let n = (h.wrapping_sub(t) as usize).min(RING_BYTES).min(buf.len());
        if n == 0 {
            return 0;
        }
        let at = t as usize & (RING_BYTES - 1);
        let first = n.min(RING_BYTES - at);
        // SAFETY: [at, at+first) and [0, n-first) hold published bytes, which the
        // writer does not reuse until `tail` is published below.
        unsafe {
            std::ptr::copy_nonoverlapping(self.data().add(at), buf.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(self.data(), buf.as_mut_ptr().add(first), n - first);
        }
        self.tail().store(t + n as u64, Ordering::Release);
        n
    }

    /// The arrived bytes from the tail up to the wrap, at most `max` (reader side).
    fn lend(&self, max: usize) -> &[u8] {
        let t = self.tail().load(Ordering::Relaxed);
        let h = self.head().load(Ordering::Acquire);
        let at = t as usize & (RING_BYTES - 1);
        let n = (h.wrapping_sub(t) as usize).min(max).min(RING_BYTES - at);
        // SAFETY: published bytes, not reused by the writer until `tail` moves past
        // them (`advance`), which only this reader does.
        unsafe { std::slice::from_raw_parts(self.data().add(at), n) }
    }

    /// Releases `n` lent bytes to the writer (reader side).
    fn advance(&self, n: usize) {
        let t = self.tail().load(Ordering::Relaxed);
        self.tail().store(t + n as u64, Ordering::Release);
    }

    fn has_data(&self) -> bool {
        self.head().load(Ordering::SeqCst) != self.tail().load(Ordering::SeqCst)
    }

    fn has_space(&self) -> bool {
        let used = self
            .head()
            .load(Ordering::SeqCst)
            .wrapping_sub(self.tail().load(Ordering::SeqCst));
        (used as usize) < RING_BYTES
    }
}

/// A link to a peer on the same host.
pub struct ShmLink {
    tx: Ring,
    rx: Ring,
    /// The pair's TCP stream: doorbell and liveness.
    bell: TcpStream,
    _map: Mapping,
}

// SAFETY: the rings point into `_map`, which lives as long as the link; see Mapping.
// Not Sync: each ring has one reader and one writer, and a link is used by one
// thread at a time.
unsafe impl Send for ShmLink {}

impl ShmLink {
    fn ring_bell(&self) {
        // A full socket buffer holds doorbells enough; a closed one is noticed by
        // the reading side.
        let _ = (&self.bell).write(&[1]);
    }

    /// Reads pending doorbells; the peer's socket closing is its end.
    fn drain(&self, peer: usize) -> Result<(), CommError> {
        let mut junk = [0u8; 64];
        loop {
            match (&self.bell).read(&mut junk) {
                Ok(0) => {
                    return Err(CommError::PeerLost {
                        rank: peer,
                        reason: "connection closed".into(),
                    })
                }
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(CommError::PeerLost {
                        rank: peer,
                        reason: format!("receive failed: {e}"),
                    })
                }
            }
        }
    }
}

impl Link for ShmLink {
    fn write_some(&self, bytes: &[u8], peer: usize) -> Result<Io, CommError> {
        if bytes.is_empty() {
            return Ok(Io::Moved(0));
        }
        let n = self.tx.write(bytes);
        if n == 0 {
            self.drain(peer)?;
            return Ok(Io::Blocked);
        }
        fence(Ordering::SeqCst);
        if self.tx.reader_waiting().swap(0, Ordering::SeqCst) != 0 {
            self.ring_bell();
        }
        Ok(Io::Moved(n))
    }

    fn read_some(&self, buf: &mut [u8], peer: usize) -> Result<Io, CommError> {
        if buf.is_empty() {
            return Ok(Io::Moved(0));
        }
        let n = self.rx.read(buf);
        if n == 0 {
            self.drain(peer)?;
            return Ok(Io::Blocked);
        }
        fence(Ordering::SeqCst);
        if self.rx.writer_waiting().swap(0, Ordering::SeqCst) != 0 {
            self.ring_bell();
        }
        Ok(Io::Moved(n))
    }

    fn lend(&self, max: usize, peer: usize) -> Result<Option<&[u8]>, CommError> {
        let lent = self.rx.lend(max);
        if lent.is_empty() && max > 0 {
            self.drain(peer)?;
        }
        Ok(Some(lent))
    }

    fn consume(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.rx.advance(n);
        fence(Ordering::SeqCst);
        if self.rx.writer_waiting().swap(0, Ordering::SeqCst) != 0 {
            self.ring_bell();
        }
    }

    fn arm(&self, read: bool, write: bool) -> bool {
        if read {
            self.rx.reader_waiting().store(1, Ordering::SeqCst);
        }
        if write {
            self.tx.writer_waiting().store(1, Ordering::SeqCst);
        }
        fence(Ordering::SeqCst);
        // Doorbells of wake-ups already used would wake the poll at once (and make
        // `readable` report a peer that sent nothing): read them first. A doorbell
        // rung after this is for the flags just raised. A closed peer: let the
        // caller retry the link, which then reports it.
        if self.drain(usize::MAX).is_err() {
            return false;
        }
        let ready = (read && self.rx.has_data()) || (write && self.tx.has_space());
        !ready
    }

    fn ready_now(&self, read: bool, write: bool) -> bool {
        (read && self.rx.has_data()) || (write && self.tx.has_space())
    }

    fn spins(&self) -> bool {
        true
    }

    fn pollfds(&self, _read: bool, _write: bool, out: &mut Vec<libc::pollfd>) {
        out.push(libc::pollfd {
            fd: self.bell.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
    }

    fn shutdown(&self) {
        let _ = self.bell.shutdown(std::net::Shutdown::Both);
    }

    fn transport(&self) -> Transport {
        Transport::Shm
    }

    fn tcp_streams(&self) -> usize {
        0
    }
}

const HELLO: &[u8; 4] = b"DLCH";
const NAME: &[u8; 4] = b"DLCN";
const MAPPED: &[u8; 4] = b"DLCM";
const MSG: usize = 64;

fn setup_error(peer: usize, what: &str, e: impl std::fmt::Display) -> CommError {
    CommError::PeerLost {
        rank: peer,
        reason: format!("{what} during the link set-up: {e}"),
    }
}

pub(super) fn send(
    s: &mut TcpStream,
    msg: &[u8; MSG],
    peer: usize,
    deadline: Instant,
) -> Result<(), CommError> {
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(10));
    s.set_write_timeout(Some(left))
        .and_then(|()| s.write_all(msg))
        .map_err(|e| setup_error(peer, "send failed", e))
}

pub(super) fn receive(
    s: &mut TcpStream,
    kind: &[u8; 4],
    peer: usize,
    deadline: Instant,
) -> Result<[u8; MSG], CommError> {
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(10));
    let mut msg = [0u8; MSG];
    s.set_read_timeout(Some(left))
        .and_then(|()| s.read_exact(&mut msg))
        .map_err(|e| setup_error(peer, "receive failed", e))?;
    if &msg[..4] != kind {
        return Err(CommError::Protocol {
            peer: format!("rank {peer}"),
            message: "unexpected message during the link set-up (a different dlcluster version?)"
                .into(),
        });
    }
    Ok(msg)
}

fn text(msg: &[u8; MSG]) -> String {
    String::from_utf8_lossy(&msg[5..])
        .trim_end_matches('\0')
        .to_string()
}

pub(super) fn message(kind: &[u8; 4], flag: u8, body: &str) -> [u8; MSG] {
    let mut m = [0u8; MSG];
    m[..4].copy_from_slice(kind);
    m[4] = flag;
    let b = body.as_bytes();
    let n = b.len().min(MSG - 5);
    m[5..5 + n].copy_from_slice(&b[..n]);
    m
}

/// A segment this rank created, unlinked when dropped (also when the set-up fails).
struct Created {
    path: PathBuf,
}

impl Drop for Created {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn random_name() -> Result<String, CommError> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(CommError::io("reading /dev/urandom"))?;
    Ok(format!(
        "dlc-{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    ))
}

/// Creates and maps a segment; `None` when shared memory has no room (then the pair
/// stays on TCP).
fn create() -> Result<Option<(Created, Mapping, String)>, CommError> {
    #[cfg(test)]
    if tests::NO_ROOM.with(|n| n.get()) {
        return Ok(None);
    }
    let name = random_name()?;
    let path = PathBuf::from("/dev/shm").join(&name);
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) => {
            tracing::debug!("no shared memory ({}): {e}", path.display());
            return Ok(None);
        }
    };
    let created = Created { path };
    // Reserve the pages now: a full /dev/shm is an error here, not a SIGBUS later.
    // SAFETY: fallocate on a file we own, within its new length.
    let r = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, SEGMENT as libc::off_t) };
    if r != 0 {
        tracing::debug!(
            "no room in /dev/shm for a {SEGMENT}-byte segment: {}",
            std::io::Error::from_raw_os_error(r)
        );
        return Ok(None);
    }
    match Mapping::map(&file, SEGMENT) {
        Ok(m) => Ok(Some((created, m, name))),
        Err(e) => {
            tracing::debug!("mapping a shared-memory segment failed: {e}");
            Ok(None)
        }
    }
}

/// Maps the segment a peer created, checked: our naming, a plain file of ours (no
/// symbolic link), the expected size. Unlinks it at once (the creator does too):
/// once both ends map it, no name is left to leak.
fn open(name: &str) -> std::io::Result<Mapping> {
    use std::os::unix::fs::MetadataExt;
    let bad = |why: String| std::io::Error::new(ErrorKind::InvalidData, why);
    if name.len() != 36
        || !name.starts_with("dlc-")
        || !name[4..].bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(bad(format!("`{name}` is not a segment name")));
    }
    let path = PathBuf::from("/dev/shm").join(name);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)?;
    let meta = file.metadata()?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if !meta.file_type().is_file() || meta.uid() != me {
        return Err(bad(format!(
            "{} is not a file of this user",
            path.display()
        )));
    }
    if meta.len() != SEGMENT as u64 {
        return Err(bad(format!(
            "segment of {} bytes, expected {SEGMENT}",
            meta.len()
        )));
    }
    let m = Mapping::map(&file, SEGMENT)?;
    let _ = std::fs::remove_file(&path);
    Ok(m)
}

/// Turns the links to peers on this host into shared-memory links when both ends
/// ask for it (`want` is not [`Transport::Tcp`]). Every rank calls it on its freshly
/// authenticated, blocking links, with the same deadline: it exchanges a hello (host,
/// wish, and the TCP streams per pair, which must match) with every peer, then the
/// higher rank of each same-host pair creates the segment and sends its name, the
/// lower maps it and says so, and the creator unlinks it. A pair where shared memory
/// cannot be had stays on TCP.
pub(crate) fn upgrade(
    links: Vec<Option<TcpStream>>,
    rank: usize,
    want: Transport,
    tcp_streams: usize,
    deadline: Instant,
) -> Result<Vec<Option<Box<dyn Link>>>, CommError> {
    let host = host_id();
    // The hello carries at most MSG - 5 bytes of it; a longer one would never match.
    let ours = want != Transport::Tcp && !host.is_empty() && host.len() <= MSG - 5;
    let mut links = links;
    // The flag: bit 0 the wish for shared memory, the bits above the TCP streams
    // per pair, which every rank must agree on.
    let streams = tcp_streams.min(crate::MAX_TCP_STREAMS);
    let hello = message(HELLO, u8::from(ours) | (streams as u8) << 1, &host);
    for (p, s) in links.iter_mut().enumerate() {
        if let Some(s) = s {
            send(s, &hello, p, deadline)?;
        }
    }
    let mut pair = vec![false; links.len()];
    for (p, s) in links.iter_mut().enumerate() {
        if let Some(s) = s {
            let theirs = receive(s, HELLO, p, deadline)?;
            let their_streams = usize::from(theirs[4] >> 1);
            if their_streams != streams {
                return Err(CommError::Usage(format!(
                    "rank {p} uses {their_streams} TCP stream(s) per pair and rank {rank} \
                     {streams}: every rank of a job needs the same `tcp_streams`"
                )));
            }
            pair[p] = ours && theirs[4] & 1 == 1 && text(&theirs) == host;
        }
    }
    // The higher rank of a pair creates the segment (an empty name: stay on TCP).
    let mut mine: Vec<Option<(Created, Mapping)>> = (0..links.len()).map(|_| None).collect();
    for p in 0..rank {
        if !pair[p] {
            continue;
        }
        let s = links[p].as_mut().expect("a link to every peer");
        let made = create()?;
        let name = made.as_ref().map_or(String::new(), |m| m.2.clone());
        send(s, &message(NAME, 0, &name), p, deadline)?;
        match made {
            Some((c, m, _)) => mine[p] = Some((c, m)),
            None => pair[p] = false,
        }
    }
    let mut theirs: Vec<Option<Mapping>> = (0..links.len()).map(|_| None).collect();
    for p in rank + 1..links.len() {
        if !pair[p] {
            continue;
        }
        let s = links[p].as_mut().expect("a link to every peer");
        let name = text(&receive(s, NAME, p, deadline)?);
        if name.is_empty() {
            // The creator had no room: the pair stays on TCP, nothing to answer.
            pair[p] = false;
            continue;
        }
        let mapped = match open(&name) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!("rank {rank}: cannot map rank {p}'s segment {name}: {e}; using TCP");
                None
            }
        };
        send(
            s,
            &message(MAPPED, u8::from(mapped.is_some()), ""),
            p,
            deadline,
        )?;
        pair[p] = mapped.is_some();
        theirs[p] = mapped;
    }
    for p in 0..rank {
        if let Some((created, _)) = &mine[p] {
            let s = links[p].as_mut().expect("a link to every peer");
            let ack = receive(s, MAPPED, p, deadline)?;
            // Both ends have it mapped (or the peer gave up): the name can go.
            let _ = std::fs::remove_file(&created.path);
            pair[p] = ack[4] == 1;
        }
    }
    let mut out: Vec<Option<Box<dyn Link>>> = Vec::with_capacity(links.len());
    for (p, s) in links.into_iter().enumerate() {
        let Some(s) = s else {
            out.push(None);
            continue;
        };
        // Non-blocking from now on, without timeouts (the buffers are set).
        crate::transport::tune(&s, None)?;
        if !pair[p] {
            out.push(Some(Box::new(s)));
            continue;
        }
        // Ring 0 carries lower → higher, ring 1 higher → lower.
        let (map, lower) = match (mine[p].take(), theirs[p].take()) {
            (Some((_, m)), _) => (m, false),
            (None, Some(m)) => (m, true),
            (None, None) => unreachable!("a paired peer has a mapping"),
        };
        let (r0, r1) = (Ring::at(&map, 0), Ring::at(&map, 1));
        let (tx, rx) = if lower { (r0, r1) } else { (r1, r0) };
        out.push(Some(Box::new(ShmLink {
            tx,
            rx,
            bell: s,
            _map: map,
        })));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::JobKey;
    use crate::{CommConfig, Communicator, Coordinator, ReduceOp};

    thread_local! {
        /// This thread's rank finds no room in /dev/shm.
        pub(super) static NO_ROOM: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    #[test]
    fn a_pair_without_room_in_dev_shm_stays_on_tcp_and_works() {
        let key = JobKey::new("j", "t");
        let coord =
            Coordinator::start("127.0.0.1:0", key.clone(), 3, Duration::from_secs(10)).unwrap();
        let addr = coord.addr().to_string();
        let ranks: Vec<_> = (0..3)
            .map(|r| {
                let (addr, key) = (addr.clone(), key.clone());
                std::thread::spawn(move || {
                    // Rank 2 creates the segments of pairs (0, 2) and (1, 2): none.
                    NO_ROOM.with(|n| n.set(r == 2));
                    let mut c = Communicator::connect(CommConfig::new(addr, key, r, 3)).unwrap();
                    let mut v = vec![r as f32 + 1.0; 100_000];
                    c.all_reduce(&mut v, ReduceOp::Sum).unwrap();
                    let mut w = vec![1.0f64; 5];
                    c.all_reduce(&mut w, ReduceOp::Sum).unwrap();
                    c.leave();
                    (c.transports(), v[99_999], w[4])
                })
            })
            .collect();
        let kinds: Vec<_> = ranks.into_iter().map(|h| h.join().unwrap()).collect();
        for (r, (k, v, w)) in kinds.iter().enumerate() {
            assert_eq!((*v, *w), (6.0, 3.0), "rank {r}");
            let want: Vec<Option<Transport>> = (0..3)
                .map(|p| match (r, p) {
                    _ if p == r => None,
                    (0, 1) | (1, 0) => Some(Transport::Shm),
                    _ => Some(Transport::Tcp),
                })
                .collect();
            assert_eq!(*k, want, "rank {r}");
        }
        coord.shutdown(Duration::from_secs(5));
    }

    #[test]
    fn the_host_id_names_boot_and_network_namespace() {
        let id = host_id();
        assert!(id.contains("/net:["), "{id}");
    }

    #[test]
    fn segment_names_from_a_peer_are_checked() {
        assert!(open("../etc/passwd").is_err());
        assert!(open("dlc-zz").is_err());
        assert!(open("dlc-").is_err());
        assert!(
            open(&format!("dlc-{}", "0".repeat(32))).is_err(),
            "no such file"
        );
    }
}
