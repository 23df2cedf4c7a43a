# Sourced by bench scripts (replay.sh, peers-local.sh, fresh-mount.sh): free_port, and
# start_servers DIR, which starts s3rver (bucket bkt) and redis-server on free loopback ports with
# their data in DIR, and sets S3 and R (their pids), port and rport. stop_servers stops them by pid.
# The caller sets repo (the checkout) and removes DIR.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
start_servers() {
  mkdir -p "$1/s3"
  port=$(free_port); rport=$(free_port)
  node "$repo/scripts/s3rver/node_modules/s3rver/bin/s3rver.js" -d "$1/s3" -a 127.0.0.1 -p "$port" -s --configure-bucket bkt >/dev/null 2>&1 &
  S3=$!
  redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --dir "$1" >/dev/null 2>&1 &
  R=$!
}
stop_servers() {
  kill "${S3:-}" "${R:-}" 2>/dev/null || true
  wait "${S3:-}" "${R:-}" 2>/dev/null || true
}
