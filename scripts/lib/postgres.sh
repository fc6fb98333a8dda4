# Sourced by scripts: installs PostgreSQL if missing, starts a throwaway
# cluster as the `postgres` user (never as root) on 127.0.0.1 and a free
# port in a temporary directory, exports READBACK_TEST_POSTGRES_URL, and
# removes the cluster when the calling script exits.
# The cluster also offers TLS with a certificate for 127.0.0.1 and
# localhost from a throwaway CA (READBACK_TEST_POSTGRES_CA), and listens on
# 127.0.0.2 too: a name the certificate does not cover, for the test that
# readback verifies the server's name.

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
  pg_tls_files "$pg_dir"
  PG_STOP="pg_run '$pg_bin/pg_ctl' -D '$pg_dir/data' -m immediate stop >/dev/null 2>&1 || true; rm -rf '$pg_dir'"
  trap 'eval "$PG_STOP"' EXIT
  # fsync off: the tests crash readbackd, never the machine.
  pg_run "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/postgres.log" -w \
    -o "-h 127.0.0.1,127.0.0.2 -p $pg_port -k $pg_dir -c fsync=off -c max_connections=300 \
        -c ssl=on -c ssl_cert_file=$pg_dir/server.crt -c ssl_key_file=$pg_dir/server.key" start >/dev/null
  export READBACK_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$pg_port/postgres"
  export READBACK_TEST_POSTGRES_CA="$pg_dir/ca.crt"
  echo "PostgreSQL $(basename "$(dirname "$pg_bin")") on 127.0.0.1:$pg_port (data in $pg_dir)"
}

# A CA and a server certificate for 127.0.0.1 and localhost, in $1.
pg_tls_files() {
  local dir=$1
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=readback-test-ca -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
    -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 2 -extfile <(printf 'subjectAltName=IP:127.0.0.1,DNS:localhost') -out "$dir/server.crt" 2>/dev/null
  chmod 600 "$dir/server.key"
  [ "$(id -u)" != 0 ] || chown postgres:postgres "$dir/server.key" "$dir/server.crt"
  chmod 644 "$dir/ca.crt"
}

apt_updated=
apt_install() {
  local sudo=
  [ "$(id -u)" = 0 ] || sudo=sudo
  if [ -z "$apt_updated" ]; then $sudo apt-get update -qq; apt_updated=1; fi
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
