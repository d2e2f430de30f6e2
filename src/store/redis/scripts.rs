//! The Lua scripts. Each touches the keys of one route only (one hash tag, so one Cluster
//! slot) and runs atomically: no other command sees a half-done accept, lease or settle.
//! Event keys are built inside a script from the route's tag (ARGV), as BullMQ does; they
//! share the tag, so this holds on a Cluster too.
//!
//! Redis does not roll a script back when a command in it fails; the scripts order their
//! writes so that a failure part-way leaves nothing a reader could misread (the dedupe key is
//! written last in `ACCEPT`; a stream entry is created only for an event that exists).

use std::sync::LazyLock;

use ::redis::Script;

/// KEYS: ev, stream, pending, [dedupe keys: the key, and a second one recorded beside it].
/// ARGV: id, received_at, ttl_ms, then the event hash's field/value pairs. Returns `{1, id}`
/// (accepted) or `{0, original_id}` (a duplicate by either key, counted in the original's
/// `duplicates`).
pub static ACCEPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
for i = 4, #KEYS do
  local orig = redis.call('GET', KEYS[i])
  if orig then
    -- Counted with the original while it is kept (its key may outlive it): KEYS[1] is this
    -- request's event key, the original's is the same but for the id. Best effort (pcall):
    -- a Redis refusing writes (maxmemory, MISCONF) still answers the duplicate.
    local evo = string.sub(KEYS[1], 1, #KEYS[1] - #ARGV[1]) .. orig
    if redis.call('EXISTS', evo) == 1 then
      redis.pcall('HINCRBY', evo, 'duplicates', 1)
      local last = tonumber(redis.call('HGET', evo, 'last_duplicate_at')) or 0
      if tonumber(ARGV[2]) > last then redis.pcall('HSET', evo, 'last_duplicate_at', ARGV[2]) end
    end
    return {0, orig}
  end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
local entry = redis.call('XADD', KEYS[2], '*', 'id', ARGV[1])
redis.call('HSET', KEYS[1], 'entry', entry)
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
for i = 4, #KEYS do redis.call('SET', KEYS[i], ARGV[1], 'PX', ARGV[3]) end
return {1, ARGV[1]}
"#,
    )
});

