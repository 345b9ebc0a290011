-- wrk script: creates exactly PER_THREAD bento versions per wrk thread
-- through the API (POST …/bentos), as fast as the server takes them.
--   wrk -t T -c C -d 600s -s seed.lua URL -- PATH TOKEN PER_THREAD MANIFEST_JSON
-- Versions are named s<thread>-<7 digits>. Once a thread has sent its
-- share, its connections send GET /livez instead, so no more versions are
-- made; the caller stops wrk (SIGINT) once the server counts them all.
local threads = {}
local next_id = 1

function setup(thread)
   thread:set("id", next_id)
   next_id = next_id + 1
   table.insert(threads, thread)
end

function init(args)
   path = args[1]
   token = args[2]
   per_thread = tonumber(args[3])
   manifest = args[4]
   -- wrk calls request() once on the first thread's state to check the
   -- script, and never sends that request: that thread makes one more.
   sent = 0
   limit = per_thread + (id == 1 and 1 or 0)
   created = 0
   failed = 0
end

function request()
   sent = sent + 1
   if sent > limit then
      return wrk.format("GET", "/livez")
   end
   local n = id == 1 and sent - 1 or sent
   local body = string.format('{"version":"s%d-%07d","manifest":%s}', id, n, manifest)
   return wrk.format("POST", path, {
      ["Content-Type"] = "application/json",
      ["X-YATAI-API-TOKEN"] = token,
   }, body)
end

function response(status, headers, body)
   -- /livez answers 200 without an upload_status; anything else answers a POST.
   if status == 200 and not string.find(body, '"upload_status"', 1, true) then
      return
   end
   created = created + 1
   if status ~= 200 then
      failed = failed + 1
      if failed <= 3 then
         io.stderr:write(string.format("seed: POST answered %d: %s\n", status, body))
      end
   end
   if created >= per_thread then
      wrk.thread:stop()
   end
end

function done(summary, latency, requests)
   local c, f = 0, 0
   for _, t in ipairs(threads) do
      c = c + t:get("created")
      f = f + t:get("failed")
   end
   io.write(string.format("seed: answered=%d failed=%d\n", c, f))
end
