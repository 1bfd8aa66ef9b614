# shellcheck shell=bash
# Kaldi-style option parsing, sourced by a script after its option block:
#
#   # <options>
#   stage=1        # first stage to run
#   tag=           # experiment name
#   # </options>
#   help_message="Usage: $0 [options]"   # optional text printed above the options
#   . utils/parse_options.sh
#
# `--name value`, `--name=value` and `--na-me value` set the variable `name`. Only names declared
# in the calling script's <options> block are accepted: anything else is an error that lists the
# valid options. An option whose default is true/false only takes true/false. `--help` prints
# `help_message` (default: the comment block at the top of the script) and one line per option
# generated from the block (name, current value, comment).
# Arguments after the options are left in "$@" (this file shifts the caller's arguments).

_po_script=${BASH_SOURCE[1]:-$0}

# Lines `name=default  # comment` between the markers of the calling script.
_po_lines() {
  sed -n '/^# <options>/,/^# <\/options>/p' "${_po_script}" | grep -E '^[A-Za-z_][A-Za-z0-9_]*='
}

_po_names=" $(_po_lines | sed 's/=.*//' | tr '\n' ' ')"
if [[ ${_po_names} == " " ]]; then
  echo "parse_options.sh: ${_po_script} has no '# <options>' ... '# </options>' block" >&2
  exit 1
fi

_po_help() {
  if [[ -n ${help_message:-} ]]; then
    printf '%s\n\n' "${help_message}"
  else  # the comment block at the top of the script
    awk 'NR == 1 && /^#!/ { next } /^# shellcheck/ { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "${_po_script}"
    echo
  fi
  echo "Options (--name value; the current value is shown in brackets):"
  local line name comment
  while IFS= read -r line; do
    name=${line%%=*}
    comment=""
    if [[ ${line} == *"# "* ]]; then comment=${line#*# }; fi
    printf '  --%-22s %s [%s]\n' "${name}" "${comment}" "${!name-}"
  done < <(_po_lines)
}

while (( $# > 0 )); do
  case $1 in
    --help | -h)
      _po_help
      exit 0 ;;
    --*=*)
      _po_name=${1%%=*}
      _po_value=${1#*=}
      shift ;;
    --*)
      _po_name=$1
      if (( $# < 2 )); then
        echo "${_po_script##*/}: option $1 needs a value (see --help)" >&2
        exit 1
      fi
      _po_value=$2
      shift 2 ;;
    *)
      break ;;
  esac
  _po_name=${_po_name#--}
  _po_name=${_po_name//-/_}
  if [[ ${_po_names} != *" ${_po_name} "* ]]; then
    echo "${_po_script##*/}: unknown option --${_po_name}; valid options:${_po_names}(see --help)" >&2
    exit 1
  fi
  case ${!_po_name-} in
    true | false)
      if [[ ${_po_value} != true && ${_po_value} != false ]]; then
        echo "${_po_script##*/}: option --${_po_name} takes true or false, got '${_po_value}'" >&2
        exit 1
      fi ;;
  esac
  printf -v "${_po_name}" '%s' "${_po_value}"
done
unset _po_name _po_value _po_names _po_script
unset -f _po_lines _po_help
