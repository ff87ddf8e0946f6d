# A stand-in for the upstream postgres image where no registry answers: Debian's PostgreSQL 15
# behind the part of that image's contract the compose file uses (POSTGRES_USER, POSTGRES_DB,
# POSTGRES_PASSWORD_FILE, a cluster made in $PGDATA on first start, pg_isready).
ARG BASE
FROM $BASE
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/*
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]
