#!/usr/bin/env bash
# The main job on an embedded default: install what is missing, build, and run
# `thinstack demo` (a stack on sparse files in a temporary folder).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
exec "${BUILD_DIR:-build}/thinstack" demo "$@"
