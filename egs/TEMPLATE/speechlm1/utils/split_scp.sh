#!/usr/bin/env bash
# Split a line-based file (scp, text, plan ...) into N parts of nearly equal size, in order:
#
#   utils/split_scp.sh IN OUT.1 OUT.2 ... OUT.N
#   utils/split_scp.sh --utt2spk UTT2SPK IN OUT.1 ... OUT.N   keep each speaker's lines together
#
# The parts concatenated give IN back. It is an error to ask for more parts than IN has lines
# (or speakers, with --utt2spk).
set -euo pipefail

prog=${0##*/}
die() { echo "${prog}: $*" >&2; exit 1; }

utt2spk=""
if [[ ${1:-} == --utt2spk ]]; then
  utt2spk=${2:?--utt2spk needs a file}
  shift 2
fi
(( $# >= 2 )) || die "usage: ${prog} [--utt2spk FILE] IN OUT.1 [OUT.2 ...]"
in=$1
shift
[[ -f ${in} ]] || die "input file ${in} not found"
[[ -z ${utt2spk} || -f ${utt2spk} ]] || die "--utt2spk file ${utt2spk} not found"

# Group key of every line: the line number, or the speaker of its first field. Output names may
# hold spaces.
awk -v utt2spk="${utt2spk}" -v prog="${prog}" -v infile="${in}" '
  BEGIN {
    # ARGV[1] is the input, the rest are the outputs: take them out of the list of files to read.
    nout = ARGC - 2
    for (i = 1; i <= nout; i++) { out[i] = ARGV[i + 1]; delete ARGV[i + 1] }
    if (utt2spk != "") while ((getline line < utt2spk) > 0) { split(line, f, " "); spk[f[1]] = f[2] }
  }
  {
    if (utt2spk != "") {
      if (!($1 in spk)) { printf "%s: %s line %d: id %s is not in the utt2spk file\n", prog, infile, NR, $1 > "/dev/stderr"; exit 2 }
      key = spk[$1]
    } else key = NR
    if (key != prev || NR == 1) { ngroups++; prev = key }
    group[NR] = ngroups; lines[NR] = $0
  }
  END {
    if (ngroups < nout) {
      printf "%s: cannot split %s (%d %s) into %d parts\n", prog, infile, ngroups, (utt2spk != "" ? "speakers" : "lines"), nout > "/dev/stderr"
      exit 2
    }
    for (i = 1; i <= nout; i++) printf "" > out[i]
    for (n = 1; n <= NR; n++) {
      part = int((group[n] - 1) * nout / ngroups) + 1
      print lines[n] > out[part]
    }
  }' "${in}" "$@"
