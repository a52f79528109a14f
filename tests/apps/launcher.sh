#!/bin/sh
# Stands in for a remote launcher (ssh host, docker exec, ...): runs its argv.
exec "$@"
