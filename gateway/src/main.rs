//! The `anxin-gateway` binary: loads the config, starts every task in one
//! place, and shuts down on SIGTERM/SIGINT after a final journal flush.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anxin_gateway::{
    broker,
    config::GatewayConfig,
    fallback::{Fallback, LocalAlarm},
    http::{self, HttpState},
    ingest::Ingest,
    journal, metrics,
    mqtt_out::MqttOut,
    supervisor::Supervisor,
    uplink::Uplink,
};
use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Anxin gateway: embedded MQTT broker for devices, durable journal, uplink
/// to the dispatch server.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// TOML configuration file (see --print-default-config).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the default configuration and exit.
    #[arg(long)]
    print_default_config: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.print_default_config {
        print!("{}", GatewayConfig::default_toml());
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rumqttd=warn".into()),
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
    let prometheus = metrics::install();
    let quota = journal::Quota::bytes(config.journal.quota_bytes);
    let (writer, reader) = journal::open(&config.journal.path, quota)
        .with_context(|| format!("opening journal.path {}", config.journal.path.display()))?;
    metrics::set_journal_depth(reader.depth());
    tracing::info!(depth = ?reader.depth(), "journal open; pending events will be replayed");

    let link = broker::start(&config)?;
    broker::wait_listening(config.mqtt.listen, Duration::from_secs(10)).await?;
    let acks = MqttOut::new(link.tx);

    let cancel = CancellationToken::new();
    let alarm = Arc::new(LocalAlarm::new(&config, acks.clone()));
    let (sightings, sightings_rx) = tokio::sync::mpsc::channel(4096);
    let supervisor =
        Supervisor::new(&config, writer.clone()).context("loading supervision state")?;
    let ingest = Ingest::new(&config, writer, acks.clone(), alarm.clone(), sightings);
    let (uplink, uplink_state) = Uplink::new(&config, reader.clone(), acks);
    let fallback = Fallback::new(&config, reader.clone(), alarm, uplink_state.clone())
        .context("loading fallback state")?;

    let http_listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("binding http.listen {}", config.http.listen))?;
    let app = http::router(HttpState {
        metrics: prometheus,
        uplink: uplink_state,
        journal: reader,
        gateway_id: config.gateway_id.clone(),
    });

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(ingest.run(link.rx, cancel.clone()));
    tasks.spawn(uplink.run(cancel.clone()));
    tasks.spawn(supervisor.run(sightings_rx, cancel.clone()));
    tasks.spawn(fallback.run(cancel.clone()));
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
        mqtt = %config.mqtt.listen,
        http = %config.http.listen,
        servers = ?config.uplink.servers,
        devices = config.devices.len(),
        "anxin-gateway ready"
    );

    shutdown_signal().await;
    tracing::info!("shutting down: finishing in-flight work and flushing the journal");
    cancel.cancel();
    while tasks.join_next().await.is_some() {}
    tracing::info!("anxin-gateway stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
