//! Length-prefixed control frames: `u32` little-endian length, then that many bytes
//! of JSON. Frames larger than [`MAX_FRAME`] are refused before any allocation.

use std::io::{Read, Write};

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
}
