"""The Kubernetes manifests (deploy/k8s): every manifest and every rendered overlay validates
against the Kubernetes schemas (offline, kubernetes-validate), and what the manifests say about
ports, probes, environment, grace and devices agrees with the services' real configuration; and
the verifier's OpenAI HTTP port and proposer address, there and in docker-compose.yml."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from client.replicas import Endpoint, parse_target
from proposer_service.config import from_args as proposer_config
from proposer_service.config import parser as proposer_parser
from specdec_rpc.metrics import ServiceMetrics
from specdec_rpc.service_cli import env_var
from specdec_rpc.v1 import specdec_pb2 as pb
from verifier_service.config import from_args as verifier_config
from verifier_service.config import parser as verifier_parser

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
COMPOSE = ROOT / "docker-compose.yml"
OVERLAYS = ("cpu", "qaic")
# The oldest Kubernetes with native gRPC probes (GA in 1.27), and the newest schemas we carry.
VERSIONS = ("1.27.0", kubernetes_validate.latest_version())
QAIC_RESOURCE = "qualcomm.com/qaic"   # the Cloud AI 100 device plugin's resource, one per device
SERVICES = {  # container command module -> (its typed config, its flags, its gRPC service)
    "verifier_service": (verifier_config, verifier_parser, "Verifier"),
    "proposer_service": (proposer_config, proposer_parser, "Proposer"),
}


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def render(overlay: str) -> list[dict]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: cannot render the kustomize overlays")
    out = subprocess.run(["kubectl", "kustomize", str(K8S / "overlays" / overlay)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def validate(doc: dict, version: str) -> None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)   # strict: no unknown fields
    except kubernetes_validate.ValidationError as exc:
        raise AssertionError(f"{doc['kind']}/{doc['metadata']['name']} (Kubernetes {version}): "
                             f"{'.'.join(map(str, exc.path))}: {exc.message}") from None


def test_there_are_manifests_and_overlays():
    assert {p.name for p in manifest_files()} >= {"verifier.yaml", "proposer.yaml", "autoscaling.yaml"}
    assert all((K8S / "overlays" / o / "kustomization.yaml").is_file() for o in OVERLAYS)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_validates(path, version):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        validate(doc, version)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_overlay_validates(overlay, version):
    docs = render(overlay)
    kinds = sorted(d["kind"] for d in docs)
    # Each service's Deployment, headless Service, budget and autoscaler; the verifier's HTTP Service
    assert kinds == sorted(["Deployment", "Service", "PodDisruptionBudget",
                            "HorizontalPodAutoscaler"] * 2 + ["Service"]), kinds
    for doc in docs:
        validate(doc, version)


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def matches(selector: dict, labels: dict) -> bool:
    return selector.items() <= labels.items()


def service_config(container: dict, monkeypatch):
    """The typed config the container's service builds from the container's environment,
    through the service's own flag/environment parsing."""
    config_of, parser, _ = SERVICES[container["command"][-1]]
    known = {env_var(a) for a in parser()._actions} - {None}
    for e in container["env"]:
        if not e["name"].startswith("SPECDEC_"):
            continue
        assert e["name"] in known, f"{e['name']} is not a flag of {container['command'][-1]}"
        if "valueFrom" in e:
            ref = e["valueFrom"]["secretKeyRef"]
            assert (ref["name"], ref["key"], ref.get("optional", False)) == ("specdec-auth", "token", False)
            monkeypatch.setenv(e["name"], "token-from-the-secret")
        else:
            monkeypatch.setenv(e["name"], e["value"])
    return config_of([])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_ports_and_environment_agree_with_the_services_flags(overlay, monkeypatch):
    docs = render(overlay)
    deployments, services = by_kind(docs, "Deployment"), by_kind(docs, "Service")
    pdbs, hpas = by_kind(docs, "PodDisruptionBudget"), by_kind(docs, "HorizontalPodAutoscaler")
    exported = {m.name for m in ServiceMetrics().registry.collect()}
    assert set(deployments) == {"specdec-verifier", "specdec-proposer"}
    for name, dep in deployments.items():
        pod = dep["spec"]["template"]
        labels = pod["metadata"]["labels"]
        assert matches(dep["spec"]["selector"]["matchLabels"], labels)
        (container,) = pod["spec"]["containers"]
        with monkeypatch.context() as env:
            cfg = service_config(container, env)
        server = cfg.server
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        # gRPC: bound on all interfaces at the port every probe and the Service use.
        assert server.host == "0.0.0.0" and ports["grpc"] == server.port
        grpc_name = pb.DESCRIPTOR.services_by_name[SERVICES[container["command"][-1]][2]].full_name
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == server.port, (name, probe)
        assert container["readinessProbe"]["grpc"]["service"] == grpc_name
        assert server.security.auth_token == "token-from-the-secret"
        # Metrics: served where the scrape annotations point.
        notes = pod["metadata"]["annotations"]
        assert ports["metrics"] == server.metrics_port == int(notes["prometheus.io/port"])
        assert notes["prometheus.io/scrape"] == "true" and notes["prometheus.io/path"] == "/metrics"
        # The kubelet's SIGKILL comes after the service has drained within --grace.
        assert pod["spec"]["terminationGracePeriodSeconds"] > server.grace_s
        model = Path(cfg.engine.model)
        assert (ROOT / model.relative_to("/app")).is_dir(), f"{model} is not shipped in the image"
        # The headless Service selects these pods and exposes the same ports.
        svc = services[name]
        assert svc["spec"]["clusterIP"] == "None" and matches(svc["spec"]["selector"], labels)
        svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
        assert svc_ports["grpc"]["port"] == server.port and svc_ports["grpc"]["targetPort"] == "grpc"
        assert svc_ports["metrics"]["port"] == server.metrics_port
        assert matches(pdbs[name]["spec"]["selector"]["matchLabels"], labels)
        # The autoscaler targets this Deployment on a gauge the service exports, below its slots.
        hpa = hpas[name]["spec"]
        assert hpa["scaleTargetRef"]["name"] == name
        (metric,) = hpa["metrics"]
        assert metric["pods"]["metric"]["name"] in exported
        assert 0 < float(metric["pods"]["target"]["averageValue"]) < cfg.engine.full_batch_size
        resources = container["resources"]
        assert cfg.executor == ("qaic" if overlay == "qaic" else "torch")
        if overlay == "qaic":   # one card group per pod: as many devices as the group lists
            devices = len(cfg.qaic.device_ids)
            assert int(resources["limits"][QAIC_RESOURCE]) == devices
            assert int(resources["requests"][QAIC_RESOURCE]) == devices
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert str(cfg.qaic.compile_dir) in mounts
        else:                   # Guaranteed QoS: whole cores of its own per replica
            assert resources["requests"] == resources["limits"]
            assert QAIC_RESOURCE not in resources["limits"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_verifier_serves_http_and_drafts_on_the_proposer_pods(overlay, monkeypatch):
    docs = render(overlay)
    deployments, services = by_kind(docs, "Deployment"), by_kind(docs, "Service")
    pod = deployments["specdec-verifier"]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    cfg = service_config(container, monkeypatch)
    # The OpenAI API: on the container's http port, behind a ClusterIP Service on these pods
    # (kube-proxy spreads HTTP connections; a headless name would pin a client to one pod).
    assert cfg.http_port > 0 and {p["name"]: p["containerPort"] for p in container["ports"]}["http"] == cfg.http_port
    http = services["specdec-verifier-http"]["spec"]
    assert http.get("clusterIP") != "None" and matches(http["selector"], pod["metadata"]["labels"])
    (port,) = http["ports"]
    assert (port["port"], port["targetPort"]) == (cfg.http_port, "http")
    # Generate's draft model: every pod behind the proposer's headless Service, at its gRPC port.
    proposer = services["specdec-proposer"]["spec"]
    grpc_port = {p["name"]: p["port"] for p in proposer["ports"]}["grpc"]
    assert cfg.proposer is not None
    assert parse_target(cfg.proposer) == [Endpoint("specdec-proposer", grpc_port, dns=True)]
    assert proposer["clusterIP"] == "None"


def test_compose_verifier_serves_http_and_drafts_on_the_proposer_service(monkeypatch):
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    for name, value in services["verifier"]["environment"].items():
        monkeypatch.setenv(name, value)
    cfg = verifier_config([])
    assert cfg.http_port > 0 and f"{cfg.http_port}:{cfg.http_port}" in services["verifier"]["ports"]
    # The proposer by its compose service name, at the port it listens on
    assert cfg.proposer == f"proposer:{services['proposer']['environment']['SPECDEC_PORT']}"
