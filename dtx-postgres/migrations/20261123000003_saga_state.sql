-- dtx sagas: one row per saga instance, updated by every transition.
CREATE TABLE saga_state (
    id               UUID        PRIMARY KEY,
    name             TEXT        NOT NULL,
    status           TEXT        NOT NULL CHECK (status IN
                       ('running', 'waiting', 'compensating', 'completed', 'compensated', 'failed')),
    data             JSONB       NOT NULL,
    -- the next step to run forward
    step             INTEGER     NOT NULL DEFAULT 0,
    -- completed steps with what they recorded, and whether they were compensated
    completed        JSONB       NOT NULL DEFAULT '[]',
    -- external events received, by type
    received         JSONB       NOT NULL DEFAULT '{}',
    attempts         INTEGER     NOT NULL DEFAULT 0,
    next_run_at      TIMESTAMPTZ NOT NULL,
    deadline         TIMESTAMPTZ,
    awaiting         TEXT,
    last_error       TEXT,
    correlation_id   UUID,
    version          BIGINT      NOT NULL DEFAULT 1,
    lease_owner      TEXT,
    lease_expires_at TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL
);

-- serves the workers' claim: due active sagas, the longest due first
CREATE INDEX saga_state_due ON saga_state (next_run_at)
    WHERE status IN ('running', 'waiting', 'compensating');

-- serves listing and counting by status
CREATE INDEX saga_state_status ON saga_state (status, created_at);
