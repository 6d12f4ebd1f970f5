//! Every record to both outputs; the copy for the second output carries a
//! `floe-copy` header, so a consumer of both can tell them apart. Counts the
//! records seen in durable state (`seen`), exactly once across restarts.

use floe_guest::{state, Config, Header, Out, Record, Transform};

struct FanOut;

impl Transform for FanOut {
    fn init(_: &Config) -> Result<Self, String> {
        Ok(FanOut)
    }

    fn batch(&mut self, batch: Vec<Record>, out: &mut Out) -> Result<(), String> {
        let seen = state::get(b"seen")
            .map(|v| u64::from_le_bytes(v.try_into().unwrap_or_default()))
            .unwrap_or(0);
        let n = batch.len() as u64;
        for record in batch {
            fan_out(record, out);
        }
        state::set(b"seen", &(seen + n).to_le_bytes());
        Ok(())
    }

    fn record(&mut self, record: Record, out: &mut Out) -> Result<(), String> {
        fan_out(record, out);
        Ok(())
    }
}

fn fan_out(record: Record, out: &mut Out) {
    let mut copy = record.clone();
    copy.headers.push(Header {
        key: "floe-copy".into(),
        value: Some(b"1".to_vec()),
    });
    out.forward(0, record);
    out.forward(1, copy);
}

floe_guest::export_transform!(FanOut);
