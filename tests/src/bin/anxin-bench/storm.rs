//! A reconnect storm (issue 32, device secrets): 10,000 devices connected
//! to one gateway, the gateway killed with SIGKILL and started again, every
//! device reconnecting at once with its own backoff. Time from the kill to
//! all reconnected, and the restarted gateway's CPU over that time, with
//! the devices' credentials as bare SHA-256 digests (what the server stored
//! before) and sealed (PBKDF2, what it stores now).

use std::time::{Duration, Instant};

use anxin_tests::{Gateway, Server, device_password, free_port};

use crate::{
    procstat::Watch,
    scenarios::{LOAD_LIMITS, device_list, pid, telemetry_load, wait_for},
};

const CONNECTIONS: &str = "anxin_gateway_mqtt_connections";

pub async fn storm(devices: usize, credentials: &str, iterations: u32) -> anyhow::Result<()> {
    let kinds: Vec<&str> = match credentials {
        "both" => vec!["digest", "sealed"],
        one @ ("digest" | "sealed") => vec![one],
        other => anyhow::bail!("--credentials {other}: digest, sealed or both"),
    };
    for kind in kinds {
        run(devices, kind, iterations).await?;
    }
    Ok(())
}

async fn run(devices: usize, kind: &str, iterations: u32) -> anyhow::Result<()> {
    let what = match kind {
        "sealed" => format!("sealed credentials, {iterations} iterations"),
        _ => "bare SHA-256 digests".to_string(),
    };
    println!("== storm: {devices} devices ({what}) reconnecting to a gateway killed with SIGKILL");
    let dir = tempfile::tempdir()?;
    let server = Server::start_configured(dir.path(), free_port(), &[], &[]).await;
    let ids = device_list(&[("m-", devices)]);
    let made = Instant::now();
    let specs: Vec<String> = ids
        .iter()
        .map(|id| {
            let digest = anxin_credentials::legacy_digest(&device_password(id));
            let credential = match kind {
                "sealed" => anxin_credentials::seal_digest_with(&digest, iterations),
                _ => digest,
            };
            format!("{id}:call_button:{credential}")
        })
        .collect();
    println!(
        "  {devices} {kind} credentials made in {:.1} s",
        made.elapsed().as_secs_f64()
    );
    let refs: Vec<&str> = specs.iter().map(String::as_str).collect();
    let max_connections = format!("max_connections = {}", devices + 10);
    let mut extra = LOAD_LIMITS.to_vec();
    extra.push(("mqtt", max_connections.as_str()));
    let mut gateway = Gateway::start_with(dir.path(), server.grpc_port, &refs, &extra).await;
    // A device sends one event a minute: the storm, not the load, is measured.
    let rate = devices as f64 / 60.0;
    let mut sim = telemetry_load(dir.path(), &gateway, "m-", devices, rate, 600, None);
    let ramp = Instant::now();
    let all = devices as f64;
    if !wait_for(
        "every device to connect",
        Duration::from_secs(300),
        async || gateway.metric(CONNECTIONS).await >= all,
    )
    .await
    {
        anyhow::bail!("the devices did not all connect");
    }
    println!(
        "  first connect (the simulator ramps 500 devices/s): all {devices} after {:.1} s",
        ramp.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(5)).await;

    let killed = Instant::now();
    gateway.restart().await;
    let ready = killed.elapsed();
    let watch = Watch::start(vec![("anxin-gateway".into(), pid(&gateway.proc))]);
    let counting = Instant::now();
    let mut half = None;
    let reconnected = wait_for(
        "every device to reconnect",
        Duration::from_secs(300),
        async || {
            let now = gateway.metric(CONNECTIONS).await;
            if half.is_none() && now >= all / 2.0 {
                half = Some(killed.elapsed());
            }
            now >= all
        },
    )
    .await;
    let took = killed.elapsed();
    let busy = counting.elapsed();
    let usage = watch.finish().await;
    if !reconnected {
        anyhow::bail!(
            "only {} of {devices} reconnected",
            gateway.metric(CONNECTIONS).await
        );
    }
    let cpu = usage.first().map_or(0.0, |u| u.cpu_pct);
    println!(
        "  storm: gateway ready {:.1} s after the kill; half reconnected at {:.1} s, all {devices} at {:.1} s",
        ready.as_secs_f64(),
        half.unwrap_or(took).as_secs_f64(),
        took.as_secs_f64()
    );
    println!(
        "  restarted gateway from ready to all reconnected: {:.0}% of a core over {:.1} s ({:.1} CPU-seconds); credential checks: {} derived, {} cached, {} digest",
        cpu,
        busy.as_secs_f64(),
        cpu / 100.0 * busy.as_secs_f64(),
        gateway.credential_checks("derived").await,
        gateway.credential_checks("cached").await,
        gateway.credential_checks("digest").await,
    );
    for u in &usage {
        println!("  {u}");
    }
    sim.proc.kill9();
    Ok(())
}
