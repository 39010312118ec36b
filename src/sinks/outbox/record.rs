//! The outbox's record format. A segment file is a sequence of records, each
//! `[payload length: u32 LE][CRC-32 of the payload: u32 LE][payload]`, where the payload
//! is one [`Record`]. Written by hand (a few dozen lines) because the format must stay
//! readable after a crash: a record torn by a power loss or `kill -9` (short, or failing
//! its CRC) ends the readable part of its segment and is reported, never fatal.

use bytes::Bytes;

use crate::sinks::event::AlertEvent;

/// Bytes before each payload: its length and its CRC.
pub const HEADER: usize = 8;

/// No record is longer: a length past it can only be garbage (a body is capped at the
/// receiver's 100 KiB limit; an event adds its key, incident and idempotency key).
pub const MAX_PAYLOAD: usize = 64 << 20;

const EVENT: u8 = 1;
const ACK: u8 = 2;
const DEAD: u8 = 3;

/// An event as the outbox keeps it: the event, its persistent id and idempotency key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    /// Increases with every event appended to this outbox, across restarts.
    pub id: u64,
    /// Sent as `Idempotency-Key` with every attempt; the same across retries and restarts
    /// (and kept when a dead letter is replayed).
    pub idempotency_key: String,
    /// When it was appended, Unix milliseconds.
    pub at_ms: i64,
    /// The event.
    pub event: AlertEvent,
}

/// One record of a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// An event to deliver.
    Event(StoredEvent),
    /// The receiver accepted event `id`.
    Ack(u64),
    /// Event `id` was given up on (its dead letter is in the dead-letter file).
    Dead(u64),
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl Record {
    /// Appends the framed record to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; HEADER]);
        match self {
            Record::Event(e) => {
                out.push(EVENT);
                out.extend_from_slice(&e.id.to_le_bytes());
                out.extend_from_slice(&e.at_ms.to_le_bytes());
                let ev = &e.event;
                let flags = u8::from(ev.seq.is_some()) | (u8::from(ev.incident.is_some()) << 1);
                out.push(flags);
                out.extend_from_slice(&ev.seq.unwrap_or(0).to_le_bytes());
                put_str(out, &ev.key);
                put_str(out, ev.incident.as_deref().unwrap_or(""));
                put_str(out, &e.idempotency_key);
                out.extend_from_slice(&ev.body);
            }
            Record::Ack(id) | Record::Dead(id) => {
                out.push(if matches!(self, Record::Ack(_)) {
                    ACK
                } else {
                    DEAD
                });
                out.extend_from_slice(&id.to_le_bytes());
            }
        }
        let len = (out.len() - start - HEADER) as u32;
        let crc = crc32fast::hash(&out[start + HEADER..]);
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        out[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
    }

    fn decode(p: &[u8]) -> Option<Record> {
        let mut r = Reader(p);
        match r.u8()? {
            EVENT => {
                let id = r.u64()?;
                let at_ms = r.u64()? as i64;
                let flags = r.u8()?;
                let seq = r.u64()?;
                let key = r.str()?;
                let incident = r.str()?;
                let idempotency_key = r.str()?;
                Some(Record::Event(StoredEvent {
                    id,
                    idempotency_key,
                    at_ms,
                    event: AlertEvent {
                        key,
                        body: Bytes::copy_from_slice(r.0),
                        seq: (flags & 1 != 0).then_some(seq),
                        incident: (flags & 2 != 0).then_some(incident),
                    },
                }))
            }
            ACK => Some(Record::Ack(r.u64()?)),
            DEAD => Some(Record::Dead(r.u64()?)),
            _ => None,
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn str(&mut self) -> Option<String> {
        let n = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

/// The records of a segment, and how many of its bytes they fill. Reading stops at the
/// first record that is incomplete or fails its check: `valid < bytes.len()` then says
/// the rest is a torn tail (or damage), to be cut off before appending again.
pub fn decode_all(bytes: &[u8]) -> (Vec<Record>, usize) {
    let mut records = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= HEADER {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + HEADER].try_into().expect("4 bytes"));
        let end = at + HEADER + len;
        if len > MAX_PAYLOAD || end > bytes.len() {
            break;
        }
        let payload = &bytes[at + HEADER..end];
        if crc32fast::hash(payload) != crc {
            break;
        }
        match Record::decode(payload) {
            Some(r) => records.push(r),
            None => break,
        }
        at = end;
    }
    (records, at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: u64, incident: Option<&str>) -> Record {
        Record::Event(StoredEvent {
            id,
            idempotency_key: format!("abc-{id}"),
            at_ms: 1_795_428_000_000 + id as i64,
            event: AlertEvent {
                key: format!("frame-{id}"),
                body: Bytes::from(format!("{{\"seq\":{id}}}")),
                seq: Some(id),
                incident: incident.map(String::from),
            },
        })
    }

    #[test]
    fn records_round_trip() {
        let records = vec![
            event(1, None),
            event(2, Some("inc-7")),
            Record::Ack(1),
            Record::Dead(2),
        ];
        let mut bytes = Vec::new();
        for r in &records {
            r.encode(&mut bytes);
        }
        assert_eq!(decode_all(&bytes), (records, bytes.len()));
    }

    /// A crash in the middle of an append leaves a partial record: every complete record
    /// before it is read, and the torn one is reported as the end of the valid bytes,
    /// wherever the write stopped.
    #[test]
    fn a_torn_last_record_is_skipped_not_fatal() {
        let mut bytes = Vec::new();
        event(1, None).encode(&mut bytes);
        Record::Ack(1).encode(&mut bytes);
        let whole = bytes.len();
        event(2, None).encode(&mut bytes);
        for cut in whole..bytes.len() {
            let (records, valid) = decode_all(&bytes[..cut]);
            assert_eq!(
                records,
                vec![event(1, None), Record::Ack(1)],
                "cut at {cut}"
            );
            assert_eq!(valid, whole);
        }
        // A last record of the right length but garbled (a sector not written) fails its CRC.
        let mut garbled = bytes.clone();
        let last = garbled.len() - 3;
        garbled[last] ^= 0xff;
        assert_eq!(decode_all(&garbled).1, whole);
        // Zeros after the end (a file extended but not written) read as a torn record.
        let mut zeros = bytes.clone();
        zeros.extend_from_slice(&[0; 64]);
        assert_eq!(decode_all(&zeros).0.len(), 3);
    }
}
