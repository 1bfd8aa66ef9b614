#!/usr/bin/env bash
# Run a command, or N copies of it in parallel, on this machine, with one log file per job.
#
#   utils/run.pl [options] LOG CMD ...                 one job; its output goes to LOG
#   utils/run.pl [options] JOB=1:N LOG.JOB CMD ... JOB ...
#       N jobs; every "JOB" in LOG and CMD becomes the job number (1..N)
#
# Arguments without spaces are joined into one bash command line, so `\|` and `\>` work as in
# Kaldi; an argument with spaces stays one word. Exits 0 only if every job exited 0; otherwise it
# names the failed jobs and their logs. Each log starts with the command and ends with
# "# Accounting: time=S threads=T peak_rss_mb=M" and "# Ended (code N) at DATE" (M: the largest
# resident set of any process of the job).
# Options (accepted for every launcher, so recipes can switch to utils/slurm.pl):
#   --max_jobs_run M   run at most M jobs at once (default: all)
#   --num_threads T    threads per job (exported as OMP_NUM_THREADS for the job)
#   --gpu G            GPUs per job (ignored here; jobs see the GPUs of this machine)
#   --mem SIZE         memory per job (ignored here)
# The environment variable RUNPL_LAUNCHER, if set, is a command prefix put before every job
# (utils/slurm.pl sets it to an srun call).
set -uo pipefail

prog=${0##*/}
die() { echo "${prog}: $*" >&2; exit 1; }

max_jobs=0
num_threads=""
while (( $# > 0 )); do
  case $1 in
    --max_jobs_run | --max-jobs-run) max_jobs=${2:?}; shift 2 ;;
    --num_threads | --num-threads) num_threads=${2:?}; shift 2 ;;
    --gpu | --mem | --time | --partition | --config) shift 2 ;;
    --*) die "unknown option $1 (valid: --max_jobs_run --num_threads --gpu --mem --time --partition --config)" ;;
    *) break ;;
  esac
done
[[ ${max_jobs} =~ ^[0-9]+$ ]] || die "--max_jobs_run must be a number, got '${max_jobs}'"

jobvar=""
first=1
last=1
if [[ ${1:-} =~ ^([A-Za-z_][A-Za-z0-9_]*)=([0-9]+):([0-9]+)$ ]]; then
  jobvar=${BASH_REMATCH[1]}
  first=${BASH_REMATCH[2]}
  last=${BASH_REMATCH[3]}
  (( first <= last )) || die "empty job range $1"
  shift
elif [[ ${1:-} == *=* && ${1:-} != */* ]]; then
  die "bad job range '$1' (expected e.g. JOB=1:4)"
fi
(( $# >= 2 )) || die "usage: ${prog} [options] [JOB=1:N] LOG CMD ..."
logspec=$1
shift
if [[ -n ${jobvar} && ${logspec} != *"${jobvar}"* && ${last} -gt ${first} ]]; then
  die "the log file name '${logspec}' must contain ${jobvar} so that every job has its own log"
fi

# One bash command line from the arguments (plain words as they are, others quoted).
cmdline=""
for arg in "$@"; do
  if [[ -n ${arg} && ${arg} =~ ^[^[:space:]\'\"]+$ ]]; then
    cmdline+="${arg} "
  else
    cmdline+="$(printf '%q' "${arg}") "
  fi
done

launcher=()
if [[ -n ${RUNPL_LAUNCHER:-} ]]; then read -ra launcher <<< "${RUNPL_LAUNCHER}"; fi

statusdir=$(mktemp -d "${TMPDIR:-/tmp}/runpl.XXXXXX")
trap 'rm -rf "${statusdir}"' EXIT

run_job() {  # run_job INDEX
  local i=$1 log cmd
  log=${logspec}
  cmd=${cmdline}
  if [[ -n ${jobvar} ]]; then
    log=${log//${jobvar}/${i}}
    cmd=${cmd//${jobvar}/${i}}
  fi
  mkdir -p "$(dirname "${log}")" || { echo 1 > "${statusdir}/${i}"; return; }
  {
    echo "# ${cmd}"
    echo "# Started at $(date)"
    local start=${SECONDS} rc=0
    if [[ -n ${num_threads} ]]; then export OMP_NUM_THREADS=${num_threads}; fi
    # peak_rss_mb: the largest resident set of any process of the job (ru_maxrss of the children)
    python3 -c 'import resource, subprocess, sys
rc = subprocess.call(sys.argv[2:])
open(sys.argv[1], "w").write("%.0f" % (resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024))
sys.exit(128 - rc if rc < 0 else rc)' "${statusdir}/rss.${i}" "${launcher[@]}" bash -o pipefail -c "${cmd}" || rc=$?
    echo "# Accounting: time=$(( SECONDS - start )) threads=${num_threads:-default} peak_rss_mb=$(cat "${statusdir}/rss.${i}" 2> /dev/null || echo '?')"
    echo "# Ended (code ${rc}) at $(date)"
    echo "${rc}" > "${statusdir}/${i}"
  } > "${log}" 2>&1 < /dev/null
}

for (( i = first; i <= last; i++ )); do
  if (( max_jobs > 0 )); then
    while (( $(jobs -rp | wc -l) >= max_jobs )); do wait -n 2> /dev/null || true; done
  fi
  run_job "${i}" &
done
wait

failed=()
for (( i = first; i <= last; i++ )); do
  rc=$(cat "${statusdir}/${i}" 2> /dev/null || echo "killed")
  [[ ${rc} == 0 ]] || failed+=("${i}")
done
if (( ${#failed[@]} > 0 )); then
  log=${logspec}
  if [[ -n ${jobvar} ]]; then log=${log//${jobvar}/${failed[0]}}; fi
  if [[ -n ${jobvar} ]]; then
    echo "${prog}: ${#failed[@]} of $(( last - first + 1 )) jobs failed (jobs ${failed[*]}); see e.g. ${log}" >&2
  else
    echo "${prog}: job failed; see ${log}" >&2
  fi
  exit 1
fi
exit 0
