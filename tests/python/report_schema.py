"""Checks a `tongban report --format json` file against docs/report.schema.json with the
jsonschema package (Draft 2020-12), independently of the Rust code that wrote both.

usage: report_schema.py SCHEMA REPORT   -> prints {"valid": true} or {"valid": false, "errors": [...]}
"""

import json
import sys

import jsonschema


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as f:
        schema = json.load(f)
    with open(sys.argv[2], encoding="utf-8") as f:
        report = json.load(f)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(report)]
    print(json.dumps({"valid": not errors, "errors": errors[:20]}))


if __name__ == "__main__":
    main()
