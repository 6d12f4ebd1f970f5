"""kafka-python's idempotent producer (its default) against the real binary,
through a proxy that cuts its connections the worst way: requests still
reach Floe, their responses are dropped, then the connection closes. The
producer must resend what it could not see acknowledged, and Floe must
answer those retries with their first offsets: every record once, in order."""
import contextlib
import re
import socket
import tempfile
import threading
import time
import urllib.request

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from conftest import Floe, free_port

PARTITIONS = 4
RECORDS = 20_000


class CuttingProxy:
    def __init__(self, port, target_port):
        self.target_port = target_port
        self.links = []  # (client socket, server socket, mute event)
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", port))
        self.listener.settimeout(0.1)
        self.running = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while self.running:
            try:
                client, _ = self.listener.accept()
            except OSError:
                continue
            client.settimeout(None)
            server = socket.create_connection(("127.0.0.1", self.target_port))
            mute = threading.Event()
            threading.Thread(target=self._pump, args=(client, server, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, mute), daemon=True).start()
            with self.lock:
                self.links.append((client, server, mute))

    @staticmethod
    def _pump(src, dst, mute):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if mute is None or not mute.is_set():
                    dst.sendall(data)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def cut_all(self, mute_for):
        with self.lock:
            links, self.links = self.links, []
        for _, _, mute in links:
            mute.set()
        time.sleep(mute_for)
        for client, server, _ in links:
            for s in (client, server):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
        return len(links)

    def close(self):
        self.running = False
        self.cut_all(0)
        self.listener.close()

    @contextlib.contextmanager
    def cutting(self):
        """While the block runs: every 0.7 s, drop the responses for 0.3 s,
        then cut every connection. Yields the list of connections cut each
        time."""
        cuts = []
        on = threading.Event()
        on.set()

        def cutter():
            while on.is_set():
                time.sleep(0.4)
                cuts.append(self.cut_all(0.3))

        t = threading.Thread(target=cutter)
        t.start()
        try:
            yield cuts
        finally:
            on.clear()
            t.join()


def metric(floe, name):
    text = urllib.request.urlopen(f"http://127.0.0.1:{floe.http_port}/metrics").read().decode()
    m = re.search(rf"^{name} (\d+)$", text, re.M)
    return int(m.group(1)) if m else 0


def test_cut_connections_leave_every_record_once_and_in_order():
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="floe-py-") as d:
        floe = Floe(d, ["--advertised-kafka", f"127.0.0.1:{port}"])
        proxy = CuttingProxy(port, floe.kafka_port)
        try:
            run(floe, f"127.0.0.1:{port}", proxy)
        finally:
            proxy.close()
            floe.close()


def run(floe, bootstrap, proxy):
    KafkaAdminClient(bootstrap_servers=floe.bootstrap).create_topics(
        [NewTopic("py-idem", PARTITIONS, 1)])
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2,
                      request_timeout_ms=5000, retry_backoff_ms=50)
    assert p.config["enable_idempotence"], "kafka-python's default is idempotent"
    futures = []
    with proxy.cutting() as cuts:
        for i in range(RECORDS):
            part = i % PARTITIONS
            futures.append(p.send("py-idem", value=b"%d:%08d" % (part, i), partition=part))
            if i % 50 == 49:
                time.sleep(0.01)
    p.flush(timeout=120)
    for f in futures:
        f.get(timeout=120)
    p.close()

    c = KafkaConsumer(bootstrap_servers=floe.bootstrap, group_id=None, enable_auto_commit=False,
                      fetch_max_wait_ms=100)
    tps = [TopicPartition("py-idem", q) for q in range(PARTITIONS)]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    got = []
    deadline = time.time() + 120
    quiet = time.time()
    while time.time() < deadline and (len(got) < RECORDS or time.time() - quiet < 1):
        for recs in c.poll(timeout_ms=200).values():
            got.extend(recs)
            quiet = time.time()
    c.close()

    retried = metric(floe, "floe_idempotent_duplicates_total")
    values = [r.value for r in got]
    print(f"{len(cuts)} cuts of {sum(cuts)} connections; {retried} retried batches answered "
          f"as duplicates; {len(values)} records read")
    assert len(values) == len(set(values)), "records stored twice"
    assert len(values) == RECORDS, "records lost"
    for q in range(PARTITIONS):
        mine = [r.value for r in sorted(got, key=lambda r: r.offset) if r.partition == q]
        assert mine == sorted(mine), f"partition {q} out of order"
    assert retried > 0, "the cuts made no retried batch reach the broker"
