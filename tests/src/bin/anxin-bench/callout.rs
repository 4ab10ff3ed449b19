//! The family call-out's cost and speed (issue 29): SOS → the first SMS at
//! the carrier (through the real Kannel, bearerbox + smsbox, to a local HTTP
//! SMSC), and SOS → SSE for residents with call-out on and off in the same
//! run, on one server.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anxin_tests::{Gateway, Server, TEST_ADMIN_TOKEN, free_port, kannel::Kannel, sse::SseStream};

use crate::scenarios::{
    LOAD_LIMITS, device_list, latency_histogram, print_latency, settle, watch_alerts,
};
use crate::traffic::{self, SentAt};

fn phone(index: usize) -> String {
    format!("+86139{index:08}")
}

pub async fn callout(samples: usize, pace_ms: u64) -> anyhow::Result<()> {
    println!(
        "== callout: {samples} SOS presses {pace_ms} ms apart for residents with a family contact (staff first: told at once), {samples} for residents without; SOS → SMS at the carrier through Kannel, SOS → SSE for both"
    );
    if anxin_tests::kannel::installed().is_none() {
        anyhow::bail!("Kannel is not installed (apt-get install kannel)");
    }
    let kannel = Kannel::start().await;
    let dir = tempfile::tempdir()?;
    let sms = format!(
        "sendsms_url = \"{}\"\nusername = \"{}\"\npassword = \"{}\"\nfrom = \"10690000\"",
        kannel.sendsms_url, kannel.username, kannel.password
    );
    let server =
        Server::start_configured(dir.path(), free_port(), &[], &[("sms", sms.as_str())]).await;
    server.add_community("c-bench").await;
    let ids = device_list(&[("f0-", samples), ("n0-", samples)]);
    for (i, device) in ids.iter().enumerate() {
        let resident = format!("r-{device}");
        server.add_resident(&resident, "c-bench", &[device]).await;
        if device.starts_with("f0-") {
            let mut record = server.get(&format!("/api/v1/residents/{resident}")).await;
            record["emergencyContacts"] = serde_json::json!([{
                "name": "Family", "relation": "daughter", "phone": phone(i),
                "channels": ["sms", "view"], "consented": true,
            }]);
            server
                .send("PUT", &format!("/api/v1/residents/{resident}"), record)
                .await;
        }
    }
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let gateway = Gateway::start_with(dir.path(), server.grpc_port, &refs, &LOAD_LIMITS).await;

    let sent_at: SentAt = Default::default();
    let seen = Arc::new(Mutex::new(latency_histogram()));
    watch_alerts(
        SseStream::connect(&server.stream_url(TEST_ADMIN_TOKEN)).await,
        sent_at.clone(),
        seen.clone(),
    );
    let family = traffic::probers(gateway.mqtt_port, "f0-", samples, &sent_at, None).await;
    let plain = traffic::probers(gateway.mqtt_port, "n0-", samples, &sent_at, None).await;
    let pace = Duration::from_millis(pace_ms);

    // Without call-out first, then with it (same server, same directory).
    traffic::probe(&plain, pace, &sent_at).await;
    settle(&seen, samples).await;
    let off = std::mem::replace(&mut *seen.lock().unwrap(), latency_histogram());

    let mut pressed: HashMap<String, Instant> = HashMap::new();
    let started = Instant::now();
    for (i, prober) in family.iter().enumerate() {
        tokio::time::sleep(pace).await;
        pressed.insert(phone(i), Instant::now());
        traffic::probe(std::slice::from_ref(prober), pace, &sent_at).await;
    }
    settle(&seen, samples).await;
    let on = std::mem::replace(&mut *seen.lock().unwrap(), latency_histogram());
    let got = kannel
        .wait_for(samples, Duration::from_secs(60 + samples as u64))
        .await;
    let mut to_sms = latency_histogram();
    for sms in &got {
        if let Some(at) = pressed.get(&sms.to) {
            to_sms.saturating_record((sms.at.duration_since(*at).as_micros() as u64).max(1));
        }
    }
    println!(
        "  {} SMS at the carrier in {:.1} s",
        got.len(),
        started.elapsed().as_secs_f64()
    );
    print_latency("SOS → SSE, residents without call-out", &off);
    print_latency("SOS → SSE, residents with call-out", &on);
    print_latency("SOS → first SMS at the carrier (through Kannel)", &to_sms);
    Ok(())
}
