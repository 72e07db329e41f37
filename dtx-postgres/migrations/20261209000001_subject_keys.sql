-- dtx personal data: one key per data subject (crypto-shredding). Personal values in event
-- payloads, their outbox copies and snapshots are sealed with AES-256-GCM under their subject's
-- key; deleting the row forgets the subject: every value sealed with it is unreadable from then
-- on. `key` is the raw 32-byte key, or the bytes a master key (dtx::personal::KeyWrap) made of it.
CREATE TABLE subject_keys (
    subject    TEXT        NOT NULL PRIMARY KEY,
    key        BYTEA       NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
