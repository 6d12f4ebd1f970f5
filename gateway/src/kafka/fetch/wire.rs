//! The Fetch response, v4 to v12, encoded as chunks: the fields go into one
//! small buffer, and each stored batch is a chunk of its own, shared with the
//! read cache. The bytes are the codec's to the byte (tested below).

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::protocol::StrBytes;

/// A Fetch response before encoding.
pub struct Response {
    /// KIP-219: how long the client's connection is muted for its quota.
    pub throttle_time_ms: i32,
    pub error_code: i16,
    pub topics: Vec<Topic>,
}

pub struct Topic {
    pub name: StrBytes,
    pub partitions: Vec<Partition>,
}

pub struct Partition {
    pub index: i32,
    pub error_code: i16,
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    /// Aborted transactions among the records, as (producer id, first
    /// offset): read_committed clients drop their records.
    pub aborted: Vec<(i64, i64)>,
    /// The stored batches, in offset order; `None` is a null record set.
    pub records: Option<Vec<Bytes>>,
}

/// Batches smaller than this are copied in with the fields: an I/O vector
/// entry costs more than copying a few hundred bytes.
const SHARE_FROM: usize = 1024;

/// Size prefix, header (v1 from v12 on) and body, as chunks to write in order.
pub fn encode(correlation_id: i32, version: i16, resp: Response) -> Vec<Bytes> {
    let flexible = version >= 12;
    let partitions: usize = resp.topics.iter().map(|t| t.partitions.len()).sum();
    let mut w = Chunks::new(64 + resp.topics.len() * 64 + partitions * 64);
    w.buf.put_i32(0); // the size, set below
    w.buf.put_i32(correlation_id);
    tagged_fields(&mut w.buf, flexible);
    w.buf.put_i32(resp.throttle_time_ms);
    if version >= 7 {
        w.buf.put_i16(resp.error_code);
        w.buf.put_i32(0); // session_id: sessions are declined
    }
    array_len(&mut w.buf, flexible, resp.topics.len());
    for t in resp.topics {
        if flexible {
            put_uvarint(&mut w.buf, t.name.len() as u32 + 1);
        } else {
            w.buf.put_i16(t.name.len() as i16);
        }
        w.buf.put_slice(t.name.as_bytes());
        array_len(&mut w.buf, flexible, t.partitions.len());
        for p in t.partitions {
            w.buf.put_i32(p.index);
            w.buf.put_i16(p.error_code);
            w.buf.put_i64(p.high_watermark);
            w.buf.put_i64(p.last_stable_offset);
            if version >= 5 {
                w.buf.put_i64(p.log_start_offset);
            }
            array_len(&mut w.buf, flexible, p.aborted.len());
            for (producer_id, first_offset) in p.aborted {
                w.buf.put_i64(producer_id);
                w.buf.put_i64(first_offset);
                tagged_fields(&mut w.buf, flexible);
            }
            if version >= 11 {
                w.buf.put_i32(-1); // preferred_read_replica
            }
            match p.records {
                None if flexible => put_uvarint(&mut w.buf, 0),
                None => w.buf.put_i32(-1),
                Some(batches) => {
                    let len: usize = batches.iter().map(Bytes::len).sum();
                    if flexible {
                        put_uvarint(&mut w.buf, len as u32 + 1);
                    } else {
                        w.buf.put_i32(len as i32);
                    }
                    for b in batches {
                        w.put(b);
                    }
                }
            }
            tagged_fields(&mut w.buf, flexible);
        }
        tagged_fields(&mut w.buf, flexible);
    }
    tagged_fields(&mut w.buf, flexible);
    w.finish()
}

/// A buffer for the fields, cut into a chunk wherever a shared batch goes.
struct Chunks {
    buf: BytesMut,
    out: Vec<Bytes>,
    len: usize,
}

impl Chunks {
    fn new(capacity: usize) -> Self {
        Self {
            buf: BytesMut::with_capacity(capacity),
            out: Vec::new(),
            len: 0,
        }
    }

    fn put(&mut self, b: Bytes) {
        if b.len() < SHARE_FROM {
            self.buf.put_slice(&b);
            return;
        }
        self.cut();
        self.len += b.len();
        self.out.push(b);
    }

    fn cut(&mut self) {
        if !self.buf.is_empty() {
            self.len += self.buf.len();
            self.out.push(self.buf.split().freeze());
        }
    }

    /// The chunks, with the size prefix filled in.
    fn finish(mut self) -> Vec<Bytes> {
        // The prefix is still in `buf` unless a batch was shared.
        if self.out.is_empty() {
            let size = (self.buf.len() - 4) as i32;
            self.buf[..4].copy_from_slice(&size.to_be_bytes());
            return vec![self.buf.freeze()];
        }
        self.cut();
        let size = (self.len - 4) as i32;
        let mut first = BytesMut::from(&self.out[0][..]);
        first[..4].copy_from_slice(&size.to_be_bytes());
        self.out[0] = first.freeze();
        self.out
    }
}

fn array_len(buf: &mut BytesMut, flexible: bool, n: usize) {
    if flexible {
        put_uvarint(buf, n as u32 + 1);
    } else {
        buf.put_i32(n as i32);
    }
}

/// No tagged fields (flexible versions only).
fn tagged_fields(buf: &mut BytesMut, flexible: bool) {
    if flexible {
        buf.put_u8(0);
    }
}

