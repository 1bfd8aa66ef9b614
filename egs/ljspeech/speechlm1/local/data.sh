#!/usr/bin/env bash
# LJSpeech data dirs data/{train,dev,test} from the unpacked LJSpeech-1.1 in --ljspeech_dir
# (nothing is downloaded). The split follows metadata.csv's order: the last lines are test.
set -euo pipefail

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (local/data.sh) $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
[[ -f path.sh && -d local ]] || die "run me from the recipe dir (egs/ljspeech/speechlm1)"
# shellcheck disable=SC1091
. ./path.sh

# <options>
ljspeech_dir=downloads   # dir where LJSpeech-1.1.tar.bz2 was unpacked
num_dev=250              # dev utterances
num_test=250             # test utterances
fs=0                     # resample to this rate with sox pipes in wav.scp (0: the 22.05 kHz wav paths)
# </options>
# shellcheck disable=SC1091
. utils/parse_options.sh
(( $# == 0 )) || die "unexpected argument(s): $*"
[[ -d ${ljspeech_dir} ]] || die "--ljspeech_dir ${ljspeech_dir} not found (unpack LJSpeech-1.1 there)"

log "${ljspeech_dir} -> data/{train,dev,test}"
python3 local/prepare_ljspeech.py --corpus "${ljspeech_dir}" --out data \
  --num-dev "${num_dev}" --num-test "${num_test}" --fs "${fs}"
log "done"
