-- connscope's ClickHouse schema, version 1. Statements are separated by
-- lines holding only ";". Every table is partitioned by day (toYYYYMMDD of
-- its `day` column) so that retention drops whole day partitions
-- (ALTER TABLE ... DROP PARTITION), which every ClickHouse release has;
-- 18.16 has no TTL clause. Column names avoid words that later releases
-- reserve (window).

-- packets: one row per logged packet (headers only), inserted by the
-- agents' clickhouse sink. bucket is a hash of the connection's two
-- endpoints (0..4095); (agent, batch, idx) names a row, so that a batch
-- inserted twice is read once.
CREATE TABLE IF NOT EXISTS packets (
    day Date,
    ts Int64,
    bucket UInt16,
    agent UInt64,
    batch UInt64,
    idx UInt32,
    node String,
    policy String,
    src_ip FixedString(16),
    dst_ip FixedString(16),
    src_port UInt16,
    dst_port UInt16,
    ip_version UInt8,
    flags UInt8,
    seq UInt32,
    ack UInt32,
    tcp_window UInt16,
    ttl UInt8,
    ip_id UInt16,
    df UInt8,
    payload_len UInt16,
    options FixedString(12),
    num_options UInt8
) ENGINE = MergeTree PARTITION BY toYYYYMMDD(day) ORDER BY (ts, bucket)
;
-- carry: the packets of connections a window could not judge yet (or
-- whose late packets the next window must recognise), for window win.
CREATE TABLE IF NOT EXISTS carry (
    win Int64,
    run String,
    day Date,
    ts Int64,
    bucket UInt16,
    agent UInt64,
    batch UInt64,
    idx UInt32,
    node String,
    policy String,
    src_ip FixedString(16),
    dst_ip FixedString(16),
    src_port UInt16,
    dst_port UInt16,
    ip_version UInt8,
    flags UInt8,
    seq UInt32,
    ack UInt32,
    tcp_window UInt16,
    ttl UInt8,
    ip_id UInt16,
    df UInt8,
    payload_len UInt16,
    options FixedString(12),
    num_options UInt8
) ENGINE = MergeTree PARTITION BY toYYYYMMDD(day) ORDER BY (win, bucket, ts)
;
-- carry_done: connections among the carried packets that were already
-- counted: the next window rebuilds them from the packets and must not
-- count them again.
CREATE TABLE IF NOT EXISTS carry_done (
    win Int64,
    run String,
    day Date,
    bucket UInt16,
    client_ip FixedString(16),
    server_ip FixedString(16),
    client_port UInt16,
    server_port UInt16,
    ip_version UInt8,
    first_seen Int64
) ENGINE = MergeTree PARTITION BY toYYYYMMDD(day) ORDER BY (win, bucket)
;
-- claims: a replica's claim on one part of one window (win is the window
-- start, ns). The earliest live claim wins; claims expire.
CREATE TABLE IF NOT EXISTS claims (
    day Date,
    win Int64,
    part UInt16,
    parts UInt16,
    replica String,
    run String,
    claimed_at Int64,
    expires Int64
) ENGINE = MergeTree PARTITION BY toYYYYMMDD(day) ORDER BY (win, part)
;
-- commits: a part of a window classified. Its run's rows in connections,
-- counts, carry and carry_done count only once this row exists; of two
-- commits of the same part the earliest wins (readers filter on it), so
-- nothing is ever counted twice.
CREATE TABLE IF NOT EXISTS commits (
    day Date,
    win Int64,
    part UInt16,
    parts UInt16,
    run String,
    replica String,
    committed_at Int64,
    packets UInt64,
    duplicates UInt64,
    connections UInt64,
    carried_connections UInt64,
    carried_rows UInt64
) ENGINE = MergeTree PARTITION BY toYYYYMMDD(day) ORDER BY (win, part)
;
-- connections: every classified connection (excluded ones too).
CREATE TABLE IF NOT EXISTS connections (
    day Date,
    win Int64,
    part UInt16,
    run String,
    first_seen Int64,
    last_seen Int64,
    node String,
    policy String,
    client String,
    client_port UInt16,
    server String,
    server_port UInt16,
    ip_version UInt8,
    packets UInt16,
    stage String,
    tags Array(String),
    signature String,
    excluded String,
    country String,
    asn UInt32
) ENGINE = MergeTree PARTITION BY toYYYYMMDD(day) ORDER BY (first_seen)
;
-- counts: aggregates per 15-minute bucket (s since the epoch) and
-- dimension; kind is stage, tag, signature or excluded.
CREATE TABLE IF NOT EXISTS counts (
    day Date,
    win Int64,
    part UInt16,
    run String,
    bucket Int64,
    node String,
    policy String,
    port UInt16,
    ipv UInt8,
    country String,
    asn UInt32,
    kind String,
    name String,
    n Int64
) ENGINE = MergeTree PARTITION BY toYYYYMMDD(day) ORDER BY (bucket, kind, name)
