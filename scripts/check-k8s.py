#!/usr/bin/env python3
"""Checks Kubernetes manifests offline, field by field, against the models of the official
Python client (generated from Kubernetes' OpenAPI): every key must be a field of its type and
every value of the right shape. `kubectl apply --dry-run=client` cannot do this without a
cluster (it asks the API server what each kind is). Custom resources (no model, such as the
ServiceMonitor) are listed, not checked.

    python3 -m venv /tmp/k8s && /tmp/k8s/bin/pip install kubernetes pyyaml
    /tmp/k8s/bin/python scripts/check-k8s.py deploy/daemonset.yaml
"""
import sys
import yaml
import kubernetes.client as k

def model_for(api_version, kind):
    group = api_version.split('/')[0] if '/' in api_version else 'core'
    ver = api_version.split('/')[-1]
    name = ('V1' if ver == 'v1' else ver.capitalize()) + kind
    return getattr(k, name, None) if group in ('core', 'apps') else None

PRIMS = {'str', 'int', 'bool', 'float', 'object', 'datetime', 'date'}

def check(value, typ, path, errors):
    if typ.lower().startswith('list['):
        inner = typ[5:-1]
        if not isinstance(value, list):
            errors.append(f"{path}: expected a list"); return
        for i, v in enumerate(value):
            check(v, inner, f"{path}[{i}]", errors)
        return
    if typ.lower().startswith(('dict(', 'dict[')):
        inner = typ[typ.index(',') + 1:-1].strip()
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a map"); return
        for kk, v in value.items():
            check(v, inner, f"{path}.{kk}", errors)
        return
    if typ in PRIMS:
        if typ == 'str' and not isinstance(value, str):
            errors.append(f"{path}: expected a string, got {value!r}")
        if typ == 'int' and (not isinstance(value, int) or isinstance(value, bool)):
            errors.append(f"{path}: expected an integer, got {value!r}")
        if typ == 'bool' and not isinstance(value, bool):
            errors.append(f"{path}: expected a boolean, got {value!r}")
        return
    cls = getattr(k, typ)
    if not isinstance(value, dict):
        errors.append(f"{path}: expected an object ({typ})"); return
    by_json = {j: p for p, j in cls.attribute_map.items()}
    for key, v in value.items():
        if key not in by_json:
            errors.append(f"{path}.{key}: not a field of {typ}")
            continue
        check(v, cls.openapi_types[by_json[key]], f"{path}.{key}", errors)

errors = []
for f in sys.argv[1:]:
    for doc in yaml.safe_load_all(open(f)):
        if not doc: continue
        cls = model_for(doc['apiVersion'], doc['kind'])
        what = f"{f}: {doc['kind']}/{doc['metadata']['name']}"
        if cls is None:
            print(f"{what}: custom resource, not checked"); continue
        before = len(errors)
        check(doc, cls.__name__, doc['kind'], errors)
        print(f"{what}: {'ok' if len(errors) == before else 'ERRORS'}")
for e in errors: print("  ", e)
sys.exit(1 if errors else 0)
