//! Metadata and DescribeCluster. The brokers are the gateways: this one as
//! node 0 in dev mode, every live gateway in cluster mode, with partition
//! leadership spread among them (`floe_cluster::gateways`). Any gateway
//! serves any partition. A partition's leader epoch is the shard owner's
//! epoch, which is durable and only grows, so clients never see it go
//! backwards.

use floe_worker::{NewTopic, Shards, TopicMeta, WorkerError};
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::metadata_request::MetadataRequest;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, DescribeClusterResponse, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::{errors, Cx};
use floe_tenants::acl::Operation;

pub fn cluster_id<W>(gw: &Cx<W>) -> StrBytes {
    StrBytes::from_string(crate::cluster_id(&gw.tenant))
}

pub async fn metadata<W: Shards>(
    gw: &Cx<W>,
    req: MetadataRequest,
    version: i16,
) -> MetadataResponse {
    let tenant = &gw.tenant;
    let epoch = gw.worker.leader_epoch(tenant).await;
    let existing = gw.worker.topics(tenant).await;
    let brokers = gw
        .brokers()
        .into_iter()
        .map(|b| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(b.node_id))
                .with_host(StrBytes::from_string(b.host))
                .with_port(b.port)
        })
        .collect();
    let resp = MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(cluster_id(gw)))
        .with_controller_id(BrokerId(gw.node_id()));
    let (epoch, existing) = match (epoch, existing) {
        (Ok(e), Ok(t)) => (e, t),
        (Err(e), _) | (_, Err(e)) => {
            // Name each requested topic with the (retriable) error.
            let names = req
                .topics
                .unwrap_or_default()
                .into_iter()
                .filter_map(|t| t.name);
            let topics = names.map(|n| error_topic(n, &e)).collect();
            return resp.with_topics(topics);
        }
    };
    // v0: an empty list means all topics; v1+: null means all.
    let all = match &req.topics {
        None => true,
        Some(t) => t.is_empty() && version == 0,
    };
    let topics = if all {
        existing
            .iter()
            .map(|t| topic_response(gw, t, epoch))
            .collect()
    } else {
        let auto = gw.settings.auto_create_topics && (version < 4 || req.allow_auto_topic_creation);
        let mut out = Vec::new();
        for t in req.topics.unwrap_or_default() {
            let found = match &t.name {
                Some(n) => existing.iter().find(|m| m.name.as_str() == n.0.as_str()),
                None => existing.iter().find(|m| m.id == t.topic_id.as_u128()),
            };
            out.push(match (found, t.name) {
                (Some(m), _) => topic_response(gw, m, epoch),
                (None, Some(name)) if auto => auto_create(gw, name, epoch).await,
                // As Kafka: a topic the key may not describe is not
                // authorized, whether it exists or not.
                (None, Some(name)) => match gw.worker.topic(&name.0, Operation::Describe) {
                    Ok(()) => error_topic(name, &WorkerError::UnknownTopicOrPartition),
                    Err(e) => error_topic(name, &e),
                },
                (None, None) => MetadataResponseTopic::default()
                    .with_topic_id(t.topic_id)
                    .with_error_code(ResponseError::UnknownTopicId.code()),
            });
        }
        out
    };
    resp.with_topics(topics)
}

async fn auto_create<W: Shards>(gw: &Cx<W>, name: TopicName, epoch: i32) -> MetadataResponseTopic {
    let topic = NewTopic {
        name: name.0.to_string(),
        partitions: gw.settings.default_partitions as usize,
        configs: Default::default(),
        validate_only: false,
    };
    match gw.worker.create_topic(&gw.tenant, topic).await {
        Ok(m) => topic_response(gw, &m, epoch),
        // Another connection created it first.
        Err(WorkerError::TopicExists(_)) => match gw.worker.topics(&gw.tenant).await {
            Ok(all) => match all.iter().find(|m| m.name.as_str() == name.0.as_str()) {
                Some(m) => topic_response(gw, m, epoch),
                None => error_topic(name, &WorkerError::UnknownTopicOrPartition),
            },
            Err(e) => error_topic(name, &e),
        },
        Err(e) => error_topic(name, &e),
    }
}

fn error_topic(name: TopicName, e: &WorkerError) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_name(Some(name))
        .with_error_code(errors::code(e))
}

fn topic_response<W>(gw: &Cx<W>, t: &TopicMeta, epoch: i32) -> MetadataResponseTopic {
    let partitions = (0..t.streams.len() as i32)
        .map(|p| {
            let leader = BrokerId(gw.leader(&format!("{}/{}/{p}", gw.tenant, t.name)));
            MetadataResponsePartition::default()
                .with_partition_index(p)
                .with_leader_id(leader)
                .with_leader_epoch(epoch)
                .with_replica_nodes(vec![leader])
                .with_isr_nodes(vec![leader])
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(t.name.clone()))))
        .with_topic_id(uuid::Uuid::from_u128(t.id))
        .with_partitions(partitions)
}

pub fn describe_cluster<W>(gw: &Cx<W>) -> DescribeClusterResponse {
    let brokers = gw
        .brokers()
        .into_iter()
        .map(|b| {
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(b.node_id))
                .with_host(StrBytes::from_string(b.host))
                .with_port(b.port)
        })
        .collect();
    DescribeClusterResponse::default()
        .with_cluster_id(cluster_id(gw))
        .with_controller_id(BrokerId(gw.node_id()))
        .with_brokers(brokers)
}
