-- dtx sagas: find the unfinished sagas of a correlation (events from the feed complete the steps
-- they await, matched on the correlation id).
CREATE INDEX saga_state_correlation ON saga_state (correlation_id)
    WHERE correlation_id IS NOT NULL AND status IN ('running', 'waiting', 'compensating');
