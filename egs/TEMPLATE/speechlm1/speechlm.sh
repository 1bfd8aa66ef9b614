#!/usr/bin/env bash
# The stage script of every speechlm recipe: run it from a recipe dir (egs/<corpus>/speechlm1),
# usually through that recipe's run.sh. Each stage is a log line and one `speechlm` command; a
# stage whose outputs are complete skips itself, so re-running continues where a run stopped.
# `./speechlm.sh --help` lists the stages and options.
set -euo pipefail

_log() { printf '%s (%s:%s) %s\n' "$(date '+%Y-%m-%dT%H:%M:%S')" "${0##*/}" "$1" "${*:2}" >&2; }
log() { _log "${BASH_LINENO[0]}" "$@"; }
die() { _log "${BASH_LINENO[0]}" "ERROR: $*"; exit 1; }

[[ -f path.sh && -f cmd.sh && -d utils ]] \
  || die "run me from a recipe dir (one with path.sh, cmd.sh and utils/); the current dir is ${PWD}"
# shellcheck disable=SC1091
. ./path.sh
# shellcheck disable=SC1091
. ./cmd.sh
orig_args=("$@")

# <options>
stage=1                   # first stage to run
stop_stage=12             # last stage to run
nj=4                      # parallel jobs for data preparation and tokenization
inference_nj=2            # parallel jobs for decoding
ngpu=0                    # GPUs per node for training and decoding (0: CPU only)
num_nodes=1               # nodes for training; >1: run this script on every node with its --node_rank
node_rank=0               # rank of this node when num_nodes > 1
master_addr=localhost     # address of node 0 for the torchrun rendezvous
master_port=29500         # port of the torchrun rendezvous
speechlm="python3 -m speechlm" # the speechlm command line
train_cmd=${train_cmd:-utils/run.pl} # job launcher for training (utils/run.pl or utils/slurm.pl, set in cmd.sh)
decode_cmd=${decode_cmd:-utils/run.pl} # job launcher for decoding (set in cmd.sh)
cpu_cmd=${cpu_cmd:-utils/run.pl} # job launcher for tokenization (set in cmd.sh)
dumpdir=dump              # formatted data dirs, manifests, token archives, vocabulary
expdir=exp                # experiment dirs
data_name=                # corpus name in training data specs (default: the recipe's corpus dir name)
local_data_opts=          # options passed to local/data.sh in stage 1
train_set=train           # training set (data/<name>)
valid_set=dev             # validation set
test_sets="test"          # test sets, space separated
min_wav_duration=         # drop shorter training/validation utterances in stage 2 (seconds; empty: keep)
max_wav_duration=         # drop longer training/validation utterances in stage 2 (seconds; empty: keep)
tasks="asr tts"           # task templates to prepare and train on this corpus
task_dir=                 # directory with your own task template YAMLs (name.yaml)
tokenizers=conf/tokenizers.yaml # tokenizer set: instance name -> {type: ..., kwargs}
nbpe=0                    # text tokenizer size to train in stage 3 (0: no text tokenizer training)
bpe_model_type=bpe        # text tokenizer model: bpe, unigram (SentencePiece) or char (chars.txt)
bpe_user_symbols=         # extra symbols kept whole by the BPE model, space separated
bpe_train_text=           # Kaldi text file(s) for BPE training (default: the training set's text)
kmeans_clusters=0         # k-means units to train in stage 4 (0: no audio tokenizer training)
kmeans_feature=mfcc       # k-means features without --ssl_model_dir: mfcc, logmel or whisper (Whisper tiny.en encoder)
kmeans_args=               # extra flags for speechlm train-kmeans, e.g. "--max-frames 100000"
ssl_model_dir=            # local Hugging Face SSL model (HuBERT/WavLM) for k-means features
task_weights=             # share of training examples per task, e.g. "asr:2 tts:1" (default: 1 each)
task_set_suffix=          # task:suffix pairs, space separated: the task reads data/<set><suffix> for every set, e.g. "tts_phones:_tts" (default: data/<set>)
train_data=               # training data, space separated task:name:dumpdir:weight (default: tasks on train_set)
valid_data=               # validation data, same format (default: tasks on valid_set)
train_config=conf/train.yaml # training settings (speechlm train --train-config YAML)
model_config=             # model YAML, or a built-in preset's name: tiny, 30m, 360m, 1.7b
train_args=               # extra flags for speechlm train, e.g. "--max-steps 100"
tag=                      # experiment name: exp/<tag> (default: train_config name + data_name)
init_from=                # packed model or exp dir to start from; its vocabulary is extended
pack_voices=              # dir of speaker prompts (<name>.wav, <name>.phn) the packed model ships in voices/ (speechlm pack --voices-dir)
decode_tasks=             # tasks decoded on test_sets with the packed model (default: tasks)
decode_config=            # decoding settings (speechlm decode --decode-config YAML)
decode_args=              # extra flags for speechlm decode
score_metrics=            # metrics for speechlm score, space separated; TASK:m1,m2 for one task (default: the task's own)
score_args=               # extra flags for speechlm score, e.g. "--mos-model /models/utmos.pt2"
hub_repo=                 # model hub repo id named in the stage 12 export (nothing is uploaded)
hub_license=              # license id in the stage 12 model card, e.g. cc-by-4.0 (default: none stated)
# </options>

