//! What Floe implements, advertised exactly (ApiVersions).
//!
//! Caps, and why: Produce and Fetch stop at v12 and Metadata at v12 because
//! the next versions address topics by id only (KIP-516); ListOffsets stops at
//! v7 (v8+ adds tiered-storage offsets); ApiVersions stops at v3.
//! FindCoordinator stops at v4 (v5+ is for KIP-890 and share groups),
//! OffsetCommit at v8 (v9+ speak KIP-848's member epochs) and OffsetFetch at
//! v7 (v8 batches groups, KIP-709). JoinGroup stops at v7 (v8 adds a reason, v9 KIP-814),
//! LeaveGroup at v4, ListGroups at v4 (v5 filters by group type).
//! AddPartitionsToTxn stops at v3 (v4+ batches transactions for brokers),
//! AddOffsetsToTxn, TxnOffsetCommit and EndTxn at v3 (v4 adds
//! TRANSACTION_ABORTABLE, v5 KIP-890's per-transaction epochs);
//! ListTransactions at v1 (v2 filters ids by pattern).
//! OffsetForLeaderEpoch is not advertised yet.

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};
use kafka_protocol::ResponseError;

/// (API, lowest, highest) version served.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 12),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 7),
    (ApiKey::JoinGroup, 0, 7),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 4),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::InitProducerId, 0, 5),
    (ApiKey::DescribeProducers, 0, 0),
    (ApiKey::AddPartitionsToTxn, 0, 3),
    (ApiKey::AddOffsetsToTxn, 0, 3),
    (ApiKey::TxnOffsetCommit, 0, 3),
    (ApiKey::EndTxn, 0, 3),
    (ApiKey::ListTransactions, 0, 1),
    (ApiKey::DescribeTransactions, 0, 0),
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
    (ApiKey::DescribeAcls, 1, 3),
    (ApiKey::CreateAcls, 1, 3),
    (ApiKey::DeleteAcls, 1, 3),
];

pub fn supported(api: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(k, _, _)| *k == api)
        .map(|&(_, lo, hi)| (lo, hi))
}

fn api_keys() -> Vec<ApiVersion> {
    SUPPORTED
        .iter()
        .map(|&(k, lo, hi)| {
            ApiVersion::default()
                .with_api_key(k as i16)
                .with_min_version(lo)
                .with_max_version(hi)
        })
        .collect()
}

pub fn response() -> ApiVersionsResponse {
    ApiVersionsResponse::default().with_api_keys(api_keys())
}

/// For an ApiVersions request newer than we serve: encoded as v0, so the
/// client can read it and retry with a version from the list.
pub fn unsupported_version_response() -> kafka_protocol::messages::ResponseKind {
    let body = ApiVersionsResponse::default()
        .with_error_code(ResponseError::UnsupportedVersion.code())
        .with_api_keys(api_keys());
    kafka_protocol::messages::ResponseKind::ApiVersions(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_versions_are_within_the_codec() {
        for &(k, lo, hi) in SUPPORTED {
            let r = k.valid_versions();
            assert!(
                lo <= hi && lo >= r.min && hi <= r.max,
                "{k:?} {lo}..={hi} outside {r:?}"
            );
        }
    }
}
