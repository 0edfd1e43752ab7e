"""How triows lays its data out in Redis: key names, the Lua scripts, the pub/sub header.

Every key of a channel ``c`` carries the hash tag ``{c}`` (channel names cannot contain braces,
:mod:`~triows._core.names`), so on a Redis Cluster a channel lives on one shard: its numbering,
stream, dedupe entries, presence and this node's pending publications are in one slot, the
scripts that touch them together stay atomic, and the channels spread over the shards. One
Redis ignores the tags (the same layout serves both).

- ``triows:{c}:s`` a hash ``{seq, epoch}``: the channel's numbering. Created with a new epoch
  (chosen by the node that creates it) when missing, so a Redis that lost its data starts a new
  epoch instead of reusing numbers.
- ``triows:{c}:l`` a stream, entry id ``<seq>-0``, fields ``p`` (the message payload), ``t``
  (ms timestamp), ``o`` (the publishing node's token) and ``a`` (when Redis appended it, Redis'
  own clock in ms). It serves two readers with different needs: clients resuming (the channel's
  history size and ttl, applied when reading) and nodes catching up after their pub/sub link
  broke (everything they have not delivered yet, however many). So an entry is trimmed only
  once it is both beyond the history size and older than the retention window
  (``redis_retention``): a node that catches up within the window reads every message, whatever
  the history size (:data:`TRIM`).
- ``triows:{c}:m`` the pub/sub channel (sharded pub/sub, ``SPUBLISH``/``SSUBSCRIBE``, on a
  cluster); each message is ``"<seq> <epoch> <token> <sender>\\n"`` followed by the payload.
- ``triows:{c}:o:...`` one key per publication with a dedupe id, for ``dedupe_ttl`` (to the
  millisecond, :class:`~triows._core.dedupe.DedupeRule`): a client's
  resend is acked with the first seq. Its name encodes every part with a length prefix
  (:func:`dedupe_key`), so no user name can make two publications share it.
- ``triows:{c}:n:<node>`` a hash per channel and node: publication token -> seq, for each
  publication of the channel the node sent and has not yet seen the answer of. A resend after
  a lost reply, however late, finds its first seq here instead of publishing twice; the node
  deletes the fields of answered publications with its next batch, so the hashes hold at most
  about one outage buffer.
- ``triows:{c}:p`` the channel's presence hash (:func:`triows._core.presence.key`).

Node-wide names hold no data: ``triows:ctl:<node>`` (a node's control channel) and
``triows:presence`` (presence events) are classic pub/sub channels, which a cluster carries to
every node.

Layout 1 (before Redis Cluster support) named the keys ``triows:s:c``, ``triows:l:c``, ...
without a tag. A node of this version does not read them: a channel numbered there starts a
new epoch here (clients are told they cannot know what they missed, nothing is numbered
twice), and a node that finds nodes of layout 1 still following channels in the same Redis
says so at start (:data:`LAYOUT_1_PUBSUB_PATTERN`).

Both scripts refresh the channel's keys' ttl; a node refreshes the channels it serves.
"""

from __future__ import annotations

from .feed import Entry

NO_SENDER = "-"


class MalformedError(ValueError):
    """A pub/sub message or stream entry that is not in triows' layout."""


def _ensure_numbering(new_epoch: str) -> str:
    """Lua: the channel's epoch, creating its numbering (and dropping a stale stream) when
    Redis has none; ``new_epoch`` is the ARGV holding the epoch to create."""
    return f"""
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = {new_epoch}
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'seq', 0)
end
"""


#: Lua: trim the stream ``KEYS[2]``, whose last entry is ``seq``. Kept: the newest ``keep``
#: entries (the history size) and every entry appended at or after ``cutoff`` (Redis ms). Both
#: leave a prefix of the stream to remove (entries are appended in seq order, and ``a`` only
#: grows unless Redis' clock steps back, which only keeps more). Looks at up to ``count`` head
#: entries: the publish script runs it on every 16th seq with 32, so it keeps up with any rate
#: at a bounded cost per publication. XTRIM is a write Redis allows at ``maxmemory``
#: (it frees memory), so :data:`TRIM_SCRIPT` can run while publications are refused.
TRIM = """
local function trim(seq, keep, cutoff, count)
  if redis.call('XLEN', KEYS[2]) <= keep then
    return
  end
  local cut = nil
  for _, entry in ipairs(redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', count)) do
    local entry_seq = tonumber(string.match(entry[1], '^%d+'))
    if entry_seq > seq - keep then
      break
    end
    local fields, added = entry[2], 0
    for i = 1, #fields, 2 do
      if fields[i] == 'a' then
        added = tonumber(fields[i + 1])
      end
    end
    if added >= cutoff then
      break
    end
    cut = entry_seq
  end
  if cut then
    redis.call('XTRIM', KEYS[2], 'MINID', (cut + 1) .. '-0')
  end
end

local function redis_ms()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end
"""

