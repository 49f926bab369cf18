//! A rank's handle on the job: its links to every peer and the control connection.

use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::auth::JobKey;
use crate::frame::read_frame;
use crate::link::{Link, Transport};
use crate::rendezvous::{CoordClient, Heartbeat, Reply, HEARTBEAT, SILENCE};
use crate::transport::{self, Acceptor};
use crate::CommError;

/// How to reach the job and how long to wait.
#[derive(Debug, Clone)]
pub struct CommConfig {
    /// Coordinator address, `host:port`.
    pub coordinator: String,
    /// Job id and token.
    pub key: JobKey,
    /// This rank.
    pub rank: usize,
    /// Number of ranks.
    pub world: usize,
    /// Deadline of the rendezvous: reaching the coordinator and every rank joining.
    pub join_timeout: Duration,
    /// Deadline of every wait once all ranks joined: link set-up, and any collective
    /// or key-value request making no progress for this long.
    pub timeout: Duration,
    /// With more than two ranks, messages up to this many bytes use the direct
    /// exchange (one round, latency optimal); larger ones, and all messages between
    /// two ranks, use the pipelined ring (measured faster there at every size).
    pub small_message_bytes: usize,
    /// Socket buffer size of peer links; `None` leaves Linux's autotuning on
    /// (measured in DESIGN.md).
    pub socket_buffer: Option<usize>,
    /// What carries peer links: shared memory between ranks on one host and TCP
    /// between hosts (`Auto`), or TCP everywhere. Both ends of a pair must ask for
    /// shared memory to get it.
    pub transport: Transport,
    /// TCP streams per pair of ranks on TCP links (1 to [`MAX_TCP_STREAMS`]); every
    /// rank of a job must use the same number. More than one stripes each message
    /// over them ([`crate::link::striped`]).
    pub tcp_streams: usize,
}

/// The most TCP streams a pair of ranks may use.
pub const MAX_TCP_STREAMS: usize = 16;

impl CommConfig {
    /// Defaults: 30 s timeouts, 16 KiB small-message threshold.
    pub fn new(coordinator: impl Into<String>, key: JobKey, rank: usize, world: usize) -> Self {
        Self {
            coordinator: coordinator.into(),
            key,
            rank,
            world,
            join_timeout: Duration::from_secs(30),
            timeout: Duration::from_secs(30),
            small_message_bytes: 16 << 10,
            socket_buffer: transport::SOCKET_BUFFER,
            transport: Transport::Auto,
            tcp_streams: 1,
        }
    }
}

/// How [`Communicator::all_reduce`] combines values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    /// Sum over ranks.
    Sum,
    /// Sum over ranks divided by the number of ranks.
    Mean,
}

/// A rank's connections to its job. Only [`Communicator::leave`] announces a clean
/// exit; [`Communicator::fail`] reports this rank's failure with its reason, and
/// dropping it without either reports a failure too (an error on this rank ended its
/// work early), so that every other rank stops at once, naming this one.
pub struct Communicator {
    pub(crate) cfg: CommConfig,
    pub(crate) links: Vec<Option<Box<dyn Link>>>,
    pub(crate) control: CoordClient,
    pub(crate) seq: u64,
    /// The caller's name for the next collective's buffer ([`Communicator::named`]).
    pub(crate) name: String,
    pub(crate) p2p_send_seq: Vec<u64>,
    pub(crate) p2p_recv_seq: Vec<u64>,
    pub(crate) scratch: Vec<u64>,
    /// Half-precision copies of compressed all-reduces, kept between calls.
    pub(crate) wire: Vec<u16>,
    listen_addr: std::net::SocketAddr,
    /// Every rank's listening address as the coordinator handed it out.
    peer_addrs: Vec<String>,
    /// Leave or Fail was said (or a crash simulated): dropping says nothing more.
    ended: bool,
    /// Tells the coordinator that this process is alive until dropped.
    heartbeat: Option<Heartbeat>,
    _acceptor: Acceptor,
}

