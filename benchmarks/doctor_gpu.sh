#!/usr/bin/env bash
# `minerva doctor` on a GPU machine for the demo model and the 7B shape (random-weight config),
# without the CLI's server imports: writes doctor_<shape>.json into the folder given ($1).
set -euo pipefail
out=${1:-benchmarks/results}
dir=$(mktemp -d)
PYTHONPATH=src:benchmarks python3 - "$dir" <<'PY'
import json, sys
from shapes import hf_config
open(f"{sys.argv[1]}/config.json", "w").write(json.dumps(hf_config("mistral-7b", dtype="bfloat16")))
PY
for model in demo "$dir"; do
  name=$([ "$model" = demo ] && echo demo || echo mistral-7b)
  PYTHONPATH=src python3 - "$model" > "$out/doctor_$name.json" <<'PY'
import json, sys
from minerva import doctor
from minerva.config_sources import load_config
overrides = {} if sys.argv[1] == "demo" else {"model": sys.argv[1], "max_model_len": 4096}
report = doctor.collect(load_config(None, overrides, env={})[0])
print(json.dumps(report, indent=2))
for label, value in doctor.rows(report):
    print(f"{label:24s} {value}", file=sys.stderr)
for line in report["advice"]:
    print("-", line, file=sys.stderr)
PY
done
