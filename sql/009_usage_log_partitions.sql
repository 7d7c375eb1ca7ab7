-- usage_log becomes partitioned by month of created_at (UTC), so that old months leave by DROP TABLE
-- (usage_log.retention_months) instead of a DELETE over hundreds of millions of rows.
--
-- Written to work whatever columns earlier files gave usage_log: the new table copies the old one's
-- columns, defaults and CHECK constraints, every non-primary index is recreated from its definition, and
-- the rows move over. The primary key becomes (id, created_at): PostgreSQL requires the partition key in
-- it; both are made in the gateway process, so a replayed batch still conflicts with its first copy.
-- Partitions: every month that holds rows, this month and two months ahead (the gateway keeps creating
-- them ahead), plus a DEFAULT partition so that a row for a month without one is stored, never refused.
-- On a large table this rewrites every row under an exclusive lock: run it at a quiet time.
DO $$
DECLARE
    index_defs text[];
    ddl text;
    this_month date := date_trunc('month', now() AT TIME ZONE 'UTC')::date;
    m date;
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = 'usage_log'::regclass) = 'p' THEN
        RETURN;  -- already partitioned
    END IF;
    SELECT coalesce(array_agg(pg_get_indexdef(indexrelid)), '{}') INTO index_defs
    FROM pg_index WHERE indrelid = 'usage_log'::regclass AND NOT indisprimary;

    CREATE TABLE usage_log_partitioned (LIKE usage_log INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
        PARTITION BY RANGE (created_at);
    -- only months that hold rows, not every month since the oldest: one row stamped 1970 by a device
    -- without a clock would otherwise make ~700 empty partitions that every query plans over
    FOR m IN
        SELECT DISTINCT date_trunc('month', created_at AT TIME ZONE 'UTC')::date FROM usage_log
        UNION SELECT (this_month + make_interval(months => ahead))::date FROM generate_series(0, 2) AS ahead
        ORDER BY 1
    LOOP
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF usage_log_partitioned FOR VALUES FROM (%L) TO (%L)',
            'usage_log_' || to_char(m, 'YYYY_MM'),
            m::timestamp AT TIME ZONE 'UTC',
            (m + interval '1 month')::timestamp AT TIME ZONE 'UTC'
        );
    END LOOP;
    CREATE TABLE usage_log_default PARTITION OF usage_log_partitioned DEFAULT;

    INSERT INTO usage_log_partitioned SELECT * FROM usage_log;
    DROP TABLE usage_log;
    ALTER TABLE usage_log_partitioned RENAME TO usage_log;
    ALTER TABLE usage_log ADD PRIMARY KEY (id, created_at);
    ALTER TABLE usage_log ADD FOREIGN KEY (key_id) REFERENCES api_keys (id);
    FOREACH ddl IN ARRAY index_defs LOOP
        EXECUTE ddl;
    END LOOP;
END $$;
