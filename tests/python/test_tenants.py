"""Tenants over the real binary: keys from the admin API, SASL PLAIN and
SCRAM-SHA-256/512 logins with kafka-python and kcat, two tenants using the
same topic name without seeing each other, a revoked key cut off, and
wrong secrets refused."""
import json
import random
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError

from conftest import Floe

TOKEN = "test-admin-token"
MECHANISMS = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


def admin(floe, method, path, body=None, token=TOKEN):
    req = urllib.request.Request(
        f"http://127.0.0.1:{floe.http_port}/admin/v1{path}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


@pytest.fixture
def tenants():
    with tempfile.TemporaryDirectory(prefix="floe-py-") as d:
        f = Floe(d, ["--admin-token", TOKEN, "--auth", "required"])
        try:
            keys = {}
            for t in ["acme", "globex"]:
                assert admin(f, "POST", "/tenants", {"id": t, "plan": "standard"})[0] == 201
                status, k = admin(f, "POST", f"/tenants/{t}/keys")
                assert status == 201
                keys[t] = (k["key"], k["secret"])
            yield f, keys
        finally:
            f.close()


def sasl(floe, key, mechanism):
    return dict(bootstrap_servers=floe.bootstrap, security_protocol="SASL_PLAINTEXT",
                sasl_mechanism=mechanism, sasl_plain_username=key[0],
                sasl_plain_password=key[1])


def kcat_login(floe, key, mechanism, cafile=None):
    """kcat's arguments to log in with `key` (id, secret), over TLS when a
    CA file is given."""
    protocol = "SASL_SSL" if cafile else "SASL_PLAINTEXT"
    args = ["-b", floe.bootstrap, "-X", f"security.protocol={protocol}",
            "-X", f"sasl.mechanisms={mechanism}", "-X", f"sasl.username={key[0]}",
            "-X", f"sasl.password={key[1]}"]
    return args + (["-X", f"ssl.ca.location={cafile}"] if cafile else [])


def kcat_produce(login, topic, lines, *more):
    r = subprocess.run(["kcat", *login, "-P", "-t", topic, *more], input=lines,
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()


def kcat_read(login, topic):
    """Everything in `topic`, read from the beginning: the finished process."""
    return subprocess.run(["kcat", *login, "-C", "-t", topic, "-o", "beginning", "-e", "-q"],
                          capture_output=True, timeout=60)


def read_all(conf, topic, n, timeout_s=20):
    c = KafkaConsumer(**conf, auto_offset_reset="earliest", enable_auto_commit=False,
                      consumer_timeout_ms=1000)
    c.assign([TopicPartition(topic, 0)])
    got, deadline = [], time.time() + timeout_s
    while len(got) < n and time.time() < deadline:
        for m in c:
            got.append(m.value)
    c.close()
    return got


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_two_tenants_share_topic_names_and_see_only_their_own(tenants, mechanism):
    floe, keys = tenants
    for t in ["acme", "globex"]:
        p = KafkaProducer(**sasl(floe, keys[t], mechanism), acks="all")
        for i in range(50):
            p.send("orders", f"{t}-{i}".encode(), partition=0)
        p.send(f"only-{t}", b"x", partition=0)
        p.flush()
        p.close()
    for t in ["acme", "globex"]:
        conf = sasl(floe, keys[t], mechanism)
        assert read_all(conf, "orders", 50) == [f"{t}-{i}".encode() for i in range(50)]
        a = KafkaAdminClient(**conf)
        topics = set(a.list_topics())
        a.close()
        other = "globex" if t == "acme" else "acme"
        assert f"only-{t}" in topics and f"only-{other}" not in topics


def test_wrong_secrets_and_unknown_keys_are_refused(tenants):
    floe, keys = tenants
    key = keys["acme"]
    for mechanism in MECHANISMS:
        for bad in [(key[0], key[1] + "x"), ("fk_nobody", key[1])]:
            with pytest.raises(KafkaError):
                p = KafkaProducer(**sasl(floe, bad, mechanism), api_version=(3, 0),
                                  max_block_ms=3000)
                p.send("orders", b"never", partition=0).get(timeout=5)
    # Nothing got in.
    assert read_all(sasl(floe, key, "PLAIN"), "orders", 1, timeout_s=3) == []


def test_a_revoked_key_is_cut_off(tenants):
    floe, keys = tenants
    status, second = admin(floe, "POST", "/tenants/acme/keys")
    assert status == 201
    conf = sasl(floe, (second["key"], second["secret"]), "SCRAM-SHA-256")
    p = KafkaProducer(**conf, acks="all", retries=0, max_block_ms=3000,
                      reconnect_backoff_ms=200, reconnect_backoff_max_ms=500)
    p.send("orders", b"before", partition=0).get(timeout=10)
    assert admin(floe, "DELETE", f"/tenants/acme/keys/{second['key']}")[0] == 204
    cut = False
    deadline = time.time() + 5
    while time.time() < deadline and not cut:
        try:
            p.send("orders", b"after", partition=0).get(timeout=2)
            time.sleep(0.2)
        except KafkaError:
            cut = True
    try:
        p.close(timeout=1)
    except KafkaError:
        pass  # the record it could not send
    assert cut, "the revoked key still produces 5 s later"
    got = read_all(sasl(floe, keys["acme"], "PLAIN"), "orders", 1)
    assert got == [b"before"]


def test_kcat_logs_in_with_scram(tenants):
    floe, keys = tenants
    common = kcat_login(floe, keys["globex"], "SCRAM-SHA-512")
    kcat_produce(common, "kc", b"one\ntwo\n", "-p", "0")
    r = kcat_read(common, "kc")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.splitlines() == [b"one", b"two"]
    # The other tenant's key sees no such records.
    other = kcat_login(floe, keys["acme"], "SCRAM-SHA-512")
    assert kcat_read(other, "kc").stdout == b""


def test_admin_api_refuses_without_the_token_and_answers_errors(tenants):
    floe, _ = tenants
    assert admin(floe, "GET", "/tenants", token="wrong")[0] == 401
    assert admin(floe, "POST", "/tenants", {"id": "acme"})[0] == 409
    assert admin(floe, "POST", "/tenants", {"id": "a/b"})[0] == 400
    assert admin(floe, "POST", "/tenants", {"id": "x", "plan": "gold"})[0] == 400
    assert admin(floe, "GET", "/tenants/nobody")[0] == 404
    assert admin(floe, "DELETE", "/tenants/acme/keys/fk_nobody")[0] == 404
    status, t = admin(floe, "PUT", "/tenants/acme/quota", {"produce_bytes_per_sec": 1000000})
    assert status == 200 and t["limits"]["produce_bytes_per_sec"] == 1000000
    assert admin(floe, "PUT", "/tenants/acme/quota", {"bogus": 1})[0] == 400
    status, listed = admin(floe, "GET", "/tenants")
    assert [t["id"] for t in listed["tenants"]] == ["acme", "globex"]
    assert all("secret" not in json.dumps(t) for t in listed["tenants"])


def test_the_readme_walkthrough_with_the_cli_and_kcat(tenants):
    """README.md's steps: `floe tenant create`, `floe key create`, kcat."""
    floe, _ = tenants
    env = {"FLOE_URL": f"http://127.0.0.1:{floe.http_port}", "FLOE_ADMIN_TOKEN": TOKEN,
           "PATH": "/usr/bin:/bin"}

    def cli(*args):
        r = subprocess.run([floe.bin, *args], capture_output=True, env=env, timeout=30)
        assert r.returncode == 0, r.stderr.decode()
        return json.loads(r.stdout)

    assert cli("tenant", "create", "initech", "--plan", "standard")["id"] == "initech"
    k = cli("key", "create", "initech")
    assert cli("quota", "set", "initech", "--partitions", "4")["limits"]["partitions"] == 4
    assert "initech" in [t["id"] for t in cli("tenant", "list")["tenants"]]
    common = kcat_login(floe, (k["key"], k["secret"]), "PLAIN")
    kcat_produce(common, "hello", b"world\n")
    r = kcat_read(common, "hello")
    assert r.stdout == b"world\n", r.stderr.decode()
    usage = cli("usage", "initech", "--from", "0")
    assert usage["tenant"] == "initech" and usage["total"]["bytes_in"] > 0, usage
    r = subprocess.run([floe.bin, "key", "create", "nobody"], capture_output=True, env=env,
                       timeout=30)
    assert r.returncode != 0 and b"404" in r.stderr


def self_signed(d):
    """A certificate for 127.0.0.1 and its key, in `d`."""
    cert, key = f"{d}/cert.pem", f"{d}/key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
         "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
         "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.fixture
def tls_floe():
    """`--auth required` behind TLS, with a self-signed certificate for
    127.0.0.1 that the clients trust as their CA."""
    with tempfile.TemporaryDirectory(prefix="floe-py-") as d:
        cert, key = self_signed(d)
        f = Floe(d, ["--admin-token", TOKEN, "--auth", "required",
                     "--tls-cert", cert, "--tls-key", key,
                     "--usage-window-ms", "2000", "--usage-every-ms", "200"])
        try:
            assert admin(f, "POST", "/tenants", {"id": "acme"})[0] == 201
            status, k = admin(f, "POST", "/tenants/acme/keys")
            assert status == 201
            yield f, cert, (k["key"], k["secret"])
        finally:
            f.close()


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_kafka_python_over_tls(tls_floe, mechanism):
    floe, cert, key = tls_floe
    conf = dict(sasl(floe, key, mechanism), security_protocol="SASL_SSL", ssl_cafile=cert)
    p = KafkaProducer(**conf, acks="all")
    for i in range(20):
        p.send("secure", f"r{i}".encode(), partition=0)
    p.flush()
    p.close()
    assert read_all(conf, "secure", 20)[-20:] == [f"r{i}".encode() for i in range(20)]


def test_usage_matches_what_the_client_sent(tls_floe, monkeypatch):
    """Bytes in are the record-batch bytes kafka-python sent (its own count
    of every batch it put in a request), over SCRAM and TLS; bytes out,
    requests and connection time follow, in the API and /metrics."""
    from kafka.producer.sender import SenderMetrics as Sender
    floe, cert, key = tls_floe
    sent = []
    counted = Sender.update_produce_request_metrics

    def count(self, batches):
        sent.extend(b.records.size_in_bytes() for node in batches.values() for b in node)
        return counted(self, batches)

    monkeypatch.setattr(Sender, "update_produce_request_metrics", count)
    conf = dict(sasl(floe, key, "SCRAM-SHA-512"), security_protocol="SASL_SSL", ssl_cafile=cert)
    p = KafkaProducer(**conf, acks="all", linger_ms=2)
    rng = random.Random(7)
    n = 3000
    for i in range(n):
        p.send("metered", rng.randbytes(rng.randrange(1, 2000)), partition=0)
    p.flush()
    p.close()
    sent_bytes = sum(sent)
    assert sent_bytes > 2_000_000
    print(f"kafka-python sent {sent_bytes} bytes of batches")
    status, usage = admin(floe, "GET", "/tenants/acme/usage?from=0")
    assert status == 200
    print(f"metered bytes in: {usage['total']['bytes_in']}")
    assert abs(usage["total"]["bytes_in"] - sent_bytes) <= sent_bytes * 0.001, (usage, sent_bytes)
    assert len(read_all(conf, "metered", n)) == n
    deadline = time.time() + 10
    while time.time() < deadline:
        total = admin(floe, "GET", "/tenants/acme/usage?from=0")[1]["total"]
        if total["bytes_out"] >= total["bytes_in"] and total["connection_seconds"] > 0:
            break
        time.sleep(0.2)
    assert total["bytes_out"] >= total["bytes_in"], total
    assert total["requests"] > 2 and total["connection_seconds"] > 0, total
    with urllib.request.urlopen(f"http://127.0.0.1:{floe.http_port}/metrics", timeout=10) as r:
        metrics = r.read().decode()
    assert f'floe_tenant_bytes_in_total{{tenant="acme"}} {usage["total"]["bytes_in"]}' in metrics


def test_kcat_over_tls_and_plaintext_refused(tls_floe):
    floe, cert, key = tls_floe
    common = kcat_login(floe, key, "SCRAM-SHA-256", cafile=cert)
    kcat_produce(common, "tls-kc", b"sealed\n")
    r = kcat_read(common, "tls-kc")
    assert r.stdout == b"sealed\n", r.stderr.decode()
    # A client speaking plaintext to the TLS listener gets nothing back.
    import socket
    s = socket.create_connection(("127.0.0.1", floe.kafka_port), timeout=10)
    s.sendall(bytes.fromhex("0000000e0012000300000001000466000000"))
    data = s.recv(4096)
    s.close()
    assert not data.startswith(b"\x00\x00"), "no Kafka response over plaintext"


def test_a_produce_quota_holds_a_burst_with_throttle_hints(tenants):
    """1 MB/s: a 5 MB burst takes 4.25-5.75 s, and the client is told."""
    floe, keys = tenants
    status, _ = admin(floe, "PUT", "/tenants/acme/quota", {"produce_bytes_per_sec": 1_000_000})
    assert status == 200
    p = KafkaProducer(**sasl(floe, keys["acme"], "PLAIN"), acks="all", linger_ms=5,
                      batch_size=64 * 1024, max_request_size=1 << 20)
    p.send("burst", b"warm-up", partition=0).get(timeout=10)
    value = b"v" * 1000
    n = 4900  # with record overhead, about 5.0 MB of batches
    start = time.time()
    for i in range(n):
        p.send("burst", value, partition=0)
    p.flush(timeout=60)
    took = time.time() - start
    throttle = [v for group in p.metrics().values() for k, v in group.items()
                if k == "throttle-time-max" and v and v > 0]
    p.close()
    print(f"5 MB burst at 1 MB/s took {took:.2f} s")
    assert 4.25 <= took <= 5.75, f"the burst took {took:.2f} s"
    assert throttle and throttle[0] > 0, "the client saw throttle_time_ms"
    # The other tenant is not held back by it.
    q = KafkaProducer(**sasl(floe, keys["globex"], "PLAIN"), acks="all")
    start = time.time()
    for i in range(n):
        q.send("burst", value, partition=0)
    q.flush(timeout=60)
    assert time.time() - start < 4.25
    q.close()


def test_a_partition_quota_refuses_topics_beyond_it(tenants):
    floe, keys = tenants
    assert admin(floe, "PUT", "/tenants/globex/quota", {"partitions": 3})[0] == 200
    from kafka.admin import NewTopic
    from kafka.errors import PolicyViolationError
    a = KafkaAdminClient(**sasl(floe, keys["globex"], "PLAIN"))
    a.create_topics([NewTopic("two", 2, 1)])
    with pytest.raises(PolicyViolationError):
        a.create_topics([NewTopic("two-more", 2, 1)])
    a.close()


def test_a_connection_quota_refuses_more_clients_and_others_carry_on(tenants):
    """A tenant's clients past its `connections` quota are refused at login;
    its connected clients and the other tenant carry on, and a client that
    closes makes room for the next."""
    floe, keys = tenants
    assert admin(floe, "PUT", "/tenants/acme/quota", {"connections": 4})[0] == 200
    conf = dict(sasl(floe, keys["acme"], "SCRAM-SHA-512"), acks="all", api_version=(3, 0),
                max_block_ms=3000, reconnect_backoff_ms=200, reconnect_backoff_max_ms=500)

    def connect():
        """A producer that got a record in, or None if it was refused."""
        p = None
        try:
            p = KafkaProducer(**conf)
            p.send("conns", b"x", partition=0).get(timeout=5)
            return p
        except KafkaError:
            if p is not None:
                p.close(timeout=1)
            return None

    held = []
    while len(held) < 10 and (p := connect()):
        held.append(p)
    # A producer keeps one connection once its bootstrap one is closed: 4
    # fit, or 3 if a bootstrap connection was still counted.
    assert 3 <= len(held) <= 4, len(held)
    q = KafkaProducer(**sasl(floe, keys["globex"], "SCRAM-SHA-512"), acks="all")
    q.send("conns", b"y", partition=0).get(timeout=10)
    q.close()
    for p in held:
        p.send("conns", b"z", partition=0).get(timeout=10)
    held.pop().close()
    deadline = time.time() + 10
    while not (p := connect()):
        assert time.time() < deadline, "no room after a client closed"
        time.sleep(0.2)
    held.append(p)
    for p in held:
        p.close()


def test_a_storage_quota_refuses_produce_beyond_it(tenants):
    floe, keys = tenants
    assert admin(floe, "PUT", "/tenants/acme/quota", {"storage_bytes": 50_000})[0] == 200
    from kafka.errors import PolicyViolationError
    p = KafkaProducer(**sasl(floe, keys["acme"], "PLAIN"), acks="all", linger_ms=0,
                      retries=0)
    stored, refused = 0, 0
    for i in range(100):
        try:
            p.send("full", b"x" * 1000, partition=0).get(timeout=10)
            stored += 1
        except PolicyViolationError:
            refused += 1
    # Each batch is about 1,070 bytes: about 47 fit, the rest are refused.
    assert 40 <= stored <= 55 and stored + refused == 100, (stored, refused)
    # The other tenant is not limited by it; raising the quota lets acme on.
    q = KafkaProducer(**sasl(floe, keys["globex"], "PLAIN"), acks="all")
    q.send("full", b"y" * 1000, partition=0).get(timeout=10)
    q.close()
    assert admin(floe, "PUT", "/tenants/acme/quota", {"storage_bytes": 10_000_000})[0] == 200
    p.send("full", b"z" * 1000, partition=0).get(timeout=10)
    p.close()
    assert len(read_all(sasl(floe, keys["acme"], "PLAIN"), "full", stored + 1)) == stored + 1


def test_acls_restrict_a_key_within_its_tenant(tenants):
    """kafka-python's admin client binds a second key of acme to reading
    topics prefixed orders- with any group: it reads those, and can do
    nothing else (TOPIC/GROUP_AUTHORIZATION_FAILED), nor touch the ACLs;
    the tenant's first key, unrestricted, manages them and sees them."""
    from kafka.admin import (ACL, ACLFilter, ACLOperation, ACLPermissionType,
                             ACLResourcePatternType, ResourcePattern,
                             ResourcePatternFilter, ResourceType)
    from kafka.errors import (ClusterAuthorizationFailedError,
                              GroupAuthorizationFailedError,
                              TopicAuthorizationFailedError)
    floe, keys = tenants
    owner = sasl(floe, keys["acme"], "SCRAM-SHA-256")
    status, k = admin(floe, "POST", "/tenants/acme/keys")
    assert status == 201
    reader = sasl(floe, (k["key"], k["secret"]), "SCRAM-SHA-256")
    who = f"User:{k['key']}"
    p = KafkaProducer(**owner, acks="all")
    for t in ["orders-eu", "secret"]:
        p.send(t, b"for " + t.encode(), partition=0)
    p.flush()
    p.close()

    a = KafkaAdminClient(**owner)
    made = a.create_acls([
        ACL(who, "*", ACLOperation.READ, ACLPermissionType.ALLOW,
            ResourcePattern(ResourceType.TOPIC, "orders-", ACLResourcePatternType.PREFIXED)),
        ACL(who, "*", ACLOperation.READ, ACLPermissionType.ALLOW,
            ResourcePattern(ResourceType.GROUP, "readers")),
    ])
    assert len(made["succeeded"]) == 2 and not made["failed"], made
    bad = a.create_acls([ACL(who, "10.0.0.1", ACLOperation.READ, ACLPermissionType.ALLOW,
                             ResourcePattern(ResourceType.TOPIC, "x"))])
    assert len(bad["failed"]) == 1, bad
    any_topic = ACLFilter(None, None, ACLOperation.ANY, ACLPermissionType.ANY,
                          ResourcePatternFilter(ResourceType.TOPIC, None,
                                                ACLResourcePatternType.ANY))
    listed, _ = a.describe_acls(any_topic)
    assert [(x.principal, x.resource_pattern.resource_name) for x in listed] == [(who, "orders-")]

    # The reader reads orders-eu in its group, and nothing else.
    c = KafkaConsumer("orders-eu", **reader, group_id="readers", auto_offset_reset="earliest",
                      consumer_timeout_ms=8000)
    assert [m.value for m in c] == [b"for orders-eu"]
    c.commit()
    c.close()
    ra = KafkaAdminClient(**reader)
    assert set(ra.list_topics()) == {"orders-eu"}
    with pytest.raises(ClusterAuthorizationFailedError):
        ra.describe_acls(any_topic)
    q = KafkaProducer(**reader, acks="all", retries=0, max_block_ms=5000)
    with pytest.raises(TopicAuthorizationFailedError):
        q.send("orders-eu", b"no", partition=0).get(timeout=10)
    q.close()
    r = kcat_read(kcat_login(floe, (k["key"], k["secret"]), "SCRAM-SHA-256"), "secret")
    assert r.returncode != 0 and b"for secret" not in r.stdout, r
    assert b"authoriz" in r.stderr.lower(), r.stderr
    c = KafkaConsumer("orders-eu", **reader, group_id="others", consumer_timeout_ms=3000)
    with pytest.raises(GroupAuthorizationFailedError):
        list(c)
    c.close()
    ra.close()

    # Removing the bindings lifts the restriction.
    removed = a.delete_acls([ACLFilter(who, None, ACLOperation.ANY, ACLPermissionType.ANY,
                                       ResourcePatternFilter(ResourceType.ANY, None,
                                                             ACLResourcePatternType.ANY))])
    assert len(removed[0][1]) == 2, removed
    a.close()
    q = KafkaProducer(**reader, acks="all")
    q.send("secret", b"now allowed", partition=0).get(timeout=10)
    q.close()
    # The other tenant has ACLs of its own: none.
    g = KafkaAdminClient(**sasl(floe, keys["globex"], "PLAIN"))
    assert g.describe_acls(any_topic)[0] == []
    g.close()


def test_http_basic_auth_and_429_over_the_request_quota(tenants):
    """The tenant's own HTTP API takes the same key and secret as basic
    auth; over its request quota it answers 429 with Retry-After, and the
    other tenant is served all the while."""
    import base64
    floe, keys = tenants

    def get(key, path="/v1/usage?from=0"):
        token = base64.b64encode(f"{key[0]}:{key[1]}".encode()).decode()
        req = urllib.request.Request(f"http://127.0.0.1:{floe.http_port}{path}",
                                     headers={"Authorization": f"Basic {token}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, dict(r.headers), json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), json.loads(e.read() or b"null")

    status, headers, body = get((keys["acme"][0], "wrong"))
    assert status == 401 and headers.get("www-authenticate", "").startswith("Basic"), body
    status, _, body = get(keys["acme"])
    assert status == 200 and body["tenant"] == "acme", body
    assert admin(floe, "PUT", "/tenants/acme/quota", {"requests_per_sec": 2})[0] == 200
    answers = [get(keys["acme"]) for _ in range(8)]
    throttled = [h for s, h, _ in answers if s == 429]
    assert throttled, [s for s, _, _ in answers]
    assert all(int(h["retry-after"]) >= 1 for h in throttled), throttled
    assert get(keys["globex"])[0] == 200


def test_http_produce_and_fetch_are_held_to_the_byte_quotas(tenants):
    """HTTP produce and fetch pay the tenant's byte rates as Kafka's do:
    charged before the append (a produce) or as served (a fetch); once the
    tenant runs ahead of a rate, that kind of request is answered 429 with
    Retry-After until it has caught up, while other kinds and the other
    tenant are served."""
    import base64
    from kafka.admin import KafkaAdminClient, NewTopic
    floe, keys = tenants

    def call(key, method, path, body=None):
        token = base64.b64encode(f"{key[0]}:{key[1]}".encode()).decode()
        req = urllib.request.Request(f"http://127.0.0.1:{floe.http_port}{path}", method=method,
                                     data=body and body.encode(),
                                     headers={"Authorization": f"Basic {token}",
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, dict(r.headers), r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read().decode()

    for tenant in ("acme", "globex"):
        a = KafkaAdminClient(**sasl(floe, keys[tenant], "PLAIN"))
        a.create_topics([NewTopic("t", 1, 1)])
        a.close()
    records = "/v3/clusters/floe-{}/topics/t/records"
    body = json.dumps({"partition_id": 0, "value": {"type": "STRING", "data": "x" * 50_000}})
    assert admin(floe, "PUT", "/tenants/acme/quota", {"produce_bytes_per_sec": 20_000,
                                                      "fetch_bytes_per_sec": 20_000})[0] == 200
    # 50 KB at 20 KB/s: the first is taken, the next is told to wait.
    first = call(keys["acme"], "POST", records.format("acme"), body)
    assert first[0] == 200, first
    second = call(keys["acme"], "POST", records.format("acme"), body)
    assert second[0] == 429 and int(second[1]["retry-after"]) >= 1, second
    # The same route spelt with percent-encoding is the same produce.
    encoded = call(keys["acme"], "POST", records.format("acme")[:-1] + "%73", body)
    assert encoded[0] == 429, encoded
    # Only the produce rate is spent: a fetch and the other tenant go on.
    read = "/v1/topics/t/partitions/0/records?offset=0"
    status, _, text = call(keys["acme"], "GET", read)
    assert status == 200 and len(json.loads(text)["records"]) == 1, text
    assert call(keys["globex"], "POST", records.format("globex"), body)[0] == 200
    # That fetch served 50 KB: the next fetch waits too.
    status, headers, _ = call(keys["acme"], "GET", read)
    assert status == 429 and int(headers["retry-after"]) >= 1
    # Once caught up, served again; nothing refused was appended.
    time.sleep(int(second[1]["retry-after"]) + 1)
    status, _, text = call(keys["acme"], "GET", read)
    assert status == 200 and json.loads(text)["high_watermark"] == 1, text


def test_event_streams_count_in_the_connection_quota(tenants):
    """An HTTP event stream is a connection held open: past the tenant's
    `connections` quota the next one is answered 429 with Retry-After, the
    other tenant's streams are not affected, and a stream that ends makes
    room for the next."""
    import base64
    import http.client
    from kafka.admin import NewTopic
    floe, keys = tenants
    for tenant in ("acme", "globex"):
        a = KafkaAdminClient(**sasl(floe, keys[tenant], "PLAIN"))
        a.create_topics([NewTopic("ev", 1, 1)])
        a.close()
    assert admin(floe, "PUT", "/tenants/acme/quota", {"connections": 2})[0] == 200

    def auth(key):
        return "Basic " + base64.b64encode(f"{key[0]}:{key[1]}".encode()).decode()

    def stream(key):
        """An open event stream's connection and status."""
        c = http.client.HTTPConnection("127.0.0.1", floe.http_port, timeout=10)
        c.request("GET", "/v1/topics/ev/events?from=earliest",
                  headers={"Authorization": auth(key)})
        r = c.getresponse()
        if r.status != 200:
            r.read()
        return c, r

    # The admin client's connections may still be counted for a moment.
    held, deadline = [], time.time() + 10
    while len(held) < 2:
        c, r = stream(keys["acme"])
        if r.status == 200:
            held.append(c)
        else:
            c.close()
            assert time.time() < deadline, r.status
            time.sleep(0.2)
    c, r = stream(keys["acme"])
    assert r.status == 429 and int(r.getheader("retry-after")) >= 1, r.status
    c.close()
    other, r = stream(keys["globex"])
    assert r.status == 200
    other.close()
    # A stream whose client left ends at its next write: a record makes one.
    held.pop().close()
    body = json.dumps({"partition_id": 0, "value": {"type": "STRING", "data": "x"}})
    req = urllib.request.Request(
        f"http://127.0.0.1:{floe.http_port}/v3/clusters/floe-acme/topics/ev/records",
        method="POST", data=body.encode(),
        headers={"Authorization": auth(keys["acme"]), "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
    deadline = time.time() + 20
    while True:
        c, r = stream(keys["acme"])
        if r.status == 200:
            break
        c.close()
        assert time.time() < deadline, "no room after a stream ended"
        time.sleep(0.5)
    c.close()
    for c in held:
        c.close()


def test_an_event_stream_over_its_fetch_rate_waits_and_others_do_not(tenants):
    """An event stream whose tenant has been served past its
    fetch_bytes_per_sec serves nothing more until the tenant is back
    within it (the stream stays open and loses nothing), while another
    tenant's stream is served meanwhile."""
    import base64
    import http.client
    from kafka.admin import NewTopic
    floe, keys = tenants
    for tenant in ("acme", "globex"):
        a = KafkaAdminClient(**sasl(floe, keys[tenant], "PLAIN"))
        a.create_topics([NewTopic("paced", 1, 1)])
        a.close()
    rate = 20_000
    assert admin(floe, "PUT", "/tenants/acme/quota", {"fetch_bytes_per_sec": rate})[0] == 200

    def auth(key):
        return "Basic " + base64.b64encode(f"{key[0]}:{key[1]}".encode()).decode()

    def produce(tenant, data):
        body = json.dumps({"partition_id": 0, "value": {"type": "STRING", "data": data}})
        req = urllib.request.Request(
            f"http://127.0.0.1:{floe.http_port}/v3/clusters/floe-{tenant}/topics/paced/records",
            method="POST", data=body.encode(),
            headers={"Authorization": auth(keys[tenant]), "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200

    def stream(tenant):
        c = http.client.HTTPConnection("127.0.0.1", floe.http_port, timeout=60)
        c.request("GET", "/v1/topics/paced/events?from=earliest",
                  headers={"Authorization": auth(keys[tenant])})
        r = c.getresponse()
        assert r.status == 200, r.status
        return c, r

    def values(r, n):
        """The next `n` records' values on the stream, and when the last came."""
        out = []
        while len(out) < n:
            line = r.readline()
            assert line, "the stream ended"
            if line.startswith(b"data: "):
                out.append(base64.b64decode(json.loads(line[6:])["value"]).decode())
        return out, time.monotonic()

    # 120 KB at 20 KB/s: served at once, then about 6 s owed.
    big = ["%d" % i * 40_000 for i in range(3)]
    for v in big:
        produce("acme", v)
    ca, ra = stream("acme")
    got, served = values(ra, 3)
    assert got == big
    produce("acme", "next")
    produce("globex", "other")
    cg, rg = stream("globex")
    other, other_at = values(rg, 1)
    assert other == ["other"]
    after, next_at = values(ra, 1)
    assert after == ["next"], "nothing lost or repeated"
    owed = sum(map(len, big)) / rate
    assert next_at - served >= owed / 2, (next_at - served, owed)
    assert other_at < next_at, "the other tenant's stream was not held"
    ca.close()
    cg.close()


def test_https_with_http_tls():
    """With --http-tls the HTTP listener speaks HTTPS with the Kafka
    listener's certificate: basic auth travels encrypted."""
    import base64
    import ssl
    with tempfile.TemporaryDirectory(prefix="floe-py-") as d:
        cert, key = self_signed(d)
        f = Floe(d, ["--admin-token", TOKEN, "--tls-cert", cert, "--tls-key", key,
                     "--http-tls"])
        try:
            ctx = ssl.create_default_context(cafile=cert)

            def call(method, path, body=None, auth=f"Bearer {TOKEN}"):
                req = urllib.request.Request(
                    f"https://127.0.0.1:{f.http_port}{path}", method=method,
                    data=None if body is None else json.dumps(body).encode(),
                    headers={"Authorization": auth, "Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
                    return r.status, json.loads(r.read() or b"null")

            assert call("POST", "/admin/v1/tenants", {"id": "acme"})[0] == 201
            k = call("POST", "/admin/v1/tenants/acme/keys")[1]
            basic = base64.b64encode(f"{k['key']}:{k['secret']}".encode()).decode()
            status, body = call("GET", "/v1/usage", auth=f"Basic {basic}")
            assert status == 200 and body["tenant"] == "acme"
            # Plain HTTP gets no HTTP answer.
            with pytest.raises(Exception):
                urllib.request.urlopen(f"http://127.0.0.1:{f.http_port}/healthz", timeout=5)
        finally:
            f.close()
