//! CreateTopics, DeleteTopics, CreatePartitions and the config APIs. Each
//! change answers only once it is durable in the shard's log.

use std::collections::BTreeMap;

use floe_worker::catalog::{Spec, CONFIGS};
use floe_worker::{ConfigChange, NewTopic, Shards, TopicMeta, WorkerError};
use kafka_protocol::messages::create_partitions_request::CreatePartitionsRequest;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_request::CreateTopicsRequest;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::delete_topics_request::DeleteTopicsRequest;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsRequest;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, CreatePartitionsResponse, CreateTopicsResponse,
    DeleteRecordsRequest, DeleteRecordsResponse, DeleteTopicsResponse, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::{errors, Cx};

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
const SOURCE_TOPIC: i8 = 1;
const SOURCE_DEFAULT: i8 = 5;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

pub async fn create_topics<W: Shards>(
    gw: &Cx<W>,
    req: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    let mut results = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let res = CreatableTopicResult::default().with_name(t.name.clone());
        let partitions = match (t.num_partitions, t.assignments.len()) {
            (-1, 0) => gw.settings.default_partitions as i64,
            (-1, n) => n as i64,
            (n, _) => n as i64,
        };
        // Durability lives in the object store, so every replication factor
        // is served by one copy; nonsense values are still refused.
        if t.replication_factor == 0 || t.replication_factor < -1 {
            let msg = format!("replication factor {} is invalid", t.replication_factor);
            results.push(
                res.with_error_code(ResponseError::InvalidReplicationFactor.code())
                    .with_error_message(Some(s(&msg))),
            );
            continue;
        }
        let configs: BTreeMap<String, String> = t
            .configs
            .iter()
            .filter_map(|c| Some((c.name.to_string(), c.value.as_ref()?.to_string())))
            .collect();
        let topic = NewTopic {
            name: t.name.0.to_string(),
            partitions: usize::try_from(partitions).unwrap_or(0),
            configs,
            validate_only: req.validate_only,
        };
        results.push(match gw.worker.create_topic(&gw.tenant, topic).await {
            Ok(m) => {
                let res = res
                    .with_topic_id(uuid::Uuid::from_u128(m.id))
                    .with_num_partitions(m.streams.len().max(partitions as usize) as i32)
                    .with_replication_factor(1);
                if version >= 5 {
                    res.with_configs(Some(topic_configs(&m)))
                } else {
                    res
                }
            }
            Err(e) => res
                .with_error_code(errors::code(&e))
                .with_error_message(errors::message(&e)),
        });
    }
    CreateTopicsResponse::default().with_topics(results)
}

fn topic_configs(m: &TopicMeta) -> Vec<CreatableTopicConfigs> {
    CONFIGS
        .iter()
        .map(|c| {
            let (v, source) = value(m, c);
            CreatableTopicConfigs::default()
                .with_name(s(c.name))
                .with_value(Some(s(v)))
                .with_config_source(source)
        })
        .collect()
}

fn value<'a>(m: &'a TopicMeta, c: &'static Spec) -> (&'a str, i8) {
    match m.configs.get(c.name) {
        Some(v) => (v.as_str(), SOURCE_TOPIC),
        None => (c.default, SOURCE_DEFAULT),
    }
}

pub async fn delete_topics<W: Shards>(
    gw: &Cx<W>,
    req: DeleteTopicsRequest,
) -> DeleteTopicsResponse {
    // v0-5 name topics in `topic_names`; v6 in `topics`, by name or by id.
    let mut wanted: Vec<(Option<String>, uuid::Uuid)> = req
        .topic_names
        .iter()
        .map(|n| (Some(n.0.to_string()), uuid::Uuid::nil()))
        .collect();
    wanted.extend(
        req.topics
            .iter()
            .map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.topic_id)),
    );
    let known = gw.worker.topics(&gw.tenant).await.unwrap_or_default();
    let mut responses = Vec::with_capacity(wanted.len());
    for (name, id) in wanted {
        let name = name.or_else(|| {
            known
                .iter()
                .find(|m| m.id == id.as_u128())
                .map(|m| m.name.clone())
        });
        let res = DeletableTopicResult::default().with_topic_id(id);
        let Some(name) = name else {
            responses.push(res.with_error_code(ResponseError::UnknownTopicId.code()));
            continue;
        };
        let res = res.with_name(Some(TopicName(s(&name))));
        responses.push(match gw.worker.delete_topic(&gw.tenant, &name).await {
            Ok(m) => res.with_topic_id(uuid::Uuid::from_u128(m.id)),
            Err(e) => res
                .with_error_code(errors::code(&e))
                .with_error_message(errors::message(&e)),
        });
    }
    DeleteTopicsResponse::default().with_responses(responses)
}

