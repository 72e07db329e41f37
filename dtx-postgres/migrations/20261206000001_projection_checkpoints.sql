-- dtx projections: where each projection (and each partition of one) stands on the global feed.
--
-- A runner holds a checkpoint by lease (owner, lease_until) and moves it in the transaction that
-- applies a batch: UPDATE .. WHERE owner = $me AND position = the position it read from. A runner
-- that lost the lease, or whose checkpoint an operator reset or skipped meanwhile, updates no row
-- and rolls its batch back, so a batch is applied once. Each version of a projection has its own
-- checkpoint: bumping the version rebuilds from the start.
CREATE TABLE projection_checkpoints (
    name                TEXT        NOT NULL,
    version             INTEGER     NOT NULL,
    partition           INTEGER     NOT NULL DEFAULT 0,
    partitions          INTEGER     NOT NULL DEFAULT 1,
    -- every event up to (commit_order, global_position) is applied or passed over
    commit_order        BIGINT      NOT NULL DEFAULT 0,
    global_position     BIGINT      NOT NULL DEFAULT 0,
    status              TEXT        NOT NULL DEFAULT 'running'
                                    CHECK (status IN ('running', 'failed')),
    applied             BIGINT      NOT NULL DEFAULT 0,
    -- while failed: the event it stopped at, and why
    failed_commit_order BIGINT,
    failed_position     BIGINT,
    failed_stream_id    TEXT,
    failed_version      BIGINT,
    failed_event_id     UUID,
    last_error          TEXT,
    attempts            INTEGER     NOT NULL DEFAULT 0,
    owner               UUID,
    lease_until         TIMESTAMPTZ,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version, partition)
);

-- Operators' skips of failed events, kept as a record.
CREATE TABLE projection_skips (
    id              BIGSERIAL   PRIMARY KEY,
    name            TEXT        NOT NULL,
    version         INTEGER     NOT NULL,
    partition       INTEGER     NOT NULL,
    commit_order    BIGINT      NOT NULL,
    global_position BIGINT      NOT NULL,
    stream_id       TEXT        NOT NULL,
    stream_version  BIGINT      NOT NULL,
    event_id        UUID        NOT NULL,
    error           TEXT        NOT NULL,
    attempts        INTEGER     NOT NULL,
    reason          TEXT        NOT NULL,
    skipped_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX projection_skips_name ON projection_skips (name, id);
