//! Length-prefixed control frames: `u32` little-endian length, then that many bytes
//! of JSON. Frames larger than [`MAX_FRAME`] are refused before any allocation.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::CommError;

/// Largest control frame accepted (bytes).
pub const MAX_FRAME: usize = 1 << 20;

/// Writes one frame holding `msg` as JSON.
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<(), CommError> {
    let body = serde_json::to_vec(msg)
        .map_err(|e| CommError::Usage(format!("cannot encode frame: {e}")))?;
    if body.len() > MAX_FRAME {
        return Err(CommError::Usage(format!(
            "frame of {} bytes exceeds {MAX_FRAME}",
            body.len()
        )));
    }
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    w.write_all(&out)
        .map_err(CommError::io("writing control frame"))?;
    w.flush().map_err(CommError::io("writing control frame"))
}

/// Writes one frame holding `msg` to a socket that may be non-blocking (several
/// threads write the control connection, each holding a lock around it): waits for
/// room (up to `timeout`) instead of cutting the frame.
pub fn send_frame<T: Serialize>(
    s: &TcpStream,
    msg: &T,
    timeout: Duration,
) -> Result<(), CommError> {
    let mut out = Vec::new();
    write_frame(&mut out, msg)?;
    let deadline = Instant::now() + timeout;
    let mut sent = 0;
    while sent < out.len() {
        match (&*s).write(&out[sent..]) {
            Ok(0) => {
                return Err(CommError::io("writing control frame")(
                    std::io::ErrorKind::WriteZero.into(),
                ))
            }
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => return Err(CommError::io("writing control frame")(e)),
        }
    }
    Ok(())
}

/// Reads one frame and decodes it; `peer` names the sender in errors. EOF before the
/// first byte is reported as `Ok(None)`.
pub fn read_frame<R: Read, T: DeserializeOwned>(
    r: &mut R,
    peer: &str,
) -> Result<Option<T>, CommError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => {
                return Err(CommError::Protocol {
                    peer: peer.into(),
                    message: "connection closed inside a frame header".into(),
                })
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(CommError::io(format!("reading frame from {peer}"))(e)),
        }
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(CommError::Protocol {
            peer: peer.into(),
            message: format!("frame of {len} bytes exceeds the {MAX_FRAME}-byte limit"),
        });
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)
        .map_err(CommError::io(format!("reading frame from {peer}")))?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| CommError::Protocol {
            peer: peer.into(),
            message: format!("malformed frame: {e}"),
        })
}

/// What [`FrameReader::poll`] found.
#[derive(Debug, PartialEq)]
pub enum Polled<T> {
    /// A whole frame.
    Frame(T),
    /// The read timed out (or would block) before a whole frame arrived; the bytes
    /// read so far are kept for the next call.
    Pending,
    /// The peer closed the connection between frames.
    Closed,
}

/// Reads frames from a stream with a read timeout (polled, so that the reader can
/// check other things between reads): bytes of a frame cut by a timeout are kept,
/// and the next poll continues the frame, however slowly it arrives.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    /// A reader with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads what is available (one read, waiting at most the stream's timeout) and
    /// returns the next whole frame once it is complete; `peer` names the sender.
    pub fn poll<R: Read, T: DeserializeOwned>(
        &mut self,
        r: &mut R,
        peer: &str,
    ) -> Result<Polled<T>, CommError> {
        loop {
            if let Some(frame) = self.take(peer)? {
                return Ok(Polled::Frame(frame));
            }
            let mut chunk = [0u8; 4096];
            match r.read(&mut chunk) {
                Ok(0) if self.buf.is_empty() => return Ok(Polled::Closed),
                Ok(0) => {
                    return Err(CommError::Protocol {
                        peer: peer.into(),
                        message: "connection closed inside a frame".into(),
                    })
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(Polled::Pending)
                }
                Err(e) => return Err(CommError::io(format!("reading frame from {peer}"))(e)),
            }
        }
    }

    /// The first buffered frame, if it is whole.
    fn take<T: DeserializeOwned>(&mut self, peer: &str) -> Result<Option<T>, CommError> {
        let Some(header) = self.buf.first_chunk::<4>() else {
            return Ok(None);
        };
        let len = u32::from_le_bytes(*header) as usize;
        if len > MAX_FRAME {
            return Err(CommError::Protocol {
                peer: peer.into(),
                message: format!("frame of {len} bytes exceeds the {MAX_FRAME}-byte limit"),
            });
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let msg =
            serde_json::from_slice(&self.buf[4..4 + len]).map_err(|e| CommError::Protocol {
                peer: peer.into(),
                message: format!("malformed frame: {e}"),
            })?;
        self.buf.drain(..4 + len);
        Ok(Some(msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_limits() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &vec![1u32, 2, 3]).unwrap();
        let back: Vec<u32> = read_frame(&mut buf.as_slice(), "t").unwrap().unwrap();
        assert_eq!(back, vec![1, 2, 3]);
        let empty: Option<Vec<u32>> = read_frame(&mut [].as_slice(), "t").unwrap();
        assert!(empty.is_none());
        let huge = (u32::MAX).to_le_bytes();
        let err = read_frame::<_, Vec<u32>>(&mut huge.as_slice(), "t").unwrap_err();
        assert!(err.to_string().contains("exceeds"), "{err}");
        let junk = [5u8, 0, 0, 0, b'{', b'x', 0, 1, 2];
        let err = read_frame::<_, Vec<u32>>(&mut junk.as_slice(), "t").unwrap_err();
        assert!(err.to_string().contains("malformed"), "{err}");
        let cut = [9u8, 0];
        assert!(read_frame::<_, Vec<u32>>(&mut cut.as_slice(), "t").is_err());
    }

    /// Yields its bytes a few at a time, with a timeout between every piece.
    struct Dribble {
        bytes: Vec<u8>,
        at: usize,
        timed_out: bool,
    }

    impl Read for Dribble {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            self.timed_out = !self.timed_out;
            if self.timed_out {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            let n = 3.min(out.len()).min(self.bytes.len() - self.at);
            out[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    #[test]
    fn frames_cut_by_timeouts_are_resumed() {
        let mut bytes = Vec::new();
        write_frame(&mut bytes, &"first".to_string()).unwrap();
        write_frame(&mut bytes, &vec![7u32; 40]).unwrap();
        let mut r = Dribble {
            bytes,
            at: 0,
            timed_out: false,
        };
        let mut reader = FrameReader::new();
        let mut pending = 0;
        let first: String = loop {
            match reader.poll(&mut r, "t").unwrap() {
                Polled::Frame(f) => break f,
                Polled::Pending => pending += 1,
                Polled::Closed => panic!("closed"),
            }
        };
        assert_eq!(first, "first");
        assert!(pending > 2, "the frame arrived in {pending} pieces");
        let second: Vec<u32> = loop {
            if let Polled::Frame(f) = reader.poll(&mut r, "t").unwrap() {
                break f;
            }
        };
        assert_eq!(second, vec![7u32; 40]);
        loop {
            match reader.poll::<_, String>(&mut r, "t").unwrap() {
                Polled::Closed => break,
                Polled::Pending => {}
                Polled::Frame(f) => panic!("extra frame {f}"),
            }
        }
        // A frame cut by the end of the stream is an error, not a clean close.
        let mut cut = Vec::new();
        write_frame(&mut cut, &"whole".to_string()).unwrap();
        cut.truncate(6);
        let e = FrameReader::new()
            .poll::<_, String>(&mut cut.as_slice(), "t")
            .unwrap_err();
        assert!(e.to_string().contains("inside a frame"), "{e}");
    }
}
