#!/usr/bin/env bash
# mini_espeak: a multi-speaker English corpus synthesized here by espeak-ng (no download), then
# one small multi-task model (Codec 2 tokens) trained on the CPU, decoded, scored and packed:
# ASR of 138 voices, and TTS in one voice (en-us: --tts_voice speaks every sentence again in it,
# into data/<set>_tts, which --task_set_suffix gives the TTS task) whose target leads each Codec 2
# frame with the phone it speaks; the packed model ships a prompt of that voice (data/voices), so
# lm.tts(text) needs none (README: "Results"). Data sheet only: ./speechlm.sh does the work
# (./run.sh --help lists stages and options).
set -euo pipefail

./speechlm.sh \
  --local_data_opts "--num_utts 3000 --nj 2 --seed 1 --tts_voice en-us" \
  --train_set train --valid_set dev --test_sets "test" \
  --tasks "asr tts_phones" --task_weights "asr:5 tts_phones:2" \
  --task_dir conf/tasks --task_set_suffix "tts_phones:_tts" --pack_voices data/voices \
  --tokenizers conf/tokenizers_phones.yaml \
  --nbpe 256 \
  --nj 2 --inference_nj 2 \
  --model_config conf/model_phones.yaml --train_config conf/train.yaml \
  --decode_config conf/decode_phones.yaml \
  --score_metrics "tts_phones:intelligibility,duration,spk_sim" \
  "$@"