/// KEYS: stream, retry, claim cursor. ARGV: group, consumer, now, limit, min_idle_ms, tag,
/// byte budget. Once the events taken hold more body bytes than the budget no more are read
/// (at least one always is): the reply is built while Redis runs nothing else, for every
/// replica, and 128 events of 1 MiB held it 0.7 s. Entries are claimed and read 16 at a time,
/// so the budget is passed by at most 16 events.
/// Moves due retries into the stream, reclaims entries idle longer than `min_idle_ms` (a dead
/// replica's), reads new entries; drops stale entries (event gone, not pending, or replayed
/// since). Returns `{{entry_id, {field, value, …}, reclaimed (1: taken from an idle lease, 0:
/// new)}, …}`, then `{entry_id, event_id}` for
/// each entry whose event Redis no longer holds (lost: evicted, flushed, a lagging replica). `XAUTOCLAIM` looks at no more than
/// 10 × COUNT pending entries per call, so the scan goes on from where the last one stopped
/// (the cursor key): starting from the front every time, entries of live, long attempts at the
/// head of the pending list hid abandoned ones behind them until those attempts ended.
pub static LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local stream, retry = KEYS[1], KEYS[2]
local group, consumer, now = ARGV[1], ARGV[2], ARGV[3]
local limit, min_idle, tag = tonumber(ARGV[4]), ARGV[5], ARGV[6]
local budget, bytes = tonumber(ARGV[7]), 0
local out, missing = {}, {}
local function full() return #out >= limit or bytes >= budget end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', retry, '-inf', now, 'LIMIT', 0, limit)) do
  redis.call('ZREM', retry, id)
  local ev = tag .. 'ev:' .. id
  local state = redis.call('HGET', ev, 'state')
  if state == 'pending' then
    redis.call('HSET', ev, 'entry', redis.call('XADD', stream, '*', 'id', id))
  elseif not state then
    missing[#missing + 1] = {'retry', id}
  end
end
redis.pcall('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
local function take(entries, claimed)
  for _, e in ipairs(entries) do
    local eid, f, id = e[1], e[2], nil
    if f then
      for i = 1, #f, 2 do if f[i] == 'id' then id = f[i + 1] end end
    end
    local cur = id and redis.call('HMGET', tag .. 'ev:' .. id, 'state', 'entry')
    if cur and cur[1] == 'pending' and cur[2] == eid then
      out[#out + 1] = {eid, redis.call('HGETALL', tag .. 'ev:' .. id), claimed}
      bytes = bytes + (tonumber(redis.call('HGET', tag .. 'ev:' .. id, 'body_len')) or 0)
    else
      if cur and not cur[1] then missing[#missing + 1] = {eid, id} end
      redis.call('XACK', stream, group, eid)
      redis.call('XDEL', stream, eid)
    end
  end
end
local start = redis.call('GET', KEYS[3]) or '0-0'
local cursor = start
for _ = 1, 4 do
  local claimed = redis.call('XAUTOCLAIM', stream, group, consumer, min_idle, cursor, 'COUNT', math.min(limit - #out, 16))
  take(claimed[2], 1)
  cursor = claimed[1]
  if cursor == '0-0' or full() then break end
end
-- Written only when it moved: an idle lease writes nothing (no AOF fsync).
if cursor ~= start then
  if cursor == '0-0' then redis.call('DEL', KEYS[3]) else redis.call('SET', KEYS[3], cursor) end
end
for _ = 1, math.ceil(limit / 16) + 3 do
  if full() then break end
  local r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', math.min(limit - #out, 16), 'STREAMS', stream, '>')
  if not r then break end
  take(r[1][2], 0)
end
for _, m in ipairs(missing) do out[#out + 1] = m end
return out
"#,
    )
});

/// KEYS: stream, retry. ARGV: group, now. When the earliest pending event not leased is due:
/// now if the stream holds entries no consumer has read, else the earliest retry, else nil.
pub static NEXT_DUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 1 then
  local last = '0-0'
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local name, lid = nil, nil
    for i = 1, #g, 2 do
      if g[i] == 'name' then name = g[i + 1] end
      if g[i] == 'last-delivered-id' then lid = g[i + 1] end
    end
    if name == ARGV[1] then last = lid end
  end
  if #redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', 1) > 0 then
    return tonumber(ARGV[2])
  end
end
local r = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if r[2] then return tonumber(r[2]) end
return false
"#,
    )
});

/// KEYS: retry. ARGV: tag, beyond, now, limit. Up to `limit` retries scheduled after `beyond`
/// become due at `now` (their score and the event's `next_attempt_at`); returns how many.
pub static BRING_FORWARD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[2], '+inf', 'LIMIT', 0, tonumber(ARGV[4]))
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], ARGV[3], id)
  local ev = ARGV[1] .. 'ev:' .. id
  if redis.call('HGET', ev, 'state') == 'pending' then
    redis.call('HSET', ev, 'next_attempt_at', ARGV[3])
  end
end
return #ids
"#,
    )
});

/// KEYS: stream. ARGV: group, consumer, entry ids. Resets the idle time of the entries this
/// consumer still owns, so no other replica reclaims an attempt that is only slow.
pub static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local kept = 0
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if #p > 0 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    kept = kept + 1
  end
end
return kept
"#,
    )
});

/// KEYS: ev, log, stream, retry, pending, delivered, dead, gc.
/// ARGV: group, entry ('' if unknown), attempt JSON, log cap, state, next_at, error ('' for
/// none), now, n, retention_ms, id, the cycle start the lease saw, the attempt's start.
/// Returns 1 (settled), 2 (attempt logged, but the event was replayed or taken over since the
/// lease, so the newer entry decides its state), 3 (this entry's attempt was settled already:
/// a settle retried after its reply was lost; nothing is logged twice), 0 (no such event). A
/// replay made after the lease but before a delivering attempt began is answered by it:
/// settled (1), and the replay's entry is dropped.
pub static SETTLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local ev, log, stream, retry = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group, entry, state, id = ARGV[1], ARGV[2], ARGV[5], ARGV[11]
if entry ~= '' then
  redis.call('XACK', stream, group, entry)
  redis.call('XDEL', stream, entry)
end
if redis.call('EXISTS', ev) == 0 then return 0 end
-- The attempt: its entry and start (a replica taking over a lapsed lease shares the entry,
-- not the start, and its attempt is logged too).
local attempt = entry .. '@' .. ARGV[13]
if entry ~= '' then
  if redis.call('HGET', ev, 'settled') == attempt then return 3 end
  redis.call('HSET', ev, 'settled', attempt)
