//! The server's one configuration struct, validated at start-up.

use std::{net::SocketAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("config field `{field}`: {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub grpc: GrpcConfig,
    pub http: HttpConfig,
    pub store: StoreConfig,
    pub auth: AuthConfig,
    pub incidents: IncidentsConfig,
    pub routing: RoutingConfig,
    pub notify: NotifyConfig,
    pub family: FamilyConfig,
    pub signals: SignalsConfig,
    pub sms: SmsConfig,
    pub map: MapConfig,
    pub reports: ReportsConfig,
    pub retention: RetentionConfig,
}

/// Health and safety signals (docs/dispatch.md): vital-sign limits, safe
/// zones, household meters, judged on the server as readings arrive.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SignalsConfig {
    /// Off: readings are stored as plain telemetry and no rule is judged.
    pub enabled: bool,
    /// Consecutive readings outside a limit that raise an alert…
    pub readings: u32,
    /// …or this long outside (with readings still coming).
    pub minutes: u32,
    /// Consecutive readings back inside that end an episode.
    pub clear_readings: u32,
    /// Consecutive fixes surely outside every safe zone that raise.
    pub zone_fixes: u32,
    /// How often the household meters' silence is judged.
    pub meter_check_secs: u64,
}

impl StoreConfig {
    /// The disk guard's thresholds: as set, else fitted to the filesystem.
    pub fn disk_thresholds(&self) -> anxin_host::disk::Thresholds {
        anxin_host::disk::Thresholds {
            reserve_bytes: self.reserve_bytes,
            min_free_bytes: self.min_free_bytes,
            default_reserve_bytes: 64 * 1024 * 1024,
            default_min_free_bytes: 256 * 1024 * 1024,
        }
    }
}

impl Default for SignalsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            readings: 3,
            minutes: 5,
            clear_readings: 3,
            zone_fixes: 3,
            meter_check_secs: 60,
        }
    }
}

/// The family call-out (docs/dispatch.md, "Family").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FamilyConfig {
    /// Family first: how long each contact has to answer "I'm going"
    /// before the next is called.
    pub answer_secs: u64,
    /// Family first: how many times the list is gone through.
    pub rounds: u32,
    /// Family first: the longest the staff chain waits for the family on a
    /// P0 (a fall, an SOS), whatever the list's length.
    pub p0_staff_limit_secs: u64,
    /// The same for every other priority.
    pub staff_limit_secs: u64,
    /// Where the family view is reached from a phone: the console's public
    /// address (`https://anxin.example.cn`); links in SMS start with it.
    /// Empty: `http://` + `http.listen`, which suits only a test bench.
    pub public_url: String,
    /// How long a link in an SMS may be used (once).
    pub link_ttl_secs: u64,
    /// How long a family member stays signed in from a link.
    pub session_secs: u64,
}

/// The map on an alert and in the family view (docs/dispatch.md, "Where
/// the resident is"). Leaflet is bundled with the console; the tiles come
/// from this server, which the browser is allowed to load images from.
/// Without tiles the map still shows the marker, the accuracy circle and
/// the track on a blank ground, with the coordinates and an "open in
/// maps" link.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MapConfig {
    /// A tile URL template with `{z}`, `{x}`, `{y}` (and optionally `{s}`):
    /// OpenStreetMap, Tianditu or AMap. Empty: no tiles.
    pub tile_url: String,
    /// The datum the tiles are drawn in: "wgs84" (OpenStreetMap, Tianditu)
    /// or "gcj02" (AMap, Tencent): devices report WGS-84, converted for
    /// GCJ-02 tiles so the marker lands on the right street.
    pub datum: String,
    /// Shown on the map, as the tiles' terms ask.
    pub attribution: String,
}

