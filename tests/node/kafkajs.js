// kafkajs against a running floe: each scenario drives the client and prints
// one JSON object of what it saw on stdout; tests/python/test_kafkajs.py
// starts the server, runs a scenario and judges its output.
//
//   node kafkajs.js SCENARIO '{"bootstrap": "127.0.0.1:9092", ...}'
'use strict';

const fs = require('fs');
const {
  Kafka, logLevel, CompressionTypes, CompressionCodecs, Partitioners, KafkaJSConnectionError,
} = require('kafkajs');

// kafkajs ships gzip; the other codecs are plugins. Kafka's lz4 is the frame
// format, and zstd a plain frame (its wasm loads in `init`, before a run).
CompressionCodecs[CompressionTypes.Snappy] = require('kafkajs-snappy');
CompressionCodecs[CompressionTypes.LZ4] = () => {
  const lz4 = require('lz4-napi');
  return {
    compress: async (encoder) => lz4.compressFrame(encoder.buffer),
    decompress: async (buffer) => lz4.decompressFrame(buffer),
  };
};
const zstd = require('@bokuweb/zstd-wasm');
CompressionCodecs[CompressionTypes.ZSTD] = () => ({
  compress: async (encoder) => Buffer.from(zstd.compress(encoder.buffer, 3)),
  decompress: async (buffer) => Buffer.from(zstd.decompress(buffer)),
});

const CODECS = {
  none: CompressionTypes.None,
  gzip: CompressionTypes.GZIP,
  snappy: CompressionTypes.Snappy,
  lz4: CompressionTypes.LZ4,
  zstd: CompressionTypes.ZSTD,
};
const BASE_TS = 1_700_000_000_000;

const args = JSON.parse(process.argv[3] || '{}');

function client(extra = {}) {
  const sasl = args.mechanism
    ? { mechanism: args.mechanism.toLowerCase(), username: args.username, password: args.password }
    : undefined;
  // TLS when the test names the CA its server's certificate is signed by.
  const ssl = args.ca ? { ca: [fs.readFileSync(args.ca)] } : undefined;
  return new Kafka({
    clientId: 'floe-kafkajs',
    brokers: [args.bootstrap],
    sasl,
    ssl,
    logLevel: logLevel.NOTHING,
    retry: { retries: args.retries ?? 8 },
    ...extra,
  });
}

// Record i of a codec's run: a key, a value whose bytes depend on both, a
// header holding i, and a timestamp.
function record(codecIdx, i) {
  const value = Buffer.alloc(16 + (i % 48));
  for (let j = 0; j < value.length; j++) value[j] = (i * 31 + j * 7 + codecIdx) % 251;
  const h = Buffer.alloc(8);
  h.writeBigUInt64BE(BigInt(i));
  return { key: `key-${i}`, value, headers: { h }, timestamp: String(BASE_TS + i) };
}

// Sends `count` records in sends of `per` with up to 5 in flight, each acked
// by all (acks -1); returns where each record was acked: [partition, offset].
async function produce(producer, topic, count, partitions, codec, make) {
  const acked = new Array(count);
  const sends = [];
  const per = 500;
  for (let from = 0; from < count; from += per) {
    const messages = [];
    for (let i = from; i < Math.min(count, from + per); i++) {
      messages.push({ ...make(i), partition: i % partitions });
    }
    sends.push(
      producer.send({ topic, acks: -1, compression: codec, messages }).then((rs) => {
        // Within a send, each partition's records get offsets from its base
        // in the order they were given.
        const next = new Map(rs.map((r) => [r.partition, BigInt(r.baseOffset)]));
        for (const m of messages) {
          const i = Number(m.key.slice(4));
          const o = next.get(m.partition);
          acked[i] = [m.partition, String(o)];
          next.set(m.partition, o + 1n);
        }
      }),
    );
    if (sends.length >= 5) await sends.shift();
  }
  await Promise.all(sends);
  return acked;
}

