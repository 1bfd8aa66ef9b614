#!/usr/bin/env bash
# Make the mini_espeak corpus with no download: English sentences from a grammar, spoken by
# espeak-ng with a random voice setting (accent, variant, pitch, rate) per speaker, resampled
# with sox to 16-bit mono wav. Writes data/{train,dev,test}; test has held-out sentences AND
# held-out voices, dev has held-out sentences with training voices. --voices en-us (or a comma list
# of VOICE[:RATE[:PITCH]]) uses those voices in every split instead: no held-out test voices then.
# --tts_voice en-us also speaks every sentence in that one voice, with its phone alignment, into
# data/{train,dev,test}_tts (the same sentences per split): the recipe's TTS learns that voice;
# data/voices/<voice>.wav (+ .phn) is its first dev sentence, the packed model's speaker prompt.
# Deterministic under --seed; re-running keeps the wav files that exist (it resumes).
# Run from the recipe dir: local/data.sh [--num_utts 3000] [--nj 2] ...
set -euo pipefail

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (local/data.sh) $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
[[ -f path.sh && -d local ]] || die "run me from the recipe dir (egs/mini_espeak/speechlm1)"
# shellcheck disable=SC1091
. ./path.sh

# <options>
num_utts=3000                  # utterances in all (train + dev + test), one sentence each
num_dev=0                      # dev utterances (0: 4% of num_utts, at least 2)
num_test=0                     # test utterances (0: 4% of num_utts, at least 2)
utts_per_spk=20                # about this many training utterances per voice setting
seed=1                         # random seed: the same seed gives the same corpus
voices=                        # VOICE[:RATE[:PITCH]],... spoken in every split (rate 160, pitch 50 if not given), e.g. en-us; empty: random voices
align=false                    # true: also write each wav's phone alignment (<name>.phn, from espeak-ng's phoneme events); and data/<set>/phones (the phones each utterance speaks)
tts_voice=                     # VOICE[:RATE[:PITCH]]: also data/<set>_tts, every sentence in this voice, aligned (empty: none)
nj=2                           # parallel espeak-ng jobs
cmd=utils/run.pl               # job launcher (utils/run.pl or utils/slurm.pl)
fs=16000                       # sampling rate of the wav files
workdir=data/local/mini_espeak # plan, logs and wav files
# </options>
# shellcheck disable=SC1091
. utils/parse_options.sh
(( $# == 0 )) || die "unexpected argument(s): $*"
for tool in espeak-ng sox python3; do
  command -v "${tool}" > /dev/null || die "${tool} not found (Debian: apt-get install espeak-ng sox)"
done
[[ ${align} == true || ${align} == false ]] || die "--align must be true or false, got '${align}'"
[[ ${nj} =~ ^[1-9][0-9]*$ ]] || die "--nj must be a positive integer, got '${nj}'"
[[ ${tts_voice} != *,* ]] || die "--tts_voice is one voice (VOICE[:RATE[:PITCH]]), got '${tts_voice}'"

# corpus PLAN VOICES ALIGN SUFFIX: plan the corpus (VOICES: --voices of the plan), synthesize it
# (ALIGN: true or false) and write data/<split>SUFFIX
corpus() {
  local plan=$1 voices=$2 align=$3 suffix=$4 lines jobs=${nj} i
  log "planning ${num_utts} utterances (seed ${seed}${voices:+, voices ${voices}}) -> ${plan}"
  python3 local/mini_corpus.py plan --num-utts "${num_utts}" --num-dev "${num_dev}" --num-test "${num_test}" \
    --utts-per-spk "${utts_per_spk}" --seed "${seed}" --voices "${voices}" --out "${plan}"
  lines=$(wc -l < "${plan}")
  (( jobs <= lines )) || jobs=${lines}
  rm -rf "${workdir}/split"
  mkdir -p "${workdir}/split"
  local shards=()
  for (( i = 1; i <= jobs; i++ )); do shards+=("${workdir}/split/plan.${i}.tsv"); done
  utils/split_scp.sh "${plan}" "${shards[@]}"
  local launcher synth_opts=()
  read -ra launcher <<< "${cmd}"
  if [[ ${align} == true ]]; then synth_opts+=(--align); fi
  log "synthesizing with ${jobs} jobs (logs: ${workdir}/log/synth.*.log)"
  "${launcher[@]}" JOB=1:"${jobs}" "${workdir}/log/synth.JOB.log" \
    python3 local/mini_corpus.py synth --plan "${workdir}/split/plan.JOB.tsv" --wav-dir "${workdir}/wav" --fs "${fs}" \
    ${synth_opts[@]+"${synth_opts[@]}"} \
    || die "synthesis failed; see ${workdir}/log/synth.*.log"
  python3 local/mini_corpus.py write --plan "${plan}" --wav-dir "${workdir}/wav" --out data --suffix "${suffix}"
  log "done: data/train${suffix} data/dev${suffix} data/test${suffix}"
}

corpus "${workdir}/plan.tsv" "${voices}" "${align}" ""
if [[ -n ${tts_voice} ]]; then
  corpus "${workdir}/plan_tts.tsv" "${tts_voice}" true _tts
  # the voice's prompt for the packed model (speechlm.sh --pack_voices data/voices): with it,
  # lm.tts(text) and `speechlm serve` speak without a prompt of the user's (which would need an alignment)
  read -r _ prompt_wav < data/dev_tts/wav.scp
  mkdir -p data/voices
  for ext in wav phn; do cp "${prompt_wav%.wav}.${ext}" "data/voices/${tts_voice%%:*}.${ext}"; done
  log "done: data/voices/${tts_voice%%:*}.wav (a speaker prompt of the voice)"
fi
