-- dtx transactional outbox: one row per message to publish, written in the same statement as the
-- events it carries (PgEventStore::with_outbox) or in the caller's transaction (PgOutbox::enqueue).
--
-- A relay publishes the rows of one stream_key in id order. For events of one stream, id order is
-- version order: a second append to a stream waits on the first one's version (primary key of
-- event_store) before its outbox rows get their ids.
CREATE TABLE outbox_events (
    id              BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- the ordering key: the stream id for events, the caller's key for other messages
    stream_key      TEXT        NOT NULL,
    -- the event's version in its stream (NULL for messages that are not events)
    sequence        BIGINT,
    -- the message id consumers and brokers dedupe on (the event id for events)
    event_id        UUID        NOT NULL,
    event_type      TEXT        NOT NULL,
    payload         JSONB       NOT NULL,
    -- dtx-event-id, dtx-event-type, dtx-stream-id, dtx-correlation-id, dtx-causation-id, traceparent
    headers         JSONB       NOT NULL DEFAULT '{}',
    status          TEXT        NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'published', 'dead')),
    attempts        INTEGER     NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_error      TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at    TIMESTAMPTZ
);

-- serves the claim: the keys with due pending rows, oldest first, and the lag
CREATE INDEX outbox_events_pending ON outbox_events (id)
    INCLUDE (stream_key, next_attempt_at) WHERE status = 'pending';
-- serves reading the unpublished rows of the claimed keys in order (a dead row stops its key)
CREATE INDEX outbox_events_unpublished ON outbox_events (stream_key, id)
    WHERE status <> 'published';
-- serves listing dead messages
CREATE INDEX outbox_events_dead ON outbox_events (id) WHERE status = 'dead';
-- serves retention: published rows oldest first
CREATE INDEX outbox_events_published ON outbox_events (published_at) WHERE status = 'published';

-- Coalesced wake-ups. A transaction with a pending NOTIFY takes a global lock at commit that
-- serialises every committing transaction; so appends do not notify unless a relay has gone idle
-- and armed this flag. The first outbox write after that disarms it and notifies once; while the
-- relays are busy (the flag is down) appends never notify.
CREATE TABLE outbox_wakeup (
    id    BOOLEAN PRIMARY KEY DEFAULT true CHECK (id),
    armed BOOLEAN NOT NULL DEFAULT false
);
INSERT INTO outbox_wakeup (id, armed) VALUES (true, false);

CREATE FUNCTION outbox_events_wake() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    -- a plain read first: no row lock and no NOTIFY while the relays are busy
    IF EXISTS (SELECT 1 FROM outbox_wakeup WHERE armed) THEN
        UPDATE outbox_wakeup SET armed = false WHERE armed;
        IF FOUND THEN
            PERFORM pg_notify('dtx_outbox', '');
        END IF;
    END IF;
    RETURN NULL;
END
$$;

-- at most once per statement (and so once per append), never per row
CREATE TRIGGER outbox_events_wake AFTER INSERT ON outbox_events
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_events_wake();
