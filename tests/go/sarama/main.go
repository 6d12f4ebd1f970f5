// Sarama (Go; its own protocol code) against a running floe: each scenario
// drives the client and prints one JSON object of what it saw on stdout;
// tests/python/test_sarama.py builds this program, starts the server, runs a
// scenario and judges its output.
//
//	sarama SCENARIO '{"bootstrap": "127.0.0.1:9092", ...}'
//
// Built in GOPATH mode against Debian's golang-github-shopify-sarama-dev
// (1.22.1), which scripts/test installs.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/ioutil"
	"log"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/Shopify/sarama"
	"github.com/xdg-go/scram"
)

type Args struct {
	Bootstrap  string `json:"bootstrap"`
	Topic      string `json:"topic"`
	Partitions int32  `json:"partitions"`
	Records    int    `json:"records"`
	Group      string `json:"group"`
	Dir        string `json:"dir"`
	Mechanism  string `json:"mechanism"`
	Username   string `json:"username"`
	Password   string `json:"password"`
	CA         string `json:"ca"`
}

var args Args

const baseTS = 1_700_000_000_000

var codecs = []struct {
	name  string
	codec sarama.CompressionCodec
}{
	{"none", sarama.CompressionNone},
	{"gzip", sarama.CompressionGZIP},
	{"snappy", sarama.CompressionSnappy},
	{"lz4", sarama.CompressionLZ4},
	{"zstd", sarama.CompressionZSTD},
}

// scramClient adapts xdg-go/scram to sarama's SCRAMClient.
type scramClient struct {
	*scram.ClientConversation
	hash scram.HashGeneratorFcn
}

func (c *scramClient) Begin(user, password, authzID string) error {
	client, err := c.hash.NewClient(user, password, authzID)
	if err != nil {
		return err
	}
	c.ClientConversation = client.NewConversation()
	return nil
}

func (c *scramClient) Step(challenge string) (string, error) {
	return c.ClientConversation.Step(challenge)
}
func (c *scramClient) Done() bool { return c.ClientConversation.Done() }

func config() *sarama.Config {
	c := sarama.NewConfig()
	c.ClientID = "floe-sarama"
	// The newest protocol this sarama knows (zstd needs 2.1).
	c.Version = sarama.V2_1_0_0
	c.Metadata.Retry.Max = 10
	c.Metadata.Retry.Backoff = 200 * time.Millisecond
	switch args.Mechanism {
	case "":
	case "PLAIN":
		c.Net.SASL.Enable = true
		c.Net.SASL.Mechanism = sarama.SASLTypePlaintext
	case "SCRAM-SHA-256", "SCRAM-SHA-512":
		c.Net.SASL.Enable = true
		c.Net.SASL.Mechanism = sarama.SASLMechanism(args.Mechanism)
		hash := scram.HashGeneratorFcn(sha256.New)
		if args.Mechanism == "SCRAM-SHA-512" {
			hash = sha512.New
		}
		c.Net.SASL.SCRAMClientGeneratorFunc = func() sarama.SCRAMClient { return &scramClient{hash: hash} }
	default:
		fail(fmt.Errorf("unknown mechanism %q", args.Mechanism))
	}
	c.Net.SASL.User = args.Username
	c.Net.SASL.Password = args.Password
	if args.CA != "" {
		pem, err := ioutil.ReadFile(args.CA)
		check(err)
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pem)
		c.Net.TLS.Enable = true
		c.Net.TLS.Config = &tls.Config{RootCAs: pool}
	}
	return c
}

func fail(err error) {
	out(map[string]interface{}{"error": err.Error()})
	os.Exit(1)
}

func check(err error) {
	if err != nil {
		fail(err)
	}
}

func out(v interface{}) {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	fmt.Println(string(b))
}

func errName(err error) interface{} {
	if err == nil {
		return nil
	}
	if k, ok := err.(sarama.KError); ok {
		return int(k)
	}
	return err.Error()
}

// record i of a codec's run: a key, a value whose bytes depend on both, a
// header holding i, and a timestamp.
func record(codec, i int) (string, []byte, []byte, time.Time) {
	value := make([]byte, 16+i%48)
	for j := range value {
		value[j] = byte((i*31 + j*7 + codec) % 251)
	}
	h := make([]byte, 8)
	binary.BigEndian.PutUint64(h, uint64(i))
	return fmt.Sprintf("key-%d", i), value, h, time.Unix(0, (baseTS+int64(i))*int64(time.Millisecond))
}

