"""Requests per minute, tokens per minute and requests in flight, per gateway key and per user.

    limiter.py        Scope, Verdict, the Limiter protocol and LocalLimiter (counted in this process)
    redis_limiter.py  RedisLimiter: one Lua script per check, shared by every replica on one Redis
    overrides.py      per-key and per-user limits set through the management API (table rate_limit_overrides)

The stage that applies them is gateway/stages/rate_limit.py.
"""
