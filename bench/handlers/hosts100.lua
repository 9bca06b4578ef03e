-- wrk: each request to one of 100 apps (s0.localhost .. s99.localhost),
-- chosen at random, on the path given in the URL.
local hosts = {}
for i = 0, 99 do
  hosts[#hosts + 1] = "s" .. i .. ".localhost"
end
request = function()
  wrk.headers["Host"] = hosts[math.random(#hosts)]
  return wrk.format(nil, wrk.path)
end