fn put_uvarint(buf: &mut BytesMut, mut v: u32) {
    while v >= 0x80 {
        buf.put_u8(v as u8 | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::fetch_response::{
        AbortedTransaction, FetchableTopicResponse, PartitionData,
    };
    use kafka_protocol::messages::{
        ApiKey, BrokerId, FetchResponse, ProducerId, ResponseHeader, TopicName,
    };
    use kafka_protocol::protocol::Encodable;

    fn batch(len: usize, seed: u8) -> Bytes {
        (0..len)
            .map(|i| seed.wrapping_add(i as u8))
            .collect::<Vec<u8>>()
            .into()
    }

    /// Topics with shared, copied, several, no and null record sets.
    type Sample = Vec<(&'static str, Vec<(i32, i16, Option<Vec<Bytes>>)>)>;

    fn sample() -> Sample {
        vec![
            (
                "orders",
                vec![
                    (
                        0,
                        0,
                        Some(vec![batch(5000, 1), batch(100, 2), batch(70_000, 3)]),
                    ),
                    (1, 0, Some(vec![])),
                    (2, 1, None),
                    (3, 0, Some(vec![batch(300, 4)])),
                ],
            ),
            ("e", vec![]),
            (
                "a-much-longer-topic-name-".repeat(6).leak(),
                vec![(7, 0, Some(vec![batch(2000, 5)]))],
            ),
        ]
    }

    fn aborted(index: i32) -> Vec<(i64, i64)> {
        match index {
            7 => vec![(5, 100), (6, 1 << 40)],
            _ => vec![],
        }
    }

    fn ours(version: i16, error_code: i16) -> Vec<Bytes> {
        let topics = sample()
            .into_iter()
            .map(|(name, parts)| Topic {
                name: StrBytes::from_static_str(name),
                partitions: parts
                    .into_iter()
                    .map(|(index, error_code, records)| Partition {
                        index,
                        error_code,
                        high_watermark: 1000 + index as i64,
                        last_stable_offset: 900 + index as i64,
                        log_start_offset: 10 + index as i64,
                        aborted: aborted(index),
                        records,
                    })
                    .collect(),
            })
            .collect();
        encode(
            42,
            version,
            Response {
                throttle_time_ms: 0,
                error_code,
                topics,
            },
        )
    }

    fn codec(version: i16, error_code: i16) -> Vec<u8> {
        let topics = sample()
            .into_iter()
            .map(|(name, parts)| {
                let parts = parts.into_iter().map(|(index, error_code, records)| {
                    PartitionData::default()
                        .with_partition_index(index)
                        .with_error_code(error_code)
                        .with_high_watermark(1000 + index as i64)
                        .with_last_stable_offset(900 + index as i64)
                        .with_log_start_offset(if version >= 5 { 10 + index as i64 } else { -1 })
                        .with_preferred_read_replica(BrokerId(-1))
                        .with_aborted_transactions(Some(
                            aborted(index)
                                .into_iter()
                                .map(|(p, f)| {
                                    AbortedTransaction::default()
                                        .with_producer_id(ProducerId(p))
                                        .with_first_offset(f)
                                })
                                .collect(),
                        ))
                        .with_records(records.map(|b| b.concat().into()))
                });
                FetchableTopicResponse::default()
                    .with_topic(TopicName(StrBytes::from_static_str(name)))
                    .with_partitions(parts.collect())
            })
            .collect();
        let body = FetchResponse::default()
            .with_error_code(error_code)
            .with_responses(topics);
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        let header = ResponseHeader::default().with_correlation_id(42);
        header
            .encode(&mut buf, ApiKey::Fetch.response_header_version(version))
            .expect("header");
        body.encode(&mut buf, version).expect("body");
        let size = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&size.to_be_bytes());
        buf.to_vec()
    }

    #[test]
    fn matches_the_codec_in_every_version() {
        for version in 4..=12 {
            let error = if version >= 7 { 70 } else { 0 };
            assert_eq!(
                ours(version, error).concat(),
                codec(version, error),
                "v{version}"
            );
        }
    }

    #[test]
    fn shares_large_batches_and_copies_small_ones() {
        let (big, small) = (batch(5000, 1), batch(100, 2));
        let partition = Partition {
            index: 0,
            error_code: 0,
            high_watermark: 1,
            last_stable_offset: 1,
            log_start_offset: 0,
            aborted: vec![],
            records: Some(vec![big.clone(), small.clone(), big.clone()]),
        };
        let topic = Topic {
            name: StrBytes::from_static_str("t"),
            partitions: vec![partition],
        };
        let chunks = encode(
            1,
            12,
            Response {
                throttle_time_ms: 0,
                error_code: 0,
                topics: vec![topic],
            },
        );
        let at = |b: &Bytes| chunks.iter().filter(|c| c.as_ptr() == b.as_ptr()).count();
        assert_eq!(at(&big), 2, "the stored batch goes out as it is");
        assert_eq!(at(&small), 0, "a small batch is copied in with the fields");
        let records = [&big[..], &small[..], &big[..]].concat();
        assert!(
            chunks.concat().windows(records.len()).any(|w| w == records),
            "the records, in order"
        );
    }

    #[test]
    fn a_response_without_shared_batches_is_one_chunk() {
        let r = Response {
            throttle_time_ms: 0,
            error_code: 0,
            topics: vec![],
        };
        let chunks = encode(1, 12, r);
        assert_eq!(chunks.len(), 1);
        assert_eq!(
            i32::from_be_bytes(chunks[0][..4].try_into().expect("prefix")) as usize,
            chunks[0].len() - 4
        );
    }
}
