"""Budget ledgers: reserve a call's expected cost before it is made, settle its actual cost after.

A call first reserves what it may cost (its ``max_tokens``, or an estimate); the reservation is
refused when what was spent plus what is reserved plus this call would pass the budget, so
concurrent calls can never all pass the check and then overspend together (LiteLLM's check-then-
record race). When the call returns, the reservation is settled to the actual cost; when it is
cancelled, released. A reservation not settled within its ``ttl`` (a replica killed mid-call) is
reclaimed by the next ledger operation. Budgets cover fixed windows of ``window`` seconds (a new
window starts at zero) or, without a window, the ledger's whole life.

:class:`LocalLedger` keeps this in the process; :class:`RedisLedger` keeps it in Redis, one Lua
script per operation so that every check-and-reserve is atomic across replicas, with Redis's clock.
:class:`FallbackLedger` says what happens when Redis cannot be reached: refuse (the default), or
fall back to a stated share of the budget kept locally; never unlimited.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "BudgetLimits",
    "Reservation",
    "Refused",
    "Remaining",
    "Ledger",
    "LedgerUnavailable",
    "LocalLedger",
    "RedisLedger",
    "FallbackLedger",
]

log = logging.getLogger("budgetctl.proxy")


@dataclass(frozen=True, slots=True)
class BudgetLimits:
    """A budget shared by every request: generated tokens and dollars per ``window`` seconds (``None``: no cap)."""

    tokens: int | None = None
    usd: float | None = None
    #: Seconds per window (each starts from zero); ``None``: the budget covers the ledger's whole life.
    window: float | None = None

    def __post_init__(self) -> None:
        for name in ("tokens", "usd", "window"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
                or (name == "window" and value == 0)
            ):
                raise ValueError(f"budget {name} must be a finite number {'> 0' if name == 'window' else '>= 0'}")

    @property
    def unlimited(self) -> bool:
        """Whether no cap is set (nothing to reserve)."""
        return self.tokens is None and self.usd is None

    def share(self, fraction: float) -> BudgetLimits:
        """``fraction`` of each cap (the local share a replica falls back to)."""
        return BudgetLimits(
            tokens=None if self.tokens is None else int(self.tokens * fraction),
            usd=None if self.usd is None else self.usd * fraction,
            window=self.window,
        )


@dataclass(frozen=True, slots=True)
class Reservation:
    """What one call reserved; give it back to :meth:`Ledger.settle` or :meth:`Ledger.release`."""

    id: str
    #: The window (Redis key) it was reserved in: it settles there even if a new window has begun.
    window_key: str
    tokens: float
    usd: float
    #: The ledger that holds it ("redis" or "local").
    store: str = "local"


@dataclass(frozen=True, slots=True)
class Refused:
    """A reservation the budget has no room for."""

    #: Seconds until room may come back (the window's end, or a reservation's expiry); ``None``: never.
    retry_after: float | None
    reason: str


@dataclass(frozen=True, slots=True)
class Remaining:
    """What is left of the budget now: caps minus spent minus reserved (``None``: no cap)."""

    tokens: float | None
    usd: float | None


class LedgerUnavailable(Exception):
    """The ledger's store cannot be reached (Redis down); the message says which and why."""


class Ledger(Protocol):
    """Reserve, settle and release call costs against a shared budget."""

    limits: BudgetLimits

    async def reserve(self, tokens: float, usd: float, ttl: float) -> Reservation | Refused: ...

    async def settle(self, reservation: Reservation, tokens: float, usd: float) -> None: ...

    async def release(self, reservation: Reservation) -> None: ...

    async def remaining(self) -> Remaining: ...

    async def aclose(self) -> None: ...


def _room(limit: float | None, spent: float, reserved: float, wanted: float) -> bool:
    return limit is None or spent + reserved + wanted <= limit


