#!/usr/bin/env bash
# Install speechlm into a virtual env (default: .venv at the repo root) in editable mode, with the
# extras the recipes and tests use (pyproject.toml), plus the Debian packages the toolkit uses
# (espeak-ng, sox, flite, festival) when run as root.
# Usage: tools/install.sh [--venv DIR] [--python PYTHON] [--extras LIST] [--no-apt]
#   --extras: comma-separated extras of pyproject.toml (default eval,espnet,dev; add deepspeed for it)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
python=${PYTHON:-python3}
apt=true
extras=eval,espnet,dev
while [ $# -gt 0 ]; do
  case "$1" in
    --venv) venv=$2; shift 2 ;;
    --python) python=$2; shift 2 ;;
    --extras) extras=$2; shift 2 ;;
    --no-apt) apt=false; shift ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

# flite and festival (with its English voices) speak the voice-agent episodes in voices and
# engines other than espeak-ng's (speechlm agent synth; Debian bookworm package names);
# chromium and chromium-driver run the browser demo's test (tests/test_serve_browser.py).
debs=(espeak-ng sox libsndfile1 flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts
      chromium chromium-driver)
missing=()
for cmd in espeak-ng sox flite festival chromium chromedriver; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
done
if [ ${#missing[@]} -gt 0 ]; then
  if $apt && [ "$(id -u)" = 0 ]; then
    echo "install.sh: installing Debian packages: ${debs[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${debs[@]}" >/dev/null
  else
    echo "install.sh: missing ${missing[*]}; install them with: sudo apt-get install ${debs[*]}" >&2
  fi
fi

stamp="$venv/.speechlm-installed"
reqs=$( (cat "$root/pyproject.toml"; echo "$extras") | sha1sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$reqs" ]; then
  echo "install.sh: $venv is up to date"
  exit 0
fi
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
# pip 26 refuses espnet's dependency ci_sdr (a direct-URL extra); pip 23-24 install it fine.
"$venv/bin/python" -m pip install -q "pip>=23.2,<25"
start=$(date +%s)
"$venv/bin/python" -m pip install -q -e "${root}[${extras}]"
# Packages whose declared dependencies conflict with ours but work with them (e.g. resemblyzer):
# [tool.speechlm] no-deps of pyproject.toml, per extra.
nodeps=$("$venv/bin/python" - "$root/pyproject.toml" "$extras" <<'PY'
import sys, tomllib
table = tomllib.load(open(sys.argv[1], "rb"))["tool"]["speechlm"]["no-deps"]
print(" ".join(r for extra in sys.argv[2].split(",") for r in table.get(extra.strip(), [])))
PY
)
read -ra nodeps <<< "$nodeps"
if [ ${#nodeps[@]} -gt 0 ]; then
  "$venv/bin/python" -m pip install -q --no-deps "${nodeps[@]}"
fi
echo "$reqs" > "$stamp"
echo "install.sh: installed speechlm into $venv in $(( $(date +%s) - start )) s ($(du -sh "$venv" | cut -f1))"
