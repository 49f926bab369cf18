//! The IDX file format (as used by MNIST and Fashion-MNIST), raw or gzip-compressed.
//!
//! Layout: two zero bytes, a type code (only `0x08`, unsigned byte, is supported),
//! the number of dimensions, one big-endian `u32` per dimension, then the data in
//! row-major order. Every check failure is an [`IdxError`] naming the file.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

/// Largest payload accepted (bytes). Protects against absurd headers.
pub const MAX_IDX_BYTES: u64 = 8 << 30;

/// Why an IDX file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum IdxError {
    /// The file could not be opened or read (including corrupt gzip streams).
    #[error("{path}: cannot read: {source}")]
    Io {
        /// File that failed.
        path: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
    /// The first bytes are not an IDX magic number.
    #[error("{path}: not an IDX file (magic bytes {magic:02x?}; expected 00 00 08 <ndims>)")]
    BadMagic {
        /// File that failed.
        path: PathBuf,
        /// The four bytes found.
        magic: [u8; 4],
    },
    /// The header declares an element type other than unsigned bytes.
    #[error("{path}: unsupported IDX element type 0x{code:02x} (only 0x08, unsigned byte, is supported)")]
    UnsupportedType {
        /// File that failed.
        path: PathBuf,
        /// Type code found.
        code: u8,
    },
    /// Header is inconsistent (zero or too many dimensions, size overflow).
    #[error("{path}: bad IDX header: {reason}")]
    BadHeader {
        /// File that failed.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The file ends before the data the header announces.
    #[error("{path}: truncated: header announces {expected} data bytes, file holds {found}")]
    Truncated {
        /// File that failed.
        path: PathBuf,
        /// Bytes the header announces.
        expected: u64,
        /// Bytes present.
        found: u64,
    },
    /// The file holds more bytes than the header announces.
    #[error("{path}: {extra} unexpected trailing byte(s) after the data the header announces")]
    TrailingData {
        /// File that failed.
        path: PathBuf,
        /// Number of surplus bytes (at least).
        extra: u64,
    },
}

/// An n-dimensional array of unsigned bytes read from an IDX file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// Dimensions, outermost first (e.g. `[60000, 28, 28]`).
    pub dims: Vec<usize>,
    /// Row-major data, `dims.iter().product()` bytes.
    pub data: Vec<u8>,
}

impl IdxArray {
    /// Reads an IDX file, decompressing it first when it starts with the gzip magic.
    pub fn read(path: impl AsRef<Path>) -> Result<Self, IdxError> {
        let path = path.as_ref();
        let io_err = |source| IdxError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = BufReader::new(File::open(path).map_err(io_err)?);
        let mut head = [0u8; 2];
        let n = read_full(&mut file, &mut head).map_err(io_err)?;
        let prefix = &head[..n];
        let chained = prefix.chain(file);
        if n == 2 && head == [0x1f, 0x8b] {
            Self::parse(path, GzDecoder::new(chained))
        } else {
            Self::parse(path, chained)
        }
    }

    /// Parses IDX data from any reader; `path` is only used in error messages.
    pub fn parse(path: &Path, mut reader: impl Read) -> Result<Self, IdxError> {
        let p = || path.to_path_buf();
        let io_err = |source| IdxError::Io { path: p(), source };
        let mut magic = [0u8; 4];
        let n = read_full(&mut reader, &mut magic).map_err(io_err)?;
        if n < 4 {
            return Err(IdxError::Truncated {
                path: p(),
                expected: 4,
                found: n as u64,
            });
        }
        if magic[0] != 0 || magic[1] != 0 {
            return Err(IdxError::BadMagic { path: p(), magic });
        }
        if magic[2] != 0x08 {
            return Err(IdxError::UnsupportedType {
                path: p(),
                code: magic[2],
            });
        }
        let ndims = magic[3] as usize;
        if ndims == 0 || ndims > 4 {
            return Err(IdxError::BadHeader {
                path: p(),
                reason: format!("{ndims} dimensions (expected 1 to 4)"),
            });
        }
        let mut dim_bytes = vec![0u8; 4 * ndims];
        let n = read_full(&mut reader, &mut dim_bytes).map_err(io_err)?;
        if n < dim_bytes.len() {
            return Err(IdxError::Truncated {
                path: p(),
                expected: dim_bytes.len() as u64,
                found: n as u64,
            });
        }
        let dims: Vec<usize> = dim_bytes
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
            .collect();
        let expected = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
            .filter(|&total| total <= MAX_IDX_BYTES)
            .ok_or_else(|| IdxError::BadHeader {
                path: p(),
                reason: format!("dimensions {dims:?} exceed {MAX_IDX_BYTES} bytes"),
            })?;
        // Grow the buffer as data arrives: a lying header cannot force a huge allocation.
        let mut data = Vec::with_capacity(expected.min(64 << 20) as usize);
        (&mut reader)
            .take(expected)
            .read_to_end(&mut data)
            .map_err(io_err)?;
        if (data.len() as u64) < expected {
            return Err(IdxError::Truncated {
                path: p(),
                expected,
                found: data.len() as u64,
            });
        }
        let mut probe = [0u8; 64];
        let extra = read_full(&mut reader, &mut probe).map_err(io_err)?;
        if extra > 0 {
            return Err(IdxError::TrailingData {
                path: p(),
                extra: extra as u64,
            });
        }
        Ok(Self { dims, data })
    }