class LocalLedger:
    """A ledger in this process (one event loop: every operation is atomic by construction)."""

    def __init__(self, limits: BudgetLimits, clock: Any = time.time) -> None:
        self.limits = limits
        self._clock = clock
        self._window = -1
        self._spent = [0.0, 0.0]
        self._reserved: dict[str, tuple[int, float, float, float]] = {}  # id -> window, tokens, usd, expiry

    def _roll(self) -> int:
        now = self._clock()
        window = 0 if self.limits.window is None else math.floor(now / self.limits.window)
        if window != self._window:
            self._window = window
            self._spent = [0.0, 0.0]
        for rid, (_, _, _, expiry) in list(self._reserved.items()):
            if expiry <= now:
                del self._reserved[rid]
        return window

    def _reserved_now(self, window: int) -> tuple[float, float]:
        items = [v for v in self._reserved.values() if v[0] == window]
        return sum(v[1] for v in items), sum(v[2] for v in items)

    async def reserve(self, tokens: float, usd: float, ttl: float) -> Reservation | Refused:
        """Reserve ``tokens`` and ``usd`` for at most ``ttl`` seconds, or say why not."""
        window = self._roll()
        held_tokens, held_usd = self._reserved_now(window)
        limits = self.limits
        if _room(limits.tokens, self._spent[0], held_tokens, tokens) and _room(
            limits.usd, self._spent[1], held_usd, usd
        ):
            rid = uuid.uuid4().hex
            self._reserved[rid] = (window, tokens, usd, self._clock() + ttl)
            return Reservation(rid, str(window), tokens, usd, "local")
        return Refused(self._retry_after(window, held_tokens + held_usd > 0), "the shared budget is spent")

    def _retry_after(self, window: int, held: bool) -> float | None:
        if self.limits.window is not None:
            left: float = (window + 1) * self.limits.window - self._clock()
            return max(left, 0.0)
        return 1.0 if held else None

    async def settle(self, reservation: Reservation, tokens: float, usd: float) -> None:
        """Replace ``reservation`` by the actual cost (charged to the window it was made in)."""
        self._reserved.pop(reservation.id, None)
        if reservation.window_key == str(self._roll()):
            self._spent[0] += tokens
            self._spent[1] += usd

    async def release(self, reservation: Reservation) -> None:
        """Give ``reservation`` back unspent (the call was cancelled before it cost anything known)."""
        self._reserved.pop(reservation.id, None)

    async def remaining(self) -> Remaining:
        """The caps minus what is spent and reserved in the current window."""
        window = self._roll()
        held_tokens, held_usd = self._reserved_now(window)
        limits = self.limits
        return Remaining(
            None if limits.tokens is None else limits.tokens - self._spent[0] - held_tokens,
            None if limits.usd is None else limits.usd - self._spent[1] - held_usd,
        )

    async def aclose(self) -> None:
        """Nothing to close."""


