#!/bin/sh
# The container's entry point.
#
#   (no argument)  serve with $MYELIN_DATA/homeserver.yaml, generating it on first start
#   generate       only write homeserver.yaml and the signing key, then exit
#   anything else  run `myelin <args>` (e.g. `register-user --user root --password ... --admin`)
#
# On first start the config is generated for $MYELIN_SERVER_NAME (default localhost), its
# listener bound to $MYELIN_BIND_ADDRESS (default 0.0.0.0, so the published port reaches it).
set -eu
data="${MYELIN_DATA:-/data}"
config="$data/homeserver.yaml"

generate() {
    if [ ! -f "$config" ]; then
        myelin -c "$config" generate-config \
            --server-name "${MYELIN_SERVER_NAME:-localhost}" \
            --bind-address "${MYELIN_BIND_ADDRESS:-0.0.0.0}"
    fi
}

case "${1:-serve}" in
    generate)
        generate
        ;;
    serve)
        generate
        exec myelin -c "$config" serve
        ;;
    *)
        exec myelin -c "$config" "$@"
        ;;
esac
