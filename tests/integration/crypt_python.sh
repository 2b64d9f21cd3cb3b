#!/bin/bash
# The crypt layer against Python's cryptography (an XTS we did not write):
# both directions, several sector sizes, key sizes and IV settings.
. "$TS_SOURCE_DIR/tests/common/requires.sh"
requires python3
python3 -c 'import cryptography.hazmat.primitives.ciphers' 2>/dev/null ||
  skip_or_fail "needs python3-cryptography"
python3 "$TS_SOURCE_DIR/tests/crypt/xts_oracle.py" "$THINSTACK" "$TMP"
