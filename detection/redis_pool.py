"""One Redis connection pool per URL per process, however many cache objects ask.

Django makes a cache object per request context under ASGI (``caches`` is
context-local), and each ``RedisCache`` builds its own connection pool: every request
that touched the cache opened a new TCP connection to Redis (a name lookup and a
connect, about 2 % of an upload's web time) and left the old one to the garbage
collector. Named as the cache's ``pool_class``, this class hands every cache object of
the process the same pool; redis-py's pool itself notices a fork and starts afresh in
the child.
"""

from __future__ import annotations

import threading
from typing import Any

import redis
from django.conf import settings


class SharedConnectionPool(redis.ConnectionPool):
    _pools: dict[tuple[str, str], SharedConnectionPool] = {}
    _lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> SharedConnectionPool:  # type: ignore[override]
        key = (url, repr(sorted(kwargs.items())))
        with cls._lock:
            pool = cls._pools.get(key)
            if pool is None:
                pool = cls._pools[key] = super().from_url(url, **kwargs)
            return pool


# Short enough that a hung Redis delays a request by a second or two, not for good.
TIMEOUTS = {"socket_connect_timeout": 1.0, "socket_timeout": 2.0}


def client(url: str | None = None) -> redis.Redis:
    """A client on the process's shared pool for ``url`` (default: ``REDIS_URL``)."""
    pool = SharedConnectionPool.from_url(url or settings.REDIS_URL, **TIMEOUTS)
    return redis.Redis(connection_pool=pool)
