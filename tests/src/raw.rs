//! A bare Kafka connection for tests that send what no real client would:
//! requests are encoded with `kafka-protocol`, or written as raw bytes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::list_offsets_response::ListOffsetsPartitionResponse;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, BrokerId, CreateTopicsRequest, DeleteTopicsRequest, FetchRequest, ListOffsetsRequest,
    ProduceRequest, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};

pub struct Conn {
    s: TcpStream,
    next_id: i32,
}

impl Conn {
    pub fn connect(bootstrap: &str) -> Self {
        let s = TcpStream::connect(bootstrap).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        Conn { s, next_id: 1 }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.s.write_all(bytes)
    }

    /// Encodes header + body for `R` at `version`, without the size prefix.
    pub fn encode<R: Request>(&mut self, version: i16, body: &R) -> BytesMut {
        let id = self.next_id;
        self.next_id += 1;
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(id)
            .with_client_id(Some(StrBytes::from_static_str("floe-e2e")));
        let mut b = BytesMut::new();
        header
            .encode(&mut b, R::header_version(version))
            .expect("header encodes");
        body.encode(&mut b, version).expect("body encodes");
        b
    }

    pub fn send_frame(&mut self, frame: &[u8]) -> std::io::Result<()> {
        let mut b = BytesMut::with_capacity(frame.len() + 4);
        b.put_i32(frame.len() as i32);
        b.put_slice(frame);
        self.s.write_all(&b)
    }

    /// Reads one response frame; `None` if the server closed the connection.
    pub fn read_frame(&mut self) -> Option<Bytes> {
        let mut len = [0u8; 4];
        self.s.read_exact(&mut len).ok()?;
        let mut buf = vec![0u8; i32::from_be_bytes(len) as usize];
        self.s.read_exact(&mut buf).ok()?;
        Some(Bytes::from(buf))
    }

    /// Sends a request and decodes its response.
    pub fn call<R: Request>(&mut self, version: i16, body: &R) -> R::Response {
        self.send(version, body);
        self.recv::<R>(version)
    }

    /// Sends a request without waiting (pipelining); [`Conn::recv`] reads
    /// the responses in order.
    pub fn send<R: Request>(&mut self, version: i16, body: &R) {
        let frame = self.encode(version, body);
        self.send_frame(&frame).expect("send");
    }

    /// Reads and decodes the next response, to a request of type `R`.
    pub fn recv<R: Request>(&mut self, version: i16) -> R::Response {
        let mut resp = self
            .read_frame()
            .expect("a response, not a closed connection");
        let api = ApiKey::try_from(R::KEY).expect("known api");
        let header_version = if api == ApiKey::ApiVersions {
            0
        } else {
            api.response_header_version(version)
        };
        ResponseHeader::decode(&mut resp, header_version).expect("response header");
        let out = R::Response::decode(&mut resp, version).expect("response body");
        assert_eq!(resp.remaining(), 0, "trailing bytes in response");
        out
    }

    /// What the server sends within `d`, read by none: `Some(0)` if it
    /// closed the connection, `Some(1)` if it sent bytes, `None` if neither.
    fn peek_within(&mut self, d: Duration) -> Option<usize> {
        self.s.set_read_timeout(Some(d)).expect("timeout");
        let got = match self.s.peek(&mut [0u8; 1]) {
            Ok(n) => Some(n),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(_) => Some(0), // reset
        };
        self.s
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        got
    }

    /// True when the server closes the connection within `d`; false if it
    /// is still open then.
    pub fn closes_within(&mut self, d: Duration) -> bool {
        match self.peek_within(d) {
            Some(0) => true,
            Some(_) => panic!("unexpected bytes from the server"),
            None => false,
        }
    }

    /// True when the server sends something (or closes) within `d`.
    pub fn answers_within(&mut self, d: Duration) -> bool {
        self.peek_within(d).is_some()
    }

