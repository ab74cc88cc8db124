#!/usr/bin/env bash
# Run one command inside the concerto_ros environment (see scripts/activate.sh).
set -e
# shellcheck disable=SC1091
source "$(cd "$(dirname "$0")" && pwd)/activate.sh"
exec "$@"
