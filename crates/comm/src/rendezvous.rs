//! Rendezvous: a small coordinator holding a key-value store and the peer table.
//!
//! Rank 0 (or a standalone process) runs a [`Coordinator`]. Each worker connects,
//! authenticates with the job token ([`crate::auth`]), sends `Join{job, rank, world,
//! addr}` and waits (with a deadline) until every rank has joined; it then receives
//! the listening address of every rank. Out-of-range, duplicate and late ranks, and
//! joins for another job or world size, get an error reply.
//!
//! The control connection stays open for the job's lifetime: the coordinator serves
//! `Set`/`Get` on its key-value store, and when a rank's connection drops without a
//! `Leave`, it sends `Abort{rank}` to every other rank, so that all of them fail fast
//! with an error naming the rank that died.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::auth::{accept_handshake, connect_handshake, JobKey};
use crate::frame::{read_frame, send_frame, write_frame, FrameReader, Polled};
use crate::CommError;
use std::sync::mpsc::RecvTimeoutError;

/// A request on the control connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Register this rank's listening address and wait for all ranks.
    Join {
        /// Job id.
        job_id: String,
        /// This rank.
        rank: usize,
        /// World size this rank expects.
        world: usize,
        /// Listening address (`host:port`) for peer links.
        addr: String,
    },
    /// Store a value.
    Set {
        /// Key.
        key: String,
        /// Value.
        value: String,
        /// Request number, repeated in the reply (`Stored`).
        id: u64,
    },
    /// Read a value, waiting up to `wait_ms` for it to appear.
    Get {
        /// Key.
        key: String,
        /// How long to wait for the key.
        wait_ms: u64,
        /// Request number, repeated in the reply (`Value`).
        id: u64,
    },
    /// This rank is done; its disconnection is not a failure.
    Leave,
    /// This rank failed (`reason` says how); every other rank is told at once.
    Fail {
        /// What went wrong, e.g. `exit code 3` or `killed by signal 9`.
        reason: String,
    },
    /// This rank decides the job's end and has finished successfully (a TensorFlow
    /// chief): every other rank is told to stop its work and leave.
    Finish,
    /// This rank's process is alive (sent every [`HEARTBEAT`] by a thread of its
    /// own, whatever the rank is doing). Once a rank has sent one, [`SILENCE`]
    /// without any frame from it is its failure. The coordinator answers each beat
    /// with [`Reply::Beat`], so that ranks notice a silent coordinator too.
    Beat,
    /// This rank starts (`what` = what it does) or ends (`None`) work that others may
    /// wait for, longer than a collective's deadline: rank 0 evaluating and writing
    /// a checkpoint at an epoch's end. Ranks blocked meanwhile keep waiting while it
    /// is alive (see [`Reply::Beat`]), up to [`BUSY_LIMIT`].
    Busy {
        /// What the rank does, e.g. `evaluating epoch 3`; `None` when done.
        what: Option<String>,
    },
}

/// How often a rank's communicator tells the coordinator that it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long the coordinator hears nothing from a rank that sends heartbeats before
/// it declares the rank failed (a stopped or frozen process, a lost host or
/// network) and tells every other rank.
pub const SILENCE: Duration = Duration::from_secs(6);
/// The longest a rank waits for a peer that announced long work (a [`Request::Busy`])
/// while that peer stays alive.
pub const BUSY_LIMIT: Duration = Duration::from_secs(3600);

/// A reply (or notice) on the control connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Reply {
    /// Every rank's listening address, indexed by rank.
    Peers {
        /// Addresses.
        addrs: Vec<String>,
        /// The rank whose process runs the coordinator, if one does (rank 0 under
        /// Slurm, MPI or torchrun; none under the local manager, where the launcher
        /// runs it): a silent coordinator is then that rank's failure.
        #[serde(default)]
        host: Option<usize>,
    },
    /// Value of a `Get` (`None` if it did not appear in time).
    Value {
        /// The value.
        value: Option<String>,
        /// The `Get`'s request number: a reply to a request its caller gave up on is
        /// recognised and dropped, never taken for a later answer or a notice.
        id: u64,
    },
    /// A `Set` was done.
    Stored {
        /// The `Set`'s request number.
        id: u64,
    },
    /// Request done.
    Ok,
    /// The request was refused.
    Error {
        /// Why.
        message: String,
    },
    /// Another rank failed; the job cannot continue.
    Abort {
        /// The failed rank.
        rank: usize,
        /// What the coordinator observed.
        reason: String,
    },
    /// The rank that decides the job's end finished successfully; stop and leave.
    Finished {
        /// That rank.
        rank: usize,
    },
    /// The answer to a [`Request::Beat`]: the coordinator is alive, and these ranks
    /// announced long work ([`Request::Busy`]) that they are still doing.
    Beat {
        /// The busy ranks.
        busy: Vec<usize>,
    },
}

