#!/usr/bin/env bash
# LibriSpeech (16 kHz read English): one multi-task model, ASR + speaker-prompted TTS, on GPUs.
# Data sheet only: ./speechlm.sh does the work (./run.sh --help lists stages and options).
# Audio tokens: Codec 2 by default; another codec with --tokenizers conf/tokenizers_<codec>.yaml.
# Bigger model: --model_config 1.7b --train_config conf/train_1.7b.yaml
# The unpacked corpus: LIBRISPEECH=/data/corpora ./run.sh (the dir holding LibriSpeech/).
# All 960 h: --local_data_opts "--librispeech_dir DIR --train_subsets 'train-clean-100
# train-clean-360 train-other-500' --train_name train_960" --train_set train_960
set -euo pipefail

./speechlm.sh \
  --local_data_opts "--librispeech_dir ${LIBRISPEECH:-downloads}" \
  --train_set train_clean_100 --valid_set dev_clean --test_sets "test_clean test_other" \
  --max_wav_duration 20 \
  --tasks "asr tts" \
  --tokenizers conf/tokenizers.yaml \
  --nbpe 5000 \
  --ngpu 1 --nj 16 --inference_nj 4 \
  --model_config 360m --train_config conf/train_360m.yaml --decode_config conf/decode.yaml \
  "$@"