#: Entries :data:`TRIM_SCRIPT` looks at per call.
TRIM_COUNT = 1024

#: KEYS: (unused), stream. ARGV: history size (entries always kept), retention ms, how many
#: head entries to look at. Trims by the same rule as the publish script, and nothing else: a
#: node whose publications Redis refuses at ``maxmemory`` runs it for the channels it holds
#: publications for (the publish script cannot trim then: its first write is refused). Returns
#: how many entries went.
TRIM_SCRIPT = (
    TRIM
    + """
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)[1]
if not last then
  return 0
end
local before = redis.call('XLEN', KEYS[2])
trim(tonumber(string.match(last[1], '^%d+')), tonumber(ARGV[1]),
  redis_ms() - tonumber(ARGV[2]), tonumber(ARGV[3]))
return before - redis.call('XLEN', KEYS[2])
"""
)

#: The publish script's refusal of a publication whose predecessor did not run (a ``TRYAGAIN``
#: error: redis-py's TryAgainError, sent again like any refusal for now).
OUT_OF_ORDER = "TRYAGAIN the publication before this one on its channel was not taken"

#: KEYS: numbering, stream, dedupe key, the node's pending hash. ARGV: payload head (up to
#: ``"seq":``), epoch to create, pub/sub channel, history size (entries always kept), key ttl
#: ms, dedupe ttl ms (0: no dedupe id), :func:`origin`, timestamp ms, token (the pending field),
#: retention ms (entries younger than this are kept; ``-1``: trim nothing now, see
#: ``RedisBroker``), the pending field of this node's publication of the same channel sent
#: just before in the same pipeline (``''``: none), and the publish command (:data:`PUBLISH`
#: on one Redis, :data:`SPUBLISH` on a cluster). Returns ``{seq, epoch, 1 if it was a
#: duplicate else 0}``.
#:
#: A pipeline is not a transaction: when Redis refuses one script (out of memory, say) the
#: next ones still run. A publication whose predecessor of the same channel did not run is
#: refused (:data:`OUT_OF_ORDER`, before any write), so that the predecessor, sent again, is
#: still numbered first: a publisher's messages keep their order whatever Redis refuses.
PUBLISH_SCRIPT = (
    TRIM
    + """
local done = redis.call('HGET', KEYS[4], ARGV[9])
if not done and ARGV[6] ~= '0' then
  done = redis.call('GET', KEYS[3])
end
if done then
  redis.call('HSET', KEYS[4], ARGV[9], done)
  return {tonumber(done), redis.call('HGET', KEYS[1], 'epoch') or '', 1}
end
if ARGV[11] ~= '' and not redis.call('HGET', KEYS[4], ARGV[11]) then
  return redis.error_reply('"""
    + OUT_OF_ORDER
    + """')
end
"""
    + _ensure_numbering("ARGV[2]")
    + """
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local payload = ARGV[1] .. seq .. ',"id":"' .. epoch .. ':' .. seq .. '"}'
local now = redis_ms()
redis.call('XADD', KEYS[2], seq .. '-0', 'p', payload, 't', ARGV[8], 'o', ARGV[7], 'a', now)
if ARGV[10] ~= '-1' and seq % 16 == 0 then
  trim(seq, tonumber(ARGV[4]), now - tonumber(ARGV[10]), 32)
end
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
if ARGV[6] ~= '0' then
  redis.call('SET', KEYS[3], seq, 'PX', ARGV[6])
end
redis.call('HSET', KEYS[4], ARGV[9], seq)
redis.call('PEXPIRE', KEYS[4], ARGV[5])
redis.call(ARGV[12], ARGV[3], seq .. ' ' .. epoch .. ' ' .. ARGV[7] .. '\\n' .. payload)
return {seq, epoch, 0}
"""
)

