//! One stored event and its encoding: a record of a run (see [`super::run`]), which holds
//! consecutive events under its first sequence.
//!
//! An event's record is
//! `crc32 | timestamp u64 | revision u64 | subject len u16 | subject | header len u32 | headers | payload`
//! (integers big-endian). The checksum covers the event's sequence too, so a record read
//! for the wrong sequence is caught as well as one whose bytes changed: fjall's checksums do
//! not cover everything, and a corrupt event must never be served.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::StoreError;

/// An event of the timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Global sequence: gapless from 1 across the whole log.
    pub seq: u64,
    /// When the broker appended it, in nanoseconds since the Unix epoch; never decreases
    /// along the log.
    pub timestamp: u64,
    /// Position among the events of the same subject: 1, 2, 3, ...
    pub revision: u64,
    pub subject: Bytes,
    /// The NATS header block exactly as published, if any.
    pub headers: Option<Bytes>,
    pub payload: Bytes,
}

const FIXED: usize = 4 + 8 + 8 + 2 + 4;
/// Header length written for "no header block" (a real block is never this long).
const NO_HEADERS: u32 = u32::MAX;

impl Event {
    /// Bytes [`Event::encode`] appends.
    pub fn encoded_len(&self) -> usize {
        FIXED + self.subject.len() + self.headers.as_ref().map_or(0, Bytes::len) + self.payload.len()
    }

    /// Appends the stored form of this event (its key is `seq`, big-endian).
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.reserve(self.encoded_len());
        let start = dst.len();
        dst.put_u32(0);
        dst.put_u64(self.timestamp);
        dst.put_u64(self.revision);
        dst.put_u16(u16::try_from(self.subject.len()).unwrap_or(u16::MAX));
        dst.put_slice(&self.subject);
        match &self.headers {
            Some(headers) => {
                dst.put_u32(u32::try_from(headers.len()).unwrap_or(NO_HEADERS - 1));
                dst.put_slice(headers);
            }
            None => dst.put_u32(NO_HEADERS),
        }
        dst.put_slice(&self.payload);
        let crc = checksum(self.seq, &dst[start + 4..]);
        dst[start..start + 4].copy_from_slice(&crc.to_be_bytes());
    }

    /// Decodes a stored value; subject, headers and payload are slices of `value`.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] if the checksum or the framing does not hold.
    pub fn decode(seq: u64, value: Bytes) -> Result<Event, StoreError> {
        let corrupt = || StoreError::Corrupt { seq };
        if value.len() < FIXED {
            return Err(corrupt());
        }
        let mut reader = &value[..];
        let stored_crc = reader.get_u32();
        if stored_crc != checksum(seq, reader) {
            return Err(corrupt());
        }
        let timestamp = reader.get_u64();
        let revision = reader.get_u64();
        let subject_len = usize::from(reader.get_u16());
        let subject_start = 22;
        let header_len_at = subject_start + subject_len;
        if value.len() < header_len_at + 4 {
            return Err(corrupt());
        }
        let header_len = u32::from_be_bytes(value[header_len_at..header_len_at + 4].try_into().map_err(|_| corrupt())?);
        let body_start = header_len_at + 4;
        let (headers, payload_start) = if header_len == NO_HEADERS {
            (None, body_start)
        } else {
            let end = body_start + usize::try_from(header_len).map_err(|_| corrupt())?;
            if end > value.len() {
                return Err(corrupt());
            }
            (Some(value.slice(body_start..end)), end)
        };
        Ok(Event {
            seq,
            timestamp,
            revision,
            subject: value.slice(subject_start..header_len_at),
            headers,
            payload: value.slice(payload_start..),
        })
    }
}

fn checksum(seq: u64, rest: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&seq.to_be_bytes());
    hasher.update(rest);
    hasher.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(headers: Option<&'static [u8]>) -> Event {
        Event {
            seq: 42,
            timestamp: 1_700_000_000_123_456_789,
            revision: 3,
            subject: Bytes::from_static(b"orders.42.created"),
            headers: headers.map(Bytes::from_static),
            payload: Bytes::from_static(b"hello"),
        }
    }

    #[test]
    fn round_trips_with_and_without_headers() {
        for event in [sample(None), sample(Some(b"NATS/1.0\r\nA: b\r\n\r\n")), sample(Some(b""))] {
            let mut buf = BytesMut::new();
            event.encode(&mut buf);
            assert_eq!(buf.len(), event.encoded_len());
            assert_eq!(Event::decode(42, buf.freeze()).expect("decodes"), event);
        }
    }

    #[test]
    fn any_flipped_bit_or_wrong_key_is_caught() {
        let mut buf = BytesMut::new();
        sample(Some(b"NATS/1.0\r\n\r\n")).encode(&mut buf);
        let good = buf.freeze();
        assert!(matches!(Event::decode(43, good.clone()), Err(StoreError::Corrupt { seq: 43 })));
        for byte in 0..good.len() {
            let mut bad = good.to_vec();
            bad[byte] ^= 0x10;
            assert!(Event::decode(42, Bytes::from(bad)).is_err(), "flip at byte {byte} not caught");
        }
        for len in 0..good.len() {
            assert!(Event::decode(42, good.slice(..len)).is_err(), "truncation to {len} not caught");
        }
    }
}
