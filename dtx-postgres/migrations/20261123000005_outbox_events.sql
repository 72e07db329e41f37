-- dtx transactional outbox.
--
-- Events appended with the outbox enabled (PgEventStore::with_outbox) are marked in event_store
-- (outbox = true) by the append statement itself: the event row is its own outbox record, and
-- committing the append is committing its outbox record. A relay publishes them by reading the
-- gap-free global feed (commit_order, global_position) below the oldest running transaction,
-- from the checkpoint in outbox_feed; it advances the checkpoint in the transaction that records
-- the batch as published. The append thus writes no second row, and the relay deletes nothing.
--
-- outbox_events holds everything that is not published straight from the feed: messages added
-- with PgOutbox::enqueue in the caller's transaction (they carry their own payload and headers),
-- and events the relay set aside ("parked") because their publish failed (retries with backoff,
-- then the dead-letter status) or their stream already had rows here. A relay deletes a row once
-- published (keeping a copy in outbox_published when a retention is set), so this table only
-- ever holds a backlog, normally empty.
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

-- The outbox relay's checkpoint in the global feed: the last (commit_order, global_position) it
-- published or set aside, and how many events it published from the feed. One relay at a time
-- reads the feed (it holds an advisory lock for its batch); the others work outbox_events.
CREATE TABLE outbox_feed (
    feed            TEXT        PRIMARY KEY,
    commit_order    BIGINT      NOT NULL,
    global_position BIGINT      NOT NULL,
    published       BIGINT      NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO outbox_feed (feed, commit_order, global_position, published) VALUES ('events', 0, 0, 0);
