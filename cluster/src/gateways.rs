//! Gateways advertise one another to Kafka clients.
//!
//! Each gateway beats at `cluster/gateways/{id}` with its advertised Kafka
//! address, as workers do (`members.rs`), and Metadata lists every live
//! gateway as a broker. Partition leadership and group coordinators are
//! spread among them by rendezvous hashing, so clients spread their
//! connections and a gateway joining or leaving moves only its share. Any
//! gateway serves any request (it forwards to the shard's owner), so a
//! client on stale metadata is sent somewhere equally right.
//!
//! A gateway's node id is a hash of its advertised address: the same in
//! every gateway's view, and kept across restarts at one address.
//!
//! Store budget per gateway: one PUT per [`Timing::beat`], and the view's
//! one LIST per [`Timing::refresh`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use object_store::{ObjectStore, ObjectStoreExt};

use crate::members::{self, Beat, Timing, View, GATEWAYS};

/// A broker as Metadata shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
}

pub struct Gateways {
    view: Arc<View>,
    store: Arc<dyn ObjectStore>,
    id: String,
    /// The advertised Kafka address, `host:port`.
    addr: String,
    n: AtomicU64,
    leaving: AtomicBool,
}

impl Gateways {
    /// Writes the first beat, reads the others, and keeps both going.
    pub async fn start(
        store: Arc<dyn ObjectStore>,
        timing: Timing,
        advertised: String,
    ) -> anyhow::Result<Arc<Self>> {
        anyhow::ensure!(
            advertised.rsplit_once(':').is_some(),
            "the advertised Kafka address is host:port"
        );
        let me = Arc::new(Self {
            view: View::of(store.clone(), timing, GATEWAYS),
            store,
            id: format!("g-{}", uuid::Uuid::new_v4().simple()),
            addr: advertised,
            n: AtomicU64::new(0),
            leaving: AtomicBool::new(false),
        });
        me.beat().await?;
        me.view.refresh().await?;
        me.view.spawn_refresh();
        let weak = Arc::downgrade(&me);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(timing.beat);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(me) = weak.upgrade() else { return };
                if me.leaving.load(Relaxed) {
                    return;
                }
                if let Err(e) = me.beat().await {
                    tracing::warn!(error = %e, "writing the gateway's beat");
                }
            }
        });
        Ok(me)
    }

    async fn beat(&self) -> object_store::Result<()> {
        let beat = Beat {
            id: self.id.clone(),
            addr: self.addr.clone(),
            n: self.n.fetch_add(1, Relaxed) + 1,
            claims: Vec::new(),
            draining: false,
        };
        members::put_beat(&*self.store, GATEWAYS, &beat).await
    }

    /// This gateway's node id.
    pub fn node_id(&self) -> i32 {
        node_id(&self.addr)
    }

    /// Every live gateway, this one included (live by its own word), by
    /// node id.
    pub fn brokers(&self) -> Vec<Broker> {
        let mut out: Vec<Broker> = self.live().iter().filter_map(broker).collect();
        out.sort_by_key(|b| b.node_id);
        out.dedup_by_key(|b| b.node_id);
        out
    }

    /// The node id of the gateway that leads `key` (a partition, a group):
    /// the rendezvous pick among live gateways.
    pub fn leader(&self, key: &str) -> i32 {
        let live = self.live();
        members::pick(key, live.iter())
            .map(|b| node_id(&b.addr))
            .unwrap_or_else(|| self.node_id())
    }

    /// The live gateways, this one always among them and none twice.
    fn live(&self) -> Vec<Beat> {
        let mut live = self.view.live();
        live.retain(|b| b.id != self.id && b.addr != self.addr);
        live.push(Beat {
            id: self.id.clone(),
            addr: self.addr.clone(),
            n: 0,
            claims: Vec::new(),
            draining: false,
        });
        live
    }

    /// Stops beating and removes the beat, so clients are sent elsewhere
    /// at their next metadata refresh rather than after a lease.
    pub async fn leave(&self) {
        self.leaving.store(true, Relaxed);
        let path = members::beat_path(GATEWAYS, &self.id);
        if let Err(e) = self.store.delete(&path).await {
            tracing::warn!(error = %e, "removing the gateway's beat");
        }
    }
}

fn broker(b: &Beat) -> Option<Broker> {
    let (host, port) = b.addr.rsplit_once(':')?;
    Some(Broker {
        node_id: node_id(&b.addr),
        host: host.to_string(),
        port: port.parse().ok()?,
    })
}

/// A gateway's node id: a non-negative hash of its advertised address.
pub fn node_id(addr: &str) -> i32 {
    (members::weight(addr, "kafka") >> 33) as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use std::time::Duration;

    fn timing() -> Timing {
        Timing {
            beat: Duration::from_millis(50),
            lease: Duration::from_millis(500),
            refresh: Duration::from_millis(50),
        }
    }

    #[tokio::test]
    async fn gateways_see_each_other_spread_leadership_and_leave() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let a = Gateways::start(store.clone(), timing(), "127.0.0.1:9092".into())
            .await
            .expect("a");
        let b = Gateways::start(store.clone(), timing(), "127.0.0.1:9093".into())
            .await
            .expect("b");
        a.view.refresh().await.expect("refresh");
        let both = a.brokers();
        assert_eq!(both, b.brokers(), "one cluster from either gateway");
        assert_eq!(both.len(), 2);
        assert_ne!(a.node_id(), b.node_id());
        assert!(both.iter().all(|x| x.host == "127.0.0.1"));
        assert!(both
            .iter()
            .any(|x| x.node_id == a.node_id() && x.port == 9092));

        // Both views agree on every leader, and both gateways lead some.
        let leaders: Vec<i32> = (0..32)
            .map(|p| a.leader(&format!("t/orders/{p}")))
            .collect();
        let same: Vec<i32> = (0..32)
            .map(|p| b.leader(&format!("t/orders/{p}")))
            .collect();
        assert_eq!(leaders, same);
        assert!(leaders.contains(&a.node_id()) && leaders.contains(&b.node_id()));

        b.leave().await;
        a.view.refresh().await.expect("refresh");
        assert_eq!(
            a.brokers().len(),
            1,
            "a gateway that left is not advertised"
        );
        assert!((0..32).all(|p| a.leader(&format!("t/orders/{p}")) == a.node_id()));
    }
}