#[derive(Default)]
struct State {
    addrs: Vec<Option<String>>,
    writers: Vec<Option<Arc<Mutex<TcpStream>>>>,
    left: Vec<bool>,
    started: bool,
    failed: Option<(usize, String)>,
    kv: HashMap<String, String>,
    /// This host's address as seen by a rank on another host, if one joined.
    routable: Option<std::net::IpAddr>,
    /// What each rank announced it is busy with ([`Request::Busy`]).
    busy: Vec<Option<String>>,
    /// The rank whose process runs this coordinator ([`Coordinator::hosted_by`]).
    host: Option<usize>,
}

impl State {
    /// The ranks busy with announced long work ([`Request::Busy`]).
    fn busy_ranks(&self) -> Vec<usize> {
        (0..self.busy.len())
            .filter(|&r| self.busy[r].is_some())
            .collect()
    }

    /// `rank` left or failed: it is neither waited for nor busy any more.
    fn gone(&mut self, rank: usize) {
        self.left[rank] = true;
        self.busy[rank] = None;
    }
}

struct Shared {
    key: JobKey,
    world: usize,
    timeout: Duration,
    state: Mutex<State>,
    changed: Condvar,
    stop: AtomicBool,
    /// Fault injection: serve nothing, as a stopped process would.
    frozen: AtomicBool,
}

