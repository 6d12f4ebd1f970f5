//! Consumer groups with librdkafka against the real binary: three consumers
//! share 12 partitions while records flow, a fourth joins and one leaves
//! mid-stream; every record is consumed, and the duplicates (records read
//! again after a rebalance because their commit had not landed) are counted
//! and reported. Then the server restarts and the group resumes at its
//! committed offsets. Run with the eager and the cooperative-sticky assignor.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use floe_e2e::{temp_dir, Floe};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Message, Offset, TopicPartitionList};

const PARTITIONS: i32 = 12;
const RECORDS: usize = 24_000;

type Seen = Arc<Mutex<HashMap<(i32, i64), u32>>>;

fn consumer(bootstrap: &str, group: &str, assignor: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("partition.assignment.strategy", assignor)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "300")
        .set("fetch.wait.max.ms", "100")
        .create()
        .expect("consumer")
}

/// A consumer on its own thread until `stop`; records what it reads.
fn run(
    bootstrap: &str,
    group: &str,
    assignor: &str,
    topic: &str,
    seen: Seen,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    let c = consumer(bootstrap, group, assignor);
    c.subscribe(&[topic]).expect("subscribe");
    std::thread::spawn(move || {
        let mut last_commit = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                *seen
                    .lock()
                    .expect("seen")
                    .entry((m.partition(), m.offset()))
                    .or_default() += 1;
            }
            // Commit what was read every 200 ms: a rebalance re-delivers
            // at most what came since.
            if last_commit.elapsed() > Duration::from_millis(200) {
                let _ = c.commit_consumer_state(CommitMode::Async);
                last_commit = Instant::now();
            }
        }
        // Commit everything read, then close (closing polls and drops
        // messages, so nothing is committed automatically).
        c.commit_consumer_state(CommitMode::Sync).ok();
        drop(c);
    })
}

fn produce(bootstrap: &str, topic: &str, n: usize, over: Duration) -> HashMap<i32, i64> {
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "false")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let start = Instant::now();
    for i in 0..n {
        let due = start + over.mul_f64(i as f64 / n as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let v = format!("r{i}");
        let rec = BaseRecord::<(), _>::to(topic)
            .payload(&v)
            .partition((i % PARTITIONS as usize) as i32);
        p.send(rec).map_err(|(e, _)| e).expect("send");
    }
    p.flush(Duration::from_secs(60)).expect("flush");
    (0..PARTITIONS)
        .map(|part| (part, (n / PARTITIONS as usize) as i64))
        .collect()
}

fn committed(bootstrap: &str, group: &str, topic: &str) -> Vec<Offset> {
    let c = consumer(bootstrap, group, "range");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topic, p);
    }
    let got = c
        .committed_offsets(tpl, Duration::from_secs(20))
        .expect("committed");
    got.elements().iter().map(|e| e.offset()).collect()
}

