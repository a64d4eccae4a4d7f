#!/usr/bin/env python3
"""Tightens the values.schema.json that @bitnami/readme-generator-for-helm writes from the
@param comments of values.yaml (types from the defaults only): integer ports and counts,
enums, minimums, the required keys. Free-form maps (labels, annotations, config) stay open.
Run from helm/pgtrail after the generator:
  readme-generator --values values.yaml --readme README.md --schema values.schema.json
  python3 refine-schema.py
"""
import json

SCHEMA = "values.schema.json"
s = json.load(open(SCHEMA))
s["$schema"] = "http://json-schema.org/draft-07/schema#"


def node(path):
    """The schema of `path`; created (an object) where the generator left it out ([object]
    parameters)."""
    n = s
    for part in path.split("."):
        n = n.setdefault("properties", {}).setdefault(part, {"type": "object"})
    return n


INTEGERS = {
    "securityContext.runAsUser": 1,
    "securityContext.runAsGroup": 1,
    "securityContext.fsGroup": 1,
    "processor.replicaCount": 0,
    "processor.metricsPort": 1,
    "processor.drainSeconds": 1,
    "processor.keda.minReplicas": 0,
    "processor.keda.maxReplicas": 1,
    "processor.keda.partitions": 1,
    "processor.keda.lagThreshold": 1,
    "lag.metricsPort": 1,
    "shipper.metricsPort": 1,
}
for path, minimum in INTEGERS.items():
    n = node(path)
    n["type"] = "integer"
    n["minimum"] = minimum
for path in ["processor.metricsPort", "lag.metricsPort", "shipper.metricsPort"]:
    node(path)["maximum"] = 65535

ENUMS = {
    "image.pullPolicy": ["Always", "IfNotPresent", "Never"],
    "kafka.sasl.mechanism": ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI"],
    "lake.s3.commits": ["", "conditional-put", "single-writer"],
}
for path, values in ENUMS.items():
    node(path)["enum"] = values

# Maps of user keys: any value (labels, annotations, pass-through config).
for path in [
    "commonLabels",
    "kafka.properties",
    "lake.options",
    "serviceAccount.annotations",
    "processor.config",
    "processor.podAnnotations",
    "processor.podLabels",
    "processor.nodeSelector",
    "processor.affinity",
    "lag.config",
    "shipper.config",
    "shipper.daemonset.nodeSelector",
    "monitoring.podMonitor.labels",
    "monitoring.prometheusRule.labels",
    "monitoring.dashboard.labels",
    "processor.resources",
    "lag.resources",
    "shipper.resources",
]:
    n = node(path)
    n["type"] = "object"
    n["additionalProperties"] = True

# Passed through to librdkafka and object_store as strings: a YAML number or boolean there
# would be refused by the binaries (quote it).
for path in ["kafka.properties", "lake.options"]:
    node(path)["additionalProperties"] = {"type": "string"}

extra = node("extraSecrets")
extra["type"] = "array"
extra["items"] = {
    "type": "object",
    "required": ["name", "secretName"],
    "properties": {"name": {"type": "string", "pattern": "^[a-z0-9-]+$"}, "secretName": {"type": "string"}},
}
node("shipper.daemonset.supplementalGroups")["items"] = {"type": "integer", "minimum": 0}

node("kafka")["required"] = ["brokers"]
node("lake")["required"] = ["uri"]
s["required"] = ["kafka", "lake"]
json.dump(s, open(SCHEMA, "w"), indent=2)
open(SCHEMA, "a").write("\n")
