-- dtx sagas: the definition each saga started on, so that a deploy that changes a saga's steps
-- never runs an in-flight saga against other steps. Sagas stored before this migration are on
-- version 1 with no fingerprint: workers check their completed steps by name against version 1
-- and record its fingerprint.
ALTER TABLE saga_state
    ADD COLUMN definition_version     INTEGER NOT NULL DEFAULT 1 CHECK (definition_version >= 1),
    ADD COLUMN definition_fingerprint TEXT;
