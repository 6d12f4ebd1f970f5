//! Metering: what each tenant used, per window of time and shard.
//!
//! The shard owner counts usage into `Meter` entries of the shard's log,
//! which ride in its flushes (bytes in travel in the very flush that holds
//! the records they count). When a window is over, the owner closes it with
//! a `MeterClose` entry, so its counts are fixed by the log; then it writes
//! them as the record `tenants/{tenant}/usage/{start}/{shard}` with
//! `PutMode::Create`. A new owner after a crash replays the same log, so it
//! finds the same counts: its create either lands the record or finds the
//! identical one there. A window is thus neither dropped nor counted twice.

use std::collections::BTreeMap;
use std::sync::Mutex;

use floe_common::{usage_prefix, TenantId};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

/// One tenant's usage over some time. In the log these are counts in this
/// field order (`to_counts`); new fields go at the end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counts {
    /// Record-batch bytes produced, as sent.
    pub bytes_in: u64,
    /// Record-batch bytes fetched.
    pub bytes_out: u64,
    /// Requests answered (Kafka and HTTP).
    pub requests: u64,
    /// Connections open, in connection-milliseconds.
    pub connection_ms: u64,
    /// Record bytes held, integrated over time: byte-seconds.
    pub stored_byte_seconds: u64,
    /// Partitions held, integrated over time: partition-milliseconds.
    pub partition_ms: u64,
    /// Fuel the tenant's Wasm transforms burned (about one unit per
    /// instruction).
    pub wasm_fuel: u64,
}

impl Counts {
    pub fn to_counts(&self) -> Vec<u64> {
        vec![
            self.bytes_in,
            self.bytes_out,
            self.requests,
            self.connection_ms,
            self.stored_byte_seconds,
            self.partition_ms,
            self.wasm_fuel,
        ]
    }

    pub fn from_counts(c: &[u64]) -> Self {
        let at = |i: usize| c.get(i).copied().unwrap_or(0);
        Self {
            bytes_in: at(0),
            bytes_out: at(1),
            requests: at(2),
            connection_ms: at(3),
            stored_byte_seconds: at(4),
            partition_ms: at(5),
            wasm_fuel: at(6),
        }
    }

    pub fn add(&mut self, o: &Counts) {
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.requests += o.requests;
        self.connection_ms += o.connection_ms;
        self.stored_byte_seconds += o.stored_byte_seconds;
        self.partition_ms += o.partition_ms;
        self.wasm_fuel += o.wasm_fuel;
    }

    pub fn is_zero(&self) -> bool {
        *self == Counts::default()
    }
}

/// One shard's usage in one window: the unit of billing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub tenant: String,
    pub shard: u32,
    /// The window, milliseconds since the Unix epoch: `start..end`.
    pub start_ms: i64,
    pub end_ms: i64,
    #[serde(flatten)]
    pub usage: Counts,
}

fn record_path(tenant: &TenantId, start_ms: i64, shard: u32) -> Path {
    // Zero-padded, so the store lists windows in time order.
    Path::from(format!("{}/{start_ms:016}/{shard}", usage_prefix(tenant)))
}

/// Writes a closed window's record, once: finding it already written (a
/// previous owner got that far) is success. The log fixes a closed window's
/// counts, so the two can differ only through a bug, which is logged.
pub async fn write_record(
    store: &dyn ObjectStore,
    tenant: &TenantId,
    rec: &Record,
) -> Result<(), object_store::Error> {
    let path = record_path(tenant, rec.start_ms, rec.shard);
    let body = serde_json::to_vec(rec).expect("a record serialises");
    let opts = PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    match store.put_opts(&path, PutPayload::from(body), opts).await {
        Ok(_) => Ok(()),
        Err(object_store::Error::AlreadyExists { .. }) => {
            let there = store.get(&path).await?.bytes().await?;
            match serde_json::from_slice::<Record>(&there) {
                Ok(r) if r.usage == rec.usage => {}
                _ => tracing::error!(%path, "a usage record differs from the log's counts"),
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The tenant's usage records of windows starting in `from..to`, by start.
pub async fn read_records(
    store: &dyn ObjectStore,
    tenant: &TenantId,
    from: i64,
    to: i64,
) -> Result<Vec<Record>, object_store::Error> {
    let prefix = Path::from(usage_prefix(tenant));
    // Every window's records sort after `{prefix}/{from}`; LIST's order is
    // not guaranteed, so the range is checked per record too.
    let offset = Path::from(format!("{prefix}/{:016}", from.max(0)));
    let metas: Vec<_> = store
        .list_with_offset(Some(&prefix), &offset)
        .try_collect()
        .await?;
    let mut out = Vec::new();
    for m in metas {
        let start = m
            .location
            .parts()
            .nth(3)
            .and_then(|p| p.as_ref().parse::<i64>().ok());
        if !start.is_some_and(|s| (from..to).contains(&s)) {
            continue;
        }
        let body = store.get(&m.location).await?.bytes().await?;
        match serde_json::from_slice::<Record>(&body) {
            Ok(r) => out.push(r),
            Err(e) => tracing::error!(path = %m.location, error = %e, "unreadable usage record"),
        }
    }
    out.sort_by_key(|r| (r.start_ms, r.shard));
    Ok(out)
}

/// Every tenant's usage since this process started, for `/metrics`.
#[derive(Debug, Default)]
pub struct Totals(Mutex<BTreeMap<TenantId, Counts>>);

impl Totals {
    pub fn add(&self, tenant: &TenantId, c: &Counts) {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match all.get_mut(tenant) {
            Some(t) => t.add(c),
            None => {
                all.insert(tenant.clone(), *c);
            }
        }
    }

    pub fn snapshot(&self) -> Vec<(TenantId, Counts)> {
        let all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        all.iter().map(|(t, c)| (t.clone(), *c)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn rec(start_ms: i64, shard: u32, bytes_in: u64) -> Record {
        Record {
            tenant: "acme".into(),
            shard,
            start_ms,
            end_ms: start_ms + 1000,
            usage: Counts {
                bytes_in,
                ..Counts::default()
            },
        }
    }

    #[tokio::test]
    async fn records_are_written_once_and_read_by_window() {
        let store = InMemory::new();
        let acme = TenantId::new("acme").expect("id");
        let other = TenantId::new("acme2").expect("id");
        for r in [
            rec(1000, 0, 5),
            rec(2000, 0, 6),
            rec(2000, 1, 7),
            rec(3000, 0, 8),
        ] {
            write_record(&store, &acme, &r).await.expect("write");
        }
        write_record(&store, &other, &rec(2000, 0, 99))
            .await
            .expect("write");
        // A second owner writing the same window again changes nothing.
        write_record(&store, &acme, &rec(2000, 0, 6))
            .await
            .expect("again");
        let got = read_records(&store, &acme, 2000, 3000).await.expect("read");
        assert_eq!(got, vec![rec(2000, 0, 6), rec(2000, 1, 7)]);
        let all = read_records(&store, &acme, 0, i64::MAX)
            .await
            .expect("read");
        assert_eq!(all.len(), 4);
    }

    #[test]
    fn counts_round_trip_through_the_log_form() {
        let c = Counts {
            bytes_in: 1,
            bytes_out: 2,
            requests: 3,
            connection_ms: 4,
            stored_byte_seconds: 5,
            partition_ms: 6,
            wasm_fuel: 7,
        };
        assert_eq!(Counts::from_counts(&c.to_counts()), c);
        assert_eq!(Counts::from_counts(&[7]).bytes_in, 7);
    }
}
