//! A TCP stream as a [`Link`]: non-blocking, `TCP_NODELAY` (set up in
//! [`crate::transport`]).

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;

use super::{Io, Link, Transport};
use crate::CommError;

impl Link for TcpStream {
    fn write_some(&self, bytes: &[u8], peer: usize) -> Result<Io, CommError> {
        loop {
            match (&*self).write(bytes) {
                Ok(n) => return Ok(Io::Moved(n)),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Io::Blocked),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(CommError::PeerLost {
                        rank: peer,
                        reason: format!("send failed: {e}"),
                    })
                }
            }
        }
    }

    fn read_some(&self, buf: &mut [u8], peer: usize) -> Result<Io, CommError> {
        loop {
            match (&*self).read(buf) {
                Ok(0) if !buf.is_empty() => {
                    return Err(CommError::PeerLost {
                        rank: peer,
                        reason: "connection closed".into(),
                    })
                }
                Ok(n) => return Ok(Io::Moved(n)),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Io::Blocked),
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

    fn arm(&self, _read: bool, _write: bool) -> bool {
        true
    }

    fn pollfds(&self, read: bool, write: bool, out: &mut Vec<libc::pollfd>) {
        let mut events = 0;
        if read {
            events |= libc::POLLIN;
        }
        if write {
            events |= libc::POLLOUT;
        }
        out.push(libc::pollfd {
            fd: self.as_raw_fd(),
            events,
            revents: 0,
        });
    }

    fn shutdown(&self) {
        let _ = TcpStream::shutdown(self, std::net::Shutdown::Both);
    }

    fn transport(&self) -> Transport {
        Transport::Tcp
    }
}