impl MapConfig {
    /// `scheme://host[:port]` of the tiles, for the console's policy.
    /// A `{s}` subdomain (a, b, c…) becomes `*.`.
    pub fn tile_origin(&self) -> Option<String> {
        let url = reqwest::Url::parse(&self.tile_url.replace(['{', '}'], "")).ok()?;
        let origin = url.origin();
        let text = origin.is_tuple().then(|| origin.ascii_serialization())?;
        Some(if self.tile_url.contains("://{s}.") {
            text.replacen("://s.", "://*.", 1)
        } else {
            text
        })
    }
}

/// SMS through Kannel's smsbox (docs/deploy.md, "SMS"): `sendsms` over
/// HTTP, delivery reports back to `dlr_url`. Empty `sendsms_url`: no SMS
/// channel (messages to an `sms:` address fail and are audited).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmsConfig {
    /// smsbox's sendsms address, e.g. `http://127.0.0.1:13013/cgi-bin/sendsms`.
    pub sendsms_url: String,
    /// A `sendsms-user` of smsbox.
    pub username: String,
    pub password: String,
    /// The sender shown on phones (a long number or the carrier's sender id).
    pub from: String,
    /// This server's address as Kannel reaches it, for delivery reports
    /// (`http://10.0.0.5:8080`); empty: no delivery reports asked for.
    pub dlr_base_url: String,
}

/// How long the server keeps each kind of record (docs/operations.md,
/// "Retention"). Each is a duration such as "30d", "12h" or "5years", or
/// "keep" for never pruned.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Events that belong to no alert (telemetry, heartbeats, battery and
    /// fault reports), from when they reached the server. Each is folded
    /// into its device's daily summary when it goes.
    pub events: Period,
    /// Daily per-device summaries of pruned events, and residents' vital
    /// signs by day (the trends), from their day.
    pub event_days: Period,
    /// Closed alerts with the events that belong to them, from when they
    /// closed. An open alert is never pruned.
    pub alerts: Period,
    /// Audit entries, from when they were written, oldest first; the chain
    /// is then checked from the last entry removed (its anchor).
    pub audit: Period,
    /// Seconds between pruning runs.
    pub interval_secs: u64,
    /// Records removed per batch (one transaction each); the pruner pauses
    /// between batches so the alarm path is never held up behind it.
    pub batch: usize,
    /// Milliseconds between batches. A sled batch holds the store's write
    /// lock while it applies: smaller batches, closer together, hold an
    /// alarm up less. Pruning keeps up to `batch` records per pause.
    pub pause_ms: u64,
}

/// A retention period: a duration, or `keep` (None).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period(pub Option<std::time::Duration>);

impl Period {
    pub const KEEP: Period = Period(None);

    pub fn days(days: u64) -> Self {
        Period(Some(std::time::Duration::from_secs(days * 86_400)))
    }

    pub fn ms(&self) -> Option<i64> {
        self.0.map(|d| d.as_millis() as i64)
    }
}