pub async fn create_partitions<W: Shards>(
    gw: &Cx<W>,
    req: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let mut results = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let res = CreatePartitionsTopicResult::default().with_name(t.name.clone());
        let total = usize::try_from(t.count).unwrap_or(0);
        let out = gw
            .worker
            .create_partitions(&gw.tenant, &t.name.0, total, req.validate_only)
            .await;
        results.push(match out {
            Ok(()) => res,
            Err(e) => res
                .with_error_code(errors::code(&e))
                .with_error_message(errors::message(&e)),
        });
    }
    CreatePartitionsResponse::default().with_results(results)
}

/// DeleteRecords: each partition's log start moves up to the given offset
/// (-1: the high watermark), durably, before the answer; the objects that held
/// only records below it are deleted later by storage.
pub async fn delete_records<W: Shards>(
    gw: &Cx<W>,
    req: DeleteRecordsRequest,
) -> DeleteRecordsResponse {
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let res =
                DeleteRecordsPartitionResult::default().with_partition_index(p.partition_index);
            let out = gw
                .worker
                .delete_records(&gw.tenant, &t.name.0, p.partition_index, p.offset)
                .await;
            partitions.push(match out {
                Ok(low) => res.with_low_watermark(low),
                Err(e) => res.with_low_watermark(-1).with_error_code(errors::code(&e)),
            });
        }
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    DeleteRecordsResponse::default().with_topics(topics)
}

pub async fn describe_configs<W: Shards>(
    gw: &Cx<W>,
    req: DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    let known = gw.worker.topics(&gw.tenant).await;
    let mut results = Vec::with_capacity(req.resources.len());
    for r in req.resources {
        let res = DescribeConfigsResult::default()
            .with_resource_type(r.resource_type)
            .with_resource_name(r.resource_name.clone());
        let res = match (r.resource_type, &known) {
            // Brokers have no configs a client may see or change.
            (RESOURCE_BROKER, _) => res,
            (RESOURCE_TOPIC, Err(e)) => res
                .with_error_code(errors::code(e))
                .with_error_message(errors::message(e)),
            (RESOURCE_TOPIC, Ok(all)) => match all
                .iter()
                .find(|m| m.name.as_str() == r.resource_name.as_str())
            {
                None => res.with_error_code(ResponseError::UnknownTopicOrPartition.code()),
                Some(m) => res.with_configs(describe(
                    m,
                    r.configuration_keys.as_deref(),
                    req.include_documentation,
                )),
            },
            _ => res
                .with_error_code(ResponseError::InvalidRequest.code())
                .with_error_message(Some(s("only topic and broker resources are supported"))),
        };
        results.push(res);
    }
    DescribeConfigsResponse::default().with_results(results)
}

fn describe(
    m: &TopicMeta,
    keys: Option<&[StrBytes]>,
    documentation: bool,
) -> Vec<DescribeConfigsResourceResult> {
    CONFIGS
        .iter()
        .filter(|c| keys.is_none_or(|ks| ks.iter().any(|x| x.as_str() == c.name)))
        .map(|c| {
            let (v, source) = value(m, c);
            // Says which configs are kept but have no effect here.
            let doc = documentation.then(|| match c.inert {
                None => s("applied by Floe as Kafka applies it"),
                Some(why) => s(&format!("accepted and kept, no effect in Floe: {why}")),
            });
            DescribeConfigsResourceResult::default()
                .with_name(s(c.name))
                .with_value(Some(s(v)))
                .with_config_source(source)
                .with_config_type(c.kind as i8)
                .with_documentation(doc)
        })
        .collect()
}