end
redis.call('RPUSH', log, ARGV[3])
redis.call('LTRIM', log, -tonumber(ARGV[4]), -1)
local cur = redis.call('HMGET', ev, 'attempts', 'entry', 'received_at', 'cycle_started_at',
  'replay_pending')
if tonumber(ARGV[9]) > (tonumber(cur[1]) or 0) then
  redis.call('HSET', ev, 'attempts', ARGV[9])
end
if cur[5] and entry ~= '' and cur[2] == entry then
  -- Replayed while this attempt was out: the replay already reset the event; it is answered
  -- by a delivering attempt that began after it, else it gets its own entry now.
  redis.call('HDEL', ev, 'replay_pending')
  local cycle = tonumber(cur[4] or cur[3]) or 0
  if not (state == 'delivered' and cycle < tonumber(ARGV[13])) then
    redis.call('HSET', ev, 'entry', redis.call('XADD', stream, '*', 'id', id))
    return 2
  end
end
if entry ~= '' and cur[2] ~= entry then
  local cycle = tonumber(cur[4] or cur[3]) or 0
  local replayed_before = state == 'delivered' and cur[2]
    and cycle ~= tonumber(ARGV[12]) and cycle < tonumber(ARGV[13])
  if not replayed_before then return 2 end
  redis.call('XACK', stream, group, cur[2])
  redis.call('XDEL', stream, cur[2])
end
redis.call('HDEL', ev, 'entry', 'replay_pending')
redis.call('HINCRBY', ev, 'cycle_attempts', 1)
redis.call('HSET', ev, 'state', state, 'updated_at', ARGV[8])
if ARGV[7] ~= '' then
  redis.call('HSET', ev, 'last_error', ARGV[7])
else
  redis.call('HDEL', ev, 'last_error')
end
local score = cur[3] or ARGV[8]
redis.call('ZREM', KEYS[5], id)
redis.call('ZREM', KEYS[6], id)
redis.call('ZREM', KEYS[7], id)
if state == 'pending' then
  redis.call('HSET', ev, 'next_attempt_at', ARGV[6])
  redis.call('ZADD', KEYS[5], score, id)
  redis.call('ZADD', retry, ARGV[6], id)
else
  redis.call('HDEL', ev, 'next_attempt_at')
  redis.call('ZREM', retry, id)
  if state == 'delivered' then
    redis.call('ZADD', KEYS[6], score, id)
  else
    redis.call('ZADD', KEYS[7], score, id)
  end
end
if state == 'delivered' then
  redis.call('ZADD', KEYS[8], ARGV[8], id)
  redis.call('PEXPIRE', ev, ARGV[10])
  redis.call('PEXPIRE', log, ARGV[10])
else
  redis.call('ZREM', KEYS[8], id)
  redis.call('PERSIST', ev)
  redis.call('PERSIST', log)
end
return 1
"#,
    )
});

