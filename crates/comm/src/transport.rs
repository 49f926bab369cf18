//! TCP links between peers.
//!
//! Each rank listens on one port. An acceptor thread authenticates every incoming
//! connection ([`crate::auth`]) and hands authenticated ones to the mesh set-up;
//! strangers and failed handshakes are logged and closed, and the acceptor keeps
//! refusing them for the communicator's lifetime. Rank `r` connects to every rank
//! below it and accepts from every rank above it, so each pair shares one link.
//!
//! Links are non-blocking, with `TCP_NODELAY`; the collectives drive them through
//! [`crate::link::Link`] with one `poll(2)` loop ([`wait`]). Links between ranks on
//! the same host become shared-memory links ([`crate::link::shm`]) right after
//! they are authenticated.

use std::io::ErrorKind;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::auth::{accept_handshake, connect_handshake, JobKey};
use crate::link::Link;
use crate::rendezvous::{Handshaking, MAX_HANDSHAKES};
use crate::CommError;

/// Socket buffer size requested for peer links by default (see
/// [`crate::CommConfig::socket_buffer`]): none, Linux's autotuning. A fixed size
/// measured no better on loopback (DESIGN.md), and it would cap the window at
/// `net.core.rmem_max` — 208 KiB on a stock kernel, too small for a fast network.
pub const SOCKET_BUFFER: Option<usize> = None;

/// Accepts and authenticates peer connections in the background.
pub struct Acceptor {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Authenticated connections with the rank they proved.
    pub incoming: mpsc::Receiver<(usize, TcpStream)>,
}

impl Acceptor {
    /// Starts accepting on `listener`.
    pub fn start(
        listener: TcpListener,
        key: JobKey,
        handshake_timeout: Duration,
    ) -> Result<Self, CommError> {
        listener
            .set_nonblocking(true)
            .map_err(CommError::io("peer listener"))?;
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let handshakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let st = stop.clone();
        let thread = std::thread::Builder::new()
            .name("dlc-acceptor".into())
            .spawn(move || {
                while !st.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((mut s, peer)) => {
                            let Some(guard) = Handshaking::enter(&handshakes) else {
                                tracing::warn!(
                                    "{MAX_HANDSHAKES} connections in their handshake; \
                                     closing {peer}"
                                );
                                continue;
                            };
                            let (tx, key) = (tx.clone(), key.clone());
                            let _ = std::thread::Builder::new()
                                .name("dlc-handshake".into())
                                .spawn(move || {
                                    let _guard = guard;
                                    let _ = s.set_nonblocking(false);
                                    match accept_handshake(&mut s, &key, handshake_timeout) {
                                        Ok(rank) => {
                                            let _ = tx.send((rank as usize, s));
                                        }
                                        Err(e @ CommError::Auth(_)) => {
                                            tracing::warn!("refused connection from {peer}: {e}")
                                        }
                                        Err(e) => tracing::debug!(
                                            "connection from {peer} ended during the handshake: {e}"
                                        ),
                                    }
                                });
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5))
                        }
                        Err(e) => {
                            tracing::warn!("peer accept failed: {e}");
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    }
                }
            })
            .map_err(CommError::io("spawning acceptor"))?;
        Ok(Self {
            stop,
            thread: Some(thread),
            incoming: rx,
        })
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sets `TCP_NODELAY` and, when `buffer` is given, both socket buffers to it (which
/// turns Linux's buffer autotuning off for the socket and caps the buffers at
/// `net.core.rmem_max`/`wmem_max`); `None` leaves the kernel's autotuning on.
pub fn set_buffers(s: &TcpStream, buffer: Option<usize>) {
    let _ = s.set_nodelay(true);
    if let Some(b) = buffer {
        let sock = socket2::SockRef::from(s);
        let _ = sock.set_send_buffer_size(b);
        let _ = sock.set_recv_buffer_size(b);
    }
}

/// Prepares an established link for the data path.
pub fn tune(s: &TcpStream, buffer: Option<usize>) -> Result<(), CommError> {
    set_buffers(s, buffer);
    s.set_read_timeout(None)
        .map_err(CommError::io("link timeout"))?;
    s.set_write_timeout(None)
        .map_err(CommError::io("link timeout"))?;
    s.set_nonblocking(true)
        .map_err(CommError::io("non-blocking link"))
}

/// Connects to a lower rank's listener and authenticates as `rank`.
pub fn connect_peer(
    addr: &str,
    key: &JobKey,
    rank: usize,
    peer: usize,
    deadline: Instant,
) -> Result<TcpStream, CommError> {
    let target = crate::rendezvous::resolve(addr)?;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let attempt = TcpStream::connect_timeout(
            &target,
            left.clamp(Duration::from_millis(10), Duration::from_secs(5)),
        )
        .map_err(|e| CommError::PeerLost {
            rank: peer,
            reason: format!("cannot connect to {addr}: {e}"),
        })
        .and_then(|mut s| {
            connect_handshake(
                &mut s,
                key,
                rank as u32,
                left.max(Duration::from_millis(10)),
            )
            .map(|_| s)
        });
        match attempt {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => return Err(e),
            // A refused proof is final; anything else (not listening yet, reset,
            // closed mid-handshake) is retried until the deadline.
            Err(CommError::Auth(m)) => return Err(CommError::Auth(m)),
            Err(e) => {
                tracing::debug!("rank {rank}: link to rank {peer} not up yet: {e}");
                std::thread::sleep(Duration::from_millis(20))
            }
        }
    }
}

/// What a blocked collective waits for.
pub struct Want<'a> {
    /// The link.
    pub link: &'a dyn Link,
    /// Peer rank (for errors).
    pub peer: usize,
    /// Wait until writable.
    pub write: bool,
    /// Wait until readable.
    pub read: bool,
}

/// Outcome of [`wait`].
pub enum Woke {
    /// A link became ready.
    Ready,
    /// The control connection has something to say (an abort notice or EOF).
    Control,
}

/// Waits until one of `wants` is ready, the control stream is readable, or `timeout`.
/// On timeout, names the first peer waited on for reading (else for writing). A link
/// that is ready already when armed ([`Link::arm`]) returns at once.
pub fn wait(
    wants: &[Want<'_>],
    control: Option<&TcpStream>,
    timeout: Duration,
    during: &str,
) -> Result<Woke, CommError> {
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(wants.len() + 1);
    for w in wants {
        if !w.link.arm(w.read, w.write) {
            return Ok(Woke::Ready);
        }
        w.link.pollfds(w.read, w.write, &mut fds);
    }
    if let Some(c) = control {
        fds.push(libc::pollfd {
            fd: c.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
    }
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    let n = loop {
        // SAFETY: `fds` is a valid, exclusively borrowed array of pollfd of the given length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n < 0 && std::io::Error::last_os_error().kind() == ErrorKind::Interrupted {
            continue;
        }
        break n;
    };
    if n < 0 {
        return Err(CommError::io("poll")(std::io::Error::last_os_error()));
    }
    if n == 0 {
        let culprit = wants.iter().find(|w| w.read).or(wants.first());
        return Err(CommError::Timeout {
            rank: culprit.map_or(0, |w| w.peer),
            timeout,
            during: during.to_string(),
        });
    }
    if control.is_some() && fds.last().is_some_and(|f| f.revents != 0) {
        return Ok(Woke::Control);
    }
    Ok(Woke::Ready)
}
