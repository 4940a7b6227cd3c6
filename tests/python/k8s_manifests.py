"""Checks the Kubernetes manifests in deploy/kubernetes independently of our code: every
document parses as YAML (PyYAML) and validates strictly against the Kubernetes schemas of
the kubernetes-validate package; and they agree with each other and with the node's config
(the ConfigMap's node.toml names etcd members the etcd StatefulSet runs, key files the Secret
holds, and each replica gets its id from its pod name).

usage: k8s_manifests.py DIR   -> prints {"documents": N, "errors": [...], "node_toml": "..."}
"""

import json
import pathlib
import sys
import tomllib

import kubernetes_validate
import yaml


def main() -> None:
    errors: list[str] = []
    docs = []
    for path in sorted(pathlib.Path(sys.argv[1]).glob("*.yaml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text(encoding="utf-8"))):
            if doc is None:
                continue
            where = f"{path.name}[{i}] {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            try:
                kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
            except kubernetes_validate.ValidationError as e:
                errors.append(f"{where}: {e.message} at {'/'.join(map(str, e.path))}")
            except Exception as e:  # schema not found, invalid schema
                errors.append(f"{where}: {e}")
            docs.append((where, doc))

    def find(kind: str, name: str):
        return next((d for _, d in docs if d["kind"] == kind and d["metadata"]["name"] == name), None)

    config_map = find("ConfigMap", "tongban-jinan")
    node = tomllib.loads(config_map["data"]["node.toml"]) if config_map else {}
    storage = node.get("storage", {})
    if storage.get("backend") != "etcd":
        errors.append("node.toml: storage.backend is not etcd")
    etcd = find("StatefulSet", "etcd")
    if etcd is None:
        errors.append("no etcd StatefulSet")
    else:
        members = [f"http://etcd-{i}.etcd.{etcd['metadata']['namespace']}.svc:2379" for i in range(etcd["spec"]["replicas"])]
        if storage.get("etcd", {}).get("endpoints") != members:
            errors.append(f"node.toml: etcd endpoints {storage.get('etcd', {}).get('endpoints')} are not the members {members}")
    secret = find("Secret", "tongban-jinan-tls")
    keys = set((secret or {}).get("stringData", {}))
    for key, path in [("tls.cert", node.get("tls", {}).get("cert")), ("tls.key", node.get("tls", {}).get("key")),
                      ("tls.trust_bundle", node.get("tls", {}).get("trust_bundle")), ("auth.jwks_file", node.get("auth", {}).get("jwks_file")),
                      ("storage.secret_file", storage.get("secret_file"))]:
        if not path or not path.startswith("/etc/tongban/keys/") or path.rsplit("/", 1)[1] not in keys:
            errors.append(f"node.toml: {key} = {path} is not a key of the Secret ({sorted(keys)})")
    nodes = find("StatefulSet", "tongban-jinan")
    if nodes is None:
        errors.append("no tongban-jinan StatefulSet")
    else:
        if not isinstance(nodes["spec"]["replicas"], int) or nodes["spec"]["replicas"] < 2:
            errors.append("fewer than two replicas")
        env = {e["name"]: e for e in nodes["spec"]["template"]["spec"]["containers"][0].get("env", [])}
        field = env.get("TONGBAN_REPLICA", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        if field != "metadata.name":
            errors.append("TONGBAN_REPLICA does not come from the pod name")
        mounts = {m["mountPath"]: m["name"] for m in nodes["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
        if mounts.get(storage.get("data_dir")) != "data":
            errors.append(f"storage.data_dir {storage.get('data_dir')} is not on the replica's own volume")
    node_toml = config_map["data"]["node.toml"] if config_map else ""
    policy_toml = config_map["data"].get("policy.toml", "") if config_map else ""
    print(json.dumps({"documents": len(docs), "errors": errors, "node_toml": node_toml, "policy_toml": policy_toml}))


if __name__ == "__main__":
    main()
