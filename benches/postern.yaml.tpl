# Rendered by ../shared/bench/peers.sh (string.Template): $RELAY_PORT, $RELAY_TLS_PORT,
# $SINK_PORT, $BENCH_CERT, $BENCH_KEY, $BENCH_WORKDIR. The bench user is bench/bench-secret.
hostname: relay.bench.example
listeners:
  - name: plain
    address: "127.0.0.1:$RELAY_PORT"
    tls: none
    auth: none
    allow_networks: [127.0.0.0/8]
  - name: submission
    address: "127.0.0.1:$RELAY_TLS_PORT"
    tls: starttls
    auth: required
tls:
  certificate: $BENCH_CERT
  private_key: $BENCH_KEY
users:
  - username: bench
    password_hash: "$$argon2id$$v=19$$m=19456,t=2,p=1$$atLTOJJaZb74U/zQ+fUk3A$$WuPiCDpGgjnlU18+OLG4FmfPHKJLIMjDKg1CxGuyWs0"
    senders: ["*"]
limits:
  max_connections: 20000
  max_recipients: 100
# One per-IP and one per-user rule, far above what the benchmark sends: they cost a bucket
# check per MAIL and per RCPT without ever refusing.
rate_limits:
  - {per: ip, messages: 100000000, interval: 1h}
  - {per: user, messages: 100000000, interval: 1h}
queue:
  directory: $BENCH_WORKDIR/spool
  min_backoff: 1s
  max_backoff: 10s
upstreams:
  - name: sink
    address: "127.0.0.1:$SINK_PORT"
    tls: none
    max_connections: 20
# Metrics on, as in production (an ephemeral port: nothing scrapes it during the run, but
# every counter, gauge and histogram is kept).
http:
  address: "127.0.0.1:0"
log:
  format: json
  level: warn
