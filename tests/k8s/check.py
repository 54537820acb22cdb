"""Offline Kubernetes checks for Tandem's tests (run by crates/tandem-injector/tests/k8s.rs).

  check.py validate VERSION FILE...      every object in each JSON/YAML file, against the strict
                                         Kubernetes JSON schemas of VERSION (kubernetes-validate)
  check.py render CHART OUT.json [VALUES.json]
                                         renders a Helm chart offline with Helm's own engine
                                         (helm-python-sdk) and writes the documents as a JSON list
  check.py accepts CRDS.json FILE...     each custom resource in FILE against the openAPIV3Schema
                                         of its CRD version (jsonschema)

Prints one line per object ("ok ..." or "invalid ...") and exits 1 if any is invalid.
"""
import json
import sys

import jsonschema
import kubernetes_validate
import yaml


def load_docs(path):
    with open(path) as f:
        text = f.read()
    if path.endswith(".json"):
        data = json.loads(text)
        return data if isinstance(data, list) else [data]
    return [d for d in yaml.safe_load_all(text) if d]


def validate(version, files):
    bad = 0
    for path in files:
        for doc in load_docs(path):
            what = "%s %s/%s" % (path, doc.get("kind"), doc.get("metadata", {}).get("name"))
            try:
                kubernetes_validate.validate(doc, version, strict=True)
                print("ok " + what)
            except Exception as e:  # ValidationError, SchemaNotFoundError, ...
                bad += 1
                print("invalid %s: %s" % (what, str(e).splitlines()[0] if str(e) else type(e).__name__))
    return bad


def render(chart_dir, out, values_file=None):
    import helm_python as helm

    values = None
    if values_file:
        with open(values_file) as f:
            values = json.load(f)
    findings = helm.lint(chart_dir)
    print("lint " + json.dumps(findings, default=str))
    with helm.Chart.load(chart_dir) as chart:
        crds = list(chart.crds)
        manifests = chart.render(values, name="tandem", namespace="tandem-system", is_install=True)
    docs = []
    for crd in crds:
        docs.extend(d for d in yaml.safe_load_all(crd["data"]) if d)
    for name in sorted(manifests):
        if not name.endswith((".yaml", ".yml")):
            continue
        docs.extend(d for d in yaml.safe_load_all(manifests[name]) if d)
    with open(out, "w") as f:
        json.dump(docs, f, indent=1)
    print("rendered %d documents" % len(docs))
    return 0


def accepts(crds_file, files):
    schemas = {}
    for crd in load_docs(crds_file):
        if crd.get("kind") != "CustomResourceDefinition":
            continue
        group = crd["spec"]["group"]
        kind = crd["spec"]["names"]["kind"]
        for v in crd["spec"]["versions"]:
            schemas[("%s/%s" % (group, v["name"]), kind)] = v["schema"]["openAPIV3Schema"]
    bad = 0
    for path in files:
        for doc in load_docs(path):
            key = (doc.get("apiVersion"), doc.get("kind"))
            what = "%s %s %s/%s" % (path, key[0], key[1], doc.get("metadata", {}).get("name"))
            schema = schemas.get(key)
            if schema is None:
                bad += 1
                print("invalid %s: no CRD serves this version" % what)
                continue
            try:
                jsonschema.validate(doc, schema)
                print("ok " + what)
            except jsonschema.ValidationError as e:
                bad += 1
                print("invalid %s: %s" % (what, e.message))
    return bad


def main(argv):
    cmd = argv[1]
    if cmd == "validate":
        bad = validate(argv[2], argv[3:])
    elif cmd == "render":
        bad = render(*argv[2:5])
    elif cmd == "accepts":
        bad = accepts(argv[2], argv[3:])
    else:
        raise SystemExit("unknown command " + cmd)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main(sys.argv)
