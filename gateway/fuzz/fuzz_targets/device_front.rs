//! Everything the gateway's device front parses from the network: MQTT
//! 3.1.1 and 5 framing (CONNECT first, then any packet), and the event
//! payloads a device may publish (protobuf and proto3 JSON).
#![no_main]

use anxin_gateway::{front::codec, ingest};
use anxin_proto::topics::Encoding;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    codec::parse_all(data, 64 * 1024);
    let _ = ingest::validate("dev-1", Encoding::Protobuf, data, 4096, |d| d == "dev-1");
    let _ = ingest::validate("dev-1", Encoding::Json, data, 4096, |d| d == "dev-1");
});