/// Whether a coordinator address names loopback literally (`127.x`, `[::1]`,
/// `localhost`), as a job confined to this machine does.
fn names_loopback(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The address to listen on for peers, given `ip`, the local address of the
/// connection to `coordinator`: that address, except that a loopback one reached
/// through a host name (not an explicit loopback address) becomes every interface.
pub(crate) fn listen_ip(ip: std::net::IpAddr, coordinator: &str) -> std::net::IpAddr {
    if ip.is_loopback() && !names_loopback(coordinator) {
        match ip {
            std::net::IpAddr::V4(_) => std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            std::net::IpAddr::V6(_) => std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        }
    } else {
        ip
    }
}

impl Communicator {
    /// Joins the job: authenticates to the coordinator, publishes this rank's
    /// listening address, waits for all ranks, then links to every peer.
    pub fn connect(cfg: CommConfig) -> Result<Self, CommError> {
        if cfg.world == 0 || cfg.rank >= cfg.world {
            return Err(CommError::Usage(format!(
                "rank {} is out of range for world size {}",
                cfg.rank, cfg.world
            )));
        }
        let mut control =
            CoordClient::connect(&cfg.coordinator, &cfg.key, cfg.rank, cfg.join_timeout)?;
        // Listen on the interface that reaches the coordinator: peers can reach it too.
        // A host name that resolves to loopback here (Debian's `127.0.1.1 host` line)
        // may be reached from other hosts through a routable address: listen on every
        // interface then, advertise the loopback address, and let the coordinator
        // rewrite it to its own routable address for the other ranks. An explicit
        // loopback coordinator address (a local job) keeps the listener on loopback.
        let ip = control
            .stream
            .local_addr()
            .map_err(CommError::io("local address"))?
            .ip();
        let bind_ip = listen_ip(ip, &cfg.coordinator);
        let listener = TcpListener::bind((bind_ip, 0))
            .map_err(CommError::io(format!("listening on {bind_ip}")))?;
        let addr = std::net::SocketAddr::new(
            ip,
            listener
                .local_addr()
                .map_err(CommError::io("listener address"))?
                .port(),
        );
        let acceptor = Acceptor::start(
            listener,
            cfg.key.clone(),
            cfg.timeout.min(Duration::from_secs(10)),
        )?;
        let peers = control.join(&cfg.key, cfg.world, &addr.to_string(), cfg.join_timeout)?;
        // Every rank is up: links get a deadline of their own, however late the last
        // rank joined.
        let deadline = Instant::now() + cfg.timeout;

        let mut links: Vec<Option<TcpStream>> = (0..cfg.world).map(|_| None).collect();
        for (peer, peer_addr) in peers.iter().enumerate().take(cfg.rank) {
            let s = transport::connect_peer(peer_addr, &cfg.key, cfg.rank, peer, deadline)?;
            links[peer] = Some(s);
        }
        let mut missing: Vec<usize> = (cfg.rank + 1..cfg.world).collect();
        while !missing.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match acceptor.incoming.recv_timeout(left) {
                Ok((peer, s)) if missing.contains(&peer) => {
                    missing.retain(|&m| m != peer);
                    links[peer] = Some(s);
                }
                Ok((peer, _)) => tracing::warn!(
                    "rank {}: ignoring unexpected link from rank {peer}",
                    cfg.rank
                ),
                Err(_) => {
                    return Err(CommError::Timeout {
                        rank: missing[0],
                        timeout: cfg.timeout,
                        during: format!("waiting for rank(s) {missing:?} to connect"),
                    })
                }
            }
        }
        for s in links.iter().flatten() {
            transport::set_buffers(s, cfg.socket_buffer);
        }
        let streams = cfg.tcp_streams.clamp(1, MAX_TCP_STREAMS);
        // A second handle on each first stream, for the links that stay on TCP.
        let raw: Vec<Option<TcpStream>> = match streams {
            1 => Vec::new(),
            _ => links
                .iter()
                .map(|l| l.as_ref().map(TcpStream::try_clone).transpose())
                .collect::<Result<_, _>>()
                .map_err(CommError::io("duplicating a link"))?,
        };
        let mut links =
            crate::link::shm::upgrade(links, cfg.rank, cfg.transport, streams, deadline)?;
        if streams > 1 {
            let dial = crate::link::striped::Dial {
                rank: cfg.rank,
                addrs: &peers,
                key: &cfg.key,
                acceptor: &acceptor,
                socket_buffer: cfg.socket_buffer,
                deadline,
                timeout: cfg.timeout,
            };
            links = crate::link::striped::add_streams(links, raw, streams, &dial)?;
        }
        control
            .stream
            .set_nonblocking(true)
            .map_err(CommError::io("control connection"))?;
        let heartbeat = Some(control.heartbeat(HEARTBEAT)?);
        let world = cfg.world;
        Ok(Self {
            cfg,
            links,
            control,
            seq: 0,
            name: String::new(),
            p2p_send_seq: vec![0; world],
            p2p_recv_seq: vec![0; world],
            scratch: vec![0u64; (1 << 20) / 8],
            wire: Vec::new(),
            listen_addr: addr,
            peer_addrs: peers,
            ended: false,
            heartbeat,
            _acceptor: acceptor,
        })
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.cfg.rank
    }

    /// Number of ranks.
    pub fn world(&self) -> usize {
        self.cfg.world
    }

    /// The address this rank listens on for peer links.
    pub fn listen_addr(&self) -> std::net::SocketAddr {
        self.listen_addr
    }

    /// Every rank's address for peer links, in rank order, as the rendezvous handed
    /// it out (what the other ranks dialled: routable across hosts).
    pub fn peer_addrs(&self) -> &[String] {
        &self.peer_addrs
    }

    /// Closes every connection without telling the coordinator, as a crash would
    /// (the kernel closes a dead process's sockets). For fault-injection tests.
    pub fn simulate_crash(&mut self) {
        self.heartbeat = None;
        for l in self.links.iter().flatten() {
            l.shutdown();
        }
        let _ = self.control.stream.shutdown(std::net::Shutdown::Both);
        self.ended = true;
    }

    /// Stops this rank's heartbeats while keeping every connection open, as a
    /// stopped (`SIGSTOP`) or frozen process would. For fault-injection tests.
    pub fn simulate_freeze(&mut self) {
        self.heartbeat = None;
    }

    /// Announces that this rank finished its part successfully: its disconnection is
    /// then no failure. Call it after the job's last collective (a barrier).
    pub fn leave(&mut self) {
        self.heartbeat = None;
        if !std::mem::replace(&mut self.ended, true) {
            self.control.leave();
        }
    }

    /// Reports that this rank failed because of `reason`: every other rank's next
    /// (or current) wait ends with an error naming this rank and the reason.
    pub fn fail(&mut self, reason: &str) {
        // A coordinator that fell silent would only make this rank wait to exit. It
        // is silent only if nothing it sent waits unread (this rank may have been
        // busy for a while without reading its heartbeat answers).
        let unread = !matches!(
            transport::wait(&[], Some(&self.control.stream), Duration::ZERO, ""),
            Err(CommError::Timeout { .. })
        );
        let silent = !unread && self.coordinator_silence().is_some();
        self.heartbeat = None;
        if !std::mem::replace(&mut self.ended, true) && !silent {
            self.control.fail(reason);
        }
    }

    /// The configuration this communicator was built with.
    pub fn config(&self) -> &CommConfig {
        &self.cfg
    }

    /// The link to `peer`.
    pub(crate) fn link(&self, peer: usize) -> &dyn Link {
        self.links[peer].as_deref().expect("every peer has a link")
    }

    /// The transport of the link to each rank, in rank order (`None` for this
    /// rank).
    pub fn transports(&self) -> Vec<Option<Transport>> {
        self.links
            .iter()
            .map(|l| l.as_ref().map(|l| l.transport()))
            .collect()
    }

    /// How many TCP streams carry the link to each rank, in rank order (0 for this
    /// rank and for shared-memory links).
    pub fn tcp_streams(&self) -> Vec<usize> {
        self.links
            .iter()
            .map(|l| l.as_ref().map_or(0, |l| l.tcp_streams()))
            .collect()
    }

    /// Reads what the coordinator sent while a collective was blocked: the error it
    /// means, or `None` for a late reply to a key-value request that timed out
    /// (dropped: no request is pending during a collective).
    pub(crate) fn control_event(&mut self) -> Option<CommError> {
        let _ = self.control.stream.set_nonblocking(false);
        let _ = self
            .control
            .stream
            .set_read_timeout(Some(Duration::from_secs(2)));
        let err = match read_frame::<_, Reply>(&mut self.control.stream, "coordinator") {
            Ok(Some(Reply::Abort { rank, reason })) => Some(CommError::Aborted { rank, reason }),
            Ok(Some(Reply::Beat { busy })) => {
                self.control.heard_beat(busy);
                None
            }
            Ok(Some(Reply::Value { .. } | Reply::Stored { .. })) => None,
            Ok(Some(other)) => Some(CommError::Protocol {
                peer: "coordinator".into(),
                message: format!("unexpected notice {other:?}"),
            }),
            Ok(None) => Some(CommError::PeerLost {
                rank: 0,
                reason: "the coordinator (run by rank 0) closed its connection".into(),
            }),
            Err(e) => Some(e),
        };
        let _ = self.control.stream.set_nonblocking(true);
        err
    }

    /// Turns a lost or silent peer into the root cause when the coordinator knows it:
    /// when rank 2 dies, rank 3 fails first and rank 0 then loses rank 3, but the
    /// coordinator's notice names rank 2.
    pub(crate) fn root_cause(&mut self, err: CommError) -> CommError {
        if !matches!(err, CommError::PeerLost { .. } | CommError::Timeout { .. }) {
            return err;
        }
        let deadline = Instant::now() + self.cfg.timeout.min(Duration::from_secs(1));
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match transport::wait(&[], Some(&self.control.stream), left, "") {
                Ok(transport::Woke::Control) => match self.control_event() {
                    Some(abort @ CommError::Aborted { .. }) => return abort,
                    Some(_) => return err,
                    // A heartbeat answer or a late reply: the notice may follow.
                    None if !left.is_zero() => {}
                    None => return err,
                },
                _ => return err,
            }
        }
    }

    /// The error for a coordinator that answered no heartbeat for [`SILENCE`], if
    /// this rank sends heartbeats and has read everything the coordinator sent.
    pub(crate) fn coordinator_silence(&self) -> Option<CommError> {
        let silent = self.control.heard.elapsed();
        if self.heartbeat.is_none() || silent <= SILENCE {
            return None;
        }
        Some(match self.control.host {
            Some(host) => CommError::PeerLost {
                rank: host,
                reason: format!(
                    "the coordinator, which rank {host}'s process runs, sent nothing for \
                     {silent:.0?}: that process is stopped or frozen, or its host or network \
                     is down"
                ),
            },
            None => CommError::Rendezvous(format!(
                "the coordinator at {} sent nothing for {silent:.0?}: the launcher that \
                 runs it is stopped or frozen, or its host or network is down",
                self.cfg.coordinator
            )),
        })
    }

    /// Runs `work`, long local work that other ranks may wait for (evaluation, a
    /// checkpoint), announced to the job as `what`: while this rank is alive and
    /// busy, a rank blocked in a collective waits beyond its deadline (up to
    /// [`crate::rendezvous::BUSY_LIMIT`]) instead of failing.
    pub fn busy<R>(&mut self, what: &str, work: impl FnOnce() -> R) -> R {
        if let Err(e) = self.control.busy(Some(what)) {
            tracing::debug!("rank {}: cannot announce `{what}`: {e}", self.cfg.rank);
        }
        let r = work();
        let _ = self.control.busy(None);
        r
    }

    /// Stores `value` under `key` in the coordinator's key-value store.
    pub fn kv_set(&mut self, key: &str, value: &str) -> Result<(), CommError> {
        let t = self.cfg.timeout;
        let r = self.control.set(key, value, t);
        let _ = self.control.stream.set_nonblocking(true);
        r
    }

    /// Reads `key` from the coordinator's store, waiting up to the timeout for it.
    pub fn kv_get(&mut self, key: &str) -> Result<Option<String>, CommError> {
        let t = self.cfg.timeout;
        let r = self.control.get(key, t);
        let _ = self.control.stream.set_nonblocking(true);
        r
    }
}

