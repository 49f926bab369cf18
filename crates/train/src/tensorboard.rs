//! TensorBoard event files: `tensorboard --logdir runs/` shows every run's curves.
//!
//! An event file is a sequence of TFRecords, each holding one serialised `Event`
//! protocol buffer (`tensorflow/core/util/event.proto`). A record is framed as
//! `u64 length (LE) · u32 masked CRC-32C of the length · data · u32 masked CRC-32C of
//! the data`. The first event carries the file version `brain.Event:2`; every other
//! event carries a `Summary` of scalar values at one step. Only the fields scalars
//! need are declared here, with the upstream field numbers.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;

use crate::TrainError;

/// `tensorflow.Event`, reduced to what scalar summaries use.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    /// Seconds since the Unix epoch.
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    /// Global step of the values.
    #[prost(int64, tag = "2")]
    pub step: i64,
    /// What the event holds.
    #[prost(oneof = "EventWhat", tags = "3, 5")]
    pub what: Option<EventWhat>,
}

/// The payload of an [`Event`].
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum EventWhat {
    /// File format version, first event of a file.
    #[prost(string, tag = "3")]
    FileVersion(String),
    /// Values at one step.
    #[prost(message, tag = "5")]
    Summary(Summary),
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    /// The values.
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value` holding a scalar.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryValue {
    /// Name of the curve, e.g. `train/loss`.
    #[prost(string, tag = "1")]
    pub tag: String,
    /// The scalar. Optional so that 0.0 is still written (a `oneof` member upstream).
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
}

/// The CRC TFRecord uses: CRC-32C, rotated right by 15 bits plus a constant.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord holding `data`.
pub fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

/// Splits an event file's bytes into the events it holds, checking both CRCs of each
/// record. Used to read our own files back (tests, tools).
pub fn read_events(mut bytes: &[u8]) -> Result<Vec<Event>, String> {
    let mut events = Vec::new();
    while !bytes.is_empty() {
        if bytes.len() < 12 {
            return Err(format!("truncated record header ({} bytes)", bytes.len()));
        }
        let (len_bytes, rest) = bytes.split_at(8);
        let crc = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
        if crc != masked_crc32c(len_bytes) {
            return Err("length CRC mismatch".into());
        }
        let mut len8 = [0u8; 8];
        len8.copy_from_slice(len_bytes);
        let len = usize::try_from(u64::from_le_bytes(len8)).map_err(|_| "record too long")?;
        let rest = &rest[4..];
        if rest.len() < len.saturating_add(4) {
            return Err(format!("truncated record: {len} bytes announced"));
        }
        let (data, rest) = rest.split_at(len);
        let crc = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
        if crc != masked_crc32c(data) {
            return Err("data CRC mismatch".into());
        }
        events.push(Event::decode(data).map_err(|e| format!("bad event: {e}"))?);
        bytes = &rest[4..];
    }
    Ok(events)
}

/// Appends scalar summaries to a new event file in a run directory.
pub struct EventWriter {
    out: BufWriter<File>,
    path: PathBuf,
}

impl EventWriter {
    /// Creates `dir/events.out.tfevents.<unix seconds>.<host>.<pid>` (the name
    /// TensorBoard looks for; a resumed run adds a second file next to the first) and
    /// writes the file-version event.
    pub fn create(dir: &Path) -> Result<Self, TrainError> {
        let now = wall_time();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty() && !h.contains('/'))
            .unwrap_or_else(|| "localhost".into());
        let name = format!(
            "events.out.tfevents.{}.{host}.{}",
            now as u64,
            std::process::id()
        );
        // The same process may start two files in one second (train, then resume).
        let mut n = 0;
        let (file, path) = loop {
            let path = match n {
                0 => dir.join(&name),
                _ => dir.join(format!("{name}.{n}")),
            };
            match OpenOptions::new().create_new(true).write(true).open(&path) {
                Ok(f) => break (f, path),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100 => n += 1,
                Err(e) => return Err(TrainError::io(&path)(e)),
            }
        };
        let mut w = Self {
            out: BufWriter::new(file),
            path,
        };
        w.write(&Event {
            wall_time: now,
            step: 0,
            what: Some(EventWhat::FileVersion("brain.Event:2".into())),
        })?;
        Ok(w)
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the scalars `(tag, value)` at `step` and flushes them.
    pub fn scalars(&mut self, step: u64, values: &[(&str, f64)]) -> Result<(), TrainError> {
        let summary = Summary {
            value: values
                .iter()
                .map(|&(tag, v)| SummaryValue {
                    tag: tag.to_string(),
                    simple_value: Some(v as f32),
                })
                .collect(),
        };
        self.write(&Event {
            wall_time: wall_time(),
            step: i64::try_from(step).unwrap_or(i64::MAX),
            what: Some(EventWhat::Summary(summary)),
        })
    }

    fn write(&mut self, event: &Event) -> Result<(), TrainError> {
        self.out
            .write_all(&record(&event.encode_to_vec()))
            .and_then(|_| self.out.flush())
            .map_err(TrainError::io(&self.path))
    }
}

fn wall_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_and_its_mask_match_known_values() {
        // CRC-32C check value (RFC 3720 / iSCSI).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        // TensorFlow's masking: ((crc >> 15) | (crc << 17)) + 0xa282ead8, worked by hand.
        assert_eq!(masked_crc32c(b"123456789"), 0xc78a_b0e5);
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn records_match_tensorboards_own_writer_byte_for_byte() {
        // Produced by tensorboard 2.x's Python `RecordWriter` over `event_pb2.Event`s.
        let scalar = Event {
            wall_time: 1.5,
            step: 7,
            what: Some(EventWhat::Summary(Summary {
                value: vec![SummaryValue {
                    tag: "train/loss".into(),
                    simple_value: Some(0.25),
                }],
            })),
        };
        assert_eq!(
            hex(&record(&scalar.encode_to_vec())),
            "200000000000000029eda95009000000000000f83f10072a130a110a0a747261696e2f6c6f7373150000803ef4985d1a"
        );
        let version = Event {
            wall_time: 1.5,
            step: 0,
            what: Some(EventWhat::FileVersion("brain.Event:2".into())),
        };
        assert_eq!(
            hex(&record(&version.encode_to_vec())),
            "1800000000000000a37f4b2209000000000000f83f1a0d627261696e2e4576656e743a322a28646c"
        );
    }

    #[test]
    fn events_round_trip_and_damage_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        w.scalars(10, &[("train/loss", 0.5), ("test/accuracy", 0.0)])
            .unwrap();
        let path = w.path().to_path_buf();
        drop(w);
        assert!(path
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("events.out.tfevents."));
        let bytes = std::fs::read(&path).unwrap();
        let ev = read_events(&bytes).unwrap();
        assert_eq!(ev.len(), 2);
        assert_eq!(
            ev[0].what,
            Some(EventWhat::FileVersion("brain.Event:2".into()))
        );
        let Some(EventWhat::Summary(s)) = &ev[1].what else {
            panic!("{:?}", ev[1])
        };
        assert_eq!(ev[1].step, 10);
        assert_eq!(s.value[0].tag, "train/loss");
        assert_eq!(s.value[0].simple_value, Some(0.5));
        // A zero is written, not dropped as a protobuf default.
        assert_eq!(s.value[1].simple_value, Some(0.0));

        let mut bad = bytes.clone();
        let last = bad.len() - 6;
        bad[last] ^= 1;
        assert!(read_events(&bad).unwrap_err().contains("CRC"));
        assert!(read_events(&bytes[..bytes.len() - 2])
            .unwrap_err()
            .contains("truncated"));
        // A second file in the same second gets its own name.
        let again = EventWriter::create(dir.path()).unwrap();
        assert_ne!(again.path(), path);
    }
}
