-- wrk script of the portico+forged contender (run.sh): every request carries a different
-- forged RS256 token. Each has the run's valid header and claims (FORGED_SIGNED, the valid
-- token's `header.payload`) and a signature of the right length (FORGED_SIG_BYTES) made of
-- random bytes, so no cache can answer it and the gateway pays a full signature check for
-- each. The first byte stays below 0x40: a value at or above the RSA modulus is refused
-- before any arithmetic, and a flood that wants to cost the most avoids that. A counter
-- written into the signature keeps any two requests of a run different.
--
-- At the end it prints one line run.sh reads: "forged: <401s> 401, <2xx> 2xx, <other> other".

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
local threads = {}

local function char(i) -- 0..63
    return B64:sub(i + 1, i + 1)
end

function setup(thread)
    table.insert(threads, thread)
    thread:set("id", #threads)
end

local signed, head, tail, counter
unauthorized, admitted, other = 0, 0, 0

function init(args)
    signed = os.getenv("FORGED_SIGNED") or error("FORGED_SIGNED is not set")
    local bytes = tonumber(os.getenv("FORGED_SIG_BYTES") or "") or error("FORGED_SIG_BYTES is not set")
    math.randomseed(os.time() * 1000 + id)
    -- base64url without padding of `bytes` random bytes: 6 bits per character; the last
    -- character of a partial group carries only 2 or 4 bits, and its unused low bits must be
    -- zero (canonical base64, which the gateway insists on).
    local len = math.floor((bytes * 8 + 5) / 6)
    local spare = len * 6 - bytes * 8
    local chars = {}
    chars[1] = char(math.random(0, 15)) -- top 6 bits 00xxxx: first byte < 0x40
    for i = 2, len - 1 do
        chars[i] = char(math.random(0, 63))
    end
    local step = 2 ^ spare
    chars[len] = char(math.random(0, 64 / step - 1) * step)
    -- Characters 2..9 are replaced by the counter on every request.
    head = chars[1]
    tail = table.concat(chars, "", 10, len)
    counter = id * 2 ^ 40
end

function request()
    counter = counter + 1
    local c, digits = counter, {}
    for i = 1, 8 do
        local d = c % 64
        digits[i] = char(d)
        c = (c - d) / 64
    end
    local token = signed .. "." .. head .. table.concat(digits) .. tail
    return wrk.format(nil, nil, { ["Authorization"] = "Bearer " .. token })
end

function response(status, headers, body)
    if status == 401 then
        unauthorized = unauthorized + 1
    elseif status >= 200 and status < 300 then
        admitted = admitted + 1
    else
        other = other + 1
    end
end

function done(summary, latency, requests)
    local u, a, o = 0, 0, 0
    for _, t in ipairs(threads) do
        u = u + t:get("unauthorized")
        a = a + t:get("admitted")
        o = o + t:get("other")
    end
    io.write(string.format("forged: %d 401, %d 2xx, %d other\n", u, a, o))
end