impl Serialize for Period {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            None => s.serialize_str("keep"),
            // humantime spells a year as 365.25 days: whole days read better.
            Some(d) if d.as_secs() % 86_400 == 0 && d.subsec_nanos() == 0 => {
                s.serialize_str(&format!("{}d", d.as_secs() / 86_400))
            }
            Some(d) => s.serialize_str(&humantime::format_duration(d).to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for Period {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text.trim() == "keep" {
            return Ok(Period::KEEP);
        }
        humantime::parse_duration(text.trim())
            .map(|d| Period(Some(d)))
            .map_err(|err| {
                serde::de::Error::custom(format!(
                    "`{text}` is not a period ({err}): write e.g. \"30d\", \"12h\", \"5years\" or \"keep\""
                ))
            })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The bootstrap administrator's API token (at least 16 characters).
    /// Empty: a random one is made at start-up and printed in the log.
    /// Other tokens are issued through the admin API.
    pub admin_token: String,
    /// Lifetime of a staff token issued through the API; 0: no expiry.
    pub token_ttl_secs: u64,
    /// Lifetime of a gateway's uplink token issued through the API
    /// (`POST /api/v1/gateways/{id}/tokens`); 0 (the default): no expiry.
    /// A gateway whose token expires stops delivering alarms, so where a
    /// lifetime is set, rotate well before it ends (docs/security.md).
    pub gateway_token_ttl_secs: u64,
    /// After a rotation, the old token still works this long.
    pub rotation_grace_secs: u64,
    /// Lifetime of a console session (made from a person's token at
    /// sign-in, so the long-lived token is not kept by the browser).
    pub console_session_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IncidentsConfig {
    /// A resident's alarm events this close to the incident's latest event
    /// join its open alert instead of raising a new one.
    pub window_secs: u64,
    /// A resident's cancel this soon after the alert was raised stands it
    /// down; later ones are noted on the alert.
    pub cancel_grace_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Time an offered person has to acknowledge a P0 alert before it moves
    /// on (the social-alarm industry's answer target is 60 s).
    pub p0_deadline_secs: u64,
    /// The same for P1 alerts (inactivity, warning vitals, device offline).
    pub p1_deadline_secs: u64,
    /// Offset of the local time that shifts are written in (China: 480).
    pub utc_offset_minutes: i32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// Shared secret that signs every webhook (HMAC-SHA256).
    pub secret: String,
    /// Webhook of the emergency services' hand-off, the chain's last step.
    pub emergency_webhook: String,
    /// The only hosts webhooks may call: exact names or addresses, or
    /// `*.domain` for a domain's hosts. Empty: no webhook is ever called.
    pub webhook_hosts: Vec<String>,
    /// Delivery attempts per notification, at least 1.
    pub attempts: u32,
    pub backoff_initial_ms: u64,
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportsConfig {
    /// "Acknowledged within target" in reports uses this target.
    pub ack_target_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// Gateways' Uplink streams and the Dispatch service.
    pub listen: SocketAddr,
    /// TLS on this port (then it takes no plaintext). Absent: plaintext,
    /// for loopback and the dev stack only (docs/security.md).
    pub tls: Option<GrpcTls>,
}

/// HTTPS on the REST/SSE/console port (`http.tls`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTls {
    /// The server's certificate chain and key (PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcTls {
    /// The server's certificate chain and key (PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA (PEM) that issues gateways' client certificates. Set: a gateway
    /// must present one whose subject CN is its gateway id (the token
    /// stays a second factor); dispatchers' gRPC clients need none.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// REST/SSE API, web console, /healthz, /metrics.
    pub listen: SocketAddr,
    /// HTTPS on this port (then no plain HTTP). Absent: plain HTTP, for
    /// loopback or behind a TLS-terminating reverse proxy (docs/security.md).
    pub tls: Option<HttpTls>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Which engine keeps the server's state: "sled" (embedded, one server
    /// process) or "postgres" (a database shared by several replicas).
    pub backend: Backend,
    /// Directory of the sled database; created if missing. With PostgreSQL
    /// it only holds the disk reserve.
    pub path: PathBuf,
    /// PostgreSQL connection URL (backend = "postgres"), e.g.
    /// `postgres://anxin@db.internal/anxin`.
    pub url: String,
    /// Connections each replica keeps to PostgreSQL.
    pub pool_size: usize,
    /// PostgreSQL: how long a write on the event path (an event's commit,
    /// a dispatcher's action) may take before this replica reports
    /// `database_stalled` and ends gateways' streams (they keep their
    /// events). A commit waiting for a synchronous standby that is gone
    /// never returns on its own. See docs/operations.md, "A database that
    /// stops committing".
    pub write_timeout_ms: u64,
    /// Free space on the store's filesystem under which new events are
    /// refused (gateways keep them and retry), long before the disk is
    /// full. See docs/operations.md, "Running out of disk". Unset: 1/8 of
    /// the filesystem, at most 256 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_free_bytes: Option<u64>,
    /// Disk reserve held as a file in the store directory and given back
    /// when the disk fills, so the store can still write its way out
    /// (dispatchers' actions, deletes). 0 disables it. Unset: 1/32 of the
    /// filesystem (at least 1 MiB), at most 64 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserve_bytes: Option<u64>,
    /// sled's page cache (sled's own default is 1 GiB). sled counts pages
    /// as stored, and holds them in memory at a few times that size: with
    /// the default 32 MiB and a million residents, the server rests near
    /// 250 MB. Larger helps lists only once the directory outgrows the
    /// operating system's own file cache.
    pub cache_bytes: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            grpc: GrpcConfig {
                listen: ([127, 0, 0, 1], 50051).into(),
                tls: None,
            },
            http: HttpConfig {
                listen: ([127, 0, 0, 1], 8080).into(),
                tls: None,
            },
            store: StoreConfig {
                backend: Backend::Sled,
                path: PathBuf::from("anxin-server-data"),
                url: String::new(),
                pool_size: 16,
                write_timeout_ms: crate::store::postgres::DEFAULT_WRITE_BOUND.as_millis() as u64,
                min_free_bytes: None,
                reserve_bytes: None,
                cache_bytes: crate::store::sled::DEFAULT_CACHE_BYTES,
            },
            auth: AuthConfig {
                admin_token: String::new(),
                token_ttl_secs: 90 * 24 * 3600,
                gateway_token_ttl_secs: 0,
                rotation_grace_secs: 24 * 3600,
                console_session_secs: 12 * 3600,
            },
            incidents: IncidentsConfig {
                window_secs: 1800,
                cancel_grace_secs: 120,
            },
            routing: RoutingConfig {
                p0_deadline_secs: 60,
                p1_deadline_secs: 300,
                utc_offset_minutes: 480,
            },
            notify: NotifyConfig {
                secret: String::new(),
                emergency_webhook: String::new(),
                webhook_hosts: Vec::new(),
                attempts: 5,
                backoff_initial_ms: 500,
                timeout_ms: 5000,
            },
            signals: SignalsConfig::default(),
            family: FamilyConfig {
                answer_secs: 180,
                rounds: 2,
                p0_staff_limit_secs: 180,
                staff_limit_secs: 900,
                public_url: String::new(),
                link_ttl_secs: 3600,
                session_secs: 12 * 3600,
            },
            map: MapConfig {
                tile_url: String::new(),
                datum: "wgs84".into(),
                attribution: String::new(),
            },
            sms: SmsConfig {
                sendsms_url: String::new(),
                username: String::new(),
                password: String::new(),
                from: String::new(),
                dlr_base_url: String::new(),
            },
            reports: ReportsConfig {
                ack_target_secs: 60,
            },
            retention: RetentionConfig {
                events: Period::days(30),
                event_days: Period::days(400),
                alerts: Period::days(5 * 365),
                audit: Period::days(5 * 365),
                interval_secs: 60,
                batch: 50,
                pause_ms: 10,
            },
        }
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        ServerConfig::default().grpc
    }
}
impl Default for HttpConfig {
    fn default() -> Self {
        ServerConfig::default().http
    }
}
use crate::store::Backend;

impl StoreConfig {
    /// What the store needs of this section to open.
    pub fn engine(&self) -> crate::store::EngineOptions<'_> {
        crate::store::EngineOptions {
            backend: self.backend,
            path: &self.path,
            cache_bytes: self.cache_bytes,
            url: &self.url,
            pool_size: self.pool_size,
            write_bound: std::time::Duration::from_millis(self.write_timeout_ms),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        ServerConfig::default().store
    }
}
impl Default for RetentionConfig {
    fn default() -> Self {
        ServerConfig::default().retention
    }
}
impl Default for AuthConfig {
    fn default() -> Self {
        ServerConfig::default().auth
    }
}
impl Default for IncidentsConfig {
    fn default() -> Self {
        ServerConfig::default().incidents
    }
}
impl Default for RoutingConfig {
    fn default() -> Self {
        ServerConfig::default().routing
    }
}
impl Default for NotifyConfig {
    fn default() -> Self {
        ServerConfig::default().notify
    }
}
impl Default for FamilyConfig {
    fn default() -> Self {
        ServerConfig::default().family
    }
}
impl Default for MapConfig {
    fn default() -> Self {
        ServerConfig::default().map
    }
}
impl Default for SmsConfig {
    fn default() -> Self {
        ServerConfig::default().sms
    }
}
impl Default for ReportsConfig {
    fn default() -> Self {
        ServerConfig::default().reports
    }
}

impl ServerConfig {
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: display.clone(),
            source,
        })?;
        Self::parse(&text, &display)
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: origin.to_string(),
            source: Box::new(source),
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.grpc.listen == self.http.listen {
            return Err(ConfigError::Invalid {
                field: "http.listen",
                problem: "must differ from grpc.listen".into(),
            });
        }
        for (field, period) in [
            ("retention.events", self.retention.events),
            ("retention.event_days", self.retention.event_days),
            ("retention.alerts", self.retention.alerts),
            ("retention.audit", self.retention.audit),
        ] {
            if period.0.is_some_and(|d| d.as_secs() < 60) {
                return Err(ConfigError::Invalid {
                    field,
                    problem: "must be at least a minute, or \"keep\"".into(),
                });
            }
        }
        if self.retention.interval_secs == 0 {
            return Err(ConfigError::Invalid {
                field: "retention.interval_secs",
                problem: "must be at least 1".into(),
            });
        }
        if !(1..=10_000).contains(&self.retention.batch) {
            return Err(ConfigError::Invalid {
                field: "retention.batch",
                problem: "must be between 1 and 10000".into(),
            });
        }
        if !(1..=60_000).contains(&self.retention.pause_ms) {
            return Err(ConfigError::Invalid {
                field: "retention.pause_ms",
                problem: "must be between 1 and 60000".into(),
            });
        }
        if let (Some(min_free), Some(reserve)) =
            (self.store.min_free_bytes, self.store.reserve_bytes)
            && min_free < reserve
        {
            return Err(ConfigError::Invalid {
                field: "store.min_free_bytes",
                problem: "must be at least store.reserve_bytes".into(),
            });
        }
        if self.store.backend == Backend::Postgres {
            if self.store.url.is_empty() {
                return Err(ConfigError::Invalid {
                    field: "store.url",
                    problem: "is needed with store.backend = \"postgres\" (e.g. postgres://anxin@db/anxin)".into(),
                });
            }
            // Parsed as the engine will (sslmode, sslrootcert read too).
            if let Err(err) = crate::store::postgres::tls::target(&self.store.url) {
                return Err(ConfigError::Invalid {
                    field: "store.url",
                    problem: format!("is not a usable PostgreSQL connection URL: {err}"),
                });
            }
            if self.store.pool_size == 0 {
                return Err(ConfigError::Invalid {
                    field: "store.pool_size",
                    problem: "must be at least 1".into(),
                });
            }
            if !(100..=600_000).contains(&self.store.write_timeout_ms) {
                return Err(ConfigError::Invalid {
                    field: "store.write_timeout_ms",
                    problem: format!(
                        "is {}; it must be between 100 (0.1 s) and 600000 (10 min). A few seconds \
                         (the default is 5000) tells a stalled database from a busy one",
                        self.store.write_timeout_ms
                    ),
                });
            }
        }
        if self.store.path.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                field: "store.path",
                problem: "must not be empty".into(),
            });
        }
        let invalid = |field: &'static str, problem: &str| {
            Err(ConfigError::Invalid {
                field,
                problem: problem.to_string(),
            })
        };
        let token = &self.auth.admin_token;
        if !token.is_empty() && token.chars().count() < 16 {
            return invalid(
                "auth.admin_token",
                "must be at least 16 characters (or empty for a random one)",
            );
        }
        if self.auth.console_session_secs == 0 {
            return invalid("auth.console_session_secs", "must be at least 1");
        }
        if self.routing.p0_deadline_secs == 0 {
            return invalid("routing.p0_deadline_secs", "must be at least 1");
        }
        if self.routing.p1_deadline_secs == 0 {
            return invalid("routing.p1_deadline_secs", "must be at least 1");
        }
        if self.routing.utc_offset_minutes.abs() > 14 * 60 {
            return invalid("routing.utc_offset_minutes", "must be within ±840");
        }
        if self.incidents.window_secs == 0 {
            return invalid("incidents.window_secs", "must be at least 1");
        }
        for (field, value) in [
            ("signals.readings", u64::from(self.signals.readings)),
            ("signals.minutes", u64::from(self.signals.minutes)),
            (
                "signals.clear_readings",
                u64::from(self.signals.clear_readings),
            ),
            ("signals.zone_fixes", u64::from(self.signals.zone_fixes)),
            ("signals.meter_check_secs", self.signals.meter_check_secs),
        ] {
            if value == 0 {
                return invalid(field, "must be at least 1");
            }
        }
        if self.family.answer_secs == 0 {
            return invalid("family.answer_secs", "must be at least 1");
        }
        if self.family.rounds == 0 {
            return invalid("family.rounds", "must be at least 1");
        }
        if self.family.link_ttl_secs == 0 {
            return invalid("family.link_ttl_secs", "must be at least 1");
        }
        for (field, url) in [
            ("family.public_url", &self.family.public_url),
            ("sms.sendsms_url", &self.sms.sendsms_url),
            ("sms.dlr_base_url", &self.sms.dlr_base_url),
        ] {
            if !url.is_empty()
                && !reqwest::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
            {
                return invalid(field, "must be an http(s) URL");
            }
        }
        if !self.map.tile_url.is_empty()
            && (!["{z}", "{x}", "{y}"]
                .iter()
                .all(|p| self.map.tile_url.contains(p))
                || self.map.tile_origin().is_none())
        {
            return invalid(
                "map.tile_url",
                "must be an http(s) URL template with {z}, {x} and {y}",
            );
        }
        if !["wgs84", "gcj02"].contains(&self.map.datum.as_str()) {
            return invalid("map.datum", "must be wgs84 or gcj02");
        }
        if !self.sms.sendsms_url.is_empty() && self.sms.from.is_empty() {
            return invalid(
                "sms.from",
                "the sender number or id is needed with sms.sendsms_url (smsbox refuses an SMS without one)",
            );
        }
        if !self.sms.sendsms_url.is_empty() && self.sms.username.is_empty() {
            return invalid(
                "sms.username",
                "a sendsms-user of smsbox is needed with sms.sendsms_url",
            );
        }
        if self.notify.attempts == 0 {
            return invalid("notify.attempts", "must be at least 1");
        }
        if !self.notify.emergency_webhook.is_empty()
            && !self.notify.emergency_webhook.starts_with("http://")
            && !self.notify.emergency_webhook.starts_with("https://")
        {
            return invalid("notify.emergency_webhook", "must be an http(s) URL");
        }
        if !self.notify.emergency_webhook.is_empty()
            && let Err(why) =
                crate::domain::notification::WebhookHosts::new(&self.notify.webhook_hosts)
                    .check(&self.notify.emergency_webhook)
        {
            return Err(ConfigError::Invalid {
                field: "notify.emergency_webhook",
                problem: format!("{why}; add its host there"),
            });
        }
        if self.reports.ack_target_secs == 0 {
            return invalid("reports.ack_target_secs", "must be at least 1");
        }
        Ok(())
    }

    pub fn default_toml() -> String {
        toml::to_string_pretty(&Self::default()).expect("default config serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_config_is_valid() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/config/server.example.toml"
        );
        ServerConfig::load(std::path::Path::new(path)).unwrap();
    }

    #[test]
    fn the_container_compose_and_kubernetes_configs_are_valid() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/");
        for file in ["container/server.toml", "compose/server.toml"] {
            ServerConfig::load(&std::path::Path::new(root).join(file))
                .unwrap_or_else(|e| panic!("{file}: {e}"));
        }
        let manifest = std::fs::read_to_string(format!("{root}kubernetes/server.yaml")).unwrap();
        // The Deployment's Secret: the block under `server.toml: |`.
        let mut lines = manifest
            .lines()
            .skip_while(|l| l.trim() != "server.toml: |");
        lines.next().expect("the Secret holds server.toml");
        let text: String = lines
            .take_while(|l| l.starts_with("    ") || l.trim().is_empty())
            .map(|l| format!("{}\n", l.trim_start()))
            .collect();
        let config = ServerConfig::parse(&text, "kubernetes/server.yaml").unwrap();
        assert_eq!(config.store.backend, Backend::Postgres);
    }

    #[test]
    fn the_shipped_replica_config_is_valid() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/config/server.replica.example.toml"
        );
        let config = ServerConfig::load(std::path::Path::new(path)).unwrap();
        assert_eq!(config.store.backend, Backend::Postgres);
        let url: tokio_postgres::Config = config.store.url.parse().unwrap();
        assert_eq!(url.get_hosts().len(), 2, "primary and standby");
    }

    #[test]
    fn default_round_trips_and_errors_name_the_field() {
        ServerConfig::parse(&ServerConfig::default_toml(), "default").unwrap();
        let err = ServerConfig::parse(
            "[grpc]\nlisten = \"127.0.0.1:1\"\n[http]\nlisten = \"127.0.0.1:1\"\n",
            "t",
        )
        .unwrap_err();
        assert!(err.to_string().contains("http.listen"), "{err}");
        let err = ServerConfig::parse("[store]\npth = \"x\"\n", "t").unwrap_err();
        assert!(err.to_string().contains("pth"), "{err}");
        let err = ServerConfig::parse("[store]\nbackend = \"postgres\"\n", "t").unwrap_err();
        assert!(err.to_string().contains("store.url"), "{err}");
        let err = ServerConfig::parse(
            "[store]\nbackend = \"postgres\"\nurl = \"postgres://a@b/c\"\nwrite_timeout_ms = 0\n",
            "t",
        )
        .unwrap_err();
        assert!(err.to_string().contains("store.write_timeout_ms"), "{err}");
        let err = ServerConfig::parse("[store]\nbackend = \"mysql\"\n", "t").unwrap_err();
        assert!(err.to_string().contains("backend"), "{err}");
        let err = ServerConfig::parse("[auth]\nadmin_token = \"short\"\n", "t").unwrap_err();
        assert!(err.to_string().contains("auth.admin_token"), "{err}");
        let err = ServerConfig::parse("[routing]\np0_deadline_secs = 0\n", "t").unwrap_err();
        assert!(
            err.to_string().contains("routing.p0_deadline_secs"),
            "{err}"
        );
        for (text, field) in [
            (
                "[sms]\nsendsms_url = \"http://127.0.0.1:13013/cgi-bin/sendsms\"\nusername = \"a\"\n",
                "sms.from",
            ),
            ("[sms]\nsendsms_url = \"smpp://x\"\n", "sms.sendsms_url"),
            (
                "[map]\ntile_url = \"https://tiles.example/{z}/{x}.png\"\n",
                "map.tile_url",
            ),
            ("[map]\ndatum = \"bd09\"\n", "map.datum"),
            ("[family]\nrounds = 0\n", "family.rounds"),
            ("[signals]\nzone_fixes = 0\n", "signals.zone_fixes"),
        ] {
            let err = ServerConfig::parse(text, "t").unwrap_err();
            assert!(err.to_string().contains(field), "{text}: {err}");
        }
        let tiles = MapConfig {
            tile_url: "https://{s}.tile.example.cn:8443/{z}/{x}/{y}.png".into(),
            ..Default::default()
        };
        assert_eq!(
            tiles.tile_origin().as_deref(),
            Some("https://*.tile.example.cn:8443")
        );
    }
}
