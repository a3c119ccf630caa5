from __future__ import annotations

import logging
import uuid
from typing import Any

from redis.exceptions import RedisError
from rest_framework.throttling import UserRateThrottle

from detection import redis_pool

log = logging.getLogger(__name__)

# A sliding log, as DRF's SimpleRateThrottle keeps it, but checked and added to in one
# step on the server: the request's time (Redis's clock, the same for every web process)
# goes into a sorted set of the window's requests only if the set holds fewer than the
# limit. One round trip, and two submits at once cannot both take the last place (DRF's
# read, decide, write lets them). Returns {allowed, seconds until the oldest entry leaves
# the window}.
_SLIDING_LOG = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= limit then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, tostring(tonumber(oldest[2]) + window - now)}
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000))
return {1, '0'}
"""


class SubmitThrottle(UserRateThrottle):
    """Submissions per user, counted in Redis so every web process agrees."""

    scope = "submit"
    cache_format = "snapread:throttle:%(scope)s:%(ident)s"
    _script: Any = None

    def allow_request(self, request: Any, view: Any) -> bool:
        if self.rate is None:
            return True
        self.key = self.get_cache_key(request, view)
        if self.key is None:
            return True
        try:
            allowed, wait = self.script()(
                keys=[self.key], args=[self.duration, self.num_requests, uuid.uuid4().hex]
            )
        except RedisError:
            # Fail open: with Redis down a submit is still stored and the sweeper sends it
            # once the broker is back, and the cap on unfinished jobs (PostgreSQL) still
            # bounds each user. Refusing every upload for a cache outage would be worse.
            log.warning("submit throttle skipped: Redis is unreachable")
            return True
        self._wait = max(0.0, float(wait))
        return bool(allowed)

    def wait(self) -> float | None:
        return getattr(self, "_wait", None)

    @classmethod
    def script(cls) -> Any:
        if cls._script is None:
            # Registered once per process; redis-py sends it by SHA and loads it again
            # where the server lost it (a restart).
            cls._script = redis_pool.client().register_script(_SLIDING_LOG)
        return cls._script
