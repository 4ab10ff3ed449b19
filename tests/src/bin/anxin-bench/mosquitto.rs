//! The baseline broker: Debian's Mosquitto on a loopback port.

use std::{path::Path, process::Command, time::Duration};

use anxin_tests::{Proc, free_port};

pub const BINARY: &str = "/usr/sbin/mosquitto";

pub struct Mosquitto {
    pub proc: Proc,
    pub port: u16,
}

impl Mosquitto {
    /// Starts Mosquitto with in-memory queues (its persistence writes a
    /// snapshot every 30 minutes, not per message, so it would add nothing
    /// comparable to our per-batch fsync) and room for QoS1 in flight.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        if !Path::new(BINARY).exists() {
            anyhow::bail!("{BINARY} is missing: apt-get install mosquitto");
        }
        let port = free_port();
        let config = dir.join("mosquitto.conf");
        std::fs::write(
            &config,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 max_inflight_messages 100\nmax_queued_messages 1000000\n"
            ),
        )?;
        let mut cmd = Command::new(BINARY);
        cmd.arg("-c").arg(&config);
        let proc = Proc::spawn("mosquitto", cmd, dir.join("mosquitto.log"));
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(Self { proc, port });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("mosquitto did not listen on {port}")
    }
}
