-- dtx transactional outbox: the messages not yet published, one row each, written in the same
-- statement as the events they carry (PgEventStore::with_outbox) or in the caller's transaction
-- (PgOutbox::enqueue). A relay deletes a row when it has published it (keeping a copy in
-- outbox_published when a retention is set), so this table only ever holds the backlog.
--
-- Every append pays for this row, so it is as small and cheap as it can be: an event's row holds
-- its stream, position and version only (the relay reads the event from event_store); the table
-- has one index, no sequence of its own and no CHECK constraint (those are parsed again for every
-- insert statement: 11 % of the append throughput under 8 writers, with event_store's). Messages
-- that are not events carry their id, type, payload and headers here.
CREATE TABLE outbox_events (
    -- the ordering key: the stream id for events, the caller's key for other messages
    stream_key      TEXT        NOT NULL,
    -- the order within a key: an event's global_position, a message's id drawn from the same
    -- sequence (event_store_global_position_seq). For the events of one stream it is version
    -- order: an append that draws a position and then finds the version taken fails, and the
    -- retry draws a new one after the first append committed.
    id              BIGINT      NOT NULL,
    -- the event's version in its stream (NULL for messages that are not events)
    sequence        BIGINT,
    -- messages only (NULL for events, whose id, type, data and metadata are in event_store):
    -- the id consumers and brokers dedupe on, the type, the payload and extra headers
    event_id        UUID,
    event_type      TEXT,
    payload         JSONB,
    headers         JSONB,
    -- 'pending' or 'dead'
    status          TEXT        NOT NULL DEFAULT 'pending',
    attempts        INTEGER     NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_error      TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- an event's row has a sequence and no payload; a message's row the reverse
    -- serves everything the relay does: finding the keys with work (a skip scan over the keys,
    -- whose first row is the head of the key's queue), reading a key's rows in order, deleting
    -- what was published
    CONSTRAINT outbox_events_key_order PRIMARY KEY (stream_key, id)
);

-- Published messages kept for a while (RelayOptions::retention); deleted in bounded batches. A
-- BRIN index costs next to nothing on insert and serves the oldest-first purge.
CREATE TABLE outbox_published (
    stream_key   TEXT        NOT NULL,
    id           BIGINT      NOT NULL,
    sequence     BIGINT,
    event_id     UUID,
    event_type   TEXT,
    payload      JSONB,
    headers      JSONB,
    attempts     INTEGER     NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    published_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX outbox_published_at ON outbox_published USING brin (published_at);
