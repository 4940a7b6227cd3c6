#!/usr/bin/env bash
# Fetches (once) the official FHIR R4 example resources the medical import tests read: the
# HL7 package hl7.fhir.r4.examples 4.0.1, as published on the npm registry, into
# target/fhir-r4-examples (only the files the tests use are kept).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/target/fhir-r4-examples"
files=(Bundle-ghp.json Bundle-lipids.json ImagingStudy-example.json DiagnosticReport-f201.json DiagnosticReport-102.json
  Bundle-lri-example.json Bundle-report.json Bundle-hla-1.json Bundle-micro.json)
# The marker names the file list, so that a longer list fetches again.
marker="$out/.complete-$(printf '%s\n' "${files[@]}" | cksum | cut -d' ' -f1)"
if [ -f "$marker" ]; then
  exit 0
fi
mkdir -p "$out"
python3 - "$out" "${files[@]}" <<'PY'
import io, sys, tarfile, urllib.request
out, files = sys.argv[1], sys.argv[2:]
url = "https://registry.npmjs.org/hl7.fhir.r4.examples/-/hl7.fhir.r4.examples-4.0.1.tgz"
data = urllib.request.urlopen(url, timeout=300).read()
with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as t:
    for name in files:
        member = t.getmember("package/" + name)
        with open(f"{out}/{name}", "wb") as f:
            f.write(t.extractfile(member).read())
PY
touch "$marker"
echo "fhir r4 examples ready: $out"
