//! The `anxin-gateway` binary: loads the config, starts every task in one
//! place, and shuts down on SIGTERM/SIGINT after a final journal flush.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anxin_gateway::{
    config::GatewayConfig,
    fallback::{Fallback, LocalAlarm},
    front::{self, Front, auth::DeviceBook, session::Sessions},
    health::{self, Health},
    http::{self, HttpState},
    ingest::{Admission, Ingest, Lane, Lanes},
    journal, metrics,
    mqtt_out::MqttOut,
    roster::Roster,
    supervisor::Supervisor,
    uplink::Uplink,
};
use anyhow::Context;

/// With `--features mimalloc`: glibc's malloc took ~25% of the gateway's
/// CPU at full load (sled allocates and frees a node copy per insert), at
/// the price of more resident memory: BENCHMARKS.md, "Device front".
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Anxin gateway: MQTT device front, durable journal, uplink to the
/// dispatch server.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// TOML configuration file (see --print-default-config).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the default configuration and exit.
    #[arg(long)]
    print_default_config: bool,
    /// Read a device password from stdin and print it sealed, for a
    /// `[[devices]]` entry's `credential` (the file then holds neither the
    /// password nor a fast digest of it), and exit.
    #[arg(long)]
    seal_password: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.print_default_config {
        print!("{}", GatewayConfig::default_toml());
        return Ok(());
    }
    if args.seal_password {
        let mut password = String::new();
        std::io::stdin()
            .read_line(&mut password)
            .context("reading the password from stdin")?;
        let password = password.trim_end_matches(['\r', '\n']);
        anyhow::ensure!(!password.is_empty(), "no password on stdin");
        println!("{}", anxin_credentials::seal(password));
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let config = match &args.config {
        Some(path) => GatewayConfig::load(path)?,
        None => {
            tracing::warn!("no --config given; running with built-in defaults");
            GatewayConfig::default()
        }
    };
    tokio::runtime::Runtime::new()
        .context("starting the async runtime")?
        .block_on(run(config))
}

