#!/usr/bin/env bash
# mini_espeak: a multi-speaker English corpus synthesized here by espeak-ng (no download), then
# one small multi-task model (ASR + TTS, Codec 2 tokens) trained on the CPU, decoded, scored and
# packed. Data sheet only: ./speechlm.sh does the work (./run.sh --help lists stages and options).
set -euo pipefail

./speechlm.sh \
  --local_data_opts "--num_utts 3000 --nj 2 --seed 1" \
  --train_set train --valid_set dev --test_sets "test" \
  --tasks "asr tts" --task_weights "asr:2 tts:1" \
  --tokenizers conf/tokenizers.yaml \
  --nbpe 256 \
  --nj 2 --inference_nj 2 \
  --model_config conf/model.yaml --train_config conf/train.yaml \
  --decode_config conf/decode.yaml \
  --score_metrics "tts:intelligibility,duration,spk_sim" \
  "$@"
