# Helpers for the integration tests of the FUSE export and the nbdkit plugin.
# Source after requires.sh. Cleanups registered here run newest first, so a
# file system is unmounted before its loop device is detached and the loop
# device before the FUSE mount under it goes away.

FUSE_BIN=${TS_BUILD_DIR:-build}/examples/fuse-export/thinstack-fuse
NBD_PLUGIN=${TS_BUILD_DIR:-build}/examples/nbdkit-plugin/nbdkit-thinstack-plugin.so

# Run "$1" (a command line) at exit, before everything registered earlier.
on_exit() { cleanup_fns=("$1" "${cleanup_fns[@]}"); }

requires_fuse() {
  requires_root
  requires fusermount3 mountpoint
  [ -x "$FUSE_BIN" ] || skip_or_fail "thinstack-fuse was not built (needs libfuse3-dev)"
  [ -c /dev/fuse ] || skip_or_fail "needs /dev/fuse"
}

requires_nbdkit() {
  requires nbdkit
  [ -f "$NBD_PLUGIN" ] || skip_or_fail "the nbdkit plugin was not built (needs nbdkit-plugin-dev)"
}

# Wait up to 30 s for a condition (a command line) to hold.
wait_for() {
  local i
  for i in $(seq 300); do
    eval "$1" && return 0
    sleep 0.1
  done
  fail "timed out waiting for: $1"
}

# The stack every export test uses: a device "vm0" of SIZE on sparse files in
# DIR, plus extra layer definitions (JSON members) and exports. Echoes the
# path of the configuration. The device is a thin volume of a pool whose data
# lives in DIR/data.img (64K blocks) when the library has the thin layers,
# else a linear mapping onto DIR/data.img: either way the space the device
# takes shows up in data.img.
#   write_stack DIR SIZE [EXTRA_LAYERS_JSON [EXTRA_EXPORTS_JSON]]
write_stack() {
  local dir=$1 size=$2 extra=${3:-} exports=${4:-}
  local bytes layers
  bytes=$(numfmt --from=iec "$size")
  # Read all of it: grep -q exiting early would SIGPIPE the writer (pipefail).
  if "$THINSTACK" types | grep "^thin-pool:" >/dev/null; then
    echo "stack: thin volume vm0 ($size) in a pool on $dir/meta.img + data.img" >&2
    layers='"meta": { "type": "file", "path": "meta.img", "size": "16M", "create": true },
    "data": { "type": "file", "path": "data.img", "size": '$((bytes + 8 * 1048576))', "create": true },
    "pool": { "type": "thin-pool", "metadata": "meta", "data": "data",
              "block_size": "64K", "create": true },
    "vm0":  { "type": "thin", "pool": "pool", "id": 0, "size": '$bytes', "create": true }'
  else
    echo "stack: linear vm0 ($size) on $dir/data.img (no thin layers in this build)" >&2
    layers='"data": { "type": "file", "path": "data.img", "size": '$((bytes + 8 * 1048576))', "create": true },
    "vm0":  { "type": "linear",
              "segments": [ { "child": "data", "offset": "8M", "length": '$bytes' } ] }'
  fi
  cat >"$dir/stack.json" <<EOF
{ "version": 1,
  "layers": {
    $layers${extra:+,
    $extra}
  },
  "exports": ["vm0"${exports:+, $exports}] }
EOF
  echo "$dir/stack.json"
}

# Allocated bytes of a file (st_blocks * 512).
allocated() { echo $(( $(stat -c %b "$1") * 512 )); }

# Mount CONFIG on MNT with thinstack-fuse in the foreground of a background
# job; unmounted at exit. Extra arguments go to thinstack-fuse.
FUSE_PIDS=()
fuse_mount() {
  local config=$1 mnt=$2
  shift 2
  mkdir -p "$mnt"
  "$FUSE_BIN" "$config" "$mnt" -f "$@" &
  local pid=$!
  FUSE_PIDS+=("$mnt:$pid")
  on_exit "fuse_umount_quiet '$mnt' $pid"
  wait_for "mountpoint -q '$mnt' || ! kill -0 $pid 2>/dev/null"
  mountpoint -q "$mnt" || fail "thinstack-fuse did not mount $config on $mnt"
}