/// The body shared by the two replay scripts: makes `id` pending, due now, with a fresh retry
/// budget, and gives it a new stream entry (an older entry becomes stale and is dropped). An
/// event whose entry a replica is delivering right now (read, not acknowledged) gets no new
/// entry, which another replica could lease while that attempt is out: it is flagged, and the
/// attempt's settle gives it its entry (see `SETTLE`).
macro_rules! replay_fn {
    () => {
        r#"
local function replay(tag, id, now, group, visibility)
  local ev = tag .. 'ev:' .. id
  if redis.call('EXISTS', ev) == 0 then return 0 end
  -- The mark in the event's history, in its attempt log (a reader that knows only attempts
  -- skips it): when, after which attempt, from which state. Built by hand: every part is
  -- digits or one of the state names.
  local was = redis.call('HMGET', ev, 'state', 'attempts')
  redis.call('RPUSH', tag .. 'log:' .. id, '{"replayed_at_ms":' .. now .. ',"after_attempts":'
    .. (tonumber(was[2]) or 0) .. ',"was":"' .. (was[1] or 'pending') .. '"}')
  -- The log's cap (LOG_CAP), as SETTLE keeps it: replays with no attempt between them too.
  redis.call('LTRIM', tag .. 'log:' .. id, -100, -1)
  local entry = redis.call('HGET', ev, 'entry')
  local out = false
  if entry then
    -- Read, not acknowledged, and renewed within the visibility timeout: an attempt is out.
    -- An entry idle longer is abandoned (its replica died): a new entry replaces it at once.
    local p = redis.pcall('XPENDING', tag .. 'stream', group, entry, entry, 1)
    out = type(p) == 'table' and not p.err and #p > 0 and p[1][3] < tonumber(visibility)
  end
  local score = redis.call('HGET', ev, 'received_at') or now
  redis.call('HSET', ev, 'state', 'pending', 'next_attempt_at', now, 'cycle_attempts', 0,
    'cycle_started_at', now, 'updated_at', now)
  redis.call('HDEL', ev, 'last_error')
  redis.call('ZREM', tag .. 'retry', id)
  redis.call('ZREM', tag .. 'delivered', id)
  redis.call('ZREM', tag .. 'dead', id)
  redis.call('ZREM', tag .. 'gc', id)
  redis.call('ZADD', tag .. 'pending', score, id)
  redis.call('PERSIST', ev)
  redis.call('PERSIST', tag .. 'log:' .. id)
  if out then
    redis.call('HSET', ev, 'replay_pending', 1)
  else
    redis.call('HDEL', ev, 'replay_pending')
    redis.call('HSET', ev, 'entry', redis.call('XADD', tag .. 'stream', '*', 'id', id))
  end
  return 1
end
"#
    };
}

/// KEYS: ev, log, stream, retry, pending, delivered, dead, gc. ARGV: tag, id, now, group,
/// visibility timeout (ms).
pub static REPLAY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        replay_fn!(),
        "return replay(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])\n"
    ))
});

/// KEYS: stream, retry, pending, delivered, dead, gc. ARGV: tag, now, group, visibility
/// timeout (ms), cursor score, cursor id, batch. Replays, of the next `batch` dead events after
/// the cursor (the set's order: score, then id; `''` for the cursor id starts at the head),
/// those that died before `now` (the redrive's start). One that died again since an earlier
/// batch of the same redrive replayed it is left; it stays in the set, behind the cursor.
/// The cursor is a position, not a rank, so events leaving the set meanwhile (another
/// replay, a purge) shift nothing past it. Returns `{replayed, looked_at, score, id}` of the
/// last event looked at.
pub static REPLAY_DEAD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        replay_fn!(),
        r#"
local tag, now = ARGV[1], tonumber(ARGV[2])
local cs, cid, batch = ARGV[5], ARGV[6], tonumber(ARGV[7])
local start = 0
if cid ~= '' then
  start = redis.call('ZCOUNT', KEYS[5], '-inf', '(' .. cs)
  -- Ties are in byte order in the set; Lua compares with strcoll, which orders event ids
  -- (one fixed format of lowercase hex and dashes) the same way in any locale.
  for _, t in ipairs(redis.call('ZRANGEBYSCORE', KEYS[5], cs, cs)) do
    if t <= cid then start = start + 1 end
  end
end
local page = redis.call('ZRANGE', KEYS[5], start, start + batch - 1, 'WITHSCORES')
local n, looked, ls, lid = 0, 0, cs, cid
for i = 1, #page, 2 do
  local id = page[i]
  looked, ls, lid = looked + 1, page[i + 1], id
  local f = redis.call('HMGET', tag .. 'ev:' .. id, 'state', 'updated_at')
  if not f[1] then
    redis.call('ZREM', KEYS[5], id)
  elseif f[1] == 'dead' and (tonumber(f[2]) or 0) < now then
    n = n + replay(tag, id, ARGV[2], ARGV[3], ARGV[4])
  end
end
return {n, looked, ls, lid}
"#
    ))
});

/// KEYS: ev, log, dead. ARGV: id. Deletes the event and its attempt log if it is dead (its
/// dedupe key stays); returns 1, or 0 when it is not dead or not there.
pub static DISCARD_DEAD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HGET', KEYS[1], 'state') ~= 'dead' then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
"#,
    )
});

/// KEYS: gc, delivered. ARGV: cutoff, batch, tag. Forgets up to `batch` events delivered
/// before `cutoff`; returns how many.
pub static PURGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  redis.call('DEL', ARGV[3] .. 'ev:' .. id, ARGV[3] .. 'log:' .. id)
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZREM', KEYS[1], id)
end
return #ids
"#,
    )
});
