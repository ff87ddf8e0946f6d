#!/bin/sh
# Makes the cluster on first start (the user, its password from POSTGRES_PASSWORD_FILE, the
# database), then runs PostgreSQL as the postgres user, listening on every interface with
# password (scram) authentication.
set -eu
AS_POSTGRES="setpriv --reuid=postgres --regid=postgres --init-groups"
mkdir -p "$PGDATA" /run/postgresql
chown -R postgres:postgres "$PGDATA" /run/postgresql
chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  password=$(mktemp)
  cat "$POSTGRES_PASSWORD_FILE" > "$password"
  chown postgres "$password"
  $AS_POSTGRES initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$password" \
    --auth-local=trust --auth-host=scram-sha-256
  rm -f "$password"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  $AS_POSTGRES pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start
  $AS_POSTGRES createdb -U "$POSTGRES_USER" "$POSTGRES_DB"
  $AS_POSTGRES pg_ctl -D "$PGDATA" -m fast -w stop
fi
exec $AS_POSTGRES postgres -D "$PGDATA" -c listen_addresses='*'
