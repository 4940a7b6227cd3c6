"""An independent FHIR R4 validator for the registry's export: parses a Bundle with
`fhir.resources` 6.1 (FHIR 4.0.1, pydantic models of every resource and datatype), then
checks a copy without a required element is refused (so the validation is real).

usage: fhir_validate.py FILE
prints JSON: {"fhir_version", "types", "statuses", "loinc", "units", "imaging_uids",
              "series": [[uid, body site code or display], ...] of every study,
              "without_code": "refused" | "accepted"}
"""
import copy
import json
import sys

import fhir.resources
from fhir.resources.bundle import Bundle


def main() -> int:
    doc = json.load(open(sys.argv[1], encoding="utf-8"))
    bundle = Bundle.parse_obj(doc)
    out = {"fhir_version": fhir.resources.__fhir_version__, "types": [], "statuses": [],
           "loinc": [], "units": [], "imaging_uids": [], "series": []}
    for e in bundle.entry:
        r = e.resource
        out["types"].append(r.resource_type)
        out["statuses"].append(r.status)
        if r.resource_type == "Observation":
            out["loinc"] += [c.code for c in r.code.coding if c.system == "http://loinc.org"]
            if r.valueQuantity is not None:
                out["units"].append(r.valueQuantity.code)
        if r.resource_type == "ImagingStudy":
            out["imaging_uids"].append(r.series[0].uid)
            out["series"] += [[s.uid, s.bodySite.code or s.bodySite.display] for s in r.series]
    broken = copy.deepcopy(doc)
    del broken["entry"][0]["resource"]["code"]
    try:
        Bundle.parse_obj(broken)
        out["without_code"] = "accepted"
    except Exception:  # pydantic.ValidationError
        out["without_code"] = "refused"
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
