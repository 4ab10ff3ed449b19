//! The `anxin-server` binary: loads the config, starts every task in one
//! place, and shuts down on SIGTERM/SIGINT.

use std::{path::PathBuf, sync::Arc};

use anxin_proto::v1::{dispatch_server::DispatchServer, uplink_server::UplinkServer};
use anxin_server::{
    alerts::AlertDesk,
    api::{
        grpc::DispatchService,
        rest::{self, RestState},
    },
    config::ServerConfig,
    gateways::ConnectedGateways,
    metrics,
    store::Store,
    uplink::UplinkService,
};
use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Anxin dispatch server: commits events from gateways, raises alerts, and
/// serves dispatchers over gRPC, REST/SSE and a web console.
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
        print!("{}", ServerConfig::default_toml());
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let config = match &args.config {
        Some(path) => ServerConfig::load(path)?,
        None => {
            tracing::warn!("no --config given; running with built-in defaults");
            ServerConfig::default()
        }
    };
    tokio::runtime::Runtime::new()
        .context("starting the async runtime")?
        .block_on(run(config))
}

async fn run(config: ServerConfig) -> anyhow::Result<()> {
    let prometheus = metrics::install();
    let store = Store::open(&config.store.path)
        .with_context(|| format!("opening store.path {}", config.store.path.display()))?;
    let desk = AlertDesk::new(store, Arc::new(ConnectedGateways::default()));

    let grpc_listener = tokio::net::TcpListener::bind(config.grpc.listen)
        .await
        .with_context(|| format!("binding grpc.listen {}", config.grpc.listen))?;
    let http_listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("binding http.listen {}", config.http.listen))?;

    let cancel = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();

    let grpc = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
        .add_service(UplinkServer::new(UplinkService::new(desk.clone())))
        .add_service(DispatchServer::new(DispatchService::new(desk.clone())));
    let grpc_cancel = cancel.clone();
    tasks.spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc_listener);
        if let Err(err) = grpc
            .serve_with_incoming_shutdown(incoming, grpc_cancel.cancelled())
            .await
        {
            tracing::error!(error = %err, "gRPC server failed");
        }
    });

    let app = rest::router(RestState {
        desk,
        metrics: prometheus,
    });
    let http_cancel = cancel.clone();
    tasks.spawn(async move {
        let serve = axum::serve(http_listener, app)
            .with_graceful_shutdown(async move { http_cancel.cancelled().await });
        if let Err(err) = serve.await {
            tracing::error!(error = %err, "http server failed");
        }
    });
    tracing::info!(
        grpc = %config.grpc.listen,
        http = %config.http.listen,
        console = %format!("http://{}/", config.http.listen),
        "anxin-server ready"
    );

    shutdown_signal().await;
    tracing::info!("shutting down");
    cancel.cancel();
    // Long-lived streams (SSE, gateway uplinks) would hold graceful shutdown
    // open forever; everything acknowledged is already flushed, so bound it.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tracing::info!("anxin-server stopped");
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