async fn run(config: GatewayConfig) -> anyhow::Result<()> {
    // Before anything answers: a SIGTERM that arrives as soon as /healthz
    // does (a supervisor, a test) must reach the graceful path, not the
    // default action that kills the process mid-start.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    // Ports first: a taken port fails in milliseconds, before anything slow.
    let mqtt_listener = match config.mqtt.plaintext {
        true => Some(anxin_host::net::bind(config.mqtt.listen, "mqtt.listen").await?),
        false => None,
    };
    let tls_listener = match &config.mqtt.tls {
        Some(tls) => Some((
            anxin_host::net::bind(tls.listen, "mqtt.tls.listen").await?,
            front::tls::acceptor(tls)?,
        )),
        None => None,
    };
    let http_listener = anxin_host::net::bind(config.http.listen, "http.listen").await?;
    let prometheus = metrics::install();
    let restarts = anxin_host::restart::restarts();
    ::metrics::gauge!(metrics::RESTARTS_IN_PLACE).set(restarts as f64);
    let disk = Arc::new(
        anxin_host::disk::DiskGuard::fitted(&config.journal.path, config.journal.disk_thresholds())
            .context("journal.path")?,
    );
    let health = Arc::new(Health::new(disk.clone()));
    let quota = journal::Quota::bytes(config.journal.quota_bytes);
    let (writer, reader, recovery) = open_journal(&config, quota, &disk).await?;
    metrics::set_journal_depth(reader.depth());
    tracing::info!(depth = ?reader.depth(), restarts, "journal open; pending events will be replayed");
    if let Some(recovery) = &recovery {
        report_damage(&config, &writer, recovery).await;
    }

    let book = Arc::new(DeviceBook::from_config(&config));
    let sessions = Arc::new(Sessions::new(config.mqtt.connections_per_device));
    let acks = MqttOut::new(sessions.clone());

    let cancel = CancellationToken::new();
    let alarm = Arc::new(LocalAlarm::new(&config, acks.clone()));
    let (sightings, sightings_rx) = tokio::sync::mpsc::channel(4096);
    let roster = Arc::new(
        Roster::open(&config.journal.path, book.clone(), sessions.clone())
            .context("loading the device roster")?,
    );
    let supervisor = Supervisor::new(&config, writer.clone(), book.clone())
        .context("loading supervision state")?;
    let (lanes, alarm_lane, bulk_lane) = Lanes::new();
    let lane = |name| {
        Ingest::new(
            name,
            writer.clone(),
            acks.clone(),
            alarm.clone(),
            sightings.clone(),
            health.clone(),
        )
    };
    let (alarm_ingest, bulk_ingest) = (lane(Lane::Alarm), lane(Lane::Bulk));
    let device_front = Arc::new(Front::new(
        &config,
        book.clone(),
        sessions,
        Admission::new(&config, book.clone(), lanes),
        sightings,
        health.clone(),
    ));
    let uplink_tls = match &config.uplink.tls {
        Some(tls) => Some(anxin_gateway::uplink::client_tls(tls).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let (uplink, uplink_state) = Uplink::new(
        &config,
        reader.clone(),
        acks,
        roster,
        health.clone(),
        uplink_tls,
    );
    let fallback = Fallback::new(
        &config,
        reader.clone(),
        alarm,
        uplink_state.clone(),
        health.clone(),
    )
    .context("loading fallback state")?;

    let app = http::router(HttpState {
        metrics: prometheus,
        uplink: uplink_state,
        journal: reader.clone(),
        gateway_id: config.gateway_id.clone(),
        health: health.clone(),
    });

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(alarm_ingest.run(alarm_lane, cancel.clone()));
    tasks.spawn(bulk_ingest.run(bulk_lane, cancel.clone()));
    if let Some(listener) = mqtt_listener {
        tasks.spawn(front::run(
            listener,
            None,
            device_front.clone(),
            cancel.clone(),
        ));
    }
    if let Some((listener, acceptor)) = tls_listener {
        tasks.spawn(front::run(
            listener,
            Some(acceptor),
            device_front,
            cancel.clone(),
        ));
    }
    tasks.spawn(uplink.run(cancel.clone()));
    tasks.spawn(supervisor.run(sightings_rx, cancel.clone()));
    tasks.spawn(fallback.run(cancel.clone()));
    tasks.spawn(health::watch_disk(
        health.clone(),
        writer.clone(),
        reader.clone(),
        cancel.clone(),
    ));
    let http_cancel = cancel.clone();
    tasks.spawn(async move {
        let serve = axum::serve(http_listener, app)
            .with_graceful_shutdown(async move { http_cancel.cancelled().await });
        if let Err(err) = serve.await {
            tracing::error!(error = %err, "http server failed");
        }
    });
    tracing::info!(
        gateway_id = %config.gateway_id,
        mqtt = %config.device_port(),
        mqtt_tls = ?config.mqtt.tls.as_ref().map(|t| t.listen),
        http = %config.http.listen,
        servers = ?config.uplink.servers,
        devices = book.len(),
        "anxin-gateway ready"
    );

    shutdown_signal(&mut term).await;
    tracing::info!("shutting down: finishing in-flight work and flushing the journal");
    cancel.cancel();
    while tasks.join_next().await.is_some() {}
    if let Err(err) = writer.mark_clean(&config.journal.path) {
        tracing::warn!(error = %err, "writing the clean-shutdown marker failed");
    }
    tracing::info!("anxin-gateway stopped");
    Ok(())
}

/// Opens the journal, recovering a damaged one. A journal that cannot be
/// opened for want of space is retried (the reserve is given back first)
/// rather than moved aside: its files are fine.
async fn open_journal(
    config: &GatewayConfig,
    quota: journal::Quota,
    disk: &anxin_host::disk::DiskGuard,
) -> anyhow::Result<(
    journal::JournalWriter,
    journal::JournalReader,
    Option<journal::Recovery>,
)> {
    let path = &config.journal.path;
    let mut attempt = 0u32;
    loop {
        match journal::open_or_recover(path, quota) {
            Ok(opened) => return Ok(opened),
            Err(journal::JournalError::Storage(sled::Error::Io(io)))
                if anxin_host::disk::is_out_of_space(&io) && attempt < 60 =>
            {
                disk.out_of_space();
                if attempt.is_multiple_of(10) {
                    tracing::error!(path = %path.display(), "no space to open the journal; retrying every second");
                }
            }
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("opening journal.path {}", path.display()));
            }
        }
        attempt += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A damaged journal was moved aside: say so in the log, the metrics, and
/// to the server as a P1 event from the gateway itself.
async fn report_damage(
    config: &GatewayConfig,
    writer: &journal::JournalWriter,
    recovery: &journal::Recovery,
) {
    let summary = recovery.summary();
    tracing::error!(gateway_id = %config.gateway_id, salvaged = recovery.salvaged, kept_at = %recovery.kept_at.display(), "{summary}");
    ::metrics::counter!(metrics::JOURNAL_DAMAGED).increment(1);
    ::metrics::gauge!(metrics::JOURNAL_SALVAGED).set(recovery.salvaged as f64);
    ::metrics::gauge!(metrics::JOURNAL_SALVAGED_BATCHES).set(recovery.salvaged_batches as f64);
    ::metrics::gauge!(metrics::JOURNAL_SKIPPED).set(recovery.skipped as f64);
    let event = |seq| anxin_proto::DeviceEvent {
        device_id: config.gateway_id.clone(),
        seq,
        kind: anxin_proto::EventKind::GatewayFault as i32,
        device_time_ms: anxin_proto::now_ms(),
        note: summary.clone(),
        ..Default::default()
    };
    let written = match writer.gateway_seq() {
        Ok(seq) => writer
            .append(&event(seq), anxin_proto::now_ms())
            .map(|_| ()),
        Err(err) => Err(err),
    };
    let flushed = match written {
        Ok(()) => writer.flush().await,
        Err(err) => Err(err),
    };
    if let Err(err) = flushed {
        tracing::error!(error = %err, "journaling the damage report failed; it is in the log only");
    }
}

async fn shutdown_signal(term: &mut tokio::signal::unix::Signal) {
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
