# Sourced by scripts: installs PostgreSQL if missing, starts a throwaway
# cluster as the `postgres` user (never as root) on 127.0.0.1 and a free
# port in a temporary directory, exports READBACK_TEST_POSTGRES_URL, and
# removes the cluster when the calling script exits.

pg_start() {
  local pg_bin pg_dir pg_port
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$pg_bin" ] || [ ! -x "$pg_bin/initdb" ]; then
    apt_install postgresql
    pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  fi
  pg_dir=$(mktemp -d /tmp/readback-pg.XXXXXX)
  chmod 755 "$pg_dir"
  if [ "$(id -u)" = 0 ]; then
    chown postgres:postgres "$pg_dir"
    pg_run() { runuser -u postgres -- "$@"; }
  else
    pg_run() { "$@"; }
  fi
  pg_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  pg_run "$pg_bin/initdb" -D "$pg_dir/data" -U postgres -A trust >/dev/null
  PG_STOP="pg_run '$pg_bin/pg_ctl' -D '$pg_dir/data' -m immediate stop >/dev/null 2>&1 || true; rm -rf '$pg_dir'"
  trap 'eval "$PG_STOP"' EXIT
  # fsync off: the tests crash readbackd, never the machine.
  pg_run "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/postgres.log" -w \
    -o "-h 127.0.0.1 -p $pg_port -k $pg_dir -c fsync=off -c max_connections=300" start >/dev/null
  export READBACK_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$pg_port/postgres"
  echo "PostgreSQL $(basename "$(dirname "$pg_bin")") on 127.0.0.1:$pg_port (data in $pg_dir)"
}

apt_updated=
apt_install() {
  local sudo=
  [ "$(id -u)" = 0 ] || sudo=sudo
  if [ -z "$apt_updated" ]; then $sudo apt-get update -qq; apt_updated=1; fi
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
