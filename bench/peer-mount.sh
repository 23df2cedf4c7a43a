#!/usr/bin/env bash
# Mounts, unmounts and resets the peers that bench/compare.sh measures beside lmfs, over the same
# bytes uploaded as plain objects. Called by compare.sh and by `lmfs bench --cold-cmd/--warm-cmd`.
#
# usage: bench/peer-mount.sh rclone|s3fs mount|umount|cold|warm
#   cold: unmount, empty the peer's cache directory, mount again (nothing cached anywhere)
#   warm: unmount, keep the cache directory, mount again (the peer's disk cache only)
# environment (set by compare.sh): PEER_WORK (work dir), PEER_ENDPOINT (http://127.0.0.1:PORT),
#   PEER_BUCKET, PEER_PREFIX; S3 keys in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
set -euo pipefail
peer=$1; action=$2
: "${PEER_WORK:?}" "${PEER_ENDPOINT:?}" "${PEER_BUCKET:?}" "${PEER_PREFIX:?}"
mnt=$PEER_WORK/mnt/$peer
cache=$PEER_WORK/cache-$peer
pidfile=$PEER_WORK/$peer.pid
log=$PEER_WORK/$peer.log

mounted() { grep -q " $mnt fuse" /proc/mounts; }

do_mount() {
  mkdir -p "$mnt" "$cache"
  case $peer in
    rclone)
      # rclone reads its remote from the environment: no config file, keys not on the command line.
      # (An AWS_CA_BUNDLE in the environment makes rclone 1.60 refuse its own HTTP transport.)
      RCLONE_CONFIG_PEER_TYPE=s3 RCLONE_CONFIG_PEER_PROVIDER=Other RCLONE_CONFIG_PEER_ENDPOINT=$PEER_ENDPOINT \
      RCLONE_CONFIG_PEER_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID RCLONE_CONFIG_PEER_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY \
      RCLONE_CONFIG_PEER_FORCE_PATH_STYLE=true AWS_CA_BUNDLE= \
        setsid rclone mount "peer:$PEER_BUCKET/$PEER_PREFIX" "$mnt" --read-only --vfs-cache-mode full \
          --cache-dir "$cache" --vfs-cache-max-size 100G --dir-cache-time 1h --log-file "$log" </dev/null >/dev/null 2>&1 &
      echo $! > "$pidfile" ;;
    s3fs)
      printf '%s:%s\n' "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" > "$PEER_WORK/s3fs.passwd"
      chmod 600 "$PEER_WORK/s3fs.passwd"
      setsid s3fs "$PEER_BUCKET:/$PEER_PREFIX" "$mnt" -f -o ro -o url="$PEER_ENDPOINT" -o use_path_request_style \
        -o passwd_file="$PEER_WORK/s3fs.passwd" -o use_cache="$cache" </dev/null >>"$log" 2>&1 &
      echo $! > "$pidfile" ;;
    *) echo "peer-mount.sh: unknown peer '$peer' (rclone or s3fs)" >&2; exit 2 ;;
  esac
  for _ in $(seq 200); do mounted && ls "$mnt" >/dev/null 2>&1 && return 0; sleep 0.05; done
  echo "peer-mount.sh: $peer did not mount at $mnt; see $log" >&2; exit 1
}

do_umount() {
  if mounted; then fusermount3 -u "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true; fi
  if [ -f "$pidfile" ]; then
    pid=$(cat "$pidfile")
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill "$pid" 2>/dev/null || true
    rm -f "$pidfile"
  fi
}

case $action in
  mount) do_mount ;;
  umount) do_umount ;;
  cold) do_umount; rm -rf "$cache"; do_mount ;;
  warm) do_umount; do_mount ;;
  *) echo "peer-mount.sh: unknown action '$action' (mount, umount, cold, warm)" >&2; exit 2 ;;
esac
