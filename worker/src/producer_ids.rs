//! Producer ids, handed out from blocks recorded in the tenant's shard-0 log:
//! the end of the newest block is the key `p/next`, made durable before any
//! id of the block is handed out. A new owner starts after it, so no id is
//! ever handed out twice, across restarts, owners and failures (the rest of
//! a block in use when its owner went away is skipped, never reused).

use bytes::Bytes;
use floe_storage::{Entry, ShardLog};

use crate::Result;

/// `p/next`: storage reads it too, to bound old checkpoints' producers.
const KEY: &[u8] = floe_storage::producers::IDS_HANDED_OUT_KEY;
/// Ids per block: one durable entry per this many InitProducerId calls.
const BLOCK: i64 = 1000;

pub struct ProducerIds {
    /// (next id, end of the durable block).
    range: tokio::sync::Mutex<(i64, i64)>,
}

impl ProducerIds {
    pub fn load(log: &ShardLog) -> Self {
        let end = floe_storage::producers::ids_handed_out(log.get(KEY).as_deref());
        Self {
            range: tokio::sync::Mutex::new((end, end)),
        }
    }

    pub async fn allocate(&self, log: &ShardLog) -> Result<i64> {
        let mut range = self.range.lock().await;
        if range.0 == range.1 {
            let end = range.1 + BLOCK;
            log.append(vec![Entry::Put {
                key: Bytes::from_static(KEY),
                value: Some(Bytes::copy_from_slice(&end.to_be_bytes())),
            }])
            .await?
            .durable()
            .await?;
            range.1 = end;
        }
        let id = range.0;
        range.0 += 1;
        Ok(id)
    }
}
