#!/usr/bin/env bash
# The bash completion, run by bash as readline would: COMP_WORDS and
# COMP_CWORD set (split at ':' and '=' as bash splits them), the function
# called, COMPREPLY checked. Commands, subcommands, options per command,
# layer types, the layer names of the config typed earlier, and files.
source "$TS_SOURCE_DIR/tests/common/requires.sh"
requires python3
cd "$TMP"
# The completion finds the program by the name typed: put this build's first.
mkdir bin && ln -s "$(realpath "$THINSTACK")" bin/thinstack
export PATH="$TMP/bin:$PATH"
source "$TS_SOURCE_DIR/tools/completion/thinstack"
complete -p thinstack | grep -q -- "-F _thinstack" || fail "no completion registered for thinstack"

cat >stack.json <<'J'
{ "version": 1,
  "layers": {
    "meta": { "type": "file", "path": "meta.img", "size": "4M", "create": true },
    "data": { "type": "file", "path": "data.img", "size": "64M", "create": true },
    "pool": { "type": "thin-pool", "metadata": "meta", "data": "data", "create": true },
    "vm0": { "type": "thin", "pool": "pool", "id": 0, "size": "16M", "create": true }
  },
  "exports": ["vm0"] }
J
touch other.json disk.raw

comp() { # LINE: complete the last word of LINE (split by whitespace, ':', '=')
  local line=$1
  read -ra COMP_WORDS <<<"$(sed 's/\([:=]\)/ \1 /g' <<<"$line")"
  [[ $line == *" " ]] && COMP_WORDS+=("")
  [[ $line == *[:=] ]] && COMP_WORDS+=("")
  # "x:" is the words "x" ":" and an empty one only when nothing follows;
  # bash's own word after ':' is ":" itself while it is the last.
  if [[ $line == *[:=] ]]; then unset 'COMP_WORDS[${#COMP_WORDS[@]}-1]'; fi
  COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
  COMP_LINE=$line COMP_POINT=${#line}
  COMPREPLY=()
  _thinstack thinstack "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]:-}"
  printf '%s\n' "${COMPREPLY[@]}" | sort
}
has() { # LINE WORD...: every WORD is offered
  local line=$1 out; shift
  out=$(comp "$line")
  for w in "$@"; do
    grep -qxF -- "$w" <<<"$out" || fail "\"$line\": $w not offered (got: $(tr '\n' ' ' <<<"$out"))"
  done
}
only() { # LINE WORD...: exactly these are offered
  local line=$1 out; shift
  out=$(comp "$line")
  [ "$out" = "$(printf '%s\n' "$@" | sort)" ] ||
    fail "\"$line\": offered $(tr '\n' ' ' <<<"$out"), not $*"
}

# Commands: all of `thinstack --help`, and by prefix.
for c in $(thinstack --help | sed -n '/^commands:/,$p' | awk 'NR > 1 { print $1 }'); do has "thinstack " "$c"; done
only "thinstack dum" dump dump-config
only "thinstack -U rea" read
has "thinstack --v" --version
# Subcommands.
only "thinstack pool " create extend extend-metadata status
has "thinstack thin " create snap delete resize list
has "thinstack bench " provision io crypt
# Options of each command, from its usage.
has "thinstack read stack.json vm0 0 4096 -" -o --help
has "thinstack thin create stack.json new --" --size --pool --id --export --json
only "thinstack zero stack.json vm0 0 4K --may" --may-unmap
has "thinstack bench io --" --json --stack --workers
# Layer types, from `thinstack types`.
only "thinstack schema --layer thin" thin thin-pool
has "thinstack schema --layer " file linear crypt memory
# Files where a file goes.
has "thinstack info " stack.json other.json disk.raw
only "thinstack validate st" stack.json
only "thinstack check di" disk.raw
# Layer names of the config given earlier, where a layer goes.
only "thinstack read stack.json " data meta pool vm0
only "thinstack map stack.json v" vm0
only "thinstack -U status stack.json p" pool
only "thinstack thin snap stack.json " data meta pool vm0
only "thinstack thin snap stack.json vm0 " # the new name is the user's
only "thinstack pool status stack.json " pool
only "thinstack thin list stack.json --pool " pool
only "thinstack dm-table stack.json --device m" meta=
only "thinstack dm-table stack.json --device meta=di" disk.raw
# CONFIG:LAYER of copy, after the colon as bash splits it.
only "thinstack copy stack.json:" :data :meta :pool :vm0
only "thinstack copy stack.json:v" vm0
has "thinstack copy stack.json:vm0 d" disk.raw
# Not past the last positional.
only "thinstack flush stack.json vm0 " 
echo ok
