#!/usr/bin/env bash
# Stages 10-12 of the voice-agent recipe: run the packed model as an agent on the held-out episodes
# (end to end, and as cascades), score the runs side by side, and forecast task success from
# teacher-forced token statistics of every checkpoint. With --parser, the text-parsing modes
# (cascade, cascade-whisper, text) parse with that packed model (local/train_parser.sh) and the
# cascade transcribes with the experiment's ASR task; cascade-whisper-ft is cascade-whisper with the
# Whisper that speechlm finetune-whisper trained (--whisper_ft). Each stage skips work whose outputs are
# newer than the packed models it ran. Run from the recipe dir (run.sh calls it).
set -euo pipefail

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (local/agent_eval.sh) $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
[[ -f path.sh && -d local ]] || die "run me from the recipe dir (egs/voice_agent/speechlm1)"
# shellcheck disable=SC1091
. ./path.sh

# <options>
stage=10                       # first stage to run (10..12)
stop_stage=12                  # last stage to run
exp=exp/voice_agent            # the experiment dir (its packed/ model is run)
episodes_dir=data/local/agent  # <set>/episodes.jsonl: the spoken episodes of local/data.sh
test_sets="test test_noisy"    # episode sets to run the agent on
modes="e2e cascade cascade-whisper cascade-whisper-ft text" # agent modes (speechlm agent run --help; cascade-whisper-ft: see --whisper_ft)
noisy_modes="e2e cascade"      # agent modes on the noisy sets (*noisy*): the ones that hear the noise
nj=2                           # parallel agent jobs (and forecast jobs, over the checkpoints)
dialogue_task=spoken_dialogue  # the e2e task (spoken_dialogue_monologue: the model writes what it heard first)
parser=                        # packed parser model of the text-parsing modes (empty: the experiment's command task)
whisper_lm=exp/whisper_lm.json  # cascade-whisper: a word LM of the training requests re-ranks Whisper's 8 best
                               # texts (made here from whisper_lm_text when missing; empty: Whisper's first choice)