async fn scenario(assignor: &str) {
    let mut f = Floe::start(temp_dir(&format!("groups-{assignor}")), &[]);
    let bootstrap = f.bootstrap();
    let topic = "events";
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("admin");
    let t = NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1));
    assert!(admin
        .create_topics([&t], &AdminOptions::new())
        .await
        .expect("create")[0]
        .is_ok());

    let seen: Seen = Arc::default();
    let stops: Vec<Arc<AtomicBool>> = (0..4).map(|_| Arc::default()).collect();
    let mut threads: Vec<Option<JoinHandle<()>>> = (0..3)
        .map(|i| {
            Some(run(
                &bootstrap,
                "g",
                assignor,
                topic,
                seen.clone(),
                stops[i].clone(),
            ))
        })
        .collect();
    let producer = {
        let b = bootstrap.clone();
        std::thread::spawn(move || produce(&b, topic, RECORDS, Duration::from_secs(8)))
    };
    std::thread::sleep(Duration::from_secs(3));
    threads.push(Some(run(
        &bootstrap,
        "g",
        assignor,
        topic,
        seen.clone(),
        stops[3].clone(),
    )));
    std::thread::sleep(Duration::from_secs(2));
    stops[1].store(true, Ordering::Relaxed);
    if let Some(t) = threads[1].take() {
        t.join().expect("consumer 1");
    }
    let ends = producer.join().expect("producer");

    // Every record is consumed by the group.
    let deadline = Instant::now() + Duration::from_secs(60);
    let total = |seen: &Seen| seen.lock().expect("seen").len();
    while total(&seen) < RECORDS && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    for (i, stop) in stops.iter().enumerate() {
        stop.store(true, Ordering::Relaxed);
        if let Some(t) = threads[i].take() {
            t.join().expect("consumer");
        }
    }
    let seen = seen.lock().expect("seen").clone();
    for (&p, &end) in &ends {
        for o in 0..end {
            assert!(
                seen.contains_key(&(p, o)),
                "{assignor}: record {p}/{o} never consumed"
            );
        }
    }
    let duplicates: u32 = seen.values().map(|n| n - 1).sum();
    eprintln!("{assignor}: {RECORDS} records, {duplicates} read twice across 2 rebalances");

    // The closing consumers committed everything they read.
    let before = committed(&bootstrap, "g", topic);
    let want: Vec<Offset> = (0..PARTITIONS).map(|p| Offset::Offset(ends[&p])).collect();
    assert_eq!(before, want, "{assignor}: committed offsets at the end");

    // After a restart the group resumes there: only new records come.
    f.restart();
    let bootstrap = f.bootstrap();
    assert_eq!(
        committed(&bootstrap, "g", topic),
        want,
        "{assignor}: commits survive the restart"
    );
    let again: Seen = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let t = run(
        &bootstrap,
        "g",
        assignor,
        topic,
        again.clone(),
        stop.clone(),
    );
    produce(&bootstrap, topic, 1200, Duration::from_millis(500));
    let deadline = Instant::now() + Duration::from_secs(60);
    while total(&again) < 1200 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    t.join().expect("consumer after restart");
    let again = again.lock().expect("again").clone();
    assert_eq!(again.len(), 1200, "{assignor}: the new records, once each");
    assert!(
        again.keys().all(|&(p, o)| o >= ends[&p]),
        "{assignor}: nothing from before the commits"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eager_group_shares_partitions_through_joins_and_leaves() {
    scenario("range,roundrobin").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooperative_sticky_group_shares_partitions_through_joins_and_leaves() {
    scenario("cooperative-sticky").await;
}

/// What no real client sends, or sends only when something is wrong: each
/// gets Kafka's error, and the group carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_group_requests_get_kafkas_errors() {
    use bytes::Bytes;
    use floe_e2e::raw::Conn;
    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    use kafka_protocol::messages::leave_group_request::MemberIdentity;
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::ResponseError as E;

    let f = Floe::start(temp_dir("groups-bad"), &[]);
    let mut conn = Conn::connect(&f.bootstrap());
    let s = |x: &str| StrBytes::from_string(x.to_string());
    let join = |member: &str, session_ms: i32, ptype: &str, protocol: &str| {
        JoinGroupRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_session_timeout_ms(session_ms)
            .with_rebalance_timeout_ms(10_000)
            .with_member_id(s(member))
            .with_protocol_type(s(ptype))
            .with_protocols(vec![JoinGroupRequestProtocol::default()
                .with_name(s(protocol))
                .with_metadata(Bytes::from_static(b"sub"))])
    };
    // KIP-394: the first join of a v4+ client gets an id to rejoin with.
    let first = conn.call(7, &join("", 10_000, "consumer", "range"));
    assert_eq!(first.error_code, E::MemberIdRequired.code());
    let me = first.member_id.to_string();
    assert!(
        me.starts_with("floe-e2e-"),
        "member ids start with the client id: {me}"
    );
    let joined = conn.call(7, &join(&me, 10_000, "consumer", "range"));
    assert_eq!(
        (
            joined.error_code,
            joined.generation_id,
            joined.leader.to_string()
        ),
        (0, 1, me.clone())
    );
    assert_eq!(joined.members.len(), 1);

    // Joins the group cannot take.
    assert_eq!(
        conn.call(7, &join("", 1_000, "consumer", "range"))
            .error_code,
        E::InvalidSessionTimeout.code()
    );
    assert_eq!(
        conn.call(7, &join("", 10_000, "connect", "range"))
            .error_code,
        E::InconsistentGroupProtocol.code()
    );
    assert_eq!(
        conn.call(7, &join("", 10_000, "consumer", "sticky"))
            .error_code,
        E::InconsistentGroupProtocol.code()
    );
    let empty = JoinGroupRequest::default()
        .with_group_id(GroupId(s("")))
        .with_session_timeout_ms(10_000);
    assert_eq!(conn.call(7, &empty).error_code, E::InvalidGroupId.code());

    // SyncGroup and Heartbeat from strangers and stale generations.
    let sync = |member: &str, generation: i32| {
        SyncGroupRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_generation_id(generation)
            .with_member_id(s(member))
    };
    assert_eq!(
        conn.call(5, &sync("stranger", 1)).error_code,
        E::UnknownMemberId.code()
    );
    assert_eq!(
        conn.call(5, &sync(&me, 0)).error_code,
        E::IllegalGeneration.code()
    );
    let assignment = sync_group_request::SyncGroupRequestAssignment::default()
        .with_member_id(s(&me))
        .with_assignment(Bytes::from_static(b"all"));
    let synced = conn.call(5, &sync(&me, 1).with_assignments(vec![assignment]));
    assert_eq!(
        (synced.error_code, &synced.assignment[..]),
        (0, &b"all"[..])
    );
    let hb = |member: &str, generation: i32| {
        HeartbeatRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_generation_id(generation)
            .with_member_id(s(member))
    };
    assert_eq!(conn.call(4, &hb(&me, 1)).error_code, 0);
    assert_eq!(
        conn.call(4, &hb(&me, 7)).error_code,
        E::IllegalGeneration.code()
    );
    assert_eq!(
        conn.call(4, &hb("stranger", 1)).error_code,
        E::UnknownMemberId.code()
    );
    let other_group = HeartbeatRequest::default()
        .with_group_id(GroupId(s("nope")))
        .with_member_id(s(&me));
    assert_eq!(
        conn.call(4, &other_group).error_code,
        E::UnknownMemberId.code()
    );

    // ListGroups and DescribeGroups see it; an unknown group is Dead.
    let listed = conn.call(4, &ListGroupsRequest::default());
    let names: Vec<(String, String)> = listed
        .groups
        .iter()
        .map(|g| (g.group_id.to_string(), g.group_state.to_string()))
        .collect();
    assert_eq!(names, vec![("g".to_string(), "Stable".to_string())]);
    let described = conn.call(
        5,
        &DescribeGroupsRequest::default().with_groups(vec![GroupId(s("g")), GroupId(s("nope"))]),
    );
    assert_eq!(described.groups[0].group_state.to_string(), "Stable");
    assert_eq!(
        &described.groups[0].members[0].member_assignment[..],
        b"all"
    );
    assert_eq!(
        described.groups[0].members[0].client_id.to_string(),
        "floe-e2e"
    );
    assert_eq!(described.groups[1].group_state.to_string(), "Dead");

    // LeaveGroup: a stranger is refused per member, the member leaves.
    let leave = |member: &str| {
        LeaveGroupRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_members(vec![MemberIdentity::default().with_member_id(s(member))])
    };
    assert_eq!(
        conn.call(4, &leave("stranger")).members[0].error_code,
        E::UnknownMemberId.code()
    );
    assert_eq!(conn.call(4, &leave(&me)).members[0].error_code, 0);
    assert_eq!(
        conn.call(4, &hb(&me, 1)).error_code,
        E::UnknownMemberId.code()
    );
    let listed = conn.call(4, &ListGroupsRequest::default());
    assert_eq!(listed.groups[0].group_state.to_string(), "Empty");
}

/// A new group waits `--group-initial-rebalance-delay-ms` for more members;
/// only ids the coordinator gave out may join; a static member that comes
/// back gets a new id, keeps its assignment without a rebalance, and its old
/// id is fenced (KIP-345).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_groups_wait_for_members_and_static_members_fence_their_old_ids() {
    use bytes::Bytes;
    use floe_e2e::raw::Conn;
    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::ResponseError as E;

    let f = Floe::start(
        temp_dir("groups-static"),
        &["--group-initial-rebalance-delay-ms", "2000"],
    );
    let s = |x: &str| StrBytes::from_string(x.to_string());
    let join = |group: &str, member: &str, instance: Option<&str>| {
        JoinGroupRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_session_timeout_ms(10_000)
            .with_rebalance_timeout_ms(10_000)
            .with_member_id(s(member))
            .with_group_instance_id(instance.map(s))
            .with_protocol_type(s("consumer"))
            .with_protocols(vec![JoinGroupRequestProtocol::default()
                .with_name(s("range"))
                .with_metadata(Bytes::from_static(b"sub"))])
    };
    let (mut a, mut b) = (Conn::connect(&f.bootstrap()), Conn::connect(&f.bootstrap()));
    assert_eq!(
        a.call(7, &join("g", "made-up", None)).error_code,
        E::UnknownMemberId.code(),
        "an id the coordinator never gave out"
    );
    // Two members a moment apart land in the first generation together.
    let id_a = a.call(7, &join("g", "", None)).member_id.to_string();
    let id_b = b.call(7, &join("g", "", None)).member_id.to_string();
    a.send(7, &join("g", &id_a, None));
    std::thread::sleep(Duration::from_millis(200));
    b.send(7, &join("g", &id_b, None));
    let (ja, jb) = (a.recv::<JoinGroupRequest>(7), b.recv::<JoinGroupRequest>(7));
    assert_eq!((ja.error_code, jb.error_code), (0, 0));
    assert_eq!((ja.generation_id, jb.generation_id), (1, 1));
    assert_eq!(
        ja.members.len() + jb.members.len(),
        2,
        "the leader sees both"
    );

    // Static members: one leads, the other follows.
    a.send(7, &join("s", "", Some("i1")));
    std::thread::sleep(Duration::from_millis(200));
    b.send(7, &join("s", "", Some("i2")));
    let (ra, rb) = (a.recv::<JoinGroupRequest>(7), b.recv::<JoinGroupRequest>(7));
    assert_eq!((ra.generation_id, rb.generation_id), (1, 1));
    let generation = 1;
    let (mut lead, mut fol, lead_r, fol_r, lead_i, fol_i) = if ra.leader == ra.member_id {
        (a, b, ra, rb, "i1", "i2")
    } else {
        (b, a, rb, ra, "i2", "i1")
    };
    let leader = lead_r.member_id.to_string();
    let follower = fol_r.member_id.to_string();
    let sync = |member: &str, instance: &str, assignments: &[(String, Bytes)]| {
        SyncGroupRequest::default()
            .with_group_id(GroupId(s("s")))
            .with_generation_id(generation)
            .with_member_id(s(member))
            .with_group_instance_id(Some(s(instance)))
            .with_assignments(
                assignments
                    .iter()
                    .map(|(m, a)| {
                        sync_group_request::SyncGroupRequestAssignment::default()
                            .with_member_id(s(m))
                            .with_assignment(a.clone())
                    })
                    .collect(),
            )
    };
    let given = vec![
        (leader.clone(), Bytes::from_static(b"p0")),
        (follower.clone(), Bytes::from_static(b"p1")),
    ];
    fol.send(3, &sync(&follower, fol_i, &[]));
    assert_eq!(lead.call(3, &sync(&leader, lead_i, &given)).error_code, 0);
    assert_eq!(fol.recv::<SyncGroupRequest>(3).assignment, given[1].1);

    // The follower restarts: a new id, the same generation, no rebalance.
    let back = fol.call(7, &join("s", "", Some(fol_i)));
    let renewed = back.member_id.to_string();
    assert_ne!(renewed, follower);
    assert_eq!(
        (back.error_code, back.generation_id, back.leader.to_string()),
        (0, generation, leader.clone())
    );
    let again = fol.call(3, &sync(&renewed, fol_i, &[]));
    assert_eq!(
        (again.error_code, again.assignment),
        (0, given[1].1.clone())
    );
    let hb = |member: &str, instance: Option<&str>| {
        HeartbeatRequest::default()
            .with_group_id(GroupId(s("s")))
            .with_generation_id(generation)
            .with_member_id(s(member))
            .with_group_instance_id(instance.map(s))
    };
    assert_eq!(
        lead.call(4, &hb(&leader, Some(lead_i))).error_code,
        0,
        "no rebalance"
    );
    assert_eq!(fol.call(4, &hb(&renewed, Some(fol_i))).error_code, 0);
    assert_eq!(
        fol.call(4, &hb(&follower, Some(fol_i))).error_code,
        E::FencedInstanceId.code(),
        "the old id, naming its instance"
    );
    assert_eq!(
        fol.call(4, &hb(&follower, None)).error_code,
        E::UnknownMemberId.code()
    );
    assert_eq!(
        fol.call(7, &join("s", &follower, Some(fol_i))).error_code,
        E::FencedInstanceId.code()
    );
    // The coordinator restarts: the new id is what it remembers.
    drop((lead, fol));
    let mut f = f;
    f.restart();
    let mut c = Conn::connect(&f.bootstrap());
    assert_eq!(c.call(4, &hb(&renewed, Some(fol_i))).error_code, 0);
    assert_eq!(
        c.call(4, &hb(&follower, Some(fol_i))).error_code,
        E::FencedInstanceId.code()
    );
}

