#!/usr/bin/env bash
# Make a new recipe dir whose shared files are symlinks to this template (never copies):
#
#   egs/TEMPLATE/speechlm1/setup.sh egs/<corpus>/speechlm1
#
# Links: speechlm.sh path.sh cmd.sh utils/ -> this template. Writes a run.sh skeleton,
# conf/tokenizers.yaml, conf/train.yaml and a local/data.sh stub for you to fill in (existing files
# are kept). Linking into an existing recipe updates only the links.
set -euo pipefail

prog=${0##*/}
die() { echo "${prog}: $*" >&2; exit 1; }
(( $# == 1 )) || die "usage: ${prog} egs/<corpus>/speechlm1"
[[ $1 != -* ]] || die "usage: ${prog} egs/<corpus>/speechlm1 (no options)"

template=$(cd "$(dirname "$0")" && pwd)
target=$1
mkdir -p "${target}/conf" "${target}/local"
target=$(cd "${target}" && pwd)
[[ ${target} != "${template}" ]] || die "the target is the template itself"
rel=$(realpath --relative-to="${target}" "${template}")

for f in speechlm.sh path.sh cmd.sh utils; do
  if [[ -e ${target}/${f} && ! -L ${target}/${f} ]]; then
    die "${target}/${f} exists and is not a link; remove it to link the shared ${f}"
  fi
  ln -sfn "${rel}/${f}" "${target}/${f}"
done

if [[ ! -e ${target}/run.sh ]]; then
  cat > "${target}/run.sh" <<'RUN'
#!/usr/bin/env bash
# Recipe data sheet: names, paths and configs; ./speechlm.sh does the work (see --help).
set -euo pipefail

./speechlm.sh \
  --tasks "asr tts" \
  --train_set train --valid_set dev --test_sets "test" \
  --tokenizers conf/tokenizers.yaml \
  --model_config tiny --train_config conf/train.yaml \
  "$@"
RUN
  chmod +x "${target}/run.sh"
fi
if [[ ! -e ${target}/conf/tokenizers.yaml ]]; then
  printf '%s\n' "# Tokenizer instances: name -> {type: <registry name>, ...options}" \
    "codec: {type: codec2}" "phone: {type: g2p}" > "${target}/conf/tokenizers.yaml"
fi
if [[ ! -e ${target}/conf/train.yaml ]]; then
  printf '%s\n' "# Options of \`speechlm train\` (keys as in speechlm train --help); flags in" \
    "# --train_args win over these. Model presets by name (--model_config): tiny, 30m, 360m, 1.7b." \
    "{}" > "${target}/conf/train.yaml"
fi
if [[ ! -e ${target}/local/data.sh ]]; then
  cat > "${target}/local/data.sh" <<'DATA'
#!/usr/bin/env bash
# Corpus preparation: write Kaldi data dirs data/{train,dev,test} (wav.scp text utt2spk spk2utt).
set -euo pipefail
echo "local/data.sh: write the data preparation of this corpus here" >&2
exit 1
DATA
  chmod +x "${target}/local/data.sh"
fi
echo "${prog}: recipe ready in ${target}; next: write local/data.sh, then ./run.sh"
