//! Challenge–response authentication of a TCP connection with the job token.
//!
//! ```text
//! acceptor  → connector : "DLCH" v nonce_a[32]
//! connector → acceptor  : "DLCH" v nonce_c[32] rank:u32le mac_c[32]
//!                          mac_c = HMAC-SHA256(token, "dlc-connect" ‖ job ‖ nonce_a ‖ nonce_c ‖ rank)
//! acceptor  → connector : mac_a[32]
//!                          mac_a = HMAC-SHA256(token, "dlc-accept" ‖ job ‖ nonce_c ‖ nonce_a ‖ rank)
//! ```
//! Both sides prove knowledge of the token; MACs are compared in constant time
//! (`hmac`'s `verify_slice`). An acceptor that refuses the connector's proof answers
//! 32 zero bytes (never a real MAC) before closing, so that the connector can tell a
//! refusal ([`CommError::Auth`], final) from a peer that went away or is not ready
//! (an I/O error, worth retrying). Messages have fixed sizes, so a stranger's bytes
//! can never cause an allocation, and the whole handshake has one deadline, however
//! slowly a peer sends.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::CommError;

const MAGIC: &[u8; 4] = b"DLCH";
const VERSION: u8 = 1;
const NONCE: usize = 32;
const MAC: usize = 32;

/// The secret shared by the processes of one job, and the job's id.
#[derive(Clone)]
pub struct JobKey {
    /// Job id (part of every MAC, so a token reused across jobs cannot cross them).
    pub job_id: String,
    token: Vec<u8>,
}

impl std::fmt::Debug for JobKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobKey")
            .field("job_id", &self.job_id)
            .finish_non_exhaustive()
    }
}

impl JobKey {
    /// A key from a job id and token.
    pub fn new(job_id: impl Into<String>, token: impl AsRef<[u8]>) -> Self {
        Self {
            job_id: job_id.into(),
            token: token.as_ref().to_vec(),
        }
    }

    /// A fresh random token, hex-encoded (what launchers hand to workers).
    pub fn random_token() -> String {
        let mut b = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut b);
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn mac(&self, label: &[u8], a: &[u8], b: &[u8], rank: u32) -> Hmac<Sha256> {
        let mut m = Hmac::<Sha256>::new_from_slice(&self.token).expect("HMAC takes any key length");
        m.update(label);
        m.update(&(self.job_id.len() as u32).to_le_bytes());
        m.update(self.job_id.as_bytes());
        m.update(a);
        m.update(b);
        m.update(&rank.to_le_bytes());
        m
    }
}

fn nonce() -> [u8; NONCE] {
    let mut n = [0u8; NONCE];
    rand::thread_rng().fill_bytes(&mut n);
    n
}

fn auth_err(peer: &str, what: impl std::fmt::Display) -> CommError {
    CommError::Auth(format!("{peer}: {what}"))
}

/// The refusal an acceptor sends in place of its MAC.
const REFUSED: [u8; MAC] = [0; MAC];

fn exchange_io<T>(peer: &str, r: std::io::Result<T>) -> Result<T, CommError> {
    r.map_err(CommError::io(format!("handshake with {peer}")))
}

/// Fills `buf` from `s` before `deadline` (one deadline for all reads).
fn read_by(
    s: &mut TcpStream,
    buf: &mut [u8],
    deadline: Instant,
    peer: &str,
) -> Result<(), CommError> {
    let mut got = 0;
    while got < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return exchange_io(peer, Err(std::io::ErrorKind::TimedOut.into()));
        }
        exchange_io(peer, s.set_read_timeout(Some(left)))?;
        match s.read(&mut buf[got..]) {
            Ok(0) => {
                return exchange_io(
                    peer,
                    Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the peer closed the connection during the handshake",
                    )),
                )
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return exchange_io(peer, Err(e)),
        }
    }
    Ok(())
}

/// Runs the connector's side; `rank` is the identity this side claims.
pub fn connect_handshake(
    s: &mut TcpStream,
    key: &JobKey,
    rank: u32,
    timeout: Duration,
) -> Result<(), CommError> {
    let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let deadline = Instant::now() + timeout;
    exchange_io(&peer, s.set_write_timeout(Some(timeout)))?;
    let mut hello = [0u8; 5 + NONCE];
    read_by(s, &mut hello, deadline, &peer)?;
    if &hello[..4] != MAGIC || hello[4] != VERSION {
        return Err(auth_err(&peer, "not a dlcluster endpoint (bad greeting)"));
    }
    let nonce_a = &hello[5..];
    let nonce_c = nonce();
    let mac_c = key
        .mac(b"dlc-connect", nonce_a, &nonce_c, rank)
        .finalize()
        .into_bytes();
    let mut msg = Vec::with_capacity(5 + NONCE + 4 + MAC);
    msg.extend_from_slice(MAGIC);
    msg.push(VERSION);
    msg.extend_from_slice(&nonce_c);
    msg.extend_from_slice(&rank.to_le_bytes());
    msg.extend_from_slice(&mac_c);
    exchange_io(&peer, s.write_all(&msg))?;
    let mut mac_a = [0u8; MAC];
    read_by(s, &mut mac_a, deadline, &peer)?;
    if mac_a == REFUSED {
        return Err(auth_err(
            &peer,
            "the peer refused this rank's proof (wrong job token or job id)",
        ));
    }
    key.mac(b"dlc-accept", &nonce_c, nonce_a, rank)
        .verify_slice(&mac_a)
        .map_err(|_| auth_err(&peer, "peer failed to prove the job token"))?;
    Ok(())
}

