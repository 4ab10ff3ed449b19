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
# The integration tests of the whole workspace (tests/tests and two small
# server ones): selected with --workspace, the packages resolve the same
# features as above, so nothing is compiled again (-p anxin-tests cost a
# rebuild of the test binaries and of the servers' binaries, ~2 minutes).
ANXIN_TEST_STORE=postgres cargo test --workspace --test '*' "$@"
