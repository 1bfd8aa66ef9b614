#!/usr/bin/env bash
# Make the voice-agent task sets with no download: episodes generated from intent templates on the
# home-assistant environment (speechlm agent generate), spoken by several engines and voices
# (speechlm agent synth), and written as Kaldi data dirs with one utterance per assistant step.
#   train: training phrasings and slot values, training voices of espeak-ng and festival
#   train_text: more training episodes, text only (the text command task: cheap, many phrasings)
#   dev:   training phrasings, other episodes (validation loss only)
#   test:  held-out phrasings (--held_out templates: a quarter of both authors' templates; author:
#          another author's style) and slot values, held-out voices, and an engine (flite) that
#          training never hears
#   test_noisy: the test episodes again, with white or babble noise at 20, 10 or 5 dB SNR
# Deterministic under --seed; re-running keeps the wav files that exist (it resumes).
set -euo pipefail

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (local/data.sh) $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
[[ -f path.sh && -d local ]] || die "run me from the recipe dir (egs/voice_agent/speechlm1)"
# shellcheck disable=SC1091
. ./path.sh

# <options>
num_train=1500                 # training episodes (spoken)
num_train_text=5000            # text-only training episodes (0: none)
num_dev=100                    # validation episodes
num_test=200                   # held-out test episodes
mix=atomic=0.6,compositional=0.25,recovery=0.15 # shares of the episode kinds
held_out=templates             # test phrasings: templates (a quarter of both authors', never trained on) or author (author B's)
seed=1                         # the same seed gives the same task sets
nj=2                           # parallel synthesis jobs
train_engines=espeak-ng,festival # engines of the training and dev voices
test_engines=espeak-ng,festival,flite # engines of the test voices (held-out voices; flite is never trained on)
test_snrs=20,10,5              # SNRs (dB) of test_noisy (empty: no test_noisy set)
workdir=data/local/agent       # episodes and wav files
# </options>
# shellcheck disable=SC1091
. utils/parse_options.sh
(( $# == 0 )) || die "unexpected argument(s): $*"
[[ ${nj} =~ ^[1-9][0-9]*$ ]] || die "--nj must be a positive integer, got '${nj}'"

slm=(python3 -m speechlm)
mkdir -p "${workdir}"
gen() {  # gen SET SPLIT N SEED
  if [[ -s ${workdir}/$1.jsonl ]]; then log "$1: ${workdir}/$1.jsonl exists, kept"; return; fi
  "${slm[@]}" agent generate --split "$2" --n "$3" --seed "$4" --mix "${mix}" --held-out "${held_out}" \
    --id-prefix "$1" --out "${workdir}/$1.jsonl"
}
gen train train "${num_train}" "${seed}"
gen dev train "${num_dev}" $(( seed + 1000 ))
gen test test "${num_test}" $(( seed + 2000 ))
if (( num_train_text > 0 )); then
  gen train_text train "${num_train_text}" $(( seed + 3000 ))
  "${slm[@]}" agent datadir --episodes "${workdir}/train_text.jsonl" --out-dir data/train_text --text-only
fi

synth() {  # synth SET [extra synth options]
  local set=$1
  shift
  log "${set}: speaking ${workdir}/${set}.jsonl -> ${workdir}/${set}/episodes.jsonl, data/${set}"
  "${slm[@]}" agent synth --episodes "${workdir}/${set%_noisy}.jsonl" --out-dir "${workdir}/${set}" \
    --train-engines "${train_engines}" --test-engines "${test_engines}" --seed "${seed}" --nj "${nj}" \
    --data-dir "data/${set}" "$@"
}
synth train
synth dev
synth test
if [[ -n ${test_snrs} ]]; then synth test_noisy --snr "${test_snrs}" --noise-rate 1.0; fi
log "done: data/{train,train_text,dev,test,test_noisy} (as asked), episodes in ${workdir}/<set>/episodes.jsonl"