type pos struct {
	Partition int32 `json:"partition"`
	Offset    int64 `json:"offset"`
}

func createTopic(admin sarama.ClusterAdmin, topic string, partitions int32) {
	// Records carry 2023 timestamps: keep them past the default retention.
	detail := &sarama.TopicDetail{NumPartitions: partitions, ReplicationFactor: 1,
		ConfigEntries: map[string]*string{"retention.ms": str("-1")}}
	err := admin.CreateTopic(topic, detail, false)
	if err != nil && err != sarama.ErrTopicAlreadyExists {
		if te, ok := err.(*sarama.TopicError); !ok || te.Err != sarama.ErrTopicAlreadyExists {
			check(err)
		}
	}
}

// produce sends `count` records to `topic` with an idempotent async
// producer (acks all), record i to partition i % partitions; returns where
// each was acked.
func produce(topic string, count int, partitions int32, codecIdx int, codec sarama.CompressionCodec) []pos {
	c := config()
	c.Producer.Idempotent = true
	c.Producer.RequiredAcks = sarama.WaitForAll
	c.Producer.Retry.Max = 10
	c.Net.MaxOpenRequests = 1
	c.Producer.Return.Successes = true
	c.Producer.Compression = codec
	c.Producer.Partitioner = sarama.NewManualPartitioner
	c.Producer.Flush.Messages = 500
	c.Producer.Flush.Frequency = 5 * time.Millisecond
	p, err := sarama.NewAsyncProducer([]string{args.Bootstrap}, c)
	check(err)
	acked := make([]pos, count)
	var errs []string
	done := make(chan struct{})
	go func() {
		for n := 0; n < count; n++ {
			select {
			case m := <-p.Successes():
				acked[m.Metadata.(int)] = pos{m.Partition, m.Offset}
			case e := <-p.Errors():
				errs = append(errs, e.Err.Error())
			}
		}
		close(done)
	}()
	for i := 0; i < count; i++ {
		key, value, h, ts := record(codecIdx, i)
		p.Input() <- &sarama.ProducerMessage{
			Topic:     topic,
			Partition: int32(i) % partitions,
			Key:       sarama.StringEncoder(key),
			Value:     sarama.ByteEncoder(value),
			Headers:   []sarama.RecordHeader{{Key: []byte("h"), Value: h}},
			Timestamp: ts,
			Metadata:  i,
		}
	}
	<-done
	check(p.Close())
	if len(errs) > 0 {
		fail(fmt.Errorf("%d sends failed, first: %s", len(errs), errs[0]))
	}
	return acked
}

type read struct {
	Key, Value, Header string
	TS                 int64
}

// readAll reads every partition of `topic` from the oldest offset to its
// high watermark with a plain consumer: offset-keyed records.
func readAll(topic string) map[pos]read {
	client, err := sarama.NewClient([]string{args.Bootstrap}, config())
	check(err)
	defer client.Close()
	consumer, err := sarama.NewConsumerFromClient(client)
	check(err)
	defer consumer.Close()
	parts, err := client.Partitions(topic)
	check(err)
	got := map[pos]read{}
	for _, p := range parts {
		end, err := client.GetOffset(topic, p, sarama.OffsetNewest)
		check(err)
		start, err := client.GetOffset(topic, p, sarama.OffsetOldest)
		check(err)
		if start >= end {
			continue
		}
		pc, err := consumer.ConsumePartition(topic, p, sarama.OffsetOldest)
		check(err)
		deadline := time.After(120 * time.Second)
	loop:
		for {
			select {
			case m := <-pc.Messages():
				r := read{Key: string(m.Key), Value: hex.EncodeToString(m.Value), TS: m.Timestamp.UnixNano() / int64(time.Millisecond)}
				for _, h := range m.Headers {
					if string(h.Key) == "h" {
						r.Header = hex.EncodeToString(h.Value)
					}
				}
				got[pos{p, m.Offset}] = r
				if m.Offset+1 >= end {
					break loop
				}
			case e := <-pc.Errors():
				fail(e)
			case <-deadline:
				break loop
			}
		}
		check(pc.Close())
	}
	return got
}

