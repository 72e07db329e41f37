-- dtx inbox: what each consumer has received, what it gave up on, and (for consumers that keep
-- their offsets in the database, such as Kafka's) where it stands in each partition.
--
-- A consumer inserts (consumer, message_id) in the transaction that applies the message's
-- effects: a redelivery conflicts with the committed row and is skipped; a concurrent delivery
-- of the same message waits on the uncommitted row and then conflicts. Rows are purged by age
-- (retention): keep them longer than the broker may redeliver.
CREATE TABLE inbox_messages (
    consumer     TEXT        NOT NULL,
    message_id   UUID        NOT NULL,
    message_type TEXT        NOT NULL,
    received_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);

CREATE INDEX inbox_messages_received_at ON inbox_messages (received_at);

-- Messages a consumer gave up on (handler kept failing, payload undecodable, headers unusable):
-- visible to an operator, who requeues them (status 'requeued': the consumer handles them again)
-- or discards them. The message is stored as delivered (headers as a JSON object, payload as
-- bytes), so nothing is lost.
CREATE TABLE inbox_dead_letters (
    consumer       TEXT        NOT NULL,
    message_id     UUID        NOT NULL,
    message_type   TEXT        NOT NULL,
    message_key    TEXT,
    schema_version INTEGER,
    correlation_id UUID,
    causation_id   UUID,
    traceparent    TEXT,
    headers        JSONB       NOT NULL DEFAULT '{}',
    payload        BYTEA       NOT NULL,
    source         TEXT,
    delivery       INTEGER     NOT NULL DEFAULT 1,
    error          TEXT        NOT NULL,
    attempts       INTEGER     NOT NULL,
    status         TEXT        NOT NULL DEFAULT 'dead' CHECK (status IN ('dead', 'requeued')),
    dead_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);

CREATE INDEX inbox_dead_letters_requeued ON inbox_dead_letters (consumer, dead_at)
    WHERE status = 'requeued';

-- Partition offsets of consumers that keep them here, moved in the transaction that applies
-- the records before them (exactly once for database effects), held by lease.
CREATE TABLE consumer_offsets (
    consumer    TEXT        NOT NULL,
    topic       TEXT        NOT NULL,
    partition   INTEGER     NOT NULL,
    next_offset BIGINT      NOT NULL,
    owner       UUID,
    lease_until TIMESTAMPTZ,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, topic, partition)
);