#: One script for every operation, so each is atomic in Redis: reclaim expired reservations of the
#: window concerned, then reserve (check and hold), settle (unhold, charge), release (unhold) or
#: report what remains. Amounts travel as strings: Lua numbers would come back truncated to integers.
_SCRIPT = """
local prefix = KEYS[1]
local op = ARGV[1]
local limit_tokens = tonumber(ARGV[2])
local limit_usd = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local index = 0
if window > 0 then index = math.floor(now / window) end
local key = prefix .. ':w' .. index
if op == 'settle' or op == 'release' then key = ARGV[6] end

local function reclaim(k)
  local gone = redis.call('ZRANGEBYSCORE', k .. ':exp', '-inf', now)
  for _, id in ipairs(gone) do
    local held = redis.call('HGET', k .. ':res', id)
    if held then
      local tok, usd = string.match(held, '(%S+) (%S+)')
      redis.call('HINCRBYFLOAT', k, 'rtok', -tonumber(tok))
      redis.call('HINCRBYFLOAT', k, 'rusd', -tonumber(usd))
      redis.call('HDEL', k .. ':res', id)
      redis.call('HINCRBY', k, 'expired', 1)
    end
    redis.call('ZREM', k .. ':exp', id)
  end
end

local function unhold(k, id)
  local held = redis.call('HGET', k .. ':res', id)
  if held then
    local tok, usd = string.match(held, '(%S+) (%S+)')
    redis.call('HINCRBYFLOAT', k, 'rtok', -tonumber(tok))
    redis.call('HINCRBYFLOAT', k, 'rusd', -tonumber(usd))
    redis.call('HDEL', k .. ':res', id)
  end
  redis.call('ZREM', k .. ':exp', id)
end

local function num(k, field)
  return tonumber(redis.call('HGET', k, field) or '0')
end

reclaim(key)
if op == 'reserve' then
  local id, tok, usd, ttl = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
  local ok_tok = limit_tokens < 0 or num(key, 'tok') + num(key, 'rtok') + tok <= limit_tokens
  local ok_usd = limit_usd < 0 or num(key, 'usd') + num(key, 'rusd') + usd <= limit_usd
  if not (ok_tok and ok_usd) then
    local retry = -1
    if window > 0 then
      retry = (index + 1) * window - now
    elseif redis.call('ZCARD', key .. ':exp') > 0 then
      local first = redis.call('ZRANGE', key .. ':exp', 0, 0, 'WITHSCORES')
      retry = tonumber(first[2]) - now
    end
    return {0, key, tostring(retry)}
  end
  redis.call('HINCRBYFLOAT', key, 'rtok', tok)
  redis.call('HINCRBYFLOAT', key, 'rusd', usd)
  redis.call('HSET', key .. ':res', id, tostring(tok) .. ' ' .. tostring(usd))
  redis.call('ZADD', key .. ':exp', now + ttl, id)
  if window > 0 then
    local keep = math.ceil(2 * window + ttl)
    redis.call('EXPIRE', key, keep)
    redis.call('EXPIRE', key .. ':res', keep)
    redis.call('EXPIRE', key .. ':exp', keep)
  end
  return {1, key, '0'}
elseif op == 'settle' then
  unhold(key, ARGV[5])
  redis.call('HINCRBYFLOAT', key, 'tok', tonumber(ARGV[7]))
  redis.call('HINCRBYFLOAT', key, 'usd', tonumber(ARGV[8]))
  return {1, key, '0'}
elseif op == 'release' then
  unhold(key, ARGV[5])
  return {1, key, '0'}
end
local rem_tok = limit_tokens - num(key, 'tok') - num(key, 'rtok')
local rem_usd = limit_usd - num(key, 'usd') - num(key, 'rusd')
return {1, key, tostring(rem_tok), tostring(rem_usd), tostring(num(key, 'expired'))}
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisLedger:
    """A ledger in Redis, shared by every replica that names the same ``url`` and ``name``.

    Needs ``pip install 'budgetctl[redis]'`` (redis-py's asyncio client). Every operation raises
    :class:`LedgerUnavailable` when Redis cannot be reached within ``timeout`` seconds.
    """

    def __init__(self, url: str, limits: BudgetLimits, *, name: str = "default", timeout: float = 1.0) -> None:
        from .._optional import import_optional

        redis = import_optional("redis", "redis", "a budget shared in Redis (budgetctl proxy --redis)")
        import redis.asyncio as aioredis

        self.limits = limits
        self.url = url
        self.prefix = f"budgetctl:budget:{name}"
        self._errors: tuple[type[BaseException], ...] = (redis.exceptions.RedisError, OSError)
        self._client = aioredis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._script = self._client.register_script(_SCRIPT)

    def __repr__(self) -> str:
        return f"RedisLedger({self._where()}, {self.prefix!r})"

    def _where(self) -> str:
        # The URL without a password: never in a log.
        from urllib.parse import urlsplit

        parts = urlsplit(self.url)
        host = parts.hostname or "?"
        return f"{parts.scheme}://{host}:{parts.port or 6379}{parts.path}"

    async def _call(self, *args: Any) -> list[Any]:
        limits = self.limits
        head = [
            -1 if limits.tokens is None else limits.tokens,
            -1 if limits.usd is None else limits.usd,
            limits.window or 0,
        ]
        try:
            reply = await self._script(keys=[self.prefix], args=[args[0], *head, *args[1:]])
        except self._errors as error:
            raise LedgerUnavailable(
                f"Redis at {self._where()} is unreachable: {type(error).__name__}: {error}"
            ) from None
        return [_text(v) if isinstance(v, bytes) else v for v in reply]

    async def reserve(self, tokens: float, usd: float, ttl: float) -> Reservation | Refused:
        """Reserve atomically across replicas, or say why not."""
        rid = uuid.uuid4().hex
        ok, key, retry = await self._call("reserve", rid, repr(float(tokens)), repr(float(usd)), repr(float(ttl)))
        if int(ok) == 1:
            return Reservation(rid, key, tokens, usd, "redis")
        wait = float(retry)
        return Refused(None if wait < 0 else max(wait, 0.0), "the shared budget is spent")

    async def settle(self, reservation: Reservation, tokens: float, usd: float) -> None:
        """Replace the reservation by the actual cost, in the window it was made in."""
        await self._call("settle", reservation.id, reservation.window_key, repr(float(tokens)), repr(float(usd)))

    async def release(self, reservation: Reservation) -> None:
        """Give the reservation back unspent."""
        await self._call("release", reservation.id, reservation.window_key)

    async def remaining(self) -> Remaining:
        """What is left in the current window, over all replicas."""
        reply = await self._call("remaining")
        tokens, usd = float(reply[2]), float(reply[3])
        limits = self.limits
        return Remaining(None if limits.tokens is None else tokens, None if limits.usd is None else usd)

    async def expired(self) -> int:
        """Reservations of the current window reclaimed because they were never settled (killed replicas)."""
        return int(float((await self._call("remaining"))[4]))

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()


class FallbackLedger:
    """Redis first; when it is unreachable, refuse (``share=None``) or use ``share`` of the budget locally.

    Never unlimited: without Redis, either every call is refused (:class:`LedgerUnavailable`
    propagates, answered 503) or the process spends from its own local ledger holding ``share``
    of each cap, per window, until Redis answers again.
    """

    def __init__(self, primary: RedisLedger, share: float | None) -> None:
        if share is not None and not 0 < share <= 1:
            raise ValueError(f"the local share must be in (0, 1], got {share!r}")
        self.primary = primary
        self.limits = primary.limits
        self.share = share
        self.local = None if share is None else LocalLedger(primary.limits.share(share))
        self._down = False

    def _fallen(self, error: LedgerUnavailable) -> LocalLedger:
        if self.local is None:
            raise error
        if not self._down:
            log.warning("%s; spending from the local share (%g of the budget) until it is back", error, self.share)
            self._down = True
        return self.local

    async def reserve(self, tokens: float, usd: float, ttl: float) -> Reservation | Refused:
        """Reserve in Redis, or in the local share while Redis is down (or raise, without one)."""
        try:
            reservation = await self.primary.reserve(tokens, usd, ttl)
        except LedgerUnavailable as error:
            return await self._fallen(error).reserve(tokens, usd, ttl)
        if self._down:
            log.warning("Redis is back at %s; the shared budget is in force again", self.primary._where())
            self._down = False
        return reservation

    def _ledger_of(self, reservation: Reservation) -> Ledger:
        return self.local if reservation.store == "local" and self.local is not None else self.primary

    async def settle(self, reservation: Reservation, tokens: float, usd: float) -> None:
        """Settle where it was reserved; a Redis reservation that cannot be settled expires there."""
        try:
            await self._ledger_of(reservation).settle(reservation, tokens, usd)
        except LedgerUnavailable as error:
            log.warning("could not settle a reservation: %s (it expires in Redis by itself)", error)

    async def release(self, reservation: Reservation) -> None:
        """Release where it was reserved (an unreachable Redis lets it expire)."""
        try:
            await self._ledger_of(reservation).release(reservation)
        except LedgerUnavailable as error:
            log.warning("could not release a reservation: %s (it expires in Redis by itself)", error)

    async def remaining(self) -> Remaining:
        """What Redis says is left, or the local share's remainder while Redis is down."""
        try:
            return await self.primary.remaining()
        except LedgerUnavailable as error:
            if self.local is None:
                raise
            return await self._fallen(error).remaining()

    async def aclose(self) -> None:
        """Close the Redis connection pool."""
        await self.primary.aclose()
