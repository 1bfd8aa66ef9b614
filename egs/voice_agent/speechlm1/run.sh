#!/usr/bin/env bash
# voice_agent: a SpeechLM that hears a spoken request, calls the home-assistant tools, reads their
# results and answers; trained on the CPU from task sets made here (no download), then run as an
# agent on held-out phrasings, voices and an unheard engine, next to cascades, and scored.
#   stages 1-9:  ./speechlm.sh (data, BPE, manifests + tokens, vocabulary, training, packing)
#   stages 10-12: local/agent_eval.sh (agent runs, scoring, success vs SNR, checkpoint forecasts)
# Data sheet only; `./run.sh --stage N --stop_stage M` runs a part, other options go to speechlm.sh.
set -euo pipefail

stage=1
stop_stage=12
args=()
while (( $# > 0 )); do
  case $1 in
    --stage) stage=$2; shift 2 ;;
    --stop_stage) stop_stage=$2; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done

if (( stage <= 9 )); then
  ./speechlm.sh --stage "${stage}" --stop_stage "$(( stop_stage < 9 ? stop_stage : 9 ))" \
    --local_data_opts "--num_train 1500 --num_dev 100 --num_test 300 --nj 2 --seed 1" \
    --train_set train --valid_set dev --test_sets "test" \
    --tasks "spoken_dialogue command asr" --task_weights "spoken_dialogue:2 command:3 asr:1" \
    --tokenizers conf/tokenizers.yaml \
    --nbpe 400 --bpe_train_text "data/train/text data/train/response data/train/history" \
    --nj 2 --inference_nj 2 \
    --model_config conf/model.yaml --train_config conf/train.yaml \
    --decode_config conf/decode.yaml \
    --tag voice_agent \
    ${args[@]+"${args[@]}"}
fi
if (( stop_stage >= 10 )); then
  local/agent_eval.sh --stage "$(( stage > 10 ? stage : 10 ))" --stop_stage "${stop_stage}" \
    --exp exp/voice_agent --test_sets "test test_noisy"
fi