/// The rendezvous server of one job. Stops when dropped.
pub struct Coordinator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Coordinator {
    /// Listens on `bind` (e.g. `127.0.0.1:0`) for the `world` ranks of the job `key`.
    /// Joins that do not complete within `timeout` fail with the missing ranks named.
    pub fn start(
        bind: &str,
        key: JobKey,
        world: usize,
        timeout: Duration,
    ) -> Result<Self, CommError> {
        if world == 0 {
            return Err(CommError::Usage("world size must be at least 1".into()));
        }
        let listener = TcpListener::bind(bind).map_err(CommError::io(format!(
            "coordinator cannot listen on {bind}"
        )))?;
        let addr = listener
            .local_addr()
            .map_err(CommError::io("coordinator address"))?;
        listener
            .set_nonblocking(true)
            .map_err(CommError::io("coordinator listener"))?;
        let shared = Arc::new(Shared {
            key,
            world,
            timeout,
            state: Mutex::new(State {
                addrs: vec![None; world],
                writers: vec![None; world],
                left: vec![false; world],
                busy: vec![None; world],
                ..Default::default()
            }),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            frozen: AtomicBool::new(false),
        });
        let sh = shared.clone();
        let acceptor = std::thread::Builder::new()
            .name("dlc-coordinator".into())
            .spawn(move || accept_loop(listener, sh))
            .map_err(CommError::io("spawning coordinator"))?;
        Ok(Self {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The address workers connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits until every rank has left (or one failed, or `grace` passed), then stops.
    pub fn shutdown(self, grace: Duration) {
        let deadline = Instant::now() + grace;
        let mut st = lock(&self.shared.state);
        while !(st.left.iter().all(|&l| l) || st.failed.is_some()) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            st = self
                .shared
                .changed
                .wait_timeout(st, deadline - now)
                .map(|r| r.0)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        drop(st);
    }

    /// Records that rank `rank`'s process runs this coordinator (call it before that
    /// rank joins): the ranks then name it when the coordinator falls silent.
    pub fn hosted_by(&self, rank: usize) {
        lock(&self.shared.state).host = Some(rank);
    }

    /// Stops serving every rank (reading and answering nothing) while keeping the
    /// connections open, as a stopped (`SIGSTOP`) process would. For fault-injection
    /// tests.
    pub fn simulate_freeze(&self) {
        self.shared.frozen.store(true, Ordering::SeqCst);
    }

    /// The first failure the coordinator saw, if any.
    pub fn failure(&self) -> Option<(usize, String)> {
        lock(&self.shared.state).failed.clone()
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Connections that may be in their handshake at once; more are closed at once, so
/// that strangers cannot pile up threads.
pub(crate) const MAX_HANDSHAKES: usize = 64;

/// Counts a connection in its handshake until dropped.
pub(crate) struct Handshaking(Arc<std::sync::atomic::AtomicUsize>);

impl Handshaking {
    /// Counts one more, unless [`MAX_HANDSHAKES`] are under way.
    pub(crate) fn enter(count: &Arc<std::sync::atomic::AtomicUsize>) -> Option<Self> {
        let before = count.fetch_add(1, Ordering::SeqCst);
        let guard = Self(Arc::clone(count));
        (before < MAX_HANDSHAKES).then_some(guard)
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn accept_loop(listener: TcpListener, sh: Arc<Shared>) {
    let mut handlers = Vec::new();
    let handshakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    while !sh.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, peer)) => {
                let Some(guard) = Handshaking::enter(&handshakes) else {
                    tracing::warn!(
                        "coordinator: {MAX_HANDSHAKES} connections in their handshake; \
                         closing {peer}"
                    );
                    continue;
                };
                let sh = sh.clone();
                if let Ok(h) = std::thread::Builder::new()
                    .name("dlc-coord-conn".into())
                    .spawn(move || handle(stream, peer, sh, guard))
                {
                    handlers.push(h);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => {
                tracing::warn!("coordinator accept failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        handlers.retain(|h| !h.is_finished());
    }
    // Ranks' handlers see `stop` within 200 ms; a stranger still in its handshake
    // may take until its deadline, and shutdown does not wait for it (detached).
    let until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < until && handlers.iter().any(|h| !h.is_finished()) {
        std::thread::sleep(Duration::from_millis(10));
    }
    for h in handlers.into_iter().filter(|h| h.is_finished()) {
        let _ = h.join();
    }
}

fn send(w: &Arc<Mutex<TcpStream>>, reply: &Reply) -> Result<(), CommError> {
    let mut s = lock(w);
    write_frame(&mut *s, reply)
}

/// Sends a heartbeat answer with the ranks busy now. The list is read while the
/// connection's write lock is held, so the answers a rank receives never go back in
/// time: an answer read before another rank's busy notice cannot overtake it (the
/// waiting rank would forget the busy peer and time out on it).
fn send_beat(w: &Arc<Mutex<TcpStream>>, sh: &Shared) -> Result<(), CommError> {
    let mut s = lock(w);
    let busy = lock(&sh.state).busy_ranks();
    write_frame(&mut *s, &Reply::Beat { busy })
}

/// Serves one control connection.
fn handle(mut stream: TcpStream, peer: SocketAddr, sh: Arc<Shared>, handshaking: Handshaking) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_nodelay(true);
    let hs_timeout = sh.timeout.min(Duration::from_secs(10));
    let claimed = match accept_handshake(&mut stream, &sh.key, hs_timeout) {
        Ok(r) => r as usize,
        Err(e @ CommError::Auth(_)) => {
            tracing::warn!("coordinator refused {peer}: {e}");
            return;
        }
        Err(e) => {
            tracing::debug!("coordinator: {peer} went away during the handshake: {e}");
            return;
        }
    };
    drop(handshaking);
    let Ok(w) = stream.try_clone().map(|s| Arc::new(Mutex::new(s))) else {
        return;
    };
    // A rank that reached us from another host tells us our routable address.
    let routable = match stream.local_addr() {
        Ok(local) if !peer.ip().is_loopback() && !local.ip().is_loopback() => Some(local.ip()),
        _ => None,
    };
    let rank = match join(&mut stream, &peer.to_string(), claimed, routable, &w, &sh) {
        Ok(rank) => rank,
        Err(message) => {
            tracing::warn!("coordinator: join from {peer} refused: {message}");
            let _ = send(&w, &Reply::Error { message });
            return;
        }
    };
    serve(&mut stream, rank, &w, &sh);
}

/// Registers a joining rank and waits for the others; returns its rank.
fn join(
    stream: &mut TcpStream,
    peer: &str,
    claimed: usize,
    routable: Option<std::net::IpAddr>,
    w: &Arc<Mutex<TcpStream>>,
    sh: &Shared,
) -> Result<usize, String> {
    let _ = stream.set_read_timeout(Some(sh.timeout));
    let req: Request = match read_frame(stream, peer) {
        Ok(Some(r)) => r,
        Ok(None) => return Err("closed before joining".into()),
        Err(e) => return Err(e.to_string()),
    };
    let Request::Join {
        job_id,
        rank,
        world,
        addr,
    } = req
    else {
        return Err("the first request must be a join".into());
    };
    if job_id != sh.key.job_id {
        return Err(format!(
            "job id `{job_id}` does not match this coordinator's job `{}`",
            sh.key.job_id
        ));
    }
    if world != sh.world {
        return Err(format!(
            "rank {rank} expects world size {world}, the job has {}",
            sh.world
        ));
    }
    if rank >= sh.world {
        return Err(format!(
            "rank {rank} is out of range for world size {}",
            sh.world
        ));
    }
    if rank != claimed {
        return Err(format!(
            "rank {rank} does not match the authenticated rank {claimed}"
        ));
    }
    let deadline = Instant::now() + sh.timeout;
    let mut st = lock(&sh.state);
    if st.started {
        return Err(format!(
            "rank {rank} joined late: the job already started with all {} ranks",
            sh.world
        ));
    }
    if st.addrs[rank].is_some() {
        return Err(format!("rank {rank} joined twice"));
    }
    st.addrs[rank] = Some(addr);
    st.writers[rank] = Some(w.clone());
    if st.routable.is_none() {
        st.routable = routable;
    }
    if st.addrs.iter().all(|a| a.is_some()) {
        st.started = true;
        sh.changed.notify_all();
    }
    while !st.started && st.failed.is_none() && !sh.stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now >= deadline {
            let missing: Vec<usize> = (0..sh.world).filter(|&r| st.addrs[r].is_none()).collect();
            return Err(format!(
                "timed out after {:?} waiting for rank(s) {missing:?} to join",
                sh.timeout
            ));
        }
        st = sh
            .changed
            .wait_timeout(st, (deadline - now).min(Duration::from_millis(200)))
            .map(|r| r.0)
            .unwrap_or_else(|e| e.into_inner().0);
    }
    if let Some((r, why)) = &st.failed {
        return Err(format!("rank {r} failed before the job started: {why}"));
    }
    if !st.started {
        return Err("coordinator stopped".into());
    }
    let addrs = st
        .addrs
        .iter()
        .map(|a| advertise(a.as_deref().unwrap_or_default(), st.routable))
        .collect();
    let host = st.host;
    drop(st);
    send(w, &Reply::Peers { addrs, host }).map_err(|e| e.to_string())?;
    Ok(rank)
}

/// The address other ranks should dial for a rank that published `addr`: a loopback
/// address came from this host (loopback connections cannot cross hosts), so when
/// ranks on other hosts take part it is replaced by this host's routable address.
fn advertise(addr: &str, routable: Option<std::net::IpAddr>) -> String {
    match (addr.parse::<SocketAddr>(), routable) {
        (Ok(a), Some(ip)) if a.ip().is_loopback() => SocketAddr::new(ip, a.port()).to_string(),
        _ => addr.to_string(),
    }
}

/// Serves key-value requests until the rank leaves or its connection drops.
fn serve(stream: &mut TcpStream, rank: usize, w: &Arc<Mutex<TcpStream>>, sh: &Shared) {
    // Short read timeouts let the loop see `stop`; a frame cut by one is resumed.
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let peer = format!("rank {rank}");
    let mut frames = FrameReader::new();
    // When this rank was last heard from, and whether it sends heartbeats (ranks of
    // foreign jobs, watched by `dlc exec`, do not: only their connection counts).
    let mut heard = Instant::now();
    let mut beating = false;
    loop {
        if sh.stop.load(Ordering::SeqCst) {
            return;
        }
        if sh.frozen.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        let req = match frames.poll::<_, Request>(stream, &peer) {
            Ok(Polled::Frame(r)) => r,
            Ok(Polled::Pending) if beating && heard.elapsed() > SILENCE => {
                return fail(
                    sh,
                    rank,
                    &format!(
                        "sent no heartbeat for {:.0?}: its process is stopped or frozen, or \
                         its host or network is down",
                        heard.elapsed()
                    ),
                )
            }
            Ok(Polled::Pending) => continue,
            Ok(Polled::Closed) => {
                return fail(
                    sh,
                    rank,
                    "its process exited or closed the connection without leaving",
                )
            }
            Err(e) => return fail(sh, rank, &format!("control connection broke: {e}")),
        };
        heard = Instant::now();
        let reply = match req {
            Request::Beat => {
                beating = true;
                if send_beat(w, sh).is_err() {
                    return fail(sh, rank, "control connection broke");
                }
                continue;
            }
            Request::Busy { what } => {
                match &what {
                    Some(w) => tracing::debug!("coordinator: rank {rank} is busy {w}"),
                    None => tracing::debug!("coordinator: rank {rank} is no longer busy"),
                }
                let mut st = lock(&sh.state);
                st.busy[rank] = what;
                // Every rank hears it at once: one blocked in a collective must not
                // time out before its next heartbeat answer.
                let others = writers_except(&st, rank);
                drop(st);
                for w in &others {
                    let _ = lock(w).set_write_timeout(Some(Duration::from_secs(1)));
                    let _ = send_beat(w, sh);
                }
                continue;
            }
            Request::Leave => {
                let mut st = lock(&sh.state);
                st.gone(rank);
                sh.changed.notify_all();
                drop(st);
                let _ = send(w, &Reply::Ok);
                return;
            }
            Request::Set { key, value, id } => {
                lock(&sh.state).kv.insert(key, value);
                sh.changed.notify_all();
                Reply::Stored { id }
            }
            Request::Get { key, wait_ms, id } => {
                let deadline = Instant::now() + Duration::from_millis(wait_ms);
                let mut st = lock(&sh.state);
                loop {
                    if let Some(v) = st.kv.get(&key) {
                        break Reply::Value {
                            value: Some(v.clone()),
                            id,
                        };
                    }
                    let now = Instant::now();
                    if now >= deadline || sh.stop.load(Ordering::SeqCst) {
                        break Reply::Value { value: None, id };
                    }
                    st = sh
                        .changed
                        .wait_timeout(st, (deadline - now).min(Duration::from_millis(200)))
                        .map(|r| r.0)
                        .unwrap_or_else(|e| e.into_inner().0);
                }
            }
            Request::Fail { reason } => {
                let _ = send(w, &Reply::Ok);
                return fail(sh, rank, &reason);
            }
            Request::Finish => {
                let mut st = lock(&sh.state);
                st.gone(rank);
                let others = writers_except(&st, rank);
                sh.changed.notify_all();
                drop(st);
                let _ = send(w, &Reply::Ok);
                notify(&others, &Reply::Finished { rank });
                return;
            }
            Request::Join { .. } => Reply::Error {
                message: "already joined".into(),
            },
        };
        if send(w, &reply).is_err() {
            return fail(sh, rank, "control connection broke");
        }
        // Serving may have waited (a `Get`): the rank's beats wait in the socket.
        heard = Instant::now();
    }
}

/// Records that `rank` failed and tells every other rank — the first failure only:
/// the ranks that fail because of it would otherwise bury the root cause.
fn fail(sh: &Shared, rank: usize, reason: &str) {
    let mut st = lock(&sh.state);
    if st.left[rank] {
        return;
    }
    st.gone(rank);
    if let Some((first, _)) = &st.failed {
        tracing::debug!("coordinator: rank {rank} failed after rank {first}: {reason}");
        sh.changed.notify_all();
        return;
    }
    tracing::warn!("coordinator: rank {rank} failed: {reason}");
    st.failed = Some((rank, reason.to_string()));
    let notice = Reply::Abort {
        rank,
        reason: reason.to_string(),
    };
    let writers = writers_except(&st, rank);
    sh.changed.notify_all();
    drop(st);
    notify(&writers, &notice);
}

/// Sends `notice` to each of `writers`, giving each at most a second.
fn notify(writers: &[Arc<Mutex<TcpStream>>], notice: &Reply) {
    for w in writers {
        let _ = lock(w).set_write_timeout(Some(Duration::from_secs(1)));
        let _ = send(w, notice);
    }
}

/// The control connections of every rank but `rank` (to send them a notice).
fn writers_except(st: &State, rank: usize) -> Vec<Arc<Mutex<TcpStream>>> {
    st.writers
        .iter()
        .enumerate()
        .filter(|(r, _)| *r != rank)
        .filter_map(|(_, w)| w.clone())
        .collect()
}

/// A worker's control connection to the coordinator.
pub struct CoordClient {
    pub(crate) stream: TcpStream,
    /// The write side, shared with the heartbeat thread (one frame at a time).
    out: Arc<Mutex<TcpStream>>,
    rank: usize,
    /// Number of the next key-value request.
    next_id: u64,
    /// The rank that runs the coordinator, if any (from the peer table).
    pub(crate) host: Option<usize>,
    /// When the coordinator last sent anything.
    pub(crate) heard: Instant,
    /// The ranks the coordinator last reported busy.
    pub(crate) busy: Vec<usize>,
}

impl CoordClient {
    /// Connects (retrying until `timeout` while the coordinator is not up yet) and
    /// authenticates as `rank`.
    pub fn connect(
        addr: &str,
        key: &JobKey,
        rank: usize,
        timeout: Duration,
    ) -> Result<Self, CommError> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            let attempt = resolve(addr).and_then(|a| {
                let mut s = TcpStream::connect_timeout(&a, Duration::from_secs(2))
                    .map_err(CommError::io(format!("connecting to coordinator {addr}")))?;
                let _ = s.set_nodelay(true);
                let left = deadline.saturating_duration_since(Instant::now());
                connect_handshake(
                    &mut s,
                    key,
                    rank as u32,
                    left.clamp(Duration::from_millis(100), Duration::from_secs(10)),
                )?;
                Ok(s)
            });
            let err = match attempt {
                Ok(s) => break s,
                // A refused proof is final; not being up yet, or a reset, is retried.
                Err(e @ CommError::Auth(_)) => {
                    return Err(CommError::Rendezvous(format!("coordinator at {addr}: {e}")))
                }
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(CommError::Rendezvous(format!(
                    "cannot reach the coordinator at {addr} within {timeout:?}: {err}"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let out = Arc::new(Mutex::new(
            stream
                .try_clone()
                .map_err(CommError::io("coordinator connection"))?,
        ));
        Ok(Self {
            stream,
            out,
            rank,
            next_id: 0,
            host: None,
            heard: Instant::now(),
            busy: Vec::new(),
        })
    }

    /// Joins the job and waits (up to `timeout`) for the peer table.
    pub fn join(
        &mut self,
        key: &JobKey,
        world: usize,
        addr: &str,
        timeout: Duration,
    ) -> Result<Vec<String>, CommError> {
        self.send(&Request::Join {
            job_id: key.job_id.clone(),
            rank: self.rank,
            world,
            addr: addr.to_string(),
        })?;
        // The coordinator answers within its own deadline; allow a little more.
        // A busy notice can come first (another rank, started first, announced long
        // work before this rank's peer table went out): `next_reply` keeps it.
        match self.next_reply(Instant::now() + timeout + Duration::from_secs(5))? {
            Reply::Peers { addrs, host } if addrs.len() == world => {
                self.host = host;
                Ok(addrs)
            }
            Reply::Peers { addrs, .. } => Err(CommError::Rendezvous(format!(
                "coordinator returned {} peers for world size {world}",
                addrs.len()
            ))),
            other => Err(reply_error(other)),
        }
    }

    /// Stores `value` under `key`.
    pub fn set(&mut self, key: &str, value: &str, timeout: Duration) -> Result<(), CommError> {
        self.send(&Request::Set {
            key: key.into(),
            value: value.into(),
            id: self.next_id,
        })?;
        match self.answer(self.next_id, timeout)? {
            Reply::Stored { .. } => Ok(()),
            other => Err(reply_error(other)),
        }
    }

    /// Reads `key`, waiting up to `wait` for it to be set.
    pub fn get(&mut self, key: &str, wait: Duration) -> Result<Option<String>, CommError> {
        self.send(&Request::Get {
            key: key.into(),
            wait_ms: wait.as_millis() as u64,
            id: self.next_id,
        })?;
        match self.answer(self.next_id, wait + Duration::from_secs(5))? {
            Reply::Value { value, .. } => Ok(value),
            other => Err(reply_error(other)),
        }
    }

    /// Records a heartbeat answer: the coordinator is alive, `busy` are busy.
    pub(crate) fn heard_beat(&mut self, busy: Vec<usize>) {
        self.heard = Instant::now();
        self.busy = busy;
    }

    /// Tells the coordinator that this rank starts (`Some`) or ended (`None`) long
    /// work that other ranks may be waiting for (see [`Request::Busy`]).
    pub fn busy(&self, what: Option<&str>) -> Result<(), CommError> {
        self.send(&Request::Busy {
            what: what.map(str::to_string),
        })
    }

    /// Announces a clean exit (best effort, short deadline).
    pub fn leave(&mut self) {
        self.say(&Request::Leave);
    }

    /// Reports this rank's failure (best effort, short deadline).
    pub fn fail(&mut self, reason: &str) {
        self.say(&Request::Fail {
            reason: reason.to_string(),
        });
    }

    /// Sends a last request and waits briefly for its answer, reading what came
    /// before it (heartbeat answers): a socket closed with unread bytes is reset,
    /// and a reset could reach the coordinator before the request.
    fn say(&mut self, req: &Request) {
        if self.send(req).is_err() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.call_reply(left.max(Duration::from_millis(1))) {
                Ok(Reply::Beat { .. } | Reply::Value { .. } | Reply::Stored { .. }) => {}
                _ => return,
            }
        }
    }

    /// Sends one request (the heartbeat thread may be writing too).
    fn send(&self, req: &Request) -> Result<(), CommError> {
        send_frame(&lock(&self.out), req, Duration::from_secs(5))
    }

    /// Starts a thread that sends a heartbeat every `every` until the returned handle
    /// is dropped.
    pub(crate) fn heartbeat(&self, every: Duration) -> Result<Heartbeat, CommError> {
        let out = Arc::clone(&self.out);
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("dlc-heartbeat".into())
            .spawn(move || {
                // The first beat at once: monitoring starts with it.
                while send_frame(&lock(&out), &Request::Beat, every).is_ok() {
                    if stopped.recv_timeout(every) != Err(RecvTimeoutError::Timeout) {
                        return;
                    }
                }
            })
            .map_err(CommError::io("spawning the heartbeat thread"))?;
        Ok(Heartbeat {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Binds a TCP port that the other ranks can reach (on the interface that reaches
    /// the coordinator, or on every interface when `coordinator` names this host by a
    /// name that resolves to loopback), for a service this rank will offer, e.g. a
    /// framework's own rendezvous. Returns the listener (hold it until the service
    /// takes the port over) and the address to publish.
    pub fn reserve_port(&self, coordinator: &str) -> Result<(TcpListener, SocketAddr), CommError> {
        let ip = self
            .stream
            .local_addr()
            .map_err(CommError::io("local address"))?
            .ip();
        let bind_ip = crate::communicator::listen_ip(ip, coordinator);
        let listener = TcpListener::bind((bind_ip, 0))
            .map_err(CommError::io(format!("listening on {bind_ip}")))?;
        let port = listener
            .local_addr()
            .map_err(CommError::io("listener address"))?
            .port();
        Ok((listener, SocketAddr::new(ip, port)))
    }

    /// Hands the connection to a watcher thread that reports the coordinator's
    /// notices (another rank failed or finished) while this rank does its work.
    pub fn watch(self) -> Result<Watch, CommError> {
        let mut reader = self
            .stream
            .try_clone()
            .map_err(CommError::io("coordinator connection"))?;
        reader
            .set_nonblocking(false)
            .and_then(|()| reader.set_read_timeout(None))
            .map_err(CommError::io("coordinator connection"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("dlc-coord-watch".into())
            .spawn(move || loop {
                // Blocking reads without a timeout: a frame is never cut in half.
                let msg = match read_frame::<_, Reply>(&mut reader, "coordinator") {
                    Ok(Some(r)) => Ok(r),
                    Ok(None) => Err("the coordinator closed the connection".to_string()),
                    Err(e) => Err(e.to_string()),
                };
                let end = msg.is_err();
                if tx.send(msg).is_err() || end {
                    return;
                }
            })
            .map_err(CommError::io("spawning the coordinator watcher"))?;
        Ok(Watch {
            writer: self.stream,
            replies: rx,
        })
    }

    /// The reply to request `id` (sent last), skipping late replies to requests that
    /// timed out before; the next request gets a new number.
    fn answer(&mut self, id: u64, timeout: Duration) -> Result<Reply, CommError> {
        self.next_id += 1;
        let deadline = Instant::now() + timeout;
        loop {
            match self.next_reply(deadline)? {
                Reply::Value { id: got, .. } | Reply::Stored { id: got } if got != id => {
                    tracing::debug!("dropping a late reply to coordinator request {got}");
                }
                reply => return Ok(reply),
            }
        }
    }

    /// The next reply that is not a heartbeat answer or busy notice (the coordinator
    /// sends those unasked, at any time); those that come first are recorded.
    fn next_reply(&mut self, deadline: Instant) -> Result<Reply, CommError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.call_reply(left.max(Duration::from_millis(1)))? {
                Reply::Beat { busy } => self.heard_beat(busy),
                reply => return Ok(reply),
            }
        }
    }

    fn call_reply(&mut self, timeout: Duration) -> Result<Reply, CommError> {
        self.stream
            .set_nonblocking(false)
            .map_err(CommError::io("coordinator connection"))?;
        self.stream
            .set_read_timeout(Some(timeout))
            .map_err(CommError::io("coordinator connection"))?;
        match read_frame::<_, Reply>(&mut self.stream, "coordinator") {
            Ok(Some(Reply::Abort { rank, reason })) => Err(CommError::Aborted { rank, reason }),
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err(CommError::Rendezvous(
                "the coordinator closed the connection".into(),
            )),
            Err(CommError::Io { source, .. })
                if matches!(source.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                Err(CommError::Rendezvous(format!(
                    "the coordinator did not answer within {timeout:?}"
                )))
            }
            Err(e) => Err(e),
        }
    }
}

/// A rank's heartbeat thread; dropping the handle stops it.
pub(crate) struct Heartbeat {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the coordinator said while a rank was working (see [`CoordClient::watch`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// Another rank failed.
    Aborted {
        /// That rank.
        rank: usize,
        /// What happened to it.
        reason: String,
    },
    /// The rank that decides the job's end has finished.
    Finished {
        /// That rank.
        rank: usize,
    },
    /// The connection to the coordinator is gone.
    Lost(String),
}

/// A rank's control connection while it works: notices arrive on a watcher thread.
pub struct Watch {
    writer: TcpStream,
    replies: std::sync::mpsc::Receiver<Result<Reply, String>>,
}

impl Watch {
    /// The next notice, waiting at most `wait`; `None` when there was none.
    pub fn notice(&self, wait: Duration) -> Option<Notice> {
        match self.replies.recv_timeout(wait) {
            Ok(Ok(Reply::Abort { rank, reason })) => Some(Notice::Aborted { rank, reason }),
            Ok(Ok(Reply::Finished { rank })) => Some(Notice::Finished { rank }),
            // Stray replies (an `Ok` to an earlier request) are not notices.
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(Notice::Lost(e)),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                Some(Notice::Lost("the coordinator watcher stopped".into()))
            }
        }
    }

    /// Announces a clean exit and waits (briefly) for the coordinator's answer.
    pub fn leave(self) {
        self.say(&Request::Leave);
    }

    /// Reports this rank's failure, so every other rank hears `reason` at once.
    pub fn fail(self, reason: &str) {
        self.say(&Request::Fail {
            reason: reason.to_string(),
        });
    }

    /// Announces that this rank, which decides the job's end, finished: every other
    /// rank is told to stop and leave.
    pub fn finish(self) {
        self.say(&Request::Finish);
    }

    fn say(mut self, req: &Request) {
        let _ = self.writer.set_write_timeout(Some(Duration::from_secs(2)));
        if write_frame(&mut self.writer, req).is_err() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.replies.recv_timeout(left) {
                Ok(Ok(Reply::Ok)) | Ok(Err(_)) | Err(_) => return,
                Ok(Ok(_)) => {}
            }
        }
    }
}

fn reply_error(r: Reply) -> CommError {
    match r {
        Reply::Error { message } => CommError::Rendezvous(message),
        Reply::Abort { rank, reason } => CommError::Aborted { rank, reason },
        Reply::Finished { rank } => CommError::Rendezvous(format!(
            "rank {rank} finished the job while this rank was still waiting for an answer"
        )),
        other => CommError::Rendezvous(format!("unexpected reply {other:?}")),
    }
}

/// Resolves `host:port` to its first address.
pub fn resolve(addr: &str) -> Result<SocketAddr, CommError> {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()
        .map_err(CommError::io(format!("resolving {addr}")))?
        .next()
        .ok_or_else(|| CommError::Rendezvous(format!("{addr} resolves to no address")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_busy_notice_that_comes_before_the_peer_table_is_kept_not_an_error() {
        // A coordinator that answers a join the way a real one can when another
        // rank, started first, announces long work at once: the notice first.
        let key = JobKey::new("j", "t");
        let t = Duration::from_secs(5);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let k = key.clone();
        let coord = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            accept_handshake(&mut s, &k, t).unwrap();
            let _ = read_frame::<_, Request>(&mut s, "rank 0").unwrap();
            write_frame(&mut s, &Reply::Beat { busy: vec![1] }).unwrap();
            let addrs = vec!["127.0.0.1:1".to_string(), "127.0.0.1:2".to_string()];
            write_frame(&mut s, &Reply::Peers { addrs, host: None }).unwrap();
            s
        });
        let mut c = CoordClient::connect(&addr, &key, 0, t).unwrap();
        let peers = c.join(&key, 2, "127.0.0.1:1", t).unwrap();
        assert_eq!(peers.len(), 2);
        assert_eq!(c.busy, vec![1], "the notice is not lost");
        drop(coord.join().unwrap());
    }

    #[test]
    fn a_request_dribbled_across_read_timeouts_is_served() {
        let key = JobKey::new("j", "t");
        let t = Duration::from_secs(5);
        let coord = Coordinator::start("127.0.0.1:0", key.clone(), 1, t).unwrap();
        let addr = coord.addr().to_string();
        let mut c = CoordClient::connect(&addr, &key, 0, t).unwrap();
        c.join(&key, 1, "127.0.0.1:1", t).unwrap();
        let mut frame = Vec::new();
        let set = Request::Set {
            key: "k".into(),
            value: "v".into(),
            id: 41,
        };
        write_frame(&mut frame, &set).unwrap();
        // Pieces cut inside the header and inside the body, each after a pause longer
        // than the coordinator's 200 ms read timeout.
        for piece in [&frame[..2], &frame[2..9], &frame[9..]] {
            std::thread::sleep(Duration::from_millis(300));
            c.stream.write_all(piece).unwrap();
        }
        assert_eq!(c.call_reply(t).unwrap(), Reply::Stored { id: 41 });
        assert_eq!(c.get("k", t).unwrap().as_deref(), Some("v"));
        assert!(coord.failure().is_none());
        c.leave();
    }

    #[test]
    fn a_late_reply_is_never_taken_for_a_later_answer() {
        let key = JobKey::new("j", "t");
        let t = Duration::from_secs(5);
        let coord = Coordinator::start("127.0.0.1:0", key.clone(), 1, t).unwrap();
        let mut c = CoordClient::connect(&coord.addr().to_string(), &key, 0, t).unwrap();
        c.join(&key, 1, "127.0.0.1:1", t).unwrap();
        // A request whose caller gave up: its reply (no value) is still on its way.
        let gave_up = Request::Get {
            key: "a".into(),
            wait_ms: 0,
            id: 1000,
        };
        write_frame(&mut c.stream, &gave_up).unwrap();
        c.set("a", "b", t).unwrap();
        assert_eq!(c.get("a", t).unwrap().as_deref(), Some("b"));
        c.leave();
    }
}