/// DeleteGroups and OffsetDelete: only what no member uses goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_groups_and_offsets_spares_what_is_in_use() {
    use bytes::{BufMut, Bytes, BytesMut};
    use floe_e2e::raw::{topic_name, Conn};
    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::offset_delete_request::{
        OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
    };
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::{Encodable, StrBytes};
    use kafka_protocol::ResponseError as E;

    let f = Floe::start(temp_dir("groups-delete"), &[]);
    let bootstrap = f.bootstrap();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("admin");
    for t in ["used", "unused"] {
        let nt = NewTopic::new(t, 2, TopicReplication::Fixed(1));
        assert!(admin
            .create_topics([&nt], &AdminOptions::new())
            .await
            .expect("create")[0]
            .is_ok());
    }
    let mut conn = Conn::connect(&bootstrap);
    let s = |x: &str| StrBytes::from_string(x.to_string());
    let gid = |g: &str| GroupId(s(g));
    let commit = |group: &str| {
        let topics = ["used", "unused"].map(|t| {
            OffsetCommitRequestTopic::default()
                .with_name(topic_name(t))
                .with_partitions(
                    (0..2)
                        .map(|p| {
                            OffsetCommitRequestPartition::default()
                                .with_partition_index(p)
                                .with_committed_offset(5)
                        })
                        .collect(),
                )
        });
        OffsetCommitRequest::default()
            .with_group_id(gid(group))
            .with_generation_id_or_member_epoch(-1)
            .with_topics(topics.to_vec())
    };
    let committed = |conn: &mut Conn, group: &str| -> Vec<(String, i32)> {
        let r = conn.call(
            7,
            &OffsetFetchRequest::default()
                .with_group_id(gid(group))
                .with_topics(None),
        );
        // In key order (topic id): sort by name.
        let mut got: Vec<(String, i32)> = r
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| (t.name.to_string(), p.partition_index))
            })
            .collect();
        got.sort();
        got
    };
    for g in ["idle", "busy"] {
        assert!(conn
            .call(8, &commit(g))
            .topics
            .iter()
            .all(|t| t.partitions.iter().all(|p| p.error_code == 0)));
    }

    // Groups of committed offsets alone are listed and described as Empty
    // (Kafka), not left out or Dead.
    let listed = conn.call(4, &ListGroupsRequest::default());
    let listed: Vec<(String, String, String)> = listed
        .groups
        .iter()
        .map(|g| {
            let state = g.group_state.to_string();
            (g.group_id.to_string(), g.protocol_type.to_string(), state)
        })
        .collect();
    let empty = |g: &str| (g.to_string(), String::new(), "Empty".to_string());
    assert_eq!(listed, vec![empty("busy"), empty("idle")]);
    let described = conn.call(
        5,
        &DescribeGroupsRequest::default().with_groups(vec![gid("idle")]),
    );
    let d = &described.groups[0];
    assert_eq!(
        (d.error_code, d.group_state.as_str(), d.members.len()),
        (0, "Empty", 0)
    );

    // A member of "busy" subscribes to "used" (consumer protocol, v1).
    let mut sub = BytesMut::new();
    sub.put_i16(1);
    ConsumerProtocolSubscription::default()
        .with_topics(vec![s("used")])
        .encode(&mut sub, 1)
        .expect("subscription");
    let join = |member: &str| {
        JoinGroupRequest::default()
            .with_group_id(gid("busy"))
            .with_session_timeout_ms(30_000)
            .with_rebalance_timeout_ms(10_000)
            .with_member_id(s(member))
            .with_protocol_type(s("consumer"))
            .with_protocols(vec![JoinGroupRequestProtocol::default()
                .with_name(s("range"))
                .with_metadata(Bytes::from(sub.to_vec()))])
    };
    let me = conn.call(7, &join("")).member_id.to_string();
    assert_eq!(conn.call(7, &join(&me)).error_code, 0);

    // OffsetDelete: "used" stays while subscribed; "unused" goes.
    let delete = |group: &str, topics: &[&str]| {
        let topics = topics
            .iter()
            .map(|t| {
                OffsetDeleteRequestTopic::default()
                    .with_name(topic_name(t))
                    .with_partitions(vec![
                        OffsetDeleteRequestPartition::default().with_partition_index(0)
                    ])
            })
            .collect();
        OffsetDeleteRequest::default()
            .with_group_id(gid(group))
            .with_topics(topics)
    };
    let r = conn.call(0, &delete("busy", &["used", "unused"]));
    let codes: Vec<i16> = r
        .topics
        .iter()
        .map(|t| t.partitions[0].error_code)
        .collect();
    assert_eq!(
        (r.error_code, codes),
        (0, vec![E::GroupSubscribedToTopic.code(), 0])
    );
    assert_eq!(
        committed(&mut conn, "busy"),
        vec![("unused".into(), 1), ("used".into(), 0), ("used".into(), 1)]
    );
    assert_eq!(
        conn.call(0, &delete("nobody", &["used"])).error_code,
        E::GroupIdNotFound.code()
    );
    // An empty group's offsets go whatever the topic.
    assert_eq!(
        conn.call(0, &delete("idle", &["used"])).topics[0].partitions[0].error_code,
        0
    );

    // DeleteGroups: a group with members stays; unknown ones are not found.
    let del = |names: &[&str]| {
        DeleteGroupsRequest::default().with_groups_names(names.iter().map(|n| gid(n)).collect())
    };
    let r = conn.call(2, &del(&["idle", "busy", "nobody"]));
    let codes: Vec<i16> = r.results.iter().map(|g| g.error_code).collect();
    assert_eq!(
        codes,
        vec![0, E::NonEmptyGroup.code(), E::GroupIdNotFound.code()]
    );
    assert!(
        committed(&mut conn, "idle").is_empty(),
        "a deleted group has no offsets"
    );
    // Once its member leaves, "busy" can go too.
    let leave = LeaveGroupRequest::default()
        .with_group_id(gid("busy"))
        .with_members(vec![
            leave_group_request::MemberIdentity::default().with_member_id(s(&me))
        ]);
    assert_eq!(conn.call(4, &leave).members[0].error_code, 0);
    assert_eq!(conn.call(2, &del(&["busy"])).results[0].error_code, 0);
    assert!(committed(&mut conn, "busy").is_empty());
    assert!(conn
        .call(4, &ListGroupsRequest::default())
        .groups
        .is_empty());
}

