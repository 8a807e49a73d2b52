#!/usr/bin/env python3
"""Checks the deployment assets against the real binary (run by .ci/run).

- docker-compose.yml and ops/k8s/: every DASHTAM__ variable they set must be
  a real configuration key with a valid value (the binary's own `dashtam
  config` loads them and refuses unknown keys), and the port it then listens
  on must be the one the probes, Services, the image's HEALTHCHECK and the
  Prometheus scrape config use.
- the roles they start must exist.

usage: ops/check_deploy.py path/to/dashtam
"""
import json
import os
import re
import subprocess
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROLES = {"api", "worker", "scheduler"}
problems = []


def effective(binary, env, where):
    clean = {"PATH": os.environ.get("PATH", "")}
    clean.update({k: str(v) for k, v in env.items()})
    out = subprocess.run([binary, "config"], env=clean, capture_output=True, text=True)
    if out.returncode != 0:
        problems.append(f"{where}: {out.stderr.strip()}")
        return None
    return json.loads(out.stdout)


def port_of(listen):
    return int(listen.rsplit(":", 1)[1])


def check_roles(args, where):
    if "serve" in args:
        for i, a in enumerate(args):
            if a == "--role" and args[i + 1] not in ROLES:
                problems.append(f"{where}: no role {args[i + 1]!r}")


def compose(binary):
    doc = yaml.safe_load(open(os.path.join(ROOT, "docker-compose.yml")))
    healthcheck = open(os.path.join(ROOT, "ops/Dockerfile")).read()
    hc_port = int(re.search(r"127\.0\.0\.1:(\d+)/healthz", healthcheck).group(1))
    prom = yaml.safe_load(open(os.path.join(ROOT, "ops/prometheus/prometheus.yml")))
    sd = prom["scrape_configs"][0]["dns_sd_configs"][0]
    for name, svc in doc["services"].items():
        cmd = svc.get("command", [])
        if "serve" not in cmd:
            continue
        where = f"docker-compose.yml service {name}"
        check_roles(cmd, where)
        env = {k: re.sub(r"\$\{[^}]*\}", "x", str(v)) for k, v in svc["environment"].items()}
        cfg = effective(binary, env, where)
        if cfg is None:
            continue
        port = port_of(cfg["http_listen"])
        if port != hc_port:
            problems.append(f"{where}: listens on {port}, the image's HEALTHCHECK probes {hc_port}")
        if name in sd["names"] and port != sd["port"]:
            problems.append(f"{where}: listens on {port}, Prometheus scrapes {sd['port']}")
        for p in svc.get("ports", []):
            if int(str(p).split(":")[-1]) != port:
                problems.append(f"{where}: publishes {p}, listens on {port}")
    for name in sd["names"]:
        if name not in doc["services"]:
            problems.append(f"ops/prometheus/prometheus.yml scrapes {name!r}, no such service")


def k8s(binary):
    docs = []
    folder = os.path.join(ROOT, "ops/k8s")
    for f in sorted(os.listdir(folder)):
        if f.endswith(".yaml") and f != "kustomization.yaml":
            docs += [(f, d) for d in yaml.safe_load_all(open(os.path.join(folder, f))) if d]
    config = next(d for _, d in docs if d["kind"] == "ConfigMap")["data"]
    secret = next(d for _, d in docs if d["kind"] == "Secret")["stringData"]
    services = [(f, d) for f, d in docs if d["kind"] == "Service"]
    for f, d in docs:
        if d["kind"] != "Deployment":
            continue
        where = f"ops/k8s/{f} {d['metadata']['name']}"
        pod = d["spec"]["template"]
        container = pod["spec"]["containers"][0]
        check_roles(container["args"], where)
        cfg = effective(binary, {**config, **secret}, where)
        if cfg is None:
            continue
        port = port_of(cfg["http_listen"])
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        if ports.get("http") != port:
            problems.append(f"{where}: containerPort {ports} but the daemon listens on {port}")
        for probe, path in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]:
            get = container[probe]["httpGet"]
            if get["path"] != path or ports.get(get["port"], get["port"]) != port:
                problems.append(f"{where}: {probe} should GET {path} on port {port}")
        if pod["metadata"]["annotations"].get("prometheus.io/port") != str(port):
            problems.append(f"{where}: prometheus.io/port is not {port}")
        for sf, s in services:
            if s["spec"]["selector"].items() <= pod["metadata"]["labels"].items():
                for sp in s["spec"]["ports"]:
                    if ports.get(sp["targetPort"], sp["targetPort"]) != port:
                        problems.append(f"ops/k8s/{sf}: targetPort {sp['targetPort']} is not {port}")


binary = sys.argv[1]
compose(binary)
k8s(binary)
for p in problems:
    print("PROBLEM:", p)
print("deployment assets:", "inconsistent" if problems else "consistent with the binary")
sys.exit(1 if problems else 0)
