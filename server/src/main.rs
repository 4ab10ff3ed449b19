//! The `anxin-server` binary: loads the config, starts every task in one
//! place, and shuts down on SIGTERM/SIGINT.

/// jemalloc rather than glibc's malloc: glibc kept the heap that
/// concurrent readers and imports had once used (20 consoles on a
/// million-resident store: 646 MB, against 470 MB here), and the alarm
/// path's tail was shorter too (BENCHMARKS.md, "City scale").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Freed pages go back to the system within a second, from jemalloc's own
/// background thread rather than on some later allocation's path.
/// `_RJEM_MALLOC_CONF` in the environment still overrides it.
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: Option<&'static std::ffi::c_char> =
    Some(unsafe { &*c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr() });

use std::{path::PathBuf, sync::Arc};

use std::time::Duration;

use anxin_proto::v1::{
    admin_server::AdminServer, dispatch_server::DispatchServer, uplink_server::UplinkServer,
};
use anxin_server::{
    api::uplink::UplinkService,
    api::{
        caller::RestState,
        grpc::{AdminService, DispatchService},
        rest,
    },
    config::ServerConfig,
    desks::admin::AdminDesk,
    desks::alerts::{AlertDesk, DeskPolicy},
    desks::auth::Authenticator,
    desks::gateways::ConnectedGateways,
    desks::outbox::Notifier,
    domain::incidents::IncidentPolicy,
    domain::notification::WebhookHosts,
    domain::rights,
    metrics,
    tasks::escalation,
    tasks::health::{self, Health},
    tasks::outbox::{Deliverer, Webhook},
    tasks::replicas,
};
use anyhow::Context;

mod commands;
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Anxin dispatch server: commits events from gateways, raises alerts, and
/// serves dispatchers over gRPC, REST/SSE and a web console.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// TOML configuration file (see --print-default-config).
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
    /// Print the default configuration and exit.
    #[arg(long)]
    print_default_config: bool,
    /// Write the places, residents, devices, gateways, staff and tokens of a
    /// seed file (deploy/config/seed.example.toml) into the store, then exit.
    /// Run it while the server is stopped.
    #[arg(long, value_name = "FILE")]
    seed: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Copy the sled store at store.path into an empty PostgreSQL database
    /// (moving a single-node install to replicas), then check it: every
    /// kind of record counted on both sides, and the report over all
    /// alerts the same before and after. Run it while the server is
    /// stopped; then set store.backend = "postgres" and store.url.
    Migrate {
        /// The PostgreSQL database to fill, e.g. postgres://anxin@db/anxin.
        #[arg(long, value_name = "URL")]
        to: String,
    },
    /// Make a small CA and the certificates of a test or pilot deployment
    /// in --dir: ca.pem/ca.key, server.pem/.key (for grpc.tls and
    /// http.tls), gateway-<id>.pem/.key (uplink.tls; CN = the gateway id)
    /// and device-<id>.pem/.key (a gateway's mqtt.tls). Keys are written
    /// 0600; an existing CA is never overwritten.
    Certs {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// A DNS name or IP address the server is reached by (repeat).
        #[arg(long = "server-name", value_name = "NAME", required = true)]
        server_names: Vec<String>,
        /// A gateway id to make a client certificate for (repeat).
        #[arg(long = "gateway", value_name = "ID")]
        gateways: Vec<String>,
        /// A device id to make a client certificate for (repeat).
        #[arg(long = "device", value_name = "ID")]
        devices: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 825)]
        days: u32,
    },
    /// Import a CSV file of residents, devices, staff or visit plans into
    /// the store the config names (columns in docs/dispatch.md), all rows
    /// or none: every row is checked first and bad rows are listed by line
    /// (exit 1). Progress goes to stderr, the report (JSON) to stdout.
    /// sled: run it while the server is stopped (or POST the file to a
    /// running server's /api/v1/import/{kind}); PostgreSQL: any time.
    Import {
        /// residents, devices, staff or visit_plans.
        #[arg(long)]
        kind: String,
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Copy the store into DIR (new or empty), consistent as of one moment,
    /// while the server serves: sled, by the running server (over its
    /// control socket) or, when none runs, by this command; PostgreSQL, by
    /// pg_dump. Restore it with `restore --from DIR`.
    Backup {
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
    },
    /// Build the store the config names from a backup, with the server
    /// stopped: sled, into store.path (which must hold no store); the
    /// backup is checked against its manifest as it is copied. PostgreSQL,
    /// pg_restore into the empty database at store.url. Then `store check`.
    Restore {
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
    },
    /// The store itself.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
}