/// KIP-345: a static member (group.instance.id) that restarts within its
/// session gets its partitions back without a rebalance of the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_member_restarts_without_a_rebalance() {
    use rdkafka::consumer::{ConsumerContext, Rebalance};
    use rdkafka::ClientContext;
    use std::sync::atomic::AtomicUsize;

    #[derive(Default, Clone)]
    struct Count(Arc<AtomicUsize>);
    impl ClientContext for Count {}
    impl ConsumerContext for Count {
        fn pre_rebalance(&self, _: &BaseConsumer<Self>, _: &Rebalance<'_>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
    let f = Floe::start(temp_dir("groups-static"), &[]);
    let bootstrap = f.bootstrap();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("admin");
    let t = NewTopic::new("s", 4, TopicReplication::Fixed(1));
    assert!(admin
        .create_topics([&t], &AdminOptions::new())
        .await
        .expect("create")[0]
        .is_ok());

    let member = |instance: &str, count: Count| -> BaseConsumer<Count> {
        let c: BaseConsumer<Count> = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "static")
            .set("group.instance.id", instance)
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "300")
            .create_with_context(count)
            .expect("consumer");
        c.subscribe(&["s"]).expect("subscribe");
        c
    };
    let assigned = |c: &BaseConsumer<Count>| -> Vec<i32> {
        let mut p: Vec<i32> = c
            .assignment()
            .expect("assignment")
            .elements()
            .iter()
            .map(|e| e.partition())
            .collect();
        p.sort_unstable();
        p
    };
    // Poll both until the four partitions are split between them.
    let settle = |cs: &[&BaseConsumer<Count>]| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            for c in cs {
                let _ = c.poll(Duration::from_millis(50));
            }
            let n: usize = cs.iter().map(|c| assigned(c).len()).sum();
            if n == 4 && cs.iter().all(|c| !assigned(c).is_empty()) {
                return;
            }
        }
        panic!("the group never settled");
    };
    // "a" first, so it leads; then "b".
    let (ca, cb) = (Count::default(), Count::default());
    let a = member("a", ca.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    while assigned(&a).len() < 4 && Instant::now() < deadline {
        let _ = a.poll(Duration::from_millis(50));
    }
    let b = member("b", cb.clone());
    settle(&[&a, &b]);
    let (a_had, b_had) = (assigned(&a), assigned(&b));
    let a_rebalances = ca.0.load(Ordering::Relaxed);

    // "b" goes away (a static member sends no LeaveGroup) and comes back.
    drop(b);
    let b = member("b", Count::default());
    settle(&[&a, &b]);
    for _ in 0..20 {
        let _ = a.poll(Duration::from_millis(50));
        let _ = b.poll(Duration::from_millis(50));
    }
    assert_eq!(assigned(&b), b_had, "b gets its partitions back");
    assert_eq!(assigned(&a), a_had);
    assert_eq!(
        ca.0.load(Ordering::Relaxed),
        a_rebalances,
        "a saw no rebalance"
    );
}
