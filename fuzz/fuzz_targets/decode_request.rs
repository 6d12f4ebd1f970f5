//! Request decoding as the Kafka listener does it, on arbitrary frames. The
//! codec is called without the listener's panic guard so that a panic in it
//! is reported as a finding; `parse_request` must also never panic.
#![no_main]

use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = floe_gateway::kafka::parse_request(Bytes::copy_from_slice(data));
    if data.len() >= 4 {
        let api = i16::from_be_bytes([data[0], data[1]]);
        let version = i16::from_be_bytes([data[2], data[3]]);
        if let Ok(api) = ApiKey::try_from(api) {
            if floe_gateway::kafka::SUPPORTED.iter().any(|&(k, lo, hi)| k == api && (lo..=hi).contains(&version)) {
                let mut b = Bytes::copy_from_slice(data);
                let _ = floe_gateway::kafka::decode_body(&mut b, api, version);
            }
        }
    }
});