// compare checks what was read against what was acked: the differences.
func compare(codecIdx int, acked []pos, got map[pos]read) []string {
	var problems []string
	for i, at := range acked {
		key, value, h, ts := record(codecIdx, i)
		want := read{key, hex.EncodeToString(value), hex.EncodeToString(h), ts.UnixNano() / int64(time.Millisecond)}
		if r, ok := got[at]; !ok {
			problems = append(problems, fmt.Sprintf("record %d acked at %v: missing", i, at))
		} else if r != want {
			problems = append(problems, fmt.Sprintf("record %d at %v: %+v, want %+v", i, at, r, want))
		}
		if len(problems) > 10 {
			break
		}
	}
	return problems
}

func ackedFile(codec string) string { return fmt.Sprintf("%s/sarama-%s.json", args.Dir, codec) }

// Every codec: produce, read back byte for byte at the acked offsets, and
// keep the acked positions for `reread`.
func codecsScenario() {
	admin, err := sarama.NewClusterAdmin([]string{args.Bootstrap}, config())
	check(err)
	defer admin.Close()
	res := map[string]interface{}{}
	for idx, c := range codecs {
		topic := "sarama-" + c.name
		createTopic(admin, topic, args.Partitions)
		acked := produce(topic, args.Records, args.Partitions, idx, c.codec)
		b, _ := json.Marshal(acked)
		check(ioutil.WriteFile(ackedFile(c.name), b, 0o644))
		got := readAll(topic)
		res[c.name] = map[string]interface{}{"acked": len(acked), "read": len(got),
			"problems": orEmpty(compare(idx, acked, got)), "byTime": byTime(topic, acked)}
	}
	out(res)
}

// byTime asks ListOffsets, in each partition, for the first offset at or
// after the timestamp of a record in the middle of a compressed batch: the
// problems, if any (this sarama leaves each batch's maxTimestamp at -1, so
// only a broker that sets it from the records finds them).
func byTime(topic string, acked []pos) []string {
	client, err := sarama.NewClient([]string{args.Bootstrap}, config())
	check(err)
	defer client.Close()
	var problems []string
	for i := len(acked) / 2; i < len(acked)/2+int(args.Partitions); i++ {
		_, _, _, ts := record(0, i)
		at, err := client.GetOffset(topic, acked[i].Partition, ts.UnixNano()/int64(time.Millisecond))
		check(err)
		if at != acked[i].Offset {
			problems = append(problems, fmt.Sprintf("record %d at %v: ListOffsets by its time gave %d", i, acked[i], at))
		}
	}
	return orEmpty(problems)
}

func rereadScenario() {
	res := map[string]interface{}{}
	for idx, c := range codecs {
		b, err := ioutil.ReadFile(ackedFile(c.name))
		check(err)
		var acked []pos
		check(json.Unmarshal(b, &acked))
		got := readAll("sarama-" + c.name)
		res[c.name] = map[string]interface{}{"read": len(got), "problems": orEmpty(compare(idx, acked, got))}
	}
	out(res)
}

func orEmpty(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// member is one consumer of a group: what it read, and its claims.
type member struct {
	mu       sync.Mutex
	seen     map[pos]int
	claims   [][]int32
	sessions int
}

func (m *member) Setup(s sarama.ConsumerGroupSession) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sessions++
	m.claims = append(m.claims, s.Claims()[args.Topic])
	return nil
}

func (m *member) Cleanup(sarama.ConsumerGroupSession) error { return nil }

func (m *member) ConsumeClaim(s sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	for msg := range claim.Messages() {
		m.mu.Lock()
		m.seen[pos{msg.Partition, msg.Offset}]++
		m.mu.Unlock()
		s.MarkMessage(msg, "")
	}
	return nil
}

func startMember(ctx context.Context, wg *sync.WaitGroup) (*member, sarama.ConsumerGroup) {
	c := config()
	c.Consumer.Offsets.Initial = sarama.OffsetOldest
	c.Consumer.Offsets.CommitInterval = 100 * time.Millisecond
	// Commits as OffsetCommit v2: without a retention this sarama sends
	// v1, which Kafka 4.0 removed (KIP-896) and so does Floe.
	c.Consumer.Offsets.Retention = 24 * time.Hour
	c.Consumer.Group.Rebalance.Strategy = sarama.BalanceStrategyRoundRobin
	c.Consumer.Group.Session.Timeout = 10 * time.Second
	c.Consumer.Group.Heartbeat.Interval = 1 * time.Second
	c.Consumer.MaxWaitTime = 100 * time.Millisecond
	g, err := sarama.NewConsumerGroup([]string{args.Bootstrap}, args.Group, c)
	check(err)
	m := &member{seen: map[pos]int{}}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			if err := g.Consume(ctx, []string{args.Topic}, m); err != nil && ctx.Err() == nil {
				time.Sleep(100 * time.Millisecond)
			}
		}
	}()
	return m, g
}

