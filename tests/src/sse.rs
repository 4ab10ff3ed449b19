//! A small Server-Sent Events reader over reqwest, enough to follow
//! `/api/v1/alerts/stream`.

use futures::StreamExt;

#[derive(Debug, Clone)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
}

pub struct SseStream {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
}

impl SseStream {
    pub async fn connect(url: &str) -> Self {
        let response = reqwest::get(url).await.expect("opening SSE stream");
        assert!(
            response.status().is_success(),
            "SSE status {}",
            response.status()
        );
        Self {
            body: response.bytes_stream().boxed(),
            buffer: String::new(),
        }
    }

    /// The next `alert` event whose alert `wanted` accepts, within
    /// [`crate::PATIENCE`]; panics if none comes.
    pub async fn next_alert(
        &mut self,
        wanted: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        tokio::time::timeout(crate::PATIENCE, async {
            loop {
                let event = self.next().await.expect("SSE stream ended");
                if event.event == "alert" {
                    let alert: serde_json::Value = serde_json::from_str(&event.data).unwrap();
                    if wanted(&alert) {
                        return alert;
                    }
                }
            }
        })
        .await
        .expect("an alert over SSE")
    }

    /// The next event, or `None` when the stream ends.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent {
                    event: "message".into(),
                    data: String::new(),
                };
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event.event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        event.data.push_str(v.trim_start());
                    }
                }
                if block.lines().all(|l| l.starts_with(':') || l.is_empty()) {
                    continue; // keep-alive comment
                }
                return Some(event);
            }
            let chunk = self.body.next().await?.ok()?;
            self.buffer
                .push_str(&String::from_utf8_lossy(&chunk).replace("\r\n", "\n"));
        }
    }
}
