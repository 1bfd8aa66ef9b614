#!/usr/bin/env bash
# LJSpeech (one speaker, 22.05 kHz, 24 h): text-to-speech from phones, no speaker prompt.
# Data sheet only: ./speechlm.sh does the work (./run.sh --help lists stages and options).
# The unpacked corpus: LJSPEECH=/data/corpora ./run.sh (the dir holding LJSpeech-1.1/).
# Audio tokens: Codec 2 by default; another codec with --tokenizers conf/tokenizers_<codec>.yaml.
# Bigger model: --model_config 1.7b --train_config conf/train_1.7b.yaml
set -euo pipefail

./speechlm.sh \
  --local_data_opts "--ljspeech_dir ${LJSPEECH:-downloads}" \
  --train_set train --valid_set dev --test_sets "test" \
  --tasks "plain_tts" \
  --tokenizers conf/tokenizers.yaml \
  --ngpu 1 --nj 16 --inference_nj 4 \
  --model_config 360m --train_config conf/train_360m.yaml --decode_config conf/decode.yaml \
  "$@"