// A group of three reads a topic while it is written; a fourth joins, one
// leaves; the admin's view of the group, its offsets, and its deletion.
func groupsScenario() {
	admin, err := sarama.NewClusterAdmin([]string{args.Bootstrap}, config())
	check(err)
	defer admin.Close()
	createTopic(admin, args.Topic, args.Partitions)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var members []*member
	var groups []sarama.ConsumerGroup
	for i := 0; i < 3; i++ {
		m, g := startMember(ctx, &wg)
		members, groups = append(members, m), append(groups, g)
	}
	producing := make(chan []pos)
	go func() { producing <- produce(args.Topic, args.Records, args.Partitions, 0, sarama.CompressionNone) }()

	time.Sleep(1500 * time.Millisecond)
	m, g := startMember(ctx, &wg)
	members, groups = append(members, m), append(groups, g)
	time.Sleep(1500 * time.Millisecond)
	leaving := members[0]
	check(groups[0].Close())
	<-producing

	distinct := func() (int, int) {
		all := map[pos]int{}
		for _, m := range members {
			m.mu.Lock()
			for p, n := range m.seen {
				all[p] += n
			}
			m.mu.Unlock()
		}
		twice := 0
		for _, n := range all {
			twice += n - 1
		}
		return len(all), twice
	}
	deadline := time.Now().Add(120 * time.Second)
	for {
		if n, _ := distinct(); n >= args.Records || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Offsets are committed every 100 ms: let the last commits land.
	time.Sleep(1 * time.Second)

	// The live group: three members, each partition assigned once.
	var live map[string]interface{}
	for time.Now().Before(deadline) {
		d, err := admin.DescribeConsumerGroups([]string{args.Group})
		check(err)
		var assigned []int
		for _, mem := range d[0].Members {
			a, err := mem.GetMemberAssignment()
			check(err)
			for _, p := range a.Topics[args.Topic] {
				assigned = append(assigned, int(p))
			}
		}
		sort.Ints(assigned)
		live = map[string]interface{}{"state": d[0].State, "members": len(d[0].Members),
			"protocol": d[0].Protocol, "assigned": assigned}
		if d[0].State == "Stable" && len(d[0].Members) == 3 {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	listed, err := admin.ListConsumerGroups()
	check(err)

	client, err := sarama.NewClient([]string{args.Bootstrap}, config())
	check(err)
	defer client.Close()
	var ends, committed [][2]int64
	parts := make([]int32, args.Partitions)
	for p := range parts {
		parts[p] = int32(p)
		end, err := client.GetOffset(args.Topic, int32(p), sarama.OffsetNewest)
		check(err)
		ends = append(ends, [2]int64{int64(p), end})
	}
	offs, err := admin.ListConsumerGroupOffsets(args.Group, map[string][]int32{args.Topic: parts})
	check(err)
	for p := range parts {
		b := offs.GetBlock(args.Topic, int32(p))
		committed = append(committed, [2]int64{int64(p), b.Offset})
	}

	cancel()
	for _, g := range groups[1:] {
		check(g.Close())
	}
	wg.Wait()
	d, err := admin.DescribeConsumerGroups([]string{args.Group})
	check(err)
	empty := map[string]interface{}{"state": d[0].State, "members": len(d[0].Members)}

	// DeleteGroups, straight to the coordinator (this sarama's admin has no call for it).
	coord, err := client.Coordinator(args.Group)
	check(err)
	del, err := coord.DeleteGroups(&sarama.DeleteGroupsRequest{Groups: []string{args.Group}})
	check(err)
	delUnknown, err := coord.DeleteGroups(&sarama.DeleteGroupsRequest{Groups: []string{"no-such-group"}})
	check(err)
	listedAfter, err := admin.ListConsumerGroups()
	check(err)

	n, twice := distinct()
	leaving.mu.Lock()
	leftClaims := leaving.claims
	leaving.mu.Unlock()
	_, wasListed := listed[args.Group]
	_, listedAfterDelete := listedAfter[args.Group]
	out(map[string]interface{}{
		"distinct": n, "readTwice": twice, "live": live, "listed": wasListed,
		"protocolType": listed[args.Group],
		"committed":    committed, "ends": ends, "empty": empty,
		"deleted":           int(del.GroupErrorCodes[args.Group]),
		"deletedUnknown":    int(delUnknown.GroupErrorCodes["no-such-group"]),
		"listedAfterDelete": listedAfterDelete,
		"leaverClaims":      leftClaims,
	})
}

// Admin calls and their errors, ListOffsets by time, a record too large.
func adminScenario() {
	admin, err := sarama.NewClusterAdmin([]string{args.Bootstrap}, config())
	check(err)
	defer admin.Close()
	res := map[string]interface{}{}
	detail := &sarama.TopicDetail{NumPartitions: 2, ReplicationFactor: 1,
		ConfigEntries: map[string]*string{"retention.ms": str("3600000")}}
	res["create"] = errName(admin.CreateTopic("sarama-admin", detail, false))
	res["createAgain"] = errName(unwrapTopic(admin.CreateTopic("sarama-admin", detail, false)))
	res["createBadName"] = errName(unwrapTopic(admin.CreateTopic("bad name!", detail, false)))
	res["createBadConfig"] = errName(unwrapTopic(admin.CreateTopic("sarama-bad-config", &sarama.TopicDetail{
		NumPartitions: 1, ReplicationFactor: 1, ConfigEntries: map[string]*string{"retention.ms": str("-7")}}, false)))
	res["grow"] = errName(admin.CreatePartitions("sarama-admin", 4, nil, false))
	res["shrink"] = errName(unwrapTopic(admin.CreatePartitions("sarama-admin", 2, nil, false)))
	md, err := admin.DescribeTopics([]string{"sarama-admin", "sarama-nowhere"})
	check(err)
	for _, t := range md {
		res["describe:"+t.Name] = map[string]interface{}{"err": int(t.Err), "partitions": len(t.Partitions)}
	}
	res["alter"] = errName(admin.AlterConfig(sarama.TopicResource, "sarama-admin",
		map[string]*string{"retention.ms": str("7200000")}, false))
	res["alterUnknown"] = errName(admin.AlterConfig(sarama.TopicResource, "sarama-admin",
		map[string]*string{"no.such.config": str("1")}, false))

	// Ten records to partition 0, with timestamps a second apart (recent
	// ones: the topic's retention is an hour).
	base := time.Now().Add(-time.Minute).Truncate(time.Second)
	c := config()
	c.Producer.RequiredAcks = sarama.WaitForAll
	c.Producer.Return.Successes = true
	c.Producer.Partitioner = sarama.NewManualPartitioner
	c.Producer.MaxMessageBytes = 4 << 20
	p, err := sarama.NewSyncProducer([]string{args.Bootstrap}, c)
	check(err)
	for i := 0; i < 10; i++ {
		_, _, err := p.SendMessage(&sarama.ProducerMessage{Topic: "sarama-admin", Partition: 0,
			Value: sarama.StringEncoder(fmt.Sprint(i)), Timestamp: base.Add(time.Duration(i) * time.Second)})
		check(err)
	}
	_, _, err = p.SendMessage(&sarama.ProducerMessage{Topic: "sarama-admin", Partition: 1,
		Value: sarama.ByteEncoder(bytes.Repeat([]byte("x"), 2<<20))})
	res["tooLarge"] = errName(err)
	_, off, err := p.SendMessage(&sarama.ProducerMessage{Topic: "sarama-admin", Partition: 1,
		Value: sarama.StringEncoder("after")})
	check(err)
	res["afterTooLarge"] = off
	check(p.Close())

	client, err := sarama.NewClient([]string{args.Bootstrap}, config())
	check(err)
	defer client.Close()
	at, err := client.GetOffset("sarama-admin", 0, base.Add(4*time.Second).UnixNano()/int64(time.Millisecond))
	check(err)
	res["offsetAtTime"] = at
	// Ten records in one batch to partition 2, then its log start moved to
	// the middle of it: ListOffsets by time starts from the log start.
	c.Producer.Flush.Messages = 10
	c.Producer.Flush.Frequency = time.Second
	p, err = sarama.NewSyncProducer([]string{args.Bootstrap}, c)
	check(err)
	var batch []*sarama.ProducerMessage
	for i := 0; i < 10; i++ {
		batch = append(batch, &sarama.ProducerMessage{Topic: "sarama-admin", Partition: 2,
			Value: sarama.StringEncoder(fmt.Sprint(i)), Timestamp: base.Add(time.Duration(i) * time.Second)})
	}
	check(p.SendMessages(batch))
	check(p.Close())
	check(admin.DeleteRecords("sarama-admin", map[int32]int64{2: 4}))
	var midBatch []int64
	for _, s := range []int{0, 6} {
		at, err := client.GetOffset("sarama-admin", 2, base.Add(time.Duration(s)*time.Second).UnixNano()/int64(time.Millisecond))
		check(err)
		midBatch = append(midBatch, at)
	}
	res["byTimeFromMidBatch"] = midBatch

	res["deleteRecords"] = errName(admin.DeleteRecords("sarama-admin", map[int32]int64{0: 4}))
	low, err := client.GetOffset("sarama-admin", 0, sarama.OffsetOldest)
	check(err)
	high, err := client.GetOffset("sarama-admin", 0, sarama.OffsetNewest)
	check(err)
	res["watermarks"] = []int64{low, high}
	// (This sarama drops DeleteRecords' per-partition errors: the
	// watermarks tell.)
	res["deleteRecordsPastEnd"] = errName(admin.DeleteRecords("sarama-admin", map[int32]int64{0: 99}))
	low, err = client.GetOffset("sarama-admin", 0, sarama.OffsetOldest)
	check(err)
	high, err = client.GetOffset("sarama-admin", 0, sarama.OffsetNewest)
	check(err)
	res["watermarksAfterPastEnd"] = []int64{low, high}

	res["delete"] = errName(admin.DeleteTopic("sarama-admin"))
	res["deleteUnknown"] = errName(unwrapTopic(admin.DeleteTopic("sarama-admin")))
	// (Not the admin's ListTopics: this sarama's asks DescribeConfigs v0.)
	check(client.RefreshMetadata())
	topics, err := client.Topics()
	check(err)
	res["listedAfterDelete"] = false
	for _, t := range topics {
		if t == "sarama-admin" {
			res["listedAfterDelete"] = true
		}
	}

	// This sarama's DescribeConfig sends v0, which Kafka 4.0 removed
	// (KIP-896, a 2.1 baseline) and so does Floe: last, on its own client.
	late, err := sarama.NewClusterAdmin([]string{args.Bootstrap}, config())
	check(err)
	_, err = late.DescribeConfig(sarama.ConfigResource{Type: sarama.TopicResource, Name: "sarama-gone"})
	res["describeConfigV0"] = errName(err)
	late.Close()
	out(res)
}

// unwrapTopic gives the Kafka error inside a sarama TopicError.
func unwrapTopic(err error) error {
	if te, ok := err.(*sarama.TopicError); ok {
		return te.Err
	}
	if te, ok := err.(*sarama.TopicPartitionError); ok {
		return te.Err
	}
	return err
}

func str(s string) *string { return &s }

// A login (the mechanism of the arguments): produce and read back.
func saslScenario() {
	admin, err := sarama.NewClusterAdmin([]string{args.Bootstrap}, config())
	if err != nil {
		out(map[string]interface{}{"loginError": err.Error()})
		return
	}
	defer admin.Close()
	createTopic(admin, args.Topic, 1)
	c := config()
	c.Producer.RequiredAcks = sarama.WaitForAll
	c.Producer.Return.Successes = true
	p, err := sarama.NewSyncProducer([]string{args.Bootstrap}, c)
	check(err)
	_, off, err := p.SendMessage(&sarama.ProducerMessage{Topic: args.Topic, Value: sarama.StringEncoder("hello " + args.Mechanism)})
	check(err)
	check(p.Close())
	got := readAll(args.Topic)
	out(map[string]interface{}{"offset": off, "value": got[pos{0, off}].Value})
}

func main() {
	if len(os.Args) < 2 {
		fail(fmt.Errorf("usage: sarama SCENARIO [JSON]"))
	}
	if len(os.Args) > 2 {
		check(json.Unmarshal([]byte(os.Args[2]), &args))
	}
	if os.Getenv("SARAMA_DEBUG") != "" {
		sarama.Logger = log.New(os.Stderr, "[sarama] ", log.LstdFlags)
	}
	switch os.Args[1] {
	case "codecs":
		codecsScenario()
	case "reread":
		rereadScenario()
	case "groups":
		groupsScenario()
	case "admin":
		adminScenario()
	case "sasl":
		saslScenario()
	default:
		fail(fmt.Errorf("unknown scenario %q", os.Args[1]))
	}
}
