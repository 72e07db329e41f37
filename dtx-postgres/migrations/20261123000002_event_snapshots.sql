-- dtx aggregate snapshots: the latest usable state of a stream.
CREATE TABLE event_snapshots (
    stream_id      TEXT        NOT NULL PRIMARY KEY,
    aggregate_type TEXT        NOT NULL,
    version        BIGINT      NOT NULL CHECK (version > 0),
    schema_hash    BIGINT      NOT NULL,
    state          JSONB       NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
