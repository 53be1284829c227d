#!/bin/sh
# The compose stack's one-shot init-db service: the SQL Server set-up of docs/database-setup.md, then
# `fos init-db` as the owner login, then the agent login's grants. Safe to run again (every step is idempotent).
# Environment: MSSQL_SA_PASSWORD, FOS_OWNER_PASSWORD, FOS_AGENT_PASSWORD; FOS_CONFIG (default
# /etc/fos/fos.toml), whose DSN reads the login from ${FOS_DB_USER} and its password from ${FOS_DB_PASSWORD}.
set -eu
setup=/opt/fos/share/mssql_setup.py
config=${FOS_CONFIG:-/etc/fos/fos.toml}
driver=${FOS_MSSQL_DRIVER:-freetds}

/opt/fos/bin/python "$setup" logins --driver "$driver"
FOS_DB_USER=fos_owner FOS_DB_PASSWORD="$FOS_OWNER_PASSWORD" /opt/fos/bin/fos init-db --config "$config"
/opt/fos/bin/python "$setup" grants --driver "$driver"
