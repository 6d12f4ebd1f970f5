"""Starts the real `floe` binary for each test on free 127.0.0.1 ports and
stops exactly that process. The binary is $FLOE_BIN (scripts/test sets it)."""
import os
import signal
import socket
import subprocess
import tempfile
import time

import pytest


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.02)
    return False


class Floe:
    @staticmethod
    def binary():
        return os.environ.get("FLOE_BIN") or os.path.join(
            os.environ.get("CARGO_TARGET_DIR", "target"), "debug", "floe")

    def __init__(self, data_dir, extra=()):
        self.bin = Floe.binary()
        self.data_dir = data_dir
        self.extra = list(extra)
        self.proc = None
        self.log = open(os.path.join(data_dir, "floe.log"), "ab")
        self.start()

    @property
    def bootstrap(self):
        return f"127.0.0.1:{self.kafka_port}"

    def start(self):
        self.kafka_port, self.http_port = free_port(), free_port()
        self.proc = subprocess.Popen(
            [self.bin, "dev", "--kafka-listen", self.bootstrap,
             "--http-listen", f"127.0.0.1:{self.http_port}",
             "--data-dir", os.path.join(self.data_dir, "state"), *self.extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.log)
        assert wait_for_port(self.kafka_port), f"floe did not start, see {self.log.name}"

    def stop(self):
        """SIGTERM: the graceful path (drain, checkpoint)."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def kill9(self):
        self.proc.kill()
        self.proc.wait()

    def restart(self):
        self.stop()
        self.start()

    def close(self):
        if self.proc and self.proc.poll() is None:
            self.kill9()
        self.log.close()


@pytest.fixture
def floe():
    with tempfile.TemporaryDirectory(prefix="floe-py-") as d:
        f = Floe(d)
        try:
            yield f
        finally:
            f.close()
