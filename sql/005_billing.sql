-- Billing as the invoice has it: cache writes by lifetime (5-minute writes cost 1.25x input, 1-hour writes 2x),
-- server-side web searches (priced per 1,000), and a flag on rows whose output was estimated from the relayed
-- text because the stream ended before the provider's final count (client gone, upstream break, timeout).
-- cache_write_tokens stays the sum of every cache write, so month counters and reports keep their meaning.
ALTER TABLE usage_log
    ADD COLUMN cache_write_5m_tokens integer NOT NULL DEFAULT 0,
    ADD COLUMN cache_write_1h_tokens integer NOT NULL DEFAULT 0,
    ADD COLUMN web_search_requests   integer NOT NULL DEFAULT 0,
    ADD COLUMN usage_estimated       boolean NOT NULL DEFAULT false;
