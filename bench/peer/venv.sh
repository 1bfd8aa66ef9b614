#!/usr/bin/env bash
# Make (once) the peer's virtual env: ESPnet-SpeechLM as released on PyPI, with its own torch.
#
#   bench/peer/venv.sh            # prints the env's python on the last line; exit 1 (with why) if it cannot be made
#
# The env lives outside the repository (SPEECHLM_PEER_VENV, default ~/.cache/speechlm-bench/peer-venv)
# so that a second run reuses it; it is built under a temporary name and renamed when it imports,
# so an interrupted install is never taken for a finished one. espnet==202506 is the last release
# that ships espnet2/speechlm/core_lm and installs on Python 3.11.
set -euo pipefail

venv=${SPEECHLM_PEER_VENV:-$HOME/.cache/speechlm-bench/peer-venv}
python=${PEER_PYTHON:-python3}
pkgs=(torch==2.11.0 torchaudio==2.11.0 espnet==202506)
check='import espnet2.speechlm.core_lm.ar_multiscale'

if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "$check" 2>/dev/null; then
    echo "$venv/bin/python"
    exit 0
fi
mkdir -p "$(dirname "$venv")"
tmp="$venv.build.$$"
log="$venv.log"
rm -rf "$tmp"
echo "peer env: installing ${pkgs[*]} into $venv (minutes; log: $log)" >&2
if ! "$python" -m venv "$tmp" >"$log" 2>&1 || ! "$tmp/bin/pip" install "${pkgs[@]}" >>"$log" 2>&1; then
    echo "peer env: install failed; the end of $log:" >&2
    tail -n 5 "$log" >&2
    rm -rf "$tmp"
    exit 1
fi
if ! "$tmp/bin/python" -c "$check" >>"$log" 2>&1; then
    echo "peer env: espnet installed but does not import; the end of $log:" >&2
    tail -n 5 "$log" >&2
    rm -rf "$tmp"
    exit 1
fi
# A venv's scripts name its own path: move it into place, then rewrite those paths.
rm -rf "$venv"
mv "$tmp" "$venv"
grep -rlF "$tmp" "$venv/bin" 2>/dev/null | while read -r f; do sed -i "s#$tmp#$venv#g" "$f"; done
echo "$venv/bin/python"
