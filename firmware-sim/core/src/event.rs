//! The event a device raises. Mirrors `anxin.v1.DeviceEvent` without
//! allocation: the id is a bounded string, the detail an enum.

/// Device ids are at most 64 bytes (the gateway enforces the same limit).
pub type DeviceId = heapless::String<64>;

/// Event kinds, numbered as in `proto/anxin/v1/device.proto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Kind {
    Sos = 1,
    Fall = 2,
    Smoke = 3,
    Gas = 4,
    VitalsCritical = 5,
    Inactivity = 10,
    VitalsWarning = 11,
    Tamper = 13,
    Cancel = 14,
    LowBattery = 20,
    DeviceFault = 21,
    /// The resident's daily "I'm OK".
    CheckinOk = 22,
    Telemetry = 30,
    Heartbeat = 31,
    TestCall = 32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    P0 = 0,
    P1 = 1,
    P2 = 2,
    P3 = 3,
}

impl Kind {
    /// The platform's fixed priority of a kind (design.md, guarantee 4).
    pub fn priority(self) -> Priority {
        match self {
            Kind::Sos | Kind::Fall | Kind::Smoke | Kind::Gas | Kind::VitalsCritical => Priority::P0,
            Kind::Inactivity | Kind::VitalsWarning | Kind::Tamper | Kind::Cancel => Priority::P1,
            Kind::LowBattery | Kind::DeviceFault | Kind::CheckinOk => Priority::P2,
            Kind::Telemetry | Kind::Heartbeat | Kind::TestCall => Priority::P3,
        }
    }
}

/// Kind-specific data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Detail {
    #[default]
    None,
    Vitals {
        heart_rate_bpm: u32,
        spo2_pct: u32,
        body_temp_dc: u32,
    },
    Location {
        lat_e7: i32,
        lon_e7: i32,
        accuracy_m: u32,
    },
    Fall {
        confidence_pct: u32,
        peak_accel_mg: u32,
    },
    /// A household meter's running total (litres, Wh, openings).
    Meter { kind: MeterKind, total: u64 },
}

/// What a household meter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeterKind {
    Water,
    Electricity,
    Door,
}

impl MeterKind {
    /// The name on the wire (`Meter.kind`).
    pub fn name(self) -> &'static str {
        match self {
            MeterKind::Water => "water",
            MeterKind::Electricity => "electricity",
            MeterKind::Door => "door",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub device_id: DeviceId,
    pub seq: u64,
    pub kind: Kind,
    pub device_time_ms: i64,
    pub battery_pct: u32,
    pub detail: Detail,
    /// With [`Kind::Cancel`]: the seq being cancelled.
    pub cancels_seq: u64,
}

impl Event {
    pub fn priority(&self) -> Priority {
        self.kind.priority()
    }
}
