-- godwit's guarded writes: a batch of operations on keys of one hash slot (any keys on a standalone server). Every write carries
-- its change's version (32 hex digits: _lsn then _seq, 16 each) and is refused when the key (or
-- member) already holds that version or a newer one, or a tombstone says it was deleted at or
-- after it. So a replay after a crash, or a re-warm racing newer changes, can neither regress
-- nor resurrect anything.
--
-- ARGV[1]: tombstone lifetime in ms; ARGV[2]: version field name inside hashes; ARGV[3]: '1'
-- when KEYS[1] is the high-water key of the call's group of keys, '' without one.
-- Then one operation after another: ARGV opcode, version, arguments; KEYS in order of use
-- (`F` only declares the field names of the `f` operations after it: no version, no key).
-- Returns the number of operations refused as older.
--
-- The high-water key holds the newest version any change wrote to the group: at its end, a call
-- raises it to the newest version it wrote. A load's bulk writes check it (WATCH, GET, MULTI …
-- EXEC): below their version, no key of the group can hold a newer one. It is only raised where
-- it exists; `W` sets it (a load's start, see the writer).

local tomb_ms = tonumber(ARGV[1])
local vfield = ARGV[2]

-- a > b for two versions (nil/false is older than anything). Versions are fixed-width uppercase
-- hex, so their string order is their numeric order (Lua compares strings with strcoll; every
-- locale orders 0-9 before A-F and keeps each apart).
local function newer(a, b)
  if not b then return true end
  if not a then return false end
  return a > b
end

-- Whether a write at version ver may go ahead over the version cur the key (or member) holds:
-- it must be newer; with no version there, no tombstone t may say it was deleted at or after
-- ver. A key that holds a version has no newer tombstone (a write removes the tombstone), so
-- the tombstone is read only when the key is absent. Returns the answer and whether a tombstone
-- is there (a write removes it).
local function allowed(ver, cur, t)
  if cur then return newer(ver, cur), false end
  local gone = redis.call('GET', t)
  return newer(ver, gone), gone
end

local function expire(key, mode, value)
  if mode == 'px' then
    redis.call('PEXPIRE', key, value)
  elseif mode == 'at' then
    redis.call('PEXPIREAT', key, value)
  elseif mode == 'persist' then
    redis.call('PERSIST', key)
  end
end

-- The members of a flat JSON object as godwit wrote it: raw name (with its quotes) -> raw value.
local function members(doc)
  local out, i, n = {}, 2, #doc
  while i <= n do
    local c = string.sub(doc, i, i)
    if c == '"' then
      local j = i + 1
      while true do
        local ch = string.sub(doc, j, j)
        if ch == '\\' then j = j + 2 elseif ch == '"' or ch == '' then break else j = j + 1 end
      end
      local name = string.sub(doc, i, j)
      local colon = string.find(doc, ':', j + 1, true)
      if not colon then break end
      local e, depth, instr = colon + 1, 0, false
      while e <= n do
        local ch = string.sub(doc, e, e)
        if instr then
          if ch == '\\' then e = e + 1 elseif ch == '"' then instr = false end
        elseif ch == '"' then instr = true
        elseif ch == '{' or ch == '[' then depth = depth + 1
        elseif ch == '}' or ch == ']' then
          if depth == 0 then break end
          depth = depth - 1
        elseif ch == ',' and depth == 0 then break end
        e = e + 1
      end
      out[name] = string.sub(doc, colon + 1, e - 1)
      i = e + 1
    else
      i = i + 1
    end
  end
  return out
end

local ki, ai, refused = 1, 4, 0
-- The high-water key, its version (false when absent), and the newest version written.
local hwkey, hw, top = false, false, false
if ARGV[3] == '1' then
  hwkey = KEYS[1]
  ki = 2
  hw = redis.call('GET', hwkey)
end
local function wrote(ver)
  if not top or ver > top then top = ver end
end

-- A string or json value written with its version key (both with the expiry); the tombstone goes
-- when `gone` says there was one.
local function put(k, v, t, gone, val, ver, mode, value)
  if gone then redis.call('DEL', t) end
  redis.call('SET', k, val)
  redis.call('SET', v, ver)
  expire(k, mode, value)
  expire(v, mode, value)
  wrote(ver)
end
local function key() ki = ki + 1; return KEYS[ki - 1] end
local function arg() ai = ai + 1; return ARGV[ai - 1] end

local call = redis.call

-- `f`: the declared field names, each followed by the value of the operation being applied; the
-- version field and the version lead (HSET's arguments, one table used for every operation).
local row, nfields = {vfield, false}, 0

local nargs = #ARGV
-- The operations, one after another. Run under pcall: Redis keeps the writes of a script that
-- fails half way (a WRONGTYPE, an out-of-range position), and the high-water key must cover them.
local function run()
  while ai <= nargs do
    local op, ver = ARGV[ai], ARGV[ai + 1]
    ai = ai + 2
    if op == 'f' then
      -- hash row with a value for every declared field and no expiry: KEYS key, tombstone;
      -- ARGV value… (one per field of the last `F`). The most frequent operation: read in place,
      -- one table for every row, the guard inlined (as in `H`; see `allowed`).
      local k = KEYS[ki]
      local cur, gone, ok = call('HGET', k, vfield), false, false
      if cur then
        ok = ver > cur
      else
        gone = call('GET', KEYS[ki + 1])
        ok = (not gone) or ver > gone
      end
      if ok then
        if gone then call('DEL', KEYS[ki + 1]) end
        row[2] = ver
        for i = 1, nfields do row[2 + 2 * i] = ARGV[ai + i - 1] end
        call('HSET', k, unpack(row, 1, 2 + 2 * nfields))
        wrote(ver)
      else
        refused = refused + 1
      end
      ki = ki + 2
      ai = ai + nfields
    elseif op == 'F' then
      -- the field names of the `f` operations that follow: ARGV (in the version's place) their
      -- number, then the names.
      nfields = tonumber(ver)
      for i = 1, nfields do row[1 + 2 * i] = ARGV[ai + i - 1] end
      ai = ai + nfields
    elseif op == 'H' then
      -- any hash row: KEYS key, tombstone; ARGV nset, field, value…, ndel, field…, expire mode,
      -- value. Read in place, no tables built; the version field is written with the fields.
      local k, t = KEYS[ki], KEYS[ki + 1]
      ki = ki + 2
      local nset = tonumber(ARGV[ai])
      local s = ai + 1
      ai = s + nset * 2
      local ndel = tonumber(ARGV[ai])
      local d = ai + 1
      ai = d + ndel
      local mode, value = ARGV[ai], ARGV[ai + 1]
      ai = ai + 2
      local cur, gone, ok = call('HGET', k, vfield), false, false
      if cur then
        ok = ver > cur
      else
        gone = call('GET', t)
        ok = (not gone) or ver > gone
      end
      if ok then
        if gone then call('DEL', t) end
        if ndel > 0 then call('HDEL', k, unpack(ARGV, d, d + ndel - 1)) end
        call('HSET', k, vfield, ver, unpack(ARGV, s, s + nset * 2 - 1))
        if mode ~= '' then expire(k, mode, value) end
        wrote(ver)
      else
        refused = refused + 1
      end
    elseif op == 'S' then
      -- string or json value: KEYS key, version key, tombstone; ARGV value, expire mode, value
      local k, v, t = key(), key(), key()
      local val, mode, value = arg(), arg(), arg()
      local ok, gone = allowed(ver, redis.call('GET', v), t)
      if ok then
        put(k, v, t, gone, val, ver, mode, value)
      else
        refused = refused + 1
      end
    elseif op == 'J' then
      -- json document with unsent columns: KEYS key, version key, tombstone;
      -- ARGV nfields, then per field its name (a JSON string), '1' value or '0' '' (keep the cached
      -- value), expire mode, value. The cached document is one we wrote: a flat object.
      local k, v, t = key(), key(), key()
      local n = tonumber(arg())
      local fields = {}
      for i = 1, n do fields[i] = {arg(), arg(), arg()} end
      local mode, value = arg(), arg()
      local ok, gone = allowed(ver, redis.call('GET', v), t)
      if ok then
        local old = members(redis.call('GET', k) or '{}')
        local out = {}
        for i = 1, n do
          local f = fields[i]
          local raw = f[3]
          if f[2] == '0' then raw = old[f[1]] or 'null' end
          out[i] = f[1] .. ':' .. raw
        end
        put(k, v, t, gone, '{' .. table.concat(out, ',') .. '}', ver, mode, value)
      else
        refused = refused + 1
      end
    elseif op == 'd' then
      -- delete a hash (it holds its version): KEYS key, tombstone
      local k, t = key(), key()
      if allowed(ver, call('HGET', k, vfield), t) then
        call('DEL', k)
        call('SET', t, ver, 'PX', tomb_ms)
        wrote(ver)
      else
        refused = refused + 1
      end
    elseif op == 'D' then
      -- delete a whole key: KEYS key, version key, tombstone
      local k, v, t = key(), key(), key()
      if allowed(ver, redis.call('GET', v), t) then
        redis.call('DEL', k)
        redis.call('DEL', v)
        redis.call('SET', t, ver, 'PX', tomb_ms)
        wrote(ver)
      else
        refused = refused + 1
      end
    elseif op == 'M' then
      -- add a member: KEYS key, member versions, member tombstone;
      -- ARGV command (ZADD|SADD|GEOADD), member, then the command's values before the member
      local k, m, t = key(), key(), key()
      local cmd, member, n = arg(), arg(), 0
      local values = {}
      if cmd == 'ZADD' then n = 1 elseif cmd == 'GEOADD' then n = 2 end
      for i = 1, n do values[i] = arg() end
      local ok, gone = allowed(ver, redis.call('HGET', m, member), t)
      if ok then
        if gone then redis.call('DEL', t) end
        values[#values + 1] = member
        redis.call(cmd, k, unpack(values))
        redis.call('HSET', m, member, ver)
        wrote(ver)
      else
        refused = refused + 1
      end
    elseif op == 'R' then
      -- remove a member: KEYS key, member versions, member tombstone; ARGV command (ZREM|SREM), member
      local k, m, t = key(), key(), key()
      local cmd, member = arg(), arg()
      if allowed(ver, redis.call('HGET', m, member), t) then
        redis.call(cmd, k, member)
        redis.call('HDEL', m, member)
        redis.call('SET', t, ver, 'PX', tomb_ms)
        wrote(ver)
      else
        refused = refused + 1
      end
    elseif op == 'X' then
      -- stream entry: KEYS stream; ARGV (the version is the entry id) maxlen or '', nfields, field, value…
      local k = key()
      local maxlen, n = arg(), tonumber(arg())
      local args = {k}
      if maxlen ~= '' then
        args[#args + 1] = 'MAXLEN'; args[#args + 1] = '~'; args[#args + 1] = maxlen
      end
      args[#args + 1] = ver
      for i = 1, n * 2 do args[#args + 1] = arg() end
      -- an id at or below the stream's last is a replay: Redis refuses it, the stream stays as it is
      local ok = redis.pcall('XADD', unpack(args))
      if type(ok) == 'table' and ok.err then refused = refused + 1 end
    elseif op == 'W' then
      -- raise the high-water key to the version; ARGV '1': create it when absent (a load that no
      -- change can race: every version written so far is older than its snapshot), '': only raise
      -- one that exists (an absent one says nothing)
      local create = arg()
      if hwkey and ((hw and ver > hw) or (not hw and create == '1')) then
        redis.call('SET', hwkey, ver)
        hw = ver
      end
    else
      error({err = 'godwit: unknown operation ' .. tostring(op)})
    end
  end
end

local ok, failure = pcall(run)
if hw and top and top > hw then redis.call('SET', hwkey, top) end
if not ok then
  if type(failure) == 'table' and failure.err then return redis.error_reply(failure.err) end
  return redis.error_reply(tostring(failure))
end
return refused
