//! Protobuf on the wire, without an allocator: `DeviceEvent` is encoded
//! straight into a caller's buffer, `DeviceAck` decoded from a slice. Field
//! numbers follow `proto/anxin/v1/device.proto`; the tests compare every byte
//! with prost's encoding.

use crate::event::{Detail, Event};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// The buffer is too small for the event.
    BufferTooSmall,
    /// The ack does not decode.
    Malformed,
}

/// Largest encoded event: id (64) plus every field at its widest, rounded up.
pub const MAX_EVENT_BYTES: usize = 160;

struct Writer<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl Writer<'_> {
    fn byte(&mut self, b: u8) -> Result<(), WireError> {
        let slot = self
            .buf
            .get_mut(self.len)
            .ok_or(WireError::BufferTooSmall)?;
        *slot = b;
        self.len += 1;
        Ok(())
    }

    fn varint(&mut self, mut v: u64) -> Result<(), WireError> {
        while v >= 0x80 {
            self.byte((v as u8) | 0x80)?;
            v >>= 7;
        }
        self.byte(v as u8)
    }

    fn key(&mut self, field: u32, wire_type: u8) -> Result<(), WireError> {
        self.varint(u64::from(field << 3 | u32::from(wire_type)))
    }

    /// proto3: default values are not written.
    fn uint(&mut self, field: u32, v: u64) -> Result<(), WireError> {
        if v == 0 {
            return Ok(());
        }
        self.key(field, 0)?;
        self.varint(v)
    }

    fn int64(&mut self, field: u32, v: i64) -> Result<(), WireError> {
        self.uint(field, v as u64)
    }

    fn int32(&mut self, field: u32, v: i32) -> Result<(), WireError> {
        // Negative int32 are sign-extended to 64 bits on the wire.
        self.uint(field, i64::from(v) as u64)
    }

    fn sint32(&mut self, field: u32, v: i32) -> Result<(), WireError> {
        self.uint(field, u64::from(((v << 1) ^ (v >> 31)) as u32))
    }

    fn bytes(&mut self, field: u32, v: &[u8]) -> Result<(), WireError> {
        if v.is_empty() {
            return Ok(());
        }
        self.key(field, 2)?;
        self.varint(v.len() as u64)?;
        for b in v {
            self.byte(*b)?;
        }
        Ok(())
    }

    /// A nested message, always written when present (even if empty).
    fn message(
        &mut self,
        field: u32,
        body: impl Fn(&mut Writer<'_>) -> Result<(), WireError>,
    ) -> Result<(), WireError> {
        let mut scratch = [0u8; 48];
        let mut inner = Writer {
            buf: &mut scratch,
            len: 0,
        };
        body(&mut inner)?;
        let len = inner.len;
        self.key(field, 2)?;
        self.varint(len as u64)?;
        for b in &scratch[..len] {
            self.byte(*b)?;
        }
        Ok(())
    }
}

/// Encodes `event` as `anxin.v1.DeviceEvent` into `buf`; returns the length.
pub fn encode_event(event: &Event, buf: &mut [u8]) -> Result<usize, WireError> {
    let mut w = Writer { buf, len: 0 };
    w.bytes(1, event.device_id.as_bytes())?;
    w.uint(2, event.seq)?;
    w.int32(3, event.kind as i32)?;
    w.int64(4, event.device_time_ms)?;
    w.uint(5, u64::from(event.battery_pct))?;
    match event.detail {
        Detail::None => {}
        Detail::Vitals {
            heart_rate_bpm,
            spo2_pct,
            body_temp_dc,
        } => w.message(10, |m| {
            m.uint(1, u64::from(heart_rate_bpm))?;
            m.uint(2, u64::from(spo2_pct))?;
            m.uint(3, u64::from(body_temp_dc))
        })?,
        Detail::Location {
            lat_e7,
            lon_e7,
            accuracy_m,
        } => w.message(11, |m| {
            m.sint32(1, lat_e7)?;
            m.sint32(2, lon_e7)?;
            m.uint(3, u64::from(accuracy_m))
        })?,
        Detail::Fall {
            confidence_pct,
            peak_accel_mg,
        } => w.message(12, |m| {
            m.uint(1, u64::from(confidence_pct))?;
            m.uint(2, u64::from(peak_accel_mg))
        })?,
        // The detail is one `oneof`, written where prost writes it
        // (before `cancels_seq`) whatever its field number.
        Detail::Meter { kind, total } => w.message(15, |m| {
            m.bytes(1, kind.name().as_bytes())?;
            m.uint(2, total)
        })?,
    }
    w.uint(13, event.cancels_seq)?;
    Ok(w.len)
}

/// The parts of `anxin.v1.DeviceAck` a device acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub seq: u64,
    pub kind: AckKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckKind {
    Stored,
    Received,
    Acknowledged,
    Rejected,
    Unknown,
}

fn read_varint(bytes: &[u8], at: &mut usize) -> Result<u64, WireError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*at).ok_or(WireError::Malformed)?;
        *at += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(WireError::Malformed)
}

