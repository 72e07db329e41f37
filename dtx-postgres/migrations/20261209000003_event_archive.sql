-- dtx event archive: the events of archived streams, moved out of event_store with every column
-- as it was (the feed position (commit_order, global_position) included).
--
-- The hot table (event_store) and its indexes keep only the events of live streams, so appends
-- and stream reads do not slow down as archived data grows. The global feed reads both tables in
-- one statement (one snapshot): an archived event is in exactly one of them in any snapshot, at
-- the position it always had, so a feed reader positioned before it still receives it, once, in
-- order. A reader positioned past every archived event pays one index probe here.
CREATE TABLE event_archive (
    stream_id       TEXT        NOT NULL,
    version         BIGINT      NOT NULL,
    global_position BIGINT      NOT NULL,
    commit_order    BIGINT      NOT NULL,
    event_id        UUID        NOT NULL,
    event_type      TEXT        NOT NULL,
    schema_version  INTEGER     NOT NULL,
    data            JSONB       NOT NULL,
    correlation_id  UUID,
    causation_id    UUID,
    traceparent     TEXT,
    recorded_at     TIMESTAMPTZ NOT NULL,
    outbox          BOOLEAN     NOT NULL,
    archived_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- serves reads of an archived stream (loads on request)
    CONSTRAINT event_archive_stream_version PRIMARY KEY (stream_id, version)
);

-- serves the global feed's second half: WHERE (commit_order, global_position) > ($1, $2)
CREATE INDEX event_archive_feed ON event_archive (commit_order, global_position);
