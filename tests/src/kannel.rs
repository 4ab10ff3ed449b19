//! A real Kannel (Debian's `kannel`: bearerbox and smsbox) on free
//! loopback ports, with a local HTTP SMSC standing in for the carrier:
//! Kannel's generic HTTP SMSC sends each message part to it, and the test
//! reads what it received, parts joined again by their concatenation
//! header, text decoded from the coding Kannel used.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{Router, extract::State, http::StatusCode, routing::get};

/// One message as the carrier received it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sms {
    pub to: String,
    pub text: String,
    /// When the carrier had the whole message.
    pub at: std::time::Instant,
}

#[derive(Default)]
struct Carrier {
    /// Parts of long messages, by (to, reference): (total, parts by number).
    parts: std::collections::HashMap<(String, u8), (u8, std::collections::BTreeMap<u8, String>)>,
    received: Vec<Sms>,
    /// While set, the carrier answers 503 (Kannel keeps the message).
    refusing: bool,
}

pub struct Kannel {
    /// smsbox's sendsms address (`sms.sendsms_url`).
    pub sendsms_url: String,
    pub username: String,
    pub password: String,
    carrier: Arc<Mutex<Carrier>>,
    boxes: Vec<Child>,
    dir: tempfile::TempDir,
    stopped: Arc<AtomicBool>,
    /// bearerbox's box port and smsbox's sendsms port.
    ports: (u16, u16),
}

/// The bearerbox and smsbox binaries, if installed.
pub fn installed() -> Option<(PathBuf, PathBuf)> {
    let bearer = PathBuf::from("/usr/sbin/bearerbox");
    let smsbox = PathBuf::from("/usr/sbin/smsbox");
    (bearer.exists() && smsbox.exists()).then_some((bearer, smsbox))
}

/// The message body as the carrier got it: UCS-2 (UTF-16BE) when Kannel
/// says so (coding 3 in its escape codes, charset UTF-16BE), else text.
fn decode(bytes: &[u8], coding: &str, charset: &str) -> String {
    let charset = charset.to_ascii_uppercase().replace('-', "");
    if coding == "3" || charset == "UTF16BE" || charset == "UCS2" {
        let units: Vec<u16> = bytes
            .chunks(2)
            .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))
            .collect();
        String::from_utf16_lossy(&units)
    } else {
        String::from_utf8_lossy(bytes).into_owned()
    }
}

async fn receive(
    State(carrier): State<Arc<Mutex<Carrier>>>,
    request: axum::extract::Request,
) -> (StatusCode, &'static str) {
    // The text arrives percent-encoded bytes that are not UTF-8 (UCS-2):
    // decode the query by hand rather than as UTF-8 strings.
    let query = request.uri().query().unwrap_or("").to_string();
    let mut fields = std::collections::HashMap::new();
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v: Vec<u8> = percent_decode(v);
        fields.insert(k.to_string(), v);
    }
    let text_of = |k: &str| {
        String::from_utf8_lossy(fields.get(k).map(Vec::as_slice).unwrap_or(&[])).into_owned()
    };
    let mut carrier = carrier.lock().unwrap();
    if carrier.refusing {
        return (StatusCode::SERVICE_UNAVAILABLE, "busy");
    }
    let to = text_of("to");
    let coding = text_of("coding");
    let charset = text_of("charset");
    let body = fields.get("text").cloned().unwrap_or_default();
    let text = decode(&body, &coding, &charset);
    // %u: the user data header, as raw bytes.
    let udh = fields.get("udh").cloned().unwrap_or_default();
    // Concatenation IE: 00 03 ref total seq.
    match udh.windows(5).find(|w| w[0] == 0 && w[1] == 3) {
        Some(ie) => {
            let (reference, total, seq) = (ie[2], ie[3], ie[4]);
            let entry = carrier
                .parts
                .entry((to.clone(), reference))
                .or_insert_with(|| (total, Default::default()));
            entry.1.insert(seq, text);
            if entry.1.len() == total as usize {
                let joined: String = entry.1.values().cloned().collect();
                carrier.parts.remove(&(to.clone(), reference));
                carrier.received.push(Sms {
                    to,
                    text: joined,
                    at: std::time::Instant::now(),
                });
            }
        }
        None => carrier.received.push(Sms {
            to,
            text,
            at: std::time::Instant::now(),
        }),
    }
    (StatusCode::OK, "OK")
}

fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or(())
                {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

impl Kannel {
    /// Starts the carrier stand-in, bearerbox and smsbox; ready once
    /// smsbox answers on its sendsms port.
    pub async fn start() -> Kannel {
        let carrier: Arc<Mutex<Carrier>> = Default::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let carrier_port = listener.local_addr().unwrap().port();
        let app = Router::new()
            .route("/send", get(receive))
            .with_state(carrier.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let dir = tempfile::tempdir().unwrap();
        let (admin, boxes_port, sendsms, mo) = (
            crate::free_port(),
            crate::free_port(),
            crate::free_port(),
            crate::free_port(),
        );
        let log = |name: &str| dir.path().join(name).display().to_string();
        let config = format!(
            r#"group = core
admin-port = {admin}
admin-password = admin-{admin}
smsbox-port = {boxes_port}
box-allow-ip = 127.0.0.1
log-file = "{bearer_log}"
log-level = 1
dlr-storage = internal

group = smsbox
bearerbox-host = 127.0.0.1
bearerbox-port = {boxes_port}
sendsms-port = {sendsms}
log-file = "{smsbox_log}"
log-level = 1

group = sendsms-user
username = anxin
password = sms-secret
concatenation = true
max-messages = 5

group = smsc
smsc = http
smsc-id = carrier
system-type = generic
port = {mo}
send-url = "http://127.0.0.1:{carrier_port}/send?to=%p&from=%P&text=%b&coding=%c&charset=%C&udh=%u"
status-success-regex = "OK"
status-permfail-regex = "REFUSED"
"#,
            bearer_log = log("bearerbox.log"),
            smsbox_log = log("smsbox.log"),
        );
        let conf = dir.path().join("kannel.conf");
        std::fs::write(&conf, config).unwrap();
        let mut kannel = Kannel {
            sendsms_url: format!("http://127.0.0.1:{sendsms}/cgi-bin/sendsms"),
            username: "anxin".into(),
            password: "sms-secret".into(),
            carrier,
            boxes: Vec::new(),
            dir,
            stopped: Default::default(),
            ports: (boxes_port, sendsms),
        };
        kannel.start_boxes().await;
        kannel
    }

    /// Starts bearerbox, then smsbox once bearerbox listens; returns when
    /// smsbox answers on its sendsms port.
    async fn start_boxes(&mut self) {
        let (bearerbox, smsbox) = installed().expect("kannel is installed");
        let dir = self.dir.path().to_path_buf();
        let conf = dir.join("kannel.conf");
        let spawn = |binary: &PathBuf, name: &str| {
            let output = |suffix: &str| {
                Stdio::from(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(dir.join(format!("{name}.{suffix}")))
                        .unwrap(),
                )
            };
            Command::new(binary)
                .arg(&conf)
                .stdout(output("out"))
                .stderr(output("err"))
                .spawn()
                .unwrap_or_else(|e| panic!("starting {name}: {e}"))
        };
        let (boxes_port, sendsms) = self.ports;
        self.boxes = vec![spawn(&bearerbox, "bearerbox")];
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", boxes_port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "bearerbox did not listen: {}",
                self.log("bearerbox.log")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.boxes.push(spawn(&smsbox, "smsbox"));
        while std::net::TcpStream::connect(("127.0.0.1", sendsms)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "smsbox did not listen: {}",
                self.log("smsbox.log")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.stopped.store(false, Ordering::SeqCst);
    }

    /// Starts both boxes again after [`Kannel::kill`], on the same ports.
    pub async fn restart(&mut self) {
        self.start_boxes().await;
    }

    /// Every message the carrier received so far, in order.
    pub fn received(&self) -> Vec<Sms> {
        self.carrier.lock().unwrap().received.clone()
    }

    /// Waits until the carrier has received at least `n` messages.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Sms> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the carrier received {} of {n} SMS: {got:#?}\nsmsbox log:\n{}",
                got.len(),
                self.log("smsbox.log")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The carrier answers 503 while refusing (Kannel queues and retries).
    pub fn refuse(&self, refusing: bool) {
        self.carrier.lock().unwrap().refusing = refusing;
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    /// Stops both boxes (SIGKILL): the SMS gateway is down.
    pub fn kill(&mut self) {
        for child in &mut self.boxes {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.stopped.store(true, Ordering::SeqCst);
    }
}

impl Drop for Kannel {
    fn drop(&mut self) {
        if !self.stopped.load(Ordering::SeqCst) {
            self.kill();
        }
    }
}
