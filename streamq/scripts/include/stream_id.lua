-- stream_id (included by scripts/__init__.py where a script says ``--#include
-- stream_id``): the order of two stream entry ids, one copy for every script
-- that compares them.

-- Whether stream id a sorts before b ('<ms>-<seq>', decimals of any length, so
-- no precision is lost to Lua's doubles). Cheap on purpose (no captures): equal
-- lengths with the '-' at the same place compare as text. An id without a '-'
-- sorts before nothing and after nothing.
local function id_before(a, b)
  local da, db = string.find(a, '-', 1, true), string.find(b, '-', 1, true)
  if not da or not db then return false end
  if da ~= db then return da < db end
  if #a == #b then return a < b end
  local ms_a, ms_b = string.sub(a, 1, da), string.sub(b, 1, db)
  if ms_a ~= ms_b then return ms_a < ms_b end
  return #a < #b
end
