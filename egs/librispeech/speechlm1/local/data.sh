#!/usr/bin/env bash
# LibriSpeech data dirs from the unpacked archives in --librispeech_dir (nothing is downloaded):
# data/<train_name> (the --train_subsets together) and data/<subset with _> for each dev and
# test subset, e.g. data/dev_clean, data/test_clean, data/test_other.
set -euo pipefail

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (local/data.sh) $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
[[ -f path.sh && -d local ]] || die "run me from the recipe dir (egs/librispeech/speechlm1)"
# shellcheck disable=SC1091
. ./path.sh

# <options>
librispeech_dir=downloads               # dir where the LibriSpeech archives were unpacked
train_subsets=train-clean-100           # training subsets, space separated
train_name=train_clean_100              # data dir of the training subsets together
dev_subsets=dev-clean                   # dev subsets, space separated
test_subsets="test-clean test-other"    # test subsets, space separated
pipe=false                              # wav.scp as sox pipes (true) or flac paths (false)
fs=16000                                # sampling rate of the sox pipes
# </options>
# shellcheck disable=SC1091
. utils/parse_options.sh
(( $# == 0 )) || die "unexpected argument(s): $*"
[[ -d ${librispeech_dir} ]] || die "--librispeech_dir ${librispeech_dir} not found (unpack the LibriSpeech archives there)"

pipe_opts=()
if [[ ${pipe} == true ]]; then pipe_opts=(--pipe --fs "${fs}"); fi
subset_opts() { local s; for s in "$@"; do printf -- '--subset\n%s\n' "${s}"; done; }

read -ra train_list <<< "${train_subsets}"
mapfile -t opts < <(subset_opts "${train_list[@]}")
log "${train_subsets} -> data/${train_name}"
python3 local/prepare_librispeech.py --corpus "${librispeech_dir}" "${opts[@]}" --out "data/${train_name}" "${pipe_opts[@]}"
read -ra eval_list <<< "${dev_subsets} ${test_subsets}"
for s in "${eval_list[@]}"; do
  log "${s} -> data/${s//-/_}"
  python3 local/prepare_librispeech.py --corpus "${librispeech_dir}" --subset "${s}" --out "data/${s//-/_}" "${pipe_opts[@]}"
done
log "done"
