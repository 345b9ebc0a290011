-- wrk script: GET a random version among those seed.lua made.
--   wrk … -s get-random.lua URL -- VERSIONS_PATH TOKEN THREADS PER_THREAD
-- VERSIONS_PATH is /api/v1/bento_repositories/NAME/bentos
function init(args)
   prefix = args[1] .. "/"
   wrk.headers["X-YATAI-API-TOKEN"] = args[2]
   seed_threads = tonumber(args[3])
   per_thread = tonumber(args[4])
   math.randomseed(os.time() + (id or 0))
end

function request()
   local t = math.random(1, seed_threads)
   local n = math.random(1, per_thread)
   return wrk.format("GET", prefix .. string.format("s%d-%07d", t, n))
end