#[derive(clap::Subcommand)]
enum StoreCommand {
    /// Read every record of the store the config names (sled: with the
    /// server stopped): each must decode, every index must agree with its
    /// records, the audit chain must hold. Prints what was read and each
    /// problem found; exit 0 when there is none, 1 otherwise.
    Check,
}

#[derive(clap::Subcommand)]
enum AuditCommand {
    /// Check the audit chain of the store the config names: exit 0 and the
    /// head hash when every entry follows from the one before it; exit 1
    /// and the id of the first entry that does not.
    Verify,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.print_default_config {
        print!("{}", ServerConfig::default_toml());
        return Ok(());
    }
    // A command's answer is its standard output; its log goes to stderr.
    let to_stderr = args.command.is_some();
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()) && !to_stderr)
        .with_writer(move || -> Box<dyn std::io::Write> {
            if to_stderr {
                Box::new(std::io::stderr())
            } else {
                Box::new(std::io::stdout())
            }
        })
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
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    match (&args.command, &args.seed) {
        (Some(Command::Migrate { to }), _) => runtime.block_on(commands::migrate(config, to)),
        (
            Some(Command::Certs {
                dir,
                server_names,
                gateways,
                devices,
                days,
            }),
            _,
        ) => {
            let written = commands::certs::make(&commands::certs::Request {
                dir,
                server_names,
                gateways,
                devices,
                days: *days,
            })?;
            for path in written {
                println!("wrote {}", path.display());
            }
            Ok(())
        }
        (
            Some(Command::Audit {
                command: AuditCommand::Verify,
            }),
            _,
        ) => runtime.block_on(commands::verify_audit(config)),
        (
            Some(Command::Store {
                command: StoreCommand::Check,
            }),
            _,
        ) => runtime.block_on(commands::check_store(config)),
        (Some(Command::Backup { to }), _) => runtime.block_on(commands::backup(config, to)),
        (Some(Command::Restore { from }), _) => runtime.block_on(commands::restore(config, from)),
        (Some(Command::Import { kind, file }), _) => {
            runtime.block_on(commands::import_file(config, kind, file))
        }
        (None, Some(seed)) => runtime.block_on(commands::seed_directory(config, seed)),
        (None, None) => runtime.block_on(run(config)),
    }
}

