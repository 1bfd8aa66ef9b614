#!/usr/bin/env bash
# Same interface as utils/run.pl, but every job runs on a Slurm cluster through srun:
#
#   utils/slurm.pl [options] [JOB=1:N] LOG CMD ...
#
# Options: --gpu G (--gres=gpu:G), --num_threads T (--cpus-per-task), --mem SIZE, --time T,
# --partition P, --max_jobs_run M (jobs in flight at once). Extra srun flags can be given in the
# environment variable SLURM_EXTRA_ARGS (e.g. "--account=myproject --qos=high").
# Each job's output goes to its LOG on the shared file system; the exit code is non-zero if any
# job failed, as with run.pl.
set -euo pipefail

prog=${0##*/}
die() { echo "${prog}: $*" >&2; exit 1; }
command -v srun > /dev/null || die "srun not found: run on a Slurm login node, or use utils/run.pl"

srun_args=(srun --quiet --ntasks=1)
runpl_args=()
while (( $# > 0 )); do
  case $1 in
    --gpu) (( $2 > 0 )) && srun_args+=("--gres=gpu:$2"); shift 2 ;;
    --num_threads | --num-threads) srun_args+=("--cpus-per-task=$2"); runpl_args+=(--num_threads "$2"); shift 2 ;;
    --mem) srun_args+=("--mem=$2"); shift 2 ;;
    --time) srun_args+=("--time=$2"); shift 2 ;;
    --partition) srun_args+=("--partition=$2"); shift 2 ;;
    --max_jobs_run | --max-jobs-run) runpl_args+=(--max_jobs_run "$2"); shift 2 ;;
    --config) shift 2 ;;
    --*) die "unknown option $1 (valid: --gpu --num_threads --mem --time --partition --max_jobs_run)" ;;
    *) break ;;
  esac
done
if [[ -n ${SLURM_EXTRA_ARGS:-} ]]; then
  read -ra extra <<< "${SLURM_EXTRA_ARGS}"
  srun_args+=("${extra[@]}")
fi

RUNPL_LAUNCHER="${srun_args[*]}" exec "$(dirname "$0")/run.pl" "${runpl_args[@]}" "$@"
