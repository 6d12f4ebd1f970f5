//! The one place worker errors become Kafka error codes.

use floe_common::batch::BatchError;
use floe_worker::{GroupError, TxnError, WorkerError};
use kafka_protocol::ResponseError as E;

pub fn code(e: &WorkerError) -> i16 {
    match e {
        WorkerError::UnknownTopicOrPartition | WorkerError::UnknownTopic(_) => {
            E::UnknownTopicOrPartition
        }
        WorkerError::TopicExists(_) => E::TopicAlreadyExists,
        WorkerError::InvalidTopic(_) => E::InvalidTopicException,
        WorkerError::InvalidPartitions(_) => E::InvalidPartitions,
        WorkerError::InvalidConfig(_) => E::InvalidConfig,
        WorkerError::MessageTooLarge(_) => E::MessageTooLarge,
        WorkerError::InvalidRecord(_) => E::InvalidRecord,
        WorkerError::OffsetOutOfRange { .. } => E::OffsetOutOfRange,
        WorkerError::InvalidGroupId => E::InvalidGroupId,
        WorkerError::Group(g) => return group_code(g),
        WorkerError::OffsetMetadataTooLarge(_) => E::OffsetMetadataTooLarge,
        WorkerError::OutOfOrderSequence(_) => E::OutOfOrderSequenceNumber,
        WorkerError::InvalidProducerEpoch(_) => E::InvalidProducerEpoch,
        WorkerError::UnknownProducerId(_) => E::UnknownProducerId,
        WorkerError::OperationNotAttempted => E::OperationNotAttempted,
        WorkerError::UnstableOffsetCommit => E::UnstableOffsetCommit,
        WorkerError::PolicyViolation(_) => E::PolicyViolation,
        WorkerError::InvalidPlugin(_) => E::InvalidRequest,
        WorkerError::UnknownTransform(_) | WorkerError::UnknownConnector(_) => E::ResourceNotFound,
        WorkerError::Txn(t) => match t {
            TxnError::InvalidProducerIdMapping => E::InvalidProducerIdMapping,
            TxnError::ProducerFenced => E::ProducerFenced,
            TxnError::InvalidTxnState => E::InvalidTxnState,
            TxnError::InvalidTransactionTimeout => E::InvalidTransactionTimeout,
            TxnError::TransactionalIdNotFound => E::TransactionalIdNotFound,
        },
        // Retriable: the client refreshes metadata and tries again.
        WorkerError::TopicAuthorizationFailed => E::TopicAuthorizationFailed,
        WorkerError::GroupAuthorizationFailed => E::GroupAuthorizationFailed,
        WorkerError::Unavailable(_) | WorkerError::Uncertain(_) => E::NotLeaderOrFollower,
    }
    .code()
}

/// For the transaction coordinator's requests (InitProducerId, the txn
/// calls): a shard that is loading or moving is COORDINATOR_LOAD_IN_PROGRESS,
/// which clients retry at the same coordinator; NOT_LEADER_OR_FOLLOWER is
/// not among those requests' errors, and Java's producer treats it as fatal.
pub fn coordinator_code(e: &WorkerError) -> i16 {
    match e {
        WorkerError::Unavailable(_) | WorkerError::Uncertain(_) => {
            E::CoordinatorLoadInProgress.code()
        }
        other => code(other),
    }
}

/// PRODUCER_FENCED came with KIP-588 (InitProducerId v4, AddPartitionsToTxn,
/// AddOffsetsToTxn and EndTxn v2): older versions get INVALID_PRODUCER_EPOCH
/// for it, as from Kafka.
pub fn fenced_for(code: i16, version: i16, fenced_since: i16) -> i16 {
    if code == E::ProducerFenced.code() && version < fenced_since {
        return E::InvalidProducerEpoch.code();
    }
    code
}

pub fn group_code(e: &GroupError) -> i16 {
    match e {
        GroupError::UnknownMemberId => E::UnknownMemberId,
        GroupError::IllegalGeneration => E::IllegalGeneration,
        GroupError::RebalanceInProgress => E::RebalanceInProgress,
        GroupError::MemberIdRequired(_) => E::MemberIdRequired,
        GroupError::InconsistentGroupProtocol => E::InconsistentGroupProtocol,
        GroupError::FencedInstanceId => E::FencedInstanceId,
        GroupError::InvalidSessionTimeout => E::InvalidSessionTimeout,
        GroupError::CoordinatorNotAvailable => E::CoordinatorNotAvailable,
        GroupError::GroupIdNotFound => E::GroupIdNotFound,
        GroupError::NonEmptyGroup => E::NonEmptyGroup,
        GroupError::GroupSubscribedToTopic => E::GroupSubscribedToTopic,
    }
    .code()
}

pub fn batch_code(e: &BatchError) -> i16 {
    match e {
        BatchError::Magic(_) => E::InvalidRecord,
        BatchError::Empty | BatchError::Truncated | BatchError::Crc | BatchError::Invalid(_) => {
            E::CorruptMessage
        }
    }
    .code()
}

/// A message for the response, where the error has more to say than its code.
pub fn message(e: &WorkerError) -> Option<kafka_protocol::protocol::StrBytes> {
    match e {
        WorkerError::UnknownTopicOrPartition => None,
        other => Some(other.to_string().into()),
    }
}