/// Runs the acceptor's side; returns the rank the (authenticated) connector claims.
pub fn accept_handshake(
    s: &mut TcpStream,
    key: &JobKey,
    timeout: Duration,
) -> Result<u32, CommError> {
    let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let deadline = Instant::now() + timeout;
    exchange_io(&peer, s.set_write_timeout(Some(timeout)))?;
    let nonce_a = nonce();
    let mut hello = Vec::with_capacity(5 + NONCE);
    hello.extend_from_slice(MAGIC);
    hello.push(VERSION);
    hello.extend_from_slice(&nonce_a);
    exchange_io(&peer, s.write_all(&hello))?;
    let mut msg = [0u8; 5 + NONCE + 4 + MAC];
    read_by(s, &mut msg, deadline, &peer)?;
    if &msg[..4] != MAGIC || msg[4] != VERSION {
        return Err(auth_err(&peer, "bad greeting (not a dlcluster peer)"));
    }
    let nonce_c = &msg[5..5 + NONCE];
    let rank = u32::from_le_bytes(msg[5 + NONCE..9 + NONCE].try_into().expect("4 bytes"));
    let mac_c = &msg[9 + NONCE..];
    if key
        .mac(b"dlc-connect", &nonce_a, nonce_c, rank)
        .verify_slice(mac_c)
        .is_err()
    {
        let _ = s.write_all(&REFUSED);
        return Err(auth_err(&peer, "wrong job token or job id"));
    }
    let mac_a = key
        .mac(b"dlc-accept", nonce_c, &nonce_a, rank)
        .finalize()
        .into_bytes();
    exchange_io(&peer, s.write_all(&mac_a))?;
    Ok(rank)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn pair(
        server_key: JobKey,
        client_key: JobKey,
    ) -> (Result<u32, CommError>, Result<(), CommError>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            accept_handshake(&mut s, &server_key, Duration::from_secs(5))
        });
        let mut c = TcpStream::connect(addr).unwrap();
        let cr = connect_handshake(&mut c, &client_key, 7, Duration::from_secs(5));
        drop(c);
        (t.join().unwrap(), cr)
    }

    #[test]
    fn same_token_authenticates_both_ways() {
        let (s, c) = pair(JobKey::new("j", "tok"), JobKey::new("j", "tok"));
        assert_eq!(s.unwrap(), 7);
        c.unwrap();
    }

    #[test]
    fn wrong_token_or_job_is_refused_as_such() {
        let (s, c) = pair(JobKey::new("j", "tok"), JobKey::new("j", "other"));
        assert!(matches!(s, Err(CommError::Auth(_))));
        // The connector hears a refusal, not a broken connection.
        let e = c.unwrap_err();
        assert!(
            matches!(&e, CommError::Auth(m) if m.contains("refused")),
            "{e}"
        );
        let (s, c) = pair(JobKey::new("j", "tok"), JobKey::new("k", "tok"));
        assert!(matches!(s, Err(CommError::Auth(_))));
        assert!(matches!(c, Err(CommError::Auth(_))));
    }

    #[test]
    fn a_peer_that_goes_away_is_an_io_error_not_a_refusal() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || drop(l.accept().unwrap()));
        let mut c = TcpStream::connect(addr).unwrap();
        t.join().unwrap();
        let e = connect_handshake(&mut c, &JobKey::new("j", "t"), 1, Duration::from_secs(2))
            .unwrap_err();
        assert!(matches!(e, CommError::Io { .. }), "{e}");
    }

    #[test]
    fn a_dribbling_stranger_meets_one_deadline_for_the_whole_handshake() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let start = Instant::now();
            let r = accept_handshake(&mut s, &JobKey::new("j", "t"), Duration::from_millis(600));
            (r, start.elapsed())
        });
        let mut c = TcpStream::connect(addr).unwrap();
        // One byte every 200 ms: each read would finish within a per-read timeout.
        for _ in 0..20 {
            if c.write_all(b"D").is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let (r, took) = t.join().unwrap();
        assert!(r.is_err(), "a dribbler was accepted");
        assert!(took < Duration::from_millis(1500), "took {took:?}");
    }

    #[test]
    fn random_bytes_are_refused_quickly() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            accept_handshake(&mut s, &JobKey::new("j", "t"), Duration::from_millis(500))
        });
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(&[0xAB; 200]).unwrap();
        assert!(t.join().unwrap().is_err());
        // A silent client hits the deadline.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let start = std::time::Instant::now();
            let r = accept_handshake(&mut s, &JobKey::new("j", "t"), Duration::from_millis(300));
            (r, start.elapsed())
        });
        let _c = TcpStream::connect(addr).unwrap();
        let (r, took) = t.join().unwrap();
        assert!(r.is_err() && took < Duration::from_secs(2));
    }
}
