//! The durable outbox's record: a notification waiting to be delivered.

/// A notification waiting in the durable outbox until it is delivered (or
/// has failed for good); its outcome is audited once, when it leaves.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OutboxItem {
    /// Unique per notification; a receiver drops a retried duplicate by it.
    #[prost(string, tag = "1")]
    pub delivery_id: String,
    #[prost(string, tag = "2")]
    pub address: String,
    /// The notification as JSON (what the webhook posts).
    #[prost(bytes = "vec", tag = "3")]
    pub notification: Vec<u8>,
    /// Attempts made so far.
    #[prost(uint32, tag = "4")]
    pub attempts: u32,
    /// Not to be tried before this.
    #[prost(int64, tag = "5")]
    pub next_at_ms: i64,
    /// Held by a deliverer until this (a deliverer that died lets go).
    #[prost(int64, tag = "6")]
    pub lease_until_ms: i64,
    #[prost(string, tag = "7")]
    pub alert_id: String,
    #[prost(string, tag = "8")]
    pub community_id: String,
    #[prost(string, tag = "9")]
    pub kind: String,
}