# shellcheck disable=SC2034  # read by utils/parse_options.sh
help_message="Usage: $0 [options]   (from a recipe dir; run.sh passes its settings and yours)

Stages (--stage N --stop_stage M runs N..M):
$(awk -F'"' '/^ *log "Stage [0-9]+: / { split($2, a, ":"); if (!seen[a[1]]++) print "  " a[1] ":" a[2] }' "$0")

Training data for several tasks and corpora: prepare each corpus with stages 1-5 in its own
recipe, then train with e.g.
  --stage 6 --train_data \"asr:libri:dump/train/asr:1.0 tts:lj:../../ljspeech/speechlm1/dump/train/tts:0.5\""
# shellcheck disable=SC1091
. utils/parse_options.sh
(( $# == 0 )) || die "unexpected argument(s): $* (options are --name value; see --help)"

# ---- check the options before anything runs ----
last_stage=12
is_int() { [[ $1 =~ ^[0-9]+$ ]]; }
for opt in stage stop_stage nj inference_nj ngpu num_nodes node_rank nbpe kmeans_clusters; do
  is_int "${!opt}" || die "--${opt} must be a non-negative integer, got '${!opt}'"
done
(( stage >= 1 && stage <= last_stage )) || die "--stage ${stage} is out of range 1..${last_stage}"
(( stop_stage >= 1 && stop_stage <= last_stage )) || die "--stop_stage ${stop_stage} is out of range 1..${last_stage}"
(( stage <= stop_stage )) || die "--stage ${stage} is after --stop_stage ${stop_stage}"
(( nj >= 1 && inference_nj >= 1 && num_nodes >= 1 )) || die "--nj, --inference_nj and --num_nodes must be >= 1"
(( node_rank < num_nodes )) || die "--node_rank ${node_rank} must be below --num_nodes ${num_nodes}"
if (( stage <= 8 && stop_stage >= 5 )); then
  [[ -f ${tokenizers} ]] || die "--tokenizers ${tokenizers}: file not found"
fi
[[ -z ${task_dir} || -d ${task_dir} ]] || die "--task_dir ${task_dir}: directory not found"
[[ -z ${init_from} || -f ${init_from}/token_list.json ]] \
  || die "--init_from ${init_from}: no token_list.json there (give a packed model dir or an exp dir)"

stage_on() { (( stage <= $1 && stop_stage >= $1 )); }
read -ra slm <<< "${speechlm}"
# shellcheck disable=SC2034  # used through run_logged
read -ra train_launcher <<< "${train_cmd}"
# shellcheck disable=SC2034
read -ra decode_launcher <<< "${decode_cmd}"
# shellcheck disable=SC2034  # tokenization jobs: one thread each, as the --nj local processes always had
read -ra cpu_launcher <<< "${cpu_cmd} --num_threads 1"
read -ra task_list <<< "${tasks}"
read -ra test_set_list <<< "${test_sets}"
(( ${#task_list[@]} > 0 )) || die "--tasks is empty"
data_name=${data_name:-$(basename "$(dirname "${PWD}")")}
[[ ${data_name} != *:* ]] || die "--data_name '${data_name}' must not contain ':'"
# the data dirs a task reads: data/<set><its --task_set_suffix>
set_of() {  # set_of TASK SET
  local ts
  for ts in ${task_set_suffix}; do
    if [[ ${ts%%:*} == "$1" ]]; then printf '%s' "$2${ts#*:}"; return; fi
  done
  printf '%s' "$2"
}
for ts in ${task_set_suffix}; do  # (an entry of a task not in --tasks is not used)
  [[ ${ts} =~ ^[A-Za-z0-9_.-]+:[A-Za-z0-9_.-]+$ ]] || die "bad --task_set_suffix entry '${ts}': expected task:suffix, e.g. tts_phones:_tts"
done
all_sets=()  # every data dir of the run
set_tasks=()  # "<data dir>/<task>": what stage 5 prepares
fit_sets=()  # the training and validation data dirs (stage 2's duration filters)
for s in "${train_set}" "${valid_set}" "${test_set_list[@]}"; do
  for t in "${task_list[@]}"; do
    ts=$(set_of "${t}" "${s}")
    [[ " ${all_sets[*]} " == *" ${ts} "* ]] || all_sets+=("${ts}")
    [[ " ${set_tasks[*]} " == *" ${ts}/${t} "* ]] || set_tasks+=("${ts}/${t}")
    if [[ ${s} == "${train_set}" || ${s} == "${valid_set}" ]]; then fit_sets+=("${ts}"); fi
  done
done
task_dir_opts=()
if [[ -n ${task_dir} ]]; then task_dir_opts=(--task-dir "${task_dir}"); fi
if [[ -z ${decode_tasks} ]]; then decode_tasks=${tasks}; fi
read -ra decode_task_list <<< "${decode_tasks}"

# Training data specs: task:name:dumpdir:weight.
default_specs() {  # default_specs SET: every task on SET, weighted by --task_weights
  local t w tw
  for t in "${task_list[@]}"; do
    w=1.0
    for tw in ${task_weights}; do [[ ${tw%%:*} == "${t}" ]] && w=${tw#*:}; done
    printf '%s ' "${t}:${data_name}:${dumpdir}/$(set_of "${t}" "$1")/${t}:${w}"
  done
}
if [[ -z ${train_data} ]]; then train_data=$(default_specs "${train_set}"); fi
if [[ -z ${valid_data} ]]; then valid_data=$(default_specs "${valid_set}"); fi
read -ra train_specs <<< "${train_data}"
read -ra valid_specs <<< "${valid_data}"
spec_tasks=()
for spec in "${train_specs[@]}" "${valid_specs[@]}"; do
  [[ ${spec} =~ ^[A-Za-z0-9_.-]+:[^:]+:[^:]+:[0-9]*\.?[0-9]+$ ]] \
    || die "bad data spec '${spec}': expected task:name:dumpdir:weight, e.g. asr:${data_name}:${dumpdir}/${train_set}/asr:1.0"
  t=${spec%%:*}
  [[ " ${spec_tasks[*]} " == *" ${t} "* ]] || spec_tasks+=("${t}")
done

if [[ -z ${tag} ]]; then tag="$(basename "${train_config}" .yaml)_${data_name}"; fi
exp=${expdir}/${tag}
token_list=${dumpdir}/token_list.json
bpe_dir=${dumpdir}/bpe
kmeans_dir=${dumpdir}/kmeans
if (( ngpu == 0 )); then export CUDA_VISIBLE_DEVICES=""; fi

# run_logged LAUNCHER_ARRAY_NAME GPUS [JOB=1:N] LOG CMD ...: one job, or N with every JOB in LOG
# and CMD replaced by 1..N, through run.pl/slurm.pl with the output in LOG; on failure show the
# end of a failed job's log and stop.
run_logged() {
  local -n _launcher=$1
  local gpus=$2 range=() logfile i
  shift 2
  if [[ $1 == JOB=* ]]; then
    range=("$1")
    shift
  fi
  logfile=$1
  shift
  if ! "${_launcher[@]}" --gpu "${gpus}" "${range[@]}" "${logfile}" "$@"; then
    if (( ${#range[@]} > 0 )); then
      for (( i = 1; i <= ${range[0]##*:}; i++ )); do  # the first job that did not end with code 0
        grep -q '^# Ended (code 0)' "${logfile//JOB/${i}}" 2> /dev/null || break
      done
      logfile=${logfile//JOB/${i}}
    fi
    tail -n 30 "${logfile}" >&2 || true
    die "failed: $* (full log: ${logfile})"
  fi
}

# ---- stages ----
if stage_on 1; then
  log "Stage 1: data preparation: local/data.sh ${local_data_opts} -> data/{${all_sets[*]}}"
  marker=data/.stage1.done
  if [[ -f ${marker} && $(cat "${marker}") == "${local_data_opts}" ]]; then
    log "Stage 1: skipped: ${marker} exists (remove it to prepare the data again)"
  else
    [[ -x local/data.sh ]] || die "local/data.sh not found or not executable in ${PWD}"
    read -ra data_opts <<< "${local_data_opts}"
    local/data.sh "${data_opts[@]}"
    for s in "${all_sets[@]}"; do
      for f in wav.scp text utt2spk spk2utt; do
        [[ -s data/${s}/${f} ]] || die "local/data.sh did not write data/${s}/${f} (name the sets it makes with --train_set/--valid_set/--test_sets)"
      done
    done
    printf '%s\n' "${local_data_opts}" > "${marker}"
  fi
fi

if stage_on 2; then
  log "Stage 2: formatting and length filtering: data/{${all_sets[*]}} -> ${dumpdir}/data/{${all_sets[*]}}"
  for s in "${all_sets[@]}"; do
    out=${dumpdir}/data/${s}
    if [[ -f ${out}/.done && ${out}/.done -nt data/${s}/wav.scp ]]; then
      log "Stage 2: ${out} is complete, skipped"
      continue
    fi
    filter_opts=()
    if [[ " ${fit_sets[*]} " == *" ${s} "* ]]; then
      if [[ -n ${min_wav_duration} ]]; then filter_opts+=(--min-duration "${min_wav_duration}"); fi
      if [[ -n ${max_wav_duration} ]]; then filter_opts+=(--max-duration "${max_wav_duration}"); fi
    fi
    "${slm[@]}" fix-data "data/${s}" --out-dir "${out}" "${filter_opts[@]}"
    "${slm[@]}" validate-data "${out}"
    touch "${out}/.done"
  done
fi

if stage_on 3; then
  if (( nbpe > 0 )); then
    read -ra bpe_texts <<< "${bpe_train_text:-${dumpdir}/data/${train_set}/text}"
    bpe_out=${bpe_dir}/bpe.model
    if [[ ${bpe_model_type} == char ]]; then bpe_out=${bpe_dir}/chars.txt; fi
    log "Stage 3: text tokenizer training: ${bpe_texts[*]} -> ${bpe_out} (${bpe_model_type} ${nbpe})"
    if [[ -f ${bpe_out} ]]; then
      log "Stage 3: ${bpe_out} exists, skipped"
    else
      user_symbol_opts=()
      if [[ -n ${bpe_user_symbols} ]]; then
        read -ra user_symbol_opts <<< "--user-symbols ${bpe_user_symbols}"
      fi
      "${slm[@]}" train-bpe --text "${bpe_texts[@]}" --out-dir "${bpe_dir}" --nbpe "${nbpe}" \
        --model-type "${bpe_model_type}" "${user_symbol_opts[@]}"
    fi
  else
    log "Stage 3: text tokenizer training: skipped (--nbpe 0)"
  fi
fi

if stage_on 4; then
  if (( kmeans_clusters > 0 )); then
    log "Stage 4: audio tokenizer training: ${dumpdir}/data/${train_set} -> ${kmeans_dir} (k-means ${kmeans_clusters})"
    if [[ -f ${kmeans_dir}/.done ]]; then
      log "Stage 4: ${kmeans_dir} is complete, skipped"
    else
      feature_opts=(--feature "${kmeans_feature}")
      if [[ -n ${ssl_model_dir} ]]; then feature_opts=(--model-dir "${ssl_model_dir}"); fi
      read -ra extra_kmeans_opts <<< "${kmeans_args}"
      "${slm[@]}" train-kmeans --data-dir "${dumpdir}/data/${train_set}" --out-dir "${kmeans_dir}" \
        --n-clusters "${kmeans_clusters}" "${feature_opts[@]}" "${extra_kmeans_opts[@]}"
      touch "${kmeans_dir}/.done"
    fi
  else
    log "Stage 4: audio tokenizer training: skipped (--kmeans_clusters 0)"
  fi
fi

if stage_on 5; then
  log "Stage 5: manifests and tokenization: ${dumpdir}/data/<set> -> ${dumpdir}/{${set_tasks[*]}}/tokens (${nj} jobs each; logs: tokens/log/)"
  for st in "${set_tasks[@]}"; do
    s=${st%/*} t=${st##*/}
    d=${dumpdir}/${s}/${t}
    "${slm[@]}" prepare --task "${t}" --data-dir "${dumpdir}/data/${s}" --out-dir "${d}" "${task_dir_opts[@]}"
    # --nj shards as jobs of ${cpu_cmd} (a Slurm cluster spreads them), then the merge;
    # finished segments and shards skip themselves, so a re-run continues where one stopped
    tokenize_opts=(--manifest-dir "${d}" --tokenizers "${tokenizers}" --nj "${nj}")
    run_logged cpu_launcher 0 "JOB=1:${nj}" "${d}/tokens/log/tokenize.JOB.log" \
      "${slm[@]}" tokenize "${tokenize_opts[@]}" --shard JOB
    "${slm[@]}" tokenize "${tokenize_opts[@]}" || die "tokenize: merging the shards of ${d} failed"
  done
fi

if stage_on 6; then
  extend_opts=()
  if [[ -n ${init_from} ]]; then extend_opts=(--extend "${init_from}/token_list.json"); fi
  log "Stage 6: vocabulary: ${tokenizers} + tasks {${spec_tasks[*]}}${init_from:+ + ${init_from}/token_list.json} -> ${token_list}"
  "${slm[@]}" vocab --tokenizers "${tokenizers}" --tasks "${spec_tasks[@]}" --out "${token_list}" "${extend_opts[@]}" "${task_dir_opts[@]}"
fi

# Stage 7 wrote length statistics (stats.json) that nothing read; training logs the sequence
# lengths of its data instead. The stage stays, empty, so that stage numbers keep their meaning
# (--stage 8 in scripts, docs and every exp/<tag>/rerun.sh).
if stage_on 7; then
  log "Stage 7: none (kept so stage numbers stay; stage 8 logs the sequence lengths of its data)"
fi

if stage_on 8; then
  log "Stage 8: training: ${train_specs[*]} -> ${exp} (log: ${exp}/logs/train.log)"
  mkdir -p "${exp}/logs"
  # A script that repeats this run from the training stage on.
  {
    echo "#!/usr/bin/env bash"
    printf 'cd %q && ./speechlm.sh' "${PWD}"
    if (( ${#orig_args[@]} > 0 )); then printf ' %q' "${orig_args[@]}"; fi
    printf ' --stage 8 "$@"\n'
  } > "${exp}/rerun.sh"
  chmod +x "${exp}/rerun.sh"
  train_opts=()
  for spec in "${train_specs[@]}"; do train_opts+=(--data "${spec}"); done
  for spec in "${valid_specs[@]}"; do train_opts+=(--valid-data "${spec}"); done
  train_opts+=(--vocab "${token_list}" --tokenizers "${tokenizers}" --out-dir "${exp}" --train-config "${train_config}")
  if [[ -n ${model_config} ]]; then train_opts+=(--model-config "${model_config}"); fi
  if [[ -n ${init_from} ]]; then train_opts+=(--init-from "${init_from}"); fi
  read -ra extra_train_opts <<< "${train_args}"
  distributed=()
  if (( ngpu > 1 || num_nodes > 1 )); then
    distributed=(torchrun --nnodes "${num_nodes}" --nproc_per_node "$(( ngpu > 0 ? ngpu : 1 ))"
      --node_rank "${node_rank}" --master_addr "${master_addr}" --master_port "${master_port}" --no-python)
  fi
  run_logged train_launcher "${ngpu}" "${exp}/logs/train.log" \
    "${distributed[@]}" "${slm[@]}" train "${train_opts[@]}" "${extra_train_opts[@]}"
fi

# up_to_date MARKER PATH...: MARKER exists and nothing under PATH... is newer than it.
up_to_date() {
  local marker=$1
  shift
  [[ -f ${marker} ]] && [[ -z $(find "$@" -newer "${marker}" -print -quit 2> /dev/null) ]]
}

if stage_on 9; then
  log "Stage 9: packing: ${exp} -> ${exp}/packed"
  if up_to_date "${exp}/packed/.done" "${exp}/checkpoints" ${pack_voices:+"${pack_voices}"}; then
    log "Stage 9: ${exp}/packed is newer than every checkpoint, skipped"
  else
    pack_opts=()
    if [[ -n ${decode_config} ]]; then pack_opts=(--decode-config "${decode_config}"); fi
    if [[ -n ${pack_voices} ]]; then pack_opts+=(--voices-dir "${pack_voices}"); fi
    "${slm[@]}" pack --exp-dir "${exp}" --out-dir "${exp}/packed" "${pack_opts[@]}"
    touch "${exp}/packed/.done"
  fi
fi

if stage_on 10; then
  for base in "${test_set_list[@]}"; do
    for t in "${decode_task_list[@]}"; do
      s=$(set_of "${t}" "${base}")
      ddir=${exp}/decode_${s}_${t}
      log "Stage 10: decoding: ${exp}/packed + ${dumpdir}/${s}/${t} -> ${ddir} (${inference_nj} jobs; logs: ${ddir}/logs/decode.JOB.log)"
      if up_to_date "${ddir}/.done" "${exp}/packed/.done"; then
        log "Stage 10: ${ddir} is complete, skipped"
        continue
      fi
      decode_opts=(--model-dir "${exp}/packed" --manifest-dir "${dumpdir}/${s}/${t}" --out-dir "${ddir}" --nj "${inference_nj}")
      if [[ -n ${decode_config} ]]; then decode_opts+=(--decode-config "${decode_config}"); fi
      read -ra extra_decode_opts <<< "${decode_args}"
      # --inference_nj shards as jobs of ${decode_cmd} (a Slurm cluster spreads them), then the merge;
      # several jobs run with one thread each, as the local processes of `decode --nj` always did
      decode_jobs=("${decode_launcher[@]}")
      if (( inference_nj > 1 )); then decode_jobs+=(--num_threads 1); fi
      run_logged decode_jobs "$(( ngpu > 0 ? 1 : 0 ))" "JOB=1:${inference_nj}" "${ddir}/logs/decode.JOB.log" \
        "${slm[@]}" decode "${decode_opts[@]}" "${extra_decode_opts[@]}" --shard JOB
      "${slm[@]}" decode "${decode_opts[@]}" "${extra_decode_opts[@]}" \
        || die "decoding ${ddir}: utterances that failed are listed in ${ddir}/failed (or see the error above)"
      touch "${ddir}/.done"
    done
  done
fi

if stage_on 11; then
  log "Stage 11: scoring: ${exp}/decode_* -> ${exp}/RESULTS.md"
  read -ra score_metric_list <<< "${score_metrics}"
  for base in "${test_set_list[@]}"; do
    for t in "${decode_task_list[@]}"; do
      s=$(set_of "${t}" "${base}")
      ddir=${exp}/decode_${s}_${t}
      if up_to_date "${ddir}/.scored" "${ddir}/.done" && [[ -f ${exp}/RESULTS.md ]]; then
        log "Stage 11: ${ddir} is scored, skipped"
        continue
      fi
      metrics=()
      for m in "${score_metric_list[@]}"; do
        if [[ ${m} != *:* ]]; then metrics+=("${m}"); elif [[ ${m%%:*} == "${t}" ]]; then IFS=, read -ra ms <<< "${m#*:}"; metrics+=("${ms[@]}"); fi
      done
      metric_opts=()
      if (( ${#metrics[@]} > 0 )); then metric_opts=(--metrics "${metrics[@]}"); fi
      floor_opts=()
      if [[ -f ${ddir}/wav.scp ]]; then
        # the reference tokens decoded by the same tokenizer: the recognizer's floor for this codec
        rdir=${exp}/resynth_${s}_${t}
        "${slm[@]}" resynth --manifest-dir "${dumpdir}/${s}/${t}" --tokenizers "${tokenizers}" --out-dir "${rdir}"
        floor_opts=(--floor-wav-scp "codec=${rdir}/wav.scp")
      fi
      read -ra extra_score_args <<< "${score_args}"
      # score updates the table of this (test set, task) in RESULTS.md and keeps the others.
      "${slm[@]}" score --decode-dir "${ddir}" --ref-dir "${dumpdir}/${s}/${t}" \
        --test-set "${s}" --task "${t}" --model "${tag}" "${metric_opts[@]}" "${floor_opts[@]}" \
        "${extra_score_args[@]}" --results "${exp}/RESULTS.md"
      touch "${ddir}/.scored"
    done
  done
  cat "${exp}/RESULTS.md"
fi

if stage_on 12; then
  log "Stage 12: upload-ready export: ${exp} + ${exp}/RESULTS.md -> ${exp}/upload"
  pack_opts=()
  if [[ -n ${decode_config} ]]; then pack_opts=(--decode-config "${decode_config}"); fi
  if [[ -n ${hub_repo} ]]; then pack_opts+=(--repo-id "${hub_repo}"); fi  # the card's usage downloads it
  if [[ -n ${hub_license} ]]; then pack_opts+=(--license "${hub_license}"); fi
  # the packed model that stages 10-11 decoded and scored, with RESULTS.md in its card
  "${slm[@]}" pack --exp-dir "${exp}" --packed-dir "${exp}/packed" --out-dir "${exp}/upload" --export "${pack_opts[@]}"
  # `hf` is the command line huggingface_hub installs (it replaced the older CLI)
  log "Stage 12: to publish: hf upload ${hub_repo:-<user>/<model-name>} ${exp}/upload ."
fi

log "Done: stages ${stage}..${stop_stage} of ${PWD##*/egs/}"
