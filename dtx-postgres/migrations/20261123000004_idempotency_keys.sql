-- dtx idempotency keys: one row per (scope, key).
--
-- scope is the caller's principal or tenant and part of the primary key, so equal keys of two
-- callers are two rows. A claim inserts the row `in_progress` with a lease token and a lock
-- (`locked_until`); completing stores the response and clears both. A claim after
-- `locked_until` (the holder died) or after `expires_at` takes the row over, in the claim's own
-- statement.
CREATE TABLE idempotency_keys (
    scope           TEXT        NOT NULL CHECK (char_length(scope) BETWEEN 1 AND 255),
    idempotency_key TEXT        NOT NULL CHECK (char_length(idempotency_key) BETWEEN 1 AND 255),
    fingerprint     BYTEA       NOT NULL CHECK (octet_length(fingerprint) = 32),
    status          TEXT        NOT NULL,
    lease           UUID,
    locked_until    TIMESTAMPTZ,
    response        BYTEA,
    created_at      TIMESTAMPTZ NOT NULL,
    completed_at    TIMESTAMPTZ,
    expires_at      TIMESTAMPTZ NOT NULL,
    -- serves every claim, completion, release and load: WHERE scope = $1 AND idempotency_key = $2
    CONSTRAINT idempotency_keys_pkey PRIMARY KEY (scope, idempotency_key),
    CONSTRAINT idempotency_keys_status CHECK (
        (status = 'in_progress' AND lease IS NOT NULL AND locked_until IS NOT NULL AND response IS NULL)
        OR (status = 'completed' AND lease IS NULL AND locked_until IS NULL AND response IS NOT NULL)
    )
);

-- serves the bounded cleanup: WHERE expires_at <= now() ORDER BY expires_at LIMIT n
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);
