# shellcheck shell=bash
# Sourced by every recipe script (recipes link it): activates the toolkit's virtual env and sets threads.
# The toolkit root is three levels above this file (egs/TEMPLATE/speechlm1/path.sh; recipes link
# it); set SPEECHLM_ROOT to use another checkout's .venv. speechlm comes from that env, where
# tools/install.sh installs it (editable: this checkout's code), or from the env already active.
SPEECHLM_ROOT=${SPEECHLM_ROOT:-$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../../.." && pwd)}
export SPEECHLM_ROOT

# The virtual env made by tools/install.sh, unless one is active already.
if [[ -z ${VIRTUAL_ENV:-} && -f ${SPEECHLM_ROOT}/.venv/bin/activate ]]; then
  # shellcheck disable=SC1091
  . "${SPEECHLM_ROOT}/.venv/bin/activate"
fi
if ! python3 -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("speechlm") is None)' 2> /dev/null; then
  echo "path.sh: $(command -v python3) cannot import speechlm; install it with ${SPEECHLM_ROOT}/tools/install.sh" >&2
fi
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