// Reads `want` records from the start of `topic` in a new group; returns
// them as [partition, offset, key, value hex, header hex, timestamp].
async function readAll(kafka, topic, want, groupId, timeoutMs = 120_000) {
  const consumer = kafka.consumer({ groupId, maxBytesPerPartition: 4 << 20, maxWaitTimeInMs: 100 });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  const out = [];
  let done;
  const finished = new Promise((res) => (done = res));
  await consumer.run({
    eachBatch: async ({ batch }) => {
      for (const m of batch.messages) {
        out.push([batch.partition, m.offset, String(m.key), m.value.toString('hex'),
          m.headers.h ? m.headers.h.toString('hex') : null, m.timestamp]);
      }
      if (out.length >= want) done();
    },
  });
  const timer = setTimeout(done, timeoutMs);
  await finished;
  clearTimeout(timer);
  await consumer.disconnect();
  return out;
}

// Runs a setup step again when a connection closed under it: kafkajs retries
// a produce through cut connections, but not connecting, InitProducerId or
// CreateTopics (which answers an existing topic with false, so a second try
// after a landed first is harmless).
async function untilConnected(step) {
  for (let tries = 1; ; tries++) {
    try {
      return await step();
    } catch (e) {
      if (!(e instanceof KafkaJSConnectionError) || tries >= 30) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

// Compares what was read with what was acked; returns the differences.
function check(read, acked, codecIdx) {
  const problems = [];
  const seen = new Set();
  const nextOffset = new Map();
  read.sort((a, b) => a[0] - b[0] || Number(BigInt(a[1]) - BigInt(b[1])));
  for (const [partition, offset, key, valueHex, headerHex, ts] of read) {
    const at = `${partition}/${offset}`;
    if (seen.has(at)) { problems.push(`read twice: ${at}`); continue; }
    seen.add(at);
    const expectOffset = nextOffset.get(partition) || 0n;
    if (BigInt(offset) !== expectOffset) problems.push(`gap at ${at}, expected ${expectOffset}`);
    nextOffset.set(partition, BigInt(offset) + 1n);
    const i = Number(key.slice(4));
    const want = record(codecIdx, i);
    const wantHeader = want.headers.h.toString('hex');
    if (valueHex !== want.value.toString('hex') || headerHex !== wantHeader || ts !== want.timestamp) {
      problems.push(`record ${i} at ${at} differs`);
    }
    if (!acked[i] || acked[i][0] !== partition || acked[i][1] !== offset) {
      problems.push(`record ${i} read at ${at}, acked at ${acked[i]}`);
    }
  }
  return { read: read.length, problems: problems.slice(0, 10), problemCount: problems.length };
}

const scenarios = {
  // Every codec: produced idempotently, read back by a group, byte for byte.
  async codecs() {
    const kafka = client();
    const admin = kafka.admin();
    await admin.connect();
    const names = Object.keys(CODECS);
    await admin.createTopics({
      topics: names.map((c) => ({
        topic: `js-${c}`, numPartitions: args.partitions,
        // Records carry 2023 timestamps: keep them past the default retention.
        configEntries: [{ name: 'retention.ms', value: '-1' }],
      })),
    });
    await admin.disconnect();
    const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 5,
      createPartitioner: Partitioners.DefaultPartitioner });
    await producer.connect();
    const result = {};
    for (const [ci, c] of names.entries()) {
      const acked = await produce(producer, `js-${c}`, args.records, args.partitions, CODECS[c],
        (i) => record(ci, i));
      const read = await readAll(kafka, `js-${c}`, args.records, `${args.group}-${c}`);
      result[c] = { acked: acked.filter(Boolean).length, ...check(read, acked, ci) };
      fs.writeFileSync(`${args.dir}/acked-${c}.json`, JSON.stringify(acked));
    }
    await producer.disconnect();
    return result;
  },

  // After a restart or a kill -9: every acked record still there, once.
  async reread() {
    const kafka = client();
    const result = {};
    for (const [ci, c] of Object.keys(CODECS).entries()) {
      const acked = JSON.parse(fs.readFileSync(`${args.dir}/acked-${c}.json`));
      const read = await readAll(kafka, `js-${c}`, acked.length, `${args.group}-${c}`);
      result[c] = { acked: acked.length, ...check(read, acked, ci) };
    }
    return result;
  },

  // A group while records flow: three consumers, a fourth joining, one
  // leaving; every record read, the commits at the end of the log; then the
  // admin's view of the group, a reset to the earliest offsets, a delete.
  async groups() {
    const { topic, partitions, records, group } = args;
    const kafka = client();
    const admin = kafka.admin();
    await admin.connect();
    await admin.createTopics({ topics: [{ topic, numPartitions: partitions }] });
    const seen = new Map();
    let done;
    const all = new Promise((res) => (done = res));
    const start = async () => {
      const c = kafka.consumer({ groupId: group, maxWaitTimeInMs: 100, heartbeatInterval: 500,
        sessionTimeout: 10_000, rebalanceTimeout: 10_000 });
      await c.connect();
      await c.subscribe({ topic, fromBeginning: true });
      await c.run({
        eachMessage: async ({ partition, message }) => {
          const at = `${partition}/${message.offset}`;
          seen.set(at, (seen.get(at) || 0) + 1);
          if (seen.size >= records) done();
        },
      });
      return c;
    };
    const consumers = await Promise.all([start(), start(), start()]);
    const producer = kafka.producer({ idempotent: true });
    await producer.connect();
    const sending = (async () => {
      for (let i = 0; i < records; i += 100) {
        const messages = [];
        for (let j = i; j < Math.min(records, i + 100); j++) messages.push({ value: `v-${j}`, partition: j % partitions });
        await producer.send({ topic, acks: -1, messages });
        await new Promise((r) => setTimeout(r, 25));
      }
    })();
    await new Promise((r) => setTimeout(r, 1500));
    consumers.push(await start());
    await new Promise((r) => setTimeout(r, 1500));
    await consumers.splice(1, 1)[0].disconnect();
    await sending;
    const timer = setTimeout(done, 120_000);
    await all;
    clearTimeout(timer);
    // Let the group settle on the three left (and their last commits land).
    let live;
    for (const deadline = Date.now() + 30_000; Date.now() < deadline;) {
      live = (await admin.describeGroups([group])).groups[0];
      if (live.state === 'Stable' && live.members.length === 3) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    await new Promise((r) => setTimeout(r, 1000));
    const { AssignerProtocol } = require('kafkajs');
    const assigned = live.members.flatMap((m) => {
      const a = AssignerProtocol.MemberAssignment.decode(m.memberAssignment);
      return a ? (a.assignment[topic] || []) : [];
    }).sort((a, b) => a - b);
    const listed = (await admin.listGroups()).groups.map((g) => g.groupId);
    await Promise.all(consumers.map((c) => c.disconnect()));
    const committed = (await admin.fetchOffsets({ groupId: group, topics: [topic] }))[0].partitions
      .map((p) => [p.partition, p.offset]).sort((a, b) => a[0] - b[0]);
    const ends = (await admin.fetchTopicOffsets(topic)).map((p) => [p.partition, p.high])
      .sort((a, b) => a[0] - b[0]);
    const empty = (await admin.describeGroups([group])).groups[0];
    await admin.resetOffsets({ groupId: group, topic, earliest: true });
    const afterReset = (await admin.fetchOffsets({ groupId: group, topics: [topic], resolveOffsets: true }))[0]
      .partitions.map((p) => [p.partition, p.offset]).sort((a, b) => a[0] - b[0]);
    // A consumer of the reset group starts at each partition's beginning.
    const again = await readAll(kafka, topic, records, group);
    const firstOffsets = {};
    for (const [p, o] of again) if (!(p in firstOffsets) || BigInt(o) < BigInt(firstOffsets[p])) firstOffsets[p] = o;
    const deleted = await admin.deleteGroups([group]);
    const afterDelete = (await admin.listGroups()).groups.map((g) => g.groupId);
    await producer.disconnect();
    await admin.disconnect();
    return {
      distinct: seen.size, readTwice: [...seen.values()].filter((n) => n > 1).length,
      live: { state: live.state, members: live.members.length, protocol: live.protocol, assigned },
      listed: listed.includes(group), committed, ends,
      empty: { state: empty.state, members: empty.members.length },
      afterReset, rereadDistinct: new Set(again.map(([p, o]) => `${p}/${o}`)).size, firstOffsets,
      deleted: deleted.map((d) => d.errorCode), listedAfterDelete: afterDelete.includes(group),
    };
  },

  // Consume-transform-produce in transactions, every third aborted and its
  // input read again; then what read_committed and read_uncommitted see.
  async transactions() {
    const { partitions, records } = args;
    const kafka = client();
    const admin = kafka.admin();
    await admin.connect();
    await admin.createTopics({ topics: [
      { topic: 'js-tx-in', numPartitions: partitions }, { topic: 'js-tx-out', numPartitions: partitions }] });
    const feed = kafka.producer();
    await feed.connect();
    const messages = [];
    for (let i = 0; i < records; i++) messages.push({ value: `in-${String(i).padStart(5, '0')}`, partition: i % partitions });
    // Small input batches, read a few at a time, make many transactions.
    for (let i = 0; i < records; i += 3 * partitions) {
      await feed.send({ topic: 'js-tx-in', acks: -1, messages: messages.slice(i, i + 3 * partitions) });
    }
    await feed.disconnect();

    const tx = kafka.producer({ transactionalId: 'js-tx', maxInFlightRequests: 1, idempotent: true });
    await tx.connect();
    const group = 'js-tx-group';
    const consumer = kafka.consumer({ groupId: group, maxWaitTimeInMs: 100, maxBytesPerPartition: 200 });
    await consumer.connect();
    await consumer.subscribe({ topic: 'js-tx-in', fromBeginning: true });
    let transactions = 0, aborted = 0, committedInputs = 0;
    let done;
    const finished = new Promise((res) => (done = res));
    await consumer.run({
      autoCommit: false,
      eachBatchAutoResolve: false,
      eachBatch: async ({ batch, resolveOffset }) => {
        if (batch.messages.length === 0) return;
        const t = await tx.transaction();
        await t.send({ topic: 'js-tx-out', acks: -1, messages: batch.messages.map((m) => ({
          value: String(m.value).replace('in-', 'OUT-'), partition: batch.partition })) });
        const next = String(BigInt(batch.lastOffset()) + 1n);
        await t.sendOffsets({ consumerGroupId: group,
          topics: [{ topic: 'js-tx-in', partitions: [{ partition: batch.partition, offset: next }] }] });
        transactions += 1;
        if (transactions % 3 === 0) {
          await t.abort();
          aborted += 1;
          consumer.seek({ topic: 'js-tx-in', partition: batch.partition, offset: batch.firstOffset() });
          return;
        }
        await t.commit();
        resolveOffset(batch.lastOffset());
        committedInputs += batch.messages.length;
        if (committedInputs >= records) done();
      },
    });
    const timer = setTimeout(done, 120_000);
    await finished;
    clearTimeout(timer);
    await consumer.disconnect();
    await tx.disconnect();
    const committed = (await admin.fetchOffsets({ groupId: group, topics: ['js-tx-in'] }))[0].partitions
      .map((p) => [p.partition, p.offset]).sort((a, b) => a[0] - b[0]);
    const ends = (await admin.fetchTopicOffsets('js-tx-in')).map((p) => [p.partition, p.high])
      .sort((a, b) => a[0] - b[0]);
    const readValues = async (groupId, readUncommitted) => {
      const c = kafka.consumer({ groupId, readUncommitted, maxWaitTimeInMs: 100 });
      await c.connect();
      await c.subscribe({ topic: 'js-tx-out', fromBeginning: true });
      const got = [];
      let last = Date.now();
      await c.run({ eachMessage: async ({ message }) => { got.push(String(message.value)); last = Date.now(); } });
      const deadline = Date.now() + 60_000;
      while (Date.now() < deadline && (got.length < records || Date.now() - last < 1500)) {
        await new Promise((r) => setTimeout(r, 100));
      }
      await c.disconnect();
      return got;
    };
    const readCommitted = await readValues('js-tx-rc', false);
    const readUncommitted = await readValues('js-tx-ru', true);
    await admin.disconnect();
    const want = messages.map((m) => m.value.replace('in-', 'OUT-'));
    const sorted = [...readCommitted].sort();
    return {
      transactions, aborted, committed, ends,
      committedExactlyOnce: JSON.stringify(sorted) === JSON.stringify(want.sort()),
      readCommitted: readCommitted.length, readUncommitted: readUncommitted.length,
    };
  },

  // The admin client's topic calls, and the errors it must get.
  async admin() {
    const kafka = client();
    const admin = kafka.admin();
    await admin.connect();
    const out = {};
    const attempt = async (name, f) => {
      try {
        out[name] = { ok: await f() };
      } catch (e) {
        // The Kafka error under kafkajs's wrappers.
        const cause = (e.errors && e.errors[0]) || e.originalError || e;
        out[name] = { error: cause.type || cause.name, message: cause.message, retriable: cause.retriable };
      }
    };
    const topic = 'js-admin';
    await attempt('create', () => admin.createTopics({ topics: [{ topic, numPartitions: 2 }] }));
    await attempt('createAgain', () => admin.createTopics({ topics: [{ topic, numPartitions: 2 }] }));
    await attempt('createBad', () => admin.createTopics({ topics: [{ topic: 'bad/name', numPartitions: 1 }] }));
    await attempt('listed', async () => (await admin.listTopics()).includes(topic));
    await attempt('grow', () => admin.createPartitions({ topicPartitions: [{ topic, count: 4 }] }));
    await attempt('shrink', () => admin.createPartitions({ topicPartitions: [{ topic, count: 3 }] }));
    await attempt('partitions', async () => (await admin.fetchTopicMetadata({ topics: [topic] })).topics[0].partitions.length);
    await attempt('unknownMetadata', () => admin.fetchTopicMetadata({ topics: ['js-nowhere'] }));
    await attempt('alter', () => admin.alterConfigs({ resources: [{ type: 2, name: topic,
      configEntries: [{ name: 'retention.ms', value: '86400000' }] }] }));
    await attempt('retention', async () => {
      const d = await admin.describeConfigs({ resources: [{ type: 2, name: topic, configNames: ['retention.ms'] }] });
      return d.resources[0].configEntries.map((e) => [e.configName, e.configValue]);
    });
    const producer = kafka.producer();
    await producer.connect();
    const t0 = Date.now();
    for (let i = 0; i < 10; i++) {
      await producer.send({ topic, acks: -1, messages: [{ value: `r-${i}`, partition: 0, timestamp: String(t0 + i * 1000) }] });
    }
    await attempt('deleteRecords', () => admin.deleteTopicRecords({ topic, partitions: [{ partition: 0, offset: '4' }] }));
    await attempt('offsets', async () => (await admin.fetchTopicOffsets(topic)).find((p) => p.partition === 0));
    await attempt('byTimestamp', async () => (await admin.fetchTopicOffsetsByTimestamp(topic, t0 + 6500))
      .find((p) => p.partition === 0).offset);
    await attempt('readFromLow', async () => (await readAll(kafka, topic, 6, 'js-admin-reader', 20_000))
      .map(([, o, , v]) => [o, Buffer.from(v, 'hex').toString()]));
    await attempt('tooLarge', () => producer.send({ topic, acks: -1, messages: [{ value: Buffer.alloc(2 << 20, 7) }] }));
    await attempt('afterTooLarge', async () => (await producer.send({ topic, acks: -1, messages: [{ value: 'fine', partition: 1 }] }))[0].baseOffset);
    await producer.disconnect();
    await attempt('delete', () => admin.deleteTopics({ topics: [topic] }));
    await attempt('listedAfterDelete', async () => (await admin.listTopics()).includes(topic));
    await admin.disconnect();
    // kafkajs retries UNKNOWN_TOPIC_OR_PARTITION (retriable): try just once.
    const once = client({ retry: { retries: 0 } }).admin();
    await once.connect();
    await attempt('deleteUnknown', () => once.deleteTopics({ topics: ['js-nowhere'] }));
    await once.disconnect();
    return out;
  },

  // A tenant's login with each mechanism: produce, read back; a wrong
  // password is refused as an authentication error.
  async sasl() {
    const topic = `js-sasl-${args.mechanism.toLowerCase()}`;
    const kafka = client();
    const producer = kafka.producer();
    await producer.connect();
    await producer.send({ topic, acks: -1, messages: [{ value: 'hello' }, { value: 'world' }] });
    await producer.disconnect();
    const read = (await readAll(kafka, topic, 2, `${topic}-g`, 30_000)).map(([, , , v]) => Buffer.from(v, 'hex').toString());
    let wrong;
    try {
      const bad = client({ sasl: { mechanism: args.mechanism.toLowerCase(), username: args.username, password: 'wrong' },
        retry: { retries: 0 } }).producer();
      await bad.connect();
      wrong = 'connected';
      await bad.disconnect();
    } catch (e) {
      wrong = e.name;
    }
    return { read, wrong };
  },

  // An idempotent producer whose connections are cut (by the test's proxy),
  // one send at a time: kafkajs rolls a failed request's sequence numbers
  // back, so a concurrent send can take them while the failed one's batch
  // is stored (tulios/kafkajs#598, #1005); with one send in flight a retry
  // is the same batch under the same numbers.
  async idempotent() {
    const { topic, partitions, records } = args;
    const kafka = client({ retry: { retries: 30, initialRetryTime: 50, maxRetryTime: 1000 } });
    const admin = kafka.admin();
    // The proxy cuts connections from the start, setup included.
    await untilConnected(async () => {
      await admin.connect();
      await admin.createTopics({ topics: [{ topic, numPartitions: partitions }] });
    });
    await admin.disconnect();
    const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
    await untilConnected(() => producer.connect());
    let acked = 0;
    for (let i = 0; i < records; i += 50) {
      const messages = [];
      for (let j = i; j < Math.min(records, i + 50); j++) {
        messages.push({ value: `${j % partitions}:${String(j).padStart(8, '0')}`, partition: j % partitions });
      }
      await producer.send({ topic, acks: -1, messages });
      acked += messages.length;
      // Spread the sends over several of the proxy's cuts.
      await new Promise((r) => setTimeout(r, 5));
    }
    await producer.disconnect();
    return { acked };
  },

  // Every value of a topic, per partition in offset order.
  async values() {
    const read = await readAll(client(), args.topic, args.records, 'values-reader');
    read.sort((a, b) => a[0] - b[0] || Number(BigInt(a[1]) - BigInt(b[1])));
    const out = {};
    for (const [p, , , v] of read) (out[p] = out[p] || []).push(Buffer.from(v, 'hex').toString());
    return out;
  },
};

(async () => {
  const run = scenarios[process.argv[2]];
  if (!run) throw new Error(`no scenario ${process.argv[2]}`);
  await zstd.init();
  const out = await run();
  // A pipe is written asynchronously: exit once the line is out.
  process.stdout.write(JSON.stringify(out) + '\n', () => process.exit(0));
})().catch((e) => {
  const line = JSON.stringify({ error: String(e), type: e && e.type, stack: e && e.stack }) + '\n';
  process.stdout.write(line, () => process.exit(1));
});
