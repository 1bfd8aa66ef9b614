# shellcheck shell=bash
# How recipe jobs are launched. Every launcher takes the same arguments:
#   ${train_cmd} [--gpu G] [--num_threads T] [--mem M] [JOB=1:N] LOG CMD ...
# Local machine (default): utils/run.pl. Slurm cluster: SPEECHLM_BACKEND=slurm, and optionally
# SLURM_EXTRA_ARGS="--partition=gpu --account=me" (see utils/slurm.pl).
case ${SPEECHLM_BACKEND:-local} in
  local)
    train_cmd="utils/run.pl"
    decode_cmd="utils/run.pl"
    cpu_cmd="utils/run.pl" ;;
  slurm)
    train_cmd="utils/slurm.pl --mem 64G --time 72:00:00"
    decode_cmd="utils/slurm.pl --mem 16G --time 12:00:00"
    cpu_cmd="utils/slurm.pl --mem 8G --time 4:00:00" ;;
  *)
    echo "cmd.sh: unknown SPEECHLM_BACKEND '${SPEECHLM_BACKEND}' (valid: local, slurm)" >&2
    return 1 ;;
esac
export train_cmd decode_cmd cpu_cmd
