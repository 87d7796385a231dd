#!/usr/bin/env bash
# Fuzz Pilot's HTTP API with schemathesis, generated from GET /api/openapi.json.
#
# Two passes against a token-mode server (the production mode; a JWT for fuzz-user
# is minted here):
#   1. conformance: every schemathesis check (--checks all): no 5xx, responses as
#      documented, schema-valid requests accepted, schema-violating ones refused,
#      auth enforced, methods as advertised. Fails on ANY failed check.
#   2. hostile: tests/fuzz/hooks.py puts NUL, lone surrogates, zoneinfo directories,
#      overflowing timestamps and 110-deep JSON where the schema allows any string
#      (so requests the document calls valid are refused, on purpose): only
#      not_a_server_error is checked there.
# One schemathesis worker: with two, hypothesis parses lambda sources (ast.parse) from two
# threads at once, which CPython 3.11 can fail with "AST constructor recursion depth mismatch".
# Bounded: FUZZ_MAX_EXAMPLES test cases per operation (default 25), FUZZ_MAX_TIME
# seconds for the conformance pass (default 110) and FUZZ_HOSTILE_TIME for the
# hostile one (default 40).
#
# Isolation: the server and schemathesis run in a network namespace of their own
# with only a loopback interface (`unshare --net`; as root, or through a user
# namespace otherwise), so no generated webhook URL or base_url host can be
# reached, whatever the SSRF guard allows. tests/fuzz/netns_lo_up.py brings lo up
# and refuses to go on if any other interface exists or a public address is
# reachable. PostgreSQL is reached over its Unix socket (FUZZ_PGHOST, default
# /var/run/postgresql; FUZZ_PGPORT, default 5432), in a database made for this
# run and dropped after it.
#
# Usage: tests/fuzz/run_fuzz.sh            (from anywhere; uses .venv/bin/python unless PYTHON is set)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
SCHEMATHESIS=${SCHEMATHESIS:-$(dirname "$PYTHON")/schemathesis}

if [[ "${PILOT_FUZZ_IN_NETNS:-}" != 1 ]]; then
  userns=()
  [[ $(id -u) == 0 ]] || userns=(--map-root-user)
  exec unshare --net "${userns[@]}" env PILOT_FUZZ_IN_NETNS=1 "$0" "$@"
fi

"$PYTHON" tests/fuzz/netns_lo_up.py

PGHOST_DIR=${FUZZ_PGHOST:-/var/run/postgresql}
PGPORT_NUM=${FUZZ_PGPORT:-5432}
DB="pilot_fuzz_$$_$RANDOM"
ADMIN_DSN="postgresql://postgres@/postgres?host=$PGHOST_DIR&port=$PGPORT_NUM"
WORK=$(mktemp -d /tmp/pilot-fuzz.XXXXXX)
PORT=5099
MAX_EXAMPLES=${FUZZ_MAX_EXAMPLES:-25}
MAX_TIME=${FUZZ_MAX_TIME:-110}
HOSTILE_TIME=${FUZZ_HOSTILE_TIME:-40}
JWT_SECRET_VALUE=$("$PYTHON" -c 'import secrets; print(secrets.token_hex(32))')
TOKEN=$("$PYTHON" -c 'import sys, time, jwt; print(jwt.encode({"sub": "fuzz-user", "exp": int(time.time()) + 3600}, sys.argv[1], algorithm="HS256"))' "$JWT_SECRET_VALUE")
SERVER_PID=

sql() { "$PYTHON" -c 'import sys, psycopg2; c = psycopg2.connect(sys.argv[1]); c.autocommit = True; c.cursor().execute(sys.argv[2]); c.close()' "$ADMIN_DSN" "$1"; }

cleanup() {
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  sql "DROP DATABASE IF EXISTS $DB WITH (FORCE)" || true
  if [[ -n "${FUZZ_KEEP:-}" ]]; then echo "fuzz: kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

sql "CREATE DATABASE $DB"

# A token-mode server as the README starts it (python app.py migrates the new database).
env -u PILOT_ENV -u JWKS_URL -u OUTBOUND_ALLOWLIST -u ALLOWED_HOSTS -u JWT_AUDIENCE -u JWT_ISSUER \
  AUTH_MODE=token JWT_SECRET="$JWT_SECRET_VALUE" DATABASE_URL="postgresql://postgres@/$DB?host=$PGHOST_DIR&port=$PGPORT_NUM" \
  PILOT_DATA_DIR="$WORK/data" FLASK_PORT=$PORT SCHEDULER_ENABLED=false DB_POOL_SIZE=4 RUN_WORKERS=4 \
  LOG_LEVEL=WARNING "$PYTHON" app.py >"$WORK/server.log" 2>&1 &
SERVER_PID=$!

BASE="http://127.0.0.1:$PORT"
healthy=
for _ in $(seq 1 300); do
  if "$PYTHON" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$BASE/api/health" \
    2>/dev/null; then healthy=1; break; fi
  kill -0 "$SERVER_PID" 2>/dev/null || break
  sleep 0.1
done
if [[ -z "$healthy" ]]; then
  tail -50 "$WORK/server.log" >&2
  echo "fuzz: the server did not become healthy" >&2
  exit 1
fi

fuzz() {  # fuzz NAME MAX_TIME CHECKS HOSTILE: one schemathesis pass, its report in $WORK/NAME.*
  # Run from the scratch directory: schemathesis keeps a .schemathesis/ cache in its working directory.
  (cd "$WORK" && PYTHONPATH="$ROOT/tests/fuzz" SCHEMATHESIS_HOOKS=hooks FUZZ_SEED="${FUZZ_SEED:-7}" FUZZ_HOSTILE="$4" \
    PILOT_FUZZ_TOKEN="$TOKEN" \
    "$SCHEMATHESIS" --config-file "$ROOT/tests/fuzz/schemathesis.toml" run "$BASE/api/openapi.json" \
    --checks "$3" --max-examples "$MAX_EXAMPLES" --max-time "$2" --seed "${FUZZ_SEED:-7}" \
    --generation-allow-x00 false \
    --workers 1 --request-timeout 20 --continue-on-failure --no-shrink --suppress-health-check all \
    --report ndjson --report-ndjson-path "$WORK/$1.ndjson" --warnings off >"$WORK/$1.txt" 2>&1)
}

set +e
fuzz conformance "$MAX_TIME" all 0
conformance_status=$?
fuzz hostile "$HOSTILE_TIME" not_a_server_error 1
hostile_status=$?
set -e

status=0
for pass in conformance hostile; do
  echo "== $pass"
  sed -n '/^Failures:/,/^$/p; /^Errors:/,/^$/p; /^Test cases:/,/^$/p' "$WORK/$pass.txt"
  strict=1
  [[ $pass == hostile ]] && strict=0
  pass_status=$conformance_status
  [[ $pass == hostile ]] && pass_status=$hostile_status
  # A failed pass shows its cases (with the curl to reproduce them): CI keeps no scratch directory.
  if [[ -n "${FUZZ_VERBOSE:-}" || $pass_status -ne 0 ]]; then
    sed -n '/^=* FAILURES =*$/,/^=* SUMMARY =*$/p' "$WORK/$pass.txt"
  fi
  "$PYTHON" tests/fuzz/summarize.py "$WORK/$pass.ndjson" "$WORK/server.log" "$pass_status" "$strict" || status=1
done
exit $status