fuse_umount_quiet() {
  if mountpoint -q "$1"; then fusermount3 -u "$1" || umount -l "$1"; fi
  if kill -0 "$2" 2>/dev/null; then wait "$2" 2>/dev/null || true; fi
}

# Unmount MNT and wait for thinstack-fuse to flush and close the stack; fail
# if it exits with an error.
fuse_umount() {
  local mnt=$1 pid="" e
  for e in "${FUSE_PIDS[@]}"; do [ "${e%:*}" = "$mnt" ] && pid=${e##*:}; done
  [ -n "$pid" ] || fail "$mnt was not mounted by fuse_mount"
  fusermount3 -u "$mnt"
  local st=0
  wait "$pid" || st=$?
  [ "$st" = 0 ] || fail "thinstack-fuse exited with status $st after unmounting $mnt"
}

# Start nbdkit with the plugin on the unix socket $TMP/nbd.sock; stopped at
# exit. Arguments go to the plugin (config=..., export=...).
NBD_SOCK=$TMP/nbd.sock
nbd_start() {
  local env=()
  # A plugin built with a sanitizer needs its runtime loaded first.
  local asan
  asan=$(ldd "$NBD_PLUGIN" | awk '/lib(asan|tsan|ubsan)\.so/ {print $3; exit}')
  [ -n "$asan" ] && env=(env "LD_PRELOAD=$asan" "ASAN_OPTIONS=detect_leaks=0")
  rm -f "$NBD_SOCK" "$TMP/nbd.pid"
  NBD_STARTED=1
  on_exit "nbd_stop"
  "${env[@]}" nbdkit -U "$NBD_SOCK" -P "$TMP/nbd.pid" "$NBD_PLUGIN" "$@" \
    || fail "nbdkit did not start"
  # The served process writes the pid file after the parent has returned.
  wait_for "[ -s '$TMP/nbd.pid' ] && [ -S '$NBD_SOCK' ]"
}

# Stop nbdkit and wait until it has closed (and so flushed) the stack. The
# served process may write its pid file only after nbdkit returned: give it
# time, so a test failing early still stops the server it started.
nbd_stop() {
  [ -n "${NBD_STARTED:-}" ] || return 0
  local i pid
  for i in $(seq 100); do [ -s "$TMP/nbd.pid" ] && break; sleep 0.1; done
  [ -s "$TMP/nbd.pid" ] || return 0
  pid=$(cat "$TMP/nbd.pid")
  kill "$pid" 2>/dev/null || true
  wait_for "! kill -0 $pid 2>/dev/null"
  rm -f "$TMP/nbd.pid"
  NBD_STARTED=
}

nbd_uri() { echo "nbd+unix:///$1?socket=$NBD_SOCK"; }

# Normalise an allocation map to "offset length data zero" lines, merging
# neighbours of the same kind. Input formats: thinstack (map --json),
# qemu (qemu-img map --output=json), nbdinfo (nbdinfo --map --json).
norm_map() { python3 -c "$NORM_MAP_PY" "$1"; }
NORM_MAP_PY='
import json, sys
kind = sys.argv[1]
rows = []
for e in json.load(sys.stdin):
    if kind == "thinstack":
        rows.append([e["offset"], e["length"], not e["hole"], e["zero"]])
    elif kind == "qemu":
        rows.append([e["start"], e["length"], e["data"], e["zero"]])
    else:
        t = e["type"]
        rows.append([e["offset"], e["length"], not (t & 1), bool(t & 2)])
out = []
for r in rows:
    if out and out[-1][2:] == r[2:] and out[-1][0] + out[-1][1] == r[0]:
        out[-1][1] += r[1]
    else:
        out.append(r)
for r in out:
    print(r[0], r[1], "data" if r[2] else "hole", "zero" if r[3] else "-")
'

# True when a normalised map (file) has one extent of KIND ("hole zero",
# "data zero", "data -") covering [OFF, OFF+LEN).
map_has() {
  awk -v o="$2" -v l="$3" -v k="$4" \
    '$1 <= o && $1 + $2 >= o + l && ($3 " " $4) == k { found = 1 } END { exit !found }' "$1"
}