    /// Serialises the array in IDX format (uncompressed). Used by tests and tools.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![0, 0, 0x08, self.dims.len() as u8];
        for &d in &self.dims {
            out.extend_from_slice(&(d as u32).to_be_bytes());
        }
        out.extend_from_slice(&self.data);
        out
    }
}

/// Reads until `buf` is full or the stream ends; returns the number of bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn sample() -> IdxArray {
        IdxArray {
            dims: vec![3, 2, 2],
            data: (0..12).collect(),
        }
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn reads_raw_and_gzip() {
        let dir = tempfile::tempdir().unwrap();
        let raw = write(dir.path(), "a.idx", &sample().to_bytes());
        assert_eq!(IdxArray::read(&raw).unwrap(), sample());
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&sample().to_bytes()).unwrap();
        let gz = write(dir.path(), "a.idx.gz", &gz.finish().unwrap());
        assert_eq!(IdxArray::read(&gz).unwrap(), sample());
    }

    #[test]
    fn truncated_data_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = sample().to_bytes();
        for cut in [0, 3, 7, bytes.len() - 1] {
            let path = write(dir.path(), "cut.idx", &bytes[..cut]);
            let err = IdxArray::read(&path).unwrap_err();
            assert!(
                matches!(err, IdxError::Truncated { .. }),
                "cut {cut}: {err}"
            );
            assert!(err.to_string().contains("cut.idx"));
        }
    }

    #[test]
    fn truncated_gzip_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&sample().to_bytes()).unwrap();
        let gz = gz.finish().unwrap();
        let path = write(dir.path(), "cut.gz", &gz[..gz.len() / 2]);
        let err = IdxArray::read(&path).unwrap_err();
        assert!(err.to_string().contains("cut.gz"), "{err}");
    }

    #[test]
    fn wrong_magic_and_type_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = sample().to_bytes();
        bytes[0] = 0x7f;
        let path = write(dir.path(), "m.idx", &bytes);
        assert!(matches!(
            IdxArray::read(&path).unwrap_err(),
            IdxError::BadMagic { .. }
        ));
        let mut bytes = sample().to_bytes();
        bytes[2] = 0x0d; // float
        let path = write(dir.path(), "t.idx", &bytes);
        assert!(matches!(
            IdxArray::read(&path).unwrap_err(),
            IdxError::UnsupportedType { code: 0x0d, .. }
        ));
        let mut bytes = sample().to_bytes();
        bytes[3] = 9;
        let path = write(dir.path(), "d.idx", &bytes);
        assert!(matches!(
            IdxArray::read(&path).unwrap_err(),
            IdxError::BadHeader { .. }
        ));
    }

    #[test]
    fn trailing_bytes_and_huge_headers_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = sample().to_bytes();
        bytes.push(1);
        let path = write(dir.path(), "x.idx", &bytes);
        assert!(matches!(
            IdxArray::read(&path).unwrap_err(),
            IdxError::TrailingData { .. }
        ));
        let huge = [
            0, 0, 8, 3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 9,
        ];
        let path = write(dir.path(), "h.idx", &huge);
        assert!(matches!(
            IdxArray::read(&path).unwrap_err(),
            IdxError::BadHeader { .. }
        ));
        // A plausible header with no data must not allocate the announced size.
        let lying = [0, 0, 8, 1, 0x7f, 0xff, 0xff, 0xff];
        let path = write(dir.path(), "l.idx", &lying);
        assert!(matches!(
            IdxArray::read(&path).unwrap_err(),
            IdxError::Truncated { .. }
        ));
    }

    #[test]
    fn missing_file_is_io_error() {
        let err = IdxArray::read("/nonexistent/file.idx").unwrap_err();
        assert!(matches!(err, IdxError::Io { .. }));
        assert!(err.to_string().contains("/nonexistent/file.idx"));
    }
}
