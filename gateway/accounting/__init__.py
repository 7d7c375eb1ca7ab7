"""Accounting: what each request cost and what a month has used.

- `ledger.py`: the usage log, batched and written with `COPY` (one row per request).
- `spill.py`: the journal of flushes the database refused, replayed when it answers again.
- `partitions.py`: the usage log's monthly partitions, created ahead and kept for the configured months.
- `month_view.py`: the month-to-date usage the budget check reads, with in-flight reservations.
"""
