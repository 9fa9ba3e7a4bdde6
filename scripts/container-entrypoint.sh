#!/bin/sh
# Container entrypoint: make the data volume writable by the relay user, then run the
# command as that user.
#
# Why not just `USER relay` in the Dockerfile: a fresh Fly.io volume (and any bind mount)
# is mounted root-owned, and Fly has no mount option for owner or mode
# (superfly/flyctl#632), so a non-root process could not create /data/relay.db on first
# boot. The official postgres image solves the same problem the same way: start as root,
# fix ownership of the data directory only, drop privileges with exec. Started with
# `--user`, this script changes nothing and simply runs the command.
set -eu

DATA_DIR=/data
APP_USER=relay

if [ "$(id -u)" = 0 ]; then
    if [ -d "$DATA_DIR" ]; then
        # Only files not already ours (a new volume, or a WAL file left by `relay events`
        # run as root over `ssh`); -xdev keeps us on the volume.
        find "$DATA_DIR" -xdev ! -user "$APP_USER" -exec chown "$APP_USER:$APP_USER" {} +
    fi
    # exec replaces this shell, so `relay serve` itself receives SIGTERM.
    exec setpriv --reuid="$APP_USER" --regid="$APP_USER" --init-groups --no-new-privs -- "$@"
fi
exec "$@"