impl Drop for Communicator {
    fn drop(&mut self) {
        self.fail("stopped before the job finished (an error on this rank: see its output)");
        for l in self.links.iter().flatten() {
            l.shutdown();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::write_frame;
    use crate::rendezvous::Request;
    use crate::Coordinator;

    #[test]
    fn a_late_key_value_reply_during_a_collective_is_no_error() {
        let key = JobKey::new("j", "t");
        let coord =
            Coordinator::start("127.0.0.1:0", key.clone(), 2, Duration::from_secs(5)).unwrap();
        let addr = coord.addr().to_string();
        let ranks: Vec<_> = (0..2)
            .map(|r| {
                let (addr, key) = (addr.clone(), key.clone());
                std::thread::spawn(move || {
                    let mut c = Communicator::connect(CommConfig::new(addr, key, r, 2)).unwrap();
                    if r == 0 {
                        // The reply to this request arrives while rank 0 waits for
                        // rank 1 in the all-reduce below.
                        let gave_up = Request::Get {
                            key: "nothing".into(),
                            wait_ms: 100,
                            id: 99,
                        };
                        let _ = c.control.stream.set_nonblocking(false);
                        write_frame(&mut c.control.stream, &gave_up).unwrap();
                        let _ = c.control.stream.set_nonblocking(true);
                    } else {
                        std::thread::sleep(Duration::from_millis(400));
                    }
                    let mut v = vec![1.0f32; 1000];
                    let r = c.all_reduce(&mut v, ReduceOp::Sum);
                    c.leave();
                    r.map(|()| v[0])
                })
            })
            .collect();
        for r in ranks {
            assert_eq!(r.join().unwrap().unwrap(), 2.0);
        }
    }
}
