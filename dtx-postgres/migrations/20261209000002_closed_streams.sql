-- dtx closed streams: a row per stream that takes no more events (a tombstone).
--
-- Every append statement probes this table's primary key for its stream in the statement itself
-- (`NOT EXISTS (SELECT 1 FROM closed_streams WHERE stream_id = $1)`, a one-time filter: one
-- index probe per append, whatever the number of events, on a table that holds one row per
-- closed stream and none per event). An append that finds its stream here inserts nothing and is
-- refused (dtx::Error::StreamClosed).
--
-- Closing inserts the row and commits, then waits for every transaction that held a lock on this
-- table when it committed (the appends that may have read the table before the row was there)
-- to end, and only then records the stream's last version: from then on the stream cannot
-- change. Archiving moves the stream's events to event_archive in one transaction and sets
-- archived_at.
CREATE TABLE closed_streams (
    stream_id    TEXT        PRIMARY KEY,
    -- the stream's last version, once the appends that raced with the close have ended
    last_version BIGINT,
    closed_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- when its events were moved to event_archive (NULL: they are in event_store)
    archived_at  TIMESTAMPTZ
);
