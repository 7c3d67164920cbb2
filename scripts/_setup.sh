# Shared set-up for scripts/test and scripts/demo: PostgreSQL up, .venv with the project installed.
# Sourced, not run. Idempotent and quiet when there is nothing to do.

: "${NURSERY_WORKER_TEST_DSN:=postgresql://postgres@127.0.0.1:5432/test}"
export NURSERY_WORKER_TEST_DSN

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
if command -v pg_isready >/dev/null && ! pg_up; then
  if command -v pg_ctlcluster >/dev/null; then
    echo "PostgreSQL is down: starting it" >&2
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start
    for _ in $(seq 1 30); do pg_up && break; sleep 1; done
  fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" >&2 || true
  .venv/bin/python -m pip install -q -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" >&2 || true
  .venv/bin/python -c "import nursery_worker, trio, pytest, hypothesis" || { echo "install failed" >&2; exit 1; }
  rm -f .venv/.installed-*
  touch "$stamp"
fi
