#!/usr/bin/env bash
# The README's test command: the whole suite on the embedded sled store,
# then the end-to-end suite (tests/tests, the real binaries) again with
# every server on PostgreSQL — one suite, two engines (ANXIN_TEST_STORE).
# PostgreSQL is found at ANXIN_TEST_PG (default
# postgres://postgres@127.0.0.1:5432/postgres); tests make and drop their
# own scratch databases there.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== the suite on sled =="
cargo test --workspace "$@"
echo "== the end-to-end suite on PostgreSQL =="
ANXIN_TEST_STORE=postgres cargo test -p anxin-tests "$@"