whisper_lm_text="data/train/text data/train_text/text"
whisper_ft=exp/whisper_ft      # cascade-whisper-ft: the fine-tuned Whisper dir (empty: the mode is not run)
whisper_ft_speeds=0.92,1,1.08  # cascade-whisper-ft: playback speeds it hears each request at (README, "Hearing at three speeds")
forecast_set="test"            # held-out episodes of the checkpoint forecasts
forecast_limit=60              # episodes per checkpoint run in the forecast (0: all)
# </options>
# shellcheck disable=SC1091
. utils/parse_options.sh
(( $# == 0 )) || die "unexpected argument(s): $*"
[[ -f ${exp}/packed/.done ]] || die "${exp}/packed is not complete: run stages 1-9 first"
[[ -z ${parser} || -f ${parser}/.done ]] || die "${parser} is not complete: run local/train_parser.sh first"
stage_on() { (( stage <= $1 && stop_stage >= $1 )); }
slm=(python3 -m speechlm)
read -ra sets <<< "${test_sets}"
if [[ -z ${whisper_ft} ]]; then modes=${modes//cascade-whisper-ft/}; fi
read -ra mode_list <<< "${modes}"
read -ra noisy_mode_list <<< "${noisy_modes}"
# newer FILE MODEL...: FILE exists and is newer than each model (a model dir's .done, or a file)
newer() {
  local f=$1 m
  shift
  [[ -f ${f} ]] || return 1
  for m in "$@"; do
    if [[ -d ${m} ]]; then m=${m}/.done; fi
    [[ ${f} -nt ${m} ]] || return 1
  done
}

if stage_on 10; then
  if [[ " ${modes} " == *" cascade-whisper-ft "* && ! -f ${whisper_ft}/speechlm_whisper.json ]]; then
    die "${whisper_ft} is not complete: run speechlm finetune-whisper (run.sh does) or pass --whisper_ft ''"
  fi
  if [[ -n ${whisper_lm} && " ${modes} " == *" cascade-whisper"* && ! -s ${whisper_lm} ]]; then
    log "Stage 10: the requests' word LM: ${whisper_lm_text} -> ${whisper_lm}"
    # shellcheck disable=SC2086
    "${slm[@]}" agent train-lm --text ${whisper_lm_text} --out "${whisper_lm}"
  fi
  for s in "${sets[@]}"; do
    eps=${episodes_dir}/${s}/episodes.jsonl
    [[ -s ${eps} ]] || die "${eps} not found (local/data.sh makes it)"
    set_modes=("${mode_list[@]}")
    if [[ ${s} == *noisy* ]]; then set_modes=("${noisy_mode_list[@]}"); fi
    for m in "${set_modes[@]}"; do
      out=${exp}/agent_${s}_${m}
      models=("${exp}/packed")
      model=(--model-dir "${exp}/packed")
      if [[ -n ${parser} && ${m} != e2e ]]; then models=("${parser}"); model=(--model-dir "${parser}"); fi
      if [[ -n ${parser} && ${m} == cascade ]]; then models+=("${exp}/packed"); model+=(--asr-model-dir "${exp}/packed"); fi
      if [[ -n ${whisper_lm} && ${m} == cascade-whisper* ]]; then models+=("${whisper_lm}"); model+=(--whisper-lm "${whisper_lm}"); fi
      mode=${m}
      if [[ ${m} == cascade-whisper-ft ]]; then
        mode=cascade-whisper
        models+=("${whisper_ft}/speechlm_whisper.json")
        model+=(--whisper-model-dir "${whisper_ft}" --whisper-speeds "${whisper_ft_speeds}")
      fi
      log "Stage 10: agent run (${m}): ${model[*]} + ${eps} -> ${out}"
      if newer "${out}/.done" "${models[@]}"; then log "Stage 10: ${out} is complete, skipped"; continue; fi
      # a run older than its models (finished or killed) is another model's: start it again
      if [[ -e ${out}/predictions.jsonl ]] && ! newer "${out}/predictions.jsonl" "${models[@]}"; then
        log "Stage 10: ${out} is older than the models: run again from the start"
        rm -rf "${out}"
      fi
      "${slm[@]}" agent run "${model[@]}" --episodes "${eps}" --out-dir "${out}" --mode "${mode}" --nj "${nj}" \
        --dialogue-task "${dialogue_task}"
      touch "${out}/.done"
    done
  done
fi

if stage_on 11; then
  log "Stage 11: scoring: ${exp}/agent_* -> ${exp}/RESULTS.md"
  for s in "${sets[@]}"; do
    for m in "${mode_list[@]}"; do
      out=${exp}/agent_${s}_${m}
      [[ -f ${out}/.done ]] || continue
      "${slm[@]}" agent score --run-dir "${out}" --episodes "${episodes_dir}/${s}/episodes.jsonl" \
        --name "${m}" --test-set "${s}" --results "${exp}/RESULTS.md"
    done
  done
  cat "${exp}/RESULTS.md"
fi

if stage_on 12; then
  out=${exp}/forecast
  log "Stage 12: forecasts: every checkpoint of ${exp} on ${forecast_set} (${forecast_limit} episodes) -> ${out}/forecast.md"
  if newer "${out}/.done" "${exp}/packed"; then
    log "Stage 12: ${out} is complete, skipped"
  else
    "${slm[@]}" agent forecast --exp-dir "${exp}" --episodes "${episodes_dir}/${forecast_set}/episodes.jsonl" \
      --task "${dialogue_task}" --data "${dialogue_task}:${forecast_set}:dump/${forecast_set}/${dialogue_task}" \
      --run-agent --mode e2e --agent-limit "${forecast_limit}" --out-dir "${out}" --nj "${nj}"
    touch "${out}/.done"
  fi
  cat "${out}/forecast.md"
fi

log "Done: stages ${stage}..${stop_stage}"
