#!/usr/bin/env bash
# Entrypoint of every container built from deployments/Dockerfile: refuse to start with a missing, empty
# or placeholder secret (issue 11), then run the command.
#
# Checked when the variable is set for the service (docker-compose.yml passes each service the ones it
# uses and `${VAR:?}` makes compose itself refuse unset or empty values):
#   PREFECT_SERVER_API_AUTH_STRING, PREFECT_API_AUTH_STRING   user:password of the Prefect API
#   POSTGRES_PASSWORD                                         the Prefect database's password
# A value (or the password part of user:password) that is a known placeholder such as `change-me` is
# refused, as is an auth string without `user:` or with a password shorter than 12 characters.
set -euo pipefail

PLACEHOLDERS=" change-me changeme change_me password secret prefect admin pretrain test example "

die() {
    echo "error: $1; set it in .env (see .env.example), e.g. with: openssl rand -hex 24" >&2
    exit 78  # EX_CONFIG
}

check_secret() {  # name value
    local name=$1 value=$2
    [ -n "$value" ] || die "$name is empty"
    case "$PLACEHOLDERS" in *" ${value,,} "*) die "$name is a placeholder value, not a secret" ;; esac
}

for name in PREFECT_SERVER_API_AUTH_STRING PREFECT_API_AUTH_STRING; do
    [ -n "${!name+set}" ] || continue
    value=${!name}
    check_secret "$name" "$value"
    case "$value" in
        ?*:?*) ;;
        *) die "$name must be user:password" ;;
    esac
    password=${value#*:}
    check_secret "$name (its password)" "$password"
    [ ${#password} -ge 12 ] || die "$name: use a password of at least 12 characters"
done
if [ -n "${POSTGRES_PASSWORD+set}" ]; then
    check_secret POSTGRES_PASSWORD "$POSTGRES_PASSWORD"
fi

exec "$@"