#: KEYS: numbering, stream. ARGV: epoch to create, key ttl ms, the epoch and seq this node
#: delivered last (``''`` and 0: none). Returns ``{seq, epoch}``.
#:
#: A numbering found *below* what the node delivered in the same epoch means Redis lost
#: acknowledged writes (a failover to a replica that lagged, a restart from an older file):
#: the script raises it to what the node delivered, so those numbers are never given again
#: (they would reach the node's subscribers as duplicates and be dropped) and a client that
#: resumes sees the lost ones as an exact gap.
JOIN_SCRIPT = (
    _ensure_numbering("ARGV[1]")
    + """
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq'))
if epoch == ARGV[3] and seq < tonumber(ARGV[4]) then
  seq = tonumber(ARGV[4])
  redis.call('HSET', KEYS[1], 'seq', seq)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return {seq, epoch}
"""
)


#: The pub/sub command of one Redis, and the sharded one of a cluster (the publish script's
#: last argument).
PUBLISH = "PUBLISH"
SPUBLISH = "SPUBLISH"


def channel_prefix(channel: str) -> str:
    """The prefix of every key of ``channel``: its hash tag decides its cluster slot."""
    return f"triows:{{{channel}}}:"


def numbering_key(channel: str) -> str:
    return channel_prefix(channel) + "s"


def stream_key(channel: str) -> str:
    return channel_prefix(channel) + "l"


def pubsub_channel(channel: str) -> str:
    return channel_prefix(channel) + "m"


def channel_of(pubsub: str) -> str | None:
    """The channel whose pub/sub channel is ``pubsub``; None for another name."""
    if pubsub.startswith("triows:{") and pubsub.endswith("}:m"):
        return pubsub[len("triows:{") : -len("}:m")]
    return None


def dedupe_key(channel: str, *parts: str) -> str:
    """The key of one dedupe entry of ``channel``: each part length-prefixed
    (``<len>:<part>``), so parts that contain ``:`` (user ids) can never run into each other."""
    return channel_prefix(channel) + "o:" + "".join(f"{len(part)}:{part}" for part in parts)


def pending_key(node_id: str, channel: str) -> str:
    """This node's pending publications of ``channel`` (in the channel's slot: the publish
    script writes it with the channel's other keys)."""
    return channel_prefix(channel) + "n:" + node_id


def control_channel(node_id: str) -> str:
    return f"triows:ctl:{node_id}"


#: The pub/sub channels nodes of layout 1 follow (``triows:m:<channel>``): found at start, they
#: mean nodes of an older version share this Redis, numbering apart from this one.
LAYOUT_1_PUBSUB_PATTERN = "triows:m:*"


def payload_head(payload_without_seq: bytes) -> bytes:
    """``message_payload(..., seq=0, message_id="")`` cut before its seq: the script appends
    the seq and id Redis assigns."""
    head, found, _ = payload_without_seq.rpartition(b',"seq":')
    if not found:
        raise ValueError("not a message payload")
    return head + b',"seq":'


def origin(token: str, sender_client_id: str | None) -> str:
    """What :data:`PUBLISH_SCRIPT` stores and publishes as the message's origin."""
    return f"{token} {sender_client_id or NO_SENDER}"


def _parse_origin(text: str) -> tuple[str, str | None]:
    token, _, sender = text.partition(" ")
    return token, (None if sender in ("", NO_SENDER) else sender)


def parse_published(data: bytes) -> Entry:
    """A pub/sub message from :data:`PUBLISH_SCRIPT`; :class:`MalformedError` otherwise."""
    header, found, payload = data.partition(b"\n")
    try:
        seq, epoch, rest = header.decode("ascii").split(" ", 2)
        token, sender = _parse_origin(rest)
        number = int(seq)
    except ValueError as exc:  # UnicodeDecodeError is one
        raise MalformedError(f"bad header {header[:60]!r}") from exc
    if not found or number < 1 or not epoch or not payload.startswith(b"{"):
        raise MalformedError(f"bad message {data[:60]!r}")
    return Entry(seq=number, epoch=epoch, payload=payload, token=token, sender=sender)


def parse_stream_entry(
    entry_id: bytes, fields: dict[bytes, bytes], epoch: str
) -> tuple[Entry, int]:
    """A stream entry from :data:`PUBLISH_SCRIPT` and its timestamp in ms."""
    token, sender = _parse_origin(fields.get(b"o", b"").decode("ascii"))
    seq = int(entry_id.split(b"-", 1)[0])
    entry = Entry(seq=seq, epoch=epoch, payload=fields[b"p"], token=token, sender=sender)
    return entry, int(fields.get(b"t", b"0"))
