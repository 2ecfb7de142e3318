-- member_id (included by scripts/__init__.py where a script says
-- ``--#include member_id``): the job id of a delayed member written by streamq
-- ([priority, 'v', '1', 'id', <id>, ...] as JSON), read from its start without
-- decoding the whole (possibly large) member; '' when there is none. One copy
-- for promote, lost, cancel and run_now, which must agree on it.
local function member_id(member)
  local head = string.sub(member, 1, 4096)
  local _, stop = string.find(head, '"id"%s*,%s*"')
  if not stop then return '' end
  local i = stop + 1
  while i <= #head do
    local c = string.sub(head, i, i)
    if c == '\\' then
      i = i + 2
    elseif c == '"' then
      local ok, id = pcall(cjson.decode, '"' .. string.sub(head, stop + 1, i - 1) .. '"')
      if ok and type(id) == 'string' then return id end
      return ''
    else
      i = i + 1
    end
  end
  return ''
end
