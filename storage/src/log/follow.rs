//! [`Follower`]: a read-only view of a log someone else writes, for state
//! every process needs but one writes (the tenant registry).
//!
//! It reads what an opener replays, by the same rules, without creating
//! anything: the newest valid checkpoint, then `wal/{seq}` forward until the
//! first absent seq. A tombstone raises the fence epoch; a data object counts
//! only if its epoch is at least the fence epoch seen so far. An object that
//! exists is never invalidated later (a new owner's fence is the lowest
//! *absent* seq), so what a follower applied stays applied.
//!
//! The writer sweeps WAL objects below its checkpoints, `sweep_grace` after
//! they became garbage: a follower that fell that far behind would find a
//! swept seq absent and believe it is at the head. So when a poll comes long
//! after the last one, and at least every [`LIST_EVERY`] anyway, it LISTs
//! the checkpoints and jumps to a newer one.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::path::Path;
use object_store::ObjectStore;
use tokio::time::Instant;

use super::{open, put, scan_kv, wal_path, LogConfig};
use crate::state::State;
use crate::Error;

/// Longest a follower goes without checking for a newer checkpoint.
const LIST_EVERY: Duration = Duration::from_secs(30);

pub struct Follower {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    cfg: LogConfig,
    state: State,
    /// The next seq to read.
    next: u64,
    fence_epoch: u64,
    polled: Instant,
    listed: Instant,
}

impl Follower {
    /// Reads the log at `prefix` up to its current head. An absent log is
    /// an empty one.
    pub async fn open(
        store: Arc<dyn ObjectStore>,
        prefix: Path,
        cfg: LogConfig,
    ) -> Result<Self, Error> {
        let now = Instant::now();
        let mut f = Self {
            store,
            prefix,
            cfg,
            state: State::default(),
            next: 0,
            fence_epoch: 0,
            polled: now,
            listed: now,
        };
        f.jump().await?;
        f.read_forward().await?;
        Ok(f)
    }

    /// Applies whatever became durable since the last poll: whether anything
    /// changed.
    pub async fn poll(&mut self) -> Result<bool, Error> {
        let behind = self
            .cfg
            .sweep_grace
            .is_some_and(|g| self.polled.elapsed() >= g / 2);
        self.polled = Instant::now();
        let mut changed = false;
        if behind || self.listed.elapsed() >= LIST_EVERY {
            changed |= self.jump().await?;
        }
        changed |= self.read_forward().await?;
        Ok(changed)
    }

    /// The key-value entries under `prefix`, as of the last poll.
    pub fn scan(&self, prefix: &[u8]) -> Vec<(Bytes, Bytes)> {
        scan_kv(&self.state.kv, prefix)
    }

    /// The next seq this follower reads: everything below it is applied.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// Moves to the newest valid checkpoint if it is past this position.
    async fn jump(&mut self) -> Result<bool, Error> {
        self.listed = Instant::now();
        let Some(c) = open::latest_checkpoint(&*self.store, &self.prefix, &self.cfg).await? else {
            return Ok(false);
        };
        if c.seq < self.next {
            return Ok(false);
        }
        self.next = c.seq + 1;
        self.fence_epoch = self.fence_epoch.max(c.fence_epoch);
        self.state = c.state;
        Ok(true)
    }

    async fn read_forward(&mut self) -> Result<bool, Error> {
        let mut changed = false;
        loop {
            let path = wal_path(&self.prefix, self.next);
            let Some(bytes) = put::get(&*self.store, &path, self.cfg.put_timeout).await? else {
                return Ok(changed);
            };
            let obj = open::decode_at(&path, bytes, self.next)?;
            let mut no_tail = super::Tail::new(0);
            changed |= open::apply(&mut self.state, &mut self.fence_epoch, &mut no_tail, &obj)
                .map_err(|e| open::corrupt(&path, e))?;
            self.next += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{format, Entry, ShardLog};
    use object_store::ObjectStoreExt;

    fn put(k: &str, v: &str) -> Entry {
        Entry::Put {
            key: Bytes::from(k.to_string()),
            value: Some(Bytes::from(v.to_string())),
        }
    }

    fn value(f: &Follower, k: &str) -> Option<String> {
        f.scan(k.as_bytes())
            .into_iter()
            .find(|(key, _)| key == k.as_bytes())
            .map(|(_, v)| String::from_utf8_lossy(&v).into_owned())
    }

    #[tokio::test]
    async fn follows_writers_across_fences_checkpoints_and_sweeps() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let prefix = Path::from("system/reg");
        let cfg = LogConfig {
            sweep_grace: Some(Duration::ZERO),
            maintain_every: Duration::from_millis(5),
            checkpoint_every: 4,
            ..LogConfig::default()
        };
        let mut f = Follower::open(store.clone(), prefix.clone(), cfg.clone())
            .await
            .expect("an absent log is empty");
        assert!(!f.poll().await.expect("polls"));

        let a = ShardLog::open(store.clone(), prefix.clone(), cfg.clone())
            .await
            .expect("a");
        a.append(vec![put("k", "1")])
            .await
            .expect("accepted")
            .durable()
            .await
            .expect("durable");
        assert!(f.poll().await.expect("polls"));
        assert_eq!(value(&f, "k").as_deref(), Some("1"));

        // An in-flight flush of `a` lands past a hole, then a second writer
        // fences it there: neither that object nor later writes of `a` show.
        let late = format::Writer {
            epoch: a.epoch(),
            nonce: 1,
        };
        let body: Vec<u8> =
            format::encode_wal(late, f.position() + 1, &[put("s", "stale")]).concat();
        let at = wal_path(&prefix, f.position() + 1);
        store.put(&at, body.into()).await.expect("put");
        let b = ShardLog::open(store.clone(), prefix.clone(), cfg.clone())
            .await
            .expect("b");
        let stale = a
            .append(vec![put("k", "stale")])
            .await
            .expect("accepted")
            .durable()
            .await;
        assert!(matches!(stale, Err(Error::Fenced)), "{stale:?}");
        b.append(vec![put("k", "2")])
            .await
            .expect("accepted")
            .durable()
            .await
            .expect("durable");
        f.poll().await.expect("polls");
        assert_eq!(value(&f, "k").as_deref(), Some("2"));
        assert_eq!(value(&f, "s"), None, "a fenced object is not applied");

        // The writer checkpoints and sweeps what the follower has not read:
        // a follower that was away that long jumps to a checkpoint.
        for i in 3..40 {
            let e = put("k", &i.to_string());
            b.append(vec![e])
                .await
                .expect("accepted")
                .durable()
                .await
                .expect("durable");
        }
        let unread = wal_path(&prefix, f.position());
        for _ in 0..500 {
            if put::get(&*store, &unread, cfg.put_timeout)
                .await
                .expect("get")
                .is_none()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            put::get(&*store, &unread, cfg.put_timeout)
                .await
                .expect("get")
                .is_none(),
            "the follower's next seq was swept"
        );
        f.polled = Instant::now() - Duration::from_secs(3600);
        assert!(f.poll().await.expect("polls"));
        assert_eq!(value(&f, "k").as_deref(), Some("39"));
        let again = Follower::open(store, prefix, cfg).await.expect("opens");
        assert_eq!(value(&again, "k").as_deref(), Some("39"));
    }
}