/// Decodes a `DeviceAck`, skipping the fields a device does not need.
pub fn decode_ack(bytes: &[u8]) -> Result<Ack, WireError> {
    let (mut seq, mut kind) = (0, 0);
    let mut at = 0;
    while at < bytes.len() {
        let key = read_varint(bytes, &mut at)?;
        let (field, wire_type) = (key >> 3, key & 7);
        match wire_type {
            0 => {
                let v = read_varint(bytes, &mut at)?;
                match field {
                    2 => seq = v,
                    3 => kind = v,
                    _ => {}
                }
            }
            2 => {
                let len = read_varint(bytes, &mut at)? as usize;
                at = at
                    .checked_add(len)
                    .filter(|end| *end <= bytes.len())
                    .ok_or(WireError::Malformed)?;
            }
            1 => at += 8,
            5 => at += 4,
            _ => return Err(WireError::Malformed),
        }
    }
    if at > bytes.len() {
        return Err(WireError::Malformed);
    }
    let kind = match kind {
        1 => AckKind::Stored,
        2 => AckKind::Received,
        3 => AckKind::Acknowledged,
        4 => AckKind::Rejected,
        _ => AckKind::Unknown,
    };
    Ok(Ack { seq, kind })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Kind;
    use prost::Message;
    use std::vec::Vec;

    fn sample(detail: Detail) -> Event {
        Event {
            device_id: "wear-0012".try_into().unwrap(),
            seq: 1_795_416_479_635,
            kind: Kind::Fall,
            device_time_ms: 1_795_416_479_000,
            battery_pct: 64,
            detail,
            cancels_seq: 0,
        }
    }

    fn prost_bytes(event: &Event) -> Vec<u8> {
        use anxin_proto::v1::{Fall, Location, Vitals, device_event::Detail as P};
        let detail = match event.detail {
            Detail::None => None,
            Detail::Vitals {
                heart_rate_bpm,
                spo2_pct,
                body_temp_dc,
            } => Some(P::Vitals(Vitals {
                heart_rate_bpm,
                spo2_pct,
                body_temp_dc,
                ..Default::default()
            })),
            Detail::Location {
                lat_e7,
                lon_e7,
                accuracy_m,
            } => Some(P::Location(Location {
                lat_e7,
                lon_e7,
                accuracy_m,
                room: Default::default(),
            })),
            Detail::Fall {
                confidence_pct,
                peak_accel_mg,
            } => Some(P::Fall(Fall {
                confidence_pct,
                peak_accel_mg,
            })),
            Detail::Meter { kind, total } => Some(P::Meter(anxin_proto::v1::Meter {
                kind: kind.name().into(),
                total,
            })),
        };
        anxin_proto::DeviceEvent {
            device_id: event.device_id.as_str().into(),
            seq: event.seq,
            kind: event.kind as i32,
            device_time_ms: event.device_time_ms,
            battery_pct: event.battery_pct,
            detail,
            cancels_seq: event.cancels_seq,
            note: Default::default(),
        }
        .encode_to_vec()
    }

    #[test]
    fn encodes_byte_for_byte_like_prost() {
        let cases = [
            sample(Detail::None),
            sample(Detail::Fall {
                confidence_pct: 93,
                peak_accel_mg: 3400,
            }),
            sample(Detail::Vitals {
                heart_rate_bpm: 38,
                spo2_pct: 86,
                body_temp_dc: 365,
            }),
            sample(Detail::Location {
                lat_e7: 312_304_160,
                lon_e7: -1_214_737_010,
                accuracy_m: 12,
            }),
            sample(Detail::Vitals {
                heart_rate_bpm: 0,
                spo2_pct: 0,
                body_temp_dc: 0,
            }),
            Event {
                kind: Kind::Telemetry,
                cancels_seq: 9,
                ..sample(Detail::Meter {
                    kind: crate::event::MeterKind::Water,
                    total: 1_234_567,
                })
            },
            Event {
                kind: Kind::Cancel,
                cancels_seq: 41,
                battery_pct: 0,
                device_time_ms: -5,
                ..sample(Detail::None)
            },
        ];
        for event in cases {
            let mut buf = [0u8; MAX_EVENT_BYTES];
            let len = encode_event(&event, &mut buf).unwrap();
            assert_eq!(&buf[..len], prost_bytes(&event).as_slice(), "{event:?}");
        }
    }

    #[test]
    fn the_widest_event_fits_the_documented_buffer() {
        let mut event = sample(Detail::Location {
            lat_e7: i32::MIN,
            lon_e7: i32::MAX,
            accuracy_m: u32::MAX,
        });
        event.device_id = core::iter::repeat_n('x', 64).collect();
        event.seq = u64::MAX;
        event.device_time_ms = i64::MIN;
        event.battery_pct = u32::MAX;
        event.cancels_seq = u64::MAX;
        let mut buf = [0u8; MAX_EVENT_BYTES];
        let len = encode_event(&event, &mut buf).unwrap();
        assert_eq!(&buf[..len], prost_bytes(&event).as_slice());
        assert_eq!(
            encode_event(&event, &mut [0u8; 20]),
            Err(WireError::BufferTooSmall)
        );
    }

    #[test]
    fn decodes_acks_that_prost_encoded() {
        let ack = anxin_proto::DeviceAck {
            device_id: "btn-1".into(),
            seq: 300,
            kind: anxin_proto::AckKind::Acknowledged as i32,
            alert_id: "17".into(),
            message: "help is coming".into(),
            sent_ms: 1_795_416_479_643,
        };
        let decoded = decode_ack(&ack.encode_to_vec()).unwrap();
        assert_eq!(
            decoded,
            Ack {
                seq: 300,
                kind: AckKind::Acknowledged
            }
        );
        assert_eq!(decode_ack(&[0x10]), Err(WireError::Malformed));
        assert_eq!(decode_ack(&[0x22, 0x09, b'a']), Err(WireError::Malformed));
    }
}
