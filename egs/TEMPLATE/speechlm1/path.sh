# shellcheck shell=bash
# Sourced by every recipe script (recipes link it): puts the toolkit on the path and sets threads.
# The toolkit root is three levels above this file (egs/TEMPLATE/speechlm1/path.sh; recipes link
# it); set SPEECHLM_ROOT to use another checkout.
SPEECHLM_ROOT=${SPEECHLM_ROOT:-$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../../.." && pwd)}
export SPEECHLM_ROOT

# The virtual env made by tools/install.sh, unless one is active already.
if [[ -z ${VIRTUAL_ENV:-} && -f ${SPEECHLM_ROOT}/.venv/bin/activate ]]; then
  # shellcheck disable=SC1091
  . "${SPEECHLM_ROOT}/.venv/bin/activate"
fi
# `python3 -m speechlm` works from this checkout even without an installed package.
export PYTHONPATH=${SPEECHLM_ROOT}${PYTHONPATH:+:${PYTHONPATH}}
export PATH=${PWD}/utils:${PATH}

# Threads: numeric libraries use the cores given to this process unless told otherwise; parallel
# jobs (--nj) divide them further inside speechlm. Set OMP_NUM_THREADS before running to change it.
_cores=$(nproc 2> /dev/null || echo 1)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${_cores}}
export MKL_NUM_THREADS=${MKL_NUM_THREADS:-${OMP_NUM_THREADS}}
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-${OMP_NUM_THREADS}}
export TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-false}
export PYTHONUNBUFFERED=1
unset _cores