    /// Closes the sending half: the server reads the end of the stream.
    pub fn shut_write(&mut self) {
        self.s
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown");
    }

    /// True when the server has closed the connection (reads EOF).
    pub fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.s.read(&mut b), Ok(0) | Err(_))
    }
}

pub fn topic_name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

/// A Produce request carrying `records` to one partition.
pub fn produce_request(topic: &str, partition: i32, acks: i16, records: Bytes) -> ProduceRequest {
    let p = PartitionProduceData::default()
        .with_index(partition)
        .with_records(Some(records));
    let t = TopicProduceData::default()
        .with_name(topic_name(topic))
        .with_partition_data(vec![p]);
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(5000)
        .with_topic_data(vec![t])
}

impl Conn {
    /// CreateTopics v7 for one topic; panics unless it is created.
    pub fn create_topic(&mut self, topic: &str, partitions: i32) {
        self.create_topic_with(topic, partitions, &[]);
    }

    /// [`Conn::create_topic`] with configs.
    pub fn create_topic_with(&mut self, topic: &str, partitions: i32, configs: &[(&str, &str)]) {
        let r = self.try_create_topic(topic, partitions, configs);
        assert_eq!(r.error_code, 0, "creating {topic}");
    }

    /// CreateTopics v7 for one topic: its result, whatever it is.
    pub fn try_create_topic(
        &mut self,
        topic: &str,
        partitions: i32,
        configs: &[(&str, &str)],
    ) -> CreatableTopicResult {
        let configs = configs
            .iter()
            .map(|(k, v)| {
                CreatableTopicConfig::default()
                    .with_name(StrBytes::from_string(k.to_string()))
                    .with_value(Some(StrBytes::from_string(v.to_string())))
            })
            .collect();
        let t = CreatableTopic::default()
            .with_name(topic_name(topic))
            .with_num_partitions(partitions)
            .with_replication_factor(1)
            .with_configs(configs);
        let mut r = self.call(7, &CreateTopicsRequest::default().with_topics(vec![t]));
        r.topics.swap_remove(0)
    }

    /// DeleteTopics v6 of one topic; panics unless it is deleted.
    pub fn delete_topic(&mut self, topic: &str) {
        let r = self.call(
            6,
            &DeleteTopicsRequest::default().with_topics(vec![
                DeleteTopicState::default().with_name(Some(topic_name(topic)))
            ]),
        );
        assert_eq!(r.responses[0].error_code, 0, "deleting {topic}");
    }

    /// Fetch v12 of one partition from `offset`, without waiting, up to
    /// 1 MiB: (error code, high watermark, record bytes).
    pub fn fetch(&mut self, topic: &str, partition: i32, offset: i64) -> (i16, i64, Bytes) {
        let p = FetchPartition::default()
            .with_partition(partition)
            .with_fetch_offset(offset)
            .with_partition_max_bytes(1 << 20);
        let t = FetchTopic::default()
            .with_topic(topic_name(topic))
            .with_partitions(vec![p]);
        let req = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(0)
            .with_max_bytes(1 << 20)
            .with_topics(vec![t]);
        let r = self.call(12, &req);
        let p = &r.responses[0].partitions[0];
        (
            p.error_code,
            p.high_watermark,
            p.records.clone().unwrap_or_default(),
        )
    }

    /// ListOffsets v7 for one partition at `timestamp` (-1 latest, -2
    /// earliest, -3 max timestamp): the partition's answer.
    pub fn list_offset(
        &mut self,
        topic: &str,
        partition: i32,
        timestamp: i64,
    ) -> ListOffsetsPartitionResponse {
        let p = ListOffsetsPartition::default()
            .with_partition_index(partition)
            .with_timestamp(timestamp);
        let t = ListOffsetsTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(vec![p]);
        let req = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![t]);
        let mut r = self.call(7, &req);
        r.topics.swap_remove(0).partitions.swap_remove(0)
    }
}
