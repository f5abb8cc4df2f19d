#!/usr/bin/env bash
# Makes sure PostgreSQL (127.0.0.1:5432) answers and redis-server is installed before the tests run:
# starts PostgreSQL when installed but stopped; says clearly what is missing. The tests start a Redis of
# their own (tests/conftest.py), so no running Redis is needed. Under CI=true a missing service fails
# the run instead of letting tests skip.
set -u
fail() {
  echo "ensure-services: $*" >&2
  if [ "${CI:-}" = "true" ]; then exit 1; fi
  echo "ensure-services: tests that need it will fail." >&2
  exit 0
}

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null || (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }

if [ -z "${AGENTMESH_TEST_DATABASE_URL:-}" ] && ! pg_up; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    echo "ensure-services: starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    for _ in $(seq 1 30); do pg_up && break; sleep 1; done
  fi
  pg_up || fail "PostgreSQL is not running on 127.0.0.1:5432 and could not be started (install: apt-get install postgresql)"
fi

if [ -z "${AGENTMESH_TEST_REDIS_URL:-}" ] && ! command -v redis-server >/dev/null 2>&1; then
  fail "redis-server is not installed; the tests start their own (install: apt-get install redis-server)"
fi
echo "ensure-services: PostgreSQL is up and redis-server is installed"

# The browser test drives Debian's Chromium through Playwright (never a downloaded browser).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "ensure-services: installing Debian's chromium for the browser test"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || true
  fi
  command -v chromium >/dev/null 2>&1 || fail "chromium is not installed (apt-get install chromium); the browser test needs it"
fi
echo "ensure-services: chromium is $(command -v chromium)"
