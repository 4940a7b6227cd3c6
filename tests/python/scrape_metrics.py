"""Scrapes a node's /metrics with urllib and parses it with prometheus_client's OpenMetrics
parser (an independent reader of the exposition format). Prints JSON: every sample (name,
labels, value) and, given Grafana dashboards, the metric names their queries use that the
node does not expose.

usage: scrape_metrics.py URL [DASHBOARD.json ...]
"""
import json
import re
import sys
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families


def main():
    url = sys.argv[1]
    with urllib.request.urlopen(url, timeout=10) as r:
        content_type = r.headers.get("Content-Type", "")
        text = r.read().decode("utf-8")
    samples = []
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        for s in family.samples:
            names.add(s.name)
            samples.append({"name": s.name, "labels": s.labels, "value": s.value})
    missing = []
    used = []
    for path in sys.argv[2:]:
        with open(path, encoding="utf-8") as f:
            dashboard = json.load(f)
        exprs = []
        for panel in dashboard.get("panels", []):
            for target in panel.get("targets", []):
                exprs.append(target.get("expr", ""))
        for expr in exprs:
            for name in re.findall(r"\b(tongban_[a-z_]+)\b", expr):
                used.append(name)
                if name not in names:
                    missing.append(name)
    print(json.dumps({
        "content_type": content_type,
        "samples": samples,
        "dashboard_metrics": sorted(set(used)),
        "missing": sorted(set(missing)),
    }))


if __name__ == "__main__":
    main()