/// Resource-level outcome shared by both alter APIs.
async fn alter<W: Shards>(
    gw: &Cx<W>,
    resource_type: i8,
    name: &StrBytes,
    change: Result<ConfigChange, WorkerError>,
    validate_only: bool,
) -> (i16, Option<StrBytes>) {
    if resource_type != RESOURCE_TOPIC {
        return (
            ResponseError::InvalidRequest.code(),
            Some(s("only topic configs can be altered")),
        );
    }
    let result = match change {
        Ok(c) => {
            gw.worker
                .alter_configs(&gw.tenant, name.as_str(), c, validate_only)
                .await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => (0, None),
        Err(e) => (errors::code(&e), errors::message(&e)),
    }
}

pub async fn alter_configs<W: Shards>(
    gw: &Cx<W>,
    req: AlterConfigsRequest,
) -> AlterConfigsResponse {
    use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
    let mut responses = Vec::with_capacity(req.resources.len());
    for r in req.resources {
        let all = r
            .configs
            .iter()
            .filter_map(|c| Some((c.name.to_string(), c.value.as_ref()?.to_string())));
        let change = Ok(ConfigChange::Replace(all.collect()));
        let (code, msg) = alter(
            gw,
            r.resource_type,
            &r.resource_name,
            change,
            req.validate_only,
        )
        .await;
        responses.push(
            AlterConfigsResourceResponse::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name)
                .with_error_code(code)
                .with_error_message(msg),
        );
    }
    AlterConfigsResponse::default().with_responses(responses)
}

pub async fn incremental_alter_configs<W: Shards>(
    gw: &Cx<W>,
    req: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
    let mut responses = Vec::with_capacity(req.resources.len());
    for r in req.resources {
        let change = r
            .configs
            .iter()
            .map(|c| {
                let name = c.name.to_string();
                match (c.config_operation, &c.value) {
                    (0, Some(v)) => Ok((name, Some(v.to_string()))), // SET
                    (1, _) => Ok((name, None)),                        // DELETE: back to the default
                    (0, None) => Err(WorkerError::InvalidConfig(format!("SET of {name} needs a value"))),
                    (op, _) => Err(WorkerError::InvalidConfig(format!(
                        "operation {op} on {name} is not supported; the supported configs are scalars"
                    ))),
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .map(ConfigChange::Incremental);
        let (code, msg) = alter(
            gw,
            r.resource_type,
            &r.resource_name,
            change,
            req.validate_only,
        )
        .await;
        responses.push(
            AlterConfigsResourceResponse::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name)
                .with_error_code(code)
                .with_error_message(msg),
        );
    }
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_types_every_config_and_says_which_have_no_effect() {
        let mut meta = TopicMeta {
            name: "t".into(),
            id: 1,
            streams: vec![1],
            configs: BTreeMap::new(),
        };
        meta.configs
            .insert("min.insync.replicas".into(), "2".into());
        let all = describe(&meta, None, true);
        assert_eq!(all.len(), CONFIGS.len());
        let get = |name: &str| {
            all.iter()
                .find(|c| c.name.as_str() == name)
                .expect("described")
        };
        let isr = get("min.insync.replicas");
        assert_eq!(isr.value.as_deref(), Some("2"));
        assert_eq!((isr.config_source, isr.config_type), (SOURCE_TOPIC, 3));
        let doc = isr.documentation.as_deref().expect("asked for");
        assert!(
            doc.starts_with("accepted and kept, no effect in Floe"),
            "{doc}"
        );
        let retention = get("retention.ms");
        assert_eq!(
            (retention.config_source, retention.config_type),
            (SOURCE_DEFAULT, 5)
        );
        assert_eq!(
            retention.documentation.as_deref(),
            Some("applied by Floe as Kafka applies it")
        );
        let some = describe(&meta, Some(&[s("segment.bytes")]), false);
        assert_eq!(some.len(), 1);
        assert_eq!(some[0].value.as_deref(), Some("1073741824"));
        assert_eq!(some[0].documentation, None);
    }
}