async fn run(config: ServerConfig) -> anyhow::Result<()> {
    // Before anything answers: a SIGTERM that arrives as soon as /healthz
    // does (a supervisor, a test) must reach the graceful path, not the
    // default action that kills the process mid-start.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    // Ports first: a taken port is fatal before anything slow (the store's
    // disk reserve, recovery).
    let grpc_listener = anxin_host::net::bind(config.grpc.listen, "grpc.listen").await?;
    let http_listener = anxin_host::net::bind(config.http.listen, "http.listen").await?;
    let prometheus = metrics::install();
    let restarts = anxin_host::restart::restarts();
    ::metrics::gauge!(metrics::RESTARTS_IN_PLACE).set(restarts as f64);
    let disk =
        anxin_host::disk::DiskGuard::fitted(&config.store.path, config.store.disk_thresholds())
            .context("store.path")?;
    let health = Arc::new(Health::new(disk));
    let store = commands::open_store(&config).await?;
    tracing::info!(backend = store.backend(), at = %commands::store_location(&config), "store open");
    store.retain_events_for(config.retention.events.ms());
    let admin_token = if config.auth.admin_token.is_empty() {
        let token = rights::new_token();
        tracing::warn!(admin_token = %token, "no auth.admin_token configured; made one for this run");
        token
    } else {
        config.auth.admin_token.clone()
    };
    let authenticator = Authenticator::new(store.clone(), &admin_token);
    let notifier = Notifier::new(store.clone());
    let secs = |s: u64| (s * 1000) as i64;
    let policy = DeskPolicy {
        incidents: IncidentPolicy {
            window_ms: secs(config.incidents.window_secs),
            cancel_grace_ms: secs(config.incidents.cancel_grace_secs),
        },
        p0_deadline_ms: secs(config.routing.p0_deadline_secs),
        p1_deadline_ms: secs(config.routing.p1_deadline_secs),
        utc_offset_minutes: config.routing.utc_offset_minutes,
        emergency_hook: config.notify.emergency_webhook.clone(),
        callout: anxin_server::domain::family::CalloutRules {
            answer_ms: secs(config.family.answer_secs),
            rounds: config.family.rounds,
            p0_limit_ms: secs(config.family.p0_staff_limit_secs),
            limit_ms: secs(config.family.staff_limit_secs),
            utc_offset_minutes: config.routing.utc_offset_minutes,
        },
        signals: anxin_server::domain::signals::SignalRules {
            enabled: config.signals.enabled,
            episode: anxin_server::domain::vitals::EpisodeRules {
                readings: config.signals.readings,
                out_ms: i64::from(config.signals.minutes) * 60_000,
                clear_readings: config.signals.clear_readings,
            },
            zone_fixes: config.signals.zone_fixes,
            meter_check: std::time::Duration::from_secs(config.signals.meter_check_secs),
        },
    };
    let gateways = Arc::new(ConnectedGateways::default());
    let admin = AdminDesk::new(
        store.clone(),
        secs(config.reports.ack_target_secs),
        gateways.clone(),
    )
    .with_webhook_hosts(WebhookHosts::new(&config.notify.webhook_hosts))
    .with_utc_offset(config.routing.utc_offset_minutes)
    .with_token_policy(anxin_server::desks::admin::TokenPolicy {
        ttl_ms: secs(config.auth.token_ttl_secs),
        gateway_ttl_ms: secs(config.auth.gateway_token_ttl_secs),
        rotation_grace_ms: secs(config.auth.rotation_grace_secs),
        session_ms: secs(config.auth.console_session_secs),
    });
    let remote_changes = store.remote_changes();
    let desk = AlertDesk::new(store, gateways, policy, notifier.clone());
    let family = anxin_server::desks::family::FamilyDesk::new(
        desk.clone(),
        anxin_server::desks::family::LinkPolicy {
            public_url: if config.family.public_url.is_empty() {
                let scheme = if config.http.tls.is_some() {
                    "https"
                } else {
                    "http"
                };
                format!("{scheme}://{}", http_listener.local_addr()?)
            } else {
                config.family.public_url.clone()
            },
            link_ttl_ms: secs(config.family.link_ttl_secs),
            session_ms: secs(config.family.session_secs),
        },
    );
    let deliverer = Deliverer::new(
        Arc::new(anxin_server::tasks::outbox::Channels {
            webhook: Webhook::new(
                &config.notify.secret,
                Duration::from_millis(config.notify.timeout_ms),
                WebhookHosts::new(&config.notify.webhook_hosts),
            ),
            sms: anxin_server::tasks::outbox::Sms::new(
                config.sms.clone(),
                Duration::from_millis(config.notify.timeout_ms),
                family.clone(),
            ),
        }),
        &notifier,
        config.notify.attempts,
        Duration::from_millis(config.notify.backoff_initial_ms),
        Duration::from_millis(config.notify.timeout_ms),
    )
    .with_family(family.clone());

    let cancel = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();

    let mut grpc = tonic::transport::Server::builder();
    if let Some(tls) = &config.grpc.tls {
        grpc = grpc
            .tls_config(grpc_tls(tls)?)
            .context("grpc.tls: the certificate or key is not usable")?;
    }
    let grpc = grpc
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
        .add_service(UplinkServer::new(
            UplinkService::new(desk.clone(), authenticator.clone(), health.clone())
                .require_gateway_cert(
                    config
                        .grpc
                        .tls
                        .as_ref()
                        .is_some_and(|t| t.client_ca.is_some()),
                ),
        ))
        .add_service(DispatchServer::with_interceptor(
            DispatchService::new(desk.clone(), authenticator.clone()),
            health::refuse_while_failed(health.clone()),
        ))
        .add_service(AdminServer::with_interceptor(
            AdminService::new(admin.clone(), authenticator.clone()),
            health::refuse_while_failed(health.clone()),
        ));
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

    // Timers first: offers whose deadline passed while the server was down
    // escalate now, then alerts that were committed but never routed.
    tasks.spawn(escalation::run(
        desk.clone(),
        health.clone(),
        cancel.clone(),
    ));
    health::watch(health.clone(), cancel.clone());
    tasks.spawn(deliverer.run(health.clone(), cancel.clone()));
    // sled: the seal (store/sled/seal.rs), every second and at shutdown;
    // the control socket, for online backups.
    if desk.store().backend() == "sled" {
        tasks.spawn(anxin_server::tasks::control::serve(
            desk.store().clone(),
            anxin_server::tasks::control::socket_path(&config.store.path),
            cancel.clone(),
        ));
        tasks.spawn(anxin_server::tasks::health::seal(
            desk.store().clone(),
            health.clone(),
            cancel.clone(),
        ));
    }
    tasks.spawn(anxin_server::tasks::retention::run(
        desk.store().clone(),
        health.clone(),
        anxin_server::tasks::retention::Policy::new(
            &config.retention,
            config.routing.utc_offset_minutes,
        ),
        cancel.clone(),
    ));
    tasks.spawn(anxin_server::tasks::judges::run(
        desk.clone(),
        health.clone(),
        cancel.clone(),
    ));
    // Only a shared database can go away under a running server.
    if desk.store().backend() != "sled" {
        tasks.spawn(health::watch_database(
            health.clone(),
            desk.store().clone(),
            cancel.clone(),
        ));
    }
    if let Some(changes) = remote_changes {
        tasks.spawn(replicas::follow(desk.clone(), changes, cancel.clone()));
    }
    // Device records an earlier version kept with a bare password digest
    // are sealed where they lie (desks/credentials.rs), beside serving.
    {
        let (store, gateways) = (desk.store().clone(), desk.gateways().clone());
        tasks.spawn(async move {
            let sealing = tokio::task::spawn_blocking(move || {
                anxin_server::desks::credentials::seal_legacy(&store, &gateways)
            });
            match sealing.await {
                Ok(Ok(0)) => {}
                Ok(Ok(sealed)) => tracing::info!(sealed, "legacy device password digests sealed"),
                Ok(Err(err)) => tracing::error!(error = %err, "sealing legacy device password digests failed; the next start tries again"),
                Err(err) => tracing::error!(error = %err, "sealing legacy device password digests panicked"),
            }
        });
    }
    if let Err(err) = desk.recover().await {
        tracing::error!(error = %err, "routing unrouted alerts after start-up failed");
    }

    let app = rest::router(RestState {
        desk,
        admin,
        auth: authenticator,
        metrics: prometheus,
        health,
        family,
        sms_report_key: config.sms.password.clone(),
        map: config.map.clone(),
    });
    let http_cancel = cancel.clone();
    match &config.http.tls {
        Some(tls) => {
            let acceptor = anxin_server::api::https::acceptor(tls)?;
            let listener = anxin_server::api::https::TlsListener::new(http_listener, acceptor)
                .context("http.listen")?;
            tasks.spawn(async move {
                let serve = axum::serve(listener, app)
                    .with_graceful_shutdown(async move { http_cancel.cancelled().await });
                if let Err(err) = serve.await {
                    tracing::error!(error = %err, "https server failed");
                }
            });
        }
        None => {
            tasks.spawn(async move {
                let serve = axum::serve(http_listener, app)
                    .with_graceful_shutdown(async move { http_cancel.cancelled().await });
                if let Err(err) = serve.await {
                    tracing::error!(error = %err, "http server failed");
                }
            });
        }
    }
    tracing::info!(
        grpc = %config.grpc.listen,
        http = %config.http.listen,
        console = %format!("http://{}/", config.http.listen),
        "anxin-server ready"
    );

    shutdown_signal(&mut term).await;
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

/// The gRPC port's TLS: the server's identity, and the CA of gateways'
/// client certificates when one is configured (optional at the handshake:
/// dispatchers' clients have none; the Uplink service then insists).
fn grpc_tls(
    tls: &anxin_server::config::GrpcTls,
) -> anyhow::Result<tonic::transport::ServerTlsConfig> {
    let read = |path: &std::path::Path, field: &str| {
        std::fs::read(path).with_context(|| format!("{field}: reading {}", path.display()))
    };
    let identity = tonic::transport::Identity::from_pem(
        read(&tls.cert, "grpc.tls.cert")?,
        read(&tls.key, "grpc.tls.key")?,
    );
    let mut config = tonic::transport::ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &tls.client_ca {
        config = config
            .client_ca_root(tonic::transport::Certificate::from_pem(read(
                ca,
                "grpc.tls.client_ca",
            )?))
            .client_auth_optional(true);
    }
    Ok(config)
}

async fn shutdown_signal(term: &mut tokio::signal::unix::Signal) {
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
